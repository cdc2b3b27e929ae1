"""gpt2_tf-specific tests: XLA generation against gpt2_torch, no retracing within a bucket, the KVCache (round trips,
in a compiled loop, cached == uncached for every head via a legacy tuple and via a KVCache, every layer checked),
the heads (multiple-choice loss ignores -100, return_dict=False, config not mutated, skip-init), Keras compile/fit,
XLA forward, SavedModel (with the in-graph tokenizer) in a fresh process, TFGPT2Tokenizer against gpt2_core's
tokenizer, transformers 4.x tf_model.h5 files, and the same ValueErrors as torch.

The shared behaviour (every head and config against gpt2_core.reference, cached decoding, checkpoints across
backends) is in test_equivalence.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import TOL, corpus_dir, make_config, padded_batch, whole_corpus_dir
from gpt2_core import reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation import make_generation_config, process_logits as core_process_logits, reference_greedy

import tensorflow as tf
import backend_tf  # noqa: E402  (disables TF32)
from gpt2_tf import generation  # noqa: E402
from gpt2_tf.cache import KVCache  # noqa: E402
from gpt2_tf.model import MODEL_CLASSES, TFGPT2LMHeadModel  # noqa: E402

import keras


@pytest.fixture(scope="module")
def lm():
    """(config, params, model), shared so the generate tests reuse one compiled function (XLA compiles take
    seconds on CPU). Mistral flags on: both attention-scale rules are exercised. n_positions=64 leaves room for the
    buckets (gpt2_core.generation.plan_decoding falls back to exact sizes where 16 + 16 slots exceed n_positions)."""
    config = make_config("mistral", n_positions=64)
    params = reference.random_params(config, "lm", seed=8)
    return config, params, backend_tf.build("lm", config, params)


def test_xla_greedy_matches_torch(lm):
    """Left-padded batch, one row stopped by eos: the XLA loop equals gpt2_torch's cached greedy, token for token."""
    import backend_torch

    config, params, model = lm
    ids, mask = padded_batch(config, "left")
    gen = make_generation_config(config, 7, max_new_tokens=10, eos_token_id=())
    free = reference_greedy(params, config, ids, mask, gen)
    # an eos that one row emits early and the others never: that row stops, then gets pad_token_id
    row, step, eos = next(
        (r, t, int(free[r, t]))
        for t in range(7, 17) for r in range(3)
        if all(int(free[r, t]) not in free[o, 7:] for o in range(3) if o != r)
    )
    got = backend_tf.generate(model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    torch_model = backend_torch.build("lm", config, params)
    expected = backend_torch.generate(torch_model, ids, attention_mask=mask, max_new_tokens=10, eos_token_id=eos)
    np.testing.assert_array_equal(got, expected)
    assert got.shape == (3, 17) and got[row, step] == eos and np.all(got[row, step + 1 :] == config.pad_token_id)


def test_generate_stops_when_every_row_is_done(lm):
    """The output is cut after the last step any row needed (transformers' shape rule)."""
    config, params, model = lm
    ids, mask = padded_batch(config, "left")
    first = reference_greedy(params, config, ids, mask, make_generation_config(config, 7, max_new_tokens=1))[:, -1]
    out = backend_tf.generate(model, ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[int(t) for t in first])
    np.testing.assert_array_equal(out[:, -1], first)
    assert out.shape == (3, ids.shape[1] + 1)


def test_no_retrace_within_bucket(lm):
    config, _, model = lm
    rng = np.random.default_rng(0)
    model.generate(rng.integers(1, 90, (3, 5)), max_new_tokens=4)
    traces = generation.trace_count(model)
    # another prompt length and max_new_tokens in the same buckets, other eos/pad ids: no new trace
    model.generate(rng.integers(1, 90, (3, 11)), max_new_tokens=7, eos_token_id=[3, 4], pad_token_id=1)
    model.generate(rng.integers(1, 90, (3, 16)), attention_mask=np.ones((3, 16), np.int64), max_new_tokens=2)
    assert generation.trace_count(model) == traces
    model.generate(rng.integers(1, 90, (3, 17)), max_new_tokens=4)  # the next prompt bucket: one more
    assert generation.trace_count(model) == traces + 1


def test_sampling_is_seeded_and_follows_top_k_top_p(lm):
    config, params, model = lm
    ids, mask = padded_batch(config, "left")
    greedy = np.asarray(model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=()))
    # top_k (a static switch) and top_p on in every sampling call: one compiled loop serves them all
    kw = dict(attention_mask=mask, max_new_tokens=6, eos_token_id=(), do_sample=True, temperature=1.5, top_k=5)
    a = np.asarray(model.generate(ids, seed=1, top_p=0.9, **kw))
    assert np.array_equal(a, np.asarray(model.generate(ids, seed=1, top_p=0.9, **kw)))
    assert not np.array_equal(a, np.asarray(model.generate(ids, seed=2, top_p=0.9, **kw)))
    # a tiny top_p keeps only the most likely token (after top-k): greedy
    np.testing.assert_array_equal(np.asarray(model.generate(ids, seed=3, top_p=1e-6, **kw)), greedy)


