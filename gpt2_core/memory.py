"""Training memory per device, computed from a config: parameters, gradients and AdamW state, replicated (data
parallel) or sharded over N devices (FSDP / ZeRO-3 style: torch `fully_shard`, JAX `NamedSharding` over the data
axis). The table in docs/scaling.md ("Memory per device") is `memory_table()`.

What is counted: the parameters, one gradient per parameter and AdamW's two moments (`exp_avg`, `exp_avg_sq`), all
in `dtype_bytes` (4: fp32 training as `gpt2 train` does it). Sharded, each of the three is split evenly over
`n_shards` devices (rounded up per tensor, as a flat shard is); a sharded step also holds, for a moment, one
unit's parameters and gradients unsharded (`gathered`: the largest of the embeddings and one transformer block,
the units FSDP gathers one at a time). Not counted: activations (they grow with batch x block size and shrink with
rematerialisation), the framework's runtime and workspace, and communication buffers.

References: ZeRO (Rajbhandari et al., 2020, arXiv:1910.02054) for the 16 bytes per parameter of fp32 Adam training
and its stage 3 split; PyTorch FSDP2 `fully_shard` for the per-unit all-gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from gpt2_core import naming
from gpt2_core.config import GPT2Config

__all__ = ["TrainingMemory", "num_parameters", "training_memory", "memory_table"]


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes per device of one training setup.

    Args:
        n_params: Parameters of the model (the LM head tied to the token embedding, as GPT-2's).
        n_shards: Devices the state is sharded over (1: replicated, data parallel).
        params: Parameter bytes per device.
        grads: Gradient bytes per device.
        optimizer: AdamW state bytes per device (two moments).
        gathered: Transient bytes of one unit's unsharded parameters and gradients while it computes (0 when
            replicated: everything is already whole).
    """

    n_params: int
    n_shards: int
    params: int
    grads: int
    optimizer: int
    gathered: int

    @property
    def state(self) -> int:
        """Parameters + gradients + optimizer state per device."""
        return self.params + self.grads + self.optimizer

    @property
    def total(self) -> int:
        """`state` plus the transient unit a sharded step gathers: the peak of what is counted here."""
        return self.state + self.gathered


def _shapes(config: GPT2Config) -> dict[str, tuple[int, ...]]:
    return naming.canonical_shapes(config, "lm")


def num_parameters(config: GPT2Config) -> int:
    """Parameters of the GPT2LMHeadModel of `config` (the tied LM head counted once, as torch's
    `num_parameters()` does)."""
    return sum(math.prod(shape) for shape in _shapes(config).values())


def _units(config: GPT2Config) -> dict[str, int]:
    """Parameters per gathering unit: the embeddings (wte, wpe), each block h.i, the final LayerNorm, a head."""
    units: dict[str, int] = {}
    for key, shape in _shapes(config).items():
        first = key.split(".", 1)[0]
        unit = "embeddings" if first in ("wte", "wpe") else ".".join(key.split(".")[:2]) if first == "h" else first
        units[unit] = units.get(unit, 0) + math.prod(shape)
    return units


def training_memory(config: GPT2Config, n_shards: int = 1, dtype_bytes: int = 4) -> TrainingMemory:
    """Per-device bytes of parameters, gradients and AdamW state for training `config`.

    Args:
        config: The model.
        n_shards: Devices the parameters, gradients and optimizer state are sharded over; 1 = replicated (data
            parallel: every device holds everything).
        dtype_bytes: Bytes per element of parameters, gradients and optimizer state (4 fp32, 2 bf16).
    """
    for name, value in (("n_shards", n_shards), ("dtype_bytes", dtype_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1. Received: {name}={value!r}. Pass a positive integer.")
    shapes = _shapes(config)
    n_params = sum(math.prod(s) for s in shapes.values())
    per_device = sum(math.ceil(math.prod(s) / n_shards) for s in shapes.values())  # each tensor's flat shard
    params = per_device * dtype_bytes
    gathered = 0 if n_shards == 1 else 2 * max(_units(config).values()) * dtype_bytes
    return TrainingMemory(n_params=n_params, n_shards=n_shards, params=params, grads=params, optimizer=2 * params,
                          gathered=gathered)


def memory_table(presets: tuple[str, ...] = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"),
                 shards: tuple[int, ...] = (1, 2, 8), dtype_bytes: int = 4) -> str:
    """The Markdown table of docs/scaling.md: per preset, its parameters, then GiB per device of parameters,
    gradients and AdamW state replicated, and the total per device replicated and sharded over each of `shards`."""
    gib = 2**30
    sharded = [n for n in shards if n > 1]
    head = ["model", "parameters", "params", "grads", "AdamW", "data parallel"] + [f"sharded / {n}" for n in sharded]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name in presets:
        config = GPT2Config.from_preset(name)
        one = training_memory(config, 1, dtype_bytes)
        cells = [name, f"{one.n_params / 1e6:.0f}M", f"{one.params / gib:.2f}", f"{one.grads / gib:.2f}",
                 f"{one.optimizer / gib:.2f}", f"{one.total / gib:.2f}"]
        cells += [f"{training_memory(config, n, dtype_bytes).total / gib:.2f}" for n in sharded]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


if __name__ == "__main__":  # `python -m gpt2_core.memory`: the table of docs/scaling.md
    import sys

    sys.stdout.write(memory_table() + "\n")
