"""Tokenizer files: find them (a local directory or a Hub id, through `gpt2_core.hub`), read them, write them.

Reads and writes what transformers reads and writes for GPT-2: `vocab.json` + `merges.txt` (OpenAI's format),
`tokenizer.json` (`tokenizers`' serialization, what transformers v5 loads first), `tokenizer_config.json` (with
v4's `added_tokens_decoder` and v5's `extra_special_tokens`), `special_tokens_map.json` and `added_tokens.json`
(v4's token -> id map of the added tokens). Every file is written to a temporary name and renamed
(`gpt2_core.hub.atomic_write_text`), so an interrupted save never leaves a half-written vocabulary.

References:
    - huggingface/transformers `tokenization_utils_base.py` (`save_pretrained`, `from_pretrained`) and
      `tokenization_utils_tokenizers.py` (v5): the file names and the fields of each file.
    - huggingface/tokenizers: the `tokenizer.json` layout (`added_tokens`, `pre_tokenizer`, `post_processor`,
      `decoder`, `model`).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

logger = logging.getLogger("gpt2_core.tokenization")

VOCAB_FILES_NAMES = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
ADDED_TOKENS_FILE = "added_tokens.json"
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
VERY_LARGE_INTEGER = int(1e30)

# The roles a special token can have, in transformers' order (SPECIAL_TOKENS_ATTRIBUTES).
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
HUB_KWARGS = ("cache_dir", "revision", "token", "local_files_only", "force_download", "subfolder")


@dataclass(frozen=True)
class AddedToken:
    """A token matched verbatim in text before BPE (transformers' / `tokenizers`' AddedToken, as data).

    Args:
        content: The token's text.
        special: Whether it is a special token (skipped by `decode(skip_special_tokens=True)`).
        single_word, lstrip, rstrip: Kept for the files; matching ignores them, as GPT-2's tokens never set them.
        normalized: Kept for the files (GPT-2 has no normalizer, so it does not change matching).
    """

    content: str
    special: bool = False
    single_word: bool = False
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool | None = None

    def to_dict(self, token_id: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {} if token_id is None else {"id": token_id}
        out.update(
            content=self.content,
            single_word=self.single_word,
            lstrip=self.lstrip,
            rstrip=self.rstrip,
            normalized=(not self.special) if self.normalized is None else self.normalized,
            special=self.special,
        )
        return out

    @classmethod
    def from_value(cls, value: Any, special: bool | None = None) -> "AddedToken":
        """From a str, a dict as in the files, or a transformers / `tokenizers` AddedToken."""
        if isinstance(value, str):
            return cls(value, special=bool(special))
        if isinstance(value, Mapping) and isinstance(value.get("content"), str):
            fields = {k: value[k] for k in ("single_word", "lstrip", "rstrip", "normalized") if k in value}
            return cls(value["content"], special=bool(value.get("special", special)), **fields)
        content = getattr(value, "content", None)
        if isinstance(content, str):
            is_special = getattr(value, "special", None)
            return cls(
                content,
                special=bool(special if is_special is None else is_special or special),
                single_word=bool(getattr(value, "single_word", False)),
                lstrip=bool(getattr(value, "lstrip", False)),
                rstrip=bool(getattr(value, "rstrip", False)),
                normalized=getattr(value, "normalized", None),
            )
        raise TypeError(
            f"A token must be a string or an AddedToken. Received: {value!r} of type {type(value).__name__}."
        )


def token_content(value: Any, name: str) -> str | None:
    """A special token given as a str, a transformers/tokenizers AddedToken or its serialized dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    content = getattr(value, "content", None)
    if isinstance(content, str):
        return content
    raise TypeError(f"{name} must be a string or None. Received: {name}={value!r}.")


# ---------------------------------------------------------------------- reading


def _read_text(path: str | os.PathLike, what: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{what} is not UTF-8 text (corrupt, or another file under its name). Received: path={str(path)!r} "
            f"({e.reason} at byte {e.start}). Save the tokenizer again (tokenizer.save_pretrained) or download it "
            "again."
        ) from e


