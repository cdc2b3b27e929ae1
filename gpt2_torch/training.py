"""`gpt2 train --backend torch`: the PyTorch parts of gpt2_core.training's loop: torch.optim.AdamW with decay by
`gpt2_core.training.decays`, gradient clipping, and data parallelism with DistributedDataParallel when started by
`torchrun` (gloo on CPU, NCCL on GPUs).

`--batch-size` is the global batch: with N processes each takes its 1/N slice and the losses are averaged, so the
loss curve does not depend on the number of processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gpt2_core import naming
from gpt2_core.config import GPT2Config
from gpt2_core.hub import atomic_path
from gpt2_core.training import TrainConfig, decays, run_training
from gpt2_torch.model import GPT2LMHeadModel

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

    Constructing it joins the process group when WORLD_SIZE > 1 (NCCL with CUDA, else gloo).
    """

    name = "torch"
    world_unit = "processes"

    def __init__(self) -> None:
        self.rank, self.world_size = _dist_info()
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    def build(self, tc: TrainConfig, *, config: GPT2Config | None, weights: str | Path | None,
              optimizer_state: Path | None) -> None:
        torch.manual_seed(tc.seed)
        if weights is None:
            model = GPT2LMHeadModel.from_config(config, seed=tc.seed)
        else:
            model = GPT2LMHeadModel.from_pretrained(weights, config=config)
        model.train()
        self.model = model
        self.optimizer = make_optimizer(model, tc)
        if optimizer_state is not None and (optimizer_state / OPTIMIZER_NAME).exists():
            self.optimizer.load_state_dict(torch.load(optimizer_state / OPTIMIZER_NAME, weights_only=True))
        self.ddp = torch.nn.parallel.DistributedDataParallel(model) if self.world_size > 1 else model
        self.max_norm = tc.grad_clip if tc.grad_clip > 0 else float("inf")
        self.per_rank = tc.batch_size // self.world_size

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def step(self, batch: np.ndarray, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(batch[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]).long()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss = self.ddp(input_ids=x, labels=x).loss
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.optimizer.step()
        loss = loss.detach()
        if self.world_size > 1:
            torch.distributed.all_reduce(loss)
            loss /= self.world_size
        return loss, grad_norm

    def eval_batch_size(self, tc: TrainConfig) -> int:
        return max(1, tc.batch_size // self.world_size)  # rank 0 evaluates alone, on its per-rank batch

    @torch.no_grad()
    def evaluate(self, batches: list[np.ndarray]) -> float:
        model = self.model
        was = model.training
        model.eval()
        losses = [float(model(input_ids=torch.from_numpy(b).long(), labels=torch.from_numpy(b).long()).loss) for b in batches]
        model.train(was)
        return float(np.mean(losses)) if losses else float("nan")

    def save(self, directory: Path, *, optimizer: bool) -> None:
        self.model.save_pretrained(directory)
        if optimizer:
            with atomic_path(directory / OPTIMIZER_NAME) as tmp:
                torch.save(self.optimizer.state_dict(), tmp)

    def sync(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a GPT2LMHeadModel with gpt2_core.training's loop; returns the final metrics."""
    return run_training(tc, TorchTrainer(), progress=progress)
