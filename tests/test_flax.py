"""gpt2_flax beyond the shared equivalence suite: compiled generation (against gpt2_torch token for token, no
recompilation within a shape bucket, sampling), the preallocated KV cache, dropout modes, jit, training with optax
(every head; data parallel on 4 CPU devices in a subprocess; a few hundred steps on the Shakespeare corpus), the
same ValueErrors as gpt2_torch, and checkpoints that transformers loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import jax
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from conftest import REPO, TOL, make_config, padded_batch, corpus_dir  # noqa: E402
from gpt2_core import generation as core_generation  # noqa: E402
from gpt2_core import reference  # noqa: E402
from gpt2_flax import FlaxGPT2LMHeadModel, KVCache, default_rngs  # noqa: E402
from gpt2_flax import generation  # noqa: E402
from gpt2_flax.model import MODEL_CLASSES  # noqa: E402
from gpt2_flax.training import eval_step, make_optimizer, train_step  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


def flax_lm(config, seed: int = 0) -> FlaxGPT2LMHeadModel:
    model = FlaxGPT2LMHeadModel(config.copy())
    model.load_canonical(reference.random_params(config, "lm", seed=seed))
    return model


# -- generation -------------------------------------------------------------------------------------------------


def test_jit_greedy_generation_equals_torch():
    """Left-padded batch, one row stopping at eos: the compiled decode gives gpt2_torch's tokens exactly."""
    import torch
    from gpt2_torch import GPT2LMHeadModel

    config = make_config("mistral")
    params = reference.random_params(config, "lm", seed=21)
    ids, mask = padded_batch(config, "left")
    ref_model = GPT2LMHeadModel(config.copy()).eval()
    ref_model.load_canonical(params)
    free = ref_model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=10, eos_token_id=[])
    eos = int(free[1, ids.shape[1] + 2])  # row 1 emits it at its third step (or earlier)
    expected = ref_model.generate(
        torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=10, eos_token_id=eos
    ).numpy()
    model = flax_lm(config, seed=21)
    got = np.asarray(model.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos).sequences)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.int32 and (got[1, ids.shape[1] :] == eos).any()


def test_generation_compiles_once_per_bucket():
    # n_positions=64 leaves room for gpt2_core.generation's buckets (16 + 16 slots, then 16 + 32).
    config = make_config("default", n_positions=64)
    model = flax_lm(config, seed=22)
    ids, mask = padded_batch(config, "left")  # T = 7: bucket 16
    model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[])
    before = generation.trace_count()
    # Another prompt length and another number of new tokens in the same buckets, and other weights.
    model.generate(ids[:, 1:], attention_mask=mask[:, 1:], max_new_tokens=7, eos_token_id=[])
    other = flax_lm(config, seed=23)
    out = other.generate(ids, attention_mask=mask, max_new_tokens=3, eos_token_id=[]).sequences
    assert generation.trace_count() == before
    assert out.shape == (3, ids.shape[1] + 3)
    model.generate(ids, attention_mask=mask, max_new_tokens=17, eos_token_id=[])  # bucket 32: a new program
    assert generation.trace_count() == before + 1


def test_generation_follows_the_core_plan():
    """The compiled program sees the plan's shapes: ids (B, Tb) and a whole-buffer mask (B, Tb + Nb)."""
    config = make_config("default", n_positions=64)
    model = flax_lm(config, seed=22)
    ids, mask = padded_batch(config, "left")
    plan = core_generation.plan_decoding(config, *ids.shape, 5)
    seen = {}
    original = generation._generate

    def spy(structure, state, input_ids, attention_mask, carry, *args, **kwargs):
        new_bucket = carry["seq"].shape[1] - input_ids.shape[1]  # the token buffer: prompt bucket + new slots
        seen.update(ids=input_ids.shape, mask=attention_mask.shape, new_bucket=new_bucket)
        return original(structure, state, input_ids, attention_mask, carry, *args, **kwargs)

    generation._generate = spy
    try:
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, eos_token_id=[]).sequences
    finally:
        generation._generate = original
    B = ids.shape[0]
    assert seen == dict(ids=(B, plan.prompt_bucket), mask=(B, plan.cache_length), new_bucket=plan.new_bucket)
    assert out.shape == (B, ids.shape[1] + 5)


