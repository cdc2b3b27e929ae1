"""`pytorch_model.bin`, or shards `pytorch_model-0000i-of-0000n.bin` + `pytorch_model.bin.index.json` (Hub names).

Read with `torch.load(weights_only=True, mmap=True)`, which refuses to unpickle arbitrary objects and reads tensors
when used; bfloat16 keeps its bits as `ml_dtypes.bfloat16`. Written with `torch.save`. Needs PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gpt2_core import hub
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import Format, Listing, Source, bfloat16, corrupt, hub_key, write_sharded


def _torch(action: str):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"{action} pytorch_model.bin needs PyTorch: pip install 'gpt2-frameworks[torch]'. Or convert it where "
            "PyTorch is installed."
        ) from e
    return torch


def to_numpy(t) -> np.ndarray:
    """A torch tensor as NumPy; bfloat16 keeps its bits, viewed as ml_dtypes.bfloat16 (NumPy has no bfloat16)."""
    torch = _torch("Reading")
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(bfloat16())
    return t.numpy()


def to_torch(value: np.ndarray):
    """A NumPy array as a CPU torch tensor (sharing memory where it can); ml_dtypes.bfloat16 -> torch.bfloat16."""
    torch = _torch("Writing")
    value = np.ascontiguousarray(value)
    if not value.flags.writeable:  # torch.from_numpy shares memory and wants it writable; copy only then
        value = value.copy()
    if value.dtype.name == "bfloat16":
        return torch.from_numpy(value.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(value)


def list_tensors(files: list[Path], closers: list) -> tuple[Listing, None]:
    torch = _torch("Reading")
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
            raise corrupt(path, e, "PyTorch checkpoint") from e
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
            dtype = bfloat16() if t.dtype == torch.bfloat16 else np.dtype(str(t.dtype).replace("torch.", ""))
            out[key] = (tuple(t.shape), dtype, lambda t=t: to_numpy(t))
    return out, None


def write(directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    torch = _torch("Writing")
    state = {hub_key(key, head): to_torch(value) for key, value in source.items()}
    return write_sharded(
        directory,
        state,
        nbytes=lambda v: v.numel() * v.element_size(),
        save=lambda shard, tmp: torch.save(dict(shard), str(tmp)),
        single=hub.WEIGHTS_NAME,
        index=hub.WEIGHTS_INDEX_NAME,
        shard_name=lambda i, n: f"pytorch_model-{i:05d}-of-{n:05d}.bin",
        max_shard_size=max_shard_size,
    )


def _signature(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"  # torch zip archive / legacy pickle


FORMAT = Format(
    name="pytorch",
    files=(hub.WEIGHTS_NAME, hub.WEIGHTS_INDEX_NAME),
    suffixes=(".bin", ".pt", ".pth", hub.WEIGHTS_INDEX_NAME),
    lister=list_tensors,
    writer=write,
    signature=_signature,
)
