"""`gpt2 train --backend tf` as two workers on 127.0.0.1 (MultiWorkerMirroredStrategy from TF_CONFIG): the loss
curve equals the one-process run with the same global batch, only the chief writes, a one-process --resume from the
two-worker checkpoint continues the curve, workers resuming from different steps are refused, and --shard-params is
refused with the reason and the alternatives.

The oracle is the one-process run (the default strategy, one XLA program), itself tested against the torch trainer
in tests/test_train_tf.py. Tolerance 1e-4 on every step's loss, as there; measured max difference 9.5e-7 (all-reduced
per-replica gradients vs one device's, float32 round-off).

The two workers start as subprocesses (TF_CONFIG is read when the strategy is made, before TF's runtime starts) while
the one-process reference trains in this process; each worker has its own output directory, as on two machines.
The one-process reference is the longest part (its XLA compiles), so the resumed runs (a one-process `gpt2 train
--resume`, which compiles the same again, and the mismatched pair) start as soon as the chief has written
checkpoint-3, while the reference still trains. Cost: ~125 s of CPU time in all (user + sys, this process and its
children; XLA compiles of the one-process train and eval steps are most of it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import REPO, corpus_dir

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)
STEPS = 6
TIMEOUT = 480  # seconds for the two workers together (and for the resumed runs); a worker whose peer died waits in a collective forever


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for name in ("romeo-and-juliet.txt", "othello.txt"):
        (d / name).write_text((corpus_dir() / name).read_text(encoding="utf-8")[:30000], encoding="utf-8")
    return d


def settings(corpus, out, **kw) -> dict:
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32,
                batch_size=4, max_steps=STEPS, warmup_steps=2, learning_rate=3e-3, eval_every=3, eval_batches=2,
                log_every=1, dropout=0.0, save_every=3)
    base.update(kw)
    return base


def cli_args(s: dict) -> list[str]:
    args = ["--backend", "tf", "--data", *s["data"], "-o", s["output_dir"], "--model", s["model"], "--no-progress"]
    for name in ("block_size", "batch_size", "max_steps", "warmup_steps", "learning_rate", "eval_every",
                 "eval_batches", "log_every", "dropout", "save_every"):
        args += ["--" + name.replace("_", "-"), str(s[name])]
    return args + [f"--set={k}={v}" for k, v in s["overrides"].items()]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r and "event" not in r}


def start_workers(outs, extra=()) -> list[subprocess.Popen]:
    """One `gpt2 train` process per output dir, worker i with TF_CONFIG task index i, on free localhost ports."""
    hosts = [f"127.0.0.1:{p}" for p in free_ports(len(outs))]
    procs = []
    try:
        for i, s in enumerate(outs):
            tf_config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}
            env = dict(os.environ, PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2",
                       TF_CONFIG=json.dumps(tf_config))
            procs.append(subprocess.Popen([sys.executable, "-m", "gpt2_apps.train_cli", *cli_args(s), *extra],
                                          env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True, start_new_session=True))
    except BaseException:
        stop(procs)
        raise
    return procs


def finish(procs) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each worker; the whole group is killed on a timeout or an error."""
    out = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=TIMEOUT)
            out.append((p.returncode, stdout, stderr))
        return out
    finally:
        stop(procs)


