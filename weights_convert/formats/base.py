"""What every format module shares: the `Format` record the registry holds, the opened `Checkpoint`, the writers'
`Source`, dtypes, shard plans and the name mappings from a file's names to canonical keys.

A format module (`safetensors`, `pytorch`, `tf_h5`, `flax_msgpack`, `openai`) defines one `FORMAT = Format(...)`:
a lister (file -> {name in the file: (shape, dtype, loader)}, read lazily) and a writer (canonical tensors ->
files in a directory). `weights_convert.formats` keeps the registry and the format-independent steps.

bfloat16, the one rule: a canonical dict holds every tensor in the dtype of the file, and bfloat16 tensors are
`ml_dtypes.bfloat16` NumPy arrays (the bits unchanged, never widened to float32) on every read path; each backend's
`load_canonical` casts to its parameters' dtype.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import sys
import weakref
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Callable, Iterator, Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config

logger = logging.getLogger("weights_convert.formats")

DTYPES = ("float32", "float16", "bfloat16")

# {name in the file: (shape, dtype, loader)}: what a lister gives, before any tensor is read.
Listing = dict[str, tuple[tuple[int, ...], np.dtype, Callable[[], np.ndarray]]]
# (files, closers) -> (listing, head the file's own metadata names or None)
Lister = Callable[[list[Path], list], tuple[Listing, "str | None"]]
# (directory, config, head, source, max_shard_size) -> files written
Writer = Callable[..., list[Path]]


# ---------------------------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------------------------


def bfloat16() -> np.dtype:
    """NumPy's bfloat16 (`ml_dtypes`): how a bfloat16 tensor is held in a canonical dict."""
    try:
        import ml_dtypes
    except ImportError as e:
        raise ImportError("bfloat16 tensors need ml_dtypes for NumPy: pip install ml_dtypes") from e
    return np.dtype(ml_dtypes.bfloat16)


def numpy_dtype(name: str | None) -> np.dtype | None:
    """'float32' / 'float16' / 'bfloat16' (or None: keep each tensor's dtype) -> NumPy dtype."""
    if name is None:
        return None
    if name not in DTYPES:
        raise ValueError(f"Unsupported dtype. Received: dtype={name!r}. Use one of {DTYPES}.")
    return bfloat16() if name == "bfloat16" else np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else np.dtype(dtype).name


# The dtypes a weight may have in a file: the model's parameters are floats, so an integer or boolean tensor where a
# weight belongs is a corrupt or foreign file (transformers would copy its values into the float parameter).
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def is_float_dtype(dtype: np.dtype) -> bool:
    return dtype_name(np.dtype(dtype)) in FLOAT_DTYPES


def non_finite(tensors, keys=None) -> list[tuple[str, int, tuple[int, ...]]]:
    """(key, count of NaN/inf values, index of the first) of every tensor holding a non-finite value, in order.

    Reads each tensor once (a `Checkpoint` or a dict); bfloat16 (`ml_dtypes`) included."""
    out = []
    for key in tensors.keys() if keys is None else keys:
        value = np.asarray(tensors[key])
        if not is_float_dtype(value.dtype):
            continue
        bad = ~np.isfinite(value)
        if bad.any():
            first = tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), value.shape))
            out.append((key, int(bad.sum()), first))
    return out


def non_finite_message(found: list[tuple[str, int, tuple[int, ...]]], where: str) -> str:
    key, count, first = found[0]
    more = f" (and {len(found) - 1} more tensors: {[k for k, _, _ in found[1:6]]})" if len(found) > 1 else ""
    return (
        f"The weights hold NaN or inf values: tensor {key!r} has {count} non-finite value(s), the first at index "
        f"{list(first)}{more}. Received: {where}."
    )


