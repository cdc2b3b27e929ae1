"""`GPT2TokenizerFast`: GPT-2's tokenizer on native BPE engines, with `GPT2Tokenizer`'s API and ids.

Two engines, both Rust:
    - `tiktoken` (OpenAI's BPE, optional: `pip install "gpt2-frameworks[fast]"`) encodes ids when the vocabulary
      is GPT-2's own, for which its rank-based merging gives exactly the ids of the merge list (checked on every
      token of the vocabulary and on the whole corpus in the tests). The text is split at added tokens here, as
      `GPT2Tokenizer` does; long texts are cut at safe newlines and batches are encoded on a thread pool
      (tiktoken releases the GIL), so one call and batches both use every core.
    - `tokenizers` (Hugging Face, a core dependency) for everything else: character offsets, vocabularies other
      than GPT-2's (whose ids tiktoken's merge rule is not known to reproduce), and when tiktoken is missing.

Why it was slow before: every call went through `tokenizers`, which on one long text runs single-threaded and keeps
per-byte alignments for offsets even when nobody asks for them (about 1 MB/s on the 4.6 MB corpus, against
tiktoken's 6-11 MB/s on the same machine).

Everything else (templates, truncation, padding, files) is the shared code in `gpt2_core.tokenization_api`, so
`GPT2Tokenizer` and this class cannot drift apart. `TOKENIZERS_PARALLELISM=false` turns the thread pool off.

References:
    - openai/tiktoken: `Encoding(pat_str, mergeable_ranks, special_tokens)`, `encode_ordinary`.
    - huggingface/tokenizers: `models.BPE`, `pre_tokenizers.ByteLevel`, `decoders.ByteLevel`, `AddedToken`.
    - huggingface/transformers `models/gpt2/tokenization_gpt2.py` (v5): how it builds the same pipeline.
"""

from __future__ import annotations

import concurrent.futures
import functools
import inspect
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

import regex

from gpt2_core import tokenization_io as io
from gpt2_core.tokenization_api import _GPT2TokenizerBase
from gpt2_core.tokenization_bpe import ENDOFTEXT, GPT2_PRETOKENIZE_PATTERN, bytes_to_unicode
from gpt2_core.tokenization_utils import BatchEncoding, _check_inputs, _check_return_tensors, _to_tensor

logger = logging.getLogger("gpt2_core.tokenization")

# A text longer than this (characters) is cut into pieces of about _CHUNK_CHARS at safe newlines (see _safe_cuts),
# so that one long text is encoded on several threads.
_CHUNK_CHARS = 1 << 17
# Work under this many characters in one call is encoded on the calling thread (threads would cost more).
_PARALLEL_MIN_CHARS = 1 << 16


def _parallel_workers() -> int:
    if os.environ.get("TOKENIZERS_PARALLELISM", "").strip().lower() in ("0", "false", "no", "off"):
        return 1
    return min(os.cpu_count() or 1, 8)


_POOL: tuple[int, concurrent.futures.ThreadPoolExecutor] | None = None  # (pid, pool): a forked child makes its own
_POOL_LOCK = threading.Lock()


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != os.getpid():
            workers = _parallel_workers()
            _POOL = (os.getpid(), concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="gpt2-tok"))
        return _POOL[1]


@functools.lru_cache(maxsize=1)
def _gpt2_tiktoken() -> Any:
    """tiktoken's encoding of GPT-2's shipped vocabulary (ranks = ids), built once per process; None without
    tiktoken."""
    try:
        import tiktoken
    except ImportError:
        logger.info(
            "GPT2TokenizerFast uses `tokenizers` because `tiktoken` is not installed; "
            'pip install "gpt2-frameworks[fast]" (or tiktoken) encodes several times faster.'
        )
        return None
    encoder, _ = io.shipped_files()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    ranks = {bytes(byte_decoder[c] for c in t): i for t, i in encoder.items() if t != ENDOFTEXT}
    # OpenAI's pattern as written (tiktoken's Rust regex has Unicode 16.0 tables, the ones GPT2Tokenizer pins to).
    return tiktoken.Encoding(name="gpt2_core", pat_str=GPT2_PRETOKENIZE_PATTERN, mergeable_ranks=ranks,
                             special_tokens={})  # fmt: skip