def _read_json(path: str | os.PathLike, what: str) -> Any:
    """A tokenizer JSON file; a corrupt one is a ValueError naming the file (never a raw JSONDecodeError)."""
    text = _read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"{what} is not valid JSON (truncated or corrupt). Received: path={str(path)!r} ({e}). Save the "
            "tokenizer again (tokenizer.save_pretrained) or download it again."
        ) from e


def read_merges(path: str | os.PathLike) -> tuple[tuple[str, str], ...]:
    merges = []
    for lineno, line in enumerate(_read_text(path, "merges.txt").splitlines(), start=1):
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


def read_vocab(path: str | os.PathLike) -> dict[str, int]:
    vocab = _read_json(path, "vocab.json")
    if not isinstance(vocab, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()
    ):
        raise ValueError(
            f"vocab.json must map token strings to non-negative integer ids. Received: path={str(path)!r}. Save the "
            "tokenizer again, or pass GPT-2's vocab.json."
        )
    if len(set(vocab.values())) != len(vocab):
        seen: dict[int, str] = {}
        dup = next((t, seen[i]) for t, i in vocab.items() if seen.setdefault(i, t) != t)
        raise ValueError(
            f"vocab.json gives two tokens the same id. Received: path={str(path)!r}, {dup[1]!r} and {dup[0]!r} both "
            f"id {vocab[dup[0]]}. Save the tokenizer again, or pass GPT-2's vocab.json."
        )
    return vocab


def _is_special_looking(token: str) -> bool:
    return (token.startswith("<") and token.endswith(">")) or (token.startswith("[") and token.endswith("]"))


