"""The preallocated key/value cache of gpt2_tf: per layer k and v (B, N, S_max, H) plus the filled length.

The same class, fields and methods as `gpt2_torch.cache.KVCache` and `gpt2_flax.cache.KVCache` (STYLE.md: one cache
layout everywhere). It is functional: `update` returns new buffers and `advance` a new cache; nothing is mutated,
so a cache can be a `tf.while_loop` variable and a holder of an older cache keeps its values.

Why a `tf.experimental.ExtensionType`: it is a composite tensor with a `TypeSpec`, so TensorFlow itself knows its
structure. It is a `tf.while_loop` loop variable and a `tf.function` argument as is (a new filled length does not
retrace: only the buffers' shapes and dtypes are in its signature), XLA (`jit_compile=True`) sees its component
tensors, `tf.nest.flatten(cache, expand_composites=True)` yields them, and it is immutable, as the contract wants.
Keras passes it through `Layer.__call__` untouched (it is not a `tf.Tensor`, so it is never autocast: `update`
casts what it writes to the buffer's dtype). A dataclass registered through TF's custom-nest protocol would work
with `tf.nest` and `tf.while_loop`, but not as a `tf.function` argument, and is not immutable.

Shapes: B batch, N heads, S_max buffer slots, H head dim, T new tokens.

References: transformers `cache_utils.StaticCache` / `DynamicCache.from_legacy_cache`; Flax `examples/gemma`
(a preallocated cache updated with a dynamic-update-slice); keras-hub `CachedMultiHeadAttention`.
"""

from __future__ import annotations

import os
from typing import Any

import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core.config import GPT2Config  # noqa: E402


def _static_int(x: Any) -> int | None:
    """`x` as a Python int when it is known without running a graph (eager values, graph constants), else None."""
    if isinstance(x, int):
        return x
    value = tf.get_static_value(x)
    return None if value is None else int(value)


@tf.custom_gradient
def _write(buffer: tf.Tensor, new: tf.Tensor, index: tf.Tensor) -> tuple[tf.Tensor, Any]:
    """`buffer` (B, N, S_max, H) with `new` (B, N, T, H) written at slots [index, index + T): XLA's
    dynamic-update-slice (in place inside a compiled loop), with its gradient (TF registers none for the op, and a
    model trained with `use_cache=True` differentiates through the cache)."""
    start = (0, 0, index, 0)

    def grad(upstream: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, None]:
        d_buffer = keras.ops.slice_update(upstream, start, tf.zeros_like(new))  # the overwritten slots get none
        d_new = keras.ops.slice(upstream, start, tf.shape(new))
        return d_buffer, d_new, None

    return keras.ops.slice_update(buffer, start, new), grad


