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

`train_lm` is `gpt2 train --backend flax`: the loop of gpt2_torch/training.py (the reference trainer) in JAX, on the
same data, batch order, schedule and bookkeeping (gpt2_core.training), with the batch sharded over all local devices.

References: optax `adamw`, `warmup_cosine_decay_schedule`, `clip_by_global_norm`; flax NNX guides "Performance
considerations" and "Scale up on multiple devices"; nanoGPT `train.py` (decay only matrices).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from gpt2_core import naming
from gpt2_core.hub import atomic_path
from gpt2_core.tokenization import GPT2TokenizerFast
from gpt2_core.training import (
    METRICS_NAME,
    MetricsLog,
    TrainConfig,
    build_dataset,
    collect_text_files,
    decays,
    last_checkpoint,
    learning_rate,
    read_state,
    resolve_model_config,
    unigram_loss,
    write_state,
)

logger = logging.getLogger(__name__)

DATA_AXIS = "data"
OPTIMIZER_NAME = "optimizer.npz"


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
    """torch.optim.AdamW at unit learning rate over the model's flat `{path: array}` parameters.

    Decay follows gpt2_core.training.decays (matrices only: not biases, LayerNorm or the embeddings), as the torch
    trainer's parameter groups do. The step multiplies the update by the step's learning rate itself, so the rate is
    exactly `gpt2_core.training.learning_rate(step, tc)`: optax's `warmup_cosine_decay_schedule` (make_schedule)
    starts its warmup at 0 where the shared schedule starts at `peak / warmup_steps`. Adam's eps is added to
    sqrt(v_hat) in both (torch: `v.sqrt() / sqrt(bc2) + eps`; optax: `sqrt(v / bc2) + eps`).
    """
    mask = lm_decay_mask(model)
    return optax.adamw(1.0, b1=hp.beta1, b2=hp.beta2, eps=hp.eps, weight_decay=hp.weight_decay, mask=mask)


def lm_decay_mask(model: nnx.Module) -> dict[str, bool]:
    """{flax parameter path: decayed?} by the parameter's canonical name (gpt2_core.training.decays)."""
    names = naming.canonical_names("flax", model.config, model.head)
    return {path: decays(names[path]) for path in _param_vars(model)}


@functools.partial(nnx.jit, static_argnames=("hp",))
def lm_train_step(
    model: nnx.Module, opt_state: Any, input_ids: jax.Array, lr: jax.Array, hp: AdamWConfig
) -> tuple[Any, jax.Array, jax.Array]:
    """One AdamW step of a language model on (B, T) `input_ids` (the labels too), dropout on.

    Returns (new optimizer state, loss before the update, gradient norm before clipping); the model is updated in
    place. Clipping is torch's `clip_grad_norm_` (scale by `clip / (norm + 1e-6)` when below 1), not optax's
    `clip_by_global_norm` (`clip / norm`), so the two trainers follow the same curve.
    """

    def loss_fn(model: nnx.Module) -> jax.Array:
        return model(input_ids=input_ids, labels=input_ids, deterministic=False).loss

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    grads = _flat(grads)
    grad_norm = optax.global_norm(grads)
    if hp.grad_clip > 0:
        scale = jnp.minimum(1.0, hp.grad_clip / (grad_norm + 1e-6))
        grads = jax.tree.map(lambda g: g * scale, grads)
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
    """Fill `template` (a fresh optimizer state of the same model and optimizer) with the leaves saved in `path`."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    with np.load(path, allow_pickle=False) as saved:
        saved = dict(saved)
    names = [jax.tree_util.keystr(k) for k, _ in flat]
    wrong = [f"{n}: expected {tuple(np.shape(v))}, found {saved[n].shape}" for n, (_, v) in zip(names, flat)
             if n in saved and saved[n].shape != tuple(np.shape(v))]
    if set(names) != set(saved) or wrong:
        raise ValueError(
            f"The optimizer state does not fit the model. Received: {str(path)!r} with missing="
            f"{sorted(set(names) - set(saved))[:5]}, unexpected={sorted(set(saved) - set(names))[:5]}, wrong shapes="
            f"{wrong[:5]}. Resume with the model and optimizer settings that wrote it, or start a new --output-dir."
        )
    leaves = [jnp.asarray(saved[n], dtype=jnp.asarray(v).dtype) for n, (_, v) in zip(names, flat)]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def _load_tokenizer(pretrained: str | None) -> GPT2TokenizerFast:
    if pretrained and (Path(pretrained) / "vocab.json").exists():
        return GPT2TokenizerFast.from_pretrained(pretrained)
    return GPT2TokenizerFast()  # same ids as GPT2Tokenizer (tested), much faster on a corpus


def evaluate(model: nnx.Module, batches: list[Any]) -> float:
    losses = [float(eval_step(model, {"input_ids": b, "labels": b})) for b in batches]
    return float(np.mean(losses)) if losses else float("nan")


def save_checkpoint(model, opt_state, tokenizer, directory: Path, step: int, tc: TrainConfig, extra: dict) -> None:
    """A Hub-layout model directory plus optimizer and trainer state; the state file is written last, so a
    directory without it is incomplete and ignored by resume."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if opt_state is not None:
        save_optimizer_state(opt_state, directory / OPTIMIZER_NAME)
    write_state(directory, step, tc, extra)