def check_vocab_merges(
    vocab: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    vocab_path: str | os.PathLike | None = None,
    merges_path: str | os.PathLike | None = None,
) -> None:
    """ValueError when `merges` cannot be this vocabulary's merges: a merge of tokens the vocabulary lacks, or a
    merges list that looks cut short (many multi-character tokens that no merge produces: what a `merges.txt`
    truncated at a line boundary looks like; BPE builds every token of its vocabulary, bytes, added and special
    tokens aside, by a merge).

    transformers loads such files silently; the tokenizer then splits text into more, different tokens.
    """
    where = f"vocab_file={str(vocab_path)!r}, merges_file={str(merges_path)!r}"
    produced = set()
    for lineno, (a, b) in enumerate(merges, start=1):
        merged = a + b
        if merged not in vocab:
            raise ValueError(
                f"merges.txt does not belong to vocab.json: merge {lineno} ({a!r} {b!r}) makes {merged!r}, which the "
                f"vocabulary lacks (a truncated line, or files of two tokenizers). Received: {where}. Pass the "
                "merges.txt saved with this vocab.json."
            )
        produced.add(merged)
    orphans = [t for t in vocab if len(t) > 1 and t not in produced and not _is_special_looking(t)]
    limit = max(16, len(vocab) // 1000)
    if len(orphans) > limit:
        by_id = sorted(orphans, key=lambda t: vocab[t])
        raise ValueError(
            f"merges.txt looks truncated: {len(orphans)} of the {len(vocab)} vocabulary tokens are made by no merge "
            f"(the first: {by_id[0]!r}, id {vocab[by_id[0]]}); BPE makes each multi-character token by one merge. "
            f"Received: {where} with {len(merges)} merges. Pass the whole merges.txt saved with this vocab.json."
        )


def read_vocab_files(
    vocab_path: str | os.PathLike, merges_path: str | os.PathLike
) -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """`vocab.json` and `merges.txt`, each checked (`read_vocab`, `read_merges`) and checked against each other
    (`check_vocab_merges`: a truncated merges.txt is an error, not a tokenizer that splits text differently)."""
    vocab, merges = read_vocab(vocab_path), read_merges(merges_path)
    check_vocab_merges(vocab, merges, vocab_path, merges_path)
    return vocab, merges


@dataclass
class TokenizerJson:
    """What `tokenizer.json` holds for a byte-level BPE."""

    vocab: dict[str, int]
    merges: tuple[tuple[str, str], ...]
    added_tokens: list[tuple[int, AddedToken]]
    add_prefix_space: bool | None


def read_tokenizer_json(path: str | os.PathLike) -> TokenizerJson:
    """Vocabulary, merges and added tokens from a `tokenizers` JSON file (what transformers v5 writes)."""
    data = _read_json(path, "tokenizer.json")
    model = (data.get("model") if isinstance(data, dict) else None) or {}
    if not isinstance(model, dict) or model.get("type") != "BPE":
        raise ValueError(
            f"{path} does not describe a BPE tokenizer. Received: model.type="
            f"{model.get('type') if isinstance(model, dict) else None!r}. "
            "Pass a directory with GPT-2's vocab.json and merges.txt."
        )
    vocab, raw_merges = model.get("vocab"), model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(raw_merges, list):
        raise ValueError(
            f"tokenizer.json lacks its BPE vocabulary or merges. Received: path={str(path)!r}, "
            f"model.vocab={type(vocab).__name__}, model.merges={type(raw_merges).__name__}. Save the tokenizer again."
        )
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vocab.values()):
        raise ValueError(
            f"tokenizer.json's vocabulary must map tokens to non-negative integer ids. Received: path={str(path)!r}. "
            "Save the tokenizer again."
        )
    try:
        merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in raw_merges)
        bad = next((m for m in merges if len(m) != 2 or not all(isinstance(p, str) and p for p in m)), None)
        added = [(int(t["id"]), AddedToken.from_value(t)) for t in data.get("added_tokens") or []]
    except (TypeError, KeyError, ValueError, AttributeError) as e:
        raise ValueError(
            f"tokenizer.json has a malformed merge or added token. Received: path={str(path)!r} ({e!r}). Save the "
            "tokenizer again."
        ) from e
    if bad is not None:
        raise ValueError(
            f"tokenizer.json has a malformed merge: each merge is two tokens. Received: path={str(path)!r}, "
            f"merge={list(bad)!r}. Save the tokenizer again."
        )
    check_vocab_merges(vocab, merges, path, path)
    pre = data.get("pre_tokenizer") or {}
    if pre.get("type") == "Sequence":
        pre = next((p for p in pre.get("pretokenizers", []) if p.get("type") == "ByteLevel"), {})
    add_prefix_space = pre.get("add_prefix_space") if pre.get("type") == "ByteLevel" else None
    return TokenizerJson(dict(vocab), merges, added, add_prefix_space)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1)
def shipped_files() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """GPT-2's vocabulary and merges from `gpt2_core/data`; parsed once per process, never to be mutated."""
    return read_vocab(_DATA_DIR / "vocab.json"), read_merges(_DATA_DIR / "merges.txt")


_CONFIG_KEYS = (
    "add_bos_token",
    "add_prefix_space",
    "errors",
    "model_max_length",
    "padding_side",
    "truncation_side",
    *SPECIAL_TOKEN_NAMES,
)


def read_config(path: str | os.PathLike, special_only: bool = False) -> dict[str, Any]:
    """Constructor arguments from a `tokenizer_config.json` or `special_tokens_map.json`.

    Added tokens come back under the private key `_added_tokens` as (id or None, AddedToken) pairs, the extra
    special tokens under `additional_special_tokens`.
    """
    config = _read_json(path, Path(path).name)
    if not isinstance(config, dict):
        raise ValueError(
            f"{Path(path).name} must hold a JSON object. Received: path={str(path)!r}, a {type(config).__name__}. "
            "Save the tokenizer again."
        )
    keys = SPECIAL_TOKEN_NAMES if special_only else _CONFIG_KEYS
    kwargs: dict[str, Any] = {k: config[k] for k in keys if k in config}
    for name in SPECIAL_TOKEN_NAMES:
        if name in kwargs:
            kwargs[name] = token_content(kwargs[name], name)
    extra = config.get("extra_special_tokens") or config.get("additional_special_tokens")
    if isinstance(extra, Mapping):  # v5 may name them: {"name": token}
        extra = list(extra.values())
    if extra:
        kwargs["additional_special_tokens"] = [token_content(t, "additional_special_tokens") for t in extra]
    decoder = config.get("added_tokens_decoder")
    if isinstance(decoder, Mapping) and not special_only:
        kwargs["_added_tokens"] = sorted(
            ((int(i), AddedToken.from_value(t)) for i, t in decoder.items()), key=lambda it: it[0]
        )
    if "model_max_length" in kwargs:
        # transformers writes 1e30 when a checkpoint has no limit; JSON may give it back as a float.
        kwargs["model_max_length"] = int(kwargs["model_max_length"])
    return kwargs


