"""`gpt2 train --backend torch`: loss goes down, resume continues the same curve, two-process DDP equals one
process with the same global batch, and bad data gives clear errors. Also the `gpt2 generate` command."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess

import numpy as np
import pytest
import torch

from conftest import REPO, corpus_dir, make_config
from gpt2_core import training as core_training
from gpt2_core.training import TrainConfig

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
    assert len(list(d.iterdir())) == 3
    return d


def tc(corpus, out, **kw):
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TINY), block_size=32, batch_size=4,
                max_steps=6, warmup_steps=2, learning_rate=3e-3, eval_every=3, eval_batches=2, log_every=1, dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def losses(out):
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r and "event" not in r}


def test_training_lowers_loss_and_writes_hub_checkpoint(corpus, tmp_path):
    from gpt2_torch.training import train
    from gpt2_torch import GPT2LMHeadModel

    result = train(tc(corpus, tmp_path, max_steps=30, eval_every=30), progress=False)
    curve = losses(tmp_path)
    assert curve[30] < curve[1] - 1.0, curve
    assert np.isfinite(result["eval_loss"])
    model = GPT2LMHeadModel.from_pretrained(tmp_path)  # the final model, Hub layout
    assert model.config.n_layer == 1 and (tmp_path / "vocab.json").exists()
    start = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["unigram_eval_loss"] > 0


def test_resume_continues_the_same_curve(corpus, tmp_path, monkeypatch):
    from gpt2_torch import training

    full = tmp_path / "full"
    training.train(tc(corpus, full, save_every=3), progress=False)
    part = tmp_path / "part"
    real = core_training.learning_rate  # the loop's schedule, patched to stop the run at step 4

    def interrupt(step, cfg):
        if step == 4:
            raise KeyboardInterrupt
        return real(step, cfg)

    monkeypatch.setattr(core_training, "learning_rate", interrupt)
    with pytest.raises(KeyboardInterrupt):
        training.train(tc(corpus, part, save_every=3), progress=False)
    monkeypatch.setattr(core_training, "learning_rate", real)
    training.train(tc(corpus, part, save_every=3, resume=True), progress=False)
    a, b = losses(full), losses(part)
    for step in (5, 6):
        assert abs(a[step] - b[step]) < 1e-5, (step, a[step], b[step])


# torchrun --nproc_per_node 2 against one process: tests/test_distributed_torch.py (DDP and FSDP, loss and gradient
# norm of every step, and the memory record), which launches its runs together with the other distributed tests.


def run_cli(*args):
    """`gpt2 ARGS` in this process (torch is imported once for the file; tests/test_faults.py and test_apps.py run
    the console scripts as processes): its exit status and what it wrote, as `subprocess.run` reports them."""
    import importlib

    main = importlib.import_module(cli("cli")).main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's own errors
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_train_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli("train", "--data", str(empty), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "holds no text files" in r.stderr
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    r = run_cli("train", "--data", str(bad), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "not UTF-8" in r.stderr
    good = tmp_path / "good.txt"
    good.write_text("hello world " * 100)
    r = run_cli("train", "--data", str(good), "--set", "n_positions=64", "--block-size", "128", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "block_size exceeds the model's n_positions" in r.stderr
    r = run_cli("train", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "No such file or directory" in r.stderr


def test_generate_command(tmp_path):
    from gpt2_core import GPT2Tokenizer
    from gpt2_torch import GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(make_config("default", vocab_size=50257, n_positions=64)).eval()
    model.save_pretrained(tmp_path)
    r = run_cli("generate", "--model", str(tmp_path), "--max-new-tokens", "5", "ROMEO:")
    assert r.returncode == 0, r.stderr
    tok = GPT2Tokenizer()
    ids = torch.tensor([tok.encode("ROMEO:")])
    expected = "ROMEO:" + tok.decode(model.generate(ids, max_new_tokens=5)[0, ids.shape[1]:], skip_special_tokens=True)
    assert r.stdout.strip() == expected.strip()
    r = run_cli("generate", "--model", str(tmp_path / "nope"), "x")
    assert r.returncode == 2 and "error" in r.stderr
