"""Memory: the KV cache each backend allocates is sized to the request (the decoding plan's buckets), not to
`n_positions`; and `bench/bench_memory.py --quick` (a tiny shape, fresh subprocesses) writes its JSON and table."""

from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys

import numpy as np

from conftest import REPO
from gpt2_core import reference
from gpt2_core.config import GPT2Config
from gpt2_core.memory import num_parameters

# n_positions far above the request, so a cache sized to n_positions and one sized to the request differ
CONFIG = dict(vocab_size=97, n_positions=256, n_embd=32, n_layer=2, n_head=4, bos_token_id=96, eos_token_id=96,
              pad_token_id=0)  # fmt: skip


def _record_caches(backend, monkeypatch) -> list[tuple[int, ...]]:
    """Patch the backend's cache constructors to record the (B, N, S_max, H) shape of every cache they make."""
    seen: list[tuple[int, ...]] = []
    KVCache = importlib.import_module(f"{backend.package}.cache").KVCache
    init = KVCache.init.__func__

    def spy_init(cls, *args, **kwargs):
        cache = init(cls, *args, **kwargs)
        seen.append(tuple(int(d) for d in cache.key[0].shape))
        return cache

    monkeypatch.setattr(KVCache, "init", classmethod(spy_init))
    if backend.name == "flax":  # its generate builds the donated carry's buffers itself
        generation = importlib.import_module("gpt2_flax.generation")
        empty = generation._empty_cache

        def spy_empty(*args, **kwargs):
            cache = empty(*args, **kwargs)
            seen.append(tuple(int(d) for d in cache.key[0].shape))
            return cache

        monkeypatch.setattr(generation, "_empty_cache", spy_empty)
    return seen


def test_generate_cache_is_bucketed_not_n_positions(backend, monkeypatch):
    config = GPT2Config(**CONFIG)
    model = backend.build("lm", config, reference.random_params(config, "lm", seed=0))
    seen = _record_caches(backend, monkeypatch)
    ids = np.random.default_rng(0).integers(1, 90, (2, 10))
    out = backend.generate(model, ids, max_new_tokens=20, eos_token_id=[])
    assert out.shape == (2, 30)
    # prompt 10 -> bucket 16, 20 new tokens -> bucket 32 (buckets 16, 32, 64, then multiples of 64): 48 slots
    assert seen and set(seen) == {(2, config.n_head, 48, config.head_dim)}, seen
    assert 48 < config.n_positions
    # what bench_memory reports as the request's cache: the bytes of those buffers (key and value per layer)
    sys.path.insert(0, str(REPO / "bench"))
    try:
        bench_memory = importlib.import_module("bench_memory")
    finally:
        sys.path.remove(str(REPO / "bench"))
    cache_bytes = 2 * config.n_layer * math.prod(seen[0]) * 4
    assert math.isclose(bench_memory.kv_cache_mb(CONFIG, 2, 10, 20) * 1e6, cache_bytes)


def test_forward_use_cache_holds_the_input_only(backend, monkeypatch):
    config = GPT2Config(**CONFIG)
    model = backend.build("lm", config, reference.random_params(config, "lm", seed=0))
    seen = _record_caches(backend, monkeypatch)
    ids = np.random.default_rng(1).integers(1, 90, (3, 10))
    out = backend.forward(model, "lm", input_ids=ids, use_cache=True)
    assert seen == [(3, config.n_head, 10, config.head_dim)]
    assert all(k.shape == v.shape == (3, config.n_head, 10, config.head_dim) for k, v in out["past_key_values"])


def test_quick_run_writes_json_and_table(tmp_path):
    output = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_memory.py"), "--quick", "--contenders", "gpt2_torch",
         "--output", str(output)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(output.read_text())
    assert results["prompt"] == 8 and results["new_tokens"] == 8 and list(results["shapes"]) == ["tiny"]
    entry = results["shapes"]["tiny"]
    config = GPT2Config(**entry["config"])
    assert entry["n_params"] == num_parameters(config)
    # float32 safetensors: 4 bytes per parameter plus a JSON header of a few KB
    assert 4 * entry["n_params"] < entry["checkpoint_mb"] * 1e6 < 4 * entry["n_params"] + 1e5
    phases = entry["contenders"]["gpt2_torch"]
    assert list(phases) == ["import", "load", "generate_b1", "generate_b8"]
    for name, got in phases.items():
        assert "error" not in got, (name, got)
        assert got["peak_mb"] > 0 and got["rss_mb"] > 0 and got["peak_mb"] >= got["rss_mb"] * 0.999
        assert got["import_s"] > 0
    base = phases["import"]["peak_mb"]
    load = phases["load"]
    assert load["peak_mb"] > base and load["load_s"] > 0
    assert math.isclose(load["added_mb"], load["peak_mb"] - base)
    assert math.isclose(load["added_over_checkpoint"], load["added_mb"] / entry["checkpoint_mb"])
    for name in ("generate_b1", "generate_b8"):
        got = phases[name]
        assert got["peak_reset"] is True  # Linux: the generate peak is measured from the loaded model's RSS
        assert got["loaded_mb"] > base and got["peak_mb"] > base and got["generate_s"] > 0
        assert got["peak_mb"] >= got["loaded_mb"] * 0.999
        assert math.isclose(got["over_loaded_mb"], got["peak_mb"] - got["loaded_mb"])
        assert got["load"]["peak_mb"] >= got["loaded_mb"] * 0.999  # the load's own peak, before the reset
    assert math.isclose(entry["kv_cache_mb"]["b8"], 8 * entry["kv_cache_mb"]["b1"]) and entry["kv_cache_mb"]["b1"] > 0
    table = proc.stdout
    assert "| shape (checkpoint) | contender |" in table and "| tiny (" in table and "| gpt2_torch |" in table
    assert f"| {load['peak_mb']:.0f} (+{load['added_mb']:.0f}, {load['added_over_checkpoint']:.2f}x) |" in table
