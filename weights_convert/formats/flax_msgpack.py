"""`flax_model.msgpack` as transformers 4.x's FlaxGPT2* classes save and load it (`flax.serialization.to_bytes`),
with its msgpack codec: the reader decodes the tree's structure in place over an mmap (each array is copied out
when it is read), the writer streams one array at a time; arrays over 1 GiB use flax's chunked form. Needs msgpack
(not flax). Shards: `flax_model-0000i-of-0000n.msgpack` + index.

References: `flax.serialization` (msgpack encoding of arrays, `_MsgpackExtType.ndarray`, `MAX_CHUNK_SIZE`),
transformers 4.46 `modeling_flax_utils.py`, the msgpack spec.
"""

from __future__ import annotations

import importlib.util
import mmap
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import (
    Format,
    Listing,
    Source,
    bfloat16,
    corrupt,
    dtype_name,
    no_sharding,
    warn_unloadable_heads,
)

_MSGPACK_EXT_NDARRAY = 1  # flax.serialization._MsgpackExtType.ndarray
_MSGPACK_MAX_CHUNK = 2**30  # flax.serialization.MAX_CHUNK_SIZE: larger arrays are stored in chunks


def _require_msgpack(action: str) -> None:
    if importlib.util.find_spec("msgpack") is None:
        raise ImportError(f"{action} flax_model.msgpack needs msgpack: pip install msgpack")


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


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
        dtype = bfloat16() if name == "bfloat16" else np.dtype(name)
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


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, None]:
    _require_msgpack("Reading")
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
            raise corrupt(path, e, "msgpack file") from e
        if not isinstance(tree, dict):
            raise ValueError(f"Not a Flax checkpoint: the msgpack file does not hold a tree. Received: path={str(path)!r}.")
        try:
            leaves = list(_flatten_tree(tree))
        except (ValueError, TypeError, KeyError) as e:
            raise corrupt(path, e, "msgpack file") from e

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
    return out, None


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


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
            + self.packer.pack(dtype_name(value.dtype))
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


def write(directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    """flax_model.msgpack as transformers 4.x's FlaxGPT2* save and load it (`flax.serialization.to_bytes(params)`)."""
    no_sharding("flax", max_shard_size)
    _require_msgpack("Writing")
    warn_unloadable_heads("flax", config, head)
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
    path = directory / hub.FLAX_WEIGHTS_NAME
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


FORMAT = Format(
    name="flax",
    files=(hub.FLAX_WEIGHTS_NAME, hub.FLAX_WEIGHTS_INDEX_NAME),
    suffixes=(".msgpack", hub.FLAX_WEIGHTS_INDEX_NAME),
    lister=list_tensors,
    writer=write,
    table="flax_msgpack",
    # Flax task-model files nest the body under transformer/, FlaxGPT2Model files don't: names are looked up unprefixed
    strip="transformer/",
)