class KVCache(tf.experimental.ExtensionType):
    """Preallocated per-layer key and value buffers and the number of filled positions.

    Positions `[0, length)` hold the cached keys and values; later slots are spare (attention hides them causally).
    Build one with `KVCache.init` (empty) or `KVCache.from_legacy` (from transformers' tuple), pass it as
    `past_key_values` and take the next one from the output's `past_key_values`.

    Args:
        key: Per layer, the key buffer (B, N, S_max, H).
        value: Per layer, the value buffer (B, N, S_max, H).
        length: int32 scalar, the filled positions.
    """

    key: tuple[tf.Tensor, ...]
    value: tuple[tf.Tensor, ...]
    length: tf.Tensor

    def __validate__(self) -> None:
        if len(self.key) != len(self.value):
            raise ValueError(
                f"A KVCache needs one value buffer per key buffer. Received: {len(self.key)} keys, "
                f"{len(self.value)} values."
            )
        if self.length.dtype != tf.int32 or self.length.shape.rank != 0:
            raise TypeError(
                f"KVCache.length must be an int32 scalar. Received: dtype={self.length.dtype.name}, "
                f"shape={self.length.shape}. Use tf.constant(n, tf.int32)."
            )

    @classmethod
    def init(cls, config: GPT2Config, batch_size: Any, max_length: Any, dtype: Any = tf.float32) -> "KVCache":
        """An empty cache of `max_length` slots: zero buffers (B, N, S_max, H) per layer, length 0.

        Args:
            config: The model config (`n_layer`, `n_head`, `head_dim`).
            batch_size: B (an int, or a scalar tensor inside a graph).
            max_length: S_max, the most positions the cache will hold (prompt + generated tokens).
            dtype: Dtype of the buffers; the model's compute dtype.
        """
        shape = (batch_size, config.n_head, max_length, config.head_dim)
        zeros = tuple(tf.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(key=zeros, value=tuple(tf.zeros(shape, dtype) for _ in range(config.n_layer)), length=tf.constant(0))

    @classmethod
    def from_legacy(cls, past_key_values: Any, max_length: Any = None) -> "KVCache":
        """transformers' tuple of per-layer (k, v) (B, N, P, H) as a cache of `max_length` slots (default P), length P.

        The buffers are zero-padded after the P cached positions.
        """
        keys, values = [], []
        P = None
        for k, v in past_key_values:
            k, v = tf.convert_to_tensor(k), tf.convert_to_tensor(v)
            P = k.shape[2] if k.shape[2] is not None else tf.shape(k)[2]
            pad = [[0, 0], [0, 0], [0, (max_length if max_length is not None else P) - P], [0, 0]]
            keys.append(tf.pad(k, pad))
            values.append(tf.pad(v, pad))
        if P is None:
            raise ValueError("past_key_values holds no layers. Received: an empty sequence. Pass one (k, v) per layer.")
        return cls(key=tuple(keys), value=tuple(values), length=tf.cast(P, tf.int32))

    def to_legacy(self) -> tuple[tuple[tf.Tensor, tf.Tensor], ...]:
        """transformers' tuple: per layer (k[:, :, :length], v[:, :, :length])."""
        n = _static_int(self.length)
        end = n if n is not None else self.length
        return tuple((k[:, :, :end], v[:, :, :end]) for k, v in zip(self.key, self.value))

    def update(self, layer: int, k: tf.Tensor, v: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Write new keys and values (B, N, T, H) of `layer` at slots [length, length + T).

        Returns that layer's whole buffers (B, N, S_max, H); the cache itself is unchanged (see `advance`). Inside a
        compiled loop this is XLA's dynamic-update-slice, done in place.
        """
        k_buffer = _write(self.key[layer], tf.cast(k, self.key[layer].dtype), self.length)
        v_buffer = _write(self.value[layer], tf.cast(v, self.value[layer].dtype), self.length)
        return k_buffer, v_buffer

    def advance(self, key: Any, value: Any, steps: Any) -> "KVCache":
        """A new cache holding these per-layer buffers (from `update`), `steps` more positions filled."""
        n, s = _static_int(self.length), _static_int(steps)
        # keep a known length a constant, so `to_legacy` slices to a static shape inside a graph too
        length = tf.constant(n + s, tf.int32) if n is not None and s is not None else self.length + tf.cast(steps, tf.int32)
        return KVCache(key=tuple(key), value=tuple(value), length=length)

    @property
    def max_length(self) -> Any:
        """S_max, the slots of each buffer (an int when static)."""
        S = self.key[0].shape[2]
        return S if S is not None else tf.shape(self.key[0])[2]

    def __len__(self) -> int:
        """The number of layers."""
        return len(self.key)

    def __getitem__(self, layer: int) -> tuple[tf.Tensor, tf.Tensor]:
        """(key buffer, value buffer) of `layer`."""
        return self.key[layer], self.value[layer]

    def reorder(self, beam_idx: tf.Tensor) -> "KVCache":
        """A new cache whose rows are this cache's rows `beam_idx` (B',) (beam search: tf.gather on the batch axis)."""
        key = tuple(tf.gather(k, beam_idx, axis=0) for k in self.key)
        value = tuple(tf.gather(v, beam_idx, axis=0) for v in self.value)
        return KVCache(key=key, value=value, length=self.length)