# ---------------------------------------------------------------------------------------------------------------
# The registry's record of one format
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Format:
    """One checkpoint format: how it is found, listed, named and written.

    Args:
        name: The registry name (`FORMATS`).
        files: (single file, shard index) names in a checkpoint directory; empty for formats found otherwise.
        suffixes: File name endings that say a file is in this format.
        lister: Files -> their tensors (`Lister`), read one at a time later.
        writer: Canonical tensors -> files in a directory (`Writer`).
        table: The `gpt2_core.naming.FILE_FORMATS` table of its names; None for Hub (PyTorch) names.
        strip: A tree prefix some files put before the body names (Flax task models' `transformer/`).
        signature: A test on a file's first 16 bytes (formats with a magic number); None if it has none.
        claims: A test on a file name, instead of `suffixes`.
        locator: path -> (files, directory beside them), instead of `files`.
        config_beside: directory -> the config when it has no config.json (OpenAI's hparams.json), or None.
        default_head: The head when neither the names nor config.json say (None: `lm` if the body is prefixed,
            else `base`).
        mapped: Its lister's loaders take `copy=False` and then return a read-only memory map of the tensor instead
            of a copy in memory (`Checkpoint.view`).
    """

    name: str
    files: tuple[str, ...]
    suffixes: tuple[str, ...]
    lister: Lister
    writer: Writer
    table: str | None = None
    strip: str = ""
    signature: Callable[[bytes], bool] | None = None
    claims: Callable[[str], bool] | None = None
    locator: Callable[[Path], tuple[list[Path], Path]] | None = None
    config_beside: Callable[[Path], GPT2Config | None] | None = None
    default_head: str | None = None
    mapped: bool = False

    def claims_name(self, name: str) -> bool:
        return self.claims(name) if self.claims is not None else name.endswith(self.suffixes)

    def locate(self, path: Path) -> tuple[list[Path], Path]:
        """(the files of this format at `path`, the directory they are in)."""
        if self.locator is not None:
            return self.locator(path)
        if not path.exists():
            raise FileNotFoundError(f"No such file or directory. Received: path={str(path)!r}.")
        return self.weight_files(path), path if path.is_dir() else path.parent

    def weight_files(self, path: Path) -> list[Path]:
        """The files of this format at `path` (a file, or a directory with a single file or an index of shards)."""
        single, index = self.files
        if path.is_dir():
            if (path / single).is_file():
                return [path / single]
            if not (path / index).is_file():
                raise FileNotFoundError(f"No {single} or {index} in the directory. Received: path={str(path)!r}.")
            path = path / index
        if hub.is_index_name(path.name):
            # read_index confines the shard names to plain file names beside the index
            files = [path.parent / name for name in sorted(set(hub.read_index(path).values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(f"Shards listed in {path.name} are missing. Received: missing={missing[:5]}.")
            return files
        return [path]


def corrupt(path: Path, e: BaseException, what: str = "checkpoint") -> ValueError:
    return ValueError(
        f"Cannot read the {what}; it is truncated or corrupt, or not a {what}. Received: path={str(path)!r} "
        f"({type(e).__name__}: {str(e)[:200]}). Download or save it again."
    )


def stub(shape, dtype) -> np.ndarray:
    """A zero-memory array of `shape` for shape checks before any data is read."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(s) for s in shape))


# ---------------------------------------------------------------------------------------------------------------
# The opened checkpoint
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class Checkpoint:
    """A checkpoint opened for reading: config, head and canonical tensors, read one at a time.

    Args:
        format: One of `FORMATS`.
        config: The model's `GPT2Config`.
        head: One of `gpt2_core.naming.HEADS`.
        shapes: Canonical key -> shape (in canonical layout).
        dtypes: Canonical key -> dtype stored in the file.
        source_dir: The directory the checkpoint came from (tokenizer files are copied from there).
        missing_head_keys: Head keys the file lacks (only when opened with `allow_missing_head`), and head keys
            whose shape differs from the config's (only with `ignore_mismatched_sizes`).
        unexpected_keys: Tensors of the file the `head` model does not use (another task's head), under the file's
            names; the old causal-mask buffers (`naming.IGNORED_KEY_PATTERNS`) and a tied `lm_head.weight` copy are
            not listed, as transformers does not list them.
        mismatched_keys: (key, shape in the file, shape the config gives) of the head tensors left out because their
            shape differs (only with `ignore_mismatched_sizes`; they are in `missing_head_keys` too).
    """

    format: str
    config: GPT2Config
    head: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    source_dir: Path | None
    missing_head_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    _loaders: dict[str, Callable[[], np.ndarray]] = field(repr=False, default_factory=dict)
    _views: dict[str, Callable[[], np.ndarray]] = field(repr=False, default_factory=dict)
    _closers: list[Callable[[], None]] = field(repr=False, default_factory=list)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __getitem__(self, key: str) -> np.ndarray:
        return self._checked(key, self._loaders[key]())

    @property
    def mapped(self) -> bool:
        """Whether `view` gives read-only memory maps of the file (the format's `Format.mapped`)."""
        return bool(self._views)

    def view(self, key: str) -> np.ndarray:
        """The tensor `key` as a read-only memory map of the file where the format allows it (safetensors), else
        as `self[key]`: nothing is read until it is used, and its pages leave memory when it is dropped."""
        view = self._views.get(key)
        return self[key] if view is None else self._checked(key, view())

    def _checked(self, key: str, value: np.ndarray) -> np.ndarray:
        if tuple(value.shape) != tuple(self.shapes[key]):  # a file that changed under us, or a lying header
            raise ValueError(
                f"Tensor {key!r} has shape {tuple(value.shape)} but the file's header says {self.shapes[key]}. "
                "The file is corrupt; download or save it again."
            )
        return value

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for key in self.shapes:
            yield key, self[key]

    def to_dict(self) -> dict[str, np.ndarray]:
        """Every canonical tensor in memory (np.ndarray, the file's dtype; bfloat16 as ml_dtypes.bfloat16)."""
        return dict(self.items())

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class CheckpointTensors(MutableMapping):
    """The canonical tensors of an open `Checkpoint` as a mapping that reads each one from the file on every
    access (nothing cached), plus the tensors set in it (e.g. newly initialised head keys), which take precedence.
    Where the format allows (safetensors) a value is a read-only memory map of the file (`Checkpoint.view`): a shape
    check reads nothing, and the pages a read touched leave memory with the value.

    What `weights_convert.pretrained.load_pretrained` hands a backend: its `load_canonical` copies one tensor at a
    time into the model (`gpt2_core.naming.iter_backend`) and drops it, so the checkpoint is never in memory beside
    the model's parameters (a dict of every tensor was: a load peaked at about twice the checkpoint's size). The
    checkpoint stays open while this mapping lives; it is closed when the mapping is collected, or by `close()`.
    `{k: np.array(v) for k, v in tensors.items()}` copies everything into memory, as `Checkpoint.to_dict()`.

    Args:
        checkpoint: An open `Checkpoint`; this mapping owns it from now on.
    """

    def __init__(self, checkpoint: Checkpoint) -> None:
        self._checkpoint = checkpoint
        self._set: dict[str, np.ndarray] = {}
        self._deleted: set[str] = set()
        self._finalizer = weakref.finalize(self, checkpoint.close)

    def __getitem__(self, key: str) -> np.ndarray:
        if key in self._set:
            return self._set[key]
        if key in self._deleted or key not in self._checkpoint:
            raise KeyError(key)
        return self._checkpoint.view(key)

    def __setitem__(self, key: str, value: np.ndarray) -> None:
        self._set[key] = value

    def __delitem__(self, key: str) -> None:
        if key not in self:
            raise KeyError(key)
        self._set.pop(key, None)
        if key in self._checkpoint:
            self._deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        for key in self._checkpoint.keys():
            if key not in self._deleted or key in self._set:
                yield key
        yield from (key for key in self._set if key not in self._checkpoint)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, key: object) -> bool:
        return key in self._set or (key in self._checkpoint and key not in self._deleted)

    def __repr__(self) -> str:
        return f"CheckpointTensors({self._checkpoint.format}, {len(self)} tensors)"

    def close(self) -> None:
        """Close the checkpoint; reading a tensor of it afterwards is an error (the ones set here stay)."""
        self._finalizer()


# The bytes a loader copies per step when it fills a parameter piecewise (`row_blocks`): small beside any model
# (gpt2-medium's largest tensor, `wte`, is 206 MB), large enough that the per-step cost does not show.
BLOCK_BYTES = 4 << 20


def _read_only_map(value: np.ndarray) -> "mmap.mmap | None":
    """The `mmap.mmap` under `value` when it is a view of a read-only `np.memmap` (mode "r", what
    `CheckpointTensors` gives for safetensors), else None."""
    base, read_only = value, False
    while base is not None and not isinstance(base, mmap.mmap):
        read_only = read_only or (isinstance(base, np.memmap) and base.mode == "r")
        base = getattr(base, "base", None)
    return base if read_only and hasattr(mmap, "MADV_DONTNEED") else None


def row_blocks(value: np.ndarray, nbytes: int | None = None) -> Iterator[tuple[slice | EllipsisType, np.ndarray]]:
    """`value` as `(rows, value[rows])` blocks of about `nbytes` (default `BLOCK_BYTES`) along its first axis, for
    a loader that copies a tensor into its parameter piecewise (one block in flight instead of a whole converted
    copy). A 0-d array is one block, `(Ellipsis, value)`.

    When `value` views a read-only memory map (`CheckpointTensors`' values), the file pages a block touched leave
    this process's memory (`madvise(MADV_DONTNEED)`; they stay in the page cache) before the next block is read, so
    the copy holds one block of the file resident, not the whole tensor. A transposed (not C-contiguous) view
    touches every page at each block; its pages are released once, after the last block. Nothing is released for
    any other array (a copy-on-write map's pages hold its changes).
    """
    if value.ndim == 0 or value.shape[0] == 0:
        yield (Ellipsis if value.ndim == 0 else slice(0, 0)), value
        return
    mapped = _read_only_map(value)
    contiguous = value.flags.c_contiguous
    n = value.shape[0]
    step = max(1, (BLOCK_BYTES if nbytes is None else nbytes) // max(1, value.nbytes // n))
    for start in range(0, n, step):
        rows = slice(start, min(start + step, n))
        yield rows, value[rows]
        if mapped is not None and (contiguous or rows.stop == n):
            with contextlib.suppress(OSError):  # only memory use depends on it
                mapped.madvise(mmap.MADV_DONTNEED)


# ---------------------------------------------------------------------------------------------------------------
# File names -> canonical keys
# ---------------------------------------------------------------------------------------------------------------

# {name in the file: (canonical key | the raw name, for the strict check to report | None to skip, layout)}
NameMap = dict[str, tuple["str | None", str]]


def hub_names(listing: Listing) -> tuple[NameMap, bool]:
    """Hub (PyTorch) names: the canonical key is the name without `transformer.` (`naming.select_head` then drops
    buffers and other tasks' heads). Returns (names, whether the body was prefixed: a task model's file)."""
    prefix = naming.BODY_PREFIX
    names = {n: (n[len(prefix):] if n.startswith(prefix) else n, "same") for n in listing}
    return names, any(n.startswith(prefix) for n in listing)


def table_names(fmt: Format, config: GPT2Config, listing: Listing) -> tuple[NameMap, bool, list[str]]:
    """A foreign format's names, through `gpt2_core.naming.file_name_table`; unknown names kept for the strict
    check. Returns (names, whether the body was under `fmt.strip`, names skipped as not parameters)."""
    table = naming.file_name_table(fmt.table, config, "base")
    out: NameMap = {}
    skipped = []
    prefixed = False
    for name in listing:
        lookup = naming.normalize_file_name(fmt.table, name)
        if fmt.strip and lookup.startswith(fmt.strip):
            lookup = lookup[len(fmt.strip):]
            prefixed = True
        if lookup in table:
            out[name] = table[lookup]
        elif fmt.table == "openai" and naming.is_openai_extra(name, table):
            out[name] = (None, "same")
            skipped.append(name)
        else:
            out[name] = (name, "same")
    return out, prefixed, skipped


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


class Source:
    """Canonical tensors from a Checkpoint or a dict, cast to the output dtype one at a time, with progress."""

    def __init__(self, tensors: Mapping[str, np.ndarray] | Checkpoint, dtype: np.dtype | None, progress, desc: str):
        self.tensors = tensors
        self.dtype = dtype
        self.keys = list(tensors.keys())
        self._bar = progress_bar(len(self.keys), desc, progress)

    def items(self) -> Iterator[tuple[str, np.ndarray]]:
        for key in self.keys:
            value = np.asarray(self.tensors[key])
            if self.dtype is not None and value.dtype != self.dtype:
                value = value.astype(self.dtype)
            yield key, value
            self._bar.update(1)
        self._bar.close()

    def output_dtype(self, key: str) -> np.dtype:
        if self.dtype is not None:
            return self.dtype
        if isinstance(self.tensors, Checkpoint):
            return self.tensors.dtypes[key]
        return np.asarray(self.tensors[key]).dtype


class _NullBar:
    def update(self, n):
        pass

    def close(self):
        pass


def progress_bar(total: int, desc: str, progress: bool | None):
    enabled = sys.stderr.isatty() if progress is None else progress
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a core dependency; tolerate its absence anyway
        enabled = False
    if not enabled:
        return _NullBar()
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def shard_plan(sizes: list[tuple[str, int]], max_shard_size: int | str | None) -> list[list[str]]:
    """Keys grouped into shards of at most `max_shard_size` bytes (a larger tensor gets its own shard)."""
    limit = hub.parse_size(max_shard_size) if max_shard_size is not None else None
    shards: list[list[str]] = [[]]
    size = 0
    for key, nbytes in sizes:
        if limit is not None and shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += nbytes
    return shards


def write_sharded(
    directory: Path,
    state: Mapping[str, object],
    nbytes: Callable[[object], int],
    save: Callable[[Mapping[str, object], Path], None],
    single: str,
    index: str,
    shard_name: Callable[[int, int], str],
    max_shard_size: int | str | None,
) -> list[Path]:
    """Write `state` (Hub names -> tensors) as `single`, or as shards + the transformers index json `index`, each
    file atomically. A stale single file left from an earlier unsharded save is removed."""
    plan = shard_plan([(k, nbytes(v)) for k, v in state.items()], max_shard_size)
    if len(plan) == 1:
        path = directory / single
        with hub.atomic_path(path) as tmp:
            save(state, tmp)
        return [path]
    written, weight_map = [], {}
    n = len(plan)
    for i, keys in enumerate(plan, 1):
        name = shard_name(i, n)
        with hub.atomic_path(directory / name) as tmp:
            save({k: state[k] for k in keys}, tmp)
        written.append(directory / name)
        weight_map.update({k: name for k in keys})
    total = int(sum(nbytes(v) for v in state.values()))
    text = json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True) + "\n"
    hub.atomic_write_text(directory / index, text)
    stale = directory / single
    if stale.exists():
        stale.unlink()
    return written + [directory / index]


def no_sharding(fmt: str, max_shard_size) -> None:
    if max_shard_size is not None:
        raise ValueError(
            f"Sharding is supported for safetensors and pytorch outputs. Received: --to {fmt} with --max-shard-size."
        )


def hub_key(key: str, head: str) -> str:
    """The Hub file name of canonical `key` in a `head` model (`transformer.` prefix for task models)."""
    return key if head == "base" or naming.is_head_key(key) else naming.BODY_PREFIX + key


def warn_unloadable_heads(fmt: str, config: GPT2Config, head: str) -> None:
    loadable = {"tf": ("base", "lm", "double", "seqcls"), "flax": ("base", "lm")}[fmt]
    untied_tf = fmt == "tf" and head in ("lm", "double") and not config.tie_word_embeddings
    if head not in loadable or untied_tf:
        what = "an untied lm_head" if untied_tf else f"the {head!r} head"
        logger.warning(
            "transformers 4.x has no %s class for %s; the file uses the same layout as its other heads and reads "
            "back with gpt2-convert, but transformers 4.x's %s classes will not load it.",
            fmt.upper() if fmt == "tf" else "Flax",
            what,
            "TF" if fmt == "tf" else "Flax",
        )