@pytest.mark.parametrize("top_k,top_p", [(None, None), (5, None), (None, 0.7), (10, 0.5)])
def test_process_logits_matches_core(top_k, top_p):
    logits = np.random.default_rng(0).normal(size=(4, 97)).astype(np.float32) * 3
    gen = make_generation_config(make_config("default"), 1, do_sample=True, temperature=0.7, top_k=top_k, top_p=top_p)
    got = generation.process_logits(tf.constant(logits), gen.temperature, gen.top_k, gen.top_p).numpy()
    exp = core_process_logits(logits, gen)
    kept = exp > np.finfo(np.float64).min
    np.testing.assert_array_equal(got > np.finfo(np.float32).min, kept)
    np.testing.assert_allclose(got[kept], exp[kept], atol=1e-5)


# -- the KV cache -----------------------------------------------------------------------------------------------------


def test_kv_cache_round_trips():
    """init / from_legacy / to_legacy / update / advance; functional: an older cache keeps its values."""
    config = make_config("default")
    empty = KVCache.init(config, 2, 9)
    assert len(empty) == config.n_layer and empty.max_length == 9 and int(empty.length) == 0
    assert empty[1][0].shape == (2, config.n_head, 9, config.head_dim) and empty.to_legacy()[0][0].shape[2] == 0
    rng = np.random.default_rng(0)
    legacy = tuple(
        tuple(tf.constant(rng.normal(size=(2, config.n_head, 5, config.head_dim)), tf.float32) for _ in "kv")
        for _ in range(config.n_layer)
    )
    cache = KVCache.from_legacy(legacy, max_length=9)
    assert cache.max_length == 9 and int(cache.length) == 5
    for (k, v), (k2, v2) in zip(legacy, cache.to_legacy()):
        np.testing.assert_array_equal(k2, k)
        np.testing.assert_array_equal(v2, v)
    assert KVCache.from_legacy(legacy).max_length == 5  # default: exactly the past
    new = tf.ones((2, config.n_head, 3, config.head_dim))
    written = [cache.update(i, new, 2 * new) for i in range(len(cache))]
    after = cache.advance([k for k, _ in written], [v for _, v in written], 3)
    assert int(after.length) == 8 and int(cache.length) == 5
    np.testing.assert_array_equal(after.to_legacy()[1][0][:, :, :5], legacy[1][0])
    np.testing.assert_array_equal(after.to_legacy()[1][1][:, :, 5:], 2 * new)
    np.testing.assert_array_equal(cache.key[1][:, :, 5:], 0)  # the older cache is unchanged


def test_kv_cache_in_a_compiled_loop():
    """A KVCache is a tf.function argument (a new length does not retrace) and a tf.while_loop variable."""
    config = make_config("default")
    shape = (1, config.n_head, 1, config.head_dim)

    @tf.function(jit_compile=True)
    def fill(cache, steps):
        def body(i, cache):
            written = [cache.update(layer, tf.fill(shape, tf.cast(i + 1, tf.float32)), -tf.ones(shape))
                       for layer in range(len(cache))]
            return i + 1, cache.advance([k for k, _ in written], [v for _, v in written], 1)

        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), cache))[1]

    out = fill(KVCache.init(config, 1, 8), tf.constant(3))
    out = fill(out, tf.constant(2))
    assert int(out.length) == 5 and fill.experimental_get_tracing_count() == 1
    np.testing.assert_array_equal(out.key[1][0, 0, :, 0], [1, 2, 3, 1, 2, 0, 0, 0])


