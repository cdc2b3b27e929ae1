"""Test adapter for gpt2_torch (see conftest.py for the interface)."""

from __future__ import annotations

import numpy as np
import torch

from gpt2_torch.model import MODEL_CLASSES

NAME = "torch"
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False

_FLOAT_INPUTS = ("inputs_embeds", "encoder_hidden_states")


def build(head, config, canonical):
    model = MODEL_CLASSES[head](config.copy())
    model.load_canonical(canonical)
    return model.eval()


def _to_torch(value, name):
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (tuple, list)):
        return tuple(_to_torch(v, name) for v in value)
    arr = np.asarray(value)
    if name in _FLOAT_INPUTS or name == "past_key_values" or (name == "labels" and arr.dtype.kind == "f"):
        return torch.from_numpy(arr.astype(np.float32))
    return torch.from_numpy(arr.astype(np.int64))


def _to_numpy(value):
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return tuple(_to_numpy(v) for v in value)
    return value.detach().float().numpy()


def forward(model, head, **inputs):
    kwargs = {k: _to_torch(v, k) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(**kwargs)
    return {k: _to_numpy(v) for k, v in out.items()}


def canonical(model):
    return model.canonical_state_dict()


def generate(model, input_ids, attention_mask=None, **kwargs):
    mask = None if attention_mask is None else torch.from_numpy(np.asarray(attention_mask, np.int64))
    out = model.generate(torch.from_numpy(np.asarray(input_ids, np.int64)), attention_mask=mask, **kwargs)
    return out.numpy()


def save(model, directory):
    model.save_pretrained(directory)


def load(head, directory):
    return MODEL_CLASSES[head].from_pretrained(directory)
