"""Test adapter for gpt2_tf (see conftest.py for the interface)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from gpt2_tf.model import MODEL_CLASSES  # noqa: E402

NAME = "tf"
tf.config.experimental.enable_tensor_float_32_execution(False)

_FLOAT_INPUTS = ("inputs_embeds", "encoder_hidden_states")


def build(head, config, canonical):
    model = MODEL_CLASSES[head](config.copy(), seed=-1)  # model.SKIP_INIT: the weights are loaded right after
    model.load_canonical(canonical)
    return model


def _to_tf(value, name):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_to_tf(v, name) for v in value)
    arr = np.asarray(value)
    if name in _FLOAT_INPUTS or name == "past_key_values" or (name == "labels" and arr.dtype.kind == "f"):
        return tf.constant(arr.astype(np.float32))
    return tf.constant(arr.astype(np.int64))


def _to_numpy(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(_to_numpy(v) for v in value)
    return np.asarray(tf.cast(value, tf.float32))


def forward(model, head, **inputs):
    kwargs = {k: _to_tf(v, k) for k, v in inputs.items()}
    out = model(**kwargs, training=False)
    return {k: _to_numpy(v) for k, v in out.items()}


def canonical(model):
    return model.canonical_state_dict()


def generate(model, input_ids, attention_mask=None, **kwargs):
    mask = None if attention_mask is None else np.asarray(attention_mask, np.int64)
    out = model.generate(np.asarray(input_ids, np.int64), attention_mask=mask, **kwargs)
    return np.asarray(out)


def save(model, directory):
    model.save_pretrained(directory)


def load(head, directory):
    return MODEL_CLASSES[head].from_pretrained(directory)
