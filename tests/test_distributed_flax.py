"""`gpt2 train --backend flax` across JAX processes and with sharded parameters, and sharded generation.

Two processes on 127.0.0.1 (`jax.distributed`, gloo collectives on CPU), each with 2 virtual CPU devices, train the
tiny config: the loss curve is the one of a single process with one device and the same global batch, with
replicated and with `--shard-params` (FSDP) parameters; a one-process `--resume` from the two-process (sharded)
checkpoint continues that curve. In a 4-device process: per-device parameter and optimizer bytes drop by the shard
count, and generation with parameters sharded over the mesh (tensor parallel, FSDP, both) gives the unsharded tokens.

The subprocesses (both two-process runs and the 4-device script) start together and run while the one-process
reference trains in this process: each is mostly XLA compiles, and none depends on another.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import jax

from conftest import REPO, corpus_dir  # noqa: E402
from gpt2_core.training import TrainConfig  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)
# The float32 summation order differs between one device and four (the batch mean and the gradient all-reduce
# are split over devices). Measured max differences over the 6 steps: losses 9.5e-7, eval losses 4.8e-7, gradient
# norms 2.4e-7, Adam moments at step 3 5.6e-9; final weights 8e-6 (Adam's update of embedding rows whose tiny
# gradients sit near eps amplifies the last bits, as between the torch and Flax trainers in test_train_flax.py).
TOL = 1e-5
WEIGHTS_TOL = 5e-5
TIMEOUT = 600  # seconds for all the subprocesses together (they run side by side)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for f in sorted(corpus_dir().glob("*.txt"))[:3]:
        (d / f.name).write_text(f.read_text(encoding="utf-8")[:20000], encoding="utf-8")
    return d


SETTINGS = dict(block_size=32, batch_size=4, max_steps=6, warmup_steps=2, learning_rate=3e-3, eval_every=3,
                eval_batches=2, log_every=1, save_every=3, dropout=0.0)


def tc(corpus, out, **kw) -> TrainConfig:
    return TrainConfig(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY),
                       **{**SETTINGS, **kw})


def cli_args(corpus, out, *extra: str) -> list[str]:
    args = ["--backend", "flax", "--data", str(corpus), "--model", "gpt2", "-o", str(out), "--no-progress"]
    for key, value in SETTINGS.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    return args + [f"--set={k}={v}" for k, v in TINY.items()] + list(extra)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    """Start `cmd` in its own process group, its output into the file `log` (no pipe to fill meanwhile)."""
    with open(log, "w") as out:
        return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def wait_all(procs, logs: list[Path]) -> None:
    """Wait for every process (bounded by TIMEOUT in all), kill every group left in the end, require exit 0."""
    try:
        deadline = time.monotonic() + TIMEOUT
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        stop(procs)
    for p, log in zip(procs, logs):
        assert p.returncode == 0, (str(log), log.read_text()[-3000:])


def start_two_processes(corpus, out, logs, *extra: str) -> tuple[list[subprocess.Popen], list[Path]]:
    """The two `gpt2 train` processes of one run (jax.distributed on a free port, 2 CPU devices each), started."""
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
    envs = [dict(base, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2",
                 PYTHONPATH=str(REPO), JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)) for i in range(2)]
    cmd = [sys.executable, "-m", "gpt2_apps.train_cli", *cli_args(corpus, out, *extra)]
    paths = [logs / f"proc{i}.log" for i in range(2)]
    procs = []
    try:
        for env, path in zip(envs, paths):
            procs.append(start(cmd, env, path))
    except BaseException:
        stop(procs)
        raise
    return procs, paths


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out, key="loss"):
    return {r["step"]: r[key] for r in records(out) if key in r and "event" not in r}


def weights(directory):
    from safetensors.numpy import load_file

    return load_file(str(directory / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """{"one", "two", "two_sharded": output dir, "sharded": SHARDED_SCRIPT's result}. Started side by side: the two
    two-process runs (replicated, and `--shard-params`) and the 4-device script below, each in subprocesses, while
    the reference trains here: one process, one device, the same global batch."""
    from gpt2_flax.training import train_lm

    outs = {name: tmp_path_factory.mktemp(name) for name in ("one", "two", "two-sharded", "sharded", "resumed")}
    procs, logs = start_two_processes(corpus, outs["two"], tmp_path_factory.mktemp("two-logs"))
    done = threading.Event()

    def follow() -> None:
        """Once the sharded run has written checkpoint-3: one process on one device resumes a copy of it (the
        CLI, in the background). Bounded: gives up at TIMEOUT or when this process is done (the run then failed)."""
        ckpt, deadline = outs["two-sharded"] / "checkpoint-3", time.monotonic() + TIMEOUT
        ready = (ckpt / "trainer_state.json").exists  # written last: the checkpoint is complete
        while not ready():
            if (done.wait(0.2) and not ready()) or time.monotonic() > deadline:
                return
        shutil.copytree(ckpt, outs["resumed"] / "checkpoint-3")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "SLURM_", "OMPI_", "TPU_"))}
        env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
        cmd = [sys.executable, "-m", "gpt2_apps.train_cli", *cli_args(corpus, outs["resumed"], "--resume")]
        resumed.append(start(cmd, env, outs["resumed"] / "resume.log"))

    resumed, watcher = [], threading.Thread(target=follow, daemon=True)
    try:
        more = start_two_processes(corpus, outs["two-sharded"], tmp_path_factory.mktemp("two-sharded-logs"),
                                   "--shard-params")
        procs, logs = procs + more[0], logs + more[1]
        watcher.start()
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4",
                   PYTHONPATH=str(REPO))  # XLA_FLAGS must be set before jax starts
        result = outs["sharded"] / "result.json"
        logs.append(outs["sharded"] / "script.log")
        procs.append(start([sys.executable, "-c", SHARDED_SCRIPT, str(result)], env, logs[-1]))
        train_lm(tc(corpus, outs["one"]), progress=False)
        wait_all(procs, logs)
    except BaseException:
        done.set()
        if watcher.ident is not None:
            watcher.join()
        stop(procs + resumed)
        raise
    done.set()
    watcher.join()
    try:
        yield {"one": outs["one"], "two": outs["two"], "two_sharded": outs["two-sharded"],
               "sharded": json.loads(result.read_text()), "resumed": (outs["resumed"], resumed)}
    finally:
        stop(resumed)  # still running only if its test did not run (or failed)


@pytest.fixture(scope="module")
def one(runs):
    return runs["one"]


@pytest.fixture(scope="module")
def two(runs):
    return runs["two"]


@pytest.fixture(scope="module")
def two_sharded(runs):
    return runs["two_sharded"]


def check_same_run(one, other):
    """The same loss, eval loss, learning rate and gradient norm at every step, one metrics file (written by
    process 0 alone), and the same final weights."""
    a, b = records(one), records(other)
    assert b[0]["event"] == "start" and b[0]["world_size"] == 4 and a[0]["world_size"] == 1
    assert [sorted(r) for r in a[1:]] == [sorted(r) for r in b[1:]]  # no line twice: one writer
    for key in ("loss", "eval_loss", "grad_norm", "lr"):
        x, y = curve(one, key), curve(other, key)
        assert set(x) == set(y) and x, key
        diff = max(abs(x[s] - y[s]) for s in x)
        assert diff < TOL * (10 if key == "grad_norm" else 1), (key, diff, x, y)
    wa, wb = weights(one), weights(other)
    assert set(wa) == set(wb)
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) < WEIGHTS_TOL
    assert {p.name for p in other.glob("checkpoint-*")} == {"checkpoint-3", "checkpoint-6"}
    assert (other / "checkpoint-3" / "optimizer.npz").exists()


def test_two_processes_equal_one_process(one, two):
    check_same_run(one, two)


def test_two_processes_sharded_params_equal_one_process(one, two_sharded):
    """--shard-params (FSDP over the 4 devices of both processes): the same curve, and the checkpoint holds the
    whole model and optimizer state gathered from both processes."""
    check_same_run(one, two_sharded)
    saved = two_sharded / "checkpoint-3" / "optimizer.npz"
    with np.load(saved) as a, np.load(one / "checkpoint-3" / "optimizer.npz") as b:
        assert sorted(a) == sorted(b)
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < TOL


def test_one_process_resumes_a_two_process_checkpoint(one, runs):
    """Step 3 of the sharded two-process run, resumed by one process on one device (`gpt2 train --resume`, started
    by `runs` once that checkpoint existed): steps 4-6 follow the curve."""
    out, procs = runs["resumed"]
    assert procs, "the resume never started: the sharded run wrote no checkpoint-3"
    wait_all(procs, [out / "resume.log"])
    a, b = curve(one), curve(out)
    assert sorted(b) == [4, 5, 6]
    assert max(abs(a[s] - b[s]) for s in b) < TOL, (a, b)


SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from flax import nnx
    jax.config.update("jax_default_matmul_precision", "highest")
    from gpt2_core.config import GPT2Config
    from gpt2_core.training import TrainConfig
    from gpt2_flax import FlaxGPT2LMHeadModel, sharding
    from gpt2_flax.training import AdamWConfig, lm_train_step, make_lm_adamw

    config = GPT2Config(n_layer=1, n_embd=32, n_head=4, n_positions=64)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 7))
    model = FlaxGPT2LMHeadModel.from_config(config, seed=1)
    expected = np.asarray(model.generate(ids, max_new_tokens=12, do_sample=False).sequences)
    result = {"total": int(sum(v.nbytes for v in model.canonical_state_dict().values()))}
    for data, tp, fsdp in ((1, 4, False), (2, 2, True), (4, 1, True)):
        model = FlaxGPT2LMHeadModel.from_config(config, seed=1)
        mesh = sharding.make_mesh(data, tp)
        shardings = sharding.shard_model(model, mesh, fsdp=fsdp)
        result[f"{data}x{tp}"] = {
            "bytes": sorted(set(sharding.bytes_per_device(nnx.state(model, nnx.Param)).values())),
            "specs": {p: str(s.spec) for p, s in shardings.items()},
        }
        if tp > 1:  # generation with tensor-parallel parameters (and FSDP on top)
            got = np.asarray(model.generate(ids, max_new_tokens=12, do_sample=False).sequences)
            result[f"{data}x{tp}"].update(same_tokens=bool(np.array_equal(got, expected)), shape=list(got.shape))
    # FSDP training keeps the layout: parameters and Adam moments stay split after optimizer steps
    hp = AdamWConfig.from_train_config(TrainConfig())
    tx = make_lm_adamw(model, hp)
    values = {p: v.get_value() for p, v in sharding._param_vars(model).items()}
    placement = sharding.state_shardings(jax.eval_shape(tx.init, values), shardings, mesh)
    state = jax.jit(tx.init, out_shardings=placement)(values)
    batch = sharding.global_batch(mesh, np.random.default_rng(1).integers(0, config.vocab_size, (4, 16)).astype(np.int32))
    for _ in range(2):
        state, loss, _ = lm_train_step(model, state, batch, jax.numpy.float32(1e-3), hp)
    result["after_steps"] = {"params": sorted(set(sharding.bytes_per_device(nnx.state(model, nnx.Param)).values())),
                             "optimizer": sorted(set(sharding.bytes_per_device(state).values()))}
    with open(sys.argv[1], "w") as f:
        json.dump(result, f)
""")


