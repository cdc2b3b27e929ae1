"""Move parameters between a gpt2_tf model and the canonical dict, through gpt2_core.naming only.

A model's variables are named by dotted attribute path (`transformer.h.0.attn.c_attn.kernel`), found by walking the
layer tree: custom layers by attribute name (lists by index), Keras' built-in layers by their variables' names
(`kernel`, `bias`, `gamma`, `beta`, `embeddings`). `gpt2_core.naming` maps those paths to canonical names; nothing
else knows them. The tied LM head has no variable (it is `wte`'s matrix), so the walk never sees it.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping

import numpy as np
import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core import naming  # noqa: E402
from weights_convert.formats.base import row_blocks  # noqa: E402

logger = logging.getLogger(__name__)

# Keras layers whose variables are leaves, named by the variable's own name.
_LEAF_LAYERS = (keras.layers.Dense, keras.layers.LayerNormalization, keras.layers.Embedding)


def named_variables(model: keras.layers.Layer) -> dict[str, tf.Variable]:
    """{dotted attribute path: variable} of every parameter of `model`, in attribute order."""
    out: dict[str, tf.Variable] = {}

    def visit(layer: keras.layers.Layer, path: str) -> None:
        if isinstance(layer, _LEAF_LAYERS):
            for variable in layer.weights:
                out[f"{path}.{variable.name}"] = variable
            return
        for name, value in vars(layer).items():
            if name.startswith("_"):
                continue
            prefix = f"{path}.{name}" if path else name
            if isinstance(value, keras.layers.Layer):
                visit(value, prefix)
            elif isinstance(value, (list, tuple)) and value and all(isinstance(v, keras.layers.Layer) for v in value):
                for i, item in enumerate(value):
                    visit(item, f"{prefix}.{i}")

    visit(model, "")
    return out


def canonical_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as canonical NumPy arrays in their own dtype (bfloat16 as ml_dtypes.bfloat16, the
    rule of every reader in weights_convert)."""
    params = {path: np.asarray(variable.numpy()) for path, variable in named_variables(model).items()}
    return naming.from_backend(params, "tf", model.config, model.head)


def load_canonical(model, canonical: Mapping[str, np.ndarray]) -> None:
    """Copy a canonical dict into the model. Strict: every parameter set, every shape checked."""
    naming.check_canonical(canonical, model.config, model.head, f"canonical dict for {type(model).__name__}")
    variables = named_variables(model)
    keys = naming.backend_keys(canonical, "tf", model.config, model.head)
    if keys != set(variables):
        raise RuntimeError(f"naming table and tf model disagree: {sorted(keys ^ set(variables))[:10]}")
    # One tensor at a time (naming.iter_backend), each in row blocks (`row_blocks`: the file's pages leave memory
    # block by block) written into the variable's own buffer (`scatter_update` of the tf.Variable), so the peak is
    # the model plus one block. A whole-tensor `assign` converts the array to a tensor and then gives the variable a
    # new buffer: with the file's pages, three copies of the tensor at once (gpt2-medium's wte: +590 MB; the load
    # peaked at 1.54x the checkpoint; docs/performance.md "Memory").
    for path, value in naming.iter_backend(canonical, "tf", model.config, model.head, contiguous=False):
        variable = variables[path]
        target = variable.value  # the tf.Variable (outside an autocast scope, which loading never is)
        dtype = np.dtype(variable.dtype)
        if value.ndim == 0 or not isinstance(target, tf.Variable):
            variable.assign(np.ascontiguousarray(value, dtype=dtype))
            continue
        for rows, block in row_blocks(value):
            indices = tf.range(rows.start, rows.stop)
            target.scatter_update(tf.IndexedSlices(np.ascontiguousarray(block, dtype=dtype), indices))
