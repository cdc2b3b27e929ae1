"""`gpt2 train --backend torch`: AdamW with warmup + cosine decay, gradient clipping, evaluation, checkpoints,
resume, and data parallelism with DistributedDataParallel when started by `torchrun` (gloo on CPU, NCCL on GPUs).

The data, batch order, schedule and bookkeeping come from gpt2_core.training, shared with the TF and Flax trainers.
`--batch-size` is the global batch: with N processes each takes its 1/N slice, so the loss curve does not depend
on the number of processes.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from gpt2_core import naming
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
from gpt2_torch.model import GPT2LMHeadModel

logger = logging.getLogger(__name__)


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return rank, world


def _load_tokenizer(pretrained: str | None) -> GPT2TokenizerFast:
    if pretrained and (Path(pretrained) / "vocab.json").exists():
        return GPT2TokenizerFast.from_pretrained(pretrained)
    return GPT2TokenizerFast()  # same ids as GPT2Tokenizer (tested), much faster on a corpus


def make_optimizer(model: GPT2LMHeadModel, tc: TrainConfig) -> torch.optim.AdamW:
    names = naming.canonical_names("torch", model.config, model.head)
    decay, no_decay = [], []
    for path, p in model.named_parameters():
        (decay if decays(names[path]) else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), eps=tc.eps)


@torch.no_grad()
def evaluate(model: GPT2LMHeadModel, batches: list[np.ndarray]) -> float:
    was = model.training
    model.eval()
    losses = [float(model(input_ids=torch.from_numpy(b).long(), labels=torch.from_numpy(b).long()).loss) for b in batches]
    model.train(was)
    return float(np.mean(losses)) if losses else float("nan")


def save_checkpoint(model, optimizer, tokenizer, directory: Path, step: int, tc: TrainConfig, extra: dict) -> None:
    """A Hub-layout model directory plus optimizer and trainer state; the state file is written last, so a
    directory without it is incomplete and ignored by resume."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    if optimizer is not None:
        tmp = directory / "optimizer.pt.tmp"
        torch.save(optimizer.state_dict(), tmp)
        os.replace(tmp, directory / "optimizer.pt")
    write_state(directory, step, tc, extra)


def train(tc: TrainConfig, progress: bool = True) -> dict:
    """Train (or fine-tune) a GPT2LMHeadModel; returns the final metrics."""
    rank, world = _dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if tc.batch_size % world:
        raise ValueError(f"--batch-size must be divisible by the number of processes. Received: {tc.batch_size}, {world} processes.")
    out = Path(tc.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config, pretrained = resolve_model_config(tc)
    tokenizer = _load_tokenizer(pretrained)
    ds = build_dataset(collect_text_files(tc.data), tokenizer, tc.block_size, config.n_positions, tc.eval_fraction)
    if config.vocab_size < tokenizer.vocab_size:
        raise ValueError(f"The model's vocab_size is smaller than the tokenizer's. Received: {config.vocab_size} < {tokenizer.vocab_size}.")

    start_step = 0
    resume_dir = last_checkpoint(out) if tc.resume else None
    torch.manual_seed(tc.seed)
    if resume_dir is not None:
        model = GPT2LMHeadModel.from_pretrained(resume_dir)
        start_step = int(read_state(resume_dir)["step"])
        logger.info("Resuming from %s (step %d)", resume_dir, start_step)
    elif pretrained is not None:
        model = GPT2LMHeadModel.from_pretrained(pretrained, config=config)
    else:
        model = GPT2LMHeadModel.from_config(config, seed=tc.seed)
    model.train()
    optimizer = make_optimizer(model, tc)
    if resume_dir is not None and (resume_dir / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(resume_dir / "optimizer.pt", weights_only=True))
    ddp = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    log = MetricsLog(out / METRICS_NAME, enabled=rank == 0)
    if rank == 0 and start_step == 0:
        log.write(event="start", backend="torch", world_size=world, n_params=model.num_parameters(), n_tokens=ds.n_tokens,
                  train_blocks=len(ds.train), eval_blocks=len(ds.eval), eval_files=ds.eval_files,
                  unigram_eval_loss=unigram_loss(ds, config.vocab_size), train_config=tc.to_json())
    per_rank = tc.batch_size // world
    batches = ds.batches(tc.batch_size, tc.seed, start_step)
    eval_set = ds.eval_batches(max(1, per_rank), tc.eval_batches)
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.max_steps, initial=start_step, desc="train", unit="step")
    t0, tokens, last = time.perf_counter(), 0, {}
    for step in range(start_step, tc.max_steps):
        batch = next(batches)[rank * per_rank : (rank + 1) * per_rank]
        x = torch.from_numpy(batch).long()
        lr = learning_rate(step, tc)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = ddp(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        optimizer.step()
        tokens += x.numel() * world
        loss_value = loss.detach()
        if world > 1:
            torch.distributed.all_reduce(loss_value)
            loss_value /= world
        loss_value = float(loss_value)
        if not math.isfinite(loss_value):
            raise FloatingPointError(f"The loss became {loss_value} at step {step}. Lower --learning-rate.")
        done = step + 1
        if done % tc.log_every == 0 or done == tc.max_steps:
            rate = tokens / (time.perf_counter() - t0)
            log.write(step=done, loss=loss_value, lr=lr, grad_norm=float(grad_norm), tokens_per_s=rate)
            if bar is not None:
                bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{rate:,.0f}")
        last = {"step": done, "loss": loss_value}
        if rank == 0 and (done % tc.eval_every == 0 or done == tc.max_steps) and eval_set:
            eval_loss = evaluate(model, eval_set)
            last.update(eval_loss=eval_loss, eval_perplexity=math.exp(min(eval_loss, 50)))
            log.write(step=done, eval_loss=eval_loss, eval_perplexity=last["eval_perplexity"])
        if rank == 0 and tc.save_every and done % tc.save_every == 0 and done != tc.max_steps:
            save_checkpoint(model, optimizer, tokenizer, out / f"checkpoint-{done}", done, tc, last)
        if world > 1:
            torch.distributed.barrier()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if rank == 0:
        save_checkpoint(model, optimizer, tokenizer, out / f"checkpoint-{tc.max_steps}", tc.max_steps, tc, last)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        log.write(event="end", **last)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return last