def _is_ascii_graphic(ch: str) -> bool:
    return "!" <= ch <= "~"


def _safe_cuts(text: str, size: int) -> list[str]:
    r"""Cut `text` into pieces of about `size` characters that pre-tokenize exactly as the whole text does.

    A cut goes right after a newline that sits between two printable ASCII characters ("x\ny"): the newline
    is then a pre-token on its own in both the whole text and the piece before the cut (the pattern's only
    lookahead, `\s+(?!\S)`, sees one character, and no alternative can take a newline together with a letter,
    digit or punctuation), and the text after the cut starts a pre-token. A text without such newlines stays whole.
    """
    pieces: list[str] = []
    start, n = 0, len(text)
    while n - start > 2 * size:
        i = text.find("\n", start + size)
        while i != -1 and not (_is_ascii_graphic(text[i - 1]) and i + 1 < n and _is_ascii_graphic(text[i + 1])):
            i = text.find("\n", i + 1)
        if i == -1:
            break
        pieces.append(text[start : i + 1])
        start = i + 1
    pieces.append(text[start:] if start else text)
    return pieces


def _encode_all(encode: Callable[[str], list[int]], jobs: list[str]) -> list[list[int]]:
    """`[encode(j) for j in jobs]`, on the thread pool when there is enough work (the engine releases the GIL)."""
    total = sum(map(len, jobs))
    workers = _parallel_workers()
    if workers < 2 or len(jobs) < 2 or total < _PARALLEL_MIN_CHARS:
        return [encode(j) for j in jobs]
    # Contiguous groups of about equal size, a few per worker so that one long text does not hold up the rest.
    n_groups = min(len(jobs), 4 * workers)
    per_group = total / n_groups
    groups: list[list[str]] = [[]]
    filled = 0
    for job in jobs:
        if filled >= per_group * len(groups) and len(groups) < n_groups:
            groups.append([])
        groups[-1].append(job)
        filled += len(job)
    futures = [_pool().submit(lambda group: [encode(j) for j in group], group) for group in groups]
    return [ids for future in futures for ids in future.result()]


# `__call__` keyword arguments and the values for which the call is a plain encoding (no template tokens, padding,
# truncation or extra fields): `GPT2TokenizerFast.__call__` builds that result directly (see `_plain_call`).
_PLAIN_CALL = {
    "add_special_tokens": (True, False),
    "padding": (False, None),
    "truncation": (None, False),
    "max_length": (None,),
    "stride": (0,),
    "is_split_into_words": (False,),
    "pad_to_multiple_of": (None,),
    "padding_side": (None,),
    "return_token_type_ids": (None, False),
    "return_attention_mask": (None, True, False),
    "return_overflowing_tokens": (False,),
    "return_special_tokens_mask": (False,),
    "return_offsets_mapping": (False,),
    "return_length": (False,),
    "add_prefix_space": (None, True, False),
}
_ANY_VALUE = frozenset(("verbose", "return_tensors"))


