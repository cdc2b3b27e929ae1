"""Read and write GPT-2 checkpoints in every format, through the canonical form, without building a model.

Formats (`FORMATS`):

* `safetensors`  `model.safetensors`, or shards + `model.safetensors.index.json` (Hub names).
* `pytorch`      `pytorch_model.bin`, or shards + `pytorch_model.bin.index.json` (Hub names, `torch.save`).
* `tf`           `tf_model.h5` as transformers 4.x's TFGPT2* classes save and load it (Keras 2 HDF5 layout).
* `flax`         `flax_model.msgpack` as transformers 4.x's FlaxGPT2* classes save and load it.
* `openai`       OpenAI's original TF1 checkpoint (`model.ckpt.index` + `.data-*`, `hparams.json`); needs TensorFlow.

A reader gives a `Checkpoint`: the `GPT2Config`, the task `head`, and the canonical tensors (`gpt2_core.naming`),
validated against the config before any tensor is read and then read one at a time, so a large checkpoint is not
held several times in memory. A writer consumes (config, canonical tensors, head) and writes into a directory.
`convert` joins the two and writes atomically: into a temporary directory beside the destination, renamed at the
end; on any error (or Ctrl-C) nothing half-written is left. Every name mapping lives in `gpt2_core.naming`.

References: transformers 4.46 `modeling_tf_utils.py` (`load_tf_weights_from_h5`, `save_pretrained`),
`modeling_flax_utils.py`, `flax.serialization` (msgpack encoding of arrays), transformers'
`convert_gpt2_original_tf_checkpoint_to_pytorch.py`, OpenAI gpt-2 `src/model.py`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import mmap
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import CONFIG_NAME, GPT2Config

logger = logging.getLogger(__name__)

FORMATS = ("safetensors", "pytorch", "tf", "flax", "openai")
DTYPES = ("float32", "float16", "bfloat16")

TF_WEIGHTS_NAME = "tf_model.h5"
TF_WEIGHTS_INDEX_NAME = "tf_model.h5.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"
OPENAI_HPARAMS_NAME = "hparams.json"
OPENAI_CHECKPOINT_PREFIX = "model.ckpt"

# Files copied beside the weights when the source directory has them.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "added_tokens.json",
    "generation_config.json",
)
# OpenAI's release names the same two tokenizer files differently (same content).
OPENAI_TOKENIZER_FILES = {"encoder.json": "vocab.json", "vocab.bpe": "merges.txt"}

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
_HDF5_ATTR_LIMIT = 64512  # bytes per HDF5 attribute (object header limit); Keras splits longer lists
_KERAS_VERSION = "2.15.0"  # what the files transformers 4.46 + TF 2.15 write say
_MSGPACK_EXT_NDARRAY = 1  # flax.serialization._MsgpackExtType.ndarray
_MSGPACK_MAX_CHUNK = 2**30  # flax.serialization.MAX_CHUNK_SIZE: larger arrays are stored in chunks


# ---------------------------------------------------------------------------------------------------------------
# dtypes
# ---------------------------------------------------------------------------------------------------------------


def _bfloat16():
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
    return _bfloat16() if name == "bfloat16" else np.dtype(name)


def _dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype.name == "bfloat16" else np.dtype(dtype).name


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
    """

    format: str
    config: GPT2Config
    head: str
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, np.dtype]
    source_dir: Path | None
    _loaders: dict[str, Callable[[], np.ndarray]] = field(repr=False, default_factory=dict)
    _closers: list[Callable[[], None]] = field(repr=False, default_factory=list)

    def keys(self) -> list[str]:
        return list(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def __contains__(self, key: object) -> bool:
        return key in self.shapes

    def __getitem__(self, key: str) -> np.ndarray:
        value = self._loaders[key]()
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
        """Every canonical tensor in memory (np.ndarray, the file's dtype)."""
        return dict(self.items())

    def close(self) -> None:
        while self._closers:
            with contextlib.suppress(Exception):
                self._closers.pop()()

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _stub(shape, dtype) -> np.ndarray:
    """A zero-memory array of `shape` for shape checks before any data is read."""
    return np.broadcast_to(np.zeros((), dtype=dtype), tuple(int(s) for s in shape))


# ---------------------------------------------------------------------------------------------------------------
# Format detection and file resolution
# ---------------------------------------------------------------------------------------------------------------


def _is_openai_dir(path: Path) -> bool:
    return (path / "checkpoint").is_file() or any(path.glob("*.index"))


def detect_format(path: str | os.PathLike) -> str:
    """The format of a checkpoint file or directory (one of `FORMATS`).

    A directory holding several formats (a Hub repo) prefers safetensors, then pytorch, tf, flax.
    """
    path = Path(path)
    if path.is_dir():
        for fmt, names in (
            ("safetensors", (hub.SAFE_WEIGHTS_NAME, hub.SAFE_WEIGHTS_INDEX_NAME)),
            ("pytorch", (hub.WEIGHTS_NAME, hub.WEIGHTS_INDEX_NAME)),
            ("tf", (TF_WEIGHTS_NAME, TF_WEIGHTS_INDEX_NAME)),
            ("flax", (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME)),
        ):
            if any((path / n).is_file() for n in names):
                return fmt
        if _is_openai_dir(path):
            return "openai"
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(
            f"No checkpoint found in the directory. Received: path={str(path)!r} holding {found}. Expected "
            f"{hub.SAFE_WEIGHTS_NAME}, {hub.WEIGHTS_NAME}, {TF_WEIGHTS_NAME}, {FLAX_WEIGHTS_NAME} or an OpenAI "
            "model.ckpt.index with hparams.json."
        )
    if not path.exists():
        if Path(str(path) + ".index").is_file():  # an OpenAI checkpoint prefix, e.g. models/124M/model.ckpt
            return "openai"
        raise FileNotFoundError(f"No such file or directory. Received: path={str(path)!r}.")
    name = path.name
    if name.endswith(".safetensors") or name == hub.SAFE_WEIGHTS_INDEX_NAME:
        return "safetensors"
    if name.endswith((".bin", ".pt", ".pth")) or name == hub.WEIGHTS_INDEX_NAME:
        return "pytorch"
    if name.endswith((".h5", ".hdf5")) or name == TF_WEIGHTS_INDEX_NAME:
        return "tf"
    if name.endswith(".msgpack") or name == FLAX_WEIGHTS_INDEX_NAME:
        return "flax"
    if name.endswith(".index") or ".data-" in name or name in ("checkpoint", OPENAI_HPARAMS_NAME):
        return "openai"
    with open(path, "rb") as f:  # an unusual name: look at the content
        head = f.read(16)
    if head.startswith(_HDF5_SIGNATURE):
        return "tf"
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "pytorch"
    if len(head) >= 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    raise ValueError(
        f"Cannot tell the checkpoint format of the file. Received: path={str(path)!r}. Pass --from "
        f"{{{','.join(FORMATS)}}} or a directory saved with save_pretrained."
    )


def _read_index(path: Path) -> dict[str, str]:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise ValueError(f"Corrupt shard index. Received: path={str(path)!r} ({e}). Save the checkpoint again.") from e
    return weight_map


def _weight_files(path: Path, fmt: str) -> list[Path]:
    """The weight files of `fmt` at `path` (a file, or a directory with a single file or an index of shards)."""
    single, index = {
        "safetensors": (hub.SAFE_WEIGHTS_NAME, hub.SAFE_WEIGHTS_INDEX_NAME),
        "pytorch": (hub.WEIGHTS_NAME, hub.WEIGHTS_INDEX_NAME),
        "tf": (TF_WEIGHTS_NAME, TF_WEIGHTS_INDEX_NAME),
        "flax": (FLAX_WEIGHTS_NAME, FLAX_WEIGHTS_INDEX_NAME),
    }[fmt]
    if path.is_dir():
        if (path / single).is_file():
            return [path / single]
        if not (path / index).is_file():
            raise FileNotFoundError(f"No {single} or {index} in the directory. Received: path={str(path)!r}.")
        path = path / index
    if path.name.endswith(".index.json"):
        files = [path.parent / name for name in sorted(set(_read_index(path).values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"Shards listed in {path.name} are missing. Received: missing={missing[:5]}.")
        return files
    return [path]


def _source_dir(path: Path) -> Path:
    return path if path.is_dir() else path.parent


# ---------------------------------------------------------------------------------------------------------------
# Per-format listing: {name in the file: (shape, dtype, loader)}
# ---------------------------------------------------------------------------------------------------------------

Listing = dict[str, tuple[tuple[int, ...], np.dtype, Callable[[], np.ndarray]]]


def _corrupt(path: Path, e: BaseException, what: str = "checkpoint") -> ValueError:
    return ValueError(
        f"Cannot read the {what}; it is truncated, corrupt or not a {what}. Received: path={str(path)!r} "
        f"({type(e).__name__}: {str(e)[:200]}). Download or save it again."
    )


_SAFETENSORS_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _list_safetensors(files: list[Path], closers: list) -> Listing:
    from safetensors import SafetensorError, safe_open

    out: Listing = {}
    for path in files:
        try:
            handle = safe_open(str(path), framework="numpy")
            handle.__enter__()
        except (SafetensorError, OSError, ValueError) as e:
            raise _corrupt(path, e, "safetensors file") from e
        closers.append(lambda h=handle: h.__exit__(None, None, None))
        for key in handle.keys():
            if key in out:
                raise ValueError(f"Tensor names repeat across shards. Received: {key!r} in {path.name}.")
            sl = handle.get_slice(key)
            st_dtype = sl.get_dtype()
            dtype = _bfloat16() if st_dtype == "BF16" else np.dtype(_SAFETENSORS_DTYPES.get(st_dtype, "float32"))

            def load(h=handle, k=key, p=path):
                try:
                    return h.get_tensor(k)
                except TypeError:  # a safetensors without ml_dtypes support for bfloat16
                    return hub.read_safetensors(p)[k]
                except (SafetensorError, OSError) as e:
                    raise _corrupt(p, e, "safetensors file") from e

            out[key] = (tuple(sl.get_shape()), dtype, load)
    return out


def _to_numpy(t) -> np.ndarray:
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:  # NumPy has no bfloat16: keep the bits, view them as ml_dtypes.bfloat16
        return t.view(torch.int16).numpy().view(_bfloat16())
    return t.numpy()


def _list_torch(files: list[Path], closers: list) -> Listing:
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            "Reading pytorch_model.bin needs PyTorch: pip install 'gpt2-frameworks[torch]'. Or convert it where "
            "PyTorch is installed."
        ) from e
    out: Listing = {}
    for path in files:
        try:
            try:  # zip-format files are memory-mapped: tensors are read when used, not all at once
                state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e) and "zip" not in str(e):
                    raise
                state = torch.load(str(path), map_location="cpu", weights_only=True)  # legacy (pre-1.6) format
        except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
            raise _corrupt(path, e, "PyTorch checkpoint") from e
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise ValueError(
                f"The PyTorch checkpoint does not hold a state dict. Received: path={str(path)!r}, "
                f"type={type(state).__name__}."
            )
        for key, t in state.items():
            if not hasattr(t, "detach"):
                raise ValueError(f"The PyTorch checkpoint holds a non-tensor. Received: {key}={type(t).__name__}.")
            if key in out:
                raise ValueError(f"Tensor names repeat across shards. Received: {key!r} in {path.name}.")
            dtype = _bfloat16() if t.dtype == torch.bfloat16 else np.dtype(str(t.dtype).replace("torch.", ""))
            out[key] = (tuple(t.shape), dtype, lambda t=t: _to_numpy(t))
    return out


def _h5_attr_list(group, name: str) -> list[str]:
    """Keras' chunked string-list attribute (`name` or `name0`, `name1`, ...), decoded."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, i = [], 0
        while f"{name}{i}" in group.attrs:
            values.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _list_h5(files: list[Path], closers: list) -> tuple[Listing, set[str]]:
    """tf_model.h5 (or its shards): {name without the model-name prefix: ...}, and the model names seen."""
    try:
        import h5py
    except ImportError as e:
        raise ImportError("Reading tf_model.h5 needs h5py: pip install h5py") from e
    out: Listing = {}
    model_names: set[str] = set()
    for path in files:
        try:
            f = h5py.File(path, "r")
        except OSError as e:
            raise _corrupt(path, e, "HDF5 file") from e
        closers.append(f.close)

        def add(name: str, dataset, p=path):
            if not isinstance(dataset, h5py.Dataset):
                raise ValueError(f"Not a transformers tf_model.h5: {name!r} is not a dataset. Received: path={str(p)!r}.")
            if name in out:
                raise ValueError(f"Weight names repeat in the HDF5 file(s). Received: {name!r} in {p.name}.")

            def load(d=dataset):
                try:
                    return np.asarray(d[()])
                except (OSError, ValueError, KeyError) as e:
                    raise _corrupt(p, e, "HDF5 file") from e

            out[name] = (tuple(dataset.shape), dataset.dtype, load)

        try:
            layer_names = _h5_attr_list(f, "layer_names")
            if not layer_names:
                raise ValueError(
                    f"Not a transformers tf_model.h5: the file has no `layer_names` attribute. Received: "
                    f"path={str(path)!r}. Save the model with a transformers 4.x TF class's save_pretrained."
                )
            for layer in layer_names:
                obj = f[layer]
                if isinstance(obj, h5py.Dataset):  # a shard: datasets named like transformer/h_._0/.../weight:0
                    add(layer, obj)
                    continue
                for weight_name in _h5_attr_list(obj, "weight_names"):
                    # Keras names start with the model name (tfgpt2lm_head_model/...), which transformers ignores.
                    model_name, _, rest = weight_name.partition("/")
                    model_names.add(model_name)
                    add(rest, obj[weight_name])
        except KeyError as e:
            raise _corrupt(path, e, "HDF5 file") from e
    return out, model_names


@dataclass(frozen=True)
class _MsgpackArray:
    """Where one array of a flax msgpack file lies (its bytes are read only when the array is needed)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    offset: int
    nbytes: int


class _MsgpackIndexer:
    """Decode a msgpack document in place, except that flax's ndarray ext values become `_MsgpackArray` (offsets).

    `msgpack.unpackb` would copy every array into memory when the file is opened; this reads only the tree's
    structure, so arrays are then read one at a time, like the other formats.
    """

    _FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}

    def __init__(self, buf):
        self.buf = buf
        self.end = len(buf)

    def _take(self, pos: int, n: int) -> int:
        if n < 0 or pos + n > self.end:
            raise ValueError(f"truncated msgpack data at byte {pos}")
        return pos + n

    def _uint(self, pos: int, n: int) -> tuple[int, int]:
        return int.from_bytes(self.buf[pos : self._take(pos, n)], "big"), pos + n

    def read(self, pos: int, end: int | None = None) -> tuple[Any, int]:
        """(value at `pos`, position after it)."""
        saved, self.end = self.end, self.end if end is None else end
        try:
            return self._read(pos)
        finally:
            self.end = saved

    def _read(self, pos: int) -> tuple[Any, int]:
        self._take(pos, 1)
        b = self.buf[pos]
        pos += 1
        if b <= 0x7F:
            return b, pos
        if b >= 0xE0:
            return b - 0x100, pos
        if 0x80 <= b <= 0x8F or b in (0xDE, 0xDF):
            n, pos = (b & 0x0F, pos) if b <= 0x8F else self._uint(pos, 2 if b == 0xDE else 4)
            out = {}
            for _ in range(n):
                k, pos = self._read(pos)
                out[k], pos = self._read(pos)
            return out, pos
        if 0x90 <= b <= 0x9F or b in (0xDC, 0xDD):
            n, pos = (b & 0x0F, pos) if b <= 0x9F else self._uint(pos, 2 if b == 0xDC else 4)
            items = []
            for _ in range(n):
                v, pos = self._read(pos)
                items.append(v)
            return items, pos
        if 0xA0 <= b <= 0xBF or b in (0xD9, 0xDA, 0xDB):
            n, pos = (b & 0x1F, pos) if b <= 0xBF else self._uint(pos, {0xD9: 1, 0xDA: 2, 0xDB: 4}[b])
            return bytes(self.buf[pos : self._take(pos, n)]).decode("utf-8"), pos + n
        if b in (0xC4, 0xC5, 0xC6):
            n, pos = self._uint(pos, {0xC4: 1, 0xC5: 2, 0xC6: 4}[b])
            self._take(pos, n)
            return (pos, n), pos + n  # bin: (offset, length), not copied
        if b == 0xC0:
            return None, pos
        if b in (0xC2, 0xC3):
            return b == 0xC3, pos
        if b in (0xCC, 0xCD, 0xCE, 0xCF):
            return self._uint(pos, 1 << (b - 0xCC))
        if b in (0xD0, 0xD1, 0xD2, 0xD3):
            n = 1 << (b - 0xD0)
            return int.from_bytes(self.buf[pos : self._take(pos, n)], "big", signed=True), pos + n
        if b in (0xCA, 0xCB):
            n = 4 if b == 0xCA else 8
            return float(np.frombuffer(self.buf[pos : self._take(pos, n)], ">f4" if n == 4 else ">f8")[0]), pos + n
        if b in self._FIXEXT or b in (0xC7, 0xC8, 0xC9):
            n, pos = (self._FIXEXT[b], pos) if b in self._FIXEXT else self._uint(pos, {0xC7: 1, 0xC8: 2, 0xC9: 4}[b])
            code = int.from_bytes(self.buf[pos : self._take(pos, 1)], "big", signed=True)
            start, stop = pos + 1, self._take(pos + 1, n)
            if code != _MSGPACK_EXT_NDARRAY:
                import msgpack

                return msgpack.ExtType(code, bytes(self.buf[start:stop])), stop
            return self._ndarray(start, stop), stop
        raise ValueError(f"invalid msgpack type byte 0x{b:02x} at byte {pos - 1}")

    def _ndarray(self, start: int, stop: int) -> _MsgpackArray:
        # flax.serialization: ExtType(1, packb((shape, dtype name, data bytes)))
        value, pos = self.read(start, stop)
        if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], list) and isinstance(value[2], tuple)):
            raise ValueError(f"malformed ndarray at byte {start}")
        shape, name, (offset, nbytes) = tuple(int(s) for s in value[0]), value[1], value[2]
        dtype = _bfloat16() if name == "bfloat16" else np.dtype(name)
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"ndarray of shape {shape} and dtype {name} holds {nbytes} bytes at byte {start}")
        return _MsgpackArray(shape, dtype, offset, nbytes)