def read_added_tokens_json(path: str | os.PathLike) -> list[tuple[int, AddedToken]]:
    """transformers v4's `added_tokens.json` (token -> id), as (id, AddedToken) pairs in id order."""
    data = _read_json(path, "added_tokens.json")
    if not isinstance(data, dict) or not all(isinstance(i, int) and not isinstance(i, bool) for i in data.values()):
        raise ValueError(
            f"added_tokens.json must map token strings to integer ids. Received: path={str(path)!r}. Save the "
            "tokenizer again."
        )
    return sorted(((int(i), AddedToken(t)) for t, i in data.items()), key=lambda it: it[0])


# ---------------------------------------------------------------------- finding files


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


_OPTIONAL_FILES = (TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE, ADDED_TOKENS_FILE)


def resolve_tokenizer_files(name: str, hub_kwargs: Mapping[str, Any]) -> dict[str, Path | None]:
    """Map file names to local paths (None for optional files that are absent).

    A local directory or a Hub id, by `gpt2_core.hub.resolve_file`'s one rule; the known GPT-2 names use the
    shipped vocabulary (all values None) without touching the network.
    """
    hub_kwargs = dict(hub_kwargs)
    subfolder = hub_kwargs.pop("subfolder", None) or ""
    if name in KNOWN_GPT2_VOCAB_NAMES and not subfolder and not Path(name).is_dir():
        logger.debug("Using the shipped GPT-2 vocabulary for %r (no download).", name)
        return {f: None for f in _OPTIONAL_FILES}
    from gpt2_core import hub

    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, when it is imported.
    offline = bool(hub_kwargs.get("local_files_only")) or _env_flag("HF_HUB_OFFLINE")
    hub_kwargs["local_files_only"] = offline
    accepted = inspect.signature(hub.resolve_file).parameters
    for key in list(hub_kwargs):
        if key not in accepted:
            logger.warning("%s=%r is not supported by gpt2_core.hub.resolve_file; ignored.", key, hub_kwargs[key])
            del hub_kwargs[key]
    root = Path(name).expanduser()
    if subfolder and "subfolder" in accepted:
        hub_kwargs["subfolder"] = subfolder

    def fetch(filename: str) -> Path | None:
        path = f"{subfolder.strip('/')}/{filename}" if subfolder and "subfolder" not in accepted else filename
        try:
            return hub.resolve_file(name, path, required=False, **hub_kwargs)
        except FileNotFoundError as e:
            raise OSError(
                f"Tokenizer directory not found, and not a reachable Hub repo. Received: name_or_path={name!r} "
                f"({e}). Pass an existing directory with vocab.json and merges.txt, a Hub repo id, or 'gpt2' for "
                "the shipped vocabulary."
            ) from e

    files: dict[str, Path | None] = {}
    vocab, merges = fetch("vocab.json"), None
    if vocab is not None:
        merges = fetch("merges.txt")
    if vocab is not None and merges is not None:
        files["vocab.json"], files["merges.txt"] = vocab, merges
    else:
        files[TOKENIZER_FILE] = fetch(TOKENIZER_FILE)
        if files[TOKENIZER_FILE] is None:
            note = ""
            if offline and not root.is_dir():
                note = " (offline: HF_HUB_OFFLINE or local_files_only is set, and it is not cached)"
            where = f"directory {str(root / subfolder)!r}" if root.is_dir() else f"Hub repo {name!r}"
            raise OSError(
                f"Could not load a GPT-2 tokenizer for {name!r}{note}: the {where} has no vocab.json and "
                f"merges.txt (nor a tokenizer.json). Received: name_or_path={name!r}. Pass a local directory with "
                "vocab.json and merges.txt, a reachable Hub repo id, or 'gpt2' for the shipped vocabulary; save one "
                "with tokenizer.save_pretrained(dir)."
            )
    for filename in _OPTIONAL_FILES:
        files[filename] = fetch(filename)
    return files