def _head_inputs(head, config):
    """Left-padded inputs of `head` (double: two examples of three choices), and its per-token output fields."""
    ids, mask = padded_batch(config, "left")
    if head == "double":
        ids, mask = np.stack([ids, ids[::-1]]), np.stack([mask, mask[::-1]])
    return ids, mask


def _chunk(head, model, ids, mask, past, **kw):
    extra = {"mc_token_ids": np.full(ids.shape[:-1], ids.shape[-1] - 1)} if head == "double" else {}
    return model(input_ids=ids, attention_mask=mask, past_key_values=past, **extra, **kw)


def _per_token(head, out):
    # base/lm/tokcls: (..., T, X) to concatenate over chunks; seqcls/double also pool the last (non-pad) token
    fields = {"base": ["last_hidden_state"], "lm": ["logits"], "tokcls": ["logits"], "double": ["logits"]}
    return [np.asarray(out[f]) for f in fields.get(head, [])]


@pytest.mark.parametrize("head", ["base", "lm", "double", "seqcls", "tokcls"])
@pytest.mark.parametrize("kind", ["legacy", "kv_cache"])
def test_cached_equals_uncached_every_head(head, kind):
    """Prompt then the rest through the cache equals one uncached pass, left-padded, for every head with a cache:
    via transformers' tuple (returned as a tuple) and via a KVCache (returned as a KVCache)."""
    config = make_config("default")
    params = reference.random_params(config, head, seed=31)
    model = backend_tf.build(head, config, params)
    ids, mask = _head_inputs(head, config)
    T, P = ids.shape[-1], 4
    full = _chunk(head, model, ids, mask, None, use_cache=False)
    B = int(np.prod(ids.shape[:-1]))
    past = None if kind == "legacy" else KVCache.init(config, B, T + 3)  # spare slots
    first = _chunk(head, model, ids[..., :P], mask[..., :P], past, use_cache=True)
    if head == "tokcls":  # as in transformers, the token classifier takes a cache but returns none
        first_body = model.transformer(input_ids=ids[..., :P], attention_mask=mask[..., :P], past_key_values=past)
        cached = first_body.past_key_values
    else:
        assert full.past_key_values is None
        cached = first.past_key_values
    if kind == "legacy":
        assert isinstance(cached, tuple) and cached[0][0].shape == (B, config.n_head, P, config.head_dim)
        rest_mask = mask
    else:
        assert isinstance(cached, KVCache) and int(cached.length) == P
        # the whole-buffer form of the mask: the spare slots after the tokens are hidden causally
        rest_mask = np.concatenate([mask, np.ones((*mask.shape[:-1], 3), mask.dtype)], -1)
    second = _chunk(head, model, ids[..., P:], rest_mask, cached, use_cache=kind == "legacy")
    if head == "tokcls":
        second = {"logits": second.logits, "past_key_values": model.transformer(
            input_ids=ids[..., P:], attention_mask=rest_mask, past_key_values=cached, use_cache=kind == "legacy"
        ).past_key_values}
    if kind == "legacy":
        assert isinstance(second["past_key_values"], tuple) and second["past_key_values"][0][0].shape[2] == T
    else:  # returned as a KVCache although use_cache=False
        assert isinstance(second["past_key_values"], KVCache) and int(second["past_key_values"].length) == T
    for got_a, got_b, exp in zip(_per_token(head, first), _per_token(head, second), _per_token(head, full)):
        got = np.concatenate([got_a, got_b], axis=-2)
        assert np.max(np.abs(got - exp)) <= TOL
    if head in ("seqcls", "double"):  # pooled at the last token: the second chunk ends where the full input does
        field = "logits" if head == "seqcls" else "mc_logits"
        assert np.max(np.abs(np.asarray(second[field]) - np.asarray(full[field]))) <= TOL
    # the cache holds the same keys and values as an uncached pass over all tokens
    body = model if head == "base" else model.transformer
    whole = body(input_ids=ids, attention_mask=mask, use_cache=True).past_key_values
    final = second["past_key_values"] if kind == "legacy" else second["past_key_values"].to_legacy()
    for (k, v), (k2, v2) in zip(whole, final):
        assert np.max(np.abs(np.asarray(k) - np.asarray(k2))) <= TOL
        assert np.max(np.abs(np.asarray(v) - np.asarray(v2))) <= TOL