@dataclass(frozen=True)
class _MsgpackChunked:
    """flax.serialization's chunked form of an array over 1 GiB: its shape, dtype and pieces."""

    shape: tuple[int, ...]
    dtype: np.dtype
    chunks: list[_MsgpackArray]


def _unchunk(node: dict) -> _MsgpackChunked:
    shape = tuple(int(node["shape"][str(i)]) for i in range(len(node["shape"])))
    chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    if not chunks or not all(isinstance(c, _MsgpackArray) and c.dtype == chunks[0].dtype for c in chunks):
        raise ValueError("malformed chunked array")
    if sum(c.nbytes for c in chunks) != int(np.prod(shape, dtype=np.int64)) * chunks[0].dtype.itemsize:
        raise ValueError(f"chunked array of shape {shape}: its chunks hold a different number of bytes")
    return _MsgpackChunked(shape, chunks[0].dtype, chunks)


def _flatten_tree(tree: Mapping, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in tree.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict) and "__msgpack_chunked_array__" not in v:
            yield from _flatten_tree(v, path + "/")
        else:
            yield path, _unchunk(v) if isinstance(v, dict) else v


def _list_msgpack(files: list[Path], closers: list) -> Listing:
    if importlib.util.find_spec("msgpack") is None:
        raise ImportError("Reading flax_model.msgpack needs msgpack: pip install msgpack")
    out: Listing = {}
    for path in files:
        try:
            with open(path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size == 0:
                    raise ValueError("empty file")
                # mmap, and only the tree's structure is decoded now: each array is copied out when it is read
                mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            closers.append(mm.close)
            tree, end = _MsgpackIndexer(mm).read(0)
            if end != size:
                raise ValueError(f"{size - end} bytes of extra data after the msgpack document")
        except (ValueError, TypeError, OSError, RecursionError) as e:
            raise _corrupt(path, e, "msgpack file") from e
        if not isinstance(tree, dict):
            raise ValueError(f"Not a Flax checkpoint: the msgpack file does not hold a tree. Received: path={str(path)!r}.")
        try:
            leaves = list(_flatten_tree(tree))
        except (ValueError, TypeError, KeyError) as e:
            raise _corrupt(path, e, "msgpack file") from e

        def read(a: _MsgpackArray, mm=mm) -> np.ndarray:
            return np.frombuffer(mm, dtype=a.dtype, count=a.nbytes // a.dtype.itemsize, offset=a.offset).reshape(a.shape).copy()

        for name, value in leaves:
            if isinstance(value, _MsgpackArray):
                load = lambda a=value, r=read: r(a)  # noqa: E731
                shape, dtype = value.shape, value.dtype
            elif isinstance(value, _MsgpackChunked):
                shape, dtype = value.shape, value.dtype
                load = lambda v=value, r=read: np.concatenate([r(a).reshape(-1) for a in v.chunks]).reshape(v.shape)  # noqa: E731
            else:
                raise ValueError(
                    f"Not a Flax checkpoint: {name!r} is not an array. Received: type={type(value).__name__}, "
                    f"path={str(path)!r}."
                )
            if name in out:
                raise ValueError(f"Parameter paths repeat across shards. Received: {name!r} in {path.name}.")
            out[name] = (shape, dtype, load)
    return out


def _openai_prefix(path: Path) -> Path:
    """The checkpoint prefix (`.../model.ckpt`) of an OpenAI checkpoint directory, prefix or `.index` file."""
    if path.is_dir():
        ckpt = path / "checkpoint"
        if ckpt.is_file():  # TF's text proto: model_checkpoint_path: "model-1000"
            for line in ckpt.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    prefix = Path(name) if os.path.isabs(name) else path / name
                    if Path(str(prefix) + ".index").is_file():
                        return prefix
        indexes = sorted(path.glob("*.index"))
        if len(indexes) != 1:
            raise ValueError(
                f"Expected one TF checkpoint (*.index) in the directory. Received: path={str(path)!r} holding "
                f"{[p.name for p in indexes]}. Pass the checkpoint prefix, e.g. {path / OPENAI_CHECKPOINT_PREFIX}."
            )
        return indexes[0].with_suffix("")
    if path.name.endswith(".index"):
        return path.with_suffix("")
    if ".data-" in path.name:
        return path.with_name(path.name.split(".data-")[0])
    return path


def _list_openai(prefix: Path, closers: list) -> Listing:
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError(
            "Reading an OpenAI TF checkpoint needs TensorFlow: pip install 'gpt2-frameworks[tf]'."
        ) from e
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except Exception as e:  # tf.errors.* (DataLossError, NotFoundError, ...) for bad files
        raise _corrupt(prefix, e, "TensorFlow checkpoint") from e

    def load(name: str) -> np.ndarray:
        try:
            return np.asarray(reader.get_tensor(name))
        except Exception as e:
            raise _corrupt(prefix, e, "TensorFlow checkpoint") from e

    return {
        name: (tuple(shape), np.dtype(dtypes[name].as_numpy_dtype), lambda n=name: load(n))
        for name, shape in shapes.items()
    }


# ---------------------------------------------------------------------------------------------------------------
# Config and head
# ---------------------------------------------------------------------------------------------------------------


def _load_config(source_dir: Path, fmt: str, config: GPT2Config | str | os.PathLike | None) -> GPT2Config:
    if isinstance(config, GPT2Config):
        return config
    if config is not None:
        path = Path(config)
        return GPT2Config.from_json_file(path / CONFIG_NAME if path.is_dir() else path)
    if (source_dir / CONFIG_NAME).is_file():
        return GPT2Config.from_json_file(source_dir / CONFIG_NAME)
    if fmt == "openai" and (source_dir / OPENAI_HPARAMS_NAME).is_file():
        return config_from_hparams(source_dir / OPENAI_HPARAMS_NAME)
    raise FileNotFoundError(
        f"No {CONFIG_NAME} beside the checkpoint. Received: directory={str(source_dir)!r}. Pass the model's "
        f"config with --config PATH (for OpenAI checkpoints, {OPENAI_HPARAMS_NAME})."
    )


def config_from_hparams(path: str | os.PathLike) -> GPT2Config:
    """OpenAI's hparams.json (n_vocab, n_ctx, n_embd, n_head, n_layer) -> GPT2Config (other fields: GPT-2's)."""
    try:
        hp = json.loads(Path(path).read_text(encoding="utf-8"))
        kwargs = dict(
            vocab_size=int(hp["n_vocab"]),
            n_positions=int(hp["n_ctx"]),
            n_embd=int(hp["n_embd"]),
            n_head=int(hp["n_head"]),
            n_layer=int(hp["n_layer"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(
            f"Invalid {OPENAI_HPARAMS_NAME}. Received: path={str(path)!r} ({type(e).__name__}: {e}). Expected "
            "a JSON object with n_vocab, n_ctx, n_embd, n_head, n_layer."
        ) from e
    return GPT2Config(**kwargs, architectures=[naming.ARCHITECTURES["lm"]])


def _head_from_config(config: GPT2Config) -> str | None:
    arch = config.extra.get("architectures") or []
    if not arch:
        return None
    name = str(arch[0])
    for prefix in ("TF", "Flax"):
        if name.startswith(prefix + "GPT2"):
            name = name[len(prefix):]
    reverse = {v: k for k, v in naming.ARCHITECTURES.items()}
    return reverse.get(name)


def _head_from_tf_model_names(model_names: set[str]) -> str | None:
    # Keras' snake case changed over the years (tfgp_t2lm_head_model, tfgpt2lm_head_model); compare without `_`.
    reverse = {v.replace("_", ""): k for k, v in naming.TF_MODEL_NAMES.items()}
    heads = {reverse.get(n.replace("_", "")) for n in model_names} - {None}
    return heads.pop() if len(heads) == 1 else None


# ---------------------------------------------------------------------------------------------------------------
# Opening a checkpoint
# ---------------------------------------------------------------------------------------------------------------


def open_checkpoint(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    config: GPT2Config | str | os.PathLike | None = None,
    head: str | None = None,
) -> Checkpoint:
    """Open a checkpoint (file or directory) for reading; shapes are checked against the config before any read.

    Args:
        path: A checkpoint directory, a weights file, or an OpenAI checkpoint prefix.
        format: One of `FORMATS`; detected when None.
        config: A `GPT2Config` or a config.json path; by default the config.json beside the weights (OpenAI:
            hparams.json).
        head: The task head to read (one of `naming.HEADS`); by default the one the tensor names show, else the
            config's `architectures`, else `base`. A head the file lacks is an error; other heads are dropped.

    Raises:
        ValueError: Corrupt or non-GPT-2 files, or a config that disagrees with the tensors (every mismatch listed).
        FileNotFoundError: Missing files.
    """
    path = Path(path)
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise ValueError(f"Unknown format. Received: format={fmt!r}. Use one of {FORMATS}.")
    if head is not None and head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    closers: list[Callable[[], None]] = []
    try:
        return _open(path, fmt, config, head, closers)
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise


def _open(path: Path, fmt: str, config, head: str | None, closers: list) -> Checkpoint:
    if fmt == "openai":
        prefix = _openai_prefix(path)
        if not Path(str(prefix) + ".index").is_file():
            raise FileNotFoundError(f"No TF checkpoint index. Received: path={str(path)!r} (looked for {prefix}.index).")
        source_dir = prefix.parent
    else:
        if not path.exists():
            raise FileNotFoundError(f"No such file or directory. Received: path={str(path)!r}.")
        source_dir = _source_dir(path)
    cfg = _load_config(source_dir, fmt, config)

    # 1. list the file's tensors: {name: (shape, dtype, loader)} and how each maps to a canonical key
    model_names: set[str] = set()
    if fmt == "safetensors":
        listing = _list_safetensors(_weight_files(path, fmt), closers)
    elif fmt == "pytorch":
        listing = _list_torch(_weight_files(path, fmt), closers)
    elif fmt == "tf":
        listing, model_names = _list_h5(_weight_files(path, fmt), closers)
    elif fmt == "flax":
        listing = _list_msgpack(_weight_files(path, fmt), closers)
    else:
        listing = _list_openai(prefix, closers)

    if fmt in ("safetensors", "pytorch"):
        names = {n: (n[len(naming.BODY_PREFIX):] if n.startswith(naming.BODY_PREFIX) else n, "same") for n in listing}
        prefixed = any(n.startswith(naming.BODY_PREFIX) for n in listing)
        file_head = naming.head_from_names([c for c, _ in names.values()])
    else:
        names, prefixed, file_head = _map_file_names(fmt, cfg, listing)

    # 2. which head
    if head is None:
        head = (
            file_head
            or _head_from_config(cfg)
            or (_head_from_tf_model_names(model_names) if fmt == "tf" else None)
            or ("lm" if fmt == "openai" or prefixed else "base")
        )

    # 3. strict check of names and shapes against the config, before reading any data
    stubs: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, (shape, dtype, _) in listing.items():
        key, layout = names[name]
        if key is None:
            continue
        stub = naming.from_file_layout(_stub(shape, dtype), layout)
        if key in stubs:  # e.g. both h.0.x and transformer.h.0.x, or wte/weight:0 and wte/embeddings:0
            raise ValueError(f"The checkpoint holds {key!r} twice. Received: {origin[key]!r} and {name!r}.")
        stubs[key] = stub
        origin[key] = name
    canonical, _ = naming.from_hub_state_dict(
        stubs, cfg, head, allow_missing_head=False, source=f"{fmt} checkpoint at {str(path)!r}"
    )

    loaders = {}
    for key in canonical:
        name = origin[key]
        layout = names[name][1]
        loaders[key] = lambda load=listing[name][2], layout=layout: naming.from_file_layout(load(), layout)
    return Checkpoint(
        format=fmt,
        config=cfg,
        head=head,
        shapes={k: tuple(v.shape) for k, v in canonical.items()},
        dtypes={k: listing[origin[k]][1] for k in canonical},
        source_dir=source_dir,
        _loaders=loaders,
        _closers=closers,
    )


def _map_file_names(fmt: str, config: GPT2Config, listing: Listing):
    """Foreign file names -> {name: (canonical key | raw name for the strict check | None to skip, layout)}."""
    table_fmt = {"tf": "tf_h5", "flax": "flax_msgpack", "openai": "openai"}[fmt]
    # Flax task-model files nest the body under transformer/, FlaxGPT2Model files don't: look names up unprefixed.
    strip = "transformer/" if fmt == "flax" else ""
    table = naming.file_name_table(table_fmt, config, "base")
    out: dict[str, tuple[str | None, str]] = {}
    skipped = []
    prefixed = False
    for name in listing:
        lookup = naming.normalize_file_name(table_fmt, name)
        if strip and lookup.startswith(strip):
            lookup = lookup[len(strip):]
            prefixed = True
        if lookup in table:
            out[name] = table[lookup]
        elif fmt == "openai" and naming.is_openai_extra(name, table):
            out[name] = (None, "same")
            skipped.append(name)
        else:
            out[name] = (name, "same")  # unknown: reported by the strict check as unexpected
    if skipped:
        logger.warning(
            "Skipping %d variables of the OpenAI checkpoint that are not model parameters (optimizer state, "
            "counters): %s%s",
            len(skipped),
            ", ".join(sorted(skipped)[:8]),
            " ..." if len(skipped) > 8 else "",
        )
    keys = [k for k, _ in out.values() if k is not None]
    return out, prefixed, naming.head_from_names(keys)


def load_checkpoint(path: str | os.PathLike, **kwargs) -> tuple[GPT2Config, dict[str, np.ndarray], str]:
    """(config, canonical tensors, head) of a checkpoint, all in memory. Arguments as `open_checkpoint`."""
    with open_checkpoint(path, **kwargs) as ckpt:
        return ckpt.config, ckpt.to_dict(), ckpt.head


# ---------------------------------------------------------------------------------------------------------------
# Writers: (directory, config, head, source) -> files written
# ---------------------------------------------------------------------------------------------------------------


class _Source:
    """Canonical tensors from a Checkpoint or a dict, cast to the output dtype one at a time, with progress."""

    def __init__(self, tensors: Mapping[str, np.ndarray] | Checkpoint, dtype: np.dtype | None, progress, desc: str):
        self.tensors = tensors
        self.dtype = dtype
        self.keys = list(tensors.keys())
        self._bar = _progress_bar(len(self.keys), desc, progress)

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


def _progress_bar(total: int, desc: str, progress: bool | None):
    enabled = sys.stderr.isatty() if progress is None else progress
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a core dependency; tolerate its absence anyway
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n):
                pass

            def close(self):
                pass

        return _Null()
    return tqdm(total=total, desc=desc, unit="tensor", leave=False)


def _shard_plan(sizes: list[tuple[str, int]], max_shard_size: int | str | None) -> list[list[str]]:
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


def _hub_key(key: str, head: str) -> str:
    """The Hub file name of canonical `key` in a `head` model (`transformer.` prefix for task models)."""
    return next(iter(naming.to_hub_state_dict({key: np.zeros(0)}, head)))


def write_safetensors(directory: Path, config: GPT2Config, head: str, source: _Source, max_shard_size=None) -> list[Path]:
    state = {}
    for key, value in source.items():
        state[key] = np.ascontiguousarray(value)
    return hub.save_safetensors(naming.to_hub_state_dict(state, head), directory, max_shard_size=max_shard_size)


def write_pytorch(directory: Path, config: GPT2Config, head: str, source: _Source, max_shard_size=None) -> list[Path]:
    try:
        import torch
    except ImportError as e:
        raise ImportError("Writing pytorch_model.bin needs PyTorch: pip install 'gpt2-frameworks[torch]'.") from e

    def to_torch(value: np.ndarray):
        value = np.ascontiguousarray(value)
        if not value.flags.writeable:  # torch.from_numpy shares memory and wants it writable; copy only then
            value = value.copy()
        if value.dtype.name == "bfloat16":
            return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(value)

    state = {}
    for key, value in source.items():
        state[key] = to_torch(value)
    state = {_hub_key(k, head): v for k, v in state.items()}
    plan = _shard_plan([(k, v.numel() * v.element_size()) for k, v in state.items()], max_shard_size)
    if len(plan) == 1:
        path = directory / hub.WEIGHTS_NAME
        with hub.atomic_path(path) as tmp:
            torch.save(state, str(tmp))
        return [path]
    written, weight_map = [], {}
    n = len(plan)
    for i, keys in enumerate(plan, 1):
        name = f"pytorch_model-{i:05d}-of-{n:05d}.bin"
        with hub.atomic_path(directory / name) as tmp:
            torch.save({k: state[k] for k in keys}, str(tmp))
        written.append(directory / name)
        weight_map.update({k: name for k in keys})
    total = int(sum(v.numel() * v.element_size() for v in state.values()))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    hub.atomic_write_text(directory / hub.WEIGHTS_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    return written + [directory / hub.WEIGHTS_INDEX_NAME]


def _warn_unloadable_heads(fmt: str, config: GPT2Config, head: str) -> None:
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


def _h5_set_attr_list(group, name: str, values: list[str]) -> None:
    """Keras' `save_attributes_to_hdf5_group`: byte strings, split into name0, name1, ... past the HDF5 limit."""
    data = np.asarray([v.encode("utf8") for v in values]) if values else np.asarray([])
    chunks = 1
    parts = [data]
    while any(p.nbytes > _HDF5_ATTR_LIMIT for p in parts):
        chunks += 1
        parts = np.array_split(data, chunks)
    if chunks == 1:
        group.attrs[name] = data
    else:
        for i, part in enumerate(parts):
            group.attrs[f"{name}{i}"] = part


def write_tf(directory: Path, config: GPT2Config, head: str, source: _Source, max_shard_size=None) -> list[Path]:
    """tf_model.h5 in the layout of Keras 2 `save_weights`, as transformers 4.x's TFGPT2* save and load it."""
    if max_shard_size is not None:
        raise ValueError("Sharding is supported for safetensors and pytorch outputs. Received: --to tf with --max-shard-size.")
    try:
        import h5py
    except ImportError as e:
        raise ImportError("Writing tf_model.h5 needs h5py: pip install h5py") from e
    if any(source.output_dtype(k).name == "bfloat16" for k in source.keys):
        raise ValueError(
            "tf_model.h5 cannot hold bfloat16 tensors (HDF5 has no bfloat16 type). Received: dtype=bfloat16. "
            "Use --dtype float32 or float16, or --to safetensors."
        )
    _warn_unloadable_heads("tf", config, head)
    names = naming.file_names("tf_h5", config, head)
    model_name = naming.TF_MODEL_NAMES[head]
    layers: dict[str, list[str]] = {}  # Keras layer (first path component) -> its weight names, in order
    for key in source.keys:
        layer = names[key][0].split("/", 1)[0]
        layers.setdefault(layer, []).append(f"{model_name}/{names[key][0]}")
    path = directory / TF_WEIGHTS_NAME
    with hub.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = "tensorflow"
            f.attrs["keras_version"] = _KERAS_VERSION
            _h5_set_attr_list(f, "layer_names", list(layers))
            groups = {}
            for layer, weight_names in layers.items():
                groups[layer] = f.create_group(layer)
                _h5_set_attr_list(groups[layer], "weight_names", weight_names)
            for key, value in source.items():
                name, layout = names[key]
                groups[name.split("/", 1)[0]].create_dataset(f"{model_name}/{name}", data=naming.to_file_layout(value, layout))
            top = f.create_group("top_level_model_weights")  # Keras >= 2.13 writes it (empty for these models)
            _h5_set_attr_list(top, "weight_names", [])
    return [path]


class _MsgpackWriter:
    """Stream a nested dict of arrays to a file in flax.serialization's msgpack encoding, one array at a time."""

    def __init__(self, fh):
        import msgpack

        self.msgpack = msgpack
        self.fh = fh
        self.packer = msgpack.Packer(use_bin_type=True)

    def map_header(self, n: int) -> None:
        self.fh.write(self.packer.pack_map_header(n))

    def key(self, k: str) -> None:
        self.fh.write(self.packer.pack(k))

    def array(self, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value)
        if value.nbytes > _MSGPACK_MAX_CHUNK:  # flax's chunked form, for leaves past msgpack's 2 GiB object limit
            step = max(1, _MSGPACK_MAX_CHUNK // value.dtype.itemsize)
            flat = value.reshape(-1)
            chunks = [flat[i : i + step] for i in range(0, flat.size, step)]
            self.map_header(3)
            self.key("__msgpack_chunked_array__")
            self.fh.write(self.packer.pack(True))
            self.key("shape")
            self.map_header(value.ndim)
            for i, s in enumerate(value.shape):
                self.key(str(i))
                self.fh.write(self.packer.pack(int(s)))
            self.key("chunks")
            self.map_header(len(chunks))
            for i, chunk in enumerate(chunks):
                self.key(str(i))
                self.array(chunk)
            return
        # packb((shape, dtype name, data)) wrapped in ExtType, byte for byte, but the data is written from the array
        # itself rather than copied three times (tobytes, packb, the ExtType) first
        n = value.nbytes
        head = (
            self.packer.pack_array_header(3)
            + self.packer.pack(list(value.shape))
            + self.packer.pack(_dtype_name(value.dtype))
            + (b"\xc4" + n.to_bytes(1, "big") if n <= 0xFF else b"\xc5" + n.to_bytes(2, "big") if n <= 0xFFFF
               else b"\xc6" + n.to_bytes(4, "big"))
        )
        size = len(head) + n
        fixext = {1: b"\xd4", 2: b"\xd5", 4: b"\xd6", 8: b"\xd7", 16: b"\xd8"}
        if size in fixext:
            ext = fixext[size]
        elif size <= 0xFF:
            ext = b"\xc7" + size.to_bytes(1, "big")
        elif size <= 0xFFFF:
            ext = b"\xc8" + size.to_bytes(2, "big")
        else:
            ext = b"\xc9" + size.to_bytes(4, "big")
        self.fh.write(ext + _MSGPACK_EXT_NDARRAY.to_bytes(1, "big") + head)
        self.fh.write(value.reshape(-1).view(np.uint8).data)


def write_flax(directory: Path, config: GPT2Config, head: str, source: _Source, max_shard_size=None) -> list[Path]:
    """flax_model.msgpack as transformers 4.x's FlaxGPT2* save and load it (`flax.serialization.to_bytes(params)`)."""
    if max_shard_size is not None:
        raise ValueError("Sharding is supported for safetensors and pytorch outputs. Received: --to flax with --max-shard-size.")
    if importlib.util.find_spec("msgpack") is None:
        raise ImportError("Writing flax_model.msgpack needs msgpack: pip install msgpack")
    _warn_unloadable_heads("flax", config, head)
    names = naming.file_names("flax_msgpack", config, head)
    # msgpack maps are prefixed by their length: build the tree's shape first, then stream the leaves in tree order.
    tree: dict = {}
    for key in source.keys:
        node = tree
        *parents, leaf = names[key][0].split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = key
    order: list[str] = []

    def walk(node: dict) -> None:
        for v in node.values():
            if isinstance(v, dict):
                walk(v)
            else:
                order.append(v)

    walk(tree)
    source.keys = order
    values = source.items()
    path = directory / FLAX_WEIGHTS_NAME
    with hub.atomic_path(path) as tmp, open(tmp, "wb") as fh:
        writer = _MsgpackWriter(fh)

        def emit(node: dict) -> None:
            writer.map_header(len(node))
            for k, v in node.items():
                writer.key(k)
                if isinstance(v, dict):
                    emit(v)
                else:
                    key, value = next(values)
                    writer.array(naming.to_file_layout(value, names[key][1]))

        emit(tree)
        for _ in values:  # finish the progress bar
            pass
    return [path]


def write_openai(directory: Path, config: GPT2Config, head: str, source: _Source, max_shard_size=None) -> list[Path]:
    """OpenAI's TF1 checkpoint layout (model.ckpt.* + checkpoint + hparams.json), with tf.compat.v1.train.Saver."""
    if head not in ("base", "lm") or not config.tie_word_embeddings:
        raise ValueError(
            f"The OpenAI checkpoint format holds only the GPT-2 language model (tied embeddings). Received: "
            f"head={head!r}, tie_word_embeddings={config.tie_word_embeddings}. Use --to safetensors, or --head lm."
        )
    if max_shard_size is not None:
        raise ValueError("Sharding is supported for safetensors and pytorch outputs. Received: --to openai with --max-shard-size.")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise ImportError("Writing an OpenAI checkpoint needs TensorFlow: pip install 'gpt2-frameworks[tf]'.") from e
    if any(source.output_dtype(k).name == "bfloat16" for k in source.keys):
        raise ValueError("Writing bfloat16 OpenAI checkpoints is not supported. Received: dtype=bfloat16. Use float32.")
    names = naming.file_names("openai", config, head)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
        variables = []
        for key, value in source.items():  # one tensor at a time, fed (not baked into the graph: 2 GB proto limit)
            name, layout = names[key]
            value = naming.to_file_layout(value, layout)
            var = tf.compat.v1.get_variable(name, shape=value.shape, dtype=tf.as_dtype(value.dtype), use_resource=False)
            feed = tf.compat.v1.placeholder(var.dtype.base_dtype, shape=value.shape)
            sess.run(tf.compat.v1.assign(var, feed), {feed: value})
            variables.append(var)
        saver = tf.compat.v1.train.Saver(variables)
        saver.save(sess, str(directory / OPENAI_CHECKPOINT_PREFIX), write_meta_graph=False)
    hparams = {
        "n_vocab": config.vocab_size,
        "n_ctx": config.n_positions,
        "n_embd": config.n_embd,
        "n_head": config.n_head,
        "n_layer": config.n_layer,
    }
    hub.atomic_write_text(directory / OPENAI_HPARAMS_NAME, json.dumps(hparams, indent=2) + "\n")
    return sorted(directory.glob(OPENAI_CHECKPOINT_PREFIX + "*")) + [directory / "checkpoint", directory / OPENAI_HPARAMS_NAME]


WRITERS = {
    "safetensors": write_safetensors,
    "pytorch": write_pytorch,
    "tf": write_tf,
    "flax": write_flax,
    "openai": write_openai,
}


def output_config(config: GPT2Config, head: str, dtype: np.dtype | None) -> GPT2Config:
    """The config.json to write: `architectures` for `head` (transformers' class name), the dtype recorded."""
    data = config.to_dict()
    data["architectures"] = [naming.ARCHITECTURES[head]]
    if dtype is not None:
        key = "dtype" if "dtype" in data else "torch_dtype"
        data[key] = _dtype_name(dtype)
    return GPT2Config.from_dict(data)


def _copy_tokenizer(source_dir: Path | None, directory: Path, to: str) -> list[Path]:
    if source_dir is None:
        return []
    copied = []
    renames = {n: n for n in TOKENIZER_FILES}
    renames.update({src: dst for src, dst in OPENAI_TOKENIZER_FILES.items()})
    for src_name, dst_name in renames.items():
        src = source_dir / src_name
        if not src.is_file():
            continue
        if to == "openai":  # OpenAI's own names for the BPE files
            dst_name = {v: k for k, v in OPENAI_TOKENIZER_FILES.items()}.get(dst_name, dst_name)
        dst = directory / dst_name
        if dst.exists():
            continue  # vocab.json already copied; don't let encoder.json overwrite it
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def save_checkpoint(
    directory: str | os.PathLike,
    config: GPT2Config,
    tensors: Mapping[str, np.ndarray] | Checkpoint,
    head: str = "base",
    *,
    to: str = "safetensors",
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    force: bool = False,
    tokenizer_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """Write canonical tensors as a checkpoint directory in format `to`, atomically.

    Args:
        directory: The output directory; it must not exist unless `force` (then it is replaced at the end).
        config: The model config; config.json is written with `architectures` for `head`.
        tensors: Canonical tensors (a dict, or an open `Checkpoint` read one tensor at a time).
        head: One of `naming.HEADS`.
        to: One of `FORMATS`.
        dtype: 'float32', 'float16', 'bfloat16', or None to keep each tensor's dtype.
        max_shard_size: e.g. '2GB': shard safetensors / pytorch outputs.
        force: Replace an existing `directory`.
        tokenizer_dir: Copy tokenizer files from there.
        progress: tqdm progress bar; None shows it when stderr is a terminal.
    """
    if to not in WRITERS:
        raise ValueError(f"Unknown output format. Received: to={to!r}. Use one of {tuple(WRITERS)}.")
    if head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    np_dtype = numpy_dtype(dtype)
    if max_shard_size is not None:
        hub.parse_size(max_shard_size)  # fail before writing anything
    if not isinstance(tensors, Checkpoint):  # the same strict check readers apply
        tensors, _ = naming.from_hub_state_dict(tensors, config, head, allow_missing_head=False, source="tensors")
    directory = Path(directory)
    with atomic_directory(directory, force=force) as tmp:
        source = _Source(tensors, np_dtype, progress, f"{to} <- {directory.name}")
        WRITERS[to](tmp, config, head, source, max_shard_size=max_shard_size)
        out_dtype = np_dtype
        if out_dtype is None and source.keys:
            out_dtype = source.output_dtype(source.keys[0])
        output_config(config, head, out_dtype).save_pretrained(tmp)
        _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else None, tmp, to)
    return directory


@contextlib.contextmanager
def atomic_directory(directory: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `directory`; on success it replaces `directory`, on any error it is removed.

    An existing `directory` is an error unless `force`; then it is swapped out only once the new one is complete.
    """
    directory = Path(directory)
    if directory.exists() and not force:
        raise FileExistsError(
            f"The output already exists. Received: output={str(directory)!r}. Pass --force (force=True) to replace "
            "it, or choose another directory."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield tmp
        os.chmod(tmp, hub.default_mode(directory=True))  # mkdtemp makes it private; give it a normal directory's mode
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, old / "x")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "safetensors",
    *,
    src_format: str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    force: bool = False,
    head: str | None = None,
    config: GPT2Config | str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """Convert the checkpoint at `src` into a directory `dst` in format `to`, streaming tensor by tensor.

    Arguments as `open_checkpoint` and `save_checkpoint`. Tokenizer files beside `src` are copied.
    """
    src_path, dst_path = Path(src).resolve(), Path(dst).resolve()
    if dst_path == src_path or dst_path in src_path.parents:
        raise ValueError(
            f"The output would replace the source. Received: src={str(src)!r}, output={str(dst)!r}. Write to "
            "another directory."
        )
    if dst_path.exists() and not force:  # fail before reading anything
        raise FileExistsError(
            f"The output already exists. Received: output={str(dst)!r}. Pass --force to replace it, or choose "
            "another directory."
        )
    with open_checkpoint(src, format=src_format, config=config, head=head) as ckpt:
        logger.info(
            "Read %s checkpoint %s: head=%s, %d tensors, n_layer=%d, n_embd=%d.",
            ckpt.format, src, ckpt.head, len(ckpt), ckpt.config.n_layer, ckpt.config.n_embd,
        )
        return save_checkpoint(
            dst,
            ckpt.config,
            ckpt,
            ckpt.head,
            to=to,
            dtype=dtype,
            max_shard_size=max_shard_size,
            force=force,
            tokenizer_dir=ckpt.source_dir,
            progress=progress,
        )
