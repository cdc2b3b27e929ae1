"""gpt2_flax's per-call shortcuts of `generate` (docs/performance.md, "JAX/Flax: batch-1 decoding profile"): the
split of the model reused while its structure is unchanged (`generation._split`) and the zero cache made in one
dispatch (`generation._empty_cache`). Oracles: `nnx.split` itself, and the float64 NumPy reference's greedy decoding
(`gpt2_core.generation.reference_greedy`) on the weights the model holds at each call."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from conftest import make_config, padded_batch
from gpt2_core import reference
from gpt2_core.generation import make_generation_config, reference_greedy
from gpt2_flax import FlaxGPT2LMHeadModel
from gpt2_flax import generation

NEW = 5


def _model(config, params) -> FlaxGPT2LMHeadModel:
    model = FlaxGPT2LMHeadModel(config)
    model.load_canonical(params)
    return model


def _greedy(model, ids, mask) -> np.ndarray:
    return np.asarray(model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False).sequences)


def _assert_split_equal(model) -> None:
    graphdef, *states = generation._split(model)
    generation_config = model.generation_config
    model.generation_config = None
    try:
        want_graphdef, *want_states = nnx.split(model, nnx.Param, ...)
    finally:
        model.generation_config = generation_config
    assert graphdef == want_graphdef
    for got, want in zip(states, want_states):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        assert all(a is b for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)))  # the model's own arrays


def test_generate_follows_weight_changes_between_calls():
    config = make_config("default")
    first, second = (reference.random_params(config, "lm", seed=s) for s in (31, 32))
    model = _model(config, first)
    ids, mask = padded_batch(config, "left")
    gen = make_generation_config(config, ids.shape[1], max_new_tokens=NEW, do_sample=False)
    for params in (first, second, first):  # load_canonical replaces every array: the next call must use them
        model.load_canonical(params)
        np.testing.assert_array_equal(_greedy(model, ids, mask), reference_greedy(params, config, ids, mask, gen))
        _assert_split_equal(model)
    # one parameter changed in place (a Variable's value set), nothing else
    edited = dict(first)
    edited["h.0.mlp.c_fc.bias"] = first["h.0.mlp.c_fc.bias"] + 0.5
    model.transformer.h[0].mlp.c_fc.bias[...] = edited["h.0.mlp.c_fc.bias"]
    np.testing.assert_array_equal(_greedy(model, ids, mask), reference_greedy(edited, config, ids, mask, gen))
    _assert_split_equal(model)


def test_generate_follows_structure_changes_between_calls():
    config = make_config("default")
    params = reference.random_params(config, "lm", seed=33)
    model = _model(config, params)
    ids, mask = padded_batch(config, "left")
    gen = make_generation_config(config, ids.shape[1], max_new_tokens=NEW, do_sample=False)
    want = reference_greedy(params, config, ids, mask, gen)
    np.testing.assert_array_equal(_greedy(model, ids, mask), want)
    model.train()  # static attributes change (dropout modes): a new split; generate still runs deterministically
    _assert_split_equal(model)
    np.testing.assert_array_equal(_greedy(model, ids, mask), want)
    model.eval()
    # a bigger vocabulary: new modules and arrays; the old rows keep their logits, the new rows are drawn at
    # random, so compare against the reference on the model's own (resized) weights
    model.resize_token_embeddings(config.vocab_size + 3)
    _assert_split_equal(model)
    resized = model.canonical_state_dict()
    gen = make_generation_config(model.config, ids.shape[1], max_new_tokens=NEW, do_sample=False)
    np.testing.assert_array_equal(_greedy(model, ids, mask), reference_greedy(resized, model.config, ids, mask, gen))


def test_empty_cache_buffers_are_distinct_zeros():
    # the carry is donated: every buffer must be its own
    config = make_config("default")
    model = _model(config, reference.random_params(config, "lm", seed=34))
    cache = generation._empty_cache(model, 3, 11)
    buffers = cache.key + cache.value
    assert len(buffers) == 2 * config.n_layer
    assert len({b.unsafe_buffer_pointer() for b in buffers}) == len(buffers)
    for b in buffers:
        assert b.shape == (3, config.n_head, 11, config.head_dim) and b.dtype == model.dtype
        assert not np.asarray(b).any()
