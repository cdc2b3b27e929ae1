"""Training gpt2_flax models with optax: AdamW with linear warmup and cosine decay, global-norm gradient clipping,
a compiled train step for every head, and data parallelism across devices with `jax.sharding`.

    model = FlaxGPT2LMHeadModel(config, rngs=default_rngs(0))
    optimizer = make_optimizer(model, learning_rate=3e-4, warmup_steps=100, total_steps=5000)
    for batch in batches:                      # dicts of the model's arguments: input_ids, labels, ...
        loss = train_step(model, optimizer, batch)

Data parallel (one process, all local devices): put full copies of the parameters and optimizer state on every
device, split each batch along its first axis, and call the same `train_step`; XLA inserts the gradient all-reduce.

    mesh = make_mesh()
    replicate(mesh, model, optimizer)
    loss = train_step(model, optimizer, shard_batch(mesh, batch))

References: optax `adamw`, `warmup_cosine_decay_schedule`, `clip_by_global_norm`; flax NNX guides "Performance
considerations" and "Scale up on multiple devices"; nanoGPT `train.py` (decay only matrices).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_schedule(
    learning_rate: float, warmup_steps: int, total_steps: int, end_learning_rate: float | None = None
) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine decay to `end_learning_rate`
    (default `learning_rate / 10`) at `total_steps`."""
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps < total_steps. Received: warmup_steps={warmup_steps}, total_steps={total_steps}."
        )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=learning_rate / 10 if end_learning_rate is None else end_learning_rate,
    )


def _decay_mask(params: Any) -> Any:
    # Weight decay on matrices and embeddings only, not on biases and LayerNorm gains (GPT-2 / nanoGPT practice).
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    model: nnx.Module,
    *,
    learning_rate: float = 6e-4,
    warmup_steps: int = 100,
    total_steps: int = 10_000,
    end_learning_rate: float | None = None,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.95,
    eps: float = 1e-8,
    max_grad_norm: float | None = 1.0,
) -> nnx.Optimizer:
    """An `nnx.Optimizer` over the model's parameters: clip by global norm, then AdamW on a warmup-cosine schedule.

    Args:
        model: The model to train (any head).
        learning_rate: Peak learning rate, reached after `warmup_steps`.
        warmup_steps: Steps of linear warmup from 0.
        total_steps: Step at which the cosine decay reaches `end_learning_rate`.
        end_learning_rate: Final learning rate; `learning_rate / 10` by default.
        weight_decay: Decoupled weight decay, applied to matrices and embeddings only.
        b1, b2, eps: Adam's moment decay rates and epsilon.
        max_grad_norm: Clip the gradient to this global L2 norm; None: no clipping.
    """
    schedule = make_schedule(learning_rate, warmup_steps, total_steps, end_learning_rate)
    adamw = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_decay_mask)
    tx = adamw if max_grad_norm is None else optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw)
    return nnx.Optimizer(model, tx, wrt=nnx.Param)


def loss_of(out: Any) -> jax.Array:
    """The training loss of a model output: `loss`, plus `mc_loss` for the double-heads model (both when given)."""
    losses = [x for x in (getattr(out, "loss", None), getattr(out, "mc_loss", None)) if x is not None]
    if not losses:
        raise ValueError(
            "The batch gives no loss. Received: an output without loss or mc_loss. Put the targets in the batch: "
            "labels (LM, classifiers), mc_labels (double heads), start_positions/end_positions (QA)."
        )
    return sum(losses[1:], losses[0])


@nnx.jit
def train_step(model: nnx.Module, optimizer: nnx.Optimizer, batch: Mapping[str, jax.Array]) -> jax.Array:
    """One optimizer step on `batch` (a dict of the model's call arguments), with dropout on; returns the loss.

    Compiled with `nnx.jit` (once per batch shape); model and optimizer are updated in place.
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        return loss_of(model(**batch, deterministic=False))

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def eval_step(model: nnx.Module, batch: Mapping[str, jax.Array]) -> jax.Array:
    """The loss on `batch` without dropout."""
    return loss_of(model(**batch, deterministic=True))


# -- data parallelism --------------------------------------------------------------------------------------------


def make_mesh(devices: Any = None) -> Mesh:
    """A one-axis mesh (`"data"`) over `devices` (default: all of `jax.devices()`)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicate(mesh: Mesh, *nodes: nnx.Module | nnx.Optimizer) -> None:
    """Put a full copy of every array of `nodes` (models, optimizers) on every device of `mesh`, in place."""
    replicated = NamedSharding(mesh, PartitionSpec())
    for node in nodes:
        state = nnx.state(node)
        nnx.update(node, jax.device_put(state, replicated))


def shard_batch(mesh: Mesh, batch: Mapping[str, Any]) -> dict[str, jax.Array]:
    """Split every array of `batch` along its first axis over the mesh's data axis."""
    n = mesh.shape[DATA_AXIS]
    sharded = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    out = {}
    for name, value in batch.items():
        value = jnp.asarray(value)
        if value.ndim == 0 or value.shape[0] % n:
            raise ValueError(
                f"The batch size must be a multiple of the number of devices ({n}). "
                f"Received: {name}.shape={tuple(value.shape)}. Use a batch of {n}k rows."
            )
        out[name] = jax.device_put(value, sharded)
    return out