# ---------------------------------------------------------------------- writing


def _atomic_write_text(path: Path, text: str) -> None:
    from gpt2_core.hub import atomic_write_text

    atomic_write_text(path, text)


def _dumps(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


@contextlib.contextmanager
def atomic_save(save_directory: str | os.PathLike) -> Iterator[Path]:
    """Stage a whole tokenizer save and publish it together, or nothing (`gpt2_core.hub.atomic_files`).

        with io.atomic_save(save_directory) as staging:
            written = [*io.write_pretrained(staging, ...), *io.write_vocab_files(staging, ...)]
        return io.published(written, save_directory)

    On any error (a full disk: `hub.DiskFullError`, Ctrl-C, SIGTERM inside `hub.sigterm_raises`) nothing in
    `save_directory` changes; two processes saving there leave one whole save, `tokenizer_config.json` published
    last. Other files in `save_directory` (a model) are kept.
    """
    from gpt2_core.hub import atomic_files

    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"save_directory must be a directory. Received: save_directory={os.fspath(save_directory)!r}, a file."
        )
    with atomic_files(directory, last=(TOKENIZER_CONFIG_FILE,)) as staging:
        yield staging


def published(paths: Sequence[str | os.PathLike], save_directory: str | os.PathLike) -> tuple[str, ...]:
    """The final paths in `save_directory` of files written into an `atomic_save` staging directory."""
    return tuple(str(Path(save_directory) / Path(p).name) for p in paths)


def prepare_directory(save_directory: str | os.PathLike) -> Path:
    directory = Path(save_directory)
    if directory.exists() and not directory.is_dir():
        raise ValueError(
            f"save_directory must be a directory. Received: save_directory={os.fspath(save_directory)!r}, a file."
        )
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_vocab_files(
    directory: Path, encoder: Mapping[str, int], merges: Sequence[tuple[str, str]], prefix: str = ""
) -> tuple[str, str]:
    """`vocab.json` (compact, id order) and `merges.txt`: byte for byte OpenAI's files for GPT-2's vocabulary."""
    vocab_path = directory / f"{prefix}{VOCAB_FILES_NAMES['vocab_file']}"
    merges_path = directory / f"{prefix}{VOCAB_FILES_NAMES['merges_file']}"
    ordered = dict(sorted(encoder.items(), key=lambda kv: kv[1]))
    _atomic_write_text(vocab_path, json.dumps(ordered))
    _atomic_write_text(merges_path, _MERGES_HEADER + "\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return str(vocab_path), str(merges_path)


def tokenizer_json(
    encoder: Mapping[str, int],
    merges: Sequence[tuple[str, str]],
    added_tokens: Sequence[tuple[int, AddedToken]],
    *,
    add_prefix_space: bool,
    bos_token: str | None,
    bos_token_id: int | None,
    add_bos_token: bool,
    unk_token: str | None,
) -> dict[str, Any]:
    """The `tokenizer.json` transformers v5 writes for GPT2Tokenizer (same pre-tokenizer, decoder, template)."""
    if add_bos_token and bos_token_id is not None:
        bos = {"SpecialToken": {"id": bos_token, "type_id": 0}}
        single = [bos, {"Sequence": {"id": "A", "type_id": 0}}]
        pair = [*single, {"SpecialToken": {"id": bos_token, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}]
        special = {bos_token: {"id": bos_token, "ids": [bos_token_id], "tokens": [bos_token]}}
    else:
        single = [{"Sequence": {"id": "A", "type_id": 0}}]
        pair = [*single, {"Sequence": {"id": "B", "type_id": 1}}]
        special = {}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [token.to_dict(i) for i, token in sorted(added_tokens, key=lambda it: it[0])],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "ByteLevel",
            "add_prefix_space": bool(add_prefix_space),
            "trim_offsets": True,
            "use_regex": True,
        },
        "post_processor": {"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            # Only set when the vocabulary lacks base byte tokens, which then become unk_token.
            "unk_token": unk_token if unk_token in encoder else None,
            "continuing_subword_prefix": "",
            "end_of_word_suffix": "",
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": dict(sorted(encoder.items(), key=lambda kv: kv[1])),
            "merges": [[a, b] for a, b in merges],
        },
    }


