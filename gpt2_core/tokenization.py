"""GPT-2's byte-level BPE tokenizer: a pure-Python one and one backed by Hugging Face `tokenizers`.

Both classes take the same arguments, expose the same API (a drop-in subset of transformers' `GPT2Tokenizer`) and
give the same ids as OpenAI's encoder and tiktoken's "gpt2" encoding. With no files they use the vocabulary shipped in
`gpt2_core/data` (OpenAI's `encoder.json` and `vocab.bpe`, named `vocab.json` and `merges.txt` the Hugging Face way),
so they work offline; every GPT-2 size and distilgpt2 share that vocabulary.

References:
    - OpenAI, gpt-2 `src/encoder.py`: the pre-tokenization pattern, `bytes_to_unicode` and the BPE merge loop.
    - openai/tiktoken: the merge rule used here (merge the lowest-ranked adjacent pair, leftmost first).
    - huggingface/transformers `GPT2Tokenizer` (v4 and v5) and huggingface/tokenizers `ByteLevel`: the API, the
      files written by `save_pretrained`, and the handling of special tokens and `add_prefix_space`.

Only the standard library, numpy and `regex` are imported here; `tokenizers`, `huggingface_hub`, torch,
TensorFlow and JAX are imported when a feature that needs them is used.
"""

from __future__ import annotations

import codecs
import enum
import functools
import heapq
import json
import logging
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import regex

logger = logging.getLogger(__name__)

__all__ = ["BatchEncoding", "GPT2Tokenizer", "GPT2TokenizerFast", "bytes_to_unicode", "GPT2_PRETOKENIZE_PATTERN"]

# OpenAI's pre-tokenization pattern (gpt-2 src/encoder.py), unchanged.
GPT2_PRETOKENIZE_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

# Letters and numbers that Unicode 17.0 added, as inclusive code point ranges. tiktoken 0.14 (Rust `regex`) and
# `tokenizers` 0.23 (Oniguruma) classify characters by Unicode 16.0, where these are unassigned and so match
# `[^\s\p{L}\p{N}]`; `regex` releases with Unicode 17.0 tables (2026) call them letters or numbers, which would give
# other ids for text containing them. Taking them out of \p{L} and \p{N} pins the pure-Python tokenizer to Unicode
# 16.0 with any `regex` >= 2024.9.11 (the first release with Unicode 16.0). Found by pre-tokenizing every code point
# with both libraries; tests/test_tokenization.py checks these ranges and their neighbours against `tokenizers`.
_UNICODE_17_LETTERS_AND_NUMBERS = (
    (0x00558, 0x00558), (0x0058B, 0x0058C), (0x0088F, 0x0088F), (0x00C5C, 0x00C5C), (0x00CDC, 0x00CDC),
    (0x0208F, 0x0208F), (0x0209D, 0x0209F), (0x0A7CE, 0x0A7CF), (0x0A7D2, 0x0A7D2), (0x0A7D4, 0x0A7D4),
    (0x0A7DD, 0x0A7DD), (0x0A7E2, 0x0A7E2), (0x0A7F1, 0x0A7F1), (0x0AB6C, 0x0AB6D), (0x107BB, 0x107BF),
    (0x10940, 0x10959), (0x10EC5, 0x10EC7), (0x10ED9, 0x10EEE), (0x11B0A, 0x11B0A), (0x11DB0, 0x11DDB),
    (0x11DE0, 0x11DE9), (0x11DF1, 0x11DF1), (0x1246F, 0x1246F), (0x12475, 0x1247F), (0x12550, 0x12686),
    (0x16EA0, 0x16EB8), (0x16EBB, 0x16ED3), (0x16FF2, 0x16FF6), (0x187F8, 0x187FF), (0x18CD6, 0x18CDA),
    (0x18D09, 0x18D20), (0x18D80, 0x18DF2), (0x18E00, 0x19191), (0x191A0, 0x191D2), (0x1B123, 0x1B128),
    (0x1B168, 0x1B168), (0x1D6A6, 0x1D6A6), (0x1DF1F, 0x1DF24), (0x1DF2B, 0x1DF81), (0x1DF90, 0x1DF96),
    (0x1DFCD, 0x1DFFF), (0x1E6C0, 0x1E6DE), (0x1E6E0, 0x1E6E2), (0x1E6E4, 0x1E6E5), (0x1E6E7, 0x1E6ED),
    (0x1E6F0, 0x1E6F4), (0x1E6FE, 0x1E6FF), (0x2B73A, 0x2B73F), (0x2B81E, 0x2B81E), (0x2CEA2, 0x2CEAD),
    (0x323B0, 0x33479), (0x3D000, 0x3FC3F),
)  # fmt: skip
_NEW_IN_UNICODE_17 = "".join(rf"\U{a:08X}-\U{b:08X}" for a, b in _UNICODE_17_LETTERS_AND_NUMBERS)
_LETTER = rf"[\p{{L}}--[{_NEW_IN_UNICODE_17}]]"
_NUMBER = rf"[\p{{N}}--[{_NEW_IN_UNICODE_17}]]"
# GPT2_PRETOKENIZE_PATTERN with those classes; (?V1) turns on `regex`'s set subtraction `--`.
_PRETOKENIZE_PATTERN_UNICODE_16 = (
    rf"(?V1)'s|'t|'re|'ve|'m|'ll|'d| ?{_LETTER}+| ?{_NUMBER}+| ?[^\s{_LETTER}{_NUMBER}]+|\s+(?!\S)|\s+"
)

ENDOFTEXT = "<|endoftext|>"
VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_FILE = "tokenizer.json"

_DATA_DIR = Path(__file__).resolve().with_name("data")
_MERGES_HEADER = "#version: 0.2"

# Checkpoints whose tokenizer is OpenAI's GPT-2 vocabulary with model_max_length=1024; `from_pretrained` serves
# them from the shipped files without touching the network.
KNOWN_GPT2_VOCAB_NAMES = frozenset(
    {
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "gpt2-xl",
        "distilgpt2",
        "openai-community/gpt2",
        "openai-community/gpt2-medium",
        "openai-community/gpt2-large",
        "openai-community/gpt2-xl",
        "distilbert/distilgpt2",
    }
)

