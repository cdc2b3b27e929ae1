"""`gpt2 serve`: the OpenAI-compatible server driven by the real `openai` client, its errors, batching and the page.

Servers run in-process on 127.0.0.1 (free ports, `gpt2_apps.serve.ServerThread`) with the shipped default model;
each backend's greedy completions must equal that backend's `model.generate`. The browser test needs Debian's
`chromium` + `chromium-driver` and `selenium`; it is skipped where they are missing (never in CI, where `.ci/run`
installs them and a missing browser fails) and saves a screenshot to
`$GPT2_TEST_ARTIFACTS` (else the test's tmp dir).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import openai  # the dev extra; a missing client fails the suite rather than skipping it
import starlette  # noqa: F401  (the serve extra)
import uvicorn  # noqa: F401

from gpt2_apps.serve import ServerThread, build_app, default_model, load_model, load_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MODEL = "gpt2-default"
KEY = "test-key"
PROMPT = "ROMEO:"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(default_model())


@pytest.fixture(scope="module")
def torch_lm():
    return load_model("torch", default_model())


@pytest.fixture(scope="module")
def server(torch_lm):
    """The torch server most tests use: an API key, rounds of 4 tokens (so streams take several rounds)."""
    with ServerThread(build_app("torch", lm=torch_lm, api_key=KEY, round_tokens=4)) as s:
        yield s


@pytest.fixture(scope="module")
def small_server(torch_lm):
    """No API key, room for 3 sequences: for the queue, disconnect and browser tests."""
    with ServerThread(build_app("torch", lm=torch_lm, max_pending=3, round_tokens=4)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0, timeout=60)


def engine_of(server):
    return server.app.state.service.engine


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


class Reply:
    def __init__(self, status, headers, body):
        self.status_code, self.headers, self.text = status, headers, body

    def json(self):
        return json.loads(self.text)


def http(method, url, body=None, headers=None, timeout=30):
    """A plain HTTP request (stdlib), for what the openai client cannot send: bad JSON, no key, other routes."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
    conn.request(method, u.path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    reply = Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode("utf-8", "replace"))
    conn.close()
    return reply


def stream_lines(url, body, headers=None, timeout=60):
    """POST and yield the response's lines as they arrive (the connection closes when the generator does)."""
    import http.client
    from urllib.parse import urlsplit

    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("POST", u.path, body=json.dumps(body).encode(),
                 headers={"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    try:
        assert r.status == 200 and r.getheader("content-type").startswith("text/event-stream"), r.status
        for raw in r:
            yield raw.decode().rstrip("\n")
    finally:
        r.close()
        conn.close()


def reference_text(backend_name, lm, tokenizer, prompt, max_new_tokens):
    """Greedy continuation from the backend's own `model.generate`, decoded, cut at the first eos."""
    from gpt2_apps.backends import get_backend

    ids = np.asarray([tokenizer.encode(prompt)], np.int64)
    out = get_backend(backend_name).generate(lm, ids, np.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                                             repetition_penalty=1.0)  # the server's settings, not the file's
    new = [int(t) for t in np.asarray(out)[0, ids.shape[1]:]]
    eos = lm.config.eos_token_ids
    new = new[: next((i for i, t in enumerate(new) if t in eos), len(new))]
    return tokenizer.decode(new, skip_special_tokens=True)


# --- completions ----------------------------------------------------------------------------------------------------


def test_greedy_equals_generate(backend, torch_lm, tokenizer):
    """Per backend: the non-streamed and the streamed greedy completion equal `model.generate`'s continuation."""
    lm = torch_lm if backend.name == "torch" else load_model(backend.name, default_model())
    expected = reference_text(backend.name, lm, tokenizer, PROMPT, 8)
    with ServerThread(build_app(backend.name, lm=lm, round_tokens=4)) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0, timeout=120)
        r = c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0)
        streamed = "".join(ch.choices[0].text for ch in c.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=8, temperature=0, stream=True))
    assert r.choices[0].text == expected
    assert streamed == expected
    assert r.system_fingerprint == f"gpt2-{backend.name}"
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens <= 8 and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = http("GET", f"{server.url}/health").json()
    assert health["status"] == "ok" and health["backend"] == "torch" and health["model"] == MODEL


def test_stream_chunks_in_openai_format(server):
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 12, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    lines = stream_lines(f"{server.url}/v1/completions", body, {"Authorization": f"Bearer {KEY}"})
    events = [line[len("data: "):] for line in lines if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["model"] == MODEL and c["id"] == chunks[0]["id"] for c in chunks)
    text_chunks = [c for c in chunks if c["choices"]]
    assert len([c for c in text_chunks if c["choices"][0]["text"]]) >= 2, "12 tokens in rounds of 4: several deltas"
    assert text_chunks[-1]["choices"][0]["finish_reason"] in ("length", "stop")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] >= 1


