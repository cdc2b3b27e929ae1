"""gpt2_flax's eager label / index checks (issue 12): every out-of-range label or index that gpt2_torch (and
transformers) refuse is a ValueError naming the field in gpt2_flax too, never a silent NaN or a wrapped index.
QA start/end positions are clamped, as transformers does, so they give the same finite loss as gpt2_torch.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import jax
import jax.numpy as jnp
import torch

from conftest import make_config
from gpt2_core import reference
from gpt2_flax.model import MODEL_CLASSES as FLAX_CLASSES
from gpt2_torch.model import MODEL_CLASSES as TORCH_CLASSES

B, C, T = 2, 2, 6  # batch, choices (double heads), sequence


@functools.lru_cache(maxsize=None)
def _models(head: str, summary_type: str = "cls_index"):
    """gpt2_torch and gpt2_flax models of `head` with the same random weights (made once per head)."""
    config = make_config("default", num_labels=3, summary_type=summary_type)
    params = reference.random_params(config, head, seed=3)
    torch_model = TORCH_CLASSES[head](config.copy()).eval()
    torch_model.load_canonical(params)
    flax_model = FLAX_CLASSES[head](config.copy())
    flax_model.load_canonical(params)
    return config, torch_model, flax_model


def _ids(config, shape, seed=0):
    return np.random.default_rng(seed).integers(1, config.vocab_size, shape).astype(np.int64)


def _case(name: str, config):
    """(head, inputs as NumPy, field named in the error)."""
    V = config.vocab_size
    ids = _ids(config, (B, T))
    labels = ids.copy()
    if name == "labels_minus_1":
        labels[0, 3] = -1
        return "lm", dict(input_ids=ids, labels=labels), "labels"
    if name == "labels_V":
        labels[1, 2] = V
        return "lm", dict(input_ids=ids, labels=labels), "labels"
    if name == "token_type_ids_V":
        return "base", dict(input_ids=ids, token_type_ids=np.full((B, T), V, np.int64)), "token_type_ids"
    if name == "negative_input_ids":
        ids[0, 0] = -3
        return "base", dict(input_ids=ids), "input_ids"
    mc_ids = _ids(config, (B, C, T), seed=1)
    mc_token_ids = np.full((B, C), T - 1, np.int64)
    if name == "mc_token_ids_T":
        mc_token_ids[1, 0] = T
        return "double", dict(input_ids=mc_ids, mc_token_ids=mc_token_ids), "mc_token_ids"
    if name == "mc_token_ids_negative":
        mc_token_ids[0, 1] = -1
        return "double", dict(input_ids=mc_ids, mc_token_ids=mc_token_ids), "mc_token_ids"
    if name == "mc_labels_C":
        return "double", dict(input_ids=mc_ids, mc_token_ids=mc_token_ids, mc_labels=np.array([0, C])), "mc_labels"
    if name == "mc_labels_minus_1":
        return "double", dict(input_ids=mc_ids, mc_token_ids=mc_token_ids, mc_labels=np.array([-1, 0])), "mc_labels"
    if name == "seqcls_labels_num_labels":
        return "seqcls", dict(input_ids=ids, labels=np.array([1, config.num_labels])), "labels"
    if name == "tokcls_labels_num_labels":
        tok = np.zeros((B, T), np.int64)
        tok[1, 4] = config.num_labels
        return "tokcls", dict(input_ids=ids, labels=tok), "labels"
    if name == "tokcls_labels_minus_1":
        tok = np.full((B, T), -100, np.int64)
        tok[0, 0] = -1
        return "tokcls", dict(input_ids=ids, labels=tok), "labels"
    raise AssertionError(name)


CASES = (
    "labels_minus_1",
    "labels_V",
    "token_type_ids_V",
    "negative_input_ids",
    "mc_token_ids_T",
    "mc_token_ids_negative",
    "mc_labels_C",
    "mc_labels_minus_1",
    "seqcls_labels_num_labels",
    "tokcls_labels_num_labels",
    "tokcls_labels_minus_1",
)


@pytest.mark.parametrize("case", CASES)
def test_flax_raises_where_torch_raises(case):
    """The oracle is gpt2_torch: it refuses the input. gpt2_flax must raise a ValueError naming the field (and the
    very text of gpt2_torch where that is a ValueError too), not return NaN or a wrapped index's finite loss."""
    config = make_config("default", num_labels=3)
    head, inputs, field = _case(case, config)
    _, torch_model, flax_model = _models(head)
    with pytest.raises(Exception) as torch_error:
        with torch.no_grad():
            torch_model(**{k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()})
    with pytest.raises(ValueError) as flax_error:
        flax_model(**{k: jnp.asarray(v) for k, v in inputs.items()}, deterministic=True)
    text = str(flax_error.value)
    assert field in text and "Received:" in text, text
    if isinstance(torch_error.value, ValueError):
        assert text == str(torch_error.value)


