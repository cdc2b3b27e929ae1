"""Move parameters between a gpt2_flax model and the canonical dict, through gpt2_core.naming only.

A parameter's flax path is its dotted path in `nnx.state(model, nnx.Param)` (`transformer.h.0.attn.c_attn.kernel`);
gpt2_core.naming (backend "flax") maps those paths and layouts to canonical names. Nothing else knows them.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import naming
from weights_convert.formats.base import row_blocks

_ALIGN = 64  # bytes: XLA CPU's minimum alignment for adopting a host buffer


def _params(model) -> dict[str, nnx.Param]:
    # The Variables themselves (not copies): setting a value updates the model.
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def canonical_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as canonical NumPy arrays in their own dtype (bfloat16 as ml_dtypes.bfloat16, the
    rule of every reader in weights_convert)."""
    params = {path: np.asarray(var.get_value()) for path, var in _params(model).items()}
    return naming.from_backend(params, "flax", model.config, model.head)


def load_canonical(model, canonical: dict[str, np.ndarray]) -> None:
    """Copy a canonical dict into the model. Strict: every parameter set, every shape checked."""
    naming.check_canonical(canonical, model.config, model.head, f"canonical dict for {type(model).__name__}")
    params = _params(model)
    keys = naming.backend_keys(canonical, "flax", model.config, model.head)
    if keys != set(params):
        raise RuntimeError(f"naming table and flax model disagree: {sorted(keys ^ set(params))[:10]}")
    # One tensor at a time (naming.iter_backend). The value it replaces is dropped first (the parameter holds its
    # shape and dtype meanwhile, zeros again if the copy fails), then the tensor is copied in row blocks
    # (`row_blocks`: the file's pages leave memory block by block) into a host buffer of the parameter's dtype that
    # `jax.device_put` adopts without a copy on CPU (`_host_buffer`; on an accelerator it is copied there and
    # dropped). So the peak is the model plus one block. `np.array` of the map and then `jnp.asarray` (which
    # copies) beside the replaced value held four copies of the tensor at once (gpt2-medium: the load peaking at
    # 1.43x the checkpoint; docs/performance.md "Memory"). The parameter never aliases the caller's array or the
    # file's pages (which anything rewriting the file in place would change).
    for path, value in naming.iter_backend(canonical, "flax", model.config, model.head, contiguous=False):
        var = params[path]
        old = var.get_value()
        spec = jax.ShapeDtypeStruct(old.shape, old.dtype, sharding=getattr(old, "sharding", None))
        var.set_value(spec)
        del old
        try:
            buffer = _host_buffer(spec.shape, spec.dtype)
            for rows, block in row_blocks(value):
                buffer[rows] = block
            var.set_value(jax.device_put(buffer, spec.sharding))
        except BaseException:
            var.set_value(jax.device_put(jnp.zeros(spec.shape, spec.dtype), spec.sharding))
            raise
        del buffer


def _host_buffer(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array aligned to 64 bytes: XLA's CPU client adopts such a buffer as the
    parameter without copying it (`jax.device_put`; an unaligned one it copies)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def cast_params(model, dtype: Any) -> None:
    """Cast every floating-point parameter to `dtype` (e.g. `jnp.bfloat16` or `"float16"`), in place."""
    dtype = jnp.dtype(dtype)
    for var in _params(model).values():
        value = var.get_value()
        if jnp.issubdtype(value.dtype, jnp.floating):
            var.set_value(value.astype(dtype))
    # nnx.Embed fixes its compute dtype at construction (the other layers follow their inputs and parameters).
    for _, module in nnx.iter_modules(model):
        if isinstance(module, nnx.Embed):
            module.dtype = module.param_dtype = dtype


def set_compute_dtype(model, dtype: Any) -> None:
    """Run `model` in `dtype` (e.g. `jnp.bfloat16`) whatever its parameters' dtype: transformers 4.x Flax's `dtype`.

    Sets the `dtype` of every `nnx.Linear`, `nnx.Embed` and `nnx.LayerNorm`: they cast their parameters and inputs
    to it before computing. LayerNorm keeps its mean and variance in float32 (flax's rule, as torch's layer_norm),
    the attention softmax and the losses run in float32 (gpt2_flax.model).
    """
    dtype = jnp.dtype(dtype)
    for _, module in nnx.iter_modules(model):
        if isinstance(module, (nnx.Linear, nnx.Embed, nnx.LayerNorm)):
            module.dtype = dtype
