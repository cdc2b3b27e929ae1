"""`model.safetensors`, or shards `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` (Hub names).

Listed with `safetensors.safe_open(framework="numpy")` (which checks the header against the file); each tensor is
then read through a NumPy memory map of its own bytes (offsets from the same header, dtype little-endian as the
format fixes it), copied out and unmapped, one at a time; bfloat16 comes back as `ml_dtypes.bfloat16`. A map kept
open over the whole file while every tensor is read would keep every page it touched resident, counted in the
process's RSS beside the copies. `Checkpoint.view` gives the read-only map itself, without the copy
(`CheckpointTensors`, what `load_pretrained` hands a backend, copies each tensor only into the model). The file
stays open from listing to the last read, so a checkpoint replaced meanwhile (an atomic save) is never mixed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import Format, Listing, Source, bfloat16, corrupt, write_sharded

_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "I64": "int64", "I32": "int32", "I16": "int16",
    "I8": "int8", "U8": "uint8", "BOOL": "bool",
}


def _data_offsets(pinned) -> tuple[int, dict[str, tuple[int, int]]]:
    """(where the data starts, {name: (begin, end) within the data}) of an open safetensors file: the format's
    header (a little-endian u64 length, then that many bytes of JSON), already validated by `safe_open`."""
    pinned.seek(0)
    n = int.from_bytes(pinned.read(8), "little")
    header = json.loads(pinned.read(n))
    return 8 + n, {k: tuple(v["data_offsets"]) for k, v in header.items() if k != "__metadata__"}


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, None]:
    from safetensors import SafetensorError, safe_open

    out: Listing = {}
    for path in files:
        try:
            pinned = open(path, "rb")  # noqa: SIM115 (closed by the checkpoint's closers)
        except OSError as e:
            raise corrupt(path, e, "safetensors file") from e
        closers.append(pinned.close)
        try:
            # the same file as `pinned` even if `path` is replaced meanwhile (Linux); elsewhere the path
            fd_path = f"/proc/self/fd/{pinned.fileno()}"
            with safe_open(fd_path if os.path.exists(fd_path) else str(path), framework="numpy") as handle:
                listed = [(k, handle.get_slice(k)) for k in handle.keys()]
                listed = [(k, tuple(sl.get_shape()), sl.get_dtype()) for k, sl in listed]
            data_start, offsets = _data_offsets(pinned)
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            raise corrupt(path, e, "safetensors file") from e
        for key, shape, st_dtype in listed:
            if key in out:
                raise ValueError(f"Tensor names repeat across shards. Received: {key!r} in {path.name}.")
            dtype = bfloat16() if st_dtype == "BF16" else np.dtype(_DTYPES.get(st_dtype, "float32"))

            def load(copy: bool = True, k=key, p=path, f=pinned, shape=shape, dtype=dtype, start=data_start,
                     span=offsets.get(key)) -> np.ndarray:  # fmt: skip
                begin, end = span
                if f.closed:
                    raise ValueError(
                        f"The checkpoint was closed before its tensor was read. Received: {k!r} of {str(p)!r}. "
                        "Read the tensors while the checkpoint is open (`with open_checkpoint(...)`)."
                    )
                if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                    raise corrupt(p, ValueError(f"{k}: {end - begin} bytes for shape {shape}"), "safetensors file")
                if begin == end:
                    return np.zeros(shape, dtype)
                try:
                    mapped = np.memmap(f, dtype=dtype.newbyteorder("<"), mode="r", offset=start + begin,
                                       shape=shape)  # fmt: skip
                except (OSError, ValueError) as e:
                    raise corrupt(p, e, "safetensors file") from e
                return np.array(mapped) if copy else mapped  # the copy unmaps its pages when `mapped` goes

            out[key] = (shape, dtype, load)
    return out, None


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of one `.safetensors` file as NumPy, in the file's names and dtypes (bfloat16 as
    `ml_dtypes.bfloat16`)."""
    closers: list = []
    try:
        listing, _ = list_tensors([Path(path)], closers)
        return {k: load() for k, (_, _, load) in listing.items()}
    finally:
        for close in reversed(closers):
            close()


def save_safetensors(
    state_dict: Mapping[str, np.ndarray],
    directory: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` + the index json, atomically.

    `state_dict` is in the file's (Hub) names; returns the files written.
    """
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    return write_sharded(
        directory,
        arrays,
        nbytes=lambda v: v.nbytes,
        save=lambda shard, tmp: save_file(shard, str(tmp), metadata=meta),
        single=hub.SAFE_WEIGHTS_NAME,
        index=hub.SAFE_WEIGHTS_INDEX_NAME,
        shard_name=lambda i, n: f"model-{i:05d}-of-{n:05d}.safetensors",
        max_shard_size=max_shard_size,
    )


def write(directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    state = {key: np.ascontiguousarray(value) for key, value in source.items()}
    return save_safetensors(naming.to_hub_state_dict(state, head), directory, max_shard_size=max_shard_size)


def _signature(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"  # u64 header length, then JSON


FORMAT = Format(
    name="safetensors",
    files=(hub.SAFE_WEIGHTS_NAME, hub.SAFE_WEIGHTS_INDEX_NAME),
    suffixes=(".safetensors", hub.SAFE_WEIGHTS_INDEX_NAME),
    lister=list_tensors,
    writer=write,
    signature=_signature,
    mapped=True,
)
