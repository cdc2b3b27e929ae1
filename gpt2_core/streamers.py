"""Streamers for `generate(..., streamer=)`: text as it is produced, printed or handed to another thread.

transformers' protocol and semantics (`transformers/generation/streamers.py`, v5): `generate` calls
`streamer.put(prompt_ids)` once with the (1, T) prompt, then `put(tokens)` with each step's (1,) tokens, then
`streamer.end()`. Values may be torch, TensorFlow or JAX tensors, NumPy arrays or lists: they are read through
`np.asarray`, so every backend streams into the same classes.

* `TextStreamer` decodes the whole pending text at each step and releases the part that can no longer change:
  everything up to a newline; a CJK character at once; text made only of letters, marks, digits and spaces at
  once; otherwise text up to the last space (a symbol may start a longer one, `<br>`, or be a UTF-8 character whose
  remaining bytes come with the next token). Bytes of an incomplete UTF-8 character (decoded as U+FFFD) are held
  back until the character completes (or `end()` flushes them), so a character split across tokens is never
  printed as a replacement character halfway. The released pieces concatenate to `decode(all tokens)`.
* `TextIteratorStreamer` puts those pieces in a queue and is an iterator over them (run `generate` in a thread).
* `TokenCounter` counts prompt and new tokens and times them (tokens/s, time to the first token), alone or wrapped
  around another streamer.

Batch size 1 only, as in transformers. Imports only the standard library and NumPy (gpt2_core's rule).
"""

from __future__ import annotations

import sys
import time
import unicodedata
from queue import Queue
from typing import Any, TextIO

import numpy as np

REPLACEMENT_CHAR = "\ufffd"


class BaseStreamer:
    """What `generate` calls: `put(value)` with the prompt, then with each step's tokens; `end()` at the end."""

    def put(self, value: Any) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError


def _row_ids(value: Any, owner: str) -> list[int]:
    """The token ids of a (1, T), (T,) or () value as a list; batch sizes above 1 are refused."""
    if hasattr(value, "detach"):  # a torch tensor that requires grad, or one on an accelerator
        value = value.detach().cpu()
    arr = np.asarray(value)
    if arr.ndim > 1 and arr.shape[0] > 1:
        raise ValueError(
            f"{owner} only supports batch size 1. Received: a value of shape {tuple(arr.shape)}. Stream one prompt "
            "with one sequence (num_return_sequences=1, num_beams=1), or decode the returned ids instead."
        )
    if arr.ndim > 2:
        raise ValueError(f"{owner} takes (1, T) or (T,) token ids. Received: a value of shape {tuple(arr.shape)}.")
    return [int(i) for i in arr.reshape(-1).tolist()]


