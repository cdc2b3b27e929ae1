"""The small GPT-2 shipped in the package: `gpt2 generate "ROMEO:"` works offline in every backend, the three
backends print the same greedy text, and the model predicts held-out Shakespeare far better than a unigram model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import BACKENDS, REPO, whole_corpus_dir
from gpt2_apps.cli import DEFAULT_MODEL_DIR

# the plays the default model never saw (see its training log, bench/train_default_model.sh)
HELD_OUT = ("edward-iii.txt", "titus-andronicus.txt")


def test_shipped_files():
    files = {p.name for p in DEFAULT_MODEL_DIR.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt"} <= files
    size = sum(p.stat().st_size for p in DEFAULT_MODEL_DIR.iterdir())
    assert size <= 20 * 2**20, size
    from safetensors import safe_open

    with safe_open(str(DEFAULT_MODEL_DIR / "model.safetensors"), framework="numpy") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {np.dtype(np.float16)}
    config = json.loads((DEFAULT_MODEL_DIR / "config.json").read_text())
    assert config["vocab_size"] == 50257


def generate_cli(backend_name: str) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    r = subprocess.run([sys.executable, "-m", "gpt2_apps.cli", "generate", "--backend", backend_name, "--no-do-sample", "--max-new-tokens", "48", "ROMEO:"],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def torch_text() -> str:
    return generate_cli("torch")


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_generate_offline_in_every_backend(backend_name, torch_text):
    text = torch_text if backend_name == "torch" else generate_cli(backend_name)
    assert text.startswith("ROMEO:") and len(text) > 60
    # reads like the plays: verse lines and a speaker name on a line of its own
    assert re.search(r"^[A-Z][A-Za-z' ]+:$", text, re.M), text
    assert text == torch_text, (backend_name, text, torch_text)  # the same greedy text in every backend


def test_held_out_loss_beats_unigram():
    import torch

    from gpt2_core import GPT2Tokenizer
    from gpt2_torch import GPT2LMHeadModel

    tok = GPT2Tokenizer()
    model = GPT2LMHeadModel.from_pretrained(DEFAULT_MODEL_DIR)
    src = whole_corpus_dir()
    train_ids = np.concatenate([np.asarray(tok.encode(p.read_text())) for p in sorted(src.glob("*.txt")) if p.name not in HELD_OUT])
    counts = np.bincount(train_ids, minlength=50257) + 1
    logp = np.log(counts / counts.sum())
    held = np.asarray(tok.encode((src / HELD_OUT[1]).read_text()))[: 4 * 256]
    blocks = torch.from_numpy(held.reshape(4, 256))
    with torch.no_grad():
        loss = float(model(blocks, labels=blocks).loss)
    unigram = float(-logp[held[1:]].mean())
    assert loss < unigram - 1.0, (loss, unigram)