def test_n_and_prompt_list(client, tokenizer):
    prompts = [PROMPT, "JULIET:"]
    r = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=6, temperature=0.9, seed=1)
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert all(c.finish_reason in ("length", "stop") for c in r.choices)
    assert r.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in prompts)
    greedy = client.completions.create(model=MODEL, prompt=[tokenizer.encode(PROMPT)], max_tokens=6, temperature=0, n=2)
    assert greedy.choices[0].text == greedy.choices[1].text


def test_stop_and_echo(client):
    full = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0).choices[0].text
    stop = full.strip()[3:6]  # a piece from the middle of the greedy text
    cut = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=[stop, "@@"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    assert cut.usage.completion_tokens < 24
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=MODEL, prompt=PROMPT, max_tokens=24, temperature=0, stop=stop, stream=True))
    assert streamed == cut.choices[0].text
    echo = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=5, temperature=0, echo=True)
    echoed = echo.choices[0].text
    assert echoed.startswith(PROMPT) and echoed == PROMPT + full[: len(echoed) - len(PROMPT)]


def test_seed_reproducible(client):
    kwargs = dict(model=MODEL, prompt=PROMPT, max_tokens=10, temperature=1.0, top_p=0.9, seed=1234)
    assert client.completions.create(**kwargs).choices[0].text == client.completions.create(**kwargs).choices[0].text


def test_concurrent_requests_are_batched(client, server, tokenizer, torch_lm):
    """32 concurrent clients (greedy, 4 tokens): every answer equals `generate` alone, and all shared one round."""
    names = ("ROMEO", "JULIET", "KING", "NURSE", "HAMLET", "First Citizen", "MACBETH", "O")
    prompts = [f"{name}:" for name in names] * 4
    expected = {p: reference_text("torch", torch_lm, tokenizer, p, 4) for p in set(prompts)}
    engine = engine_of(server)
    results = [None] * len(prompts)
    with engine.hold():  # queue them all, then let one round take them
        rounds = engine.stats["rounds"]

        def ask(i):
            results[i] = client.completions.create(model=MODEL, prompt=prompts[i], max_tokens=4, temperature=0)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        wait_until(lambda: engine.pending == len(prompts))
    for t in threads:
        t.join(60)
    assert [r.choices[0].text for r in results] == [expected[p] for p in prompts]
    assert engine.stats["rounds"] - rounds == 1


# --- errors ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, param",
    [
        (dict(max_tokens=0), "max_tokens"),
        (dict(max_tokens=10_000), "max_tokens"),
        (dict(temperature=3.0), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(n=0), "n"),
        (dict(logprobs=1), "logprobs"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(extra_body={"frobnicate": 1}), "frobnicate"),
        (dict(extra_body={"max_tokens": "5"}), "max_tokens"),
    ],
)
def test_bad_request(client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(**{"model": MODEL, "prompt": PROMPT, **kwargs})
    assert e.value.status_code == 400
    assert e.value.body["param"] == param and e.value.body["type"] == "invalid_request_error"


def test_oversize_prompt(client, tokenizer):
    long_prompt = "ROMEO: " * 200  # > n_positions=256 tokens
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=long_prompt, max_tokens=4)
    assert e.value.body["code"] == "context_length_exceeded"
    assert "maximum context length is 256" in e.value.body["message"]


