"""The one training loop of `gpt2 train`, written once for every backend: reading and tokenizing text, packing
blocks, the train/eval split, the batch order, the learning-rate schedule, the weight-decay rule, resume, the
evaluation and checkpoint cadence, the checkpoint layout, metrics logging and the progress bar (`run_training`).

A backend supplies only its framework's parts through a `TrainerBackend`: build the model and optimizer, one
optimizer step, an evaluation, saving the model and optimizer state, and how many processes or devices share a
batch (gpt2_torch/training.py, gpt2_tf/training.py, gpt2_flax/training.py). So the three read the same batches in
the same order, follow the same schedule and write the same files: the only thing they differ in is the framework.

Reference: keras `src/trainers/` (the loop once, the step per backend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import numbers
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import numpy as np

from gpt2_core.config import PRESET_ALIASES, PRESETS, GPT2Config

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = {".txt", ".md", ".text", ".rst", ""}
STATE_NAME = "trainer_state.json"
METRICS_NAME = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Arguments of `gpt2 train`; the same in every backend.

    Args:
        data: Text files or directories (read recursively).
        output_dir: Where checkpoints, metrics and the final model go.
        model: A preset name (`gpt2`, ...), a config.json path, or a pretrained model directory (fine-tuning).
        block_size: Tokens per training sequence.
        batch_size: Global batch size (sequences per optimizer step, over all processes/devices).
        max_steps: Optimizer steps.
        learning_rate: Peak learning rate (AdamW).
        min_lr_ratio: Final learning rate as a fraction of the peak (cosine decay).
        warmup_steps: Linear warmup steps.
        weight_decay: AdamW decoupled weight decay (not applied to biases, LayerNorm and embeddings... see `decay_mask`).
        beta1, beta2, eps: AdamW.
        grad_clip: Global gradient-norm clip (0 = off).
        eval_fraction: Share of the text held out for evaluation (whole files when there are 10 or more).
        eval_every: Evaluate (and log) every N steps.
        eval_batches: Batches per evaluation (0 = the whole held-out split).
        save_every: Checkpoint every N steps (0 = only at the end).
        log_every: Log training loss every N steps.
        seed: Seed of the data order and of initialisation.
        dropout: Overrides the config's dropout rates when set.
        overrides: Config fields to override when training from scratch (n_layer, n_embd, ...).
        resume: Continue from the last checkpoint in output_dir: a checkpoint saved with other settings
            (`RESUME_MAY_CHANGE` aside) or beyond `max_steps` is refused.
        force: Start afresh in an output_dir that holds an earlier run (its checkpoints and metrics are removed).
            Without `resume` or `force`, a non-empty output_dir is refused.
        shard_params: Shard parameters and optimizer state over the processes/devices (torch FSDP2
            `fully_shard`, JAX `NamedSharding` over the mesh's data axis) instead of replicating them; the loss curve
            is the same. A backend whose framework cannot shard refuses it with the reason.
        precision: `"fp32"` (default) or `"bf16"`: mixed precision with float32 master weights, as transformers'
            `TrainingArguments(bf16=True)`. The parameters, their gradients and the optimizer state stay float32
            (what is saved is float32); the forward and backward matmuls run in bfloat16, with LayerNorm
            statistics, the attention softmax and the loss in float32 (torch `autocast(dtype=bfloat16)`, the Keras
            `"mixed_bfloat16"` policy, Flax `dtype=bfloat16, param_dtype=float32`). bf16 has float32's range, so
            no loss scaling is needed (fp16 would need it, and is not offered). A resumed run may change it.
    """

    data: Sequence[str] = ()
    output_dir: str = "gpt2-out"
    model: str = "gpt2"
    block_size: int = 128
    batch_size: int = 16
    max_steps: int = 1000
    learning_rate: float = 6e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eval_fraction: float = 0.05
    eval_every: int = 200
    eval_batches: int = 20
    save_every: int = 0
    log_every: int = 10
    seed: int = 0
    dropout: float | None = None
    overrides: dict = field(default_factory=dict)
    resume: bool = False
    force: bool = False
    shard_params: bool = False
    precision: str = "fp32"

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["data"] = list(self.data)
        return d

    def validate(self) -> None:
        """ValueError naming the first setting out of its range (before any file is read or written)."""
        def bad(name: str, value: Any, rule: str) -> ValueError:
            flag = "--" + name.replace("_", "-")
            return ValueError(f"{flag} must be {rule}. Received: {name}={value!r}. Pass {flag} {rule}.")

        for name in ("batch_size", "max_steps", "log_every", "eval_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
                raise bad(name, value, "an integer >= 1")
        for name in ("warmup_steps", "eval_batches", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
                raise bad(name, value, "an integer >= 0" + (" (0 = the whole held-out split)" if name == "eval_batches"
                                                           else " (0 = only at the end)" if name == "save_every" else ""))
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, numbers.Integral) or self.block_size < 2:
            raise bad("block_size", self.block_size, "an integer >= 2")

        def number(name: str) -> float:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise bad(name, value, "a finite number")
            return float(value)

        checks = {
            "learning_rate": (lambda v: v > 0, "> 0"),
            "min_lr_ratio": (lambda v: 0 <= v <= 1, "in [0, 1]"),
            "weight_decay": (lambda v: v >= 0, ">= 0"),
            "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "beta2": (lambda v: 0 <= v < 1, "in [0, 1)"),
            "eps": (lambda v: v > 0, "> 0"),
            "grad_clip": (lambda v: v >= 0, ">= 0 (0 = off)"),
            "eval_fraction": (lambda v: 0 <= v < 1, "in [0, 1) (a share of the text; 0 = no held-out split)"),
        }
        for name, (ok, rule) in checks.items():
            if not ok(number(name)):
                raise bad(name, getattr(self, name), rule)
        if self.dropout is not None and not (0 <= number("dropout") <= 1):
            raise bad("dropout", self.dropout, "in [0, 1]")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"--precision must be one of {', '.join(PRECISIONS)}. Received: precision={self.precision!r}. Pass "
                "--precision bf16 for mixed precision (float32 master weights, bfloat16 compute) or fp32."
            )
        if self.resume and self.force:
            raise ValueError(
                "--resume and --force contradict each other. Received: resume=True, force=True. Pass --resume to "
                "continue the run in --output-dir, or --force to start afresh there."
            )


