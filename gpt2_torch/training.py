"""`gpt2 train --backend torch`: the PyTorch parts of gpt2_core.training's loop: torch.optim.AdamW with decay by
`gpt2_core.training.decays`, gradient clipping, and, when started by `torchrun` (gloo on CPU, NCCL on GPUs), data
parallelism with DistributedDataParallel or, with `--shard-params`, FSDP2 (`fully_shard`: parameters, gradients and
optimizer state sharded over the processes; gpt2_torch/distributed.py).

`--batch-size` is the global batch: with N processes each takes its 1/N slice and the losses are averaged, so the
loss curve does not depend on the number of processes, nor on sharding.

Checkpoints are the same files in every mode: the model in Hub layout and `optimizer.pt`, the whole optimizer state
keyed by parameter name (torch.distributed.checkpoint's `get_optimizer_state_dict`); under FSDP both are gathered
whole to rank 0, which writes them. So a run resumes on any number of processes, sharded or not.

`--bf16` (`TrainConfig.precision == "bf16"`) is mixed precision as transformers' Trainer does it: the forward and
the loss run under `torch.autocast(dtype=torch.bfloat16)` (the backward follows the forward's dtypes), the
parameters, gradients and AdamW state stay float32. Under autocast the Linear layers and attention matmuls run in
bfloat16, while the residual stream stays float32 (embeddings are float32 and bf16 + float32 adds in float32), so
LayerNorm sees float32 inputs; the attention softmax (`dtype=torch.float32`) and the loss (`.float()` logits, and
cross entropy on autocast's float32 list) are float32. Under FSDP2 the same autocast wraps the sharded forward; no
`MixedPrecisionPolicy` is set, so parameters are gathered and gradients reduce-scattered in float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.hub import atomic_path
from gpt2_core.training import METRICS_NAME, MetricsLog, TrainConfig, decays, run_training
from gpt2_torch import distributed
from gpt2_torch.model import GPT2LMHeadModel

logger = logging.getLogger(__name__)

OPTIMIZER_NAME = "optimizer.pt"


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def make_optimizer(model: GPT2LMHeadModel, tc: TrainConfig) -> torch.optim.AdamW:
    names = naming.canonical_names("torch", model.config, model.head)
    decay, no_decay = [], []
    for path, p in model.named_parameters():
        (decay if decays(names[path]) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), eps=tc.eps)


class TorchTrainer:
    """gpt2_core.training.TrainerBackend for a GPT2LMHeadModel; one process per rank under torchrun.

    Constructing it joins the process group when WORLD_SIZE > 1 (NCCL with CUDA, else gloo); with CUDA each
    process uses the GPU of its LOCAL_RANK. With `tc.shard_params` and several processes the model is sharded with
    FSDP2 and `collective` is True: evaluation and saving then run on every rank.

    Args:
        shard_params: `tc.shard_params` of the run: the loop reads `collective` before `build`, so it is known here.
    """

    name = "torch"
    world_unit = "processes"

    def __init__(self, shard_params: bool = False) -> None:
        self.rank, self.world_size = _dist_info()
        self.collective = bool(shard_params) and self.world_size > 1
        if torch.cuda.is_available():
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    def build(self, tc: TrainConfig, *, config: GPT2Config | None, weights: str | Path | None,
              optimizer_state: Path | None) -> None:
        torch.manual_seed(tc.seed)
        if weights is None:
            model = GPT2LMHeadModel.from_config(config, seed=tc.seed)
        else:
            model = GPT2LMHeadModel.from_pretrained(weights, config=config)
        model.to(self.device)
        model.train()
        full_bytes = distributed.local_parameter_bytes(model)
        sharded = tc.shard_params and self.world_size > 1
        if sharded != self.collective:
            raise ValueError(
                f"TorchTrainer was made for shard_params={self.collective} but the run asks for "
                f"shard_params={tc.shard_params}. Received: shard_params={tc.shard_params}. Make it with "
                "TorchTrainer(shard_params=tc.shard_params) (as `train` does)."
            )
        if tc.shard_params and not sharded:
            logger.info("--shard-params with one process: nothing to shard over; the model stays whole. Start "
                        "several processes with torchrun to shard it.")
        if sharded:
            # every rank built the same values (seed or checkpoint): each keeps its slice
            distributed.shard_model(model)
        self.model = model
        self.optimizer = make_optimizer(model, tc)  # on the sharded parameters under FSDP: sharded state
        if optimizer_state is not None and (optimizer_state / OPTIMIZER_NAME).exists():
            state = torch.load(optimizer_state / OPTIMIZER_NAME, map_location="cpu", weights_only=True)
            distributed.load_optimizer_state(model, self.optimizer, state)
        ddp = self.world_size > 1 and not sharded
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
        self.strategy = "fsdp2" if sharded else "ddp" if ddp else "single"
        self.max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        self.per_rank = tc.batch_size // self.world_size
        self.eval_rows = tc.batch_size if sharded else max(1, self.per_rank)
        self.memory = {"full_param_bytes": full_bytes, "param_bytes": distributed.local_parameter_bytes(model)}
        self.metrics = Path(tc.output_dir) / METRICS_NAME
        self.memory_logged = False
        self.bf16 = tc.precision == "bf16"
        if self.bf16:
            logger.info("Training in bf16 mixed precision: torch.autocast(%r, dtype=torch.bfloat16) over the forward "
                        "and loss; parameters, gradients and AdamW state float32.", self.device.type)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The precision context of the forward and the loss: `torch.autocast` to bfloat16 for `--bf16`, else none."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def _rows(self, batch: np.ndarray) -> torch.Tensor:
        """This rank's slice of a global batch, on its device."""
        rows = batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank] if self.world_size > 1 else batch
        return torch.from_numpy(rows).long().to(self.device)

    def _mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(value)
            value /= self.world_size
        return value

    def step(self, batch: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._rows(batch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with warnings.catch_warnings():
            # FSDP2 warns that the logits are a view (nn.Linear on (B, T, C)); nothing writes to them in place
            warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")
            with self.autocast():
                loss = self.ddp(input_ids=x, labels=x).loss
        self.optimizer.zero_grad(set_to_none=True)
        # outside autocast (torch's rule: each op's backward runs in its forward's dtype); DDP all-reduces, FSDP
        # reduce-scatters: both average the gradients over the ranks
        loss.backward()
        grad_norm = distributed.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.optimizer.step()
        loss = self._mean(loss.detach())
        if not self.memory_logged and self.world_size > 1:
            self._log_memory()
        return loss, grad_norm

    def _log_memory(self) -> None:
        """With several processes, one `metrics.jsonl` record after the first step (the optimizer state exists then):
        the parameter and optimizer-state bytes each rank holds, measured, beside the whole model's."""
        self.memory_logged = True
        mine = [self.memory["param_bytes"], distributed.local_state_bytes(self.optimizer)]
        ranks = [mine]
        if self.world_size > 1:
            ranks = [None] * self.world_size
            torch.distributed.all_gather_object(ranks, mine)
        if self.rank == 0:
            MetricsLog(self.metrics).write(
                event="memory", strategy=self.strategy, world_size=self.world_size,
                full_param_bytes=self.memory["full_param_bytes"], param_bytes_per_rank=[r[0] for r in ranks],
                optimizer_state_bytes_per_rank=[r[1] for r in ranks],
            )

    def eval_batch_size(self, tc: TrainConfig) -> int:
        # rank 0 evaluates alone on its per-rank batch, but a sharded model evaluates on every rank, each its
        # slice of a global batch (so the eval loss is the one-process run's)
        return self.eval_rows

    @torch.no_grad()
    def evaluate(self, batches: list[np.ndarray]) -> float:
        model = self.model
        was = model.training
        model.eval()
        losses = []
        for b in batches:
            x = self._rows(b) if self.collective else torch.from_numpy(b).long().to(self.device)
            with self.autocast():
                loss = model(input_ids=x, labels=x).loss
            losses.append(float(self._mean(loss) if self.collective else loss))
        if self.collective:
            model.reshard()  # a forward without backward leaves the root's parameters gathered
        model.train(was)
        return float(np.mean(losses)) if losses else float("nan")

    def save(self, directory: Path | None, *, optimizer: bool) -> None:
        if self.collective:  # every rank takes part in the gather; rank 0 (directory given) writes
            state, optim_state = distributed.full_state_dicts(self.model, self.optimizer if optimizer else None)
            if directory is None:
                return
            self._save_hub(directory, state)
        else:
            self.model.save_pretrained(directory)
            optim_state = distributed.optimizer_state_dict(self.model, self.optimizer) if optimizer else None
        if optimizer:
            with atomic_path(directory / OPTIMIZER_NAME) as tmp:
                torch.save(optim_state, tmp)

    def _save_hub(self, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """The whole state dict (transformers' layout, gathered) as the Hub-layout files `save_pretrained` writes."""
        from gpt2_torch.weights import to_numpy
        from weights_convert.pretrained import save_pretrained

        model = self.model
        canonical, _ = naming.from_hub_state_dict(
            {k: to_numpy(v) for k, v in state.items()}, model.config, model.head, allow_missing_head=False,
            source="the gathered FSDP state dict",
        )
        save_pretrained(directory, model.config, canonical, model.head, generation_config=model.generation_config)

    def sync(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a GPT2LMHeadModel with gpt2_core.training's loop; returns the final metrics."""
    return run_training(tc, TorchTrainer(shard_params=tc.shard_params), progress=progress)
