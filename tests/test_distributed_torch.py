"""`gpt2 train --backend torch` on two processes (torchrun, gloo, CPU): DDP and FSDP2 (`--shard-params`) each give the
loss curve of one process with the same global batch; FSDP holds half the parameters per rank (measured inside the
run); a one-process `--resume` from the two-process FSDP checkpoint continues the one-process curve. Also
`device_map` placement for inference (gpt2_torch.distributed): the plan, and the same logits and tokens once
dispatched with accelerate's hooks.

Oracle: the one-process run of the same code on the same batches (torch's single-process path has no collective at
all), and for `device_map` the same model undispatched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from gpt2_core.training import TrainConfig
from test_train_torch import cli, corpus  # noqa: F401  (corpus: the module-scoped text fixture, reused)

TINY = dict(n_layer=2, n_embd=64, n_head=2, n_positions=64)
STEPS, SAVE = 4, 2
# float32 sums in another order (per-rank halves, the all-reduce); Adam amplifies it in the gradient norm: its
# first steps move each weight by about lr * sign(gradient), and near-zero gradients flip sign with the rounding
LOSS_TOL, GRAD_REL_TOL = 1e-4, 1e-3
TIMEOUT = 480  # seconds for both launches together (they run side by side); a worker whose peer died waits forever


def settings(corpus, out, **kw) -> dict:
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32,
                batch_size=4, max_steps=STEPS, warmup_steps=2, learning_rate=3e-3, eval_every=SAVE, eval_batches=2,
                save_every=SAVE, log_every=1, dropout=0.0)
    base.update(kw)
    return base


def flags(s: dict) -> list[str]:
    out = ["--backend", "torch", "--data", *s["data"], "-o", s["output_dir"], "--model", s["model"], "--no-progress"]
    for name in ("block_size", "batch_size", "max_steps", "warmup_steps", "learning_rate", "eval_every",
                 "eval_batches", "save_every", "log_every", "dropout"):
        out += ["--" + name.replace("_", "-"), str(s[name])]
    return out + [f"--set={k}={v}" for k, v in s["overrides"].items()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_torchrun(args: list[str], log) -> subprocess.Popen:
    """`torchrun --nproc_per_node 2 -m gpt2_apps.train_cli ARGS` on a free port, in its own process group, its
    output into the file `log` (no pipe to fill while this process trains); `finish` waits and kills the group."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", cli("train_cli"), *args]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def stop(procs) -> None:
    """Kill each launch's whole process group (torchrun and its workers), whatever happened."""
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def finish(procs, timeout: float = TIMEOUT) -> None:
    """Wait for every launch (within `timeout` seconds in all), kill every group afterwards so no worker outlives
    the test, and require exit status 0 of each."""
    deadline = time.monotonic() + timeout
    try:
        for proc in procs:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop(procs)
    for proc in procs:
        assert proc.returncode == 0, Path(proc.log).read_text()[-4000:]


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out, key: str) -> dict[int, float]:
    return {r["step"]: r[key] for r in rows(out) if key in r and "event" not in r}


def memory(out) -> dict:
    (record,) = [r for r in rows(out) if r.get("event") == "memory"]
    return record