# Settings a resumed run may change: how long it runs and how often it logs, evaluates and saves. Any other
# difference between the checkpoint's saved settings and the new ones (data, model, batch, schedule, seed) is refused.
RESUME_MAY_CHANGE = ("output_dir", "max_steps", "eval_every", "eval_batches", "save_every", "log_every", "resume",
                     "force", "shard_params", "precision")

# `TrainConfig.precision` values: float32 throughout, or bf16 compute over float32 master weights.
PRECISIONS = ("fp32", "bf16")


# ------------------------------------------------------------------------------------------------------------------
# Text
# ------------------------------------------------------------------------------------------------------------------


def collect_text_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Text files named or found (recursively) under `paths`, sorted; a clear error when there are none."""
    if not paths:
        raise ValueError("No training data given. Received: data=[]. Pass text files or a directory of .txt files.")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES and not f.name.startswith("."))
            if not found:
                raise ValueError(f"The directory holds no text files. Received: data={str(p)!r}. Expected .txt/.md files.")
            files.extend(found)
        else:
            raise ValueError(f"No such file or directory. Received: data={str(p)!r}.")
    return files


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"The file is not UTF-8 text. Received: {str(path)!r} ({e}). Convert it to UTF-8.") from e
    except OSError as e:
        raise ValueError(f"Cannot read the file. Received: {str(path)!r} ({e.strerror}).") from e


@dataclass
class Dataset:
    """Token blocks for training and evaluation.

    Args:
        train: (n_train, block_size) int32 blocks.
        eval: (n_eval, block_size) int32 blocks.
        n_tokens: Tokens in the corpus.
        eval_files: Files held out whole for evaluation (empty when the split is by tokens).
    """

    train: np.ndarray
    eval: np.ndarray
    n_tokens: int
    eval_files: list[str]

    def batches(self, batch_size: int, seed: int, start_step: int = 0) -> Iterator[np.ndarray]:
        """Endless (batch_size, block_size) batches; the order depends only on `seed` and the step, so a resumed run
        and every backend see the same batches."""
        n = len(self.train)
        if n < batch_size:
            raise ValueError(
                f"Not enough text for one batch. Received: {n} blocks, batch_size={batch_size}. Lower --batch-size "
                "or --block-size, or add text."
            )
        per_epoch = n // batch_size
        step = start_step
        while True:
            epoch, i = divmod(step, per_epoch)
            order = np.random.default_rng([seed, epoch]).permutation(n)
            yield self.train[order[i * batch_size : (i + 1) * batch_size]]
            step += 1

    def eval_batches(self, batch_size: int, limit: int = 0) -> list[np.ndarray]:
        n = len(self.eval) // batch_size
        if limit:
            n = min(n, limit)
        return [self.eval[i * batch_size : (i + 1) * batch_size] for i in range(n)]


def pack(ids: np.ndarray, block_size: int) -> np.ndarray:
    n = len(ids) // block_size
    return ids[: n * block_size].reshape(n, block_size).astype(np.int32)


def build_dataset(files: Sequence[Path], tokenizer, block_size: int, n_positions: int, eval_fraction: float) -> Dataset:
    """Tokenize files (each ends with <|endoftext|>), hold out files (>= 10 files) or the tail, pack into blocks."""
    if block_size > n_positions:
        raise ValueError(
            f"block_size exceeds the model's n_positions. Received: block_size={block_size}, n_positions={n_positions}. "
            "Use --block-size <= n_positions."
        )
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2. Received: block_size={block_size}.")
    eos = tokenizer.eos_token_id
    docs = []
    for f in files:
        text = read_text(f)
        if text.strip():
            docs.append((f, np.asarray(tokenizer.encode(text) + [eos], dtype=np.int32)))
    if not docs:
        raise ValueError(f"The training files hold no text. Received: {len(files)} empty file(s).")
    eval_files: list[str] = []
    if len(docs) >= 10 and eval_fraction > 0:
        # hold out whole documents, chosen by a hash of the file name: stable, and unseen text for evaluation
        ranked = sorted(docs, key=lambda d: hashlib.sha256(d[0].name.encode()).hexdigest())
        n_eval = max(1, round(len(docs) * eval_fraction))
        held, kept = ranked[:n_eval], ranked[n_eval:]
        eval_files = sorted(str(d[0].name) for d in held)
        train_ids = np.concatenate([d[1] for d in sorted(kept, key=lambda d: str(d[0]))])
        eval_ids = np.concatenate([d[1] for d in sorted(held, key=lambda d: str(d[0]))])
    else:
        all_ids = np.concatenate([d[1] for d in docs])
        cut = int(len(all_ids) * (1 - eval_fraction))
        train_ids, eval_ids = all_ids[:cut], all_ids[cut:]
    train, evals = pack(train_ids, block_size), pack(eval_ids, block_size)
    if len(train) == 0:
        raise ValueError(
            f"Not enough text for one block. Received: {len(train_ids)} training tokens, block_size={block_size}."
        )
    return Dataset(train=train, eval=evals, n_tokens=int(sum(len(d[1]) for d in docs)), eval_files=eval_files)


# ------------------------------------------------------------------------------------------------------------------
# Schedule, model config, bookkeeping
# ------------------------------------------------------------------------------------------------------------------


def learning_rate(step: int, tc: TrainConfig) -> float:
    """Linear warmup to `learning_rate`, then cosine decay to `min_lr_ratio * learning_rate` at `max_steps`."""
    if tc.warmup_steps and step < tc.warmup_steps:
        return tc.learning_rate * (step + 1) / tc.warmup_steps
    progress = min(1.0, (step - tc.warmup_steps) / max(1, tc.max_steps - tc.warmup_steps))
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return tc.learning_rate * (tc.min_lr_ratio + (1.0 - tc.min_lr_ratio) * cosine)


def decays(canonical_name: str) -> bool:
    """Weight decay applies to matrices (projections and heads), not to biases, LayerNorm or embeddings."""
    module, leaf = canonical_name.rsplit(".", 1)
    return leaf == "weight" and "ln_" not in module and module not in ("wte", "wpe")


# Suffixes of files that look like weights: a model directory holding such files, but none of the names above, is
# an error rather than a silent start from random weights.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack", ".pt", ".pth", ".ckpt")


def weight_files() -> tuple[str, ...]:
    """The weight file names a model directory may hold (any backend's format), in gpt2_core.hub's order."""
    from gpt2_core import hub

    return tuple(hub.WEIGHT_FILES)


def resolve_model_config(tc: TrainConfig) -> tuple[GPT2Config, str | None]:
    """(config, pretrained dir or None): a preset or config.json trains from scratch, a model dir fine-tunes.

    A directory must hold config.json. With weights in any format a backend reads (`weight_files()`, e.g. only a
    `tf_model.h5`) it fine-tunes them; with files that look like weights in no such format it is an error; with
    config.json alone it trains that config from scratch, and says so in the log.
    """
    path = Path(tc.model)
    pretrained = None
    if path.is_dir() and (path / "config.json").exists():
        config = GPT2Config.from_pretrained(path)
        names = weight_files()
        if any((path / f).exists() for f in names):
            pretrained = str(path)
        else:
            unknown = sorted(f.name for f in path.iterdir() if f.is_file() and f.suffix.lower() in _WEIGHT_SUFFIXES)
            if unknown:
                raise ValueError(
                    f"The model directory holds weights in no format gpt2 train reads. Received: model={str(path)!r} "
                    f"with {unknown[:5]}. Expected one of {list(names)}: convert them with gpt2-convert, or pass the "
                    "config.json file alone to train from scratch."
                )
            logger.warning("%s holds config.json but no weights (%s): training its config from scratch.", path,
                           ", ".join(names))
    elif path.is_file():
        config = GPT2Config.from_json_file(path)
    elif path.is_dir() and tc.model not in PRESETS and tc.model not in PRESET_ALIASES:
        raise ValueError(
            f"The model directory holds no config.json. Received: model={str(path)!r}. Pass a directory with "
            "config.json (and weights, to fine-tune), a config.json file, or a preset name such as 'gpt2'."
        )
    else:
        config = GPT2Config.from_preset(tc.model)
    # strict: a mistyped --set name (n_layers) is an error naming the closest field, never silently ignored
    config.update_fields(tc.overrides, source="--set")
    if tc.dropout is not None:
        config.resid_pdrop = config.embd_pdrop = config.attn_pdrop = tc.dropout
    config.validate()
    return config, pretrained


class MetricsLog:
    """Append-only JSON-lines log (`metrics.jsonl`) of training and evaluation metrics."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, **record) -> None:
        if not self.enabled:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


def last_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest `checkpoint-STEP` directory with a complete trainer state, if any."""
    ckpts = []
    for d in Path(output_dir).glob("checkpoint-*"):
        if (d / STATE_NAME).exists():
            try:
                ckpts.append((int(d.name.split("-")[1]), d))
            except ValueError:
                continue
    return max(ckpts)[1] if ckpts else None


def write_state(directory: Path, step: int, tc: TrainConfig, extra: dict | None = None) -> None:
    from gpt2_core.hub import atomic_write_text

    state = {"step": step, "train_config": tc.to_json(), **(extra or {})}
    atomic_write_text(directory / STATE_NAME, json.dumps(state, indent=2) + "\n")


def read_state(directory: Path) -> dict:
    return json.loads((Path(directory) / STATE_NAME).read_text())


def unigram_loss(ds: Dataset, vocab_size: int) -> float:
    """Cross entropy (nats/token) of the held-out split under the training split's unigram distribution (add-one
    smoothing over the whole vocabulary): the baseline a trained model's held-out loss is compared with."""
    counts = np.bincount(ds.train.reshape(-1), minlength=vocab_size)
    probs = (counts + 1) / (counts.sum() + vocab_size)
    ev = ds.eval.reshape(-1)
    return float(-np.log(probs[ev]).mean()) if ev.size else float("nan")


