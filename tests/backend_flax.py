"""Test adapter for gpt2_flax (see conftest.py for the interface)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from gpt2_flax.model import MODEL_CLASSES

NAME = "flax"
jax.config.update("jax_default_matmul_precision", "highest")

_FLOAT_INPUTS = ("inputs_embeds", "encoder_hidden_states")


def build(head, config, canonical):
    model = MODEL_CLASSES[head](config.copy())
    model.load_canonical(canonical)
    model.eval()
    return model


def _to_jax(value, name):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_to_jax(v, name) for v in value)
    arr = np.asarray(value)
    if name in _FLOAT_INPUTS or name == "past_key_values" or (name == "labels" and arr.dtype.kind == "f"):
        return jnp.asarray(arr.astype(np.float32))
    return jnp.asarray(arr.astype(np.int32))


def _to_numpy(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(_to_numpy(v) for v in value)
    return np.asarray(value, dtype=np.float32)


def forward(model, head, **inputs):
    kwargs = {k: _to_jax(v, k) for k, v in inputs.items()}
    out = model(**kwargs)
    return {k: _to_numpy(v) for k, v in out.items()}


def canonical(model):
    return model.canonical_state_dict()


def generate(model, input_ids, attention_mask=None, **kwargs):
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int32)
    out = model.generate(np.asarray(input_ids, np.int32), attention_mask=mask, **kwargs)
    return np.asarray(out)


def save(model, directory):
    model.save_pretrained(directory)


def load(head, directory):
    return MODEL_CLASSES[head].from_pretrained(directory)
