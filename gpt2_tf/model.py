"""GPT-2 in TensorFlow (Keras 3 on the TensorFlow backend): the six transformers classes, argument for argument and
output field for output field.

Mirrors `gpt2_torch/model.py` class for class and name for name; every decision (activation formulas, attention
scale, mask fill, position ids of padded batches, losses) follows `gpt2_core.reference`. Parameters are Keras
`Dense` kernels `[in, out]`, `LayerNormalization` gamma/beta and `Embedding` embeddings; `gpt2_tf.weights` maps them
to canonical names through `gpt2_core.naming` and nothing else knows their names.

The models run eagerly, inside `tf.function` (also `jit_compile=True`), under `model.compile()` + `model.fit()` and
exported as a SavedModel (`serving`). Input checks (`gpt2_core.checks`) run on concrete values when executing
eagerly; inside a graph the static shapes and dtypes are checked, and an out-of-range id gives NaN (`_embed`).

Attention has one path: with a cache it always goes through a `gpt2_tf.cache.KVCache` (per layer preallocated
(B, N, S_max, H) buffers plus the filled length). The new keys and values are written at the filled length and
attention runs over the whole buffer: `causal[t, s] = s <= length + t`, padding keys from the attention mask (which
covers (B, length + T) and is padded with ones to S_max, or covers the whole buffer (B, S_max)). transformers'
`past_key_values` tuple is converted at the edge, as `DynamicCache.from_legacy_cache` does: `KVCache.from_legacy(past,
max_length=P + T)` in, `to_legacy()` out; a KVCache passed in is returned as a KVCache.

Shapes: B batch, T query length, S key length (past + new), N heads, H head dim, C n_embd, V vocab.

References: OpenAI gpt-2 `src/model.py`; transformers `models/gpt2/modeling_gpt2.py` (v5) and
`modeling_tf_gpt2.py` (v4); nanoGPT `model.py`.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core import checks, reference  # noqa: E402
from gpt2_core.config import GPT2Config  # noqa: E402
from gpt2_core.generation_config import GenerationConfig  # noqa: E402
from gpt2_core.outputs import (  # noqa: E402
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from gpt2_tf.cache import KVCache, _static_int  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        "gpt2_tf needs Keras on the TensorFlow backend. Received: KERAS_BACKEND="
        f"{keras.backend.backend()!r}. Set KERAS_BACKEND=tensorflow before importing keras."
    )

logger = logging.getLogger(__name__)

# transformers' TF class name for the double-heads output; the fields are the same.
TFGPT2DoubleHeadsModelOutput = GPT2DoubleHeadsModelOutput


def _gelu_tanh(x: tf.Tensor) -> tf.Tensor:
    return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3.0))))


# The formulas of gpt2_core.reference.ACTIVATIONS (the old TF port used exact gelu for gelu_new: not here).
ACT2FN = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": lambda x: 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0))),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + tf.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * tf.sigmoid(1.702 * x),
    "relu": tf.nn.relu,
    "silu": lambda x: x * tf.sigmoid(x),
    "swish": lambda x: x * tf.sigmoid(x),
    "tanh": tf.tanh,
    "sigmoid": tf.sigmoid,
    "linear": lambda x: x,
}


def position_ids_from_attention_mask(
    attention_mask: tf.Tensor, query_length: Any, past_length: Any = None
) -> tf.Tensor:
    """gpt2_core.reference.position_ids_from_attention_mask: `max(0, index - leading)`, (B, T) int32.

    `leading` is each row's first attended index (S for a row of padding). The queries are the last `query_length`
    columns of the (B, S) mask, or columns `past_length .. past_length + query_length - 1` when `past_length` is
    given (a KVCache, whose mask may cover the whole buffer).
    """
    mask = tf.convert_to_tensor(attention_mask)
    S = tf.shape(mask)[-1]
    leading = tf.reduce_min(tf.where(mask != 0, tf.range(S)[None, :], S), axis=-1)  # (B,)
    start = S - query_length if past_length is None else tf.cast(past_length, tf.int32)
    # start + range(T), not a slice at `start`: the shape stays static (T,) when `start` varies in a compiled loop
    index = start + tf.range(query_length)  # (T,)
    return tf.maximum(index[None, :] - leading[:, None], 0)  # (B, T)


def last_non_pad_index(input_ids: tf.Tensor | None, pad_token_id: int | None, seq_len: Any) -> tf.Tensor | int:
    """gpt2_core.reference.last_non_pad_index: the rightmost non-padding index per row (0 for a row of padding);
    -1 (the last position) without `pad_token_id` or without `input_ids`."""
    if pad_token_id is None or input_ids is None:
        return -1
    non_pad = tf.cast(input_ids != pad_token_id, tf.int32)
    # argmax of arange * non_pad; the maximum is its own index, so reduce_max (no tie rule to depend on)
    return tf.reduce_max(tf.range(seq_len)[None, :] * non_pad, axis=-1)  # (B,)


def _dense(units: int, in_dim: int, use_bias: bool = True, dtype: Any = None) -> keras.layers.Dense:
    # zeros: the real values come from gpt2_core.reference.init_params (or a checkpoint) right after
    layer = keras.layers.Dense(units, use_bias=use_bias, kernel_initializer="zeros", dtype=dtype)
    layer.build((None, in_dim))
    return layer


def _layer_norm(config: GPT2Config, dtype: Any = None) -> keras.layers.LayerNormalization:
    layer = keras.layers.LayerNormalization(epsilon=config.layer_norm_epsilon, dtype=dtype)
    layer.build((None, config.n_embd))
    return layer


def _embedding(rows: int, config: GPT2Config, dtype: Any = None) -> keras.layers.Embedding:
    layer = keras.layers.Embedding(rows, config.n_embd, embeddings_initializer="zeros", dtype=dtype)
    layer.build()
    return layer


# Keras serialization: `model.save("m.keras")` + `keras.saving.load_model` find the classes by this name
_register = keras.saving.register_keras_serializable(package="gpt2_tf")


def _config_from(value: GPT2Config | Mapping[str, Any]) -> GPT2Config:
    # a layer's `config` entry of get_config (config.json's dict) back to a GPT2Config
    return value if isinstance(value, GPT2Config) else GPT2Config.from_dict(dict(value))


def _dropout(rate: float | None, dtype: Any = None) -> keras.layers.Dropout:
    layer = keras.layers.Dropout(float(rate or 0.0), dtype=dtype)
    layer.build(None)
    return layer


@_register
class TFGPT2Attention(keras.layers.Layer):
    """Multi-head (self or cross) attention.

    Args:
        config: The model config.
        layer_idx: Index of the block (for `scale_attn_by_inverse_layer_idx`).
        is_cross_attention: Queries from the decoder, keys and values from `encoder_hidden_states`.
    """

    def __init__(self, config: GPT2Config, layer_idx: int, is_cross_attention: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = _config_from(config)
        self.config = config
        C = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.scale = reference.attention_scale(config, layer_idx)
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        if is_cross_attention:
            self.c_attn = _dense(2 * C, C, dtype=self.dtype_policy)
            self.q_attn = _dense(C, C, dtype=self.dtype_policy)
        else:
            self.c_attn = _dense(3 * C, C, dtype=self.dtype_policy)
        self.c_proj = _dense(C, C, dtype=self.dtype_policy)
        self.attn_dropout = _dropout(config.attn_pdrop, self.dtype_policy)
        self.resid_dropout = _dropout(config.resid_pdrop, self.dtype_policy)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "config": self.config.to_dict(),
            "layer_idx": self.layer_idx,
            "is_cross_attention": self.is_cross_attention,
        }

    def _split_heads(self, x: tf.Tensor) -> tf.Tensor:
        B, T = tf.shape(x)[0], tf.shape(x)[1]
        return tf.transpose(tf.reshape(x, (B, T, self.n_head, self.head_dim)), (0, 2, 1, 3))  # (B, N, T, H)

    def call(
        self,
        x: tf.Tensor,
        cache: KVCache | None = None,
        causal: tf.Tensor | None = None,
        key_ok: tf.Tensor | None = None,
        encoder_hidden_states: tf.Tensor | None = None,
        training: bool = False,
        head_mask: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, tuple[tf.Tensor, tf.Tensor] | None, tf.Tensor]:
        B, T, C = tf.shape(x)[0], tf.shape(x)[1], x.shape[-1]
        if self.is_cross_attention:
            q = self.q_attn(x)
            k, v = tf.split(self.c_attn(encoder_hidden_states), 2, axis=2)
        else:
            q, k, v = tf.split(self.c_attn(x), 3, axis=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, N, T, H)
        present = None
        if cache is not None and not self.is_cross_attention:
            # write at the filled length, attend over the whole buffer (spare slots are hidden causally)
            present = cache.update(self.layer_idx, k, v)  # (B, N, S_max, H) each
            k, v = tf.cast(present[0], q.dtype), tf.cast(present[1], q.dtype)
        if self.reorder_and_upcast_attn:
            # Mistral: scale q before the product and keep scores and softmax in float32 (fp16/bf16 stability).
            q32, k32 = tf.cast(q, tf.float32), tf.cast(k, tf.float32)
            att = tf.matmul(q32 * self.scale, k32, transpose_b=True)  # (B, N, T, S)
        else:
            att = tf.matmul(q, k, transpose_b=True) * tf.cast(self.scale, q.dtype)  # (B, N, T, S)
        # gpt2_core.reference: padding keys -> finfo.min / 2, future keys -> finfo.min (replace, not add)
        if key_ok is not None:
            att = tf.where(key_ok, att, tf.constant(att.dtype.min / 2, att.dtype))
        if causal is not None:
            att = tf.where(causal, att, tf.constant(att.dtype.min, att.dtype))
        # softmax in float32 whatever the compute dtype (mixed_bfloat16, bfloat16), as torch and flax
        att = tf.cast(tf.nn.softmax(tf.cast(att, tf.float32), axis=-1), v.dtype)
        att = self.attn_dropout(att, training=training)
        if head_mask is not None:  # (1, N, 1, 1): transformers 4.x scales the probabilities after dropout
            att = att * tf.cast(head_mask, att.dtype)
        y = tf.matmul(att, v)  # (B, N, T, H)
        y = tf.reshape(tf.transpose(y, (0, 2, 1, 3)), (B, T, C))
        y = self.resid_dropout(self.c_proj(y), training=training)
        return y, present, att


@_register
class TFGPT2MLP(keras.layers.Layer):
    """The feed-forward block: c_fc, activation, c_proj.

    Args:
        config: The model config (`n_inner`, `activation_function`, `resid_pdrop`).
    """

    def __init__(self, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = _config_from(config)
        self.config = config
        self.c_fc = _dense(config.inner_dim, config.n_embd, dtype=self.dtype_policy)
        self.c_proj = _dense(config.n_embd, config.inner_dim, dtype=self.dtype_policy)
        self.act = ACT2FN[config.activation_function]
        self.dropout = _dropout(config.resid_pdrop, self.dtype_policy)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict()}

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), training=training)


@_register
class TFGPT2Block(keras.layers.Layer):
    """Pre-LayerNorm transformer block: attention (+ cross-attention) and MLP, each on a residual.

    Args:
        config: The model config.
        layer_idx: Index of the block.
    """

    def __init__(self, config: GPT2Config, layer_idx: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = _config_from(config)
        self.config = config
        self.layer_idx = layer_idx
        self.ln_1 = _layer_norm(config, self.dtype_policy)
        self.attn = TFGPT2Attention(config, layer_idx, dtype=self.dtype_policy)
        if config.add_cross_attention:
            self.crossattention = TFGPT2Attention(config, layer_idx, is_cross_attention=True, dtype=self.dtype_policy)
            self.ln_cross_attn = _layer_norm(config, self.dtype_policy)
        self.ln_2 = _layer_norm(config, self.dtype_policy)
        self.mlp = TFGPT2MLP(config, dtype=self.dtype_policy)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict(), "layer_idx": self.layer_idx}

    def call(
        self,
        x: tf.Tensor,
        cache: KVCache | None = None,
        causal: tf.Tensor | None = None,
        key_ok: tf.Tensor | None = None,
        encoder_hidden_states: tf.Tensor | None = None,
        encoder_key_ok: tf.Tensor | None = None,
        training: bool = False,
        head_mask: tf.Tensor | None = None,
    ) -> tuple[tf.Tensor, Any, tf.Tensor, tf.Tensor | None]:
        y, present, att = self.attn(
            self.ln_1(x), cache=cache, causal=causal, key_ok=key_ok, training=training, head_mask=head_mask
        )
        x = x + y
        cross_att = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise checks.no_cross_attention_error()
            y, _, cross_att = self.crossattention(
                self.ln_cross_attn(x),
                key_ok=encoder_key_ok,
                encoder_hidden_states=encoder_hidden_states,
                training=training,
                head_mask=head_mask,
            )
            x = x + y
        x = x + self.mlp(self.ln_2(x), training=training)
        return x, present, att, cross_att


def _embed(layer: keras.layers.Embedding, ids: tf.Tensor) -> tf.Tensor:
    """`layer(ids)` (a row per id, in the compute dtype), except that an id outside [0, rows) gives a row of NaN.

    Eager calls never get here with such an id (`_check_call` raises first). Inside a graph (a `tf.function` or
    `jit_compile` of the caller's, a `fit` step) nothing can be raised, and a plain gather would wrap a negative id
    (Keras' `take`) or clamp a large one (XLA): a finite, plausible answer. NaN spreads to every output instead.
    """
    table = layer.embeddings
    ids = tf.convert_to_tensor(ids)
    ok = (ids >= 0) & (ids < tf.cast(table.shape[0], ids.dtype))
    x = tf.cast(tf.gather(table, tf.where(ok, ids, tf.zeros_like(ids))), layer.compute_dtype)  # (..., C)
    return tf.where(ok[..., None], x, tf.constant(float("nan"), x.dtype))


def _head_mask_shape_error(config: GPT2Config, shape: tuple) -> ValueError:
    N, L = config.n_head, config.n_layer
    return ValueError(
        f"head_mask must have shape (n_head,) or (n_layer, n_head) = ({N},) or ({L}, {N}). "
        f"Received: head_mask.shape={shape}. Pass one value per head (1.0 keeps it, 0.0 masks it)."
    )


def _layer_head_masks(head_mask: Any, config: GPT2Config) -> list[Any]:
    """transformers 4.x `get_head_mask`: `(N,)` for every layer or `(n_layer, N)` -> per layer `(1, N, 1, 1)`."""
    if head_mask is None:
        return [None] * config.n_layer
    head_mask = tf.convert_to_tensor(head_mask)
    L, N = config.n_layer, config.n_head
    shape = tuple(head_mask.shape)
    if shape == (N,):
        head_mask = tf.broadcast_to(head_mask[None], (L, N))
    elif shape != (L, N):
        raise _head_mask_shape_error(config, shape)
    head_mask = head_mask[:, None, :, None, None]  # (L, 1, N, 1, 1)
    return [head_mask[i] for i in range(L)]


def _seed_generators(layer: keras.layers.Layer) -> list[Any]:
    """The SeedGenerators of the dropout layers under `layer` (a Dropout of rate 0 has none)."""
    found = []
    for sub in layer._flatten_layers(include_self=True):
        generator = getattr(sub, "seed_generator", None) if isinstance(sub, keras.layers.Dropout) else None
        if generator is not None:
            found.append(generator)
    return found


def _recomputed(block: TFGPT2Block, x: tf.Tensor, training: Any = False, **kwargs: Any) -> tuple:
    """`block(x, **kwargs)` under `tf.recompute_grad`: its activations are recomputed in the backward pass instead
    of kept. Keras' dropout advances a seed variable on every call, so the recompute would draw other masks (other
    gradients): the seeds are read before the forward and put back before the recompute, so both draw the same."""
    generators = _seed_generators(block) if training else []
    seeds = [tf.identity(g.state.value) for g in generators]
    has_cross = kwargs.get("encoder_hidden_states") is not None

    @tf.recompute_grad
    def run(x: tf.Tensor) -> tuple:
        for generator, seed in zip(generators, seeds):
            generator.state.assign(seed)
        y, _, att, cross_att = block(x, cache=None, training=training, **kwargs)
        return (y, att, cross_att) if has_cross else (y, att)

    outs = run(x)
    return outs[0], None, outs[1], outs[2] if has_cross else None


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


# ---------------------------------------------------------------------------------------------------------------
# Shared model machinery
# ---------------------------------------------------------------------------------------------------------------


def _shape(t: Any) -> tuple | None:
    if t is None:
        return None
    return tuple(t.shape) if tf.is_tensor(t) else np.shape(t)


def _min_max(t: Any) -> np.ndarray | None:
    # Two numbers are enough for the range checks; None when the values are symbolic (inside a graph).
    if t is None or (tf.is_tensor(t) and not (tf.executing_eagerly() and hasattr(t, "numpy"))):
        return None
    if not tf.is_tensor(t):
        t = np.asarray(t)
        return t.reshape(0).astype(np.int64) if t.size == 0 else np.array([t.min(), t.max()], np.int64)
    if int(tf.size(t)) == 0:
        return np.zeros((0,), dtype=np.int64)
    return np.array([int(tf.reduce_min(t)), int(tf.reduce_max(t))])


def _np_dtype(t: Any) -> np.dtype:
    if tf.is_tensor(t) or isinstance(t, tf.Variable):
        return np.dtype(t.dtype.as_numpy_dtype)
    return np.asarray(t).dtype


def _fold(shape: tuple | None, rank: int) -> tuple | None:
    # leading dims beyond batch (the multiple-choice head's choices) fold into the batch, as the body does
    if shape is None or len(shape) <= rank or None in shape:
        return shape
    return (int(np.prod(shape[: len(shape) - rank + 1])), *shape[len(shape) - rank + 1 :])


@functools.lru_cache(maxsize=None)
def _call_signature(cls: type) -> inspect.Signature:
    return inspect.signature(cls.call)


def _check_call(model: "TFGPT2PreTrainedModel", arguments: Mapping[str, Any]) -> None:
    """gpt2_core.checks on a call's inputs, before Keras runs `call` (Keras rewraps errors raised inside it).

    Shapes are checked when static, values (token and position id ranges) when concrete (eager); inside a graph
    traced with unknown dims (a serving signature) there is nothing static to check.
    """
    config = model.config
    input_ids, inputs_embeds = arguments.get("input_ids"), arguments.get("inputs_embeds")
    past_key_values = arguments.get("past_key_values")
    preallocated = isinstance(past_key_values, KVCache)
    layer_shapes = [(_shape(k), _shape(v)) for k, v in past_key_values] if past_key_values is not None else []
    shapes = {
        "input": _fold(_shape(input_ids), 2),
        "embeds": _fold(_shape(inputs_embeds), 3),
        "mask": _fold(_shape(arguments.get("attention_mask")), 2),
        "position": _fold(_shape(arguments.get("position_ids")), 2),
        "token_type": _fold(_shape(arguments.get("token_type_ids")), 2),
        **{f"past_{i}": shape for i, pair in enumerate(layer_shapes) for shape in pair},
    }
    if arguments.get("encoder_hidden_states") is not None and not config.add_cross_attention:
        raise checks.no_cross_attention_error()
    # dtypes are static: refused in a graph too (a float id would be truncated by the gather, 1.7 -> 1)
    for name in ("input_ids", "token_type_ids", "position_ids"):
        if arguments.get(name) is not None:
            checks.check_integer_ids(_np_dtype(arguments[name]), name)
    head_mask = arguments.get("head_mask")
    if head_mask is not None and _shape(head_mask) not in ((config.n_head,), (config.n_layer, config.n_head)):
        raise _head_mask_shape_error(config, _shape(head_mask))
    token_type_ids = arguments.get("token_type_ids")
    checks.check_index_range(_min_max(token_type_ids), config.vocab_size, "token_type_ids", "vocab_size")
    _check_labels(model, arguments)
    if any(shape is not None and None in shape for shape in shapes.values()):
        return
    first = shapes["input"] if shapes["input"] is not None else shapes["embeds"]
    B = first[0] if first else None
    T = first[1] if first is not None and len(first) >= 2 else None
    P, cache_max_length = 0, None
    if past_key_values is not None and B is not None and T is not None:
        # every layer, key and value (gpt2_core.checks.check_cache); a KVCache's length only when concrete
        length = _static_int(past_key_values.length) if preallocated else None
        P = checks.check_cache(config, layer_shapes, B, T, length=length, preallocated=preallocated)
        cache_max_length = layer_shapes[0][0][2] if preallocated else None
    checks.check_model_inputs(
        config,
        input_ids=_min_max(input_ids),
        input_shape=shapes["input"],
        inputs_embeds_shape=shapes["embeds"],
        attention_mask_shape=shapes["mask"],
        position_ids=_min_max(arguments.get("position_ids")),
        position_ids_shape=shapes["position"],
        token_type_ids_shape=shapes["token_type"],
        past_length=P,
        cache_max_length=cache_max_length,
    )
    if model.head == "seqcls" and B is not None:
        checks.check_sequence_classification_batch(config, B)


def _host(t: Any) -> np.ndarray | None:
    # the values as NumPy when known (eager), None when symbolic
    if t is None or (tf.is_tensor(t) and not (tf.executing_eagerly() and hasattr(t, "numpy"))):
        return None
    return t.numpy() if tf.is_tensor(t) else np.asarray(t)


def _check_labels(model: "TFGPT2PreTrainedModel", arguments: Mapping[str, Any]) -> None:
    """gpt2_core.checks on the heads' labels and index inputs, eagerly (as gpt2_flax; torch raises on them too)."""
    config, head = model.config, model.head
    labels = _host(arguments.get("labels"))
    if labels is not None and head in ("lm", "double"):
        checks.check_labels(labels[..., 1:], config.vocab_size, "labels", reference.IGNORE_INDEX)
    elif labels is not None and head == "tokcls":
        checks.check_labels(labels, config.num_labels, "labels", reference.IGNORE_INDEX)
    elif labels is not None and head == "seqcls":
        kind = reference.problem_type(config, np.zeros((), np.int64 if labels.dtype.kind in "iu" else np.float32))
        if kind == "single_label_classification":
            checks.check_labels(labels, config.num_labels, "labels", reference.IGNORE_INDEX)
    if head != "double":
        return
    ids = arguments.get("input_ids")
    ids = ids if ids is not None else arguments.get("inputs_embeds")
    shape = _shape(ids)
    rank = 2 if arguments.get("input_ids") is not None else 3
    if shape is None or len(shape) <= rank - 1 or None in shape:
        return
    choices, T = (shape[1] if len(shape) > rank else 1), shape[len(shape) - rank + 1]
    checks.check_index_range(_host(arguments.get("mc_token_ids")), T, "mc_token_ids", "sequence length")
    checks.check_labels(_host(arguments.get("mc_labels")), choices, "mc_labels", reference.IGNORE_INDEX)


def _as_tensor(value: Any) -> Any:
    if value is None or isinstance(value, (tf.Tensor, tf.Variable, KVCache)) or tf.is_tensor(value):
        return value
    if isinstance(value, (tuple, list)):
        return type(value)(_as_tensor(v) for v in value)
    return tf.convert_to_tensor(value)


def _returned(output: Any, return_dict: bool | None) -> Any:
    """transformers' `return_dict`: the output (None or True), or its `to_tuple()` (False: the fields that are set)."""
    return output if return_dict is not False else output.to_tuple()


# transformers 4.x's argument order of each class's `call`, which its TF models also took as one list or tuple:
# `model([input_ids, past_key_values, attention_mask])` (4.x TF GPT-2; QA and token classification, which 4.x had
# only in PyTorch, take that forward's order).
_BODY_ORDER = ("input_ids", "past_key_values", "attention_mask", "token_type_ids", "position_ids", "head_mask",
               "inputs_embeds")
_OUTPUT_FLAGS = ("use_cache", "output_attentions", "output_hidden_states", "return_dict")
_INPUT_ORDER = {
    "base": (*_BODY_ORDER, "encoder_hidden_states", "encoder_attention_mask", *_OUTPUT_FLAGS),
    "lm": (*_BODY_ORDER, "encoder_hidden_states", "encoder_attention_mask", *_OUTPUT_FLAGS, "labels"),
    "double": (*_BODY_ORDER, "mc_token_ids", *_OUTPUT_FLAGS, "labels", "mc_labels"),
    "seqcls": (*_BODY_ORDER, *_OUTPUT_FLAGS, "labels"),
    "tokcls": (*_BODY_ORDER, "labels", *_OUTPUT_FLAGS),
    "qa": ("input_ids", "attention_mask", "token_type_ids", "position_ids", "head_mask", "inputs_embeds",
           "start_positions", "end_positions", "output_attentions", "output_hidden_states", "return_dict"),
}
# transformers 4.x TF `train_step`: the output field each label is compared with by a compiled Keras loss or metric
_LABEL_TO_OUTPUT = {"labels": "logits", "mc_labels": "mc_logits", "start_positions": "start_logits",
                    "end_positions": "end_logits"}


def _is_array(value: Any) -> bool:
    return tf.is_tensor(value) or isinstance(value, (np.ndarray, KVCache, tf.RaggedTensor))


def _is_input_list(value: Any) -> bool:
    """A list / tuple of inputs (4.x style: arrays, None, a past_key_values tuple of (k, v) arrays), not token ids
    written as nested Python lists."""

    def is_past(v: Any) -> bool:
        return isinstance(v, (list, tuple)) and bool(v) and isinstance(v[0], (list, tuple)) and bool(v[0]) and _is_array(v[0][0])

    return isinstance(value, (list, tuple)) and any(v is None or _is_array(v) or is_past(v) for v in value)


def _match_outputs(y: Any, y_pred: Any) -> tuple[Any, Any]:
    """transformers 4.x TF `train_step`: (labels, the output tensors they go with) for a compiled Keras loss or
    metric. A dict of labels is matched by name (`labels` -> `logits`, `start_positions` -> `start_logits`, ...),
    a tuple by order after the losses, a single tensor with the first output that is not a loss."""
    if y is None or y_pred is None or tf.is_tensor(y_pred) or not hasattr(y_pred, "items"):
        return y, y_pred
    fields = {
        k: v for k, v in y_pred.items() if not k.endswith("loss") and k != "past_key_values" and tf.is_tensor(v)
    }
    if isinstance(y, Mapping):
        y = {_LABEL_TO_OUTPUT.get(k, k): v for k, v in y.items()}
        if len(y) == 1:
            (key, value), = y.items()
            return value, fields.get(key, next(iter(fields.values())))
        return {k: v for k, v in y.items() if k in fields}, {k: fields[k] for k in y if k in fields}
    if isinstance(y, (list, tuple)):
        return tuple(y), tuple(fields.values())[: len(y)]
    return y, next(iter(fields.values()))


def _keras_dtype(value: Any) -> Any:
    """`dtype` / `torch_dtype` of from_pretrained as Keras takes it: a dtype policy or a name; `torch.float16`,
    `tf.float16`, `np.float16` and `"torch.float16"` all read as `"float16"`."""
    if value is None or isinstance(value, keras.dtype_policies.DTypePolicy):
        return value
    if isinstance(value, str):
        return value.removeprefix("torch.")
    if isinstance(value, type) and issubclass(value, np.generic):
        return np.dtype(value).name
    name = getattr(value, "name", None)  # tf.DType, np.dtype
    return name if isinstance(name, str) else str(value).removeprefix("torch.")


@_register
class TFGPT2PreTrainedModel(keras.Model):
    """Shared loading, saving, initialisation and Keras training hooks of every GPT-2 class.

    Args:
        config: The model config.
        dtype: Keras dtype (policy) of the parameters and computation; float32 by default.
    """

    head: str = "base"

    def __init__(self, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a gpt2_core.GPT2Config. Received: type={type(config).__name__}.")
        self.config = config
        self.generation_config = GenerationConfig.from_model_config(config)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # transformers 4.x TF style: `model([input_ids, past_key_values, attention_mask, ...])`
        if args and _is_input_list(args[0]):
            args = (self._inputs_from_list(args[0]), *args[1:])
        # Keras style: `model({"input_ids": ..., "labels": ...})`, which is what `fit(x=dict)` passes.
        if args and isinstance(args[0], Mapping):
            inputs, args = dict(args[0]), args[1:]
            clash = sorted(set(inputs) & set(kwargs))
            if clash or args:
                raise TypeError(
                    "Pass inputs either in one dict or as arguments, not both. "
                    f"Received: keys {sorted(inputs)}, keyword arguments {sorted(kwargs)}, {len(args)} more positional."
                )
            kwargs.update(inputs)
        _check_call(self, _call_signature(type(self)).bind_partial(None, *args, **kwargs).arguments)
        return super().__call__(*args, **kwargs)

    def _inputs_from_list(self, values: list | tuple) -> dict[str, Any]:
        """A 4.x input list (`_INPUT_ORDER`: transformers 4.x's argument order of this class) -> keyword inputs."""
        order = _INPUT_ORDER[self.head]
        if len(values) > len(order):
            raise ValueError(
                f"Too many inputs in the list for {type(self).__name__}. Received: {len(values)} inputs. Pass at most "
                f"{len(order)}, in transformers 4.x's order {order}, or pass a dict."
            )
        return {name: value for name, value in zip(order, values) if value is not None}

    # -- parameters through gpt2_core.naming ------------------------------------------------------------------
    def init_weights(self, seed: int | None = None) -> None:
        """Initialise as transformers does (gpt2_core.reference.init_params). The seed comes from NumPy's global
        RNG when not given, so `keras.utils.set_random_seed` makes it reproducible."""
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        from gpt2_tf.weights import load_canonical

        load_canonical(self, reference.init_params(self.config, self.head, seed))

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as a canonical dict (gpt2_core.naming names and layouts), NumPy."""
        from gpt2_tf.weights import canonical_state_dict

        return canonical_state_dict(self)

    def load_canonical(self, canonical: Mapping[str, np.ndarray]) -> None:
        from gpt2_tf.weights import load_canonical

        load_canonical(self, canonical)

    @classmethod
    def from_config(cls, config: GPT2Config | Mapping[str, Any], seed: int | None = None, custom_objects: Any = None):
        """A new model of `config`: a GPT2Config, a dict of config.json's content, or the dict `get_config`
        returns (Keras deserialisation: `keras.saving.load_model`, which then loads the weights into it)."""
        if not isinstance(config, Mapping) or "config" not in config:
            return cls(config if isinstance(config, GPT2Config) else GPT2Config.from_dict(dict(config)), seed=seed)
        config = dict(config)
        kwargs = {k: config[k] for k in ("name", "trainable", "dtype") if k in config}
        if isinstance(kwargs.get("dtype"), Mapping):
            kwargs["dtype"] = keras.dtype_policies.deserialize(kwargs["dtype"])
        model = cls(GPT2Config.from_dict(dict(config["config"])), seed=seed, **kwargs)
        if config.get("generation_config") is not None:
            model.generation_config = GenerationConfig.from_dict(dict(config["generation_config"]))
        return model

    def get_config(self) -> dict[str, Any]:
        """Keras serialization (`model.save("m.keras")`): the model config (config.json's dict), the generation
        config, name, trainable and dtype policy; `from_config` rebuilds the model from it."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.dtype_policies.serialize(self.dtype_policy),
            "config": self.config.to_dict(),
            "generation_config": self.generation_config.to_dict(),
        }

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: GPT2Config | None = None,
        dtype: Any = None,
        quantize: str | None = None,
        **kwargs: Any,
    ) -> "TFGPT2PreTrainedModel | tuple[TFGPT2PreTrainedModel, dict[str, list]]":
        """Load `config.json` + weights (`model.safetensors`, sharded or not, `pytorch_model.bin`, or a transformers
        4.x `tf_model.h5` / `flax_model.msgpack`) from a local directory or a Hub id. Heads missing from the
        checkpoint (a base checkpoint loaded into a classifier) are initialised and logged, as transformers does.

        Args:
            pretrained_model_name_or_path: Local directory or Hub id (e.g. `openai-community/gpt2`).
            config: Use this config instead of the checkpoint's `config.json` (a GPT2Config, a transformers
                `GPT2Config`, a dict or a path).
            dtype: Keras dtype of the model (`"float32"`, `"bfloat16"`, `"mixed_bfloat16"`, a policy, `tf.float16`...);
                `"auto"`: the checkpoint's dtype; float32 by default. `torch_dtype=` (its old name) works too.
            quantize: None only: `"int8"` is a ValueError (XLA CPU has no fast weight-only int8 path; measured in
                docs/performance.md; int8 inference is gpt2_torch's). An int8 checkpoint loads dequantized to
                float32 (`weights_convert.quantized`, logged).
            **kwargs: What `weights_convert.pretrained.load_pretrained` takes, as in transformers: the Hub keyword
                arguments (`revision`, `cache_dir`, `token`, `local_files_only`, `force_download`, `subfolder`),
                config overrides (`num_labels=3`, `pad_token_id=...`), `output_loading_info`,
                `ignore_mismatched_sizes`, `from_pt` (a no-op) and the rest of `LOAD_KWARGS`.

        Returns:
            The model; `(model, loading_info)` with `output_loading_info=True` (transformers' contract).
        """
        from weights_convert.pretrained import load_pretrained
        from weights_convert.quantized import refuse_quantize

        refuse_quantize(quantize, cls.__name__)  # no int8 path in XLA CPU: measured, docs/performance.md

        loaded = load_pretrained(
            pretrained_model_name_or_path,
            cls.head,
            config=config,
            owner=cls.__name__,
            init_seed=lambda: int(np.random.randint(0, 2**31 - 1)),
            dtype=dtype,
            **kwargs,
        )
        # `loaded.dtype` is dtype or torch_dtype, "auto" already resolved to the checkpoint's
        dtype = _keras_dtype(loaded.resolve_dtype(dtype if dtype is not None else loaded.dtype))
        with reference.skip_init():
            model = cls(loaded.config, dtype=dtype)
        model.load_canonical(loaded.canonical)
        if loaded.generation_config is not None:
            model.generation_config = loaded.generation_config
        if loaded.output_loading_info:
            return model, loaded.loading_info
        return model

    def save_pretrained(self, save_directory: str | os.PathLike, *, max_shard_size: int | str | None = None) -> None:
        """Write `config.json` + `model.safetensors` (sharded above `max_shard_size`) that transformers loads
        (`weights_convert.pretrained.save_pretrained`)."""
        from weights_convert.pretrained import save_pretrained

        save_pretrained(
            save_directory, self.config, self.canonical_state_dict(), self.head, max_shard_size=max_shard_size,
            generation_config=self.generation_config,
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload `save_pretrained`'s files to the Hub repo `repo_id` (created if missing), transformers'
        `push_to_hub`: `commit_message`, `commit_description`, `private`, `token`, `revision`, `create_pr`,
        `max_shard_size` (`weights_convert.push.push_to_hub`). Returns huggingface_hub's `CommitInfo`."""
        from weights_convert.push import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (the tied LM head is `wte` itself, counted once), transformers' `num_parameters`.

        Args:
            only_trainable: Count only trainable variables (`layer.trainable = False` freezes a layer's).
            exclude_embeddings: Leave out the `Embedding` matrices (`wte`, `wpe`; a tied LM head with them).
        """
        from gpt2_tf.weights import named_variables

        embeddings = {id(v) for layer in (self._body().wte, self._body().wpe) for v in layer.weights}
        trainable = {id(v) for v in self.trainable_variables}
        return int(
            sum(
                np.prod(v.shape)
                for v in named_variables(self).values()
                if not (exclude_embeddings and id(v) in embeddings) and (id(v) in trainable or not only_trainable)
            )
        )

    # -- transformers' model attributes, embedding accessors and resizing -------------------------------------
    main_input_name = "input_ids"
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True

    @classmethod
    def can_generate(cls) -> bool:
        """Whether `generate` works on this class (the LM head model)."""
        return False

    def _body(self) -> "TFGPT2Model":
        # The TFGPT2Model body (the model itself for TFGPT2Model). Not transformers' `base_model` property: Keras'
        # saving walks every attribute, and one that returns the model itself recurses.
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> keras.layers.Embedding:
        return self._body().wte

    def set_input_embeddings(self, value: keras.layers.Embedding) -> None:
        """Replace the token embedding by a built `keras.layers.Embedding` of `n_embd` columns; `config.vocab_size`
        follows its rows (and so does a tied LM head, which is `wte`'s matrix)."""
        if not isinstance(value, keras.layers.Embedding) or value.embeddings.shape[1] != self.config.n_embd:
            shape = tuple(value.embeddings.shape) if isinstance(value, keras.layers.Embedding) else None
            raise ValueError(
                f"The input embedding must be a built keras.layers.Embedding with n_embd={self.config.n_embd} "
                f"columns. Received: {type(value).__name__} of shape {shape}. Build one with "
                f"keras.layers.Embedding(rows, {self.config.n_embd}) and call .build()."
            )
        body = self._body()
        _replace_layer(body, "wte", value)
        self.config.vocab_size = int(value.embeddings.shape[0])
        self._forget_compiled()

    def get_output_embeddings(self) -> keras.layers.Layer | None:
        """The LM head: its `Dense` when untied, the token `Embedding` when tied (transformers 4.x TF returns the
        input embeddings then: the head is that matrix); None for models without an LM head."""
        if not hasattr(self, "lm_head"):
            return None
        return self.lm_head if self.lm_head is not None else self.get_input_embeddings()

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> keras.layers.Embedding:
        """Grow or shrink the token embedding (and an untied LM head) to `new_num_tokens` rows: transformers'
        `resize_token_embeddings` and gpt2_torch's, rule for rule (the draws differ: NumPy's RNG, seeded by
        `keras.utils.set_random_seed`).

        Rows are kept or dropped at the end. New rows are drawn from a normal with the old rows' mean and `1e-9`
        times their covariance (`mean_resizing=True`, transformers' default; exactly the mean when that covariance
        is not positive definite, e.g. fewer rows than `n_embd`), or from `normal(0, initializer_range)`. A tied
        head follows (it is `wte`'s matrix), `config.vocab_size` is updated. Keras variables cannot change shape,
        so the layer is replaced by a new one: `compile()` again before `fit` (the optimizer tracked the old one).

        Args:
            new_num_tokens: Rows wanted, e.g. `len(tokenizer)` after `add_special_tokens`; None keeps the size.
            pad_to_multiple_of: Round the row count up to a multiple of this.
            mean_resizing: The mean/covariance rule above (True) or the plain normal init (False).

        Returns:
            The input embedding layer.
        """
        new_num_tokens = checks.resize_row_count(new_num_tokens, pad_to_multiple_of, int(self.get_input_embeddings().embeddings.shape[0]))
        if new_num_tokens is None:
            return self.get_input_embeddings()
        std = self.config.initializer_range
        rng = np.random.default_rng(int(np.random.randint(0, 2**31 - 1)))
        wte = self.get_input_embeddings()
        if int(wte.embeddings.shape[0]) != new_num_tokens:
            rows = _resized_rows(np.asarray(wte.embeddings.numpy()), new_num_tokens, mean_resizing, std, rng)
            new_wte = _embedding(new_num_tokens, self.config, wte.dtype_policy)
            new_wte.embeddings.assign(rows)
            new_wte.trainable = wte.trainable
            _replace_layer(self._body(), "wte", new_wte)
        head = getattr(self, "lm_head", None)
        if head is not None and int(head.kernel.shape[1]) != new_num_tokens:  # an untied head: kernel (C, V)
            rows = _resized_rows(np.asarray(head.kernel.numpy()).T, new_num_tokens, mean_resizing, std, rng)
            new_head = _dense(new_num_tokens, self.config.n_embd, False, head.dtype_policy)
            new_head.kernel.assign(rows.T)
            new_head.trainable = head.trainable
            _replace_layer(self, "lm_head", new_head)
        self.config.vocab_size = new_num_tokens
        self._forget_compiled()
        return self.get_input_embeddings()

    def _forget_compiled(self) -> None:
        # traced functions read the variables they saw: after a layer swap they must be traced again
        from gpt2_tf import generation

        generation._COMPILED.pop(self, None)
        for name in ("train_function", "test_function", "predict_function"):
            if getattr(self, name, None) is not None:
                setattr(self, name, None)

    # -- gradient (activation) checkpointing ------------------------------------------------------------------
    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, every_n_layers: int = 1
    ) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (`tf.recompute_grad`
        per `TFGPT2Block`, with `training=True`, without a cache), transformers' `gradient_checkpointing_enable`:
        same loss and gradients (the same dropout masks), less memory, one more forward per block.

        Args:
            gradient_checkpointing_kwargs: transformers' argument (torch.utils.checkpoint options); `tf.recompute_grad`
                takes none, so it must be empty or None.
            every_n_layers: Checkpoint only every n-th block (blocks 0, n, 2n, ...).
        """
        if gradient_checkpointing_kwargs:
            raise ValueError(
                "tf.recompute_grad takes no options. Received: gradient_checkpointing_kwargs="
                f"{gradient_checkpointing_kwargs!r}. Pass None (use_reentrant and the like are torch's)."
            )
        if not _positive_int(every_n_layers):
            raise ValueError(
                f"every_n_layers must be a positive integer. Received: every_n_layers={every_n_layers!r}. "
                "Use 1 to checkpoint every block."
            )
        self._body().gradient_checkpointing = True
        self._body()._checkpoint_every = every_n_layers
        self._forget_compiled()

    def gradient_checkpointing_disable(self) -> None:
        self._body().gradient_checkpointing = False
        self._forget_compiled()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self._body().gradient_checkpointing)

    # -- Keras training: the model's own loss ------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss `fit` minimises: the loss the model computed from the labels in `x` (`model.compile(optimizer)`
        with no loss). With `compile(loss=...)`, that loss on `y` and the matching output (`_match_outputs`: the
        logits for `y` or `{"labels": ...}`). For the LM heads, `y` alone (`fit(x=ids, y=ids)`) also works: it is
        taken as `labels`."""
        if self._compile_loss is not None:
            y, y_pred = _match_outputs(y, y_pred)
            return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        loss = getattr(y_pred, "loss", None)
        if loss is None and y is not None and not isinstance(y, Mapping) and self.head in ("lm", "double"):
            loss = lm_loss(y_pred.logits, y)
        if loss is None:
            raise ValueError(
                "No loss to train on: the inputs hold no labels and compile() got no loss. Received: x keys "
                f"{sorted(x) if isinstance(x, Mapping) else type(x).__name__}, y={'None' if y is None else 'given'}. "
                "Pass labels (fit(x={'input_ids': ..., 'labels': ...})) or compile(loss=...)."
            )
        return loss + tf.add_n(self.losses) if self.losses else loss

    def _label_names(self) -> list[str]:
        parameters = _call_signature(type(self)).parameters
        return [k for k in _LABEL_TO_OUTPUT if k in parameters]

    def _fit_inputs(self, x: Any, y: Any) -> tuple[Any, Any]:
        """transformers 4.x TF `train_step`'s rules. With no compiled loss (the model's own loss), labels given as
        `y` go into the inputs: a dict's keys by name (`labels`, `mc_labels`, `start_positions`, ... or the output
        names `logits` ...), a single tensor as the one label argument the class has. Labels inside `x` and no `y`:
        those labels are also `y`, for the compiled metrics."""
        if _is_input_list(x):
            x = self._inputs_from_list(x)
        names = self._label_names()
        if self._compile_loss is None and y is not None:
            x = dict(x) if isinstance(x, Mapping) else {"input_ids": x}
            parameters = _call_signature(type(self)).parameters
            if isinstance(y, Mapping):
                output_to_label = {v: k for k, v in _LABEL_TO_OUTPUT.items()}
                for key, value in y.items():
                    name = key if key in parameters else output_to_label.get(key)
                    if name in parameters and name not in x:
                        x[name] = value
            elif len(names) == 1 and names[0] not in x:
                x[names[0]] = y
        if y is None and isinstance(x, Mapping):
            y = {k: x[k] for k in names if k in x} or None
        return x, y

    def train_step(self, data: Any) -> dict[str, Any]:
        """Keras' train step on the inputs `_fit_inputs` makes (transformers 4.x's conventions)."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self._fit_inputs(x, y)
        return super().train_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def test_step(self, data: Any) -> dict[str, Any]:
        """Keras' test step (`evaluate`, `validation_data`) on the inputs `_fit_inputs` makes."""
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        x, y = self._fit_inputs(x, y)
        return super().test_step(keras.utils.pack_x_y_sample_weight(x, y, sample_weight))

    def compute_metrics(self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None) -> dict[str, Any]:
        """Compiled Keras metrics compare the labels with the matching output tensors (`_match_outputs`:
        `labels` with `logits`, ...), not with the output object."""
        y, y_pred = _match_outputs(y, y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def predict_step(self, data: Any) -> dict[str, tf.Tensor]:
        """`model.predict`: the output's tensors (not the cache) as a dict, which Keras concatenates over batches."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        as_inputs = isinstance(x, Mapping) or _is_input_list(x)
        out = self(x, training=False) if as_inputs else self(input_ids=x, training=False)
        return {k: v for k, v in out.items() if k != "past_key_values" and tf.is_tensor(v)}

    # -- SavedModel ---------------------------------------------------------------------------------------------
    @tf.function(
        input_signature=[
            {
                "input_ids": tf.TensorSpec((None, None), tf.int32, name="input_ids"),
                "attention_mask": tf.TensorSpec((None, None), tf.int32, name="attention_mask"),
            }
        ]
    )
    def serving(self, inputs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        """Serving signature: `tf.saved_model.save(model, path, signatures=model.serving)`, and `model.export`'s
        `serve` endpoint."""
        kwargs = dict(inputs)
        if self.head == "double":  # (B, T) -> one choice each
            kwargs = {k: v[:, None, :] for k, v in kwargs.items()}
        out = self(**kwargs, use_cache=False, training=False)
        return {k: v for k, v in out.items() if tf.is_tensor(v)}

    def export(
        self,
        filepath: str | os.PathLike,
        format: str = "tf_saved_model",
        verbose: bool | None = None,
        input_signature: Any = None,
        **kwargs: Any,
    ) -> None:
        """Keras 3's `export`. As a SavedModel with no `input_signature`, its `serve` endpoint is `serving`
        (transformers 4.x's signature: `{"input_ids", "attention_mask"}` int32 (B, T) in, the output's tensors out),
        so no call is needed first: `tf.saved_model.load(path).serve({"input_ids": ids, "attention_mask": mask})`.
        Otherwise (another format, a signature of your own) Keras exports `model.__call__`."""
        if format != "tf_saved_model" or input_signature is not None or kwargs:
            return super().export(filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs)
        archive = keras.export.ExportArchive()
        archive.track(self)
        archive.add_endpoint("serve", self.serving)
        archive.write_out(os.fspath(filepath), verbose=True if verbose is None else verbose)


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _replace_layer(owner: keras.layers.Layer, name: str, layer: keras.layers.Layer) -> None:
    # Keras tracks a layer set as an attribute: untrack the old one, or its variables stay in `weights`, and put
    # the new one at the old one's place in the tracked list (the order names the layers in a .keras file and
    # orders `trainable_variables`, so a model built from the config must see the same order)
    old = getattr(owner, name)
    tracked = owner._layers
    index = next((i for i, item in enumerate(tracked) if item is old), len(tracked))
    owner._tracker.untrack(old)
    delattr(owner, name)
    setattr(owner, name, layer)
    position = next((i for i, item in enumerate(tracked) if item is layer), None)
    if position is not None:
        tracked.insert(index, tracked.pop(position))


def _resized_rows(
    old: np.ndarray, n: int, mean_resizing: bool, std: float, rng: np.random.Generator
) -> np.ndarray:
    """The resized (n, C) matrix of transformers' `_get_resized_embeddings` / gpt2_torch's: the first
    `min(old, n)` rows kept; new rows ~ N(mean, 1e-9 * covariance) of the old rows, or exactly the mean where that
    covariance is not positive definite (`_init_added_embeddings_weights_with_mean`,
    https://nlp.stanford.edu/~johnhew/vocab-expansion.html), or ~ N(0, std) without `mean_resizing`."""
    old_n, C = old.shape
    new = np.empty((n, C), np.float32)
    added = n - old_n
    if added > 0 and not mean_resizing:
        new[old_n:] = rng.normal(0.0, std, (added, C))
    elif added > 0:
        w = old.astype(np.float32)
        mean = w.mean(axis=0)
        centered = w - mean
        covariance = 1e-9 * (centered.T @ centered / old_n)  # (C, C)
        try:
            # torch's positive_definite check is a Cholesky factorisation too
            factor = np.linalg.cholesky(covariance.astype(np.float64))
            new[old_n:] = mean + rng.standard_normal((added, C)) @ factor.T
        except np.linalg.LinAlgError:
            new[old_n:] = mean[None, :]
    k = min(old_n, n)
    new[:k] = old[:k]
    return new.astype(old.dtype, copy=False)


def _finish_init(model: TFGPT2PreTrainedModel, seed: int | None) -> None:
    """Mark the model built and draw its initial weights, unless built inside `reference.skip_init()` (the one
    skip-init rule of every backend: a task model's body, `from_pretrained`)."""
    model.built = True
    if not reference.init_skipped():
        model.init_weights(seed)


@_register
class TFGPT2Model(TFGPT2PreTrainedModel):
    """The bare GPT-2 transformer: embeddings, blocks, final LayerNorm.

    Args:
        config: The model config.
        seed: Initialise the weights from `gpt2_core.reference.init_params` with this seed; None draws one from
            NumPy's RNG. Nothing is drawn inside `gpt2_core.reference.skip_init()` (a task model's body, whose
            weights come from the task model; `from_pretrained`).
    """

    head = "base"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.wte = _embedding(config.vocab_size, config, self.dtype_policy)
        self.wpe = _embedding(config.n_positions, config, self.dtype_policy)
        self.drop = _dropout(config.embd_pdrop, self.dtype_policy)
        self.h = [TFGPT2Block(config, i, dtype=self.dtype_policy) for i in range(config.n_layer)]
        self.ln_f = _layer_norm(config, self.dtype_policy)
        self.gradient_checkpointing = False  # gradient_checkpointing_enable sets it
        self._checkpoint_every = 1
        self.built = True
        _finish_init(self, seed)

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        encoder_hidden_states: tf.Tensor | None = None,
        encoder_attention_mask: tf.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """Forward pass, transformers' arguments.

        `past_key_values` is transformers' tuple of per-layer (k, v) (B, N, P, H), returned as such, or a
        `gpt2_tf.cache.KVCache`, returned as the next KVCache (also with `use_cache=False`); with a KVCache the
        attention mask covers (B, length + T) or the whole buffer (B, S_max). `return_dict=False` returns
        `to_tuple()` of the output. `output_attentions` / `output_hidden_states` left at None follow the config.
        `head_mask` (transformers 4.x): `(n_head,)` for every layer or `(n_layer, n_head)`, multiplies each head's
        attention probabilities after dropout. With `gradient_checkpointing_enable()` and `training=True` each
        block is recomputed in the backward pass (`tf.recompute_grad`) and `use_cache` is off.
        """
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        checkpointing = self.gradient_checkpointing and bool(training)
        if checkpointing and use_cache and past_key_values is None:
            # transformers' rule: a cache built in a recomputed forward would be written twice
            _warn_once("use_cache=True is incompatible with gradient checkpointing. Setting use_cache=False.")
            use_cache = False
        input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds = (
            _as_tensor(t) for t in (input_ids, attention_mask, token_type_ids, position_ids, inputs_embeds)
        )
        past_key_values = _as_tensor(past_key_values)
        encoder_hidden_states = _as_tensor(encoder_hidden_states)
        encoder_attention_mask = _as_tensor(encoder_attention_mask)
        # Leading dims beyond batch (the multiple-choice head's choices) fold into the batch, as in transformers.
        lead_shape = None
        if input_ids is not None and input_ids.shape.rank > 2:
            lead_shape = tf.shape(input_ids)[:-1]
            input_ids = tf.reshape(input_ids, (-1, tf.shape(input_ids)[-1]))
        if inputs_embeds is not None and inputs_embeds.shape.rank > 3:
            lead_shape = tf.shape(inputs_embeds)[:-2]
            inputs_embeds = tf.reshape(inputs_embeds, (-1, *inputs_embeds.shape[-2:]))
        if lead_shape is not None:
            fold = lambda t: None if t is None else tf.reshape(t, (-1, tf.shape(t)[-1]))  # noqa: E731
            attention_mask, token_type_ids = fold(attention_mask), fold(token_type_ids)
            position_ids = fold(position_ids)
        if inputs_embeds is None:
            inputs_embeds = _embed(self.wte, input_ids)  # (B, T, C)
        B = inputs_embeds.shape[0] if inputs_embeds.shape[0] is not None else tf.shape(inputs_embeds)[0]
        T = inputs_embeds.shape[1] if inputs_embeds.shape[1] is not None else tf.shape(inputs_embeds)[1]
        # One attention path: with a cache, always a KVCache (a legacy tuple converted here, at the edge).
        preallocated = isinstance(past_key_values, KVCache)
        if preallocated:
            cache = past_key_values
        elif past_key_values is not None:
            past_length = past_key_values[0][0].shape[2]
            past_length = past_length if past_length is not None else tf.shape(past_key_values[0][0])[2]
            cache = KVCache.from_legacy(past_key_values, max_length=past_length + T)
        elif use_cache:
            cache = KVCache.init(config, B, T, dtype=self.compute_dtype)
        else:
            cache = None
        P = cache.length if cache is not None else 0
        S = cache.max_length if cache is not None else T
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_attention_mask(attention_mask, T, P if cache is not None else None)
            else:
                position_ids = (P + tf.range(T))[None, :]  # (1, T); an addition keeps the shape static
        x = inputs_embeds + _embed(self.wpe, position_ids)
        if token_type_ids is not None:
            x = x + _embed(self.wte, token_type_ids)
        x = self.drop(x, training=training)

        # causal[t, s]: key s is not in query t's future; key_ok[b, 0, 0, s]: key s is not padding
        causal = tf.range(S)[None, :] <= (P + tf.range(T))[:, None]  # (T, S)
        key_ok = None
        if attention_mask is not None:
            width = attention_mask.shape[-1] if attention_mask.shape[-1] is not None else tf.shape(attention_mask)[-1]
            key_ok = attention_mask != 0
            if cache is not None and not (isinstance(width, int) and isinstance(S, int) and width == S):
                # a (B, length + T) mask: the spare slots after it are hidden causally, any value does
                key_ok = tf.pad(key_ok, [[0, 0], [0, S - width]], constant_values=True)  # (B, S)
            key_ok = key_ok[:, None, None, :]  # (B, 1, 1, S)
        encoder_key_ok = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_key_ok = (encoder_attention_mask != 0)[:, None, None, :]  # (B, 1, 1, S_enc)

        head_masks = _layer_head_masks(head_mask, config)
        presents = []
        all_hidden = [x] if output_hidden_states else None
        all_att = [] if output_attentions else None
        all_cross = [] if (output_attentions and encoder_hidden_states is not None) else None
        for i, block in enumerate(self.h):
            kwargs = dict(
                causal=causal,
                key_ok=key_ok,
                encoder_hidden_states=encoder_hidden_states,
                encoder_key_ok=encoder_key_ok,
                training=training,
                head_mask=head_masks[i],
            )
            if checkpointing and cache is None and i % self._checkpoint_every == 0:
                x, present, att, cross_att = _recomputed(block, x, **kwargs)
            else:
                x, present, att, cross_att = block(x, cache=cache, **kwargs)
            presents.append(present)
            if output_attentions:
                all_att.append(att)
                if all_cross is not None:
                    all_cross.append(cross_att)
            if output_hidden_states:
                all_hidden.append(x)
        x = self.ln_f(x)
        if output_hidden_states:
            all_hidden[-1] = x  # transformers reports the last block's output after ln_f
        if lead_shape is not None:
            # like transformers v5: last_hidden_state regains the choices dim; the other hidden states stay flat
            x = tf.reshape(x, tf.concat([lead_shape, tf.shape(x)[-2:]], 0))
            if output_hidden_states:
                all_hidden[-1] = x
        next_cache = None
        if cache is not None and (use_cache or preallocated):
            next_cache = cache.advance([k for k, _ in presents], [v for _, v in presents], T)
            if not preallocated:
                next_cache = next_cache.to_legacy()  # transformers' tuple in, tuple out
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            past_key_values=next_cache,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_att) if output_attentions else None,
            cross_attentions=tuple(all_cross) if all_cross is not None else None,
        )
        return _returned(out, return_dict)


def _lm_head(config: GPT2Config, dtype: Any) -> keras.layers.Dense | None:
    # Tied: the head is wte's embedding matrix (a transposed matmul), no variable of its own.
    return None if config.tie_word_embeddings else _dense(config.vocab_size, config.n_embd, False, dtype)


# HF TF name of the body; here the body is TFGPT2Model itself (as GPT2Model is in PyTorch).
TFGPT2MainLayer = TFGPT2Model


@_register
class TFGPT2LMHeadModel(TFGPT2PreTrainedModel):
    """GPT-2 with a language-modeling head (tied to the token embedding unless `tie_word_embeddings=False`).

    Args:
        config: The model config.
        seed: Seed of the initial weights (gpt2_core.reference.init_params); None draws one from NumPy's RNG.
    """

    head = "lm"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        with reference.skip_init():  # the task model initialises body and head together, once
            self.transformer = TFGPT2Model(config, dtype=self.dtype_policy)
        self.lm_head = _lm_head(config, self.dtype_policy)
        _finish_init(self, seed)

    def lm_logits(self, hidden: tf.Tensor) -> tf.Tensor:
        """(..., C) -> (..., V) through the LM head."""
        if self.lm_head is None:
            return tf.matmul(hidden, tf.cast(self.transformer.wte.embeddings, hidden.dtype), transpose_b=True)
        return self.lm_head(hidden)

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        encoder_hidden_states: tf.Tensor | None = None,
        encoder_attention_mask: tf.Tensor | None = None,
        labels: tf.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> CausalLMOutputWithCrossAttentions:
        out = self.transformer(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            training=training,
        )
        logits = self.lm_logits(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        output = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )
        return _returned(output, return_dict)

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def prepare_inputs_for_generation(
        self,
        input_ids: Any,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: Any = None,
        inputs_embeds: Any = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """transformers' hook for one decoding step's `call` arguments (what custom loops call; this library's own
        `generate` does not need it), as gpt2_torch's: with a past, only the tokens it has not seen are kept; the
        position ids then follow from the (whole) attention mask inside `call`."""
        token_type_ids = kwargs.get("token_type_ids")
        if past_key_values is not None:
            if isinstance(past_key_values, KVCache):
                past_length = int(past_key_values.length)
            else:
                past_length = int(past_key_values[0][0].shape[2])
            T = int(input_ids.shape[1])
            cut = past_length if T > past_length else T - 1
            input_ids = input_ids[:, cut:]
            if token_type_ids is not None:
                token_type_ids = token_type_ids[:, cut:]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs: dict[str, Any] = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update(
            past_key_values=past_key_values,
            use_cache=kwargs.get("use_cache"),
            position_ids=kwargs.get("position_ids"),
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        )
        return model_inputs

    def generate(self, input_ids: Any, attention_mask: Any = None, generation_config: Any = None, **kwargs: Any) -> Any:
        """XLA-compiled cached decoding (greedy, sampling, beam search); see `gpt2_tf.generation.generate`.
        Inside a `tf.function` (`tf.function(model.generate, jit_compile=True)`, transformers 4.x's XLA recipe) it
        traces the same compiled loop and returns `(B, T + max_new_tokens)` ids padded with `pad_token_id`."""
        from gpt2_tf.generation import generate

        return generate(self, input_ids, attention_mask, generation_config, **kwargs)


def _cross_entropy(logits: tf.Tensor, labels: tf.Tensor, ignore_index: Any = None) -> tf.Tensor:
    """Mean cross entropy in float32 over labels != ignore_index (torch.nn.functional.cross_entropy); 0/0 = nan.

    A label outside [0, classes) gives NaN (eager calls never get here with one: `_check_call` raises first; in a
    graph TF's kernel would raise on CPU and give garbage elsewhere)."""
    logits = tf.cast(tf.reshape(logits, (-1, tf.shape(logits)[-1])), tf.float32)
    labels = tf.cast(tf.reshape(labels, (-1,)), tf.int32)
    valid = (labels >= 0) & (labels < tf.shape(logits)[-1])
    nan = tf.constant(float("nan"), tf.float32)
    if ignore_index is None:
        losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(valid, labels, 0), logits=logits)
        return tf.reduce_mean(tf.where(valid, losses, nan))
    keep = labels != tf.cast(ignore_index, tf.int32)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(keep & valid, labels, 0), logits=logits)
    losses = tf.where(keep & ~valid, nan, losses)
    keep = tf.cast(keep, tf.float32)
    return tf.reduce_sum(losses * keep) / tf.reduce_sum(keep)


def lm_loss(logits: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """gpt2_core.reference.lm_loss: shift inside, ignore -100, mean in float32."""
    labels = tf.convert_to_tensor(labels)
    return _cross_entropy(logits[..., :-1, :], labels[..., 1:], reference.IGNORE_INDEX)


@_register
class TFGPT2SequenceSummary(keras.layers.Layer):
    """transformers' GPT2SequenceSummary: pool one vector per sequence (the multiple-choice head).

    Args:
        config: The model config (`summary_*` fields).
    """

    def __init__(self, config: GPT2Config, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        config = _config_from(config)
        self.config = config
        self.summary_type = config.summary_type
        self.summary = None
        if config.summary_use_proj:
            n = 1 if config.summary_proj_to_labels else config.n_embd
            self.summary = _dense(n, config.n_embd, dtype=self.dtype_policy)
        self.activation = tf.tanh if config.summary_activation == "tanh" else (lambda x: x)
        self.first_dropout = _dropout(config.summary_first_dropout, self.dtype_policy)
        self.built = True

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "config": self.config.to_dict()}

    def call(self, hidden_states: tf.Tensor, cls_index: tf.Tensor | None = None, training: bool = False) -> tf.Tensor:
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = tf.reduce_mean(hidden_states, axis=-2)
        elif cls_index is None:
            x = hidden_states[..., -1, :]
        else:
            cls_index = tf.cast(cls_index, tf.int32)
            rank = cls_index.shape.rank
            # an index outside the sequence gives NaN (in a graph; eager calls are checked first), not a clamped row
            ok = (cls_index >= 0) & (cls_index < tf.shape(hidden_states)[rank])
            x = tf.gather(hidden_states, tf.where(ok, cls_index, 0), axis=rank, batch_dims=rank)  # (..., C)
            x = tf.where(ok[..., None], x, tf.constant(float("nan"), x.dtype))
        x = self.first_dropout(x, training=training)
        if self.summary is not None:
            x = self.summary(x)
        return self.activation(x)


@_register
class TFGPT2DoubleHeadsModel(TFGPT2PreTrainedModel):
    """GPT-2 with a language-modeling head and a multiple-choice head (RocStories/SWAG style).

    Args:
        config: The model config; as in transformers, the model's copy of it has `num_labels = 1` (the caller's
            config is not changed).
        seed: Seed of the initial weights; None draws one from NumPy's RNG.
    """

    head = "double"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        if isinstance(config, GPT2Config):
            config = config.copy()
            config.num_labels = 1
        super().__init__(config, **kwargs)
        with reference.skip_init():  # the task model initialises body and head together, once
            self.transformer = TFGPT2Model(config, dtype=self.dtype_policy)
        self.lm_head = _lm_head(config, self.dtype_policy)
        self.multiple_choice_head = TFGPT2SequenceSummary(config, dtype=self.dtype_policy)
        _finish_init(self, seed)

    lm_logits = TFGPT2LMHeadModel.lm_logits

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        mc_token_ids: tf.Tensor | None = None,
        labels: tf.Tensor | None = None,
        mc_labels: tf.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> GPT2DoubleHeadsModelOutput:
        out = self.transformer(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            training=training,
        )
        hidden = out.last_hidden_state  # (B, choices, T, C)
        logits = self.lm_logits(hidden)
        mc_logits = self.multiple_choice_head(hidden, cls_index=mc_token_ids, training=training)
        mc_logits = tf.squeeze(mc_logits, -1)  # (B, choices)
        mc_loss = None
        if mc_labels is not None:
            mc_loss = _cross_entropy(mc_logits, mc_labels, reference.IGNORE_INDEX)  # as torch: -100 is ignored
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        output = GPT2DoubleHeadsModelOutput(
            loss=loss,
            mc_loss=mc_loss,
            logits=logits,
            mc_logits=mc_logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _returned(output, return_dict)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """Both heads train together: the LM loss plus the multiple-choice loss, whichever labels are given."""
        if self._compile_loss is None and y_pred is not None and y_pred.mc_loss is not None:
            return y_pred.mc_loss if y_pred.loss is None else y_pred.loss + y_pred.mc_loss
        return super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)


@_register
class TFGPT2ForSequenceClassification(TFGPT2PreTrainedModel):
    """GPT-2 with a linear classifier on the last non-padding token (`config.pad_token_id`).

    Args:
        config: The model config (`num_labels`, `pad_token_id`, `problem_type`).
        seed: Seed of the initial weights; None draws one from NumPy's RNG.
    """

    head = "seqcls"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.num_labels = config.num_labels
        with reference.skip_init():  # the task model initialises body and head together, once
            self.transformer = TFGPT2Model(config, dtype=self.dtype_policy)
        self.score = _dense(config.num_labels, config.n_embd, False, self.dtype_policy)
        _finish_init(self, seed)

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        labels: tf.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> SequenceClassifierOutputWithPast:
        input_ids = _as_tensor(input_ids)
        out = self.transformer(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            training=training,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, L)
        B, T = logits.shape[0], tf.shape(logits)[1]
        if B is not None:
            checks.check_sequence_classification_batch(self.config, B)
        last = last_non_pad_index(input_ids, self.config.pad_token_id, T)
        if isinstance(last, int):  # -1: the last position of every row
            last = tf.fill(tf.shape(logits)[:1], T - 1)
        pooled = tf.gather(logits, last, axis=1, batch_dims=1)  # (B, L)
        loss = None
        if labels is not None:
            labels = tf.convert_to_tensor(labels)
            dtype = np.int64 if labels.dtype.is_integer else np.float32
            kind = reference.problem_type(self.config, np.zeros((), dtype=dtype))
            if kind == "regression":
                y = tf.cast(labels, tf.float32)
                p = tf.cast(pooled, tf.float32)
                if self.num_labels == 1:
                    p, y = tf.reshape(p, (-1,)), tf.reshape(y, (-1,))
                loss = tf.reduce_mean(tf.square(p - y))
            elif kind == "single_label_classification":
                loss = _cross_entropy(pooled, labels)
            else:
                y, p = tf.cast(labels, tf.float32), tf.cast(pooled, tf.float32)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=p))
        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _returned(output, return_dict)


@_register
class TFGPT2ForTokenClassification(TFGPT2PreTrainedModel):
    """GPT-2 with a linear classifier on every token.

    Args:
        config: The model config (`num_labels`, `classifier_dropout`).
        seed: Seed of the initial weights; None draws one from NumPy's RNG.
    """

    head = "tokcls"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self.num_labels = config.num_labels
        with reference.skip_init():  # the task model initialises body and head together, once
            self.transformer = TFGPT2Model(config, dtype=self.dtype_policy)
        p = config.classifier_dropout if config.classifier_dropout is not None else 0.1
        self.dropout = _dropout(p, self.dtype_policy)
        self.classifier = _dense(config.num_labels, config.n_embd, dtype=self.dtype_policy)
        _finish_init(self, seed)

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        past_key_values: tuple[tuple[tf.Tensor, tf.Tensor], ...] | KVCache | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        labels: tf.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> TokenClassifierOutput:
        out = self.transformer(
            input_ids=input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            training=training,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state, training=training))  # (B, T, L)
        loss = None
        if labels is not None:
            loss = _cross_entropy(logits, labels, reference.IGNORE_INDEX)
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return _returned(output, return_dict)