def test_sampling_reproducible_and_consistent_with_greedy():
    config = make_config("default", n_positions=64)  # the structure above: its greedy program is reused
    model = flax_lm(config, seed=24)
    ids, mask = padded_batch(config, "left")
    kw = dict(attention_mask=mask, max_new_tokens=6, eos_token_id=[])
    gen = lambda **k: np.asarray(model.generate(ids, **k, **kw).sequences)  # noqa: E731
    a = gen(do_sample=True, seed=1, temperature=1.5, top_k=20, top_p=0.9)
    b = gen(do_sample=True, seed=1, temperature=1.5, top_k=20, top_p=0.9)
    c = gen(do_sample=True, seed=2, temperature=1.5, top_k=20, top_p=0.9)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    greedy = gen()
    # top_k=1, or a top_p that keeps only the most likely token, is greedy whatever the other filters do: the same
    # processors as above (the processor set is a static switch), so these two reuse the program of a, b and c
    np.testing.assert_array_equal(gen(do_sample=True, seed=3, temperature=1.5, top_k=1, top_p=0.9), greedy)
    np.testing.assert_array_equal(gen(do_sample=True, seed=3, temperature=1.5, top_k=20, top_p=1e-6), greedy)


@pytest.mark.parametrize("temperature, top_k, top_p", [(1.0, 5, None), (0.7, None, 0.8), (1.3, 10, 0.5)])
def test_process_logits_matches_core(temperature, top_k, top_p):
    logits = np.random.default_rng(0).standard_normal((3, 50)).astype(np.float32) * 3
    gen = core_generation.GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p)
    expected = core_generation.process_logits(logits, gen)
    got = np.asarray(generation.process_logits(jnp.asarray(logits), gen))
    traced = jax.jit(lambda x, t, k, p: generation.process_logits(x, core_generation.GenerationConfig(temperature=t, top_k=k, top_p=p)))
    got_traced = np.asarray(traced(logits, temperature, top_k or logits.shape[1], top_p or 2.0))
    np.testing.assert_array_equal(got_traced, got)
    kept = expected > np.finfo(np.float64).min
    np.testing.assert_array_equal(got > np.finfo(np.float32).min, kept)
    np.testing.assert_allclose(got[kept], expected[kept], rtol=1e-6)


def test_kv_cache_matches_uncached_forward():
    """The preallocated cache (prefill, then one token at a time) gives the uncached logits, left-padded."""
    config = make_config("mistral")
    model = flax_lm(config, seed=25)
    ids, mask = padded_batch(config, "left")
    B, T = ids.shape
    extra = np.random.default_rng(1).integers(1, config.vocab_size - 1, (B, 3))
    full_ids = np.concatenate([ids, extra], 1)
    S_max = 14  # test_cached_equals_uncached_every_head's buffer: the eager programs of these shapes are shared
    full_mask = np.concatenate([mask, np.ones((B, S_max - T), mask.dtype)], 1)  # covers the whole buffer
    expected = np.asarray(model(full_ids, attention_mask=full_mask[:, : T + 3]).logits)
    step = nnx.jit(lambda m, x, cache, mask: m(x, past_key_values=cache, attention_mask=mask))
    out = model(ids, past_key_values=KVCache.init(config, B, S_max), attention_mask=full_mask)
    logits = [np.asarray(out.logits)]
    cache = out.past_key_values
    for t in range(3):
        out = step(model, extra[:, t : t + 1], cache, full_mask)
        cache = out.past_key_values
        logits.append(np.asarray(out.logits))
    assert int(cache.length) == T + 3 and cache.key[0].shape == (B, config.n_head, S_max, config.head_dim)
    assert np.abs(np.concatenate(logits, 1) - expected).max() <= TOL


def random_legacy(config, B: int, P: int, seed: int = 0) -> tuple:
    r = np.random.default_rng(seed)
    shape = (B, config.n_head, P, config.head_dim)
    return tuple(
        (jnp.asarray(r.standard_normal(shape), jnp.float32), jnp.asarray(r.standard_normal(shape), jnp.float32))
        for _ in range(config.n_layer)
    )


