"""The serving engine: one worker thread that batches concurrent completion requests into `generate` calls.

Framework-neutral: a backend is anything with `generate(input_ids, attention_mask, **kwargs) -> ids` on NumPy
arrays (`ModelRunner` wraps the three backends' `model.generate`). No web framework is imported here.

Scheduling (dynamic batching at round granularity):

* Every sequence (one choice of one request: `n` choices are `n` sequences) waits in the engine until it is done.
  The worker runs *rounds*. A round is ONE batched `generate` call over up to `max_batch` sequences that share the
  sampling settings (greedy, or the same temperature / top-p / top-k); seeded requests are decoded in their own
  rounds so that their output does not depend on what else is being served.
* Each round re-feeds every sequence's prompt plus what it generated so far, left-padded with an attention mask
  (the backends' `generate` follows gpt2_core's position-id rule, so padding changes nothing), and generates at
  most `round_tokens` tokens. Between rounds, finished sequences (eos, a stop string, `max_tokens`, or a client
  that went away) leave the batch and waiting ones join it: a request that finishes early frees its slot at the
  next round boundary, and a new request waits at most one round.
* When the worker is idle, the first request waits `batch_wait_s` for others to arrive so they share a round.
* TensorFlow and Flax compile per shape: the batch is padded to a power of two (dummy copies of the first row,
  discarded) and `generate` buckets the prompt and new-token lengths (gpt2_core.generation.plan_decoding).

Re-feeding the context costs one prefill per round; continuous batching on the preallocated KV cache (sequences
joining and leaving a running cache without re-prefill) is the planned next step.

Streaming: after each round a sequence publishes the text it can commit: decoded text minus a trailing incomplete
UTF-8 character and minus a tail that could still become one of its stop strings.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

logger = logging.getLogger(__name__)



class QueueFull(Exception):
    """The engine holds `max_pending` sequences already; the caller should answer 429 and retry later."""


class ShuttingDown(Exception):
    """The engine is stopping; the caller should answer 503."""


# The GenerationConfig fields OpenAI's completions have no counterpart of, at the values that turn them off (None
# would mean "not given" to `generate`, which would then take the model's generation_config.json).
OPENAI_NEUTRAL: dict[str, Any] = {
    "num_beams": 1, "num_return_sequences": 1, "min_new_tokens": 0, "min_length": 0, "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "typical_p": 1.0, "min_p": 0.0,
    "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "suppress_tokens": [], "begin_suppress_tokens": [],
    "forced_eos_token_id": [], "renormalize_logits": False, "remove_invalid_values": False, "stop_strings": [],
    "return_dict_in_generate": False, "output_scores": False, "output_logits": False,
}


@dataclass(frozen=True)
class Sampling:
    """Sampling settings shared by every row of one `generate` call (greedy: `do_sample=False`, the rest unused).

    Args:
        do_sample: Sample instead of greedy argmax.
        temperature: Divides the logits (> 0).
        top_p: Nucleus mass in (0, 1] (1.0: off).
        top_k: Keep the k most likely tokens (0: off).
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Every decoding field, explicitly. `generate` takes a field left out from the model's
        generation_config.json (the shipped model's samples with top-k, top-p and a repetition penalty) or from
        GenerationConfig's defaults (top_k=50 when sampling, transformers' choice); OpenAI's completions mean plain
        greedy or plain temperature / top-p sampling (top-k is this server's extension, 0: off)."""
        kwargs: dict[str, Any] = dict(OPENAI_NEUTRAL, do_sample=self.do_sample)
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        return kwargs


@dataclass
class Choice:
    """One choice being decoded. Owned by the worker thread once submitted."""

    request: "Request"
    index: int
    prompt_ids: list[int]
    max_tokens: int
    generated: list[int] = field(default_factory=list)
    text: str = ""  # decoded generated text (up to a stop string once finished)
    committed: int = 0  # characters of `text` already published
    finish_reason: str | None = None
    last_round: float = 0.0


class Request:
    """A completion request: `n` choices for each of its prompts, and where to publish what they produce.

    Args:
        prompts: Token ids of each prompt.
        n: Choices per prompt.
        max_tokens: Tokens to generate per choice at most.
        sampling: Sampling settings.
        stop: Strings that end a choice (not included in its text).
        seed: Makes sampling reproducible (decoded in rounds of its own).
        publish: Called from the worker thread with `(event, payload)`: `("delta", (index, text))`,
            `("finish", (index, finish_reason, completion_tokens))`, `("done", None)`,
            `("error", (http_status, message))` (503: the engine stopped, 500: generation failed).
            Must not block (e.g. `loop.call_soon_threadsafe(queue.put_nowait, ...)`).
    """

    _ids = itertools.count()

    def __init__(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        n: int = 1,
        max_tokens: int = 16,
        sampling: Sampling = Sampling(),
        stop: Sequence[str] = (),
        seed: int | None = None,
        publish: Callable[[str, Any], None] = lambda event, payload: None,
    ) -> None:
        self.id = next(self._ids)
        self.sampling = sampling
        self.stop = tuple(s for s in stop if s)
        self.seed = seed
        self.publish = publish
        self.cancelled = False
        self.created = time.monotonic()
        self.sequences = [
            Choice(self, i * n + j, list(map(int, p)), int(max_tokens)) for i, p in enumerate(prompts) for j in range(n)
        ]
        self._open = len(self.sequences)

    @property
    def group(self) -> tuple:
        """Sequences with equal groups may share a round: same sampling settings; a seeded request only itself."""
        return (self.sampling, self.id if self.seed is not None and self.sampling.do_sample else None)

    def cancel(self) -> None:
        """Stop decoding this request (the client went away); its sequences leave at the next round boundary."""
        self.cancelled = True


class ModelRunner:
    """A backend's LM-head model behind one NumPy `generate` (gpt2_apps.backends' adapter).

    Args:
        backend: "torch", "tf" or "flax".
        model: That backend's LM-head model (e.g. from `load_model`).
    """

    def __init__(self, backend: str, model: Any) -> None:
        from gpt2_apps.backends import get_backend

        self.adapter = get_backend(backend)
        self.backend = backend
        self.model = model
        self.config = model.config
        # TF and Flax compile per shape, so rounds pad the batch to a power of two; torch runs eagerly.
        self.static_shapes = backend != "torch"

    def generate(self, input_ids: np.ndarray, attention_mask: np.ndarray, **kwargs: Any) -> np.ndarray:
        """`model.generate` on NumPy (B, T) inputs; returns NumPy ids (B, T + new)."""
        if self.backend == "torch":
            import torch

            with torch.inference_mode():
                return self.adapter.generate(self.model, input_ids, attention_mask, **kwargs)
        return self.adapter.generate(self.model, input_ids, attention_mask, **kwargs)


def load_model(backend: str, model: str) -> Any:
    """The LM-head model of `backend` from a local directory or Hub id (the framework is imported only here)."""
    from gpt2_apps.backends import get_backend

    return get_backend(backend).require().load("lm", model)


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _committable(text: str, stop: tuple[str, ...]) -> int:
    """How many leading characters of an unfinished `text` can be published: no broken UTF-8 character at the
    end (the tokenizer decodes it as U+FFFD until its last byte arrives), no tail that starts a stop string."""
    end = len(text)
    while end and text[end - 1] == "\ufffd":
        end -= 1
    for s in stop:
        for k in range(min(len(s) - 1, end), 0, -1):
            if text[:end].endswith(s[:k]):
                end -= k
                break
    return max(end, 0)


class Engine:
    """Batches completion requests into rounds of `generate` on one worker thread (see the module docstring).

    Args:
        runner: The model behind `generate`.
        tokenizer: Decodes generated ids (a gpt2_core GPT2Tokenizer).
        max_batch: Rows of one `generate` call at most.
        max_pending: Sequences held at once (waiting + decoding); `submit` raises QueueFull beyond it.
        round_tokens: Tokens per round at most (smaller: smoother streams and earlier joins, more re-prefill).
        batch_wait_s: How long an idle worker waits for more requests to share the first round.
    """

    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        max_pending: int = 256,
        round_tokens: int = 16,
        batch_wait_s: float = 0.01,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_pending", max_pending), ("round_tokens", round_tokens)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer. Received: {name}={value!r}.")
        self.runner = runner
        self.tokenizer = tokenizer
        self.config = runner.config
        self.eos_ids = set(self.config.eos_token_ids)
        self.pad_id = self.config.pad_token_id if self.config.pad_token_id is not None else (
            min(self.eos_ids) if self.eos_ids else 0
        )
        self.max_batch = int(max_batch)
        self.max_pending = int(max_pending)
        self.round_tokens = int(round_tokens)
        self.batch_wait_s = float(batch_wait_s)
        self._cond = threading.Condition()
        self._active: list[Choice] = []
        self._stopping = False
        self._held = 0
        self._thread: threading.Thread | None = None
        self.stats = {"rounds": 0, "rows": 0, "completion_tokens": 0, "requests": 0}

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> "Engine":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpt2-serve-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Stop accepting requests, cancel what is still held (clients get an error event), end the worker."""
        with self._cond:
            self._stopping = True
            self._held = 0
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def warmup(self, prompt_lengths: Sequence[int] = (8, 16, 32), do_sample: Sequence[bool] = (False,)) -> int:
        """Run one round of every batch size a round can have (powers of two up to max_batch for TF / Flax, which
        compile per shape; just 1 and max_batch for torch) at these prompt lengths, so the first requests do not
        pay the compile. Returns the number of `generate` calls made. Call before `start`."""
        sizes = [1 << k for k in range(self.max_batch.bit_length()) if 1 << k <= self.max_batch]
        sizes = sizes if self.runner.static_shapes else [1, self.max_batch]
        calls = 0
        for T in prompt_lengths:
            T = min(T, self.config.n_positions - self.round_tokens)
            for B in sorted(set(sizes + [self.max_batch])):
                for sample in do_sample:
                    # the switches real rounds use (which processors are on), so the compiled loops are reused
                    kwargs = (Sampling(True, 1.0) if sample else Sampling()).generate_kwargs()
                    ids = np.full((B, max(T, 1)), self.pad_id, np.int64)
                    self.runner.generate(ids, np.ones_like(ids), max_new_tokens=self.round_tokens,
                                         pad_token_id=self.pad_id, seed=0 if sample else None, **kwargs)
                    calls += 1
        return calls

    def hold(self) -> "_Hold":
        """A context manager that pauses rounds while it is open (requests queue up): for tests and maintenance."""
        return _Hold(self)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._active)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    # --- requests ----------------------------------------------------------------------------------------------

    def submit(self, request: Request) -> None:
        """Queue a request; raises QueueFull (over `max_pending`) or ShuttingDown. Never blocks on decoding."""
        with self._cond:
            if self._stopping:
                raise ShuttingDown("The server is shutting down.")
            if len(request.sequences) > self.max_pending:
                raise ValueError(
                    f"The request asks for more sequences than the server holds at once. Received: "
                    f"{len(request.sequences)} (prompts x n); the server takes {self.max_pending} (--max-pending). "
                    "Send fewer prompts or a smaller n."
                )
            if len(self._active) + len(request.sequences) > self.max_pending:
                raise QueueFull(
                    f"The server is at capacity ({len(self._active)} of {self.max_pending} sequences queued or "
                    f"decoding). Received: {len(request.sequences)} more. Retry later."
                )
            now = time.monotonic()
            for s in request.sequences:
                s.last_round = now
            self._active.extend(request.sequences)
            self.stats["requests"] += 1
            self._cond.notify_all()

    # --- the worker --------------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                was_idle = not self._active
                while not self._stopping and (not self._active or self._held):
                    self._cond.wait()
                if self._stopping:
                    leftover, self._active = self._active, []
                    break
            if was_idle and self.batch_wait_s > 0:
                time.sleep(self.batch_wait_s)  # let concurrent requests arrive and share the first round
            rows = self._pick_rows()
            if rows:
                try:
                    self._round(rows)
                except Exception as e:  # noqa: BLE001 - a failing round must not kill the server
                    logger.exception("generate failed")
                    self._fail([s.request for s in rows], f"Generation failed: {type(e).__name__}: {e}")
        for r in {id(s.request): s.request for s in leftover}.values():
            self._safe_publish(r, "error", (503, "The server is shutting down; the request was cancelled."))

    def _pick_rows(self) -> list[Choice]:
        with self._cond:
            for s in [s for s in self._active if s.request.cancelled]:
                self._retire(s, None)
            if not self._active:
                return []
            # round-robin over groups: the group of the sequence that waited longest, its longest-waiting rows
            oldest = min(self._active, key=lambda s: s.last_round)
            group = oldest.request.group
            rows = sorted((s for s in self._active if s.request.group == group), key=lambda s: s.last_round)
            return rows[: self.max_batch]

    def _round(self, rows: list[Choice]) -> None:
        n_pos = self.config.n_positions
        contexts = [s.prompt_ids + s.generated for s in rows]
        T = max(len(c) for c in contexts)
        remaining = [s.max_tokens - len(s.generated) for s in rows]
        new = max(1, min(self.round_tokens, max(remaining), n_pos - T))
        B = _next_power_of_two(len(rows)) if self.runner.static_shapes else len(rows)
        B = min(B, max(self.max_batch, len(rows)))
        ids = np.full((B, T), self.pad_id, np.int64)
        mask = np.zeros((B, T), np.int64)
        for i in range(B):
            c = contexts[i] if i < len(rows) else contexts[0]
            ids[i, T - len(c):] = c
            mask[i, T - len(c):] = 1
        request = rows[0].request
        kwargs = request.sampling.generate_kwargs()
        if request.sampling.do_sample:
            # a seeded request's k-th round uses seed + tokens so far: reproducible for the same request
            kwargs["seed"] = (
                (request.seed + len(rows[0].generated)) % (2**31 - 1)
                if request.seed is not None
                else int(np.random.randint(0, 2**31 - 1))
            )
        out = self.runner.generate(ids, mask, max_new_tokens=new, pad_token_id=self.pad_id, **kwargs)
        new_tokens = out[:, T:]
        now = time.monotonic()
        with self._cond:
            self.stats["rounds"] += 1
            self.stats["rows"] += len(rows)
            for i, s in enumerate(rows):
                s.last_round = now
                if s.request.cancelled:
                    self._retire(s, None)
                    continue
                self._advance(s, [int(t) for t in new_tokens[i, : remaining[i]]])

    def _advance(self, s: Choice, tokens: list[int]) -> None:
        """Append a round's tokens to a sequence, find how it ends, publish its new committed text."""
        reason = None
        for k, t in enumerate(tokens):
            if t in self.eos_ids:
                tokens, reason = tokens[:k], "stop"
                break
        before = len(s.generated)
        s.generated.extend(tokens)
        text = self.tokenizer.decode(s.generated, skip_special_tokens=True)
        hits = sorted((text.find(stop), stop) for stop in s.request.stop if stop in text)
        if hits:
            cut, stop = hits[0]
            text, reason = text[:cut], "stop"
            # count the tokens up to the one that completed the stop string
            while len(s.generated) > 1 and stop in self.tokenizer.decode(s.generated[:-1], skip_special_tokens=True):
                s.generated.pop()
        self.stats["completion_tokens"] += len(s.generated) - before
        if reason is None and len(s.generated) >= s.max_tokens:
            reason = "length"
        s.text = text
        end = len(text) if reason else _committable(text, s.request.stop)
        if end > s.committed:
            self._safe_publish(s.request, "delta", (s.index, text[s.committed:end]))
            s.committed = end
        if reason:
            self._retire(s, reason)

    def _retire(self, s: Choice, reason: str | None) -> None:
        """Remove a sequence (caller holds the lock); `reason` None: cancelled, nothing more is published."""
        if s in self._active:
            self._active.remove(s)
        s.finish_reason = reason
        r = s.request
        r._open -= 1
        if reason is not None:
            self._safe_publish(r, "finish", (s.index, reason, len(s.generated)))
        if r._open == 0 and not r.cancelled:
            self._safe_publish(r, "done", None)

    def _fail(self, requests: list[Request], message: str) -> None:
        with self._cond:
            for r in {id(r): r for r in requests}.values():
                for s in r.sequences:
                    if s in self._active:
                        self._active.remove(s)
                r._open = 0
                self._safe_publish(r, "error", (500, message))

    @staticmethod
    def _safe_publish(request: Request, event: str, payload: Any) -> None:
        try:
            request.publish(event, payload)
        except RuntimeError:  # the client's event loop is gone (shutdown): nothing to tell
            logger.debug("dropped %s for request %s", event, request.id)


class _Hold:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def __enter__(self) -> Engine:
        with self.engine._cond:
            self.engine._held += 1
        return self.engine

    def __exit__(self, *exc: Any) -> None:
        with self.engine._cond:
            self.engine._held = max(0, self.engine._held - 1)
            self.engine._cond.notify_all()