def write_pretrained(
    directory: Path,
    *,
    config: Mapping[str, Any],
    special_tokens_map: Mapping[str, Any],
    added_vocab: Mapping[str, int],
    tokenizer_json_data: Mapping[str, Any],
) -> list[str]:
    """Write `tokenizer_config.json`, `special_tokens_map.json`, `tokenizer.json` and, when tokens were added
    beyond `vocab.json`, `added_tokens.json`; return their paths."""
    written = []
    for filename, data in (
        (TOKENIZER_CONFIG_FILE, config),
        (SPECIAL_TOKENS_MAP_FILE, special_tokens_map),
    ):
        _atomic_write_text(directory / filename, _dumps(data))
        written.append(str(directory / filename))
    _atomic_write_text(directory / TOKENIZER_FILE, json.dumps(tokenizer_json_data, ensure_ascii=False, indent=2))
    written.append(str(directory / TOKENIZER_FILE))
    if added_vocab:
        _atomic_write_text(directory / ADDED_TOKENS_FILE, _dumps(dict(added_vocab)))
        written.append(str(directory / ADDED_TOKENS_FILE))
    return written


# ---------------------------------------------------------------------- push_to_hub


def push_to_hub(
    save: Callable[[Path], Any],
    repo_id: str,
    *,
    default_message: str,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> Any:
    """Upload what `save(directory)` writes to the Hub repo `repo_id`, as transformers' `push_to_hub`: the repo is
    created if missing (`HfApi.create_repo(exist_ok=True)`; `private` applies only then), the branch `revision` too
    (`HfApi.create_branch(exist_ok=True)`), then the saved folder is committed in one `HfApi.upload_folder`.

    The one upload of the project: tokenizers call it from `save_pretrained`'s output, the three backends' models
    through `weights_convert.push`. huggingface_hub is imported here, on use.

    Args:
        save: Writes the files into the (empty, temporary) directory it is given.
        repo_id: `"name"` (the token's namespace) or `"org/name"`.
        default_message: The commit message when `commit_message` is None (transformers': "Upload model",
            "Upload tokenizer").
        commit_message, commit_description: The commit's.
        private: Make a new repo private (None: the namespace's default).
        token: A Hub token; None or True: the stored login (`hf auth login`), False: none.
        revision: The branch to commit to (created from the default branch if missing).
        create_pr: Open a pull request with the files instead of committing to the branch.

    Returns:
        huggingface_hub's `CommitInfo` of the commit (its `commit_url`, `oid`, `pr_url`).
    """
    import tempfile

    if not isinstance(repo_id, str) or not repo_id.strip("/"):
        raise ValueError(
            f"repo_id must be a Hub repository name, 'name' or 'org/name'. Received: repo_id={repo_id!r}. "
            "Pass the repository to create or update."
        )
    try:
        from huggingface_hub import HfApi
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise ImportError("push_to_hub needs huggingface_hub: pip install huggingface_hub") from e

    api = HfApi()
    repo_id = api.create_repo(repo_id, private=private, token=token, exist_ok=True).repo_id
    if revision is not None and not revision.startswith("refs/pr"):
        api.create_branch(repo_id=repo_id, branch=revision, token=token, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="gpt2-push-") as tmp:
        save(Path(tmp))
        logger.info("Uploading %s to %s", ", ".join(sorted(os.listdir(tmp))), repo_id)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            commit_message=default_message if commit_message is None else commit_message,
            commit_description=commit_description,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )
