"""`gpt2 train --backend tf`: the TensorFlow parts of gpt2_core.training's loop: AdamW, gradient clipping, a
compiled step, and data parallelism with `tf.distribute.MirroredStrategy` when more than one device is visible.

Mirrors gpt2_torch/training.py. The loop (data, batch order, schedule, evaluation, checkpoints, resume) is
gpt2_core.training's; the initial weights come from gpt2_core.reference.init_params (as in torch), so for the same
seed the two trainers start from the same weights and, with dropout off, follow the same loss curve.

The optimizer is a small AdamW written out here rather than `keras.optimizers.AdamW`, so that its arithmetic is
torch.optim.AdamW's step for step: decoupled decay `p *= 1 - lr * wd` before the moment update, bias corrections
computed in float64 on the host, `eps` added to `sqrt(v) / sqrt(1 - beta2^t)`. Gradient clipping is
torch.nn.utils.clip_grad_norm_'s: `coef = min(1, max_norm / (norm + 1e-6))`. The logged grad_norm can differ from
torch's in the fifth digit (torch's float32 norm of the 50257-row embedding gradient is the less accurate one,
checked against float64); Adam is nearly scale invariant, so the loss curves still agree to float32 round-off.

`--batch-size` is the global batch: with N replicas each takes its 1/N slice, the per-replica losses and gradients
are averaged, so the loss curve does not depend on the number of replicas.

Several machines: when `TF_CONFIG` names a cluster of more than one worker (`chief` and `worker` tasks), the
strategy is `tf.distribute.MultiWorkerMirroredStrategy` (tensorflow.org/tutorials/distribute/multi_worker_with_ctl):
one process per worker, each running the whole loop on the same global batch and taking its replicas' rows of it
(`experimental_distribute_values_from_function`, by global replica id), gradients all-reduced by TF's collective
ops. `rank` is the worker's index (the chief, or worker 0 without one, is rank 0). The trainer is then `collective`:
every worker takes part in evaluation and saving, and only rank 0 writes (TF's guide has non-chief workers save to a
throwaway directory; here they write nothing, since reading a mirrored variable needs no collective op).

`--bf16` (`TrainConfig.precision == "bf16"`) builds the model under the Keras `"mixed_bfloat16"` dtype policy
(keras.io/api/mixed_precision/policy): its variables (and so the gradients, this AdamW's moments and the saved
checkpoint) are float32, and every layer computes in bfloat16, reading its variables cast to bfloat16. LayerNorm
computes its statistics in float32 (`keras.ops.layer_normalization` upcasts half-precision inputs), and
gpt2_tf.model keeps the attention softmax and the loss in float32. No loss scaling: bf16 has float32's range
(Keras' `LossScaleOptimizer` is for float16).

`--shard-params` is refused (`SHARD_PARAMS_UNSUPPORTED`): nothing in tf.distribute shards a Keras 3 model's
variables for synchronous training. `ParameterServerStrategy` (variable partitioners -> `ShardedVariable`) is
asynchronous, places the shards on CPU parameter-server tasks rather than on the accelerators, and is not supported
by Keras 3 (keras-team/keras#18624); Keras 3's `keras.distribution.ModelParallel` / `LayoutMap` shards on the JAX
backend only (keras.io/guides/distribution; its TensorFlow backend is a DTensor prototype marked "DO NOT USE",
keras/src/backend/tensorflow/distribution_lib.py). Train with `--backend flax --shard-params` (NamedSharding) or
`--backend torch --shard-params` (FSDP2) and load the checkpoint into TF with `TFGPT2LMHeadModel.from_pretrained`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core import naming  # noqa: E402
from gpt2_core.config import GPT2Config  # noqa: E402
from gpt2_core.hub import atomic_path  # noqa: E402
from gpt2_core.training import TrainConfig, decays, run_training  # noqa: E402
from gpt2_tf.model import TFGPT2LMHeadModel  # noqa: E402
from gpt2_tf.weights import named_variables  # noqa: E402

logger = logging.getLogger(__name__)

OPTIMIZER_NAME = "optimizer.npz"

# `TrainConfig.precision` -> the Keras dtype policy of the model built for training
DTYPE_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16"}

SHARD_PARAMS_UNSUPPORTED = (
    "--shard-params is not available with --backend tf: tf.distribute has no synchronous parameter sharding for a "
    "Keras 3 model (ParameterServerStrategy is asynchronous, keeps the shards on CPU parameter servers and is not "
    "supported by Keras 3; keras.distribution.ModelParallel shards on the JAX backend only). Received: "
    "shard_params=True, backend='tf'. Train with --backend flax --shard-params or --backend torch --shard-params "
    "(the checkpoint loads into TFGPT2LMHeadModel.from_pretrained), or drop --shard-params for data parallel "
    "training (MirroredStrategy / MultiWorkerMirroredStrategy)."
)


def _cluster() -> tf.distribute.cluster_resolver.TFConfigClusterResolver | None:
    """TF_CONFIG's cluster when it names more than one worker (`chief` + `worker` tasks), else None."""
    if not os.environ.get("TF_CONFIG"):
        return None
    try:
        resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
        spec = resolver.cluster_spec()
    except (ValueError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ValueError(
            f"TF_CONFIG is not a valid cluster description ({e}). Received: TF_CONFIG={os.environ['TF_CONFIG']!r}. "
            'Set it to JSON like {"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
            '"index": 0}}, or unset it for one process.'
        ) from None
    jobs = spec.as_dict()
    workers = sum(len(jobs.get(job, ())) for job in ("chief", "worker"))
    if workers <= 1:
        return None
    if resolver.task_type not in ("chief", "worker") or resolver.task_id is None:
        raise ValueError(
            "TF_CONFIG's task is not a training worker. Received: task type="
            f"{resolver.task_type!r}, index={resolver.task_id!r}. `gpt2 train` runs synchronous data parallel "
            "training (MultiWorkerMirroredStrategy): give each process a task of type 'chief' or 'worker' (no 'ps' "
            "or 'evaluator' tasks)."
        )
    return resolver


def _rank(resolver: tf.distribute.cluster_resolver.TFConfigClusterResolver) -> int:
    """The worker's index: the chief is 0 and the workers follow it; without a chief, worker i is i."""
    has_chief = bool(resolver.cluster_spec().as_dict().get("chief"))
    if resolver.task_type == "chief":
        return 0
    return int(resolver.task_id) + (1 if has_chief else 0)


def _strategy(resolver: tf.distribute.cluster_resolver.TFConfigClusterResolver | None = None) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy over TF_CONFIG's workers when `resolver` is given; else MirroredStrategy over the
    GPUs when there are several, else over the (logical) CPUs when there are several; otherwise the default
    (one-device) strategy."""
    if resolver is not None:
        # created before anything initialises TF's runtime (it configures the collective ops of the eager context)
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if gpus else tf.config.list_logical_devices("CPU")
    if len(devices) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    return tf.distribute.get_strategy()


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


class TFTrainer:
    """gpt2_core.training.TrainerBackend for a TFGPT2LMHeadModel; `_strategy()`'s replicas in one process, or one
    process per worker of a TF_CONFIG cluster (MultiWorkerMirroredStrategy).

    Constructing it picks the strategy (MultiWorkerMirroredStrategy when TF_CONFIG names several workers,
    MirroredStrategy when several devices are visible); `world_size` counts the replicas of every worker.
    """

    name = "tf"
    world_unit = "replicas"

    def __init__(self) -> None:
        resolver = _cluster()
        self.strategy = _strategy(resolver)
        self.world_size = self.strategy.num_replicas_in_sync
        self.rank = _rank(resolver) if resolver is not None else 0
        self.collective = resolver is not None  # every worker evaluates and saves; rank 0 alone writes

    def build(self, tc: TrainConfig, *, config: GPT2Config | None, weights: str | Path | None,
              optimizer_state: Path | None) -> None:
        if tc.shard_params:
            raise ValueError(SHARD_PARAMS_UNSUPPORTED)
        keras.utils.set_random_seed(tc.seed)  # dropout (its masks differ from torch's: equal curves need dropout 0)
        policy = DTYPE_POLICIES[tc.precision]
        if tc.precision == "bf16":
            logger.info("Training in bf16 mixed precision: Keras dtype policy %r (variables, gradients and AdamW state "
                        "float32, compute bfloat16).", policy)
        with self.strategy.scope():
            if weights is None:
                # from_config(config, seed) is this constructor; it takes no dtype
                model = TFGPT2LMHeadModel(config, seed=tc.seed, dtype=policy)
            else:
                model = TFGPT2LMHeadModel.from_pretrained(weights, config=config, dtype=policy)
            optimizer = AdamW(model, tc)
            if optimizer_state is not None and (optimizer_state / OPTIMIZER_NAME).exists():
                with np.load(optimizer_state / OPTIMIZER_NAME, allow_pickle=False) as state:
                    optimizer.load_state(dict(state))
        self.model, self.optimizer = model, optimizer
        if self.collective:
            self._check_same_start()
        self.train_step = make_train_step(model, optimizer, self.strategy, tc)
        self.eval_step = make_eval_step(model)

    def _check_same_start(self) -> None:
        """Every worker must start from the same step (with --resume, each reads its own --output-dir): gather the
        workers' optimizer steps and refuse a mismatch rather than run out of step and wait forever."""
        per_replica = self.strategy.run(lambda: tf.constant([self.optimizer.step], tf.int64))
        steps = self.strategy.gather(per_replica, axis=0).numpy().tolist()
        if len(set(steps)) > 1:
            raise ValueError(
                f"The workers start from different steps. Received: optimizer steps {steps} (one per replica, in "
                f"replica order; this is rank {self.rank}). With --resume every worker must see the same checkpoint: "
                "use a shared --output-dir or copy rank 0's last checkpoint-STEP/ into each worker's --output-dir."
            )

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def step(self, batch: np.ndarray, lr: float) -> tuple[tf.Tensor, tf.Tensor]:
        step_size, bc2_sqrt = self.optimizer.scalars(lr)
        loss, grad_norm = self.train_step(tf.constant(batch), tf.constant(lr, tf.float32),
                                          tf.constant(step_size, tf.float32), tf.constant(bc2_sqrt, tf.float32))
        self.optimizer.step += 1
        return loss, grad_norm

    def eval_batch_size(self, tc: TrainConfig) -> int:
        return max(1, tc.batch_size // self.world_size)  # as torch's rank 0, which evaluates its per-rank batch

    def evaluate(self, batches: list[np.ndarray]) -> float:
        losses = [float(self.eval_step(tf.constant(b))) for b in batches]
        return float(np.mean(losses)) if losses else float("nan")

    def save(self, directory: Path | None, *, optimizer: bool) -> None:
        if directory is None:  # a non-chief worker: its mirrored copies equal the chief's, which writes them
            return
        self.model.save_pretrained(directory)
        if optimizer:
            with atomic_path(directory / OPTIMIZER_NAME) as tmp, open(tmp, "wb") as f:
                np.savez(f, **self.optimizer.state())

    def sync(self) -> None:
        pass

    def close(self) -> None:
        pass


def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a TFGPT2LMHeadModel with gpt2_core.training's loop; returns the final metrics."""
    return run_training(tc, TFTrainer(), progress=progress)
