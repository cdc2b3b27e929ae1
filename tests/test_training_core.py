"""gpt2_core.training's loop without a framework: a NumPy unigram model behind the TrainerBackend protocol shows
the cadence (logs, evaluations, checkpoints), the checkpoint layout, resume, and the errors. Then the model
directory rule: a directory holding only another backend's weights (`tf_model.h5`) fine-tunes them, never trains
from scratch in silence."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from gpt2_core import training as core_training
from gpt2_core.config import GPT2Config
from gpt2_core.training import TrainConfig, resolve_model_config, run_training

TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)


class UnigramBackend:
    """A TrainerBackend in NumPy: logits over the vocabulary, plain SGD; `momentum` stands in for optimizer state."""

    name = "numpy"
    rank = 0
    world_unit = "devices"

    def __init__(self, world_size: int = 1) -> None:
        self.world_size = world_size
        self.calls: list[str] = []

    def build(self, tc, *, config, weights, optimizer_state):
        self.calls.append(f"build config={config is not None} weights={weights is not None} "
                          f"optimizer_state={optimizer_state is not None}")
        if weights is not None:
            self.logits = np.load(Path(weights) / "logits.npy")
        else:
            self.logits = np.random.default_rng(tc.seed).normal(0, 0.02, config.vocab_size)
        if optimizer_state is not None:
            self.momentum = np.load(optimizer_state / "momentum.npy")
        else:
            self.momentum = np.zeros_like(self.logits)

    def num_parameters(self):
        return self.logits.size

    def _loss_and_grad(self, batch):
        z = self.logits - self.logits.max()
        logp = z - np.log(np.exp(z).sum())
        counts = np.bincount(batch.reshape(-1), minlength=logp.size)
        loss = -(counts * logp).sum() / batch.size
        return loss, np.exp(logp) - counts / batch.size

    def step(self, batch, lr):
        loss, grad = self._loss_and_grad(batch)
        self.momentum = 0.9 * self.momentum + grad
        self.logits = self.logits - 1e3 * lr * self.momentum
        return loss, np.linalg.norm(grad)

    def eval_batch_size(self, tc):
        return tc.batch_size

    def evaluate(self, batches):
        return float(np.mean([self._loss_and_grad(b)[0] for b in batches])) if batches else float("nan")

    def save(self, directory, *, optimizer):
        self.calls.append(f"save {directory.name} optimizer={optimizer}")
        np.save(directory / "logits.npy", self.logits)
        if optimizer:
            np.save(directory / "momentum.npy", self.momentum)

    def sync(self):
        pass

    def close(self):
        self.calls.append("close")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    words = np.random.default_rng(0).choice(["to", "be", "or", "not", "that", "is", "the", "question"], 6000)
    (d / "a.txt").write_text(" ".join(words[:3000]), encoding="utf-8")
    (d / "b.txt").write_text(" ".join(words[3000:]), encoding="utf-8")
    return d


def tc(corpus, out, **kw):
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32, batch_size=4,
                max_steps=6, warmup_steps=2, learning_rate=3e-3, eval_every=3, eval_batches=2, log_every=2,
                save_every=3, dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out) if "loss" in r and "event" not in r}


def test_cadence_and_checkpoint_layout(corpus, tmp_path):
    backend = UnigramBackend()
    result = run_training(tc(corpus, tmp_path), backend, progress=False)
    rows = records(tmp_path)
    assert rows[0]["event"] == "start" and rows[0]["backend"] == "numpy" and rows[0]["world_size"] == 1
    assert rows[-1]["event"] == "end" and rows[-1]["step"] == 6
    assert [r["step"] for r in rows[1:-1] if "loss" in r] == [2, 4, 6]  # log_every=2 (and the last step)
    assert [r["step"] for r in rows[1:-1] if "eval_loss" in r] == [3, 6]
    assert [r["lr"] for r in rows[1:-1] if "lr" in r] == [core_training.learning_rate(s - 1, tc(corpus, tmp_path))
                                                          for s in (2, 4, 6)]
    assert result["step"] == 6 and np.isfinite(result["eval_loss"])
    assert losses(tmp_path)[6] < losses(tmp_path)[2]
    # checkpoints at save_every and at the end, each complete (state last); the final model without optimizer
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    for d in tmp_path.glob("checkpoint-*"):
        assert {"logits.npy", "momentum.npy", "vocab.json", "trainer_state.json"} <= {f.name for f in d.iterdir()}
    assert core_training.read_state(tmp_path / "checkpoint-3")["step"] == 3
    assert (tmp_path / "logits.npy").exists() and not (tmp_path / "momentum.npy").exists()
    assert backend.calls == ["build config=True weights=False optimizer_state=False", "save checkpoint-3 optimizer=True",
                             "save checkpoint-6 optimizer=True", f"save {tmp_path.name} optimizer=False", "close"]
    # each checkpoint and the final model hold the whole tokenizer: byte for byte (and mode) what it saves itself
    oracle = tmp_path / "oracle"
    core_training.load_tokenizer(None).save_pretrained(oracle)
    want = {f.name: (f.read_bytes(), f.stat().st_mode) for f in oracle.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "merges.txt"} <= set(want)
    for d in (tmp_path / "checkpoint-3", tmp_path / "checkpoint-6", tmp_path):
        assert {name: ((d / name).read_bytes(), (d / name).stat().st_mode) for name in want} == want, d.name


def test_resume_continues_the_same_curve(corpus, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    run_training(tc(corpus, full, log_every=1), UnigramBackend(), progress=False)

    class Interrupted(UnigramBackend):  # stopped (Ctrl-C) in its fifth step, after the checkpoint at step 3
        def step(self, batch, lr):
            self.steps = getattr(self, "steps", 0) + 1
            if self.steps == 5:
                raise KeyboardInterrupt
            return super().step(batch, lr)

    with pytest.raises(KeyboardInterrupt):
        run_training(tc(corpus, part, log_every=1), Interrupted(), progress=False)
    assert core_training.last_checkpoint(part).name == "checkpoint-3"
    backend = UnigramBackend()
    run_training(tc(corpus, part, log_every=1, resume=True), backend, progress=False)
    assert backend.calls[0] == "build config=False weights=True optimizer_state=True"
    a, b = losses(full), losses(part)
    assert set(a) == set(b) == set(range(1, 7))
    for step in a:
        assert a[step] == b[step], (step, a[step], b[step])
    assert sum(r.get("event") == "start" for r in records(part)) == 1  # a resumed run appends to the same log


def test_errors(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"divisible by the number of devices. Received: batch_size=4, 3 devices"):
        run_training(tc(corpus, tmp_path), UnigramBackend(world_size=3), progress=False)

    class Diverging(UnigramBackend):
        def step(self, batch, lr):
            return float("nan"), 0.0

    with pytest.raises(FloatingPointError, match="The loss became nan at step 0"):
        run_training(tc(corpus, tmp_path / "nan"), Diverging(), progress=False)


# -- which directories hold weights -----------------------------------------------------------------------------


def model_dir(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    GPT2Config(**TINY).save_pretrained(path)
    for f in files:
        (path / f).write_bytes(b"")
    return path


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin", "tf_model.h5", "flax_model.msgpack",
                                     "model.safetensors.index.json", "tf_model.h5.index.json"])
def test_any_backends_weights_fine_tune(tmp_path, weights):
    d = model_dir(tmp_path / "m", weights)
    config, pretrained = resolve_model_config(TrainConfig(model=str(d)))
    assert pretrained == str(d) and config.n_embd == 32


def test_unreadable_weights_are_an_error(tmp_path):
    d = model_dir(tmp_path / "m", "model-00001-of-00002.safetensors", "weights.h5")
    with pytest.raises(ValueError, match=r"holds weights in no format gpt2 train reads.*model-00001-of-00002"):
        resolve_model_config(TrainConfig(model=str(d)))


def test_config_only_trains_from_scratch_and_says_so(tmp_path, caplog):
    d = model_dir(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="gpt2_core.training"):
        config, pretrained = resolve_model_config(TrainConfig(model=str(d)))
    assert pretrained is None and config.n_embd == 32
    assert "no weights" in caplog.text and "from scratch" in caplog.text


def test_directory_without_config_is_an_error(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "tf_model.h5").write_bytes(b"")
    with pytest.raises(ValueError, match="holds no config.json"):
        resolve_model_config(TrainConfig(model=str(d)))


def test_tf_h5_only_directory_fine_tunes_its_weights(corpus, tmp_path):
    """--model DIR holding only tf_model.h5 (written by weights_convert) trains from those weights: the first loss
    equals the one from the same weights as safetensors, and differs from a run from scratch."""
    import torch  # in the all extra: a missing torch fails, never skips
    from weights_convert import convert

    from gpt2_torch import GPT2LMHeadModel
    from gpt2_torch.training import train

    src = tmp_path / "src"
    torch.manual_seed(0)
    GPT2LMHeadModel.from_config(GPT2Config(**TINY), seed=123).save_pretrained(src)
    h5 = convert(src, tmp_path / "h5", to="tf")
    configs = {"config.json", "generation_config.json"}  # the generation config travels with the weights
    assert sorted(f.name for f in h5.iterdir() if f.name not in configs and not f.name.startswith(".")) == ["tf_model.h5"]
    first = {}
    for name, model in (("safetensors", src), ("h5", h5), ("scratch", "gpt2")):
        out = tmp_path / f"out-{name}"
        train(tc(corpus, out, model=str(model), overrides={} if name != "scratch" else dict(TINY), max_steps=1,
                 log_every=1, save_every=0, eval_every=100), progress=False)
        first[name] = losses(out)[1]
    assert abs(first["h5"] - first["safetensors"]) < 1e-5, first
    assert abs(first["h5"] - first["scratch"]) > 1e-3, first


# -- precision ----------------------------------------------------------------------------------------------------


def test_precision_is_validated_and_may_change_on_resume():
    assert TrainConfig().precision == "fp32" and core_training.PRECISIONS == ("fp32", "bf16")
    TrainConfig(data=["x"], precision="bf16").validate()
    with pytest.raises(ValueError, match=r"--precision must be one of fp32, bf16\. Received: precision='fp16'"):
        TrainConfig(data=["x"], precision="fp16").validate()
    assert "precision" in core_training.RESUME_MAY_CHANGE


def test_cli_precision_flags():
    from gpt2_apps.train_cli import build_parser

    parse = build_parser().parse_args
    assert parse(["--data", "x"]).precision == "fp32"
    assert parse(["--data", "x", "--bf16"]).precision == "bf16"
    assert parse(["--data", "x", "--precision", "bf16"]).precision == "bf16"
    with pytest.raises(SystemExit):
        parse(["--data", "x", "--precision", "fp16"])