def test_cache_checked_in_every_layer():
    config = make_config("default")
    model = backend_tf.build("lm", config, reference.random_params(config, "lm", seed=32))
    ids = np.ones((1, 3), np.int64)
    past = model(input_ids=ids, use_cache=True).past_key_values
    bad = list(past)
    bad[1] = (past[1][0][..., :-1], past[1][1])  # layer 1's key: wrong head dim
    with pytest.raises(ValueError, match=r"Received: layer 1 key.shape=\(1, 4, 3, 7\)"):
        model(input_ids=ids, past_key_values=tuple(bad))
    cache = KVCache.init(config, 1, 8)
    wrong = KVCache(key=cache.key, value=(cache.value[0], cache.value[1][..., :-1]), length=cache.length)
    with pytest.raises(ValueError, match=r"Received: layer 1 value.shape=\(1, 4, 8, 7\)"):
        model(input_ids=ids, past_key_values=wrong)
    full = KVCache(key=cache.key, value=cache.value, length=tf.constant(6))
    with pytest.raises(ValueError, match=r"The KVCache is full. Received: length=6 \+ 3 new tokens > max_length=8"):
        model(input_ids=ids, past_key_values=full)
    with pytest.raises(TypeError):  # the old internal keyword is gone
        model(input_ids=ids, past_key_values=cache, cache_index=0)


def test_position_ids_follow_the_core():
    from gpt2_tf.model import position_ids_from_attention_mask

    mask = np.array([[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1, 1, 1]])
    for T, past in [(7, None), (2, None), (3, 2), (1, 6)]:
        got = position_ids_from_attention_mask(tf.constant(mask), T, past).numpy()
        np.testing.assert_array_equal(got, reference.position_ids_from_attention_mask(mask, T, past))


# -- heads: multiple-choice loss, return_dict, config, skip-init -------------------------------------------------------


def test_mc_loss_ignores_minus_100():
    """As torch (CrossEntropyLoss) and gpt2_core.reference.cross_entropy: mc_labels == -100 do not count."""
    config = make_config("default")
    params = reference.random_params(config, "double", seed=33)
    model = backend_tf.build("double", config, params)
    ids, mask = _head_inputs("double", config)
    inputs = dict(input_ids=ids, attention_mask=mask, mc_token_ids=np.full((2, 3), ids.shape[-1] - 1))
    out = model(**inputs, mc_labels=np.array([2, -100]))
    h = reference.forward(params, config, ids.reshape(6, -1), attention_mask=mask.reshape(6, -1))["last_hidden_state"]
    mc_logits = reference.sequence_summary(params, config, h.reshape(2, 3, *h.shape[1:]), inputs["mc_token_ids"])[..., 0]
    expected = reference.cross_entropy(mc_logits, np.array([2, -100]))
    assert abs(float(out.mc_loss) - expected) <= TOL
    assert abs(float(out.mc_loss) - reference.cross_entropy(mc_logits[:1], np.array([2]))) <= TOL
    assert np.isnan(float(model(**inputs, mc_labels=np.array([-100, -100])).mc_loss))  # 0/0, as torch


def test_return_dict_false_gives_the_tuple():
    config = make_config("default")
    model = backend_tf.build("lm", config, reference.random_params(config, "lm", seed=34))
    ids, mask = padded_batch(config, "right")
    kw = dict(input_ids=ids, attention_mask=mask, labels=ids, use_cache=True)
    out = model(**kw)
    assert type(model(**kw, return_dict=None)) is type(out)  # None: the output object, as True
    tup = model(**kw, return_dict=False)
    assert isinstance(tup, tuple) and len(tup) == len(out.to_tuple()) == 3  # loss, logits, past_key_values
    np.testing.assert_array_equal(tup[0], out.loss)
    np.testing.assert_array_equal(tup[1], out.logits)
    assert len(tup[2]) == config.n_layer
    body = backend_tf.build("base", config, reference.random_params(config, "base", seed=34))
    assert isinstance(body(input_ids=ids, use_cache=False, return_dict=False), tuple)


def test_double_heads_does_not_change_the_callers_config():
    config = make_config("untied")
    model = MODEL_CLASSES["double"](config, seed=0)
    assert config.num_labels == 3 and model.config.num_labels == 1


