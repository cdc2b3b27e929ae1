"""`gpt2 train --backend tf`: AdamW with warmup + cosine decay, gradient clipping, evaluation, checkpoints, resume,
and data parallelism with `tf.distribute.MirroredStrategy` when more than one device is visible.

Mirrors gpt2_torch/training.py function for function. The data, batch order, schedule and bookkeeping come from
gpt2_core.training; the initial weights come from gpt2_core.reference.init_params (as in torch), so for the same
seed the two trainers start from the same weights and, with dropout off, follow the same loss curve.

The optimizer is a small AdamW written out here rather than `keras.optimizers.AdamW`, so that its arithmetic is
torch.optim.AdamW's step for step: decoupled decay `p *= 1 - lr * wd` before the moment update, bias corrections
computed in float64 on the host, `eps` added to `sqrt(v) / sqrt(1 - beta2^t)`. Gradient clipping is
torch.nn.utils.clip_grad_norm_'s: `coef = min(1, max_norm / (norm + 1e-6))`. The logged grad_norm can differ from
torch's in the fifth digit (torch's float32 norm of the 50257-row embedding gradient is the less accurate one,
checked against float64); Adam is nearly scale invariant, so the loss curves still agree to float32 round-off.

`--batch-size` is the global batch: with N replicas each takes its 1/N slice, the per-replica losses and gradients
are averaged, so the loss curve does not depend on the number of replicas.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core import naming  # noqa: E402
from gpt2_core.tokenization import GPT2TokenizerFast  # noqa: E402
from gpt2_core.training import (  # noqa: E402
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
from gpt2_tf.model import TFGPT2LMHeadModel  # noqa: E402
from gpt2_tf.weights import named_variables  # noqa: E402

logger = logging.getLogger(__name__)

OPTIMIZER_NAME = "optimizer.npz"


def _strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over the GPUs when there are several, else over the (logical) CPUs when there are several;
    otherwise the default (one-device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if gpus else tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


def _load_tokenizer(pretrained: str | None) -> GPT2TokenizerFast:
    if pretrained and (Path(pretrained) / "vocab.json").exists():
        return GPT2TokenizerFast.from_pretrained(pretrained)
    return GPT2TokenizerFast()  # same ids as GPT2Tokenizer (tested), much faster on a corpus


class AdamW:
    """torch.optim.AdamW's update on a model's variables, with weight decay only where `gpt2_core.training.decays`.

    Args:
        model: The model whose variables are trained (built under the strategy's scope).
        tc: beta1, beta2, eps and weight_decay come from here; the learning rate is passed each step.
    """

    def __init__(self, model: TFGPT2LMHeadModel, tc: TrainConfig) -> None:
        names = naming.canonical_names("tf", model.config, model.head)
        self.paths = list(named_variables(model))
        self.params = list(named_variables(model).values())
        self.decay = [tc.weight_decay if decays(names[p]) else 0.0 for p in self.paths]
        self.beta1, self.beta2, self.eps = tc.beta1, tc.beta2, tc.eps
        self.step = 0  # updates done; bias corrections are computed on the host from it, as torch does
        self.m = [tf.Variable(tf.zeros_like(p), trainable=False, name=f"m.{n}") for n, p in zip(self.paths, self.params)]
        self.v = [tf.Variable(tf.zeros_like(p), trainable=False, name=f"v.{n}") for n, p in zip(self.paths, self.params)]

    def scalars(self, lr: float) -> tuple[float, float]:
        """(step size lr / (1 - beta1^t), sqrt(1 - beta2^t)) for the next update, in float64 like torch."""
        t = self.step + 1
        return lr / (1.0 - self.beta1**t), math.sqrt(1.0 - self.beta2**t)

    def apply(self, grads: list[tf.Tensor], lr: tf.Tensor, step_size: tf.Tensor, bc2_sqrt: tf.Tensor) -> None:
        """One update (inside the compiled step; cross-replica context under a strategy)."""
        b1, b2 = self.beta1, self.beta2
        for p, g, m, v, wd in zip(self.params, grads, self.m, self.v, self.decay):
            if wd:
                p.assign(p * (1.0 - lr * wd))
            m.assign(m * b1 + g * (1.0 - b1))
            v.assign(v * b2 + tf.square(g) * (1.0 - b2))
            p.assign_sub(step_size * m / (tf.sqrt(v) / bc2_sqrt + self.eps))

    def state(self) -> dict[str, np.ndarray]:
        out = {"step": np.asarray(self.step, np.int64)}
        for path, m, v in zip(self.paths, self.m, self.v):
            out[f"exp_avg/{path}"] = m.numpy()
            out[f"exp_avg_sq/{path}"] = v.numpy()
        return out

    def load_state(self, state) -> None:
        expected = {"step"} | {f"{k}/{p}" for p in self.paths for k in ("exp_avg", "exp_avg_sq")}
        if set(state) != expected:
            raise ValueError(
                f"The optimizer state does not fit the model. Received: missing={sorted(expected - set(state))[:5]}, "
                f"unexpected={sorted(set(state) - expected)[:5]}. Resume with the same model config."
            )
        self.step = int(state["step"])
        for path, m, v in zip(self.paths, self.m, self.v):
            m.assign(state[f"exp_avg/{path}"])
            v.assign(state[f"exp_avg_sq/{path}"])


def clip_by_global_norm(grads: list[tf.Tensor], max_norm: float) -> tuple[list[tf.Tensor], tf.Tensor]:
    """torch.nn.utils.clip_grad_norm_: (clipped grads, the norm before clipping); max_norm <= 0 only measures."""
    norm = tf.norm(tf.stack([tf.norm(g) for g in grads]))
    if max_norm <= 0:
        return grads, norm
    coef = tf.minimum(max_norm / (norm + 1e-6), 1.0)
    return [g * coef for g in grads], norm


def make_train_step(model: TFGPT2LMHeadModel, optimizer: AdamW, strategy: tf.distribute.Strategy, tc: TrainConfig):
    """A compiled step(batch, lr, step_size, bc2_sqrt) -> (loss, grad_norm), batch the global (B, T) int32 batch.

    One device: the whole step is one XLA program. Several replicas: a graph (not XLA: an XLA cluster cannot read a
    mirrored variable's copy on another device, tensorflow.org/xla/known_issues) in which each replica runs its
    forward/backward on its slice, the gradients are averaged across replicas and the update is applied to every
    copy of the mirrored variables."""
    replicas = strategy.num_replicas_in_sync
    params = optimizer.params

    def loss_and_grads(x):
        with tf.GradientTape() as tape:
            loss = model(input_ids=x, labels=x, training=True).loss
        grads = tape.gradient(loss, params)
        # the tied embedding's gradient arrives as IndexedSlices (lookup) plus a dense part (LM head)
        return loss, [tf.convert_to_tensor(g) for g in grads]

    def update(loss, grads, lr, step_size, bc2_sqrt):
        grads, norm = clip_by_global_norm(grads, tc.grad_clip)
        optimizer.apply(grads, lr, step_size, bc2_sqrt)
        return loss, norm

    if replicas == 1:

        @tf.function(jit_compile=True)
        def step(x, lr, step_size, bc2_sqrt):
            loss, grads = loss_and_grads(x)
            return update(loss, grads, lr, step_size, bc2_sqrt)

        return step

    per_replica = tc.batch_size // replicas

    @tf.function
    def distributed(x, lr, step_size, bc2_sqrt):
        def split(ctx):
            i = ctx.replica_id_in_sync_group
            return x[i * per_replica : (i + 1) * per_replica]

        xs = strategy.experimental_distribute_values_from_function(split)
        losses, grads = strategy.run(loss_and_grads, args=(xs,))
        mean = tf.distribute.ReduceOp.MEAN
        loss = strategy.reduce(mean, losses, axis=None)
        grads = [strategy.reduce(mean, g, axis=None) for g in grads]
        return update(loss, grads, lr, step_size, bc2_sqrt)

    def step(x, lr, step_size, bc2_sqrt):
        with strategy.scope():
            return distributed(x, lr, step_size, bc2_sqrt)

    return step


def make_eval_step(model: TFGPT2LMHeadModel):
    @tf.function(jit_compile=True)
    def eval_step(x):
        return model(input_ids=x, labels=x, training=False).loss

    return eval_step


def evaluate(eval_step, batches: list[np.ndarray]) -> float:
    losses = [float(eval_step(tf.constant(b))) for b in batches]
    return float(np.mean(losses)) if losses else float("nan")


def save_checkpoint(model, optimizer, tokenizer, directory: Path, step: int, tc: TrainConfig, extra: dict) -> None:
    """A Hub-layout model directory plus optimizer and trainer state; the state file is written last, so a
    directory without it is incomplete and ignored by resume."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if optimizer is not None:
        tmp = directory / (OPTIMIZER_NAME + ".tmp")
        with open(tmp, "wb") as f:
            np.savez(f, **optimizer.state())
        os.replace(tmp, directory / OPTIMIZER_NAME)
    write_state(directory, step, tc, extra)


def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a TFGPT2LMHeadModel; returns the final metrics."""
    strategy = _strategy()
    world = strategy.num_replicas_in_sync
    if tc.batch_size % world:
        raise ValueError(f"--batch-size must be divisible by the number of replicas. Received: {tc.batch_size}, {world} replicas.")
    out = Path(tc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, pretrained = resolve_model_config(tc)
    tokenizer = _load_tokenizer(pretrained)
    ds = build_dataset(collect_text_files(tc.data), tokenizer, tc.block_size, config.n_positions, tc.eval_fraction)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"The model's vocab_size is smaller than the tokenizer's. Received: {config.vocab_size} < {tokenizer.vocab_size}.")

    start_step = 0
    resume_dir = last_checkpoint(out) if tc.resume else None
    keras.utils.set_random_seed(tc.seed)  # dropout (its masks differ from torch's: equal curves need dropout 0)
    with strategy.scope():
        if resume_dir is not None:
            model = TFGPT2LMHeadModel.from_pretrained(resume_dir)
            start_step = int(read_state(resume_dir)["step"])
            logger.info("Resuming from %s (step %d)", resume_dir, start_step)
        elif pretrained is not None:
            model = TFGPT2LMHeadModel.from_pretrained(pretrained, config=config)
        else:
            model = TFGPT2LMHeadModel.from_config(config, seed=tc.seed)
        optimizer = AdamW(model, tc)
        if resume_dir is not None and (resume_dir / OPTIMIZER_NAME).exists():
            with np.load(resume_dir / OPTIMIZER_NAME, allow_pickle=False) as state:
                optimizer.load_state(dict(state))
    train_step = make_train_step(model, optimizer, strategy, tc)
    eval_step = make_eval_step(model)

    log = MetricsLog(out / METRICS_NAME)
    if start_step == 0:
        log.write(event="start", backend="tf", world_size=world, n_params=model.num_parameters(), n_tokens=ds.n_tokens,
                  train_blocks=len(ds.train), eval_blocks=len(ds.eval), eval_files=ds.eval_files,
                  unigram_eval_loss=unigram_loss(ds, config.vocab_size), train_config=tc.to_json())
    per_replica = tc.batch_size // world
    batches = ds.batches(tc.batch_size, tc.seed, start_step)
    eval_set = ds.eval_batches(max(1, per_replica), tc.eval_batches)  # torch's rank 0 evaluates its per-rank batch
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", unit="step")
    t0, tokens, last = time.perf_counter(), 0, {}
    for step in range(start_step, tc.max_steps):
        batch = next(batches)
        lr = learning_rate(step, tc)
        step_size, bc2_sqrt = optimizer.scalars(lr)
        loss, grad_norm = train_step(tf.constant(batch), tf.constant(lr, tf.float32), tf.constant(step_size, tf.float32),
                                     tf.constant(bc2_sqrt, tf.float32))
        optimizer.step += 1
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
            eval_loss = evaluate(eval_step, eval_set)
            last.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
            log.write(step=done, eval_loss=eval_loss, eval_perplexity=last["eval_perplexity"])
        if tc.save_every and done % tc.save_every == 0 and done != tc.max_steps:
            save_checkpoint(model, optimizer, tokenizer, out / f"checkpoint-{done}", done, tc, last)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    save_checkpoint(model, optimizer, tokenizer, out / f"checkpoint-{tc.max_steps}", tc.max_steps, tc, last)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    log.write(event="end", **last)
    return last