def test_kv_cache_round_trips_and_is_functional():
    config = make_config("default")
    past = random_legacy(config, 2, 5)
    cache = KVCache.from_legacy(past, max_length=9)
    assert len(cache) == config.n_layer and cache.max_length == 9 and int(cache.length) == 5
    assert cache.key[0].shape == (2, config.n_head, 9, config.head_dim)
    assert not np.asarray(cache.value[1][:, :, 5:]).any()  # the free slots are zeros
    back = cache.to_legacy()
    for (k, v), (k2, v2) in zip(past, back):
        np.testing.assert_array_equal(k2, k)
        np.testing.assert_array_equal(v2, v)
    assert int(KVCache.from_legacy(past).length) == 5 and KVCache.from_legacy(past).max_length == 5
    # update writes at `length` and returns new buffers; advance makes a new cache; the old one is unchanged
    new = jnp.ones((2, config.n_head, 2, config.head_dim))
    written = [cache.update(i, new, -new) for i in range(config.n_layer)]
    advanced = cache.advance([k for k, _ in written], [v for _, v in written], 2)
    assert int(advanced.length) == 7 and int(cache.length) == 5
    assert not np.asarray(cache.key[0][:, :, 5:]).any()
    legacy = advanced.to_legacy()
    np.testing.assert_array_equal(legacy[1][0][:, :, :5], past[1][0])
    np.testing.assert_array_equal(legacy[1][0][:, :, 5:], new)
    np.testing.assert_array_equal(legacy[0][1][:, :, 5:], -new)
    k, v = advanced[1]
    assert k is advanced.key[1] and v is advanced.value[1]
    # an empty cache, and a pytree that crosses jit (the length stays an int32 scalar)
    empty = KVCache.init(config, 2, 4)
    assert int(empty.length) == 0 and empty.to_legacy()[0][0].shape == (2, config.n_head, 0, config.head_dim)
    through = jax.jit(lambda c: c.advance(c.key, c.value, 1))(empty)
    assert isinstance(through, KVCache) and through.length.dtype == jnp.int32 and int(through.length) == 1
    with pytest.raises(ValueError, match="max_length must hold the past"):
        KVCache.from_legacy(past, max_length=4)
    with pytest.raises(ValueError, match="traced"):
        jax.jit(lambda c: c.to_legacy())(cache)


def test_kv_cache_is_importable_from_the_model_module():
    from gpt2_flax import cache, model

    assert model.KVCache is cache.KVCache is KVCache


CACHED_HEADS = ["base", "lm", "double", "seqcls", "tokcls"]  # qa takes no cache, as in transformers


def _head_call(model, head, ids, mask, **kwargs):
    """The head's main output for (B, T) ids; the double head sees the rows as the choices of one example."""
    if head == "double":
        out = model(ids[None], attention_mask=mask[None], **kwargs)
        return out, np.concatenate([np.asarray(out.logits[0]).reshape(ids.shape[0], -1), np.asarray(out.mc_logits).T], 1)
    out = model(ids, attention_mask=mask, **kwargs)
    main = out.last_hidden_state if head == "base" else out.logits
    return out, np.asarray(main).reshape(ids.shape[0], -1)


@pytest.mark.parametrize("kind", ["legacy", "kvcache", "kvcache_buffer_mask"])
@pytest.mark.parametrize("head", CACHED_HEADS)
def test_cached_equals_uncached_every_head(head, kind):
    """Left-padded prompt, then one token at a time through a legacy tuple or a KVCache (mask covering length + T,
    or the whole buffer): each step gives the uncached output of the prefix, for every head with a cache."""
    config = make_config("mistral", num_labels=3)
    model = MODEL_CLASSES[head](config.copy())
    model.load_canonical(reference.random_params(config, head, seed=31))
    ids, mask = padded_batch(config, "left")
    B, T = ids.shape
    n, S_max = 3, 14
    extra = np.random.default_rng(2).integers(1, config.vocab_size - 1, (B, n))
    full_ids = np.concatenate([ids, extra], 1)
    full_mask = np.concatenate([mask, np.ones((B, S_max - T), mask.dtype)], 1)
    # one step's (B, T) mask and cache -> its output and the next cache, through the head (tokcls returns no cache:
    # the base transformer carries it)
    cache = None if kind == "legacy" else KVCache.init(config, 3, S_max)
    worst = 0.0
    for t in range(n + 1):
        lo, hi = (0, T) if t == 0 else (T + t - 1, T + t)
        step_mask = full_mask if kind == "kvcache_buffer_mask" else full_mask[:, :hi]
        kw = dict(past_key_values=cache, use_cache=True)
        out, got = _head_call(model, head, full_ids[:, lo:hi], step_mask, **kw)
        _, expected = _head_call(model, head, full_ids[:, :hi], full_mask[:, :hi], use_cache=False)
        if head == "double":  # the step's positions of the LM logits, and the pooled choice logits
            V = config.vocab_size
            per_token = expected[:, : hi * V].reshape(B, hi, V)[:, lo:hi].reshape(B, -1)
            expected = np.concatenate([per_token, expected[:, hi * V :]], 1)
        elif head != "seqcls":  # seqcls pools one row per sequence either way
            expected = expected.reshape(B, hi, -1)[:, lo:hi].reshape(B, -1)
        worst = max(worst, float(np.abs(got - expected).max()))
        if head == "tokcls":
            cache = model.transformer(full_ids[:, lo:hi], attention_mask=step_mask, **kw).past_key_values
        else:
            cache = out.past_key_values
        assert isinstance(cache, KVCache) == (kind != "legacy")
    assert worst <= TOL, worst
    legacy = cache if kind == "legacy" else cache.to_legacy()
    assert legacy[0][0].shape == (B, config.n_head, T + n, config.head_dim)