def test_skip_init():
    """Inside reference.skip_init() nothing is drawn; a task model initialises body and head once, outside it."""
    config = make_config("default")
    with reference.skip_init():
        skipped = MODEL_CLASSES["seqcls"](config.copy(), seed=0)
    assert not np.any(skipped.transformer.wte.embeddings.numpy()) and not np.any(skipped.score.kernel.numpy())
    model = MODEL_CLASSES["seqcls"](config.copy(), seed=0)
    expected = reference.init_params(config, "seqcls", 0)
    got = model.canonical_state_dict()
    assert set(got) == set(expected)
    for name in ("wte.weight", "h.1.attn.c_attn.weight", "score.weight"):
        np.testing.assert_array_equal(got[name], expected[name])


# -- Keras: XLA forward, compile + fit, predict -----------------------------------------------------------------------


def test_xla_forward_matches_eager(lm):
    config, params, model = lm
    ids, mask = padded_batch(config, "left")
    fn = tf.function(lambda i, m: model(input_ids=i, attention_mask=m).logits, jit_compile=True)
    got = fn(tf.constant(ids), tf.constant(mask)).numpy()
    eager = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.max(np.abs(got - eager)) <= 1e-5


def test_compile_fit_lowers_loss():
    config = make_config("default")
    ids = np.random.default_rng(0).integers(1, 96, (8, 12))
    model = TFGPT2LMHeadModel(config, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))  # no loss: the model's own LM loss from `labels`
    history = model.fit(x={"input_ids": ids, "labels": ids}, batch_size=4, epochs=4, verbose=0).history["loss"]
    assert history[-1] < history[0] - 0.3
    # fit(x, y) takes y as the labels; predict gives the output's tensors as a dict
    history = model.fit(ids, ids, batch_size=8, epochs=1, verbose=0).history["loss"]
    assert history[0] < 4.0
    assert model.predict(ids, batch_size=4, verbose=0)["logits"].shape == (8, 12, config.vocab_size)


def test_fit_with_keras_loss_on_classifier():
    config = make_config("default")
    rng = np.random.default_rng(0)
    model = MODEL_CLASSES["seqcls"](config.copy(), seed=0)
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False
    )
    history = model.fit(rng.integers(1, 96, (8, 10)), rng.integers(0, 2, 8), epochs=2, verbose=0).history["loss"]
    assert np.all(np.isfinite(history))


def test_cross_attention_matches_reference():
    config = make_config("default", add_cross_attention=True)
    params = reference.random_params(config, "base", seed=5)
    model = backend_tf.build("base", config, params)
    ids, mask = padded_batch(config, "right")
    enc = np.random.default_rng(1).normal(size=(3, 5, config.n_embd)).astype(np.float32)
    enc_mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    got = backend_tf.forward(
        model, "base", input_ids=ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask
    )["last_hidden_state"]
    exp = reference.forward(
        params, config, ids, attention_mask=mask, encoder_hidden_states=enc, encoder_attention_mask=enc_mask
    )
    assert np.max(np.abs(got - exp["last_hidden_state"])) <= TOL


# -- checkpoints -------------------------------------------------------------------------------------------------------


def test_transformers_loads_our_checkpoint(tmp_path):
    import transformers
    import torch
    config = make_config("untied")
    model = backend_tf.build("lm", config, reference.random_params(config, "lm", seed=2))
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids, _ = padded_batch(config, "right")
    with torch.no_grad():
        theirs = hf(torch.from_numpy(ids)).logits.numpy()
    assert np.max(np.abs(theirs - model(input_ids=ids).logits.numpy())) <= TOL


# -- SavedModel --------------------------------------------------------------------------------------------------------

_LOAD_AND_GENERATE = textwrap.dedent(
    """
    import json, sys
    import tensorflow as tf
    gen = tf.saved_model.load(sys.argv[1])
    out = gen.signatures["serving_default"](text=tf.constant(json.loads(sys.argv[2])))
    lm = tf.saved_model.load(sys.argv[3]).signatures["serving_default"]
    logits = lm(input_ids=tf.constant([[1, 2, 3]]), attention_mask=tf.constant([[1, 1, 1]]))["logits"]
    print(json.dumps({
        "input_ids": out["input_ids"].numpy().tolist(),
        "generated_ids": out["generated_ids"].numpy().tolist(),
        "text": [t.decode("utf-8") for t in out["text"].numpy()],
        "logits": logits.numpy().tolist(),
    }))
    """
)


