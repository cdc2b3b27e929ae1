"""`gpt2 train --backend tf`: loss goes down, the curve equals the torch trainer's for the same config and seed,
resume continues the same curve, two MirroredStrategy replicas equal one device with the same global batch, and bad
data gives a clear error. Compiles are the cost here, so one 6-step run (a module fixture) serves three tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest


from conftest import REPO, corpus_dir  # noqa: E402
from gpt2_core import training as core_training
from gpt2_core.training import TrainConfig  # noqa: E402

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)


def cli(name: str) -> str:
    """The module of a command (`cli`, `train_cli`): gpt2_apps holds them (issue 9), gpt2_core did before."""
    return f"gpt2_apps.{name}" if (REPO / "gpt2_apps" / f"{name}.py").exists() else f"gpt2_core.{name}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    src = corpus_dir()
    for name in ("romeo-and-juliet.txt", "hamlet.txt", "macbeth.txt", "othello.txt"):
        f = src / name
        if f.exists():
            (d / name).write_text(f.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    assert len(list(d.iterdir())) >= 2
    return d


def tc(corpus, out, **kw):
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32, batch_size=4,
                max_steps=6, warmup_steps=2, learning_rate=3e-3, eval_every=3, eval_batches=2, log_every=1, dropout=0.0,
                save_every=3)
    base.update(kw)
    return TrainConfig(**base)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out):
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r and "event" not in r}


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    """6 steps, a checkpoint at step 3: the curve the other runs are compared with."""
    from gpt2_tf.training import train

    out = tmp_path_factory.mktemp("tf_full")
    result = train(tc(corpus, out), progress=False)
    return out, result


def test_training_lowers_loss_and_writes_hub_checkpoint(corpus, tmp_path):
    from gpt2_tf import TFGPT2LMHeadModel
    from gpt2_tf.training import train
    from gpt2_torch import GPT2LMHeadModel

    result = train(tc(corpus, tmp_path, max_steps=30, eval_every=30, save_every=0), progress=False)
    curve = losses(tmp_path)
    assert curve[30] < curve[1] - 1.0, curve
    assert np.isfinite(result["eval_loss"])
    tf_model = TFGPT2LMHeadModel.from_pretrained(tmp_path)  # the final model, Hub layout
    torch_model = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert tf_model.config.n_layer == torch_model.config.n_layer == 1 and (tmp_path / "vocab.json").exists()
    rows = records(tmp_path)
    assert rows[0]["event"] == "start" and rows[0]["backend"] == "tf" and rows[0]["world_size"] == 1
    assert rows[0]["unigram_eval_loss"] > 0 and rows[-1]["event"] == "end"
    assert set(rows[1]) == {"step", "loss", "lr", "grad_norm", "tokens_per_s", "time"}
    assert (tmp_path / "checkpoint-30" / "optimizer.npz").exists()
    assert (tmp_path / "checkpoint-30" / "trainer_state.json").exists()


def test_curve_equals_torch_trainer(corpus, full_run, tmp_path):
    """Same init (gpt2_core.reference.init_params), batches, schedule, decay mask, clipping and AdamW arithmetic:
    the curves agree to float32 round-off (measured ~1e-6; 1e-4 as for the Flax trainer, room for other CPUs' kernels)."""
    from gpt2_torch.training import train as torch_train

    torch_train(tc(corpus, tmp_path, save_every=0), progress=False)
    a, b = losses(full_run[0]), losses(tmp_path)
    assert set(a) == set(b) == set(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-4, (step, a[step], b[step])
    evals_tf = [r["eval_loss"] for r in records(full_run[0]) if "eval_loss" in r and "event" not in r]
    evals_torch = [r["eval_loss"] for r in records(tmp_path) if "eval_loss" in r and "event" not in r]
    np.testing.assert_allclose(evals_tf, evals_torch, atol=1e-4)


def test_resume_continues_the_same_curve(corpus, full_run, tmp_path, monkeypatch):
    from gpt2_tf import training

    real = core_training.learning_rate  # the loop's schedule, patched to stop the run at step 4

    def interrupt(step, cfg):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(core_training, "learning_rate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        training.train(tc(corpus, tmp_path), progress=False)
    monkeypatch.setattr(core_training, "learning_rate", real)
    training.train(tc(corpus, tmp_path, resume=True), progress=False)
    a, b = losses(full_run[0]), losses(tmp_path)
    for step in (5, 6):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


_TWO_CPUS = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from {train_cli} import main
sys.exit(main(sys.argv[1:]))
"""


def test_mirrored_two_replicas_equal_one_device(corpus, full_run, tmp_path):
    """MirroredStrategy over two logical CPUs (set before TF initialises, hence a subprocess) gives the curve of the
    one-device run with the same global batch."""
    args = ["--backend", "tf", "--data", str(corpus), "--model", "gpt2", "--block-size", "32", "--batch-size", "4",
            "--max-steps", "6", "--warmup-steps", "2", "--learning-rate", "3e-3", "--log-every", "1", "--eval-every", "3",
            "--eval-batches", "2", "--dropout", "0", "--no-progress", "-o", str(tmp_path)]
    args += [f"--set={k}={v}" for k, v in TINY.items()]
    env = dict(os.environ, PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    r = subprocess.run([sys.executable, "-c", _TWO_CPUS.format(train_cli=cli("train_cli")), *args], capture_output=True, text=True, env=env, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = losses(full_run[0]), losses(tmp_path)
    assert set(one) == set(two) == set(range(1, 7))
    for step in one:
        assert abs(one[step] - two[step]) < 1e-4, (step, one[step], two[step])
    assert records(tmp_path)[0]["world_size"] == 2


def test_train_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", cli("cli"), "train", "--backend", "tf", "--data", str(empty), "-o",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO), KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2"))
    assert r.returncode == 2 and "holds no text files" in r.stderr, r.stderr[-2000:]