def test_kv_cache_returned_even_with_use_cache_false():
    config = make_config("default", use_cache=False)
    model = flax_lm(config, seed=32)
    ids = np.arange(1, 5)[None]  # test_kv_cache_mask_shapes' shapes (4 tokens, 10 slots): shared eager programs
    assert model(ids).past_key_values is None
    out = model(ids, past_key_values=KVCache.init(config, 1, 10))
    assert isinstance(out.past_key_values, KVCache) and int(out.past_key_values.length) == 4
    out = model(ids[:, :1], past_key_values=out.past_key_values, use_cache=False)  # explicit False: still returned
    assert isinstance(out.past_key_values, KVCache) and int(out.past_key_values.length) == 5
    legacy = model(ids, use_cache=True).past_key_values
    assert isinstance(legacy, tuple) and model(ids[:, :1], past_key_values=legacy).past_key_values is None


@pytest.mark.parametrize("kind", ["legacy", "kvcache"])
def test_cache_check_covers_every_layer(kind):
    """A wrong head dim in layer 1 (layer 0 fine) is found, in the key and in the value, for both cache kinds."""
    config = make_config("default")
    model = flax_lm(config, seed=33)
    good = random_legacy(config, 1, 4)
    for name, bad_layer in (("key", (good[1][0][..., :-1], good[1][1])), ("value", (good[1][0], good[1][1][..., :-1]))):
        past = (good[0], bad_layer)
        if kind == "kvcache":
            cache = KVCache.from_legacy(good, max_length=8)
            past = KVCache(key=(cache.key[0], cache.key[1][..., :-1]) if name == "key" else cache.key,
                           value=(cache.value[0], cache.value[1][..., :-1]) if name == "value" else cache.value,
                           length=cache.length)
        with pytest.raises(ValueError, match=rf"layer 1 {name}\.shape"):
            model(np.ones((1, 1), np.int32), past_key_values=past)


def test_kv_cache_mask_shapes():
    """With a KVCache the mask covers length + T (known length) or the whole buffer; under jit only the buffer."""
    config = make_config("default")
    model = flax_lm(config, seed=34)
    ids = np.arange(1, 5)[None]
    cache = model(ids, past_key_values=KVCache.init(config, 1, 10)).past_key_values
    a = model(ids[:, :1], past_key_values=cache, attention_mask=np.ones((1, 5), np.int32)).logits
    b = model(ids[:, :1], past_key_values=cache, attention_mask=np.ones((1, 10), np.int32)).logits
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):
        model(ids[:, :1], past_key_values=cache, attention_mask=np.ones((1, 7), np.int32))
    with pytest.raises(ValueError, match=r"attention_mask must have shape"):  # traced length: the buffer only
        nnx.jit(lambda m, c, x: m(x, past_key_values=c, attention_mask=jnp.ones((1, 5), jnp.int32)))(model, cache, ids[:, :1])
    with pytest.raises(ValueError, match=r"The KVCache is full"):
        model(np.ones((1, 7), np.int32), past_key_values=cache)