def test_saved_model_with_tokenizer_generates_in_fresh_process(tmp_path):
    from gpt2_core.tokenization import GPT2Tokenizer
    from gpt2_tf.generation import TFGPT2TextGenerator
    from gpt2_tf.tokenizer import TFGPT2Tokenizer

    config = GPT2Config(vocab_size=50257, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    params = reference.random_params(config, "lm", seed=0)
    model = backend_tf.build("lm", config, params)
    prompts = ["ROMEO:", "What light through yonder window breaks?"]
    exporter = TFGPT2TextGenerator(model, TFGPT2Tokenizer(), prompt_length=16, max_new_tokens=6, eos_token_id=())
    tf.saved_model.save(exporter, str(tmp_path / "generator"))
    tf.saved_model.save(model, str(tmp_path / "lm"), signatures=model.serving)

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the SavedModel needs no gpt2_* code
    command = [sys.executable, "-c", _LOAD_AND_GENERATE, str(tmp_path / "generator"), json.dumps(prompts)]
    result = subprocess.run(
        command + [str(tmp_path / "lm")], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])

    oracle = GPT2Tokenizer()
    oracle.pad_token = oracle.eos_token
    enc = oracle(prompts, padding="max_length", max_length=16, padding_side="left", return_tensors="np")
    assert out["input_ids"] == enc["input_ids"].tolist()
    gen = make_generation_config(config, 16, max_new_tokens=6, eos_token_id=())
    expected = reference_greedy(params, config, enc["input_ids"], enc["attention_mask"], gen)[:, 16:]
    assert out["generated_ids"] == expected.tolist()
    assert out["text"] == [oracle.decode(row) for row in expected]
    hidden = reference.forward(params, config, np.array([[1, 2, 3]]))["last_hidden_state"]
    ref_logits = reference.lm_logits(params, config, hidden)
    assert np.max(np.abs(np.array(out["logits"]) - ref_logits)) <= TOL


# -- tokenizer ---------------------------------------------------------------------------------------------------------

TRICKY = [
    "Hello world",
    "a  b   c\n\n\nd \t e",  # whitespace runs followed by text: the lookahead rule
    "  leading and trailing  ",
    "x\u00a0\u00a0y \u3000z\u2028\u2028w",  # non-ASCII whitespace
    "it's  'tis we'll they'RE 'S",
    "ünïcödé 日本語テキスト ١٢٣ ½ 😀😀!!",
    "a\x00b  \x00 \x00\x00",  # NUL characters (the tokenizer's delimiter escape)
    "<|endoftext|>one<|endoftext|>  two <|endoftext|>",
    "",
    "\r\n\r\n   \n",
]


@pytest.fixture(scope="module")
def tokenizers():
    from gpt2_core.tokenization import GPT2Tokenizer
    from gpt2_tf.tokenizer import TFGPT2Tokenizer

    return GPT2Tokenizer(), TFGPT2Tokenizer()


def test_tokenizer_matches_oracle_on_tricky_text(tokenizers):
    from gpt2_core.tokenization import GPT2Tokenizer
    from gpt2_tf.tokenizer import TFGPT2Tokenizer

    oracle, tok = tokenizers
    assert tok.tokenize(tf.constant(TRICKY)).to_list() == [oracle.encode(t) for t in TRICKY]
    oracle_p = GPT2Tokenizer(add_prefix_space=True)
    tok_p = TFGPT2Tokenizer.from_tokenizer(oracle_p)
    assert tok_p.tokenize(tf.constant(TRICKY)).to_list() == [oracle_p.encode(t) for t in TRICKY]


def test_tokenizer_matches_oracle_on_random_text(tokenizers):
    import hypothesis
    st = hypothesis.strategies
    oracle, tok = tokenizers
    chars = list(" \t\n\r\x0b\x0c\x1c\x85\xa0\u2028\u3000'sdtlmvreA1²½.,!?\x00é日😀")
    alphabet = st.sampled_from(chars + ["<|endoftext|>", "'ll"])
    texts = st.lists(st.lists(alphabet, max_size=25).map("".join) | st.text(max_size=15), min_size=1, max_size=40)

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True)
    @hypothesis.given(texts)
    def check(batch):
        assert tok.tokenize(tf.constant(batch)).to_list() == [oracle.encode(t) for t in batch]

    check()