@pytest.fixture(scope="module")
def sharded(runs):
    """The script above, run in a process with 4 virtual CPU devices (see `runs`)."""
    return runs["sharded"]


def test_sharded_generation_equals_unsharded(sharded):
    """Greedy tokens with the parameters split over "model" (tensor parallel), and over "model" and "data" (tensor
    parallel and FSDP), are the tokens of the one-device model."""
    for layout in ("1x4", "2x2"):
        assert sharded[layout]["same_tokens"] and sharded[layout]["shape"] == [2, 19], (layout, sharded[layout])
    specs = sharded["1x4"]["specs"]
    assert specs["transformer.h.0.attn.c_attn.kernel"] == "P(None, 'model')"
    assert specs["transformer.h.0.mlp.c_proj.kernel"] == "P('model',)"
    assert specs["transformer.wte.embedding"] == "P(None, 'model')"  # 50257 rows do not split in 4
    both = sharded["2x2"]["specs"]
    assert both["transformer.h.0.attn.c_attn.kernel"] == "P('data', 'model')"
    assert both["transformer.wte.embedding"] == "P(None, ('model', 'data'))"


def test_fsdp_divides_parameter_and_optimizer_bytes_by_the_shard_count(sharded):
    """Every parameter of the tiny config has an axis 4 divides: each device holds a quarter of the parameters,
    before and after training steps, and a quarter of the Adam moments (two per parameter, plus the step count)."""
    total = sharded["total"]
    assert sharded["4x1"]["bytes"] == [total // 4]
    assert sharded["after_steps"]["params"] == [total // 4]
    assert sharded["after_steps"]["optimizer"] == [2 * total // 4 + 4]  # mu, nu and the int32 step count
    # tensor parallel alone leaves LayerNorm, wpe and the row-parallel biases whole on every device; with FSDP on
    # top those are halved (split over "data" only) and the rest quartered
    assert total // 4 < sharded["2x2"]["bytes"][0] < sharded["1x4"]["bytes"][0] < total // 4 * 1.01
