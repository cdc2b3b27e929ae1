"""`gpt2 train --bf16` (`TrainConfig.precision="bf16"`) in every backend: mixed precision over float32 master weights.

For each backend, a 6-step fp32 run from the seed, and a bf16 run resumed from its step-3 checkpoint (a module
fixture: compiles are the cost here, so one run per precision, and the bf16 one is also the test that `--resume` may
switch fp32 to bf16). They show that the bf16 loss curve follows the fp32 one closely but not exactly (so bf16 really
ran), and that what the bf16 run saves (model and optimizer state) is float32 and loads in every backend. A bf16
trainer built from the seed shows where the compute runs in bfloat16 and that the loss is still float32.
"""

from __future__ import annotations

import importlib
import json
import logging
import shutil

import numpy as np
import pytest

from conftest import BACKENDS, TOL, corpus_dir
from gpt2_core import reference
from gpt2_core.training import TrainConfig, resolve_model_config

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)
TRAINING = {"torch": "gpt2_torch.training", "tf": "gpt2_tf.training", "flax": "gpt2_flax.training"}

# |bf16 loss - fp32 loss| per logged step, nats. Measured on this tiny model (1 layer, 32 wide,
# GPT-2's vocabulary, loss ~10.71 -> ~10.50 over steps 4-6): at most 5e-5 (torch), 1.6e-4 (tf), 7e-5 (flax; tf and flax
# keep the residual stream in bfloat16 too). 0.01 leaves room for other CPUs' kernels, while a loss computed in bf16
# itself (spacing 0.0625 near 10), a diverging run, or a resume that restarted from step 0 (10.83 vs 10.71) fails it.
CURVE_TOL = 0.01
# A loss computed in float32 from the bf16 logits agrees with float64 cross entropy of the same logits to ~1e-6; one
# computed in bfloat16 would be off by up to 0.03 (half its spacing near 10).
LOSS_TOL = 1e-4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    for f in sorted(corpus_dir().glob("*.txt"))[:3]:
        (d / f.name).write_text(f.read_text(encoding="utf-8")[:30000], encoding="utf-8")
    assert len(list(d.iterdir())) >= 2
    return d


def tc(corpus, out, **kw) -> TrainConfig:
    # no held-out split: an evaluation would be one more compile per run, and the step's forward is the same model's
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32,
                batch_size=4, max_steps=6, warmup_steps=2, learning_rate=3e-3, eval_fraction=0.0, log_every=1,
                dropout=0.0, save_every=3)
    base.update(kw)
    return TrainConfig(**base)


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def curve(out) -> dict[int, float]:
    """{step: training loss} of a run's metrics log."""
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r and "event" not in r}


@pytest.fixture(scope="module", params=BACKENDS)
def runs(request, corpus, tmp_path_factory):
    """(backend, fp32 run dir, bf16 run dir): 6 fp32 steps from the seed (checkpoints at 3 and 6), and steps 4-6 in
    bf16, resumed from a copy of the fp32 run's checkpoint-3."""
    train = importlib.import_module(TRAINING[request.param]).train
    fp32 = tmp_path_factory.mktemp(f"{request.param}_fp32")
    train(tc(corpus, fp32), progress=False)
    bf16 = tmp_path_factory.mktemp(f"{request.param}_bf16")
    shutil.copytree(fp32 / "checkpoint-3", bf16 / "checkpoint-3")
    train(tc(corpus, bf16, precision="bf16", resume=True), progress=False)
    return request.param, fp32, bf16


def test_resume_in_bf16_follows_the_fp32_curve(runs):
    """--resume may switch an fp32 run to bf16: the losses of steps 4-6 stay within CURVE_TOL of the fp32 run's,
    differ from them (bf16 ran), and the new checkpoints record bf16 (the resumed-from one fp32)."""
    _, fp32_dir, bf16_dir = runs
    fp32, bf16 = curve(fp32_dir), curve(bf16_dir)
    assert set(fp32) == {1, 2, 3, 4, 5, 6} and set(bf16) == {4, 5, 6}
    diffs = {k: abs(bf16[k] - fp32[k]) for k in bf16}
    assert max(diffs.values()) <= CURVE_TOL, diffs
    assert max(diffs.values()) > 0, ("bf16 gave the fp32 curve exactly: it did not run in bf16", diffs)
    for directory, precision in ((bf16_dir / "checkpoint-6", "bf16"), (bf16_dir / "checkpoint-3", "fp32"),
                                 (fp32_dir / "checkpoint-6", "fp32")):
        assert json.loads((directory / "trainer_state.json").read_text())["train_config"]["precision"] == precision


def test_saved_model_is_float32_and_loads_in_every_backend(runs, backend):
    """The bf16 run's final model: float32 in the file and in config.json, and each backend's load of it gives the
    float64 reference's logits on the weights it loaded."""
    from safetensors.numpy import load_file

    _, _, bf16_dir = runs
    saved = load_file(bf16_dir / "model.safetensors")
    assert {str(v.dtype) for v in saved.values()} == {"float32"}
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "float32"
    model = backend.load("lm", bf16_dir)
    weights = backend.canonical(model)
    assert {str(v.dtype) for v in weights.values()} == {"float32"}
    ids = np.asarray([[464, 3290, 286, 262, 995, 11, 290, 257]], np.int64)
    logits = backend.forward(model, "lm", input_ids=ids)["logits"]
    config = model.config
    want = reference.lm_logits(weights, config, reference.forward(weights, config, ids)["last_hidden_state"])
    assert np.abs(logits - want).max() <= TOL


