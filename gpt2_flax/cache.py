"""The KV cache of gpt2_flax: per layer k and v preallocated to (B, N, S_max, H), plus the filled length.

The same class, fields and methods as `gpt2_torch/cache.py` and `gpt2_tf/cache.py`. In JAX it is functional: `update`
returns new buffers (`dynamic_update_slice` at `length`) and `advance` a new `KVCache`; nothing is mutated, so a
compiled decode loop carries it through `lax.while_loop` with fixed shapes. transformers' `past_key_values` tuple of
per-layer `(k, v)` converts at the model's edge (`from_legacy` / `to_legacy`, as transformers'
`DynamicCache.from_legacy_cache`).

References: flax `examples/gemma` (cache layout, `dynamic_update_slice`); transformers `cache_utils.py` (`StaticCache`,
`DynamicCache.from_legacy_cache`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from gpt2_core.config import GPT2Config


def _concrete_int32(n: Any) -> jax.Array:
    # A length known while tracing stays known (not a tracer), so `to_legacy` can slice by it under `jax.jit`.
    with jax.ensure_compile_time_eval():
        return jnp.asarray(n, jnp.int32)


@dataclasses.dataclass(frozen=True)
class KVCache:
    """A preallocated key/value cache: per layer k and v of shape (B, N, S_max, H), and the filled length.

    Passed as `past_key_values`, the model writes the new keys and values at `length`, attends over the whole buffer
    (future slots hidden by the causal mask `s <= length + t`) and returns a new cache with `length + T`. The attention
    mask covers the filled positions and the new tokens, (B, length + T), or the whole buffer, (B, S_max). Shapes never
    change, so a decode loop compiles once.

    Args:
        key: Per layer keys, (B, N, S_max, H).
        value: Per layer values, (B, N, S_max, H).
        length: Number of filled positions (int32 scalar).
    """

    key: tuple[jax.Array, ...]
    value: tuple[jax.Array, ...]
    length: jax.Array

    @classmethod
    def init(cls, config: GPT2Config, batch_size: int, max_length: int, dtype: Any = jnp.float32) -> "KVCache":
        """An empty cache (zeros, length 0) of `max_length` slots for `config`'s layers."""
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, N, S_max, H)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(key=zeros, value=zeros, length=_concrete_int32(0))

    @classmethod
    def from_legacy(
        cls, past_key_values: Sequence[tuple[jax.Array, jax.Array]], max_length: int | None = None
    ) -> "KVCache":
        """transformers' tuple of per-layer (k, v), (B, N, P, H) -> buffers of `max_length` slots (default P),
        length P."""
        past = [(jnp.asarray(k), jnp.asarray(v)) for k, v in past_key_values]
        if not past:
            raise ValueError("past_key_values holds no layers. Received: an empty sequence. Pass the model's cache.")
        P = past[0][0].shape[2]
        S_max = P if max_length is None else int(max_length)
        if S_max < P:
            raise ValueError(
                f"max_length must hold the past. Received: max_length={max_length}, past length {P}. "
                f"Use max_length >= {P}."
            )
        pad = ((0, 0), (0, 0), (0, S_max - P), (0, 0))
        key = tuple(jnp.pad(k, pad) if S_max > P else k for k, _ in past)  # (B, N, S_max, H)
        value = tuple(jnp.pad(v, pad) if S_max > P else v for _, v in past)
        return cls(key=key, value=value, length=_concrete_int32(P))

    def to_legacy(self) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """transformers' tuple: per layer (k[:, :, :length], v[:, :, :length]). Needs a known (not traced) length."""
        if isinstance(self.length, jax.core.Tracer):
            raise ValueError(
                "to_legacy needs the filled length, which is traced here (inside jax.jit or a lax loop). "
                "Received: a traced KVCache.length. Keep the KVCache inside compiled code; convert outside it."
            )
        n = int(self.length)
        return tuple((k[:, :, :n], v[:, :, :n]) for k, v in zip(self.key, self.value))

    def update(self, layer: int, k: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Write the new (B, N, T, H) keys and values of `layer` at `length`; return its (B, N, S_max, H) buffers.

        Functional: this cache is unchanged; pass the buffers of every layer to `advance` for the next cache.
        """
        index = (0, 0, self.length, 0)
        key = jax.lax.dynamic_update_slice(self.key[layer], k.astype(self.key[layer].dtype), index)
        value = jax.lax.dynamic_update_slice(self.value[layer], v.astype(self.value[layer].dtype), index)
        return key, value

    def advance(self, key: Sequence[jax.Array], value: Sequence[jax.Array], steps: Any) -> "KVCache":
        """A new cache holding these per-layer buffers, with `length + steps` filled positions."""
        with jax.ensure_compile_time_eval():  # a known length stays known; a traced one stays traced
            length = (self.length + steps).astype(jnp.int32)
        return KVCache(key=tuple(key), value=tuple(value), length=length)

    def reorder(self, beam_idx: jax.Array) -> "KVCache":
        """The rows (B,) `beam_idx` of every layer's buffers, gathered into new buffers (beam search), same length."""
        key = tuple(jnp.take(k, beam_idx, axis=0) for k in self.key)
        value = tuple(jnp.take(v, beam_idx, axis=0) for v in self.value)
        return KVCache(key=key, value=value, length=self.length)

    @property
    def max_length(self) -> int:
        """S_max: slots per layer."""
        return self.key[0].shape[2]

    def __len__(self) -> int:
        return len(self.key)

    def __getitem__(self, i: int) -> tuple[jax.Array, jax.Array]:
        return self.key[i], self.value[i]


jax.tree_util.register_dataclass(KVCache, data_fields=["key", "value", "length"], meta_fields=[])