# ------------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------------


class TrainerBackend(Protocol):
    """What a framework supplies to `run_training`; the loop does everything else.

    Attributes:
        name: The framework as the metrics log names it (`torch`, `tf`, `flax`).
        rank: This process's index among `world_size` processes; rank 0 writes the metrics, evaluates and saves.
            1 process (rank 0) unless the framework runs one process per device (torch under torchrun).
        world_size: How many share each global batch: torch processes, TF replicas, JAX devices.
        world_unit: What `world_size` counts, for error messages (`processes`, `replicas`, `devices`).
        collective: True when `evaluate` and `save` are collective operations (sharded parameters, several JAX
            processes, TF multi-worker): the loop then calls them on every rank, with `directory=None` on ranks
            other than 0 (they take part in the gather; rank 0 alone writes). Optional; False when absent.
    """

    name: str
    rank: int
    world_size: int
    world_unit: str
    collective: bool

    def build(self, tc: TrainConfig, *, config: GPT2Config | None, weights: str | Path | None,
              optimizer_state: Path | None) -> None:
        """Make the model and its optimizer, seeded by `tc.seed`.

        Args:
            tc: The run's settings (optimizer hyperparameters, seed, batch size).
            config: The model's config; None: the one saved with `weights` (resume).
            weights: A model directory to load (`from_pretrained(weights, config=config)`); None: initialise
                `config` with `gpt2_core.reference.init_params(seed=tc.seed)`, so every backend starts alike.
            optimizer_state: A checkpoint directory whose optimizer state (if saved) is restored; None: a fresh one.
        """

    def num_parameters(self) -> int:
        """Parameters of the model built."""

    def step(self, batch: np.ndarray, lr: float) -> tuple[Any, Any]:
        """One AdamW step at learning rate `lr` on the global (B, T) int32 `batch` (inputs and labels), dropout on.

        Returns (loss before the update, averaged over the whole batch; gradient norm before clipping), each a
        scalar `float()` reads, so a backend may return device values and the loop converts them when needed."""

    def eval_batch_size(self, tc: TrainConfig) -> int:
        """Rows per evaluation batch."""

    def evaluate(self, batches: list[np.ndarray]) -> float:
        """Mean loss over `batches` with dropout off; NaN when there are none. Called on rank 0 only, or on every
        rank when `collective` (each returns the same value)."""

    def save(self, directory: Path | None, *, optimizer: bool) -> None:
        """The model in Hub layout into `directory` (which exists) and, when `optimizer`, its optimizer state.
        `directory` is None only on ranks other than 0 of a `collective` backend: take part, write nothing."""

    def sync(self) -> None:
        """After every step, on every rank (torch: a barrier)."""

    def close(self) -> None:
        """After the final save, on every rank."""