def assert_same_curve(one, two, steps, eval_too: bool) -> None:
    a, b = curve(one, "loss"), curve(two, "loss")
    assert set(steps) <= set(a) and set(steps) <= set(b), (a, b)
    assert max(abs(a[s] - b[s]) for s in steps) < LOSS_TOL, (a, b)
    ga, gb = curve(one, "grad_norm"), curve(two, "grad_norm")
    assert max(abs(ga[s] - gb[s]) / ga[s] for s in steps) < GRAD_REL_TOL, (ga, gb)
    if eval_too:
        ea, eb = curve(one, "eval_loss"), curve(two, "eval_loss")
        shared = [s for s in steps if s in ea]
        assert shared and max(abs(ea[s] - eb[s]) for s in shared) < LOSS_TOL, (ea, eb)


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """{"one", "ddp", "fsdp": output dir}: the two torchrun launches (DDP, and FSDP2 with `--shard-params`) run side
    by side while the one-process run, the oracle of both, trains in this process."""
    from gpt2_torch.training import train

    dirs = {name: tmp_path_factory.mktemp(name) for name in ("one", "ddp", "fsdp")}
    outs = {name: d / "out" for name, d in dirs.items()}
    procs = [start_torchrun(flags(settings(corpus, outs["ddp"])), dirs["ddp"] / "torchrun.log")]
    try:
        procs.append(start_torchrun(flags(settings(corpus, outs["fsdp"])) + ["--shard-params"],
                                    dirs["fsdp"] / "torchrun.log"))
        train(TrainConfig(**settings(corpus, outs["one"])), progress=False)
    except BaseException:
        stop(procs)
        raise
    finish(procs)
    return outs


def test_ddp_two_processes_equal_one(runs):
    """DDP (the default for several processes): loss and gradient norm of every step equal the one-process run's.
    Tolerance 1e-4 absolute on the loss, 1e-3 relative on the gradient norm; measured: loss <= 1e-6, gradient norm
    <= 2e-7 relative. Every rank holds the whole model (the memory record says so)."""
    one, out = runs["one"], runs["ddp"]
    assert_same_curve(one, out, range(1, STEPS + 1), eval_too=False)  # rank 0 evaluates alone, on its half batch
    mem = memory(out)
    assert mem["strategy"] == "ddp" and mem["param_bytes_per_rank"] == [mem["full_param_bytes"]] * 2


def test_fsdp_two_processes_equal_one_and_resume_in_one_process(runs, corpus):
    """FSDP2 (`--shard-params`): the same loss, gradient norm (the global norm of the sharded gradients, clipped to
    1.0 at every step here: the norms are above 1) and evaluation loss as one process; tolerances as for DDP,
    measured: loss <= 1e-6, eval loss <= 1e-6, gradient norm 2e-6 relative at step 1 growing to 2e-4 at step 4
    (FSDP's gradients equal the unsharded ones to 5e-7 relative, not bit for bit as DDP's, and Adam amplifies
    that; the resumed steps: <= 1e-6). Each rank holds half of the
    parameter bytes and half of Adam's state (to FSDP's padding of dim 0). The checkpoint is the Hub layout with the
    LM head tied; one process resumed from its step-2 checkpoint follows the one-process curve (steps 3, 4)."""
    from gpt2_torch import GPT2LMHeadModel

    one, out = runs["one"], runs["fsdp"]
    assert_same_curve(one, out, range(1, STEPS + 1), eval_too=True)

    mem = memory(out)
    full, per_rank = mem["full_param_bytes"], mem["param_bytes_per_rank"]
    assert mem["strategy"] == "fsdp2" and len(per_rank) == 2 and sum(per_rank) >= full
    assert all(abs(b - full / 2) <= 0.01 * full for b in per_rank), mem
    assert all(abs(b - full) <= 0.01 * full for b in mem["optimizer_state_bytes_per_rank"]), mem  # 2 moments / 2

    model = GPT2LMHeadModel.from_pretrained(out)  # the final model, gathered whole by rank 0
    assert model.lm_head.weight is model.transformer.wte.weight
    final = GPT2LMHeadModel.from_pretrained(one).canonical_state_dict()
    got = model.canonical_state_dict()
    assert max(float(np.abs(got[k] - final[k]).max()) for k in final) < 1e-4

    # one process continues the two-process run from its step-2 checkpoint
    shutil.rmtree(out / f"checkpoint-{STEPS}")
    from gpt2_torch.training import train

    train(TrainConfig(**settings(corpus, out, resume=True)), progress=False)
    resumed = [r for r in rows(out) if r.get("event") == "end"][-1]
    assert resumed["step"] == STEPS
    a = curve(one, "loss")
    tail = [r for r in rows(out) if "loss" in r and "event" not in r][-(STEPS - SAVE):]
    assert [r["step"] for r in tail] == list(range(SAVE + 1, STEPS + 1))
    assert max(abs(r["loss"] - a[r["step"]]) for r in tail) < LOSS_TOL, (tail, a)


