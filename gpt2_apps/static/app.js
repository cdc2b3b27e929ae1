// Write With Transformer: streamed continuation suggestions from this server's /v1/completions (OpenAI's API).
// Plain browser JavaScript, no build step and no network access beyond this server.
"use strict";

const $ = (id) => document.getElementById(id);
const editor = $("editor");
const list = $("suggestions");
const errorBox = $("error");
const state = { model: null, nPositions: 1024, controller: null, texts: [], selected: 0, timer: null, cursor: 0 };

function setError(message) {
  errorBox.hidden = !message;
  errorBox.textContent = message || "";
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = `Bearer ${key}`;
  return h;
}

async function loadServer() {
  try {
    const health = await (await fetch("/health")).json();
    state.model = health.model;
    $("serving").textContent = `Serving ${health.model} on the ${health.backend} backend.`;
    const models = await fetch("/v1/models", { headers: headers() });
    if (models.ok) {
      const card = (await models.json()).data[0];
      state.nPositions = card.n_positions || state.nPositions;
      $("length").max = String(state.nPositions - 1);
    }
    scheduleSuggest();
  } catch (e) {
    $("serving").textContent = "The server is not reachable.";
  }
}

function render() {
  list.replaceChildren();
  state.texts.forEach((text, i) => {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "suggestion";
    button.dataset.index = String(i);
    button.setAttribute("aria-current", String(i === state.selected));
    button.setAttribute("aria-label", `Suggestion ${i + 1}${i === state.selected ? " (Tab accepts)" : ""}: ${text}`);
    button.textContent = text || "…";
    button.addEventListener("click", () => { state.selected = i; accept(); });
    item.appendChild(button);
    list.appendChild(item);
  });
}

function clearSuggestions() {
  if (state.controller) state.controller.abort();
  state.controller = null;
  state.texts = [];
  state.selected = 0;
  render();
  $("stop").disabled = true;
  list.setAttribute("aria-busy", "false");
}

function accept() {
  const text = state.texts[state.selected];
  if (!text) return false;
  const at = state.cursor;
  editor.value = editor.value.slice(0, at) + text + editor.value.slice(at);
  const end = at + text.length;
  editor.focus();
  editor.setSelectionRange(end, end);
  clearSuggestions();
  scheduleSuggest();
  return true;
}

function numberOf(id, fallback) {
  const v = Number($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

async function suggest() {
  if (!state.model) return;
  clearSuggestions();
  setError("");
  const cursor = editor.selectionStart;
  const maxTokens = Math.max(1, Math.min(numberOf("length", 30), state.nPositions - 1));
  const n = Math.max(1, Math.min(numberOf("count", 3), 5));
  // A character is at least one token most of the time: keep the prompt's tail within the context window; on a
  // context-length error retry with half as much.
  let budget = Math.max(1, state.nPositions - maxTokens);
  const controller = new AbortController();
  state.controller = controller;
  state.cursor = cursor;
  state.texts = new Array(n).fill("");
  render();
  $("stop").disabled = false;
  list.setAttribute("aria-busy", "true");
  try {
    for (let attempt = 0; attempt < 4; attempt++) {
      const prompt = editor.value.slice(Math.max(0, cursor - budget), cursor);
      const body = {
        model: state.model, prompt, max_tokens: maxTokens, n, stream: true,
        temperature: numberOf("temperature", 0.8), top_p: Math.max(0.05, numberOf("top-p", 0.9)),
      };
      const response = await fetch("/v1/completions", {
        method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal,
      });
      if (!response.ok) {
        const err = (await response.json().catch(() => ({}))).error || {};
        if (err.code === "context_length_exceeded" && budget > 8) { budget = Math.floor(budget / 2); continue; }
        throw new Error(err.message || `The server answered ${response.status}.`);
      }
      await readStream(response, controller);
      break;
    }
  } catch (e) {
    if (e.name !== "AbortError") {
      setError(e.message);
      if (state.controller === controller) { state.texts = state.texts.filter((t) => t); render(); }
    }
  } finally {
    if (state.controller === controller) {
      state.controller = null;
      $("stop").disabled = true;
      list.setAttribute("aria-busy", "false");
    }
  }
}

async function readStream(response, controller) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || controller.signal.aborted) return;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of event.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") return;
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message);
        for (const choice of chunk.choices || []) {
          if (choice.index < state.texts.length) state.texts[choice.index] += choice.text;
        }
        render();
      }
    }
  }
}

function scheduleSuggest() {
  clearTimeout(state.timer);
  if (!$("auto").checked) return;
  state.timer = setTimeout(suggest, 600);
}

editor.addEventListener("input", () => { clearSuggestions(); scheduleSuggest(); });
editor.addEventListener("keydown", (e) => {
  const have = state.texts.some((t) => t);
  if (e.key === "Tab" && !e.shiftKey && have) {
    e.preventDefault();
    accept();
  } else if (e.key === "Escape" && state.texts.length) {
    e.preventDefault();
    clearTimeout(state.timer);
    clearSuggestions();
  } else if (e.altKey && (e.key === "ArrowDown" || e.key === "ArrowUp") && state.texts.length) {
    e.preventDefault();
    const k = state.texts.length;
    state.selected = (state.selected + (e.key === "ArrowDown" ? 1 : k - 1)) % k;
    render();
  } else if (e.ctrlKey && (e.key === " " || e.code === "Space")) {
    e.preventDefault();
    clearTimeout(state.timer);
    suggest();
  }
});
$("suggest").addEventListener("click", () => { clearTimeout(state.timer); suggest(); });
$("stop").addEventListener("click", () => { if (state.controller) state.controller.abort(); });
for (const id of ["temperature", "top-p"]) {
  $(id).addEventListener("input", () => { $(`${id}-value`).textContent = $(id).value; });
}
loadServer();
