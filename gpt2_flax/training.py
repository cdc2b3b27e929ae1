"""Training gpt2_flax models with optax: AdamW on gpt2_core.training's schedule and decay rule, torch's gradient
clipping, a compiled train step for every head, and data parallelism across devices with `jax.sharding`.

    model = FlaxGPT2LMHeadModel(config, rngs=default_rngs(0))
    optimizer = make_optimizer(model, learning_rate=3e-4, warmup_steps=100, total_steps=5000)
    for batch in batches:                      # dicts of the model's arguments: input_ids, labels, ...
        loss = train_step(model, optimizer, batch)

Data parallel (one process, all local devices): put full copies of the parameters and optimizer state on every
device, split each batch along its first axis, and call the same `train_step`; XLA inserts the gradient all-reduce.

    mesh = make_mesh()
    replicate(mesh, model, optimizer)
    loss = train_step(model, optimizer, shard_batch(mesh, batch))

`train_lm` is `gpt2 train --backend flax`: gpt2_core.training's loop (`run_training`) with `FlaxTrainer`, the batch
sharded over every device of every JAX process (`jax.distributed` when the environment starts several; the mesh,
`--shard-params` (FSDP) and the host gathers for saving are gpt2_flax/sharding.py's; docs/scaling.md). Both paths
use one optimizer: `make_lm_adamw` (torch.optim.AdamW's arithmetic at unit rate, decay where
`gpt2_core.training.decays`), `clip_by_global_norm` (torch's `clip_grad_norm_`) and the rate
of `gpt2_core.training.learning_rate` (`make_optimizer` reads it from `make_schedule`, the loop passes it per step).

`--bf16` (`TrainConfig.precision == "bf16"`) is transformers 4.x Flax's mixed precision: the model built for
training computes in `dtype=jnp.bfloat16` (`gpt2_flax.weights.set_compute_dtype`: every Linear, Embed and LayerNorm
casts its inputs and parameters to it) over `param_dtype=jnp.float32` parameters, so the gradients, the optax state
and the saved checkpoint are float32. LayerNorm statistics (flax's rule), the attention softmax and the loss
(gpt2_flax.model) are float32.

References: optax `adamw`, `scale_by_schedule`; flax NNX guides "Performance considerations" and "Scale up on
multiple devices"; nanoGPT `train.py` (decay only matrices).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt2_core import naming
from gpt2_core import training as core
from gpt2_core.config import GPT2Config
from gpt2_core.hub import atomic_path
from gpt2_core.training import TrainConfig, decays, run_training

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
OPTIMIZER_NAME = "optimizer.npz"


def make_schedule(
    learning_rate: float, warmup_steps: int, total_steps: int, end_learning_rate: float | None = None
) -> optax.Schedule:
    """gpt2_core.training.learning_rate as an optax schedule: linear warmup to `learning_rate` over `warmup_steps`
    (step 0 at `learning_rate / warmup_steps`), then cosine decay to `end_learning_rate` (default
    `learning_rate / 10`) at `total_steps`, constant after.

    The core's rates are tabulated once (float32, one per step up to `total_steps`), so every step gets exactly the
    rate the `gpt2 train` loop uses for it.
    """
    if warmup_steps < 0 or total_steps <= warmup_steps:
        raise ValueError(
            f"Need 0 <= warmup_steps < total_steps. Received: warmup_steps={warmup_steps}, total_steps={total_steps}."
        )
    end = learning_rate / 10 if end_learning_rate is None else end_learning_rate
    tc = TrainConfig(learning_rate=learning_rate, warmup_steps=warmup_steps, max_steps=total_steps,
                     min_lr_ratio=end / learning_rate if learning_rate else 0.0)
    table = np.asarray([core.learning_rate(step, tc) for step in range(total_steps + 1)], np.float32)

    def schedule(count: jax.Array) -> jax.Array:
        return jnp.asarray(table)[jnp.minimum(count, total_steps)]

    return schedule


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
    """An `nnx.Optimizer` over the model's parameters, the optimizer of `gpt2 train`: clip the gradient as torch's
    `clip_grad_norm_`, AdamW with decay where `gpt2_core.training.decays`, at `make_schedule`'s rate.

    Args:
        model: The model to train (any head).
        learning_rate: Peak learning rate, reached at step `warmup_steps - 1`.
        warmup_steps: Steps of linear warmup (gpt2_core.training.learning_rate).
        total_steps: Step at which the cosine decay reaches `end_learning_rate`.
        end_learning_rate: Final learning rate; `learning_rate / 10` by default.
        weight_decay: Decoupled weight decay, applied to the matrices of projections and heads only (not biases,
            LayerNorm or the embeddings).
        b1, b2, eps: Adam's moment decay rates and epsilon.
        max_grad_norm: Clip the gradient to this global L2 norm; None or 0: no clipping.
    """
    hp = AdamWConfig(float(b1), float(b2), float(eps), float(weight_decay), float(max_grad_norm or 0.0))
    tx = optax.chain(
        _clip_transform(hp.grad_clip),
        make_lm_adamw(model, hp),
        optax.scale_by_schedule(make_schedule(learning_rate, warmup_steps, total_steps, end_learning_rate)),
    )
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


# -- `gpt2 train --backend flax` ---------------------------------------------------------------------------------


class AdamWConfig(NamedTuple):
    """The optimizer's hyperparameters, hashable so the compiled step is reused by every run that shares them."""

    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    grad_clip: float

    @classmethod
    def from_train_config(cls, tc: TrainConfig) -> "AdamWConfig":
        return cls(float(tc.beta1), float(tc.beta2), float(tc.eps), float(tc.weight_decay), float(tc.grad_clip))