def load_tokenizer(pretrained: str | None):
    """The pretrained model's tokenizer when its directory has one, else GPT-2's."""
    from gpt2_core.tokenization import GPT2TokenizerFast

    if pretrained and (Path(pretrained) / "vocab.json").exists():
        return GPT2TokenizerFast.from_pretrained(pretrained)
    return GPT2TokenizerFast()  # same ids as GPT2Tokenizer (tested), much faster on a corpus


class TokenizerFiles:
    """A run's tokenizer as the bytes of its `save_pretrained` files, serialized once (by the first save) and
    written as they are into every later checkpoint and the final model directory: serializing GPT-2's
    `tokenizer.json` takes about half a second, and the tokenizer does not change during a run."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.files: dict[str, bytes] | None = None

    def write(self, directory: Path) -> None:
        """Write the files into `directory`, a staging directory nobody else reads yet (`atomic_directory`)."""
        from gpt2_core.hub import default_mode

        if self.files is None:
            before = set(os.listdir(directory))
            self.tokenizer.save_pretrained(directory)
            self.files = {name: (directory / name).read_bytes() for name in sorted(set(os.listdir(directory)) - before)}
            return
        for name, data in self.files.items():
            path = directory / name
            path.write_bytes(data)
            os.chmod(path, default_mode())

    def save_pretrained(self, directory: Path) -> None:
        """As `tokenizer.save_pretrained(directory)`: the files published together, other files kept."""
        if self.files is None:
            self.tokenizer.save_pretrained(directory)
            return
        from gpt2_core.tokenization_io import atomic_save

        with atomic_save(directory) as staging:
            self.write(staging)


def save_checkpoint(backend: TrainerBackend, tokenizer: TokenizerFiles, directory: Path, step: int, tc: TrainConfig,
                    extra: dict) -> None:
    """A Hub-layout model directory plus optimizer and trainer state; the state file is written last, so a
    directory without it is incomplete and ignored by resume. Every checkpoint holds the whole tokenizer."""
    from gpt2_core.hub import atomic_directory

    if backend.rank != 0:  # a collective backend's other ranks: they take part in the gather, rank 0 writes
        backend.save(None, optimizer=True)
        return
    # staged beside and renamed into place whole: an interrupted save (Ctrl-C, SIGTERM, a full disk) leaves no
    # half-written checkpoint-STEP, and re-saving one replaces it in one step
    with atomic_directory(directory, force=True) as tmp:
        backend.save(tmp, optimizer=True)
        tokenizer.write(tmp)
        write_state(tmp, step, tc, extra)


def _run_files(out: Path) -> list[str]:
    """What in `out` an earlier run wrote that a new run must not mix with (checkpoints, metrics)."""
    return sorted(p.name for p in out.iterdir() if p.name == METRICS_NAME or p.name.startswith("checkpoint-"))


def prepare_output_dir(tc: TrainConfig, clear: bool = True) -> Path:
    """Create (or check) `output_dir`: a directory we can write in; one holding anything is refused unless
    `resume` or `force`; with `force` (and `clear`: rank 0) the earlier run's checkpoints and metrics are removed."""
    out = Path(tc.output_dir)
    if os.path.lexists(out) and not out.is_dir():
        raise NotADirectoryError(
            f"--output-dir is not a directory. Received: output_dir={str(out)!r}, a file. Remove it or choose "
            "another directory."
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)  # read-only mounts too, even as root
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise PermissionError(
            f"Cannot write in --output-dir. Received: output_dir={str(out)!r} ({e.strerror or e}). Choose a "
            "directory you can write to."
        ) from None
    entries = sorted(p.name for p in out.iterdir() if not p.name.startswith(".write-test."))  # another rank's probe
    if tc.force and clear:
        for name in _run_files(out):
            path = out / name
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    elif entries and not tc.resume and not tc.force:
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        raise FileExistsError(
            f"--output-dir is not empty (an earlier run?). Received: output_dir={str(out)!r} holding {shown}. Pass "
            "--resume to continue that run, --force to start afresh there (its checkpoints and metrics are "
            "removed), or choose another directory."
        )
    return out