def test_ignore_index_still_ignored():
    """-100 labels stay transformers' ignore index: same loss as gpt2_torch, no error."""
    config, torch_model, flax_model = _models("lm")
    ids = _ids(config, (B, T))
    labels = ids.copy()
    labels[:, :3] = -100
    with torch.no_grad():
        expected = float(torch_model(input_ids=torch.from_numpy(ids), labels=torch.from_numpy(labels)).loss)
    got = float(flax_model(input_ids=jnp.asarray(ids), labels=jnp.asarray(labels), deterministic=True).loss)
    assert np.isfinite(got) and abs(got - expected) < 1e-4


def test_qa_positions_are_clamped_as_in_transformers():
    """transformers clamps start/end positions to [0, T] and ignores T: a finite loss equal to gpt2_torch's."""
    config, torch_model, flax_model = _models("qa")
    ids = _ids(config, (B, T))
    start, end = np.array([-5, 2]), np.array([T + 7, 1])
    with torch.no_grad():
        expected = float(
            torch_model(
                input_ids=torch.from_numpy(ids), start_positions=torch.from_numpy(start), end_positions=torch.from_numpy(end)
            ).loss
        )
    got = flax_model(
        input_ids=jnp.asarray(ids), start_positions=jnp.asarray(start), end_positions=jnp.asarray(end), deterministic=True
    ).loss
    assert np.isfinite(expected) and abs(float(got) - expected) < 1e-4


def test_traced_values_are_not_checked():
    """Inside a user's jit the values are unknown: no error is raised (documented in docs/flax.md)."""
    config, _, flax_model = _models("lm")
    ids = jnp.asarray(_ids(config, (B, T)))
    labels = ids.at[0, 3].set(config.vocab_size)

    @jax.jit
    def loss(ids, labels):
        return flax_model(input_ids=ids, labels=labels, deterministic=True).loss

    assert loss(ids, labels).shape == ()


@functools.lru_cache(maxsize=None)
def _jitted_lm_run():
    """The lm model's (loss, logits) under a user's jit, made once: one compiled program serves every case below (a
    new `jax.jit` per case compiled the same program again each time)."""
    _, _, flax_model = _models("lm")

    @jax.jit
    def run(inputs):
        out = flax_model(**inputs, deterministic=True)
        return out.loss, out.logits

    return run


@pytest.mark.parametrize("field,value", [
    ("input_ids", -1), ("input_ids", "V"), ("token_type_ids", -3), ("labels", -1), ("labels", "V"),
    ("position_ids", -1), ("position_ids", "P"),
])
def test_out_of_range_inside_jit_is_nan_never_a_plausible_answer(field, value):
    """issue 12: inside a user's jit nothing can raise, so an out-of-range id or label (negative ones too, which
    JAX would wrap to the last row) gives NaN, never a finite wrong loss. In-range inputs stay finite."""
    config, _, _ = _models("lm")
    run = _jitted_lm_run()
    ids = _ids(config, (B, T))
    inputs = {"input_ids": ids, "labels": ids.copy(), "token_type_ids": np.zeros_like(ids),
              "position_ids": np.broadcast_to(np.arange(T), (B, T)).copy()}
    loss, logits = run({k: jnp.asarray(v) for k, v in inputs.items()})
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(logits)).all()
    bad = {"V": config.vocab_size, "P": config.n_positions}.get(value, value)
    inputs[field][0, 3] = bad
    loss, logits = run({k: jnp.asarray(v) for k, v in inputs.items()})
    assert np.isnan(float(loss))
    if field != "labels":
        assert np.isnan(np.asarray(logits)[0, 3]).all()