def test_position_ids_and_last_non_pad_index_mirror_the_reference():
    from gpt2_flax.model import last_non_pad_index, position_ids_from_attention_mask

    r = np.random.default_rng(3)
    mask = (r.random((5, 9)) > 0.4).astype(np.int32)
    mask[0] = 0
    for T, past in ((3, None), (9, None), (2, 4), (1, 8)):
        np.testing.assert_array_equal(
            position_ids_from_attention_mask(jnp.asarray(mask), T, past),
            reference.position_ids_from_attention_mask(mask, T, past),
        )
    ids = r.integers(0, 4, (5, 9))
    ids[1] = 0
    np.testing.assert_array_equal(last_non_pad_index(jnp.asarray(ids), 0, 9), reference.last_non_pad_index(ids, 0, 9))
    assert last_non_pad_index(None, 0, 9) == reference.last_non_pad_index(None, 0, 9) == -1


def test_skip_init_is_the_core_rule():
    config = make_config("default")
    with reference.skip_init():
        skipped = FlaxGPT2LMHeadModel(config.copy())
    assert not np.abs(skipped.canonical_state_dict()["h.0.attn.c_attn.weight"]).any()
    assert np.abs(FlaxGPT2LMHeadModel(config.copy()).canonical_state_dict()["h.0.attn.c_attn.weight"]).any()


def test_double_heads_does_not_change_the_callers_config():
    config = make_config("default", num_labels=3)
    model = MODEL_CLASSES["double"](config)
    assert config.num_labels == 3 and model.config.num_labels == 1