def test_unknown_model_and_key(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    wrong = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    assert http("GET", f"{server.url}/v1/models").status_code == 401  # no key at all
    assert http("GET", f"{server.url}/health").status_code == 200  # health and the page stay public


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_body(server, content):
    r = http("POST", f"{server.url}/v1/completions", content, {"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and "Traceback" not in r.text


def test_unknown_route_is_json(server):
    r = http("POST", f"{server.url}/v1/chat/completions", {})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_queue_full(small_server):
    """max_pending=3: a request of n=3 fills it; the next gets 429 (RateLimitError) with Retry-After; a request that
    could never fit is a 400."""
    c = openai.OpenAI(base_url=f"{small_server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    engine = engine_of(small_server)
    done = {}
    with engine.hold():
        t = threading.Thread(target=lambda: done.setdefault("r", c.completions.create(
            model=MODEL, prompt=PROMPT, max_tokens=3, n=3, temperature=0)))
        t.start()
        wait_until(lambda: engine.pending == 3)
        with pytest.raises(openai.RateLimitError) as e:
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        assert e.value.response.headers["retry-after"] == "1"
        assert e.value.body["code"] == "rate_limit_exceeded"
    t.join(60)
    assert len(done["r"].choices) == 3
    wait_until(lambda: engine.pending == 0)
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model=MODEL, prompt=[PROMPT, PROMPT], max_tokens=3, n=2)
    assert "--max-pending" in e.value.body["message"]


def test_disconnect_mid_stream_frees_the_slot(small_server):
    engine = engine_of(small_server)
    before = engine.stats["completion_tokens"]
    body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 200, "stream": True}
    lines = stream_lines(f"{small_server.url}/v1/completions", body)
    first = next(line for line in lines if line.startswith("data: "))
    assert json.loads(first[6:])["choices"]
    lines.close()
    # the client closed the connection after the first chunk: the sequence leaves at the next round boundary
    wait_until(lambda: engine.pending == 0)
    assert engine.stats["completion_tokens"] - before < 200


# --- the command line and shutdown ----------------------------------------------------------------------------------


def test_cli_serves_and_shuts_down_gracefully_on_sigterm():
    """`python -m gpt2_apps.serve` answers; SIGTERM during a stream lets that stream finish, then the process ends
    (uvicorn re-raises the signal after its graceful shutdown, so the status is -SIGTERM; older uvicorn: 0)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "gpt2_apps.serve", "--port", str(port), "--round-tokens", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if http("GET", f"{url}/health", timeout=1).status_code == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        body = {"model": MODEL, "prompt": PROMPT, "max_tokens": 64, "temperature": 0, "stream": True}
        lines = stream_lines(f"{url}/v1/completions", body)
        events = [next(line for line in lines if line.startswith("data: "))]
        proc.send_signal(signal.SIGTERM)  # mid-stream: one token per round, 64 rounds
        events += [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        finish = [json.loads(e[6:])["choices"][0]["finish_reason"] for e in events[:-1]]
        assert finish[-1] in ("length", "stop") and finish.count(None) == len(finish) - 1
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_cancels_queued_requests(torch_lm):
    """Stopping the engine answers what is still queued with an error (503), and new requests get 503."""
    with ServerThread(build_app("torch", lm=torch_lm)) as s:
        engine = engine_of(s)
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=30)
        errors = []

        def ask():
            try:
                c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
            except openai.APIStatusError as e:
                errors.append(e.status_code)

        with engine.hold():
            t = threading.Thread(target=ask)
            t.start()
            wait_until(lambda: engine.pending == 1)
            engine.stop()
        t.join(30)
        assert errors == [503]
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        assert e.value.status_code == 503


def test_generation_failure_is_a_clean_500(torch_lm):
    """A `generate` that raises answers 500 in OpenAI's shape (no traceback) and the server keeps serving."""
    app = build_app("torch", lm=torch_lm, max_batch=2)
    engine = app.state.service.engine
    assert engine.warmup(prompt_lengths=(4,)) == 2  # torch: batch 1 and max_batch
    with ServerThread(app) as s:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0, timeout=30)
        real = engine.runner.generate

        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

        engine.runner.generate = broken
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3)
        assert e.value.status_code == 500 and "Traceback" not in e.value.response.text
        engine.runner.generate = real
        assert c.completions.create(model=MODEL, prompt=PROMPT, max_tokens=3, temperature=0).choices[0].text


# --- the page -------------------------------------------------------------------------------------------------------


def test_page_is_served(small_server):
    r = http("GET", small_server.url + "/")
    assert r.status_code == 200 and "Write With Transformer" in r.text
    for asset in ("/static/app.js", "/static/style.css"):
        asset_reply = http("GET", small_server.url + asset)
        assert asset_reply.status_code == 200
        assert "://" not in asset_reply.text  # works offline: nothing from elsewhere
    assert "://" not in r.text


def _chromium():
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return browser, driver


@pytest.mark.skipif(
    None in _chromium() and not os.environ.get("CI"),
    reason="needs chromium and chromedriver (apt: chromium chromium-driver)",
)
def test_page_in_browser_streams_suggestions(small_server, tmp_path):
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        driver.get(small_server.url + "/")
        wait = WebDriverWait(driver, 90, ignored_exceptions=(StaleElementReferenceException,))
        wait.until(lambda d: "torch" in d.find_element(By.ID, "serving").text)
        driver.find_element(By.ID, "auto").click()  # suggest on demand only
        editor = driver.find_element(By.ID, "editor")
        editor.clear()
        editor.send_keys("JULIET:")
        driver.find_element(By.ID, "suggest").click()
        # Read the suggestion texts in one script call: the page re-renders the buttons as text streams in, so
        # element handles taken in one call can be stale by the next.
        texts = "return Array.from(document.querySelectorAll('#suggestions button')).map(b => b.textContent.trim())"
        wait.until(lambda d: len(t := d.execute_script(texts)) == 3 and all(x not in ("", "…") for x in t))
        wait.until(lambda d: d.find_element(By.ID, "stop").get_attribute("disabled"))  # the stream finished
        first = driver.execute_script("return state.texts[0]")
        artifacts = Path(os.environ.get("GPT2_TEST_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "serve_page.png"))
        editor.send_keys("\t")  # Tab accepts the highlighted suggestion
        assert editor.get_attribute("value") == "JULIET:" + first
    finally:
        driver.quit()