def _param_vars(model: nnx.Module) -> dict[str, nnx.Variable]:
    # {flax path: the Param itself}: the paths gpt2_core.naming's "flax" table uses (see gpt2_flax/weights.py).
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _flat(state: nnx.State) -> dict[str, jax.Array]:
    return {".".join(str(p) for p in path): var.get_value() for path, var in nnx.to_flat_state(state)}


def make_lm_adamw(model: nnx.Module, hp: AdamWConfig) -> optax.GradientTransformation:
    """torch.optim.AdamW at unit learning rate over the model's parameters (flat `{path: array}` or nested state).

    Decay follows gpt2_core.training.decays (matrices only: not biases, LayerNorm or the embeddings), as the torch
    trainer's parameter groups do. The caller multiplies the update by the step's learning rate
    (`gpt2_core.training.learning_rate`): `lm_train_step` by the rate it is given, `make_optimizer` by
    `make_schedule`. Adam's eps is added to sqrt(v_hat) in both torch (`v.sqrt() / sqrt(bc2) + eps`) and optax
    (`sqrt(v / bc2) + eps`).
    """
    return optax.adamw(1.0, b1=hp.beta1, b2=hp.beta2, eps=hp.eps, weight_decay=hp.weight_decay,
                       mask=_tree_mask(lm_decay_mask(model)))


def lm_decay_mask(model: nnx.Module) -> dict[str, bool]:
    """{flax parameter path: decayed?} by the parameter's canonical name (gpt2_core.training.decays)."""
    names = naming.canonical_names("flax", model.config, model.head)
    return {path: decays(names[path]) for path in _param_vars(model)}


def _tree_mask(mask: dict[str, bool]):
    """`mask` as an optax mask function for any tree of the parameters: the flat `{path: array}` dict of
    `lm_train_step` or the nested nnx state `nnx.Optimizer` passes (its dict keys joined by dots are the path)."""

    def leaf(key_path, _) -> bool:
        return mask[".".join(str(k.key) for k in key_path if isinstance(k, jax.tree_util.DictKey))]

    return lambda params: jax.tree_util.tree_map_with_path(leaf, params)


def clip_by_global_norm(grads: Any, max_norm: float) -> tuple[Any, jax.Array]:
    """torch.nn.utils.clip_grad_norm_: (clipped grads, the norm before clipping); max_norm <= 0 only measures.

    Scales by `max_norm / (norm + 1e-6)` when below 1, not optax's `clip_by_global_norm` (`max_norm / norm`), so
    the Flax and torch trainers follow the same curve."""
    norm = optax.global_norm(grads)
    if max_norm <= 0:
        return grads, norm
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale, grads), norm