class GPT2TokenizerFast(_GPT2TokenizerBase):
    """GPT-2's tokenizer on native engines (tiktoken, Hugging Face `tokenizers`): `GPT2Tokenizer`'s API and ids.

    Needs `pip install tokenizers`; with `tiktoken` installed too (the `fast` extra), ids of GPT-2's vocabulary
    come from tiktoken, several times faster. Offsets and other vocabularies use `tokenizers`, whose
    `tokenizers.Tokenizer` is `backend_tokenizer`. Long texts and batches are encoded on all cores
    (`TOKENIZERS_PARALLELISM=false` turns that off).

    Args:
        vocab_file: Path to `vocab.json` (token -> id). With `merges_file` left out too, the shipped GPT-2
            vocabulary is used.
        merges_file: Path to `merges.txt` (one merge per line, in rank order, after a `#version` header).
        errors: How `decode` treats bytes that are not valid UTF-8 (a `bytes.decode` error handler).
        unk_token: The unknown token.
        bos_token: The beginning-of-sequence token (prepended only when `add_bos_token=True`).
        eos_token: The end-of-sequence token.
        pad_token: The padding token; GPT-2 has none, so padding needs e.g. `pad_token="<|endoftext|>"`. A special
            token missing from the vocabulary is added (as transformers does).
        add_prefix_space: Put a space before text that does not start with one.
        add_bos_token: Prepend `bos_token` when encoding with `add_special_tokens=True`.
        model_max_length: The longest input the model takes (1024 for GPT-2); the default for truncation.
        padding_side: `"right"` or `"left"`.
        truncation_side: `"right"` or `"left"`.
        vocab: A token -> id mapping to use instead of files (with `merges`).
        merges: The merges as pairs of token strings, in rank order (with `vocab`).
        name_or_path: Where the tokenizer came from (set by `from_pretrained`).
        sep_token, cls_token, mask_token: Further special-token roles (GPT-2 has none).
        additional_special_tokens: Extra special tokens, matched in text and skipped by `skip_special_tokens`.
    """

    def _build_backend(self) -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise ImportError(
                "GPT2TokenizerFast needs the `tokenizers` package: pip install tokenizers. "
                "GPT2Tokenizer gives the same ids in pure Python."
            ) from exc
        self._tokenizers = tokenizers
        self._backends: dict[bool, Any] = {}  # add_prefix_space -> tokenizers.Tokenizer, built on first use
        self._added_pattern: regex.Pattern | None = None
        shipped_encoder, shipped_merges = io.shipped_files()
        # tiktoken merges by the rank of the merged token; for GPT-2's vocabulary that gives the merge list's ids
        # (tests/test_tokenizer_speed.py checks every token), for another vocabulary it need not.
        self._gpt2_vocabulary = (self.encoder is shipped_encoder or self.encoder == shipped_encoder) and (
            self.merges is shipped_merges or self.merges == shipped_merges
        )

    def _on_added_tokens_changed(self) -> None:
        self._backends = {}
        # As GPT2Tokenizer: longest first, so the regex takes the longest added token at a position.
        tokens = sorted(self._added, key=len, reverse=True)
        self._added_pattern = regex.compile("|".join(regex.escape(t) for t in tokens)) if tokens else None

    def _tiktoken(self) -> Any:
        """tiktoken's encoding for this vocabulary, or None (another vocabulary, or tiktoken not installed)."""
        return _gpt2_tiktoken() if self._gpt2_vocabulary else None

    def _backend(self, add_prefix_space: bool) -> Any:
        backend = self._backends.get(add_prefix_space)
        if backend is None:
            backend = self._backends[add_prefix_space] = self._make_backend(add_prefix_space)
        return backend

    def _make_backend(self, add_prefix_space: bool) -> Any:
        tokenizers = self._tokenizers
        from tokenizers import decoders, models, pre_tokenizers

        vocab = dict(self.encoder)
        unk = self.unk_token
        if unk is not None and unk not in vocab:
            vocab[unk] = self.unk_token_id  # an added unk token must be in the model for BPE to emit it
        bpe = models.BPE(
            vocab=vocab,
            merges=list(self.merges),
            dropout=None,
            unk_token=unk,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
        backend = tokenizers.Tokenizer(bpe)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        for content, token in sorted(self._added.items(), key=lambda kv: self._added_ids[kv[0]]):
            added = tokenizers.AddedToken(content, special=token.special, normalized=False)
            backend.add_special_tokens([added]) if token.special else backend.add_tokens([added])
            if backend.token_to_id(content) != self._added_ids[content]:
                raise ValueError(
                    f"Added token {content!r} got id {backend.token_to_id(content)} from `tokenizers`, not "
                    f"{self._added_ids[content]}. Received: added token ids that are not consecutive after the "
                    "vocabulary. Use GPT2Tokenizer, or re-save the tokenizer with consecutive ids."
                )
        return backend

    def __call__(self, text: Any = None, text_pair: Any = None, *args: Any, **kwargs: Any) -> BatchEncoding:
        # Same arguments and result as `_GPT2TokenizerBase.__call__` (whose signature and docstring this method
        # carries). A plain call, the common `tokenizer(texts)`, is built here without the per-row template,
        # token type, special-token and offset lists that the general path makes and then drops: on a batch of
        # ~4 KB documents those cost about a tenth of the call. Everything else takes the general path.
        if args or text_pair is not None or not self._is_plain_call(kwargs):
            return super().__call__(text, text_pair, *args, **kwargs)
        if text is None or (isinstance(text, (list, tuple)) and text and not isinstance(text[0], str)):
            return super().__call__(text, text_pair, *args, **kwargs)  # targets, pairs, errors
        is_batch, texts, _ = _check_inputs(text, None)
        return_tensors = kwargs.get("return_tensors")
        _check_return_tensors(return_tensors)
        prefix = kwargs.get("add_prefix_space")
        prefix = self._add_prefix_space if prefix is None else bool(prefix)
        ids = [row for row, _ in self._encode_texts(texts, prefix, False)]  # fresh lists, owned by the result
        data: dict[str, Any] = {"input_ids": ids}
        if kwargs.get("return_attention_mask") is not False:
            data["attention_mask"] = [[1] * len(row) for row in ids]
        if return_tensors is not None:
            return BatchEncoding({k: _to_tensor(v, return_tensors, k) for k, v in data.items()})
        return BatchEncoding(data if is_batch else {k: v[0] for k, v in data.items()})

    __call__.__signature__ = inspect.signature(_GPT2TokenizerBase.__call__)  # type: ignore[attr-defined]
    __call__.__doc__ = _GPT2TokenizerBase.__call__.__doc__

    def _is_plain_call(self, kwargs: dict[str, Any]) -> bool:
        """Whether `__call__(text, **kwargs)` is a plain encoding: ids (and the all-ones mask) of each text."""
        if kwargs.get("add_special_tokens", True) and self.add_bos_token:
            return False
        for name, value in kwargs.items():
            if name in _ANY_VALUE:
                continue
            allowed = _PLAIN_CALL.get(name)
            # `is`, not `==`: 0 and 0.0 are not False for the general path's checks, nor an enum its value.
            if allowed is None or not any(value is a for a in allowed):
                return False
        return True

    @property
    def backend_tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` doing the work (for the current `add_prefix_space`)."""
        return self._backend(self._add_prefix_space)

    def _encode_texts(
        self, texts: Sequence[str], add_prefix_space: bool, with_offsets: bool
    ) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        if not texts:
            return []
        engine = None if with_offsets else self._tiktoken()
        if engine is None:
            encodings = self._backend(add_prefix_space).encode_batch(list(texts), add_special_tokens=False)
            return [(e.ids, list(e.offsets) if with_offsets else None) for e in encodings]
        # Split at added tokens (as GPT2Tokenizer, whose rules `tokenizers` follows too), cut long segments at
        # safe newlines, encode every piece of every text in one go, then put each text back together.
        jobs: list[str] = []
        plans: list[list[tuple[bool, int]]] = []  # per text: (True, job index) or (False, added token id)
        pattern = self._added_pattern
        for text in texts:
            plan: list[tuple[bool, int]] = []
            position = 0
            matches = pattern.finditer(text) if pattern is not None else ()
            for match in (*matches, None):
                end = len(text) if match is None else match.start()
                segment = text[position:end] if position or end < len(text) else text
                if segment:
                    if add_prefix_space and not segment.startswith(" "):
                        segment = " " + segment
                    for piece in _safe_cuts(segment, _CHUNK_CHARS) if len(segment) > 2 * _CHUNK_CHARS else (segment,):
                        plan.append((True, len(jobs)))
                        jobs.append(piece)
                if match is not None:
                    plan.append((False, self._added_ids[match.group()]))
                    position = match.end()
            plans.append(plan)
        results = _encode_all(engine.encode_ordinary, jobs)
        out: list[tuple[list[int], list[tuple[int, int]] | None]] = []
        for plan in plans:
            if len(plan) == 1 and plan[0][0]:
                out.append((results[plan[0][1]], None))
                continue
            ids: list[int] = []
            for is_job, value in plan:
                if is_job:
                    ids.extend(results[value])
                else:
                    ids.append(value)
            out.append((ids, None))
        return out
