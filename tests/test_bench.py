"""bench/run.py: the runner runs our three backends and transformers eager (tiny model, --quick), writes the JSON and
the markdown table between the page's markers with ratios against transformers eager, and records a peer that is
not installed instead of stopping. No times are asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import run  # noqa: E402  (bench/run.py)

OURS_AND_BASELINE = ("gpt2_torch", "gpt2_tf", "gpt2_flax", "transformers_eager")


def test_quick_run_writes_json_and_table(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text("# intro\n\n<!-- bench:cpu:start -->\nold table\n<!-- bench:cpu:end -->\n\nafter\n")
    output = tmp_path / "run.json"
    cmd = [sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--device", "cpu", "--jobs", "4",
           "--contenders", ",".join(OURS_AND_BASELINE), "--measurements", "decode_b1",
           "--output", str(output), "--docs", str(page)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads(output.read_text())
    assert report["setup"]["device"] == "cpu" and report["setup"]["baseline"] == "transformers_eager"
    assert report["machine"]["cpu"] and report["machine"]["versions"]["torch"]
    base = report["contenders"]["transformers_eager"]["median"]
    for name in OURS_AND_BASELINE:
        entry = report["contenders"][name]
        assert entry["status"] == "ok", entry
        assert set(entry["median"]) == {"decode_b1"} and entry["median"]["decode_b1"] > 0, entry
        assert entry["speedup"]["decode_b1"] == pytest.approx(entry["median"]["decode_b1"] / base["decode_b1"])

    text = page.read_text()
    assert text.startswith("# intro\n") and text.endswith("\nafter\n") and "old table" not in text
    table = text.split("<!-- bench:cpu:start -->")[1].split("<!-- bench:cpu:end -->")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    for name in OURS_AND_BASELINE:
        label = run.CONTENDERS[name][1]
        speedup = report["contenders"][name]["speedup"]["decode_b1"]
        assert f"({speedup:.2f}x)" in rows[label], rows
    assert "(1.00x)" in rows[run.CONTENDERS["transformers_eager"][1]]
    assert report["machine"]["cpu"] in table


def test_missing_peer_is_recorded_not_raised(monkeypatch):
    def absent(spec):
        run._need("a_package_that_is_not_there")

    def broken(spec):
        return {"decode_b1": lambda: 1 / 0}

    monkeypatch.setitem(run.CONTENDERS, "ctranslate2_int8", (absent, "CTranslate2 int8", {}))
    monkeypatch.setitem(run.CONTENDERS, "keras_hub_jax", (broken, "keras-hub fp32, JAX backend", {}))
    spec = run.Spec(config=run.QUICK, prompt=4, new=4, forward=8, repeats=1, device="cpu")
    missing = run.run_worker("ctranslate2_int8", spec)
    assert missing["status"] == "not installed"
    failing = run.run_worker("keras_hub_jax", spec)
    assert failing["status"] == "ok" and "ZeroDivisionError" in failing["errors"]["decode_b1"]

    def ok(decode, forward):
        return {"status": "ok", "values": {"decode_b1": decode, "forward_1x1024": forward}, "errors": {}, "warmup_s": {}}

    names = ["transformers_eager", "gpt2_torch", "ctranslate2_int8", "keras_hub_jax", "gpt2_flax"]
    summary = run.summarize(names, {"transformers_eager": [ok(10.0, 2.0)], "ctranslate2_int8": [missing],
                                    "keras_hub_jax": [failing], "gpt2_flax": [],
                                    "gpt2_torch": [ok(30.0, 1.0), ok(5.0, 9.0), ok(20.0, 4.0)]})
    # medians over rounds (20 tok/s, 4 s); rates divided, seconds inverted: higher is better in every column
    assert summary["gpt2_torch"]["median"] == {"decode_b1": 20.0, "forward_1x1024": 4.0}
    assert summary["gpt2_torch"]["speedup"] == {"decode_b1": 2.0, "forward_1x1024": 0.5}
    report = {"setup": {"forward_tokens": 8, "device": "cpu", "model": "tiny", "prompt_tokens": 4, "new_tokens": 4,
                        "num_beams": 4, "rounds": 1, "repeats": 1, "command": "x", "date": "d",
                        "baseline": "transformers_eager", "load_before": 0, "load_after": 0},
              "machine": run.machine("cpu"), "contenders": summary}
    table = run.markdown(report)
    assert "| CTranslate2 int8 | not installed |" in table
    assert "| keras-hub fp32, JAX backend | failed |" in table
    assert "| gpt2_flax fp32 (jit) | not run |" in table
    assert "| gpt2_torch fp32 | 20 (2.00x) | - | - | 4 (0.50x) |" in table