# transformers' VERY_LARGE_INTEGER: the model_max_length it writes when a checkpoint sets none.
_VERY_LARGE_INTEGER = int(1e30)
# Pre-tokens longer than this are not cached: they are rare and would let one input fill the cache.
_CACHE_MAX_PIECE_CHARS = 256
_CACHE_MAX_ENTRIES = 100_000

_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
_PADDING_STRATEGIES = {
    False: "do_not_pad",
    None: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION_STRATEGIES = {
    False: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "longest_first",  # with one sequence per example the two strategies agree
}
_TENSOR_TYPES = ("np", "pt", "tf", "jax")
_HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")

TokenIds = Union[Sequence[int], np.ndarray, Any]


@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Map every byte to a printable unicode character, as OpenAI's encoder does.

    Printable Latin-1 bytes map to themselves; the other 68 (control characters, space, NBSP, soft hyphen) map to
    U+0100 and up, so a BPE token is always a string without whitespace or control characters.

    Returns:
        A dict from byte value (0-255) to a one-character string. Do not mutate it; it is cached.
    """
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _read_merges(path: Path) -> tuple[tuple[str, str], ...]:
    merges = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if not line or (lineno == 1 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2 or not all(parts):
                raise ValueError(
                    f"Malformed merges file: line {lineno} should hold two tokens separated by one space. "
                    f"Received: {path}:{lineno}={line!r}. Pass a GPT-2 style merges.txt."
                )
            merges.append((parts[0], parts[1]))
    return tuple(merges)


def _read_vocab(path: Path) -> dict[str, int]:
    with open(path, encoding="utf-8") as f:
        vocab = json.load(f)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise ValueError(f"vocab.json must map token strings to integer ids. Received: {path}.")
    return vocab


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Vocabulary and merges from a `tokenizers` JSON file (what transformers v5 `save_pretrained` writes)."""
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise ValueError(
            f"{path} does not describe a BPE tokenizer. Received: model.type={model.get('type')!r}. "
            "Pass a directory with GPT-2's vocab.json and merges.txt."
        )
    vocab = dict(model["vocab"])
    for added in data.get("added_tokens", []):
        vocab.setdefault(added["content"], added["id"])
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges  # type: ignore[return-value]


@functools.lru_cache(maxsize=1)
def _shipped_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    # Parsed once per process; every tokenizer copies the dict, so this cached one is never mutated.
    return _read_vocab(_DATA_DIR / "vocab.json"), _read_merges(_DATA_DIR / "merges.txt")


def _token_content(value: Any, name: str) -> str | None:
    """A special token given as a str, a transformers/tokenizers AddedToken or its serialized dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content
    raise TypeError(f"{name} must be a string or None. Received: {name}={value!r}.")


def _atomic_write_text(path: Path, text: str) -> None:
    # Write beside the target and rename, so a crash never leaves a truncated vocabulary behind.
    from gpt2_core.hub import atomic_write_text

    atomic_write_text(path, text)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict (`input_ids`, `attention_mask`) that also allows attribute access.

    Args:
        data: The fields, e.g. `{"input_ids": ..., "attention_mask": ...}`.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}. Fields: {sorted(self)}.") from None

    @property
    def data(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dict(self)

    def to(self, device: Any) -> "BatchEncoding":
        """Move PyTorch tensors to `device`; other values (lists, NumPy, TF, JAX arrays) are left as they are.

        Args:
            device: Anything `torch.Tensor.to` accepts, e.g. `"cuda"` or a `torch.device`.

        Returns:
            This BatchEncoding, updated in place.
        """
        torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is already imported
        if torch is not None:
            for key, value in self.items():
                if isinstance(value, torch.Tensor):
                    self[key] = value.to(device)
        return self


def _special_token_property(name: str, doc: str) -> property:
    return property(lambda self: self._special.get(name), lambda self, value: self._set_special(name, value), doc=doc)


def _special_id_property(name: str) -> property:
    doc = f"The id of `{name}` (None when it is unset or not in the vocabulary); setting it sets `{name}`."
    return property(lambda self: self._special_id(name), lambda self, value: self._set_special_id(name, value), doc=doc)


_Tokenizer = TypeVar("_Tokenizer", bound="_GPT2TokenizerBase")


class _GPT2TokenizerBase:
    """Everything the two GPT-2 tokenizers share; subclasses only turn text into ids."""

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        errors: str = "replace",
        unk_token: str | None = ENDOFTEXT,
        bos_token: str | None = ENDOFTEXT,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        model_max_length: int = 1024,
        padding_side: str = "right",
        truncation_side: str = "right",
        *,
        vocab: Mapping[str, int] | None = None,
        merges: Iterable[Sequence[str]] | None = None,
        name_or_path: str = "",
    ) -> None:
        if (vocab_file is None) != (merges_file is None):
            raise ValueError(
                "Pass both vocab_file and merges_file, or neither to use the shipped GPT-2 vocabulary. "
                f"Received: vocab_file={vocab_file!r}, merges_file={merges_file!r}."
            )
        if (vocab is None) != (merges is None):
            raise ValueError("Pass both vocab and merges, or neither.")
        if vocab is not None:
            encoder, merge_list = dict(vocab), tuple((str(a), str(b)) for a, b in merges)  # type: ignore[union-attr]
        elif vocab_file is not None:
            encoder = _read_vocab(Path(vocab_file))
            merge_list = _read_merges(Path(merges_file))  # type: ignore[arg-type]
        else:
            shipped_encoder, merge_list = _shipped_files()
            encoder = dict(shipped_encoder)
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 1:
            raise ValueError(
                f"model_max_length must be a positive int. Received: model_max_length={model_max_length!r}."
            )
        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError):
            raise ValueError(
                f"Unknown decoding error handler. Received: errors={errors!r}. Use 'replace', 'strict' or 'ignore'."
            ) from None

        self.encoder: dict[str, int] = encoder
        self.decoder: dict[int, str] = {i: t for t, i in encoder.items()}
        self.merges: tuple[tuple[str, str], ...] = merge_list
        self.byte_encoder: dict[int, str] = bytes_to_unicode()
        self.byte_decoder: dict[str, int] = {c: b for b, c in self.byte_encoder.items()}
        self._check_vocabulary()
        self.errors = errors
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.name_or_path = name_or_path
        self._add_prefix_space = bool(add_prefix_space)
        self._special: dict[str, str | None] = {}
        self._text_special_tokens: list[str] = []  # special tokens recognised inside text, in registration order
        self._token_bytes: dict[int, bytes] = {}
        self._build_backend()
        self._register_text_special_token(ENDOFTEXT)
        self._warned_implicit_truncation = False
        self.unk_token, self.bos_token, self.eos_token, self.pad_token = unk_token, bos_token, eos_token, pad_token
        self._token_bytes = {i: self._bytes_of_token(t) for i, t in self.decoder.items()}

    # ------------------------------------------------------------------ construction helpers

    def _check_vocabulary(self) -> None:
        missing = [c for c in self.byte_encoder.values() if c not in self.encoder]
        if missing:
            raise ValueError(
                "vocab.json lacks byte-level base tokens, so some bytes could not be encoded. "
                f"Received: {len(missing)} missing, e.g. {missing[:5]}. Pass a GPT-2 style byte-level vocabulary."
            )
        for rank, (a, b) in enumerate(self.merges):
            if a not in self.encoder or b not in self.encoder or a + b not in self.encoder:
                raise ValueError(
                    f"Merge {rank} ({a!r} {b!r}) uses or makes a token missing from the vocabulary. "
                    f"Received: merges[{rank}]={(a, b)!r}. Pass the merges.txt that belongs to this vocab.json."
                )

    def _bytes_of_token(self, token: str) -> bytes:
        if token in self._text_special_tokens or any(c not in self.byte_decoder for c in token):
            return token.encode("utf-8")  # special tokens decode to their literal text
        return bytes(self.byte_decoder[c] for c in token)

    def _build_backend(self) -> None:
        raise NotImplementedError

    def _on_text_special_tokens_changed(self) -> None:
        raise NotImplementedError

    def _register_text_special_token(self, token: str | None) -> None:
        # Like transformers, special tokens that are in the vocabulary are matched verbatim inside input text.
        if token is None or token not in self.encoder or token in self._text_special_tokens:
            return
        self._text_special_tokens.append(token)
        if self._token_bytes:
            self._token_bytes[self.encoder[token]] = token.encode("utf-8")
        self._on_text_special_tokens_changed()

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls: type[_Tokenizer], name_or_path: str | os.PathLike, **kwargs: Any) -> _Tokenizer:
        """Load a tokenizer from a local directory, a known GPT-2 checkpoint name, or a Hub repo id.

        A directory needs `vocab.json` and `merges.txt` (or a BPE `tokenizer.json`); its optional
        `tokenizer_config.json` and `special_tokens_map.json` set `add_prefix_space`, `model_max_length`,
        `pad_token`, `padding_side` and the other constructor arguments. The names "gpt2", "gpt2-medium",
        "gpt2-large", "gpt2-xl", "distilgpt2" and their "openai-community/" / "distilbert/" forms use the shipped
        vocabulary without network access. Other names are downloaded with `huggingface_hub` (HF_HUB_OFFLINE=1
        restricts that to the local cache).

        Args:
            name_or_path: A directory or a Hub repo id.
            **kwargs: Constructor arguments, which override the saved configuration, and the Hub options
                `cache_dir`, `revision`, `token`, `local_files_only`, `force_download`, `subfolder`.

        Returns:
            The tokenizer.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
        name = os.fspath(name_or_path)
        files = _resolve_tokenizer_files(name, hub_kwargs)
        init_kwargs: dict[str, Any] = {}
        if files.get(TOKENIZER_CONFIG_FILE):
            init_kwargs.update(_config_to_kwargs(files[TOKENIZER_CONFIG_FILE]))
        if files.get(SPECIAL_TOKENS_MAP_FILE):
            init_kwargs.update(_config_to_kwargs(files[SPECIAL_TOKENS_MAP_FILE], special_only=True))
        if files.get("vocab.json"):
            init_kwargs["vocab_file"], init_kwargs["merges_file"] = files["vocab.json"], files["merges.txt"]
        elif files.get(TOKENIZER_FILE):
            init_kwargs["vocab"], init_kwargs["merges"] = _read_tokenizer_json(files[TOKENIZER_FILE])
        init_kwargs["name_or_path"] = name
        init_kwargs.update(kwargs)
        return cls(**init_kwargs)

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, str]:
        """Write `vocab.json` and `merges.txt` in OpenAI's format (byte-identical to the originals for GPT-2).

        Args:
            save_directory: An existing or new directory.
            filename_prefix: Optional prefix; files are then named `{prefix}-vocab.json` and `{prefix}-merges.txt`.

        Returns:
            The paths of the vocabulary file and the merges file.
        """
        directory = _prepare_directory(save_directory)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        vocab_path = directory / f"{prefix}{VOCAB_FILES_NAMES['vocab_file']}"
        merges_path = directory / f"{prefix}{VOCAB_FILES_NAMES['merges_file']}"
        ordered = dict(sorted(self.encoder.items(), key=lambda kv: kv[1]))
        _atomic_write_text(vocab_path, json.dumps(ordered))
        _atomic_write_text(merges_path, _MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in self.merges))
        return str(vocab_path), str(merges_path)

    def save_pretrained(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write the vocabulary and a transformers-compatible configuration to `save_directory`.

        Writes `vocab.json`, `merges.txt`, `tokenizer_config.json` and `special_tokens_map.json`; transformers'
        `GPT2Tokenizer.from_pretrained` and `AutoTokenizer.from_pretrained` load the directory.

        Args:
            save_directory: An existing or new directory.
            filename_prefix: Optional prefix for the vocabulary files (see `save_vocabulary`).

        Returns:
            The paths of the files written.
        """
        directory = _prepare_directory(save_directory)
        config = {
            "add_bos_token": self.add_bos_token,
            "add_prefix_space": self.add_prefix_space,
            "bos_token": self.bos_token,
            "clean_up_tokenization_spaces": False,
            "eos_token": self.eos_token,
            "errors": self.errors,
            "model_max_length": self.model_max_length,
            "pad_token": self.pad_token,
            "padding_side": self.padding_side,
            "tokenizer_class": "GPT2Tokenizer",
            "truncation_side": self.truncation_side,
            "unk_token": self.unk_token,
        }
        config_path = directory / TOKENIZER_CONFIG_FILE
        special_path = directory / SPECIAL_TOKENS_MAP_FILE
        _atomic_write_text(config_path, json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
        _atomic_write_text(special_path, json.dumps(self.special_tokens_map, indent=2, ensure_ascii=False) + "\n")
        return (str(config_path), str(special_path), *self.save_vocabulary(directory, filename_prefix))

    # ------------------------------------------------------------------ vocabulary and special tokens

    @property
    def vocab_size(self) -> int:
        """The number of tokens in the vocabulary (50257 for GPT-2)."""
        return len(self.encoder)

    def __len__(self) -> int:
        return len(self.encoder)

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping."""
        return dict(self.encoder)

    @property
    def add_prefix_space(self) -> bool:
        """Whether a space is put before text that does not start with one, so a leading word encodes like any other."""
        return self._add_prefix_space

    @add_prefix_space.setter
    def add_prefix_space(self, value: bool) -> None:
        self._add_prefix_space = bool(value)
        self._on_add_prefix_space_changed()

    def _on_add_prefix_space_changed(self) -> None:
        pass

    @property
    def padding_side(self) -> str:
        """`"right"` or `"left"`: where padding goes (left for batched generation)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _check_side(value, "padding_side")

    @property
    def truncation_side(self) -> str:
        """`"right"` or `"left"`: which end truncation removes tokens from."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _check_side(value, "truncation_side")

    def _set_special(self, name: str, value: Any) -> None:
        token = _token_content(value, name)
        self._special[name] = token
        self._register_text_special_token(token)

    bos_token = _special_token_property("bos_token", "The beginning-of-sequence token (`<|endoftext|>`).")
    eos_token = _special_token_property("eos_token", "The end-of-sequence token (`<|endoftext|>`).")
    unk_token = _special_token_property("unk_token", "The unknown token (`<|endoftext|>`).")
    pad_token = _special_token_property("pad_token", "The padding token; None by default, as GPT-2 has none.")

    def _special_id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self.encoder.get(token)

    def _set_special_id(self, name: str, value: int | None) -> None:
        if value is None:
            self._set_special(name, None)
            return
        (token,) = self.convert_ids_to_tokens([value])
        self._set_special(name, token)

    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    pad_token_id = _special_id_property("pad_token")

    @property
    def special_tokens_map(self) -> dict[str, str]:
        """The special tokens that are set, by role (`bos_token`, `eos_token`, `unk_token`, `pad_token`)."""
        return {name: self._special[name] for name in _SPECIAL_TOKEN_NAMES if self._special.get(name) is not None}

    @property
    def all_special_tokens(self) -> list[str]:
        """The distinct special token strings, in role order."""
        return list(dict.fromkeys(self.special_tokens_map.values()))

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of `all_special_tokens` that are in the vocabulary."""
        return [self.encoder[t] for t in self.all_special_tokens if t in self.encoder]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Map a token string (or a list of them) to ids; unknown tokens map to `unk_token_id`.

        Args:
            tokens: A token string such as `"Ġworld"`, or a list of them.

        Returns:
            An id, or a list of ids.
        """
        if isinstance(tokens, str):
            return self.encoder.get(tokens, self.unk_token_id)
        return [self.encoder.get(t, self.unk_token_id) for t in tokens]

    def convert_ids_to_tokens(self, ids: int | TokenIds, skip_special_tokens: bool = False) -> str | list[str]:
        """Map an id (or a sequence of ids) to token strings.

        Args:
            ids: An int, or a list / NumPy array / tensor of ints.
            skip_special_tokens: Drop special tokens from a list.

        Returns:
            A token string for an int, else a list of token strings.
        """
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self.decoder[self._as_id_list([ids], name="ids")[0]]
        id_list = self._as_id_list(ids, name="ids")
        if skip_special_tokens:
            special = set(self.all_special_ids)
            id_list = [i for i in id_list if i not in special]
        return [self.decoder[i] for i in id_list]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join BPE token strings back into text (undoing the byte-to-unicode mapping).

        Args:
            tokens: Token strings such as `["Hello", "Ġworld"]`.

        Returns:
            The text, with invalid UTF-8 handled according to `errors`.
        """
        data = b"".join(
            self._token_bytes[self.encoder[t]] if t in self.encoder else self._bytes_of_token(t) for t in tokens
        )
        return data.decode("utf-8", errors=self.errors)

    # ------------------------------------------------------------------ encoding

    def _encode_text(self, text: str) -> list[int]:
        raise NotImplementedError

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return [self._encode_text(t) for t in texts]

    def tokenize(self, text: str) -> list[str]:
        """Split text into BPE token strings (`"Ġworld"` is " world").

        Args:
            text: The text.

        Returns:
            The token strings.
        """
        return [self.decoder[i] for i in self._encode_text(_check_text(text, "text"))]

    def encode(
        self,
        text: str,
        add_special_tokens: bool = True,
        truncation: bool | str | None = None,
        max_length: int | None = None,
    ) -> list[int]:
        """Encode one text to token ids.

        Args:
            text: The text. `<|endoftext|>` inside it becomes the special token 50256.
            add_special_tokens: Prepend `bos_token` when `add_bos_token` is set (GPT-2 adds nothing otherwise).
            truncation: `True`/`"longest_first"` cuts to `max_length` (default `model_max_length`). Left as `None`,
                truncation happens only when `max_length` is given, as in transformers.
            max_length: The maximum number of ids.

        Returns:
            The ids.
        """
        return self(text, truncation=truncation, max_length=max_length, add_special_tokens=add_special_tokens)[
            "input_ids"
        ]

    def __call__(
        self,
        text: str | Sequence[str],
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        add_special_tokens: bool = True,
    ) -> BatchEncoding:
        """Encode a text or a batch of texts to `input_ids` and `attention_mask`.

        Args:
            text: A string or a list of strings.
            padding: `False`/`"do_not_pad"`; `True`/`"longest"` pads to the longest in the batch; `"max_length"`
                pads to `max_length` (default `model_max_length`). Needs a pad token: GPT-2 has none, so set
                `tokenizer.pad_token = tokenizer.eos_token` (the attention mask hides padding).
            truncation: `True`/`"longest_first"`/`"only_first"` cuts every sequence to `max_length` (default
                `model_max_length`); `False`/`"do_not_truncate"` keeps them. `None`: truncate only when `max_length`
                is given and `padding` is off, as transformers does.
            max_length: The length for truncation and `padding="max_length"`.
            pad_to_multiple_of: Round the padded length up to a multiple of this (useful for XLA and tensor cores).
            padding_side: `"right"` or `"left"` for this call; default `self.padding_side`.
            return_attention_mask: Include `attention_mask` (default `True`).
            return_tensors: `None` for lists, or `"np"`, `"pt"`, `"tf"`, `"jax"` for a `(B, T)` array or tensor (a
                single text gets `B=1`). The sequences must then have equal lengths (use padding).
            add_special_tokens: Prepend `bos_token` when `add_bos_token` is set.

        Returns:
            A BatchEncoding with `input_ids` and, unless disabled, `attention_mask`.
        """
        is_batch, texts = _check_text_or_batch(text)
        _check_optional_int(max_length, "max_length", minimum=0)
        _check_optional_int(pad_to_multiple_of, "pad_to_multiple_of", minimum=1)
        pad_strategy = _lookup(_PADDING_STRATEGIES, padding, "padding")
        if truncation is None:
            # transformers' rule: a max_length without padding means "truncate to it".
            truncation = max_length is not None and pad_strategy == "do_not_pad"
            if truncation and not self._warned_implicit_truncation:
                self._warned_implicit_truncation = True
                logger.warning(
                    "Truncating to max_length=%d because max_length was given without truncation; pass "
                    "truncation=True to do this without the warning, or truncation=False to keep full sequences.",
                    max_length,
                )
        trunc_strategy = _lookup(_TRUNCATION_STRATEGIES, truncation, "truncation")
        side = self.padding_side if padding_side is None else _check_side(padding_side, "padding_side")
        if return_tensors is not None and return_tensors not in _TENSOR_TYPES:
            raise ValueError(
                f"return_tensors must be None, 'np', 'pt', 'tf' or 'jax'. Received: return_tensors={return_tensors!r}."
            )
        if pad_strategy != "do_not_pad" and self.pad_token_id is None:
            raise ValueError(
                "Asking to pad but the tokenizer does not have a padding token. "
                f"Received: padding={padding!r}, pad_token={self.pad_token!r}. GPT-2 has no padding token of its own: "
                "set tokenizer.pad_token = tokenizer.eos_token (the attention mask hides the padding), or pass "
                "pad_token=... to the constructor or from_pretrained."
            )

        input_ids = self._encode_texts(texts)
        if add_special_tokens and self.add_bos_token:
            if self.bos_token_id is None:
                raise ValueError(
                    f"add_bos_token=True needs a bos_token in the vocabulary. Received: bos_token={self.bos_token!r}."
                )
            input_ids = [[self.bos_token_id, *ids] for ids in input_ids]

        if trunc_strategy != "do_not_truncate":
            limit = self.model_max_length if max_length is None else max_length
            if self.truncation_side == "right":
                input_ids = [ids[:limit] for ids in input_ids]
            else:
                input_ids = [ids[len(ids) - limit :] if len(ids) > limit else ids for ids in input_ids]

        attention_mask = [[1] * len(ids) for ids in input_ids]
        if pad_strategy != "do_not_pad":
            if pad_strategy == "longest":
                target = max((len(ids) for ids in input_ids), default=0)
            else:
                target = self.model_max_length if max_length is None else max_length
                if target >= _VERY_LARGE_INTEGER:
                    raise ValueError(
                        "padding='max_length' needs a length, and this tokenizer has no model_max_length. "
                        "Received: max_length=None. Pass max_length=..."
                    )
            if pad_to_multiple_of is not None and target % pad_to_multiple_of:
                target += pad_to_multiple_of - target % pad_to_multiple_of
            pad_id = self.pad_token_id
            padded_ids, padded_mask = [], []
            for ids, mask in zip(input_ids, attention_mask):
                n = max(target - len(ids), 0)
                if side == "right":
                    padded_ids.append(ids + [pad_id] * n)
                    padded_mask.append(mask + [0] * n)
                else:
                    padded_ids.append([pad_id] * n + ids)
                    padded_mask.append([0] * n + mask)
            input_ids, attention_mask = padded_ids, padded_mask

        data: dict[str, Any] = {"input_ids": input_ids}
        if return_attention_mask is None or return_attention_mask:
            data["attention_mask"] = attention_mask
        if return_tensors is not None:
            return BatchEncoding({k: _to_tensor(v, return_tensors, k) for k, v in data.items()})
        if not is_batch:
            data = {k: v[0] for k, v in data.items()}
        return BatchEncoding(data)

    # ------------------------------------------------------------------ decoding

    def _as_id_list(self, ids: Any, name: str = "token_ids") -> list[int]:
        if isinstance(ids, (list, tuple)):
            for position, i in enumerate(ids):
                if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                    raise TypeError(
                        f"{name} must be a 1-D sequence of ints (use batch_decode for a batch). "
                        f"Received: {name}[{position}]={i!r} of type {type(i).__name__}."
                    )
            id_list = [int(i) for i in ids]
        else:
            if hasattr(ids, "cpu") and callable(ids.cpu):
                ids = ids.cpu()  # a torch tensor on an accelerator
            array = np.asarray(ids)
            if array.ndim > 1:
                raise ValueError(
                    f"{name} must be 1-D; use batch_decode for a batch. Received: {name}.shape={array.shape}."
                )
            if array.size and array.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integers. Received: {name}.dtype={array.dtype}.")
            id_list = [int(i) for i in array.reshape(-1).tolist()]
        decoder = self.decoder
        for i in id_list:
            if i not in decoder:
                raise ValueError(
                    f"Token id {i} is out of range for this vocabulary (vocab_size={self.vocab_size}, valid ids "
                    f"0..{self.vocab_size - 1}). Received: {name} containing {i}. Check that the ids come from a "
                    "GPT-2 model and tokenizer."
                )
        return id_list

    def decode(
        self,
        token_ids: int | TokenIds,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        """Turn token ids back into text.

        Args:
            token_ids: An int, or a 1-D list / NumPy array / torch, TF or JAX tensor of ints.
            skip_special_tokens: Drop special tokens such as `<|endoftext|>`.
            clean_up_tokenization_spaces: Remove spaces before punctuation and contractions (" ." -> "."), as
                transformers v4 did. Off by default: it changes text that GPT-2 round-trips exactly.

        Returns:
            The text; byte sequences that are not valid UTF-8 are handled according to `errors`.
        """
        id_list = self._as_id_list(token_ids)
        if skip_special_tokens:
            special = set(self.all_special_ids)
            id_list = [i for i in id_list if i not in special]
        token_bytes = self._token_bytes
        text = b"".join([token_bytes[i] for i in id_list]).decode("utf-8", errors=self.errors)
        if clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(
        self,
        sequences: Sequence[TokenIds] | np.ndarray | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> list[str]:
        """Decode a batch of id sequences (a list of lists, or a 2-D array or tensor).

        Args:
            sequences: The batch.
            skip_special_tokens: Drop special tokens such as `<|endoftext|>`.
            clean_up_tokenization_spaces: See `decode`.

        Returns:
            One string per sequence.
        """
        if not isinstance(sequences, (list, tuple)):
            if hasattr(sequences, "cpu") and callable(sequences.cpu):
                sequences = sequences.cpu()
            array = np.asarray(sequences)
            if array.ndim != 2:
                raise ValueError(f"batch_decode expects a 2-D batch of ids. Received: sequences.shape={array.shape}.")
            sequences = list(array)
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"add_prefix_space={self.add_prefix_space}, special_tokens={self.special_tokens_map})"
        )


class GPT2Tokenizer(_GPT2TokenizerBase):
    """GPT-2's byte-level BPE tokenizer in pure Python (stdlib + `regex`), a drop-in for transformers' GPT2Tokenizer.

    Text is split with OpenAI's pattern (its character classes pinned to Unicode 16.0, as in tiktoken and
    `tokenizers`), each piece's UTF-8 bytes are mapped to base tokens and merged by BPE rank; results are cached per
    piece, so repeated words cost one dict lookup. `<|endoftext|>` in text becomes
    the special token 50256.

    Args:
        vocab_file: Path to `vocab.json` (token -> id). With `merges_file` left out too, the shipped GPT-2
            vocabulary is used.
        merges_file: Path to `merges.txt` (one merge per line, in rank order, after a `#version` header).
        errors: How `decode` treats bytes that are not valid UTF-8 (a `bytes.decode` error handler).
        unk_token: The unknown token.
        bos_token: The beginning-of-sequence token (prepended only when `add_bos_token=True`).
        eos_token: The end-of-sequence token.
        pad_token: The padding token; GPT-2 has none, so padding needs e.g. `pad_token="<|endoftext|>"`.
        add_prefix_space: Put a space before text that does not start with one, so the first word encodes
            like the others (GPT-2 was not trained this way).
        add_bos_token: Prepend `bos_token` when encoding with `add_special_tokens=True`.
        model_max_length: The longest input the model takes (1024 for GPT-2); the default for truncation.
        padding_side: `"right"` or `"left"`.
        truncation_side: `"right"` or `"left"`.
        vocab: A token -> id mapping to use instead of files (with `merges`).
        merges: The merges as pairs of token strings, in rank order (with `vocab`).
        name_or_path: Where the tokenizer came from (set by `from_pretrained`).
    """

    def _build_backend(self) -> None:
        self._pattern = regex.compile(_PRETOKENIZE_PATTERN_UNICODE_16)
        self._special_pattern: regex.Pattern | None = None
        encoder = self.encoder
        self._byte_ids = [encoder[self.byte_encoder[b]] for b in range(256)]
        # (left id, right id) -> (rank, merged id); a pair listed twice keeps its lower rank.
        self._merge_table: dict[tuple[int, int], tuple[int, int]] = {}
        for rank, (a, b) in enumerate(self.merges):
            self._merge_table.setdefault((encoder[a], encoder[b]), (rank, encoder[a + b]))
        self._cache: dict[str, tuple[int, ...]] = {}

    def _on_text_special_tokens_changed(self) -> None:
        # Longest first, so the regex takes the longest special token at a position (leftmost-longest).
        tokens = sorted(self._text_special_tokens, key=len, reverse=True)
        self._special_pattern = regex.compile("(" + "|".join(regex.escape(t) for t in tokens) + ")")

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE-merge one pre-token: repeatedly merge the lowest-ranked adjacent pair, the leftmost on ties.

        A heap of candidate pairs over a linked list keeps this O(n log n), so a long run of letters or
        punctuation does not take quadratic time. Heap entries whose pair has changed since are skipped.
        """
        byte_ids = self._byte_ids
        ids = [byte_ids[b] for b in piece.encode("utf-8")]
        n = len(ids)
        if n < 2:
            return tuple(ids)
        table = self._merge_table
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap = []
        for i in range(n - 1):
            merge = table.get((ids[i], ids[i + 1]))
            if merge is not None:
                heap.append((merge[0], i))
        heapq.heapify(heap)
        while heap:
            rank, i = heapq.heappop(heap)
            j = nxt[i]
            if not alive[i] or j >= n:
                continue
            merge = table.get((ids[i], ids[j]))
            if merge is None or merge[0] != rank:
                continue  # stale: a neighbour was merged since this entry was pushed
            ids[i] = merge[1]
            alive[j] = False
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                merge = table.get((ids[i], ids[k]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], i))
            h = prv[i]
            if h >= 0:
                merge = table.get((ids[h], ids[i]))
                if merge is not None:
                    heapq.heappush(heap, (merge[0], h))
        return tuple(ids[i] for i in range(n) if alive[i])

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        cache = self._cache
        for piece in self._pattern.findall(text):
            piece_ids = cache.get(piece)
            if piece_ids is None:
                piece_ids = self._bpe(piece)
                if len(piece) <= _CACHE_MAX_PIECE_CHARS:
                    if len(cache) >= _CACHE_MAX_ENTRIES:
                        cache.clear()
                    cache[piece] = piece_ids
            ids.extend(piece_ids)
        return ids

    def _encode_text(self, text: str) -> list[int]:
        # Special tokens split the text first; like `tokenizers`' ByteLevel pre-tokenizer, add_prefix_space then
        # applies to every non-empty segment between them that does not start with a space.
        segments = self._special_pattern.split(text) if self._special_pattern is not None else [text]
        ids: list[int] = []
        for index, segment in enumerate(segments):
            if index % 2:
                ids.append(self.encoder[segment])
            elif segment:
                if self._add_prefix_space and not segment.startswith(" "):
                    segment = " " + segment
                ids.extend(self._encode_ordinary(segment))
        return ids