@_register
class TFGPT2ForQuestionAnswering(TFGPT2PreTrainedModel):
    """GPT-2 with a span-extraction head (start and end logits per token).

    Args:
        config: The model config.
        seed: Seed of the initial weights; None draws one from NumPy's RNG.
    """

    head = "qa"

    def __init__(self, config: GPT2Config, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        with reference.skip_init():  # the task model initialises body and head together, once
            self.transformer = TFGPT2Model(config, dtype=self.dtype_policy)
        self.qa_outputs = _dense(2, config.n_embd, dtype=self.dtype_policy)
        _finish_init(self, seed)

    def call(
        self,
        input_ids: tf.Tensor | None = None,
        attention_mask: tf.Tensor | None = None,
        token_type_ids: tf.Tensor | None = None,
        position_ids: tf.Tensor | None = None,
        inputs_embeds: tf.Tensor | None = None,
        start_positions: tf.Tensor | None = None,
        end_positions: tf.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: tf.Tensor | None = None,
        training: bool = False,
    ) -> QuestionAnsweringModelOutput:
        out = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            training=training,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = tf.shape(start_logits)[1]
            start_positions = tf.clip_by_value(tf.reshape(tf.cast(start_positions, tf.int32), (-1,)), 0, ignored)
            end_positions = tf.clip_by_value(tf.reshape(tf.cast(end_positions, tf.int32), (-1,)), 0, ignored)
            start_loss = _cross_entropy(start_logits, start_positions, ignored)
            end_loss = _cross_entropy(end_logits, end_positions, ignored)
            loss = (start_loss + end_loss) / 2
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _returned(output, return_dict)


MODEL_CLASSES = {
    "base": TFGPT2Model,
    "lm": TFGPT2LMHeadModel,
    "double": TFGPT2DoubleHeadsModel,
    "qa": TFGPT2ForQuestionAnswering,
    "seqcls": TFGPT2ForSequenceClassification,
    "tokcls": TFGPT2ForTokenClassification,
}
