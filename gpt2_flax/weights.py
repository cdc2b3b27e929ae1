"""Move parameters between a gpt2_flax model and the canonical dict, through gpt2_core.naming only.

A parameter's flax path is its dotted path in `nnx.state(model, nnx.Param)` (`transformer.h.0.attn.c_attn.kernel`);
gpt2_core.naming (backend "flax") maps those paths and layouts to canonical names. Nothing else knows them.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import naming


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
    # One tensor at a time (naming.iter_backend): peak memory is the model plus one tensor (a lazy mapping, as
    # load_pretrained gives for safetensors) or plus the canonical dict. On CPU `jnp.asarray` keeps a read-only
    # array's buffer without copying it: a memory map of the checkpoint is therefore copied first (else the
    # parameter would live in the file's pages, changed by anything rewriting the file in place).
    for path, value in naming.iter_backend(canonical, "flax", model.config, model.head):
        var = params[path]
        value = np.ascontiguousarray(value) if value.flags.writeable else np.array(value, order="C")
        var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))


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
