"""The key/value cache of gpt2_torch: per layer k and v preallocated (B, N, S_max, H), plus the filled length.

The same class, fields and methods as `gpt2_tf/cache.py` and `gpt2_flax/cache.py`. The model writes each call's
new keys and values at `length`, attends over the whole buffer (future slots hidden by the causal mask, so shapes
never change) and returns `advance(...)`: a new `KVCache` whose length counts the new tokens.

Unlike the JAX and TF caches, `update` writes into the buffers in place (as transformers' `StaticCache` does):
copying every buffer per token would cost more than the step. Only slots at or after `length` are written, so a
holder of an older `KVCache` still sees its filled slots unchanged (its spare slots are not its own).

The legacy `past_key_values` tuple of transformers (per layer `(k, v)` of (B, N, P, H)) converts at the model's
edge with `from_legacy` / `to_legacy`, like transformers' `DynamicCache.from_legacy_cache`.

References: transformers `cache_utils.py` (`StaticCache`, `DynamicCache`); flax `examples/gemma` (explicit cache).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from gpt2_core.config import GPT2Config


@dataclass
class KVCache:
    """A preallocated key/value cache.

    Passed as `past_key_values`, the model writes the new keys and values at `length`, attends over the whole
    buffer masked by position, and returns the advanced cache (always a `KVCache`). The attention mask may then
    cover the filled and new positions, (B, length + T), or the whole buffer, (B, S_max).

    Args:
        key: Per layer keys, (B, N, S_max, H).
        value: Per layer values, (B, N, S_max, H).
        length: Number of filled positions: a 0-d int64 tensor on the buffers' device (never read on the host
            while decoding, so the loop does not wait for the device).
    """

    key: tuple[torch.Tensor, ...]
    value: tuple[torch.Tensor, ...]
    length: torch.Tensor
    _write_index: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # T -> (T,) slots

    def __post_init__(self) -> None:
        self.key, self.value = tuple(self.key), tuple(self.value)
        if len(self.key) != len(self.value):
            raise ValueError(
                f"A KVCache holds one key and one value buffer per layer. Received: {len(self.key)} keys, "
                f"{len(self.value)} values. Make it with KVCache.init(config, batch_size, max_length)."
            )
        if not isinstance(self.length, torch.Tensor):
            device = self.key[0].device if self.key else None
            self.length = torch.tensor(int(self.length), dtype=torch.long, device=device)

    @classmethod
    def init(
        cls,
        config: GPT2Config,
        batch_size: int,
        max_length: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> "KVCache":
        """An empty cache (zeros, length 0) of `max_length` slots for `config`'s layers."""
        shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, N, S_max, H)
        key = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer))
        value = tuple(torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layer))
        return cls(key=key, value=value, length=torch.zeros((), dtype=torch.long, device=device))

    @classmethod
    def from_legacy(
        cls, past_key_values: Sequence[tuple[torch.Tensor, torch.Tensor]], max_length: int | None = None
    ) -> "KVCache":
        """A cache holding a legacy tuple (per layer (k, v) of (B, N, P, H)) in buffers of `max_length` (default P)."""
        P = past_key_values[0][0].shape[2]
        S = P if max_length is None else int(max_length)
        if S < P:
            raise ValueError(
                f"max_length must hold the past. Received: max_length={max_length}, past length {P}. "
                "Pass max_length >= the past's length."
            )
        # New buffers (pad copies): the caller's tensors are never written.
        key = tuple(F.pad(k, (0, 0, 0, S - P)) for k, _ in past_key_values)  # (B, N, S_max, H)
        value = tuple(F.pad(v, (0, 0, 0, S - P)) for _, v in past_key_values)
        return cls(key=key, value=value, length=torch.tensor(P, dtype=torch.long, device=key[0].device))

    def to_legacy(self, length: int | None = None) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """transformers' tuple: per layer (k[:, :, :length], v[:, :, :length]).

        Args:
            length: The filled length when the caller knows it (saves reading `self.length` from the device).
        """
        n = int(self.length) if length is None else int(length)
        return tuple((k[:, :, :n], v[:, :, :n]) for k, v in zip(self.key, self.value))

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write (B, N, T, H) keys and values of `layer` at `length` (in place); return its (B, N, S_max, H) buffers."""
        key, value = self.key[layer], self.value[layer]
        # An index tensor, not a slice: the position stays on the device (no host sync, compilable). Every layer
        # writes the same slots, so eager calls make it once per cache and call length (not while compiling: no
        # side effects in the graph).
        T = k.shape[2]
        index = None if torch.compiler.is_compiling() else self._write_index.get(T)
        if index is None or index.device != key.device:
            index = self.length.to(device=key.device, dtype=torch.long) + torch.arange(T, device=key.device)
            if not torch.compiler.is_compiling():
                self._write_index[T] = index
        key.index_copy_(2, index, k.to(key.dtype))
        value.index_copy_(2, index, v.to(value.dtype))
        return key, value

    def advance(
        self, key: Sequence[torch.Tensor], value: Sequence[torch.Tensor], steps: int | torch.Tensor
    ) -> "KVCache":
        """A new cache of these buffers whose length is `length + steps`."""
        return KVCache(key=tuple(key), value=tuple(value), length=self.length + steps)

    def reorder(self, beam_idx: torch.Tensor) -> "KVCache":
        """A cache whose row i is row `beam_idx[i]` of this one (beam search), in NEW buffers: the buffers are
        written in place by `update`, so rows gathered into views would alias each other."""
        index = beam_idx.to(device=self.key[0].device, dtype=torch.long)
        return KVCache(
            key=tuple(k.index_select(0, index) for k in self.key),
            value=tuple(v.index_select(0, index) for v in self.value),
            length=self.length,
        )

    @property
    def max_length(self) -> int:
        """S_max: slots per layer."""
        return self.key[0].shape[2]

    def __len__(self) -> int:
        return len(self.key)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key[i], self.value[i]