def test_tokenizer_matches_oracle_on_whole_corpus(tokenizers):
    """All of the shared Shakespeare corpus (4.5 MB, ~1.4M tokens), one play per row; about 2 s."""
    oracle, tok = tokenizers
    texts = [f.read_text(encoding="utf-8") for f in sorted(whole_corpus_dir().glob("*.txt"))]
    assert len(texts) > 30
    got = tok.tokenize(tf.constant(texts)).to_list()
    for text, ids in zip(texts, got):
        assert ids == oracle.encode(text)


def test_tokenizer_padding_truncation_and_decoding(tokenizers):
    from gpt2_core.tokenization import GPT2Tokenizer
    from gpt2_tf.tokenizer import TFGPT2Tokenizer

    oracle, _ = tokenizers
    lines = (corpus_dir() / "othello.txt").read_text(encoding="utf-8").splitlines()[100:140]
    for side in ("left", "right"):
        tok = TFGPT2Tokenizer(max_length=8, padding_side=side, truncation_side=side)
        got = tok(tf.constant(lines))
        padded = GPT2Tokenizer(pad_token="<|endoftext|>", padding_side=side, truncation_side=side)
        exp = padded(lines, padding="max_length", truncation=True, max_length=8)
        assert got["input_ids"].numpy().tolist() == exp["input_ids"]
        assert got["attention_mask"].numpy().tolist() == exp["attention_mask"]
    longest = TFGPT2Tokenizer()(tf.constant(lines))["input_ids"]
    assert longest.shape[1] == max(len(oracle.encode(line)) for line in lines)
    # detokenize inverts tokenize (byte-level BPE is lossless), inside a tf.function too
    tok = TFGPT2Tokenizer()
    roundtrip = tf.function(lambda t: tok.detokenize(tok.tokenize(t)))(tf.constant(lines + TRICKY))
    assert [s.decode("utf-8") for s in roundtrip.numpy()] == lines + TRICKY


def test_tokenizer_in_tf_data(tokenizers):
    oracle, tok = tokenizers
    ds = tf.data.Dataset.from_tensor_slices(["To be, or not to be", "that is the question:"]).batch(2).map(tok.tokenize)
    assert next(iter(ds)).to_list() == [oracle.encode("To be, or not to be"), oracle.encode("that is the question:")]


# -- errors: the same ValueError as torch ------------------------------------------------------------------------------

BAD_FORWARD = {
    "token_out_of_range": dict(input_ids=np.array([[1, 2, 97]])),
    "negative_token": dict(input_ids=np.array([[1, -1, 2]])),
    "too_long": dict(input_ids=np.ones((1, 25), np.int64)),
    "mask_shape": dict(input_ids=np.ones((2, 5), np.int64), attention_mask=np.ones((2, 4), np.int64)),
    "one_dim": dict(input_ids=np.ones((5,), np.int64)),
    "both_ids_and_embeds": dict(input_ids=np.ones((1, 3), np.int64), inputs_embeds=np.zeros((1, 3, 32), np.float32)),
    "position_ids_range": dict(input_ids=np.ones((1, 3), np.int64), position_ids=np.array([[0, 1, 24]])),
    "empty": dict(input_ids=np.ones((1, 0), np.int64)),
}
BAD_GENERATE = {
    "too_long": dict(max_new_tokens=10),
    "zero_tokens": dict(max_new_tokens=0),
    "temperature": dict(do_sample=True, temperature=0.0),
    "top_p": dict(do_sample=True, top_p=1.5),
}


def _error(fn):
    with pytest.raises(ValueError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("case", list(BAD_FORWARD))
def test_forward_errors_match_torch(case):
    import backend_torch

    config = make_config("default")
    params = reference.random_params(config, "lm", seed=13)
    errors = [
        _error(lambda: b.forward(b.build("lm", config, params), "lm", **BAD_FORWARD[case]))
        for b in (backend_tf, backend_torch)
    ]
    assert errors[0] == errors[1]


@pytest.mark.parametrize("case", list(BAD_GENERATE))
def test_generate_errors_match_torch(case):
    import backend_torch

    config = make_config("default")
    params = reference.random_params(config, "lm", seed=13)
    ids = np.ones((1, 20), np.int64)
    errors = [
        _error(lambda: b.generate(b.build("lm", config, params), ids, **BAD_GENERATE[case]))
        for b in (backend_tf, backend_torch)
    ]
    assert errors[0] == errors[1]
