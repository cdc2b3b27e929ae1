"""Shared fixtures: tiny configs, random canonical weights made once in NumPy, and the `backend` fixture.

Each backend is driven through its adapter in the one registry, `gpt2_apps.backends` (the one the `gpt2` CLI and
`gpt2-verify` use), with full fp32 matmul precision (no TF32, XLA "highest"):

    build(head, config, canonical, dtype=None) -> model  # a model of that head holding exactly these weights
    forward(model, head, **numpy_inputs) -> dict         # output fields as NumPy (tuples kept), inputs as NumPy
    canonical(model) -> dict[str, np.ndarray]            # the model's weights back through gpt2_core.naming
    generate(model, input_ids, attention_mask=None, **kwargs) -> np.ndarray
    save(model, directory) / load(head, directory)

so one test body runs on every backend and compares against gpt2_core.reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from gpt2_core.config import GPT2Config  # noqa: E402

from gpt2_apps.backends import BACKENDS, get_backend  # noqa: E402  (after KERAS_BACKEND)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

_TINY = dict(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, bos_token_id=96, eos_token_id=96, pad_token_id=0)

# The configs the foundation issue names: default-shaped tiny, both Mistral flags, n_inner, each activation,
# unscaled attention; plus an untied LM head.
CONFIGS = {
    "default": dict(_TINY),
    "mistral": dict(_TINY, scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True),
    "n_inner": dict(_TINY, n_inner=24),
    "relu": dict(_TINY, activation_function="relu"),
    "gelu": dict(_TINY, activation_function="gelu"),
    "silu": dict(_TINY, activation_function="silu"),
    "no_scale": dict(_TINY, scale_attn_weights=False),
    "untied": dict(_TINY, tie_word_embeddings=False, num_labels=3),
}

HEADS = ("base", "lm", "double", "qa", "seqcls", "tokcls")

# max-abs tolerances (fp32): against the float64 reference and across frameworks
TOL = 1e-4
TOL_TORCH_HF = 1e-5


def make_config(name: str = "default", **overrides) -> GPT2Config:
    return GPT2Config(**{**CONFIGS[name], **overrides})


def backend_adapter(name: str):
    """The registry's adapter of backend `name` (gpt2_apps.backends), set to full fp32 matmul precision."""
    adapter = get_backend(name)
    adapter.highest_precision()
    return adapter


@pytest.fixture(params=BACKENDS)
def backend(request):
    """The adapter of one backend; every test using it runs once per framework, with its own id."""
    return backend_adapter(request.param)


@pytest.fixture(scope="session")
def rng():
    return np.random.default_rng(1234)


def padded_batch(config: GPT2Config, side: str, seed: int = 0):
    """(input_ids, attention_mask) for 3 rows of lengths 7, 4, 6 padded to 7 on `side`, pad id = pad_token_id."""
    r = np.random.default_rng(seed)
    lengths = [7, 4, 6]
    T = max(lengths)
    ids = np.full((len(lengths), T), config.pad_token_id, dtype=np.int64)
    mask = np.zeros((len(lengths), T), dtype=np.int64)
    for i, n in enumerate(lengths):
        row = r.integers(1, config.vocab_size - 1, n)
        if side == "right":
            ids[i, :n], mask[i, :n] = row, 1
        else:
            ids[i, T - n :], mask[i, T - n :] = row, 1
    return ids, mask


SAMPLE_CORPUS = REPO / "tests" / "data" / "shakespeare"


def shared_dir() -> Path:
    """`../shared` beside the repository: required in CI, where it is always laid out."""
    if not SHARED.is_dir():
        pytest.fail(f"../shared is missing next to the repo ({SHARED}); CI lays it there. The tests need it.")
    return SHARED


def corpus_dir() -> Path:
    """Real English for the tests: the shared Shakespeare corpus, or the committed sample of it in a plain clone
    (the opening of four plays; tests that read only those openings get the same text either way)."""
    shared = SHARED / "corpus" / "shakespeare"
    return shared if shared.is_dir() else SAMPLE_CORPUS


def whole_corpus_dir() -> Path:
    """The whole shared corpus, for the checks that need all of it: skipped in a plain clone without `../shared`,
    never in CI (`CI` set), where a missing corpus fails."""
    shared = SHARED / "corpus" / "shakespeare"
    if shared.is_dir():
        return shared
    if os.environ.get("CI"):
        pytest.fail(f"The shared corpus is missing ({shared}); CI lays ../shared beside the repo.")
    pytest.skip(f"needs the whole Shakespeare corpus at {shared} (../shared); a plain clone has only the sample")