def train_lm(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a FlaxGPT2LMHeadModel as gpt2_torch.training.train does; returns the final metrics.

    With more than one JAX device the parameters and optimizer state are replicated and each global batch is split
    across a one-axis mesh (`make_mesh`), so the loss curve does not depend on the number of devices. One process:
    every device the process sees.
    """
    from gpt2_flax.model import FlaxGPT2LMHeadModel, default_rngs

    if jax.process_count() > 1:
        raise ValueError(
            f"gpt2 train --backend flax runs in one process. Received: jax.process_count()={jax.process_count()}. "
            "Start it once (it uses every device of that process), or use --backend torch with torchrun across hosts."
        )
    world = jax.device_count()
    if tc.batch_size % world:
        raise ValueError(
            f"--batch-size must be divisible by the number of devices. Received: batch_size={tc.batch_size}, "
            f"{world} devices. Use a multiple of {world}."
        )
    out = Path(tc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, pretrained = resolve_model_config(tc)
    tokenizer = _load_tokenizer(pretrained)
    ds = build_dataset(collect_text_files(tc.data), tokenizer, tc.block_size, config.n_positions, tc.eval_fraction)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"The model's vocab_size is smaller than the tokenizer's. Received: {config.vocab_size} < {tokenizer.vocab_size}.")

    start_step = 0
    resume_dir = last_checkpoint(out) if tc.resume else None
    if resume_dir is not None:
        model = FlaxGPT2LMHeadModel.from_pretrained(resume_dir, rngs=default_rngs(tc.seed))
        start_step = int(read_state(resume_dir)["step"])
        logger.info("Resuming from %s (step %d)", resume_dir, start_step)
    elif pretrained is not None:
        model = FlaxGPT2LMHeadModel.from_pretrained(pretrained, config=config, rngs=default_rngs(tc.seed))
    else:
        # gpt2_core.reference.init_params(config, "lm", seed): the torch trainer's initial weights for the same seed
        model = FlaxGPT2LMHeadModel.from_config(config, seed=tc.seed)
    hp = AdamWConfig.from_train_config(tc)
    opt_state = init_lm_optimizer_state(model, hp)
    if resume_dir is not None and (resume_dir / OPTIMIZER_NAME).exists():
        opt_state = load_optimizer_state(opt_state, resume_dir / OPTIMIZER_NAME)
    mesh = make_mesh() if world > 1 else None
    if mesh is not None:
        replicate(mesh, model)
        opt_state = jax.device_put(opt_state, NamedSharding(mesh, PartitionSpec()))

    def place(batch: np.ndarray) -> jax.Array:
        return shard_batch(mesh, {"x": batch})["x"] if mesh is not None else jnp.asarray(batch)

    log = MetricsLog(out / METRICS_NAME)
    if start_step == 0:
        log.write(event="start", backend="flax", world_size=world, n_params=model.num_parameters(), n_tokens=ds.n_tokens,
                  train_blocks=len(ds.train), eval_blocks=len(ds.eval), eval_files=ds.eval_files,
                  unigram_eval_loss=unigram_loss(ds, config.vocab_size), train_config=tc.to_json())
    batches = ds.batches(tc.batch_size, tc.seed, start_step)
    # Every device evaluates its share of a global batch (torch evaluates one process's slice on rank 0): with one
    # device the two are the same batches.
    eval_set = [place(b) for b in ds.eval_batches(tc.batch_size, tc.eval_batches)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", unit="step")
    t0, tokens, last = time.perf_counter(), 0, {}
    for step in range(start_step, tc.max_steps):
        batch = next(batches)
        lr = learning_rate(step, tc)
        opt_state, loss, grad_norm = lm_train_step(model, opt_state, place(batch), jnp.float32(lr), hp)
        tokens += batch.size
        loss_value = float(loss)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"The loss became {loss_value} at step {step}. Lower --learning-rate.")
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            rate = tokens / (time.perf_counter() - t0)
            log.write(step=done, loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=rate)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
        last = {"step": done, "loss": loss_value}
        if (done % tc.eval_every == 0 or done == tc.max_steps) and eval_set:
            eval_loss = evaluate(model, eval_set)
            last.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
            log.write(step=done, eval_loss=eval_loss, eval_perplexity=last["eval_perplexity"])
        if tc.save_every and done % tc.save_every == 0 and done != tc.max_steps:
            save_checkpoint(model, opt_state, tokenizer, out / f"checkpoint-{done}", done, tc, last)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    save_checkpoint(model, opt_state, tokenizer, out / f"checkpoint-{tc.max_steps}", tc.max_steps, tc, last)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.write(event="end", **last)
    return last
