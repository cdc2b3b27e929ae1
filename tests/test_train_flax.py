"""`gpt2 train --backend flax` (gpt2_flax.training.train_lm): the torch trainer's loss curve on the same config and
seed, loss goes down, Hub checkpoints every backend loads, fine-tuning, resume continues the same curve, four
devices give the curve of one, and bad data exits with status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jax

from conftest import REPO, corpus_dir  # noqa: E402
from gpt2_core import training as core_training  # noqa: E402
from gpt2_core.training import TrainConfig  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)


def cli(name: str) -> str:
    """The module of a command (`cli`, `train_cli`): gpt2_apps holds them (issue 9), gpt2_core did before."""
    return f"gpt2_apps.{name}" if (REPO / "gpt2_apps" / f"{name}.py").exists() else f"gpt2_core.{name}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    src = corpus_dir()
    for f in sorted(src.glob("*.txt"))[:3]:
        (d / f.name).write_text(f.read_text(encoding="utf-8")[:30000], encoding="utf-8")
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
def runs(corpus, tmp_path_factory):
    """Six steps of the torch trainer and of the Flax trainer on the same config and seed (checkpoint at 3)."""
    from gpt2_flax.training import train_lm
    from gpt2_torch.training import train

    torch_out, flax_out = tmp_path_factory.mktemp("torch"), tmp_path_factory.mktemp("flax")
    train(tc(corpus, torch_out), progress=False)
    train_lm(tc(corpus, flax_out), progress=False)
    return torch_out, flax_out


def test_same_curve_as_the_torch_trainer(corpus, runs):
    """Same init (reference.init_params), batches, schedule, decay mask, clipping and Adam eps: the same curve.

    The gradients agree to ~1e-8 and the losses to ~1e-6 (float32 summation order). grad_norm differs by up to
    ~1e-5 relative from the first step because torch's clip_grad_norm_ sums in float32 with less accuracy (optax's
    global norm matches a float64 sum to 1e-8); later steps drift a little further (~3e-4) through the Adam updates
    of embedding rows whose tiny gradients sit near eps, which the loss barely sees."""
    torch_out, flax_out = runs
    config = tc(corpus, flax_out)
    a, b = records(torch_out), records(flax_out)
    assert [sorted(set(r) - {"backend"}) for r in a] == [sorted(set(r) - {"backend"}) for r in b]
    assert b[0]["event"] == "start" and b[0]["backend"] == "flax" and b[0]["world_size"] == 1
    for key in ("n_params", "n_tokens", "train_blocks", "eval_blocks", "eval_files", "unigram_eval_loss"):
        assert a[0][key] == b[0][key], key
    assert {**a[0]["train_config"], "output_dir": None} == {**b[0]["train_config"], "output_dir": None}
    for ra, rb in zip(a[1:], b[1:]):
        if "lr" in rb:  # exactly the shared schedule at every step (warmup starts at peak / warmup_steps)
            assert rb["lr"] == ra["lr"] == core_training.learning_rate(rb["step"] - 1, config)
            assert abs(ra["grad_norm"] - rb["grad_norm"]) < 1e-3 * ra["grad_norm"], (ra, rb)
        for key in ("loss", "eval_loss"):
            if key in rb:
                assert abs(ra[key] - rb[key]) < 1e-4, (key, ra, rb)
    assert set(losses(flax_out)) == set(range(1, 7))


def test_training_lowers_loss_and_writes_hub_checkpoint(corpus, tmp_path):
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.training import train_lm
    from gpt2_torch import GPT2LMHeadModel

    out = tmp_path / "scratch"
    result = train_lm(tc(corpus, out, max_steps=30, eval_every=30, save_every=0), progress=False)
    curve = losses(out)
    assert curve[30] < curve[1] - 1.0, curve
    assert np.isfinite(result["eval_loss"]) and result["step"] == 30
    ckpt = out / "checkpoint-30"
    assert {"model.safetensors", "config.json", "vocab.json", "optimizer.npz", "trainer_state.json"} <= {
        f.name for f in ckpt.iterdir()}
    assert core_training.read_state(ckpt)["step"] == 30
    flax_model = FlaxGPT2LMHeadModel.from_pretrained(out)  # the final model, Hub layout
    torch_model = GPT2LMHeadModel.from_pretrained(out).eval()
    assert flax_model.config.n_layer == 1 and (out / "vocab.json").exists()
    ids = np.arange(1, 17)[None]
    import torch

    with torch.no_grad():
        expected = torch_model(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.asarray(flax_model(ids).logits) - expected).max() < 1e-4

    # fine-tune the result: resolve_model_config sees a model dir and loads its weights instead of initialising
    ft = tmp_path / "ft"
    train_lm(tc(corpus, ft, model=str(out), overrides={}, max_steps=2, eval_every=100, save_every=0), progress=False)
    assert losses(ft)[1] < curve[1] - 1.0, (losses(ft), curve[1])


def test_resume_continues_the_same_curve(corpus, runs, tmp_path, monkeypatch):
    from gpt2_flax import training

    _, full = runs  # six steps, checkpoint at 3
    part = tmp_path / "part"
    real = core_training.learning_rate  # the loop's schedule, patched to stop the run at step 4

    def interrupt(step, cfg):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(core_training, "learning_rate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        training.train_lm(tc(corpus, part), progress=False)
    monkeypatch.setattr(core_training, "learning_rate", real)
    assert core_training.last_checkpoint(part).name == "checkpoint-3"
    training.train_lm(tc(corpus, part, resume=True), progress=False)
    a, b = losses(full), losses(part)
    # parameters and Adam moments both restored: a fresh optimizer state moves the losses of steps 5-6 by ~3e-3
    for step in (4, 5, 6):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


def cli_args(corpus):
    args = ["--data", str(corpus), "--model", "gpt2", "--block-size", "32", "--batch-size", "4", "--max-steps", "6",
            "--warmup-steps", "2", "--learning-rate", "3e-3", "--log-every", "1", "--eval-every", "3", "--eval-batches",
            "2", "--save-every", "3", "--dropout", "0", "--no-progress"]
    return args + [f"--set={k}={v}" for k, v in TINY.items()]


def test_four_devices_equal_one(corpus, runs, tmp_path):
    """4 CPU devices (XLA_FLAGS before jax starts, hence the subprocess): the global batch is sharded over a mesh and
    the loss curve is the one-device curve."""
    _, one = runs
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", cli("train_cli"), "--backend", "flax", *cli_args(corpus), "-o", str(tmp_path)],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["step"] == 6
    four = records(tmp_path)
    assert four[0]["world_size"] == 4
    a, b = losses(one), losses(tmp_path)
    assert set(a) == set(b) == set(range(1, 7))
    for step in a:
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])
    evals = lambda rows: [r["eval_loss"] for r in rows if "eval_loss" in r and "event" not in r]  # noqa: E731
    np.testing.assert_allclose(evals(four), evals(records(one)), atol=1e-5)


def test_decay_mask_is_matrices_only():
    from gpt2_core.config import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.training import lm_decay_mask

    for tie in (True, False):
        model = FlaxGPT2LMHeadModel.from_config(GPT2Config(vocab_size=50, tie_word_embeddings=tie, **TINY), seed=0)
        decayed = sorted(path for path, d in lm_decay_mask(model).items() if d)
        expected = [f"transformer.h.0.{m}.kernel" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
        assert decayed == sorted(expected + ([] if tie else ["lm_head.kernel"]))


def test_make_schedule_is_the_core_schedule():
    from gpt2_flax.training import make_schedule

    for peak, warmup, total, end in ((3e-3, 2, 6, None), (6e-4, 100, 1000, 1e-5), (1e-3, 0, 10, 0.0)):
        schedule = make_schedule(peak, warmup, total, end)
        config = TrainConfig(learning_rate=peak, warmup_steps=warmup, max_steps=total,
                             min_lr_ratio=0.1 if end is None else end / peak)
        for step in list(range(min(total, 12))) + [warmup, total - 1, total, total + 5]:
            expected = np.float32(core_training.learning_rate(step, config))
            assert float(schedule(jax.numpy.int32(step))) == expected, (peak, warmup, total, step)
    with pytest.raises(ValueError, match="warmup_steps < total_steps"):
        make_schedule(1e-3, 10, 10)


def test_make_optimizer_is_the_trainers_optimizer():
    """make_optimizer + train_step (the public path) and the `gpt2 train` step take the same steps: same decay set
    (large weight decay, so decaying the embeddings would show), schedule, clipping and AdamW arithmetic."""
    from gpt2_core.config import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.training import AdamWConfig, init_lm_optimizer_state, lm_train_step, make_optimizer, train_step

    config = GPT2Config(vocab_size=50, bos_token_id=49, eos_token_id=49, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, **TINY)
    tc_ = TrainConfig(learning_rate=3e-3, warmup_steps=2, max_steps=6, weight_decay=10.0, grad_clip=0.5)
    x = jax.numpy.asarray(np.random.default_rng(0).integers(0, 50, (4, 16)))
    public = FlaxGPT2LMHeadModel.from_config(config, seed=0)
    optimizer = make_optimizer(public, learning_rate=tc_.learning_rate, warmup_steps=tc_.warmup_steps,
                               total_steps=tc_.max_steps, weight_decay=tc_.weight_decay, b1=tc_.beta1, b2=tc_.beta2,
                               eps=tc_.eps, max_grad_norm=tc_.grad_clip)
    trainer = FlaxGPT2LMHeadModel.from_config(config, seed=0)
    hp = AdamWConfig.from_train_config(tc_)
    state = init_lm_optimizer_state(trainer, hp)
    for step in range(4):
        loss_a = float(train_step(public, optimizer, {"input_ids": x, "labels": x}))
        state, loss_b, _ = lm_train_step(trainer, state, x, jax.numpy.float32(core_training.learning_rate(step, tc_)), hp)
        assert abs(loss_a - float(loss_b)) < 1e-6, (step, loss_a, float(loss_b))
    a, b = public.canonical_state_dict(), trainer.canonical_state_dict()
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-6


def test_cli_errors_exit_2(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", cli("cli"), "train", "--backend", "flax", "--data", str(empty), "-o",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd=REPO,
                       env=dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu"))
    assert r.returncode == 2 and "holds no text files" in r.stderr, r.stderr