def check_resume(state: dict, tc: TrainConfig, checkpoint: Path) -> None:
    """ValueError when the checkpoint's saved settings differ from `tc` beyond `RESUME_MAY_CHANGE`, or its step
    is beyond `max_steps`."""
    step = int(state["step"])
    if step > tc.max_steps:
        raise ValueError(
            f"The checkpoint at step {step} is beyond --max-steps {tc.max_steps}. Received: {str(checkpoint)!r}, "
            f"max_steps={tc.max_steps}. Pass --max-steps >= {step} to continue that run, or --force to start "
            "afresh."
        )
    saved = state.get("train_config") or {}
    new = tc.to_json()
    differ = []
    for key, value in saved.items():
        if key in RESUME_MAY_CHANGE or key not in new:
            continue
        if key == "data":
            same = [os.path.normpath(str(v)) for v in value] == [os.path.normpath(str(v)) for v in new[key]]
        else:
            same = json.loads(json.dumps(new[key])) == value
        if not same:
            differ.append(f"{key}={new[key]!r} (checkpoint: {value!r})")
    if differ:
        raise ValueError(
            f"--resume found a checkpoint of other settings. Received: {'; '.join(differ)} in {str(checkpoint)!r}. "
            "Pass the settings of that run to continue it, or --force to start afresh."
        )