class GPT2TokenizerFast(_GPT2TokenizerBase):
    """GPT-2's tokenizer backed by Hugging Face `tokenizers` (Rust): the same API and ids as `GPT2Tokenizer`.

    Needs `pip install tokenizers`. The underlying `tokenizers.Tokenizer` is `backend_tokenizer`.

    Args:
        vocab_file: Path to `vocab.json` (token -> id). With `merges_file` left out too, the shipped GPT-2
            vocabulary is used.
        merges_file: Path to `merges.txt` (one merge per line, in rank order, after a `#version` header).
        errors: How `decode` treats bytes that are not valid UTF-8 (a `bytes.decode` error handler).
        unk_token: The unknown token.
        bos_token: The beginning-of-sequence token (prepended only when `add_bos_token=True`).
        eos_token: The end-of-sequence token.
        pad_token: The padding token; GPT-2 has none, so padding needs e.g. `pad_token="<|endoftext|>"`.
        add_prefix_space: Put a space before text that does not start with one.
        add_bos_token: Prepend `bos_token` when encoding with `add_special_tokens=True`.
        model_max_length: The longest input the model takes (1024 for GPT-2); the default for truncation.
        padding_side: `"right"` or `"left"`.
        truncation_side: `"right"` or `"left"`.
        vocab: A token -> id mapping to use instead of files (with `merges`).
        merges: The merges as pairs of token strings, in rank order (with `vocab`).
        name_or_path: Where the tokenizer came from (set by `from_pretrained`).
    """

    def _build_backend(self) -> None:
        try:
            import tokenizers
            from tokenizers import decoders, models, pre_tokenizers
        except ImportError as exc:
            raise ImportError(
                "GPT2TokenizerFast needs the `tokenizers` package: pip install tokenizers. "
                "GPT2Tokenizer gives the same ids in pure Python."
            ) from exc
        self._tokenizers = tokenizers
        bpe = models.BPE(
            vocab=self.encoder,
            merges=list(self.merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
        self._tokenizer = tokenizers.Tokenizer(bpe)
        self._tokenizer.decoder = decoders.ByteLevel()
        self._pre_tokenizers = pre_tokenizers
        self._on_add_prefix_space_changed()

    def _on_add_prefix_space_changed(self) -> None:
        self._tokenizer.pre_tokenizer = self._pre_tokenizers.ByteLevel(
            add_prefix_space=self._add_prefix_space, use_regex=True
        )

    def _on_text_special_tokens_changed(self) -> None:
        token = self._text_special_tokens[-1]
        self._tokenizer.add_special_tokens([self._tokenizers.AddedToken(token, special=True, normalized=False)])

    @property
    def backend_tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` doing the work."""
        return self._tokenizer

    def _encode_text(self, text: str) -> list[int]:
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _encode_texts(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=False)]


# ---------------------------------------------------------------------- helpers


def _check_side(value: Any, name: str) -> str:
    if value not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right'. Received: {name}={value!r}.")
    return value


def _check_optional_int(value: Any, name: str, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum} or None. Received: {name}={value!r}.")


def _lookup(table: dict, value: Any, name: str) -> str:
    if isinstance(value, enum.Enum):
        value = value.value  # transformers' PaddingStrategy / TruncationStrategy
    # A plain `table[value]` would accept 1 and 0 as True and False, so the types must match too.
    for key, strategy in table.items():
        if type(key) is type(value) and key == value:
            return strategy
    allowed = ", ".join(repr(k) for k in table if k is not None)
    raise ValueError(f"Unknown {name} strategy. Received: {name}={value!r}. Use one of {allowed}.")


_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{name} must be a string. Received: {name}={_short_repr(text)} of type {type(text).__name__}. "
            "To decode ids use decode(); pass a list of strings to __call__ for a batch."
        )
    if not text.isascii():
        surrogate = _SURROGATE.search(text)
        if surrogate is not None:
            # UTF-8 cannot encode a lone surrogate (left over from broken UTF-16), so it has no byte-level tokens.
            raise ValueError(
                f"{name} contains a lone surrogate, which UTF-8 cannot encode. Received: "
                f"{name}[{surrogate.start()}]={surrogate.group()!r}. Repair the text first, e.g. "
                "text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')."
            )
    return text


def _check_text_or_batch(text: Any) -> tuple[bool, list[str]]:
    if isinstance(text, str):
        return False, [_check_text(text, "text")]
    if isinstance(text, (list, tuple)):
        for i, t in enumerate(text):
            _check_text(t, f"text[{i}]")
        return True, list(text)
    raise TypeError(
        "text must be a string or a list of strings. "
        f"Received: text={_short_repr(text)} of type {type(text).__name__}."
    )


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _to_tensor(rows: list[list[int]], return_tensors: str, name: str) -> Any:
    lengths = sorted({len(r) for r in rows})
    if len(lengths) > 1:
        raise ValueError(
            f"Unable to make one tensor from sequences of different lengths. Received: {name} lengths "
            f"{lengths[0]}..{lengths[-1]}, return_tensors={return_tensors!r}. Pass padding=True (with a pad_token, "
            "e.g. tokenizer.pad_token = tokenizer.eos_token) and/or truncation=True with max_length."
        )
    array = np.asarray(rows, dtype=np.int64).reshape(len(rows), lengths[0] if lengths else 0)  # (B, T)
    if return_tensors == "np":
        return array
    if return_tensors == "pt":
        import torch

        return torch.from_numpy(array)
    # TF and JAX get int32, as transformers gives them (JAX has no int64 unless x64 is enabled).
    if return_tensors == "tf":
        import tensorflow as tf

        return tf.constant(array.astype(np.int32))
    import jax.numpy as jnp

    return jnp.asarray(array.astype(np.int32))


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, unchanged.
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )


def _prepare_directory(save_directory: str | os.PathLike) -> Path:
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"save_directory must be a directory. Received: save_directory={os.fspath(save_directory)!r}, a file."
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


_CONFIG_KEYS = (
    "add_bos_token",
    "add_prefix_space",
    "errors",
    "model_max_length",
    "padding_side",
    "truncation_side",
    *_SPECIAL_TOKEN_NAMES,
)


def _config_to_kwargs(path: str | os.PathLike, special_only: bool = False) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    keys = _SPECIAL_TOKEN_NAMES if special_only else _CONFIG_KEYS
    kwargs = {k: config[k] for k in keys if k in config}
    for name in _SPECIAL_TOKEN_NAMES:
        if name in kwargs:
            kwargs[name] = _token_content(kwargs[name], name)
    if "model_max_length" in kwargs:
        # transformers writes 1e30 when a checkpoint has no limit; JSON may give it back as a float.
        kwargs["model_max_length"] = int(kwargs["model_max_length"])
    return kwargs


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name.count("/") > 1
        or os.sep in name.replace("/", "")
        or os.path.exists(name)
    )


def _resolve_tokenizer_files(name: str, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Map file names to local paths (None for optional files that are absent)."""
    subfolder = hub_kwargs.get("subfolder") or ""
    local = Path(name).expanduser() / subfolder
    optional = (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE)
    if local.is_dir():
        files: dict[str, Any] = {f: (local / f if (local / f).is_file() else None) for f in optional}
        if (local / "vocab.json").is_file() and (local / "merges.txt").is_file():
            files["vocab.json"], files["merges.txt"] = local / "vocab.json", local / "merges.txt"
        elif (local / TOKENIZER_FILE).is_file():
            files[TOKENIZER_FILE] = local / TOKENIZER_FILE
        else:
            raise OSError(
                f"No GPT-2 tokenizer files in directory {str(local)!r}: it needs vocab.json and merges.txt (or a "
                f"tokenizer.json). Received: name_or_path={name!r}. Save one with tokenizer.save_pretrained(dir)."
            )
        return files
    if name in KNOWN_GPT2_VOCAB_NAMES and not subfolder:
        logger.debug("Using the shipped GPT-2 vocabulary for %r (no download).", name)
        return {f: None for f in optional}
    if _looks_like_path(name):
        raise OSError(
            f"Tokenizer directory not found. Received: name_or_path={name!r}. Pass an existing directory with "
            "vocab.json and merges.txt, a Hub repo id, or 'gpt2' for the shipped vocabulary."
        )
    return _download_tokenizer_files(name, hub_kwargs)


def _download_tokenizer_files(repo_id: str, hub_kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as exc:
        raise ImportError(
            f"Loading {repo_id!r} from the Hugging Face Hub needs huggingface_hub: pip install huggingface_hub. "
            "Or pass a local directory with vocab.json and merges.txt, or 'gpt2' for the shipped vocabulary."
        ) from exc
    kwargs = dict(hub_kwargs)
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, when it is imported.
    kwargs["local_files_only"] = bool(kwargs.get("local_files_only")) or _env_flag("HF_HUB_OFFLINE")

    def fetch(filename: str) -> str:
        return hf_hub_download(repo_id, filename, **kwargs)

    files: dict[str, Any] = {}
    try:
        files["vocab.json"], files["merges.txt"] = fetch("vocab.json"), fetch("merges.txt")
    except Exception as first_error:  # noqa: BLE001 - any failure: try the tokenizers JSON, else report the first
        try:
            files[TOKENIZER_FILE] = fetch(TOKENIZER_FILE)
        except Exception:  # noqa: BLE001
            offline = ""
            if kwargs["local_files_only"]:
                offline = " (offline: HF_HUB_OFFLINE or local_files_only is set, and it is not cached)"
            raise OSError(
                f"Could not load a GPT-2 tokenizer for {repo_id!r}{offline}: {type(first_error).__name__}: "
                f"{first_error}. Received: name_or_path={repo_id!r}. Pass a local directory with vocab.json and "
                "merges.txt, a reachable Hub repo id, or 'gpt2' for the shipped vocabulary."
            ) from first_error
    for filename in (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE):
        try:
            files[filename] = fetch(filename)
        except Exception as exc:  # noqa: BLE001 - optional files: absent is normal
            logger.debug("No %s for %r: %s", filename, repo_id, exc)
            files[filename] = None
    return files