def stop(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def start_resumes(chief, corpus, resume_one, mismatched) -> list[subprocess.Popen]:
    """From the chief's checkpoint-3: a one-process `gpt2 train --resume` alone in a fresh directory, and two workers
    resuming where only rank 0's --output-dir holds that checkpoint."""
    shutil.copytree(chief / "checkpoint-3", resume_one / "checkpoint-3")
    shutil.copytree(chief / "checkpoint-3", mismatched[0] / "checkpoint-3")
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env.update(PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    cmd = [sys.executable, "-m", "gpt2_apps.train_cli", *cli_args(settings(corpus, resume_one)), "--resume"]
    procs = [subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)]
    try:
        procs += start_workers([settings(corpus, out, resume=True) for out in mismatched], ["--resume"])
    except BaseException:
        stop(procs)
        raise
    return procs


@pytest.fixture(scope="module")
def runs(corpus, tmp_path_factory):
    """(one-process output dir, the chief's, worker 1's, the workers' results, the resumed runs' output dir and
    results): the two workers train in subprocesses while the one-process reference trains here; once the chief
    has written checkpoint-3 (a thread watches for it), the three resumed processes of `start_resumes` start too,
    so they run while this process still trains."""
    from gpt2_core.training import TrainConfig
    from gpt2_tf.training import train

    one = tmp_path_factory.mktemp("tf_one")
    outs = [tmp_path_factory.mktemp(f"tf_worker{i}") for i in range(2)]
    resume_one = tmp_path_factory.mktemp("tf_resume_one")
    mismatched = [tmp_path_factory.mktemp(f"tf_mismatch{i}") for i in range(2)]
    procs = start_workers([settings(corpus, out) for out in outs])
    later, done, failed = [], threading.Event(), []

    def follow() -> None:  # bounded: gives up at TIMEOUT or when this process is done (the workers then failed)
        deadline = time.monotonic() + TIMEOUT
        ready = (outs[0] / "checkpoint-3" / "trainer_state.json").exists  # written last: the checkpoint is complete
        while not ready():
            if (done.wait(0.2) and not ready()) or time.monotonic() > deadline:
                return
        try:
            later.extend(start_resumes(outs[0], corpus, resume_one, mismatched))
        except BaseException as e:  # noqa: BLE001  (reported by the fixture)
            failed.append(e)

    watcher = threading.Thread(target=follow, daemon=True)
    watcher.start()
    try:
        train(TrainConfig(**settings(corpus, one)), progress=False)
        results = []
        for code, stdout, stderr in finish(procs):
            assert code == 0, stderr[-3000:]
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    except BaseException:
        done.set()
        watcher.join()
        stop(procs + later)
        raise
    done.set()
    watcher.join()
    if failed:
        raise failed[0]
    assert later, "the resumed runs never started: the chief wrote no checkpoint-3"
    resumed = finish(later)
    return one, outs[0], outs[1], results, (resume_one, resumed)


def test_two_workers_equal_one_process(runs):
    one, chief, _, results, _ = runs
    a, b = losses(one), losses(chief)
    assert set(a) == set(b) == set(range(1, STEPS + 1))
    diff = max(abs(a[s] - b[s]) for s in a)
    assert diff < 1e-4, (diff, a, b)
    start = records(chief)[0]
    assert start["event"] == "start" and start["world_size"] == 2
    assert results[0]["loss"] == results[1]["loss"] == b[STEPS]  # both workers hold the same model


def test_only_the_chief_writes(runs):
    _, chief, worker1, _, _ = runs
    assert sorted(os.listdir(worker1)) == []  # it took part in every evaluation and save, and wrote nothing
    assert (chief / "checkpoint-3" / "optimizer.npz").exists() and (chief / "model.safetensors").exists()
    assert sum(1 for r in records(chief) if r.get("event") == "start") == 1


@pytest.fixture(scope="module")
def resumed(runs):
    """(the one-process resume's output dir, the mismatched workers' results), from `runs`."""
    resume_one, ((code, _, stderr), *mismatched) = runs[4]
    assert code == 0, stderr[-3000:]
    return resume_one, mismatched


def test_one_process_resumes_the_two_worker_checkpoint(runs, resumed):
    """The two-worker run's checkpoint-3: a one-process --resume trains steps 4-6 on the curve of the uninterrupted
    one-process run."""
    one, resume_one = runs[0], resumed[0]
    a, b = losses(one), losses(resume_one)
    assert set(b) == {4, 5, 6}
    for step in b:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])


def test_workers_resuming_from_different_steps_are_refused(resumed):
    """--resume where only rank 0's --output-dir holds the checkpoint: both workers stop with the reason, instead
    of running out of step (rank 1 would start at step 0) and waiting in a collective forever."""
    for code, _, stderr in resumed[1]:
        assert code == 2 and "The workers start from different steps" in stderr, stderr[-3000:]
        assert "[3, 0]" in stderr or "[0, 3]" in stderr, stderr[-3000:]


def test_shard_params_is_refused_with_the_alternatives(corpus, tmp_path):
    from gpt2_core.training import TrainConfig
    from gpt2_tf.training import train

    with pytest.raises(ValueError, match="--shard-params is not available with --backend tf") as e:
        train(TrainConfig(**settings(corpus, tmp_path, shard_params=True)), progress=False)
    assert "--backend flax --shard-params" in str(e.value) and "--backend torch --shard-params" in str(e.value)
    assert "shard_params=True" in str(e.value)
    assert os.listdir(tmp_path) == []  # refused before anything was written


@pytest.mark.parametrize("tf_config, match", [
    ("{not json", "TF_CONFIG is not a valid cluster description"),
    (json.dumps({"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]},
                 "task": {"type": "ps", "index": 0}}), "task is not a training worker"),
])
def test_bad_tf_config(monkeypatch, tf_config, match):
    from gpt2_tf import training

    monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=match):
        training._cluster()


def test_rank_is_the_worker_index(monkeypatch):
    from gpt2_tf import training

    hosts = ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
    cases = [({"worker": hosts}, "worker", 2, 2), ({"chief": hosts[:1], "worker": hosts[1:]}, "chief", 0, 0),
             ({"chief": hosts[:1], "worker": hosts[1:]}, "worker", 0, 1)]
    for cluster, task_type, index, rank in cases:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}}))
        assert training._rank(training._cluster()) == rank, (cluster, task_type, index)
    one_worker = {"cluster": {"worker": hosts[:1]}, "task": {"type": "worker", "index": 0}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(one_worker))
    assert training._cluster() is None  # one worker: the single-machine strategies