# ------------------------------------------------------------------------------------------------------------------
# device_map placement (inference)
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    from conftest import make_config
    from gpt2_torch import GPT2LMHeadModel

    d = tmp_path_factory.mktemp("placed")
    torch.manual_seed(0)
    GPT2LMHeadModel(make_config("default", n_layer=4, n_positions=64)).save_pretrained(d)
    return d


def test_device_map_plan_splits_blocks_and_keeps_the_tied_head_with_the_embedding(saved):
    from gpt2_torch import GPT2LMHeadModel
    from gpt2_torch.distributed import plan_device_map

    model = GPT2LMHeadModel.from_pretrained(saved)
    plan = plan_device_map(model, ["cuda:0", "cuda:1"])  # planning needs no device
    assert plan == {"transformer.wte": "cuda:0", "transformer.wpe": "cuda:0", "transformer.h.0": "cuda:0",
                    "transformer.h.1": "cuda:0", "transformer.h.2": "cuda:1", "transformer.h.3": "cuda:1",
                    "transformer.ln_f": "cuda:1", "lm_head": "cuda:0"}
    low0 = plan_device_map(model, [0, 1, 2], placement="balanced_low_0")  # the first device keeps fewer blocks
    assert [low0[f"transformer.h.{i}"] for i in range(4)] == ["cuda:1", "cuda:1", "cuda:2", "cuda:2"]
    assert low0["lm_head"] == low0["transformer.wte"] == "cuda:0"
    assert set(plan_device_map(model, ["cpu", "cpu"]).values()) == {"cpu"}


def test_device_map_dispatch_gives_the_same_logits_and_tokens(saved):
    from gpt2_torch import GPT2LMHeadModel
    from gpt2_torch.distributed import dispatch, plan_device_map

    whole = GPT2LMHeadModel.from_pretrained(saved)
    ids = torch.tensor([[5, 7, 11, 13, 17, 19]])
    with torch.no_grad():
        expected = whole(ids).logits
    plan = plan_device_map(whole, ["cpu", "cpu"])
    placed = GPT2LMHeadModel.from_pretrained(saved, device_map=plan)
    with torch.no_grad():
        assert torch.equal(placed(ids).logits, expected)
    hooked = dispatch(GPT2LMHeadModel.from_pretrained(saved), plan)  # accelerate's hooks, forced on one device
    assert hasattr(hooked.transformer.h[0], "_hf_hook") and hooked.hf_device_map == plan
    with torch.no_grad():
        assert torch.equal(hooked(ids).logits, expected)
    assert torch.equal(hooked.generate(ids, max_new_tokens=5), whole.generate(ids, max_new_tokens=5))


def test_device_map_errors_name_the_problem(saved):
    from gpt2_torch import GPT2LMHeadModel

    with pytest.raises(ValueError, match="gives no device for 'transformer.wpe'"):
        GPT2LMHeadModel.from_pretrained(saved, device_map={"transformer.wte": "cpu", "lm_head": "cpu"})
    with pytest.raises(ValueError, match="names no module"):
        GPT2LMHeadModel.from_pretrained(saved, device_map={"": "cpu", "transformer.h.9": "cpu"})
    with pytest.raises(ValueError, match="splits a unit that is placed whole.*'transformer.h.0'"):
        GPT2LMHeadModel.from_pretrained(saved, device_map={"": "cpu", "transformer.h.0.attn": "cpu"})
    with pytest.raises(ValueError, match="not available"):
        GPT2LMHeadModel.from_pretrained(saved, device_map={"": "cuda:7"})
    with pytest.raises(ValueError, match="Unknown device_map"):
        GPT2LMHeadModel.from_pretrained(saved, device_map="everywhere")
