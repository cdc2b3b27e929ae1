"""gpt2_torch's KVCache and its one attention path: the cache's methods, cached == uncached for every head (left
padding, through a legacy tuple and through a KVCache), the every-layer cache check, `return_dict=False` against
transformers v5, and generation leaving the model's mode and the caller's config alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TOL_TORCH_HF, make_config, padded_batch
from gpt2_core import naming, reference
from gpt2_core.generation import make_generation_config, reference_greedy
import gpt2_torch
from gpt2_torch import KVCache
from gpt2_torch.model import MODEL_CLASSES

import transformers  # a dev dependency: the second oracle
transformers.logging.set_verbosity_error()

CACHED_HEADS = ("base", "lm", "double", "seqcls")  # the heads that return past_key_values (tokcls, qa: none)
HF_CLASSES = naming.ARCHITECTURES  # transformers' class of each head


def build(head, config, seed=0):
    model = MODEL_CLASSES[head](config.copy())
    model.load_canonical(reference.random_params(config, head, seed))
    return model.eval()


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


# -- KVCache ------------------------------------------------------------------------------------------------------


def test_init_shapes_and_zero_length():
    config = make_config()
    cache = KVCache.init(config, 3, 10, dtype=torch.float64)
    assert len(cache) == config.n_layer and cache.max_length == 10
    assert cache.length.dim() == 0 and int(cache.length) == 0 and not cache.length.dtype.is_floating_point
    for k, v in (cache[i] for i in range(len(cache))):
        assert k.shape == v.shape == (3, config.n_head, 10, config.head_dim)
        assert k.dtype == torch.float64 and not k.any() and not v.any()


def test_update_writes_at_length_and_advance_returns_a_new_cache():
    config = make_config()
    shape = (2, config.n_head, 3, config.head_dim)
    cache = KVCache.init(config, 2, 8)
    k1, v1 = torch.randn(shape), torch.randn(shape)
    keys, values = zip(*(cache.update(i, k1, v1) for i in range(len(cache))))
    first = cache.advance(keys, values, 3)
    assert first is not cache and int(cache.length) == 0 and int(first.length) == 3
    assert torch.equal(first.key[1][:, :, :3], k1) and not first.key[1][:, :, 3:].any()
    k2, v2 = torch.randn(shape[:2] + (2, shape[3])), torch.randn(shape[:2] + (2, shape[3]))
    keys, values = zip(*(first.update(i, k2, v2) for i in range(len(first))))
    second = first.advance(keys, values, 2)
    assert int(first.length) == 3 and int(second.length) == 5
    assert torch.equal(second.value[0][:, :, 3:5], v2)
    # slots below an older cache's length are never rewritten
    assert torch.equal(first.key[0][:, :, :3], k1) and torch.equal(first.value[0][:, :, :3], v1)


def test_from_legacy_and_to_legacy_round_trip():
    config = make_config()
    legacy = tuple(
        (torch.randn(2, config.n_head, 5, config.head_dim), torch.randn(2, config.n_head, 5, config.head_dim))
        for _ in range(config.n_layer)
    )
    copies = [(k.clone(), v.clone()) for k, v in legacy]
    cache = KVCache.from_legacy(legacy)
    assert cache.max_length == 5 and int(cache.length) == 5
    bigger = KVCache.from_legacy(legacy, max_length=9)
    assert bigger.max_length == 9 and int(bigger.length) == 5 and not bigger.key[0][:, :, 5:].any()
    for c in (cache, bigger):
        back = c.to_legacy()
        assert len(back) == config.n_layer
        for (k, v), (k0, v0) in zip(back, legacy):
            assert torch.equal(k, k0) and torch.equal(v, v0)
    # writing into the converted cache leaves the caller's tensors alone
    bigger.update(0, torch.ones(2, config.n_head, 4, config.head_dim), torch.ones(2, config.n_head, 4, config.head_dim))
    for (k, v), (k0, v0) in zip(legacy, copies):
        assert torch.equal(k, k0) and torch.equal(v, v0)
    with pytest.raises(ValueError, match="max_length must hold the past"):
        KVCache.from_legacy(legacy, max_length=4)


# -- cached == uncached -------------------------------------------------------------------------------------------


def _inputs(head, ids, mask):
    if head == "double":  # (B, choices, T): two choices of the same rows
        return dict(input_ids=ids[:, None].repeat(1, 2, 1), attention_mask=mask[:, None].repeat(1, 2, 1))
    return dict(input_ids=ids, attention_mask=mask)


def _last(head, out):
    """The output for the last input position (the sequence classifier pools it by itself)."""
    if head == "base":
        return out.last_hidden_state[..., -1, :]
    if head == "seqcls":
        return out.logits
    return out.logits[..., -1, :]


@pytest.mark.parametrize("kind", ["legacy", "kvcache"])
@pytest.mark.parametrize("config_name", ["default", "mistral"])
@pytest.mark.parametrize("head", CACHED_HEADS)
def test_cached_equals_uncached_left_padded(head, config_name, kind):
    config = make_config(config_name, num_labels=3)
    model = build(head, config)
    ids, mask = (torch.from_numpy(x) for x in padded_batch(config, "left"))
    extra = torch.from_numpy(np.random.default_rng(1).integers(1, config.vocab_size - 1, (ids.shape[0], 4)))
    ids, mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)  # (B, 11)
    B, S = ids.shape
    P = 4  # the prefill holds all of row 1's left padding and its first token
    past = KVCache.init(config, B * (2 if head == "double" else 1), S) if kind == "kvcache" else None
    with torch.no_grad():
        out = model(**_inputs(head, ids[:, :P], mask[:, :P]), past_key_values=past, use_cache=True)
        uncached = model(**_inputs(head, ids[:, :P], mask[:, :P]), use_cache=False)
        for f in ("logits", "last_hidden_state"):
            if f in out.keys() and head != "seqcls":  # every prefill position, padding queries included
                assert max_diff(getattr(out, f), getattr(uncached, f)) <= TOL_TORCH_HF, f
        past = out.past_key_values
        for t in range(P, S):
            step = model(**_inputs(head, ids[:, t : t + 1], mask[:, : t + 1]), past_key_values=past, use_cache=True)
            full = model(**_inputs(head, ids[:, : t + 1], mask[:, : t + 1]), use_cache=False)
            assert max_diff(_last(head, step), _last(head, full)) <= TOL_TORCH_HF, t
            past = step.past_key_values
    if kind == "kvcache":
        assert isinstance(past, KVCache) and int(past.length) == S and past.max_length == S
    else:
        assert isinstance(past, tuple) and past[0][0].shape[2] == S


def test_kvcache_mask_may_cover_the_whole_buffer():
    config = make_config()
    model = build("lm", config)
    ids, mask = (torch.from_numpy(x) for x in padded_batch(config, "left"))
    B, T = ids.shape
    S_max = T + 5
    whole = torch.cat([mask, torch.ones(B, 5, dtype=mask.dtype)], 1)  # (B, S_max), as generation passes it
    with torch.no_grad():
        a = model(ids, attention_mask=mask, past_key_values=KVCache.init(config, B, S_max))
        b = model(ids, attention_mask=whole, past_key_values=KVCache.init(config, B, S_max))
        c = model(ids, attention_mask=mask, use_cache=False)
        step_a = model(ids[:, :1], attention_mask=whole[:, : T + 1], past_key_values=a.past_key_values)
        step_b = model(ids[:, :1], attention_mask=whole, past_key_values=b.past_key_values)
    assert max_diff(a.logits, c.logits) <= TOL_TORCH_HF and max_diff(b.logits, c.logits) <= TOL_TORCH_HF
    assert max_diff(step_a.logits, step_b.logits) <= TOL_TORCH_HF


def test_a_kvcache_is_returned_even_without_use_cache():
    config = make_config(use_cache=False)
    model = build("lm", config)
    ids = torch.randint(1, 90, (2, 5))
    with torch.no_grad():
        assert model(ids).past_key_values is None
        out = model(ids, past_key_values=KVCache.init(config, 2, 8))
        assert isinstance(out.past_key_values, KVCache) and int(out.past_key_values.length) == 5
        out = model(ids[:, :2], past_key_values=out.past_key_values, use_cache=False)
        assert isinstance(out.past_key_values, KVCache) and int(out.past_key_values.length) == 7


def test_every_layer_of_the_cache_is_checked():
    config = make_config()
    model = build("lm", config)
    ids = torch.randint(1, 90, (2, 5))
    with torch.no_grad():
        past = model(ids, use_cache=True).past_key_values
        k1, v1 = past[1]
        bad = (past[0], (k1[..., :-1], v1))  # a wrong head dim in layer 1 only
        with pytest.raises(ValueError, match=r"layer 1 key\.shape"):
            model(ids[:, :1], past_key_values=bad)
        cache = KVCache.init(config, 2, 8)
        wrong = KVCache(key=cache.key, value=(cache.value[0], cache.value[1][..., :-1]), length=cache.length)
        with pytest.raises(ValueError, match=r"layer 1 value\.shape"):
            model(ids, past_key_values=wrong)
        with pytest.raises(ValueError, match="The KVCache is full"):
            model(torch.randint(1, 90, (2, 9)), past_key_values=KVCache.init(config, 2, 8))


# -- return_dict --------------------------------------------------------------------------------------------------


def _hf_and_ours(head, config_name="default"):
    torch.manual_seed(0)
    hf = getattr(transformers, HF_CLASSES[head])(
        transformers.GPT2Config(**make_config(config_name).to_dict(), attn_implementation="eager")
    ).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = make_config(config_name)
    canonical, missing = naming.from_hub_state_dict({k: v.numpy() for k, v in hf.state_dict().items()}, config, head)
    assert not missing
    ours = MODEL_CLASSES[head](config)
    ours.load_canonical(canonical)
    return hf, ours.eval()


def _hf_inputs(head):
    ids = torch.randint(1, 90, (2, 6))
    if head == "double":
        return dict(input_ids=ids[None].repeat(2, 1, 1), mc_token_ids=torch.tensor([[5, 5], [5, 3]]),
                    labels=ids[None].repeat(2, 1, 1), mc_labels=torch.tensor([1, 0]), use_cache=True)
    kw = dict(input_ids=ids)
    if head in ("lm", "tokcls"):
        kw["labels"] = ids.remainder(2) if head == "tokcls" else ids
    if head == "seqcls":
        kw["labels"] = torch.tensor([0, 1])
    if head == "qa":
        kw.update(start_positions=torch.tensor([0, 2]), end_positions=torch.tensor([3, 4]))
    if head != "qa" and head != "tokcls":
        kw["use_cache"] = True
    return kw


def _hf_cache_legacy(x):
    return tuple((layer.keys, layer.values) for layer in x.layers)


@pytest.mark.parametrize("head", list(HF_CLASSES))
def test_return_dict_false_is_transformers_tuple(head):
    hf, ours = _hf_and_ours(head)
    kw = _hf_inputs(head)
    with torch.no_grad():
        a = ours(**kw, output_hidden_states=True, return_dict=False)
        b = hf(**kw, output_hidden_states=True, return_dict=False)
        named = ours(**kw, output_hidden_states=True)
    assert isinstance(a, tuple) and len(a) == len(b) == len(named.keys())
    for i, (x, y) in enumerate(zip(a, b)):
        if isinstance(y, transformers.DynamicCache):
            y = _hf_cache_legacy(y)
        if isinstance(x, tuple):
            assert len(x) == len(y), i
            for xi, yi in zip(x, y):
                for xj, yj in zip(xi, yi) if isinstance(xi, tuple) else [(xi, yi)]:
                    assert max_diff(xj, yj) <= TOL_TORCH_HF, i
        else:
            assert max_diff(x, y) <= TOL_TORCH_HF, i


def test_return_dict_none_follows_the_config():
    config = make_config(use_return_dict=False)
    model = build("lm", config)
    ids = torch.randint(1, 90, (1, 4))
    with torch.no_grad():
        assert isinstance(model(ids), tuple)
        assert not isinstance(model(ids, return_dict=True), tuple)
        assert isinstance(model.transformer(ids), tuple)


# -- heads and constructors ---------------------------------------------------------------------------------------


def test_double_heads_leaves_the_config_untouched():
    config = make_config(num_labels=3)
    model = gpt2_torch.GPT2DoubleHeadsModel(config)
    assert config.num_labels == 3 and model.config.num_labels == 1


def test_skip_init_leaves_parameters_undrawn(monkeypatch):
    calls, real = [], reference.init_params
    monkeypatch.setattr(reference, "init_params", lambda *a, **k: calls.append(a) or real(*a, **k))
    with reference.skip_init():
        for cls in MODEL_CLASSES.values():
            cls(make_config())
    assert calls == []
    cls(make_config())
    assert calls


# -- generation ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_generate_keeps_the_mode_and_is_deterministic(train):
    config = make_config(resid_pdrop=0.5, embd_pdrop=0.5, attn_pdrop=0.5)
    model = build("lm", config)
    ids, mask = (torch.from_numpy(x) for x in padded_batch(config, "left"))
    expected = model.eval().generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    model.train(train)
    for _ in range(2):
        got = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
        assert torch.equal(got, expected)
    assert model.training is train and all(m.training is train for m in model.modules())
    assert not got.is_inference()  # an ordinary tensor, usable with autograd later


def test_generate_reads_inputs_on_the_host_once(monkeypatch):
    """The decode steps skip the host-reading input checks; only the prefill runs them."""
    import gpt2_torch.model as torch_model

    calls = []
    check = torch_model.checks.check_model_inputs
    monkeypatch.setattr(torch_model.checks, "check_model_inputs", lambda *a, **k: calls.append(1) or check(*a, **k))
    config = make_config()
    model = build("lm", config)
    model.generate(torch.randint(1, 90, (2, 3)), max_new_tokens=6, eos_token_id=[])
    assert len(calls) == 1


@pytest.mark.parametrize("max_new_tokens", [3, 12, 16])
def test_generate_stops_and_trims_like_the_reference(max_new_tokens):
    """Every row stops within 2 steps; the loop reads `done` only every few steps and cuts the extra ones off."""
    config = make_config()
    model = build("lm", config, seed=3)
    ids, mask = padded_batch(config, "left")
    T = ids.shape[1]
    params = reference.random_params(config, "lm", 3)
    free = reference_greedy(params, config, ids, mask, make_generation_config(config, T, max_new_tokens=6, eos_token_id=[]))
    eos = sorted({int(t) for t in free[:, T + 1]})  # each row's second new token
    gen = make_generation_config(config, T, max_new_tokens=max_new_tokens, eos_token_id=eos)
    expected = reference_greedy(params, config, ids, mask, gen)
    assert expected.shape[1] <= T + 2
    got = model.generate(
        torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=max_new_tokens, eos_token_id=eos
    )
    np.testing.assert_array_equal(got.numpy(), expected)
