"""gpt2-verify (gpt2_apps.verify): the harness that loads one checkpoint in every backend and the NumPy reference and
compares logits, cached-vs-uncached decoding and greedy tokens for every pair. CI runs it on every backend pair here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, make_config
from gpt2_apps.cli import main as gpt2_main
from gpt2_apps.cli import verify_main
from gpt2_apps.verify import verify_model, verify_pair
from gpt2_core import naming, reference
from weights_convert.formats.safetensors import read_safetensors, save_safetensors


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    config = make_config("mistral", eos_token_id=[])
    save_safetensors(naming.to_hub_state_dict(reference.random_params(config, "lm", seed=21), "lm"), d)
    config.extra["architectures"] = ["GPT2LMHeadModel"]
    config.save_pretrained(d)
    return d


def run(*args):
    """The command in a fresh Python process (its exit status and streams as a user's shell sees them)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env)


def run_in_process(main, argv, capsys):
    """`main(argv)` of a console script in this process (the frameworks are imported once for the whole file; the
    process boundary itself is covered by test_truncated_file_is_a_clear_error): (exit status, stdout, stderr)."""
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_backend_pair_agrees(checkpoint):
    report = verify_model(checkpoint, ("torch", "tf", "flax"))
    assert report.ok, report.to_json()
    assert set(report.pairs) == {"torch-tf", "torch-flax", "tf-flax"}
    for name, entry in report.per_backend.items():
        assert entry["max_abs_logit_diff_vs_reference"] <= 1e-4, name
        assert entry["max_abs_cached_vs_uncached"] <= 1e-4, name
        n = entry["greedy_tokens_agree_with_reference"].split("/")
        assert n[0] == n[1] and int(n[1]) > 0, name
    for pair, entry in report.pairs.items():
        assert entry["max_abs_logit_diff"] <= 1e-4 and entry["ok"], pair


def test_cli_json_and_exit_status(checkpoint, capsys):
    code, out, err = run_in_process(verify_main, [str(checkpoint), "--backends", "torch,flax", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["ok"] is True


def test_corrupted_weights_fail_loudly(checkpoint, tmp_path, capsys):
    """A NaN planted in one weight: every comparison fails and the exit status is 1."""
    state = read_safetensors(checkpoint / "model.safetensors")
    state["transformer.h.1.mlp.c_fc.weight"][3, 5] = np.nan
    save_safetensors(state, tmp_path)
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    code, out, err = run_in_process(verify_main, [str(tmp_path), "--backends", "torch"], capsys)
    assert code == 1, out + err
    assert "FAIL" in out


def test_truncated_file_is_a_clear_error(checkpoint, tmp_path):
    data = (checkpoint / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 3])
    (tmp_path / "config.json").write_text((checkpoint / "config.json").read_text())
    r = run("-m", "gpt2_apps.verify", str(tmp_path), "--backends", "torch")
    assert r.returncode == 2 and "error" in r.stderr and "Traceback" not in r.stderr


def test_convert_then_verify_pair(checkpoint, tmp_path, capsys):
    """gpt2-convert --verify (= gpt2 convert --verify): h5 output holds the same tensors and passes the harness."""
    out = tmp_path / "h5"
    argv = ["convert", str(checkpoint), "-o", str(out), "--to", "tf", "--verify", "--no-progress"]
    code, _, err = run_in_process(gpt2_main, argv, capsys)
    assert code == 0, err
    assert "PASSED" in err and "source-converted" in err, err  # the verification ran
    report = verify_pair(checkpoint, out, backends=("torch",))
    assert report.ok and report.pairs["source-converted"]["max_relative_tensor_diff"] == 0.0


def test_a_sampling_generation_config_does_not_fail_greedy_agreement(checkpoint, tmp_path):
    """A checkpoint whose generation_config.json samples (as the shipped default model's does) is still compared
    greedily: the reference decodes greedily, so the backends must too."""
    import shutil

    d = tmp_path / "sampling"
    shutil.copytree(checkpoint, d)
    (d / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 1.5, "top_k": 0, "repetition_penalty": 1.3}), encoding="utf-8")
    report = verify_model(d, ("torch", "flax"), max_new_tokens=12)
    assert report.ok, report.to_json()
    for name, entry in report.per_backend.items():
        n = entry["greedy_tokens_agree_with_reference"].split("/")
        assert n[0] == n[1], name