def _clip_transform(max_norm: float) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        return clip_by_global_norm(updates, max_norm)[0], state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


@functools.partial(nnx.jit, static_argnames=("hp",))
def lm_train_step(
    model: nnx.Module, opt_state: Any, input_ids: jax.Array, lr: jax.Array, hp: AdamWConfig
) -> tuple[Any, jax.Array, jax.Array]:
    """One AdamW step of a language model on (B, T) `input_ids` (the labels too), dropout on.

    Returns (new optimizer state, loss before the update, gradient norm before clipping); the model is updated in
    place. The optimizer of `make_optimizer` (clip, `make_lm_adamw`, times the rate) with the rate `lr` given.
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        return model(input_ids=input_ids, labels=input_ids, deterministic=False).loss

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    grads, grad_norm = clip_by_global_norm(_flat(grads), hp.grad_clip)
    variables = _param_vars(model)
    params = {path: var.get_value() for path, var in variables.items()}
    updates, opt_state = make_lm_adamw(model, hp).update(grads, opt_state, params)
    for path, var in variables.items():
        var.set_value(params[path] + lr * updates[path])  # updates are already negated (descent)
    return opt_state, loss, grad_norm


def init_lm_optimizer_state(model: nnx.Module, hp: AdamWConfig) -> Any:
    return make_lm_adamw(model, hp).init({path: var.get_value() for path, var in _param_vars(model).items()})


def save_optimizer_state(opt_state: Any, path: Path) -> None:
    """The optax state's leaves as NumPy arrays in an .npz, named by their pytree paths (no pickle)."""
    leaves = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_flatten_with_path(opt_state)[0]}
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **leaves)