def test_saved_optimizer_state_is_float32(runs):
    name, _, bf16_dir = runs
    ckpt = bf16_dir / "checkpoint-6"
    if name == "torch":
        import torch

        state = torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True)
        tensors = [t for s in state["state"].values() for t in s.values()
                   if torch.is_tensor(t) and t.is_floating_point()]
        dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors}
    else:
        with np.load(ckpt / "optimizer.npz", allow_pickle=False) as state:
            dtypes = {str(state[k].dtype) for k in state.files if state[k].dtype.kind == "f"}
    assert dtypes == {"float32"}


# -- where the compute runs in bf16 ------------------------------------------------------------------------------


def build(name, corpus, out, precision):
    """A backend's trainer built for `tc(corpus, out, precision=...)` from the seed, as run_training builds it."""
    module = importlib.import_module(TRAINING[name])
    trainer = getattr(module, {"torch": "TorchTrainer", "tf": "TFTrainer", "flax": "FlaxTrainer"}[name])()
    t = tc(corpus, out, precision=precision)
    config, _ = resolve_model_config(t)
    trainer.build(t, config=config, weights=None, optimizer_state=None)
    return trainer


def batch() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 50257, (4, 32)).astype(np.int32)


def check_torch(trainer, x):
    import torch

    model = trainer.model
    seen = []
    block = model.transformer.h[0]
    hooks = [block.mlp.c_fc.register_forward_hook(lambda m, i, o: seen.append(("c_fc out", o.dtype))),
             block.ln_2.register_forward_hook(lambda m, i, o: seen.append(("ln_2 in", i[0].dtype)))]
    try:
        loss, _ = trainer.step(x, 1e-3)
        assert set(seen) == {("c_fc out", torch.bfloat16), ("ln_2 in", torch.float32)}, seen
        seen.clear()
        trainer.evaluate([x])
        assert ("c_fc out", torch.bfloat16) in seen, seen
    finally:
        for h in hooks:
            h.remove()
    assert loss.dtype == torch.float32
    assert {p.dtype for p in model.parameters()} == {p.grad.dtype for p in model.parameters()} == {torch.float32}
    moments = [t for s in trainer.optimizer.state.values() for k, t in s.items() if k != "step"]
    assert moments and {t.dtype for t in moments} == {torch.float32}
    with torch.no_grad(), trainer.autocast():
        out = model(input_ids=torch.from_numpy(x).long(), labels=torch.from_numpy(x).long())
    assert out.logits.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    return out.logits.float().numpy(), float(out.loss)


def check_tf(trainer, x):
    import tensorflow as tf

    from gpt2_tf.weights import named_variables

    model = trainer.model
    assert model.dtype_policy.name == "mixed_bfloat16"
    assert model.compute_dtype == "bfloat16" and model.variable_dtype == "float32"
    assert {v.dtype for v in named_variables(model).values()} == {"float32"}
    assert {v.dtype for v in trainer.optimizer.m + trainer.optimizer.v} == {tf.float32}
    out = model(input_ids=tf.constant(x), labels=tf.constant(x), training=False)
    assert out.logits.dtype == tf.bfloat16 and out.loss.dtype == tf.float32
    return tf.cast(out.logits, tf.float32).numpy(), float(out.loss)


def check_flax(trainer, x):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    model = trainer.model
    assert model.dtype == jnp.bfloat16
    assert {v.get_value().dtype for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))} == {jnp.dtype("float32")}
    assert {leaf.dtype for leaf in jax.tree.leaves(trainer.opt_state) if jnp.issubdtype(leaf.dtype, jnp.floating)} == {
        jnp.dtype("float32")}
    out = model(input_ids=jnp.asarray(x), labels=jnp.asarray(x), deterministic=True)
    assert out.logits.dtype == jnp.bfloat16 and out.loss.dtype == jnp.float32
    return np.asarray(out.logits.astype(jnp.float32)), float(out.loss)


@pytest.mark.parametrize("name", BACKENDS)
def test_compute_is_bf16_over_float32_weights(name, corpus, tmp_path, caplog):
    """The trainer's model computes in bfloat16 (bf16 logits; torch: a Linear's output under the step's autocast,
    LayerNorm's input float32) over float32 parameters and optimizer state, says so in the log once, and its loss
    is float32: the float64 cross entropy of its own bf16 logits."""
    with caplog.at_level(logging.INFO):
        trainer = build(name, corpus, tmp_path, "bf16")
    said = [r for r in caplog.records if "bf16 mixed precision" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO, caplog.text
    x = batch()
    logits, loss = {"torch": check_torch, "tf": check_tf, "flax": check_flax}[name](trainer, x)
    assert abs(loss - reference.lm_loss(logits, x)) <= LOSS_TOL
