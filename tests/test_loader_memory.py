"""Loading a safetensors checkpoint reads each tensor as it is copied into the model: `load_pretrained` gives a lazy
`CheckpointTensors` mapping (values: read-only memory maps of the file), equal to the file's tensors, pinned to the
file it opened; and `from_pretrained` in every backend peaks near the checkpoint's size (a dict of every tensor
beside the parameters peaked at about 2x), measured in a fresh process."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from gpt2_core import naming, reference
from gpt2_core.config import GPT2Config
from weights_convert.formats.base import CheckpointTensors
from weights_convert.pretrained import load_pretrained, save_pretrained

REPO = Path(__file__).resolve().parents[1]
TINY = GPT2Config(vocab_size=96, n_positions=32, n_embd=16, n_layer=2, n_head=2)


def _save(directory: Path, config: GPT2Config, seed: int) -> dict[str, np.ndarray]:
    weights = reference.init_params(config, "lm", seed)
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    save_pretrained(directory, config, weights, "lm")
    return weights


def _memory_mapped(value: np.ndarray) -> bool:
    base = value
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base is not None


def test_load_pretrained_reads_lazily_and_equals_the_file(tmp_path):
    _save(tmp_path, TINY, 0)
    in_file = {k.removeprefix(naming.BODY_PREFIX): v for k, v in load_file(str(tmp_path / "model.safetensors")).items()}
    loaded = load_pretrained(tmp_path, "lm")
    canonical = loaded.canonical
    assert isinstance(canonical, CheckpointTensors)
    assert set(canonical) == set(naming.shape_table(TINY, "lm")) and len(canonical) == len(set(canonical))
    for key, value in canonical.items():
        want = in_file[key] if key in in_file else in_file["wte.weight"]  # a tied head: wte
        assert _memory_mapped(value) and not value.flags.writeable, key
        assert value.dtype == want.dtype and np.array_equal(value, want), key
    assert {k: np.asarray(v) for k, v in dict(canonical).items()}.keys() == set(canonical)
    # set / delete / contains, as a dict
    canonical["wte.weight"] = np.zeros((96, 16), np.float32)
    assert not canonical["wte.weight"].any()
    del canonical["wte.weight"]
    assert "wte.weight" not in canonical and "wte.weight" not in list(canonical)
    with pytest.raises(KeyError):
        canonical["wte.weight"]
    canonical.close()
    with pytest.raises(ValueError, match="closed before"):
        canonical["wpe.weight"]


def test_lazy_reads_stay_on_the_file_opened_under_the_lock(tmp_path):
    first = _save(tmp_path / "a", TINY, 1)
    _save(tmp_path / "b", TINY, 2)
    loaded = load_pretrained(tmp_path / "a", "lm")
    # an atomic save publishing a new checkpoint there after load_pretrained returned: the reads see the old one
    os.replace(tmp_path / "b" / "model.safetensors", tmp_path / "a" / "model.safetensors")
    for key in ("wte.weight", "h.1.mlp.c_fc.weight"):
        assert np.array_equal(loaded.canonical[key], first[key]), key


def test_every_backend_loads_what_the_file_holds(tmp_path, backend):
    weights = _save(tmp_path, TINY, 3)
    model = backend.load("lm", tmp_path)
    got = backend.canonical(model)
    assert set(got) == set(weights)
    for key in weights:
        np.testing.assert_array_equal(np.asarray(got[key], np.float32), weights[key], err_msg=key)


# The checkpoint of the memory check: ~150 MB, no tensor over 5 MB (so one tensor in flight is ~3% of it).
MEMORY_CONFIG = {"vocab_size": 1024, "n_positions": 256, "n_embd": 512, "n_layer": 12, "n_head": 8}
CHILD = r"""
import json, sys, time
from pathlib import Path

def kib(key):
    return int(next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key)).split()[1])

backend, big, tiny = sys.argv[1], sys.argv[2], sys.argv[3]
if backend == "torch":
    from gpt2_torch import GPT2LMHeadModel as cls
elif backend == "tf":
    from gpt2_tf import TFGPT2LMHeadModel as cls
else:
    from gpt2_flax import FlaxGPT2LMHeadModel as cls
warm = cls.from_pretrained(tiny)  # every lazily imported module in, before the peak is reset
del warm
Path("/proc/self/clear_refs").write_text("5")
before = kib("VmRSS:")
model = cls.from_pretrained(big)
print("RESULT " + json.dumps({"before_kib": before, "peak_kib": kib("VmHWM:"), "after_kib": kib("VmRSS:")}))
"""


@pytest.fixture(scope="module")
def memory_checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("loader_memory")
    config = GPT2Config(**MEMORY_CONFIG)
    _save(root / "big", config, 4)
    _save(root / "tiny", TINY, 5)
    size = (root / "big" / "model.safetensors").stat().st_size
    return root / "big", root / "tiny", size


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak reset")
@pytest.mark.parametrize("name", ["torch", "tf", "flax"])
def test_from_pretrained_peaks_near_the_checkpoint_size(memory_checkpoints, name):
    big, tiny, size = memory_checkpoints
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", CHILD, name, str(big), str(tiny)], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    got = json.loads(line.removeprefix("RESULT "))
    added = (got["peak_kib"] - got["before_kib"]) * 1024
    # ideal: the parameters once (1x) plus one tensor in flight; a dict of every tensor beside them: ~2x
    assert added < 1.5 * size, f"{name}: from_pretrained added {added / size:.2f}x the checkpoint's {size / 1e6:.0f} MB"
    assert (got["after_kib"] - got["before_kib"]) * 1024 > 0.8 * size, "the parameters must be in memory, copied"
