"""Loading a safetensors checkpoint reads each tensor as it is copied into the model: `load_pretrained` gives a lazy
`CheckpointTensors` mapping (values: read-only memory maps of the file), equal to the file's tensors, pinned to the
file it opened; every backend copies each tensor in row blocks (`weights_convert.formats.base.row_blocks`), TF in
place and Flax after dropping the value it replaces; and `from_pretrained` in every backend peaks near the
checkpoint's size (a dict of every tensor beside the parameters peaked at about 2x; whole-tensor copies at 1.2x in
torch, TF's whole-tensor assign and Flax's copies of each tensor beside the replaced one at 2.0x / 1.7x here),
measured in a fresh process."""

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
from weights_convert.formats import base as formats_base
from weights_convert.formats.base import CheckpointTensors, row_blocks
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


def test_row_blocks_cover_the_array_and_release_only_read_only_maps(tmp_path):
    data = np.arange(60 * 7, dtype=np.float32).reshape(60, 7)
    path = tmp_path / "a.bin"
    data.tofile(path)
    read_only = np.memmap(path, np.float32, mode="r", shape=(60, 7))
    changed = np.memmap(path, np.float32, mode="c", shape=(60, 7))  # copy-on-write: its changes live in its pages
    changed[:] = -1
    changed.flags.writeable = False
    for value in (data, read_only, read_only.T, read_only[5:], changed):
        blocks = list(row_blocks(value, nbytes=3 * value.strides[0] if value.strides[0] else 64))
        assert len(blocks) > 1 and blocks[0][0].start == 0 and blocks[-1][0].stop == value.shape[0]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), value)
        for rows, block in blocks:
            np.testing.assert_array_equal(block, np.asarray(value)[rows])
    np.testing.assert_array_equal(read_only, data)  # released pages read back from the file
    assert (changed == -1).all()  # never released: the changes are kept
    (rows, block), = row_blocks(np.float32(3.0).reshape(()))
    assert rows is Ellipsis and block == 3.0
    (rows, block), = row_blocks(np.zeros((0, 4)))
    assert rows == slice(0, 0) and block.shape == (0, 4)


def _torch_model(path, dtype):
    from gpt2_torch import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(path, dtype=dtype)


def _tf_model(path, dtype):
    from gpt2_tf import TFGPT2LMHeadModel

    return TFGPT2LMHeadModel.from_pretrained(path, dtype=dtype)


def _flax_model(path, dtype):
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.weights import cast_params

    model = FlaxGPT2LMHeadModel.from_pretrained(path)
    cast_params(model, dtype)
    model.load_canonical(load_pretrained(path, "lm").canonical)  # again, into parameters of `dtype`
    return model


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("build", [_torch_model, _tf_model, _flax_model], ids=["torch", "tf", "flax"])
def test_every_backend_copies_in_blocks_into_its_dtype(tmp_path, monkeypatch, build, dtype):
    import ml_dtypes

    monkeypatch.setattr(formats_base, "BLOCK_BYTES", 200)  # every matrix of TINY in several blocks
    weights = reference.init_params(TINY, "lm", 6)
    weights = {k: np.asarray(v, np.float32) for k, v in weights.items()}
    save_pretrained(tmp_path, TINY, {k: v.astype(ml_dtypes.bfloat16) for k, v in weights.items()}, "lm")
    model = build(tmp_path, dtype)
    got = model.canonical_state_dict()
    in_file = {k: v.astype(ml_dtypes.bfloat16).astype(dtype) for k, v in weights.items()}
    assert set(got) == set(in_file)
    for key, want in in_file.items():
        assert got[key].dtype == np.dtype(dtype), key
        np.testing.assert_array_equal(got[key], want, err_msg=key)
    # the parameters are copies: changing the arrays loaded from is not seen
    source = {k: np.array(v) for k, v in in_file.items()}
    model.load_canonical(source)
    for value in source.values():
        value[...] = 0
    for key, value in model.canonical_state_dict().items():
        np.testing.assert_array_equal(value, in_file[key], err_msg=key)


# The checkpoint of the memory check: 160 MB, its largest tensor (wte, 34 MB) about as large a part of it as in
# gpt2 (gpt2-medium: 15%, gpt2: 31%), the rest no more than 4 MB each.
MEMORY_CONFIG = {"vocab_size": 16384, "n_positions": 256, "n_embd": 512, "n_layer": 10, "n_head": 8}
# Each backend's bound on what from_pretrained adds, over the checkpoint's size. Measured on this checkpoint
# (docs/performance.md "Memory"): torch 1.03x (1.21x with whole-tensor copies); TF 1.15-1.24x (2.03x with a
# whole-tensor assign); Flax 1.27-1.35x (1.73x with copies of each tensor beside the value it replaced; once over
# 1.45x on a loaded machine, hence its margin). Besides the parameters (1x) the allocator keeps 20-70 MB, which
# varies from run to run.
PEAK_BOUND = {"torch": 1.15, "tf": 1.45, "flax": 1.6}
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
    # ideal: the parameters once (1x) plus one tensor (torch) or one block (TF, Flax) in flight; a dict of every
    # tensor beside them: ~2x
    assert added < PEAK_BOUND[name] * size, (
        f"{name}: from_pretrained added {added / size:.2f}x the checkpoint's {size / 1e6:.0f} MB, over "
        f"{PEAK_BOUND[name]}x"
    )
    assert (got["after_kib"] - got["before_kib"]) * 1024 > 0.8 * size, "the parameters must be in memory, copied"