def _is_cjk(cp: int) -> bool:
    """A CJK ideograph (the blocks transformers' TextStreamer prints at once: no spaces separate those words)."""
    return (
        0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def _is_plain(text: str) -> bool:
    """Only letters (with their marks), digits and spaces: such text cannot change with the next token."""
    return all(ch.isspace() or unicodedata.category(ch)[0] in "LMN" for ch in text)


class TextStreamer(BaseStreamer):
    """Writes the generated text to `file` (default: stdout) as it is produced, ending with a newline.

    Args:
        tokenizer: Decodes ids (`decode(ids, **decode_kwargs)`): this library's tokenizer or a transformers one.
        skip_prompt: Do not write the prompt (the first `put`).
        file: Where to write (a text stream, flushed after each piece). Keyword only.
        **decode_kwargs: Passed to `tokenizer.decode`, e.g. `skip_special_tokens=True`.

    Subclass and override `on_finalized_text(text, stream_end)` to send the pieces elsewhere.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, *, file: TextIO | None = None, **decode_kwargs: Any):
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.file = file
        self.decode_kwargs = decode_kwargs
        # the tokens whose text is not all released yet, and how many characters of their text were released
        self.token_cache: list[int] = []
        self.print_len = 0
        self.next_tokens_are_prompt = True

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, **self.decode_kwargs))

    def put(self, value: Any) -> None:
        """Take the prompt (first call) or one step's token, and release the text that is final."""
        ids = _row_ids(value, type(self).__name__)
        if self.skip_prompt and self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.next_tokens_are_prompt = False
        self.token_cache.extend(ids)
        text = self._decode(self.token_cache)
        # An incomplete UTF-8 character at the end decodes as U+FFFD: hold it back until its bytes arrive.
        stable = text.rstrip(REPLACEMENT_CHAR)
        if stable != text:
            printable = self._final_part(stable)
            self.print_len += len(printable)
        elif text.endswith("\n"):
            # A line is final: start over from its last token, which stays as context (a leading space of the next
            # token decodes the same after it).
            printable = text[self.print_len :]
            self.token_cache = self.token_cache[-1:]
            self.print_len = len(self._decode(self.token_cache))
        else:
            printable = self._final_part(text)
            self.print_len += len(printable)
        if printable:
            self.on_finalized_text(printable)

    def _final_part(self, text: str) -> str:
        """The not yet released part of `text` that no later token can change."""
        pending = text[self.print_len :]
        if not pending:
            return ""
        if _is_cjk(ord(pending[-1])) or _is_plain(pending):
            return pending
        # a symbol may begin something longer: release up to the last space only
        return text[self.print_len : max(self.print_len, text.rfind(" ") + 1)]

    def end(self) -> None:
        """Release what is left (even an incomplete character) and end the stream (a newline for TextStreamer)."""
        printable = self._decode(self.token_cache)[self.print_len :] if self.token_cache else ""
        self.token_cache = []
        self.print_len = 0
        self.next_tokens_are_prompt = True
        self.on_finalized_text(printable, stream_end=True)

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        """Write a released piece; after the last one, a newline."""
        out = self.file if self.file is not None else sys.stdout
        out.write(text + ("\n" if stream_end else ""))
        out.flush()


class TextIteratorStreamer(TextStreamer):
    """Queues the released text pieces; iterate over the streamer (in another thread than `generate`) to read them.

        streamer = TextIteratorStreamer(tok, skip_prompt=True)
        thread = threading.Thread(target=model.generate, args=(ids,), kwargs=dict(streamer=streamer))
        thread.start()
        text = "".join(streamer)
        thread.join()

    Args:
        tokenizer: Decodes ids (see `TextStreamer`).
        skip_prompt: Do not queue the prompt's text.
        timeout: Seconds to wait for the next piece before `queue.Empty` is raised (None: wait forever). Use one
            when `generate` may fail in its thread, so that the reader does not wait forever.
        **decode_kwargs: Passed to `tokenizer.decode`.
    """

    def __init__(self, tokenizer: Any, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs: Any):
        super().__init__(tokenizer, skip_prompt, **decode_kwargs)
        self.text_queue: Queue = Queue()
        self.stop_signal = None
        self.timeout = timeout

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if text:
            self.text_queue.put(text, timeout=self.timeout)
        if stream_end:
            self.text_queue.put(self.stop_signal, timeout=self.timeout)

    def __iter__(self) -> "TextIteratorStreamer":
        return self

    def __next__(self) -> str:
        value = self.text_queue.get(timeout=self.timeout)
        if value is self.stop_signal:
            raise StopIteration
        return value


class TokenCounter(BaseStreamer):
    """Counts and times the tokens of a `generate` call, forwarding every call to `streamer` when one is given.

        counter = TokenCounter(TextStreamer(tok, skip_prompt=True))
        model.generate(ids, streamer=counter, max_new_tokens=50)
        counter.new_tokens, counter.tokens_per_second, counter.time_to_first_token

    The prompt put starts the clock. Each later put adds its tokens (with one row, the tokens of one step; rows
    that finished early still get padding steps, which count too).

    Args:
        streamer: Another streamer to forward `put` / `end` to (optional).
    """

    def __init__(self, streamer: BaseStreamer | None = None) -> None:
        self.streamer = streamer
        self.reset()

    def reset(self) -> None:
        self.prompt_tokens = 0
        self.new_tokens = 0
        self.start_time: float | None = None
        self.first_token_time: float | None = None
        self.end_time: float | None = None

    def put(self, value: Any) -> None:
        n = int(np.asarray(value.detach().cpu() if hasattr(value, "detach") else value).size)
        now = time.perf_counter()
        if self.start_time is None:
            self.start_time, self.prompt_tokens = now, n
        else:
            if self.first_token_time is None:
                self.first_token_time = now
            self.new_tokens += n
        if self.streamer is not None:
            self.streamer.put(value)

    def end(self) -> None:
        self.end_time = time.perf_counter()
        if self.streamer is not None:
            self.streamer.end()

    @property
    def elapsed(self) -> float | None:
        """Seconds from the prompt to the end (None before `end`)."""
        if self.start_time is None or self.end_time is None:
            return None
        return self.end_time - self.start_time

    @property
    def time_to_first_token(self) -> float | None:
        """Seconds from the prompt to the first new token (the prefill, and compilation on a first TF / Flax call)."""
        if self.start_time is None or self.first_token_time is None:
            return None
        return self.first_token_time - self.start_time

    @property
    def tokens_per_second(self) -> float | None:
        """New tokens per second after the first one (the decoding rate, without the prefill); None if unknown."""
        if self.first_token_time is None or self.end_time is None or self.new_tokens < 2:
            return None
        dt = self.end_time - self.first_token_time
        return (self.new_tokens - 1) / dt if dt > 0 else None


__all__ = ["BaseStreamer", "TextIteratorStreamer", "TextStreamer", "TokenCounter"]