def run_training(tc: TrainConfig, backend: TrainerBackend, progress: bool = True) -> dict:
    """Train (or fine-tune, or resume) with `backend`; returns the final metrics ({step, loss[, eval_loss, ...]}).

    `output_dir` gets `metrics.jsonl`, `checkpoint-STEP/` every `save_every` steps and at the end (model,
    tokenizer, optimizer state, then `trainer_state.json`), and the final model and tokenizer.
    """
    tc.validate()
    world, rank = backend.world_size, backend.rank
    if tc.batch_size % world:
        raise ValueError(
            f"--batch-size must be divisible by the number of {backend.world_unit}. Received: batch_size="
            f"{tc.batch_size}, {world} {backend.world_unit}. Use a multiple of {world}."
        )
    config, pretrained = resolve_model_config(tc)
    # rank 0 alone clears (--force); every rank checks, before any of them writes (the first write follows build)
    out = prepare_output_dir(tc, clear=rank == 0)
    tokenizer = load_tokenizer(pretrained)
    ds = build_dataset(collect_text_files(tc.data), tokenizer, tc.block_size, config.n_positions, tc.eval_fraction)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"The model's vocab_size is smaller than the tokenizer's. Received: {config.vocab_size} < {tokenizer.vocab_size}.")

    start_step, last = 0, {}
    resume_dir = last_checkpoint(out) if tc.resume else None
    if resume_dir is not None:
        state = read_state(resume_dir)
        check_resume(state, tc, resume_dir)
        start_step = int(state["step"])
        last = {k: state[k] for k in ("step", "loss", "eval_loss", "eval_perplexity") if k in state}
        logger.info("Resuming from %s (step %d)", resume_dir, start_step)
    elif tc.resume:
        logger.info("--resume: no checkpoint in %s; starting from step 0.", out)
    if resume_dir is not None:
        backend.build(tc, config=None, weights=resume_dir, optimizer_state=resume_dir)
    else:
        backend.build(tc, config=config, weights=pretrained, optimizer_state=None)
    collective = bool(getattr(backend, "collective", False))  # known once built (sharding is decided there)

    log = MetricsLog(out / METRICS_NAME, enabled=rank == 0)
    if start_step == 0:
        log.write(event="start", backend=backend.name, world_size=world, n_params=backend.num_parameters(),
                  n_tokens=ds.n_tokens, train_blocks=len(ds.train), eval_blocks=len(ds.eval), eval_files=ds.eval_files,
                  unigram_eval_loss=unigram_loss(ds, config.vocab_size), train_config=tc.to_json())
    tokenizer_files = TokenizerFiles(tokenizer)
    batches = ds.batches(tc.batch_size, tc.seed, start_step)
    eval_set = ds.eval_batches(backend.eval_batch_size(tc), tc.eval_batches)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", unit="step")
    t0, tokens = time.perf_counter(), 0
    for step in range(start_step, tc.max_steps):
        batch = next(batches)
        lr = learning_rate(step, tc)
        loss, grad_norm = backend.step(batch, lr)
        tokens += batch.size
        loss_value = float(loss)
        done = step + 1
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"The loss became {loss_value} at step {step} (optimizer step {done} of {tc.max_steps}). Received: "
                f"learning_rate={tc.learning_rate}. Lower "
                "--learning-rate (or check the data and model); the last checkpoint is kept, nothing of this step "
                "was saved."
            )
        if done % tc.log_every == 0 or done == tc.max_steps:
            rate = tokens / (time.perf_counter() - t0)
            log.write(step=done, loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=rate)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
        last = {"step": done, "loss": loss_value}
        if (rank == 0 or collective) and (done % tc.eval_every == 0 or done == tc.max_steps) and eval_set:
            eval_loss = backend.evaluate(eval_set)
            last.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
            log.write(step=done, eval_loss=eval_loss, eval_perplexity=last["eval_perplexity"])
        if (rank == 0 or collective) and tc.save_every and done % tc.save_every == 0 and done != tc.max_steps:
            save_checkpoint(backend, tokenizer_files, out / f"checkpoint-{done}", done, tc, last)
        backend.sync()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if rank == 0 or collective:
        if start_step < tc.max_steps:  # resuming a finished run re-publishes its final model, from that checkpoint
            save_checkpoint(backend, tokenizer_files, out / f"checkpoint-{tc.max_steps}", tc.max_steps, tc, last)
        backend.save(out if rank == 0 else None, optimizer=False)
    if rank == 0:
        tokenizer_files.save_pretrained(out)
        log.write(event="end", **last)
    backend.close()
    return last