@pytest.mark.parametrize("head", ["base", "lm", "double", "seqcls", "tokcls", "qa"])
def test_return_dict_false_gives_transformers_tuple(head):
    config = make_config("default", num_labels=3)
    model = MODEL_CLASSES[head](config.copy())
    batch = dict(head_batch(head, config))
    if head == "base":
        batch.pop("labels", None)
    out = model(**batch)
    tup = model(**batch, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(out.to_tuple())
    assert type(model(**batch, return_dict=None)) is type(out) is type(model(**batch, return_dict=True))
    for got, want in zip(jax.tree.leaves(tup), jax.tree.leaves(out.to_tuple())):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(tup[0], out.last_hidden_state if head == "base" else out.loss)
    traced = nnx.jit(lambda m, b: m(**b, return_dict=False))(model, batch)
    assert isinstance(traced, tuple) and len(traced) == len(tup)


# -- modes, jit, outputs ----------------------------------------------------------------------------------------


def test_dropout_follows_train_and_eval():
    config = make_config("default", resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model = FlaxGPT2LMHeadModel(config, rngs=default_rngs(0))
    ids = np.arange(1, 9)[None]
    assert np.array_equal(model(ids).logits, model(ids).logits)  # built in eval mode
    model.train()
    a, b = model(ids).logits, model(ids).logits
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(model(ids, deterministic=True).logits, model(ids, deterministic=True).logits)
    model.eval()
    assert np.array_equal(model(ids).logits, model(ids).logits)


def test_outputs_cross_jit_and_checks_under_tracing():
    config = make_config("default")
    model = flax_lm(config, seed=26)
    ids = np.arange(1, 9)[None]
    out = nnx.jit(lambda m, x: m(x, output_hidden_states=True))(model, ids)
    assert type(out).__name__ == "CausalLMOutputWithCrossAttentions" and len(out.hidden_states) == config.n_layer + 1
    assert np.abs(np.asarray(out.logits) - np.asarray(model(ids).logits)).max() <= TOL
    with pytest.raises(ValueError, match=r"exceeds n_positions=24"):  # shapes are known under tracing too
        nnx.jit(lambda m, x: m(x))(model, np.ones((1, 25), np.int32))


# -- the same errors as gpt2_torch ------------------------------------------------------------------------------

BAD_CALLS = {
    "token_out_of_range": lambda m: m(np.array([[1, 2, 97]])),
    "too_long": lambda m: m(np.ones((1, 25), np.int32)),
    "mask_shape": lambda m: m(np.ones((2, 5), np.int32), attention_mask=np.ones((2, 4), np.int32)),
    "no_batch_dim": lambda m: m(np.ones((5,), np.int32)),
    "both_ids_and_embeds": lambda m: m(np.ones((1, 5), np.int32), inputs_embeds=np.zeros((1, 5, 32), np.float32)),
    "position_ids_range": lambda m: m(np.ones((1, 3), np.int32), position_ids=np.array([[0, 1, 24]])),
    "no_cross_attention": lambda m: m(np.ones((1, 3), np.int32), encoder_hidden_states=np.zeros((1, 2, 32), np.float32)),
    "generate_too_long": lambda m: m.generate(np.ones((1, 20), np.int32), max_new_tokens=10),
    "generate_temperature": lambda m: m.generate(np.ones((1, 3), np.int32), do_sample=True, temperature=0.0),
    "generate_top_p": lambda m: m.generate(np.ones((1, 3), np.int32), do_sample=True, top_p=1.5),
    "generate_bad_token": lambda m: m.generate(np.array([[1, 200]])),
}


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_invalid_inputs_raise_like_torch(case):
    import torch
    from gpt2_torch import GPT2LMHeadModel

    config = make_config("default")
    to_torch = lambda a: torch.from_numpy(np.asarray(a, np.float32 if np.asarray(a).dtype.kind == "f" else np.int64))

    class TorchCaller:  # the same call on gpt2_torch, numpy arguments converted
        def __init__(self, model):
            self.model = model

        def __call__(self, *args, **kwargs):
            return self.model(*map(to_torch, args), **{k: to_torch(v) for k, v in kwargs.items()})

        def generate(self, *args, **kwargs):
            return self.model.generate(*map(to_torch, args), **kwargs)

    with pytest.raises(ValueError) as expected:
        BAD_CALLS[case](TorchCaller(GPT2LMHeadModel(config.copy()).eval()))
    with pytest.raises(ValueError) as got:
        BAD_CALLS[case](FlaxGPT2LMHeadModel(config.copy()))
    assert str(got.value) == str(expected.value)


# -- training ---------------------------------------------------------------------------------------------------


def head_batch(head: str, config, seed: int = 0) -> dict:
    r = np.random.default_rng(seed)
    ids, mask = padded_batch(config, "right", seed)
    ids, mask = np.concatenate([ids, ids[::-1]]), np.concatenate([mask, mask[::-1]])  # B = 6
    B, T = ids.shape
    batch = {"input_ids": ids, "attention_mask": mask}
    if head == "lm":
        batch["labels"] = np.where(mask == 1, ids, -100)
    elif head == "double":
        batch = {"input_ids": ids.reshape(3, 2, T), "attention_mask": mask.reshape(3, 2, T)}
        batch["mc_token_ids"] = (mask.sum(1) - 1).reshape(3, 2)
        batch["mc_labels"] = r.integers(0, 2, 3)
        batch["labels"] = np.where(batch["attention_mask"] == 1, batch["input_ids"], -100)
    elif head == "seqcls":
        batch["labels"] = r.integers(0, config.num_labels, B)
    elif head == "tokcls":
        batch["labels"] = np.where(mask == 1, r.integers(0, config.num_labels, (B, T)), -100)
    elif head == "qa":
        batch["start_positions"] = r.integers(0, 4, B)
        batch["end_positions"] = r.integers(3, 7, B)
    return {k: jnp.asarray(v) for k, v in batch.items()}


@pytest.mark.parametrize("head", ["lm", "double", "seqcls", "tokcls", "qa"])
def test_train_step_fits_a_batch(head):
    # dropout off: the test asks whether the optimizer fits a batch, not how noisy 20 dropout draws are
    config = make_config("default", num_labels=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                         summary_first_dropout=0.0)
    model = MODEL_CLASSES[head](config.copy(), rngs=default_rngs(1))
    optimizer = make_optimizer(model, learning_rate=5e-3, warmup_steps=2, total_steps=40)
    batch = head_batch(head, config)
    losses = [float(train_step(model, optimizer, batch)) for _ in range(20)]  # each: the loss before its update
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.75 * losses[0], losses


DATA_PARALLEL = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"  # before jax initialises
    import json
    import jax
    import numpy as np
    jax.config.update("jax_default_matmul_precision", "highest")
    from gpt2_core import GPT2Config
    from gpt2_flax import FlaxGPT2LMHeadModel
    from gpt2_flax.training import make_mesh, make_optimizer, replicate, shard_batch, train_step

    config = GPT2Config(vocab_size=97, n_positions=24, n_embd=32, n_layer=2, n_head=4, eos_token_id=96,
                        bos_token_id=96, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    r = np.random.default_rng(0)
    batches = [dict(input_ids=(x := r.integers(0, 97, (8, 16))), labels=x) for _ in range(3)]

    def run(sharded):
        model = FlaxGPT2LMHeadModel.from_config(config, seed=0)
        optimizer = make_optimizer(model, learning_rate=1e-3, warmup_steps=1, total_steps=10)
        mesh = make_mesh()
        if sharded:
            replicate(mesh, model, optimizer)
        losses = [float(train_step(model, optimizer, shard_batch(mesh, b) if sharded else b)) for b in batches]
        kernel = model.transformer.h[0].attn.c_attn.kernel.get_value()
        return losses, model.canonical_state_dict(), len(kernel.sharding.device_set)

    single, p1, _ = run(False)
    sharded, p2, n_devices = run(True)
    print(json.dumps(dict(devices=len(jax.devices()), param_devices=n_devices, single=single, sharded=sharded,
                          param_diff=max(float(np.abs(p1[k] - p2[k]).max()) for k in p1))))
    """
)


def test_data_parallel_step_matches_single_device():
    """4 CPU devices (XLA_FLAGS set before jax starts, hence the subprocess): same losses and parameters."""
    proc = subprocess.run(
        [sys.executable, "-c", DATA_PARALLEL], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["devices"] == 4 and result["param_devices"] == 4
    np.testing.assert_allclose(result["sharded"], result["single"], atol=1e-6)
    assert result["param_diff"] <= 2e-6


def test_training_on_shakespeare_lowers_the_loss():
    """A few hundred AdamW steps of a tiny model on real text (GPT-2 tokenizer; ids remapped to the ones used)."""
    from gpt2_core import GPT2Tokenizer

    text = (corpus_dir() / "othello.txt").read_text(encoding="utf-8")[:60_000]
    ids = np.asarray(GPT2Tokenizer().encode(text))
    used, dense = np.unique(ids, return_inverse=True)  # a small vocabulary keeps the test fast
    config = make_config(
        "default", vocab_size=len(used), n_positions=64, n_embd=64, n_head=4, n_layer=2,
        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
    )
    model = FlaxGPT2LMHeadModel(config, rngs=default_rngs(0))
    steps, B, T = 250, 8, 64
    optimizer = make_optimizer(model, learning_rate=3e-3, warmup_steps=30, total_steps=steps)
    r = np.random.default_rng(0)
    split = int(0.9 * len(dense))

    def batch(data):
        starts = r.integers(0, len(data) - T, B)
        x = np.stack([data[s : s + T] for s in starts])
        return {"input_ids": jnp.asarray(x), "labels": jnp.asarray(x)}

    held_out = [batch(dense[split:]) for _ in range(4)]
    before = np.mean([float(eval_step(model, b)) for b in held_out])
    for _ in range(steps):
        train_step(model, optimizer, batch(dense[:split]))
    after = np.mean([float(eval_step(model, b)) for b in held_out])
    print(f"held-out loss {before:.2f} -> {after:.2f} after {steps} steps")
    assert before > np.log(len(used)) - 1.0  # starts near uniform
    assert after < before - 2.0, (before, after)


# -- checkpoints ------------------------------------------------------------------------------------------------


def test_checkpoint_loads_in_transformers(tmp_path):
    import transformers
    import torch
    config = make_config("untied")
    model = flax_lm(config, seed=27)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    ids = np.arange(1, 9)[None]
    with torch.no_grad():
        expected = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.abs(np.asarray(model(ids).logits) - expected).max() <= TOL


def test_from_pretrained_dtype_and_missing_head(tmp_path, caplog):
    config = make_config("default")
    flax_lm(config, seed=28).save_pretrained(tmp_path)
    bf16 = FlaxGPT2LMHeadModel.from_pretrained(tmp_path, dtype=jnp.bfloat16)
    assert bf16.dtype == jnp.bfloat16 and bf16(np.arange(1, 5)[None]).logits.dtype == jnp.bfloat16
    with caplog.at_level("WARNING"):
        clf = MODEL_CLASSES["seqcls"].from_pretrained(tmp_path)
    assert "score.weight" in caplog.text
    assert np.abs(clf.canonical_state_dict()["wte.weight"] - reference.random_params(config, "lm", seed=28)["wte.weight"]).max() == 0