def load_optimizer_state(template: Any, path: Path) -> Any:
    """Fill `template` (a fresh optimizer state of the same model and optimizer, or its `jax.eval_shape`) with the
    leaves saved in `path`."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path, allow_pickle=False) as saved:
        saved = dict(saved)
    names = [jax.tree_util.keystr(k) for k, _ in flat]
    wrong = [f"{n}: expected {tuple(v.shape)}, found {saved[n].shape}" for n, (_, v) in zip(names, flat)
             if n in saved and saved[n].shape != tuple(v.shape)]
    if set(names) != set(saved) or wrong:
        raise ValueError(
            f"The optimizer state does not fit the model. Received: {str(path)!r} with missing="
            f"{sorted(set(names) - set(saved))[:5]}, unexpected={sorted(set(saved) - set(names))[:5]}, wrong shapes="
            f"{wrong[:5]}. Resume with the model and optimizer settings that wrote it, or start a new --output-dir."
        )
    leaves = [jnp.asarray(saved[n], dtype=v.dtype) for n, (_, v) in zip(names, flat)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


class FlaxTrainer:
    """gpt2_core.training.TrainerBackend for a FlaxGPT2LMHeadModel: every device of every JAX process.

    Several processes (`gpt2_flax.sharding.initialize_distributed`: `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`,
    `JAX_PROCESS_ID`, or a cluster JAX detects) share one global mesh; each process feeds its rows of the global
    batch, process 0 writes metrics and checkpoints (`rank = jax.process_index()`), and `evaluate` / `save` are
    collective. With more than one device the parameters and optimizer state are replicated over the mesh, or with
    `--shard-params` split over its "data" axis (FSDP, `gpt2_flax.sharding.param_specs`); either way the loss
    curve does not depend on the number of devices or processes.
    """

    name = "flax"
    world_unit = "devices"

    def __init__(self) -> None:
        from gpt2_flax import sharding

        sharding.initialize_distributed()  # before anything touches a device
        self.rank = jax.process_index()
        self.world_size = jax.device_count()
        self.collective = jax.process_count() > 1

    def build(self, tc: TrainConfig, *, config: GPT2Config | None, weights: str | Path | None,
              optimizer_state: Path | None) -> None:
        from gpt2_flax import sharding
        from gpt2_flax.model import FlaxGPT2LMHeadModel, default_rngs
        from gpt2_flax.weights import set_compute_dtype

        # every process has checked --output-dir (run_training) before process 0 writes the first metrics line
        sharding.barrier("gpt2 train: output directory checked")
        self.hp = AdamWConfig.from_train_config(tc)
        self.mesh = sharding.make_mesh() if self.world_size > 1 or tc.shard_params else None
        # sharded: assemble the full model in host memory, so no device ever holds more than its shards
        host = jax.local_devices(backend="cpu")[0] if tc.shard_params else None
        with jax.default_device(host):
            if weights is None:
                # gpt2_core.reference.init_params(config, "lm", seed): the torch trainer's initial weights for the seed
                model = FlaxGPT2LMHeadModel.from_config(config, seed=tc.seed)
            else:
                model = FlaxGPT2LMHeadModel.from_pretrained(weights, config=config, rngs=default_rngs(tc.seed))
            if tc.precision == "bf16":
                set_compute_dtype(model, jnp.bfloat16)  # the parameters stay float32
                logger.info("Training in bf16 mixed precision: compute dtype bfloat16, parameters, gradients and "
                            "optax state float32.")
            tx = make_lm_adamw(model, self.hp)
            params = lambda: {path: var.get_value() for path, var in _param_vars(model).items()}  # noqa: E731
            template = jax.eval_shape(tx.init, params())
            saved = optimizer_state / OPTIMIZER_NAME if optimizer_state is not None else None
            opt_state = load_optimizer_state(template, saved) if saved is not None and saved.exists() else None
        if self.mesh is None:
            opt_state = tx.init(params()) if opt_state is None else opt_state
        else:
            shardings = sharding.shard_model(model, self.mesh, fsdp=tc.shard_params, tensor_parallel=False)
            placement = sharding.state_shardings(template, shardings, self.mesh)
            if opt_state is None:  # made in place, each device only its shards
                opt_state = jax.jit(tx.init, out_shardings=placement)(params())
            else:
                opt_state = sharding.place(opt_state, placement)
        self.model, self.opt_state = model, opt_state

    def _place(self, batch: np.ndarray) -> jax.Array:
        from gpt2_flax import sharding

        return sharding.global_batch(self.mesh, batch) if self.mesh is not None else jnp.asarray(batch)

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def step(self, batch: np.ndarray, lr: float) -> tuple[jax.Array, jax.Array]:
        self.opt_state, loss, grad_norm = lm_train_step(self.model, self.opt_state, self._place(batch), jnp.float32(lr),
                                                        self.hp)
        return loss, grad_norm

    def eval_batch_size(self, tc: TrainConfig) -> int:
        # Every device evaluates its share of a global batch (torch evaluates one process's slice on rank 0): with
        # one device the two are the same batches.
        return tc.batch_size

    def evaluate(self, batches: list[np.ndarray]) -> float:
        losses = []
        for b in batches:
            x = self._place(b)
            losses.append(float(eval_step(self.model, {"input_ids": x, "labels": x})))
        return float(np.mean(losses)) if losses else float("nan")

    def save(self, directory: Path | None, *, optimizer: bool) -> None:
        # collective with several processes: every process gathers the shards, process 0 (a directory) writes
        from gpt2_flax import sharding

        model = sharding.host_model(self.model) if self.mesh is not None else self.model
        opt_state = sharding.to_host(self.opt_state) if optimizer else None
        if directory is None:
            return
        model.save_pretrained(directory)
        if optimizer:
            save_optimizer_state(opt_state, directory / OPTIMIZER_NAME)

    def sync(self) -> None:
        pass

    def close(self) -> None:
        from gpt2_flax import sharding

        sharding.barrier("gpt2 train: done")  # no process leaves while process 0 still writes


def train_lm(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a FlaxGPT2LMHeadModel with gpt2_core.training's loop, as gpt2_torch.training.train
    does; returns the final metrics."""
    return run_training(tc, FlaxTrainer(), progress=progress)


train = train_lm  # the name the torch and TF backends use
