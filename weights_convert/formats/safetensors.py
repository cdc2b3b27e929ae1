"""`model.safetensors`, or shards `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json` (Hub names).

Read with `safetensors.safe_open(framework="numpy")` one tensor at a time; bfloat16 comes back as
`ml_dtypes.bfloat16`. Written with `safetensors.numpy.save_file` (`{"format": "pt"}` metadata, as transformers).
"""

from __future__ import annotations

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


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, None]:
    from safetensors import SafetensorError, safe_open

    out: Listing = {}
    for path in files:
        try:
            handle = safe_open(str(path), framework="numpy")
            handle.__enter__()
        except (SafetensorError, OSError, ValueError) as e:
            raise corrupt(path, e, "safetensors file") from e
        closers.append(lambda h=handle: h.__exit__(None, None, None))
        for key in handle.keys():
            if key in out:
                raise ValueError(f"Tensor names repeat across shards. Received: {key!r} in {path.name}.")
            sl = handle.get_slice(key)
            st_dtype = sl.get_dtype()
            dtype = bfloat16() if st_dtype == "BF16" else np.dtype(_DTYPES.get(st_dtype, "float32"))

            def load(h=handle, k=key, p=path):
                try:
                    return h.get_tensor(k)
                except (SafetensorError, OSError) as e:
                    raise corrupt(p, e, "safetensors file") from e

            out[key] = (tuple(sl.get_shape()), dtype, load)
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
)
