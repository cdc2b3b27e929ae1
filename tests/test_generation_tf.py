"""gpt2_tf's XLA-compiled generate against transformers v5's generate (PyTorch) on the same checkpoint (random weights
saved by transformers): greedy with every processor that works without sampling (one compile covers them), beam
search (num_beams 2 and 4; length_penalty, early_stopping, num_return_sequences, an eos that fires, sequences_scores),
left padding, attention-mask inference; every processor function against transformers' processor class; no
recompile across calls in the same buckets; the streamer and stop strings through the chunked loop;
generation_config.json; the error texts (the same as gpt2_torch's).

XLA compiles dominate the time on CPU, so every call here keeps one prompt shape (3 rows, 7 columns, 10 new
tokens) and few static keys: one per strategy / processor set / output switches, then only tensors change."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from conftest import make_config, padded_batch
from gpt2_core.generation import GenerationConfig
from gpt2_core.tokenization import GPT2Tokenizer
from gpt2_core.tokenization_bpe import bytes_to_unicode
from test_torch_hf import hf_model

import tensorflow as tf
import backend_tf  # noqa: F401  (full fp32 matmul precision)
from gpt2_tf import generation, logits_process as lp  # noqa: E402
from gpt2_tf.model import TFGPT2LMHeadModel  # noqa: E402

import transformers  # a dev dependency: installed in CI
from transformers.generation import logits_process as hf_lp
transformers.logging.set_verbosity_error()

N = 10  # new tokens (the tiny config has 24 positions, the prompt 7)
TOL = 1e-4
# every processor that runs without sampling, at once (forced_bos needs a one-token prompt: see the unit tests)
PROCESSORS = dict(
    repetition_penalty=1.3, no_repeat_ngram_size=2, bad_words_ids=[[5], [3, 7], [11, 12, 13]], min_new_tokens=3,
    suppress_tokens=[1, 2], begin_suppress_tokens=[4], forced_eos_token_id=9, remove_invalid_values=True,
    renormalize_logits=True,
)
OUTPUTS = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, ours, checkpoint dir) on the same random weights."""
    directory = tmp_path_factory.mktemp("lm")
    hf = hf_model("lm", "default", directory, seed=1)
    return hf, TFGPT2LMHeadModel.from_pretrained(directory), directory


@pytest.fixture(scope="module")
def batch():
    return padded_batch(make_config(), "left")  # 3 rows, left-padded with pad id 0


def hf_generate(hf, ids, mask=None, **kwargs):
    with torch.no_grad():
        return hf.generate(
            input_ids=torch.from_numpy(ids), attention_mask=None if mask is None else torch.from_numpy(mask), **kwargs
        )


def assert_same(expected, got):
    if isinstance(expected, torch.Tensor):
        np.testing.assert_array_equal(np.asarray(got), expected.numpy())
        return
    assert type(got).__name__ == type(expected).__name__
    np.testing.assert_array_equal(np.asarray(got.sequences), expected.sequences.numpy())
    for name in ("scores", "logits"):
        a, b = getattr(expected, name), getattr(got, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert len(a) == len(b), name
            for x, y in zip(a, b):
                x, y = x.numpy(), np.asarray(y)
                np.testing.assert_array_equal(np.isinf(x), np.isinf(y), err_msg=name)  # the same tokens removed
                finite = np.isfinite(x)
                assert np.abs(x[finite] - y[finite]).max() <= TOL, name
    for name in ("sequences_scores", "beam_indices"):
        a = getattr(expected, name, None)
        if a is not None:
            b = np.asarray(getattr(got, name))
            np.testing.assert_allclose(b, a.numpy(), atol=TOL, err_msg=name)


def fires(hf, ids, mask, **kwargs):
    """An eos id that fires for some rows but not all, from transformers' own free-running output (else its most
    frequent token)."""
    free = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=None, pad_token_id=0, **kwargs).numpy()
    new = free[:, ids.shape[1] :]
    for t in range(2, N - 1):
        for r in range(len(new)):
            token = int(new[r, t])
            if token not in new[r, :t] and any(token not in row for i, row in enumerate(new) if i != r):
                return token
    values, counts = np.unique(new, return_counts=True)
    return int(values[np.argmax(counts)])


# -- greedy and the processors ----------------------------------------------------------------------------------------


def test_greedy_with_every_processor_matches_transformers(pair, batch):
    """Left-padded batch, eos that fires for one row, the processors, scores and logits per step."""
    hf, ours, _ = pair
    ids, mask = batch
    eos = fires(hf, ids, mask, **PROCESSORS)
    kwargs = dict(max_new_tokens=N, eos_token_id=eos, **PROCESSORS, **OUTPUTS)
    expected = hf_generate(hf, ids, mask, **kwargs)
    got = ours.generate(ids, attention_mask=mask, **kwargs)
    assert_same(expected, got)
    assert (expected.sequences[:, ids.shape[1] :] == eos).any()


def test_no_recompile_across_values(pair, batch):
    """New penalty, n-gram-free values, bad words (same padded shapes), eos / pad ids, prompt length in the bucket:
    the same compiled loop (and still transformers' tokens)."""
    hf, ours, _ = pair
    ids, mask = batch
    ours.generate(ids, attention_mask=mask, max_new_tokens=N, **PROCESSORS, **OUTPUTS)
    traces = generation.trace_count(ours)
    changed = dict(
        PROCESSORS, repetition_penalty=0.8, bad_words_ids=[[6], [8, 9], [20, 21, 22]], min_new_tokens=5,
        suppress_tokens=[3], begin_suppress_tokens=[10, 11], forced_eos_token_id=[12, 13],
    )
    for prompt, m in ((ids, mask), (ids[:, 2:], mask[:, 2:])):
        kwargs = dict(max_new_tokens=N, eos_token_id=[30, 31], pad_token_id=1, **changed, **OUTPUTS)
        assert_same(hf_generate(hf, prompt, m, **kwargs), ours.generate(prompt, attention_mask=m, **kwargs))
    assert generation.trace_count(ours) == traces


def test_attention_mask_inferred(pair, batch, caplog):
    hf, ours, _ = pair
    ids, _ = batch  # left-padded with pad id 0, not an eos id: transformers infers the mask
    kwargs = dict(max_new_tokens=N, **PROCESSORS, **OUTPUTS)
    with caplog.at_level(logging.WARNING, logger="gpt2_tf.generation"):
        assert_same(hf_generate(hf, ids, **kwargs), ours.generate(ids, **kwargs))
    assert not caplog.records
    padded = np.where(ids == 0, 96, ids)  # padded with the eos id: every token attended, and a warning
    with caplog.at_level(logging.WARNING, logger="gpt2_tf.generation"):
        got = ours.generate(padded, pad_token_id=96, **kwargs)
    assert_same(hf_generate(hf, padded, pad_token_id=96, **kwargs), got)
    assert any("attention_mask" in r.getMessage() for r in caplog.records)


def test_generation_config_json(pair, batch, tmp_path):
    """from_pretrained reads generation_config.json, save_pretrained writes it, generate follows it as
    transformers does."""
    hf, ours, directory = pair
    ids, mask = batch
    # eos given: transformers takes a file without eos_token_id as "no eos" (gpt2_core: the model config's)
    fields = dict(max_new_tokens=N, eos_token_id=96, pad_token_id=0, **PROCESSORS, **OUTPUTS)
    transformers.GenerationConfig(**fields).save_pretrained(tmp_path)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((directory / name).read_bytes())
    loaded = TFGPT2LMHeadModel.from_pretrained(tmp_path)
    assert loaded.generation_config == GenerationConfig.from_pretrained(tmp_path)
    assert loaded.generation_config.repetition_penalty == 1.3 and loaded.generation_config.max_new_tokens == N
    loaded.save_pretrained(tmp_path / "again")
    assert json.loads((tmp_path / "again" / "generation_config.json").read_text())["no_repeat_ngram_size"] == 2
    expected = hf_generate(transformers.GPT2LMHeadModel.from_pretrained(tmp_path), ids, mask)
    base = ours.generation_config
    ours.generation_config = loaded.generation_config  # the fixture's model: its compiled loop is reused
    try:
        assert_same(expected, ours.generate(ids, attention_mask=mask))
    finally:
        ours.generation_config = base


# -- beam search --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_beams,variants", [
    (2, [dict(), dict(num_return_sequences=2, eos="fires")]),
    (4, [
        dict(num_return_sequences=4, eos="fires"),
        dict(num_return_sequences=2, length_penalty=0.5, early_stopping=True, eos="fires"),
        dict(length_penalty=2.0, early_stopping="never", eos="fires"),
        dict(num_return_sequences=3, length_penalty=-1.0, early_stopping=True),
    ]),
])
def test_beam_search_matches_transformers(pair, batch, num_beams, variants):
    """Sequences, sequences_scores (within 1e-4), per-step scores and beam_indices; one compile per num_beams."""
    hf, ours, _ = pair
    ids, mask = batch
    eos = fires(hf, ids, mask, num_beams=num_beams)
    for variant in variants:
        variant = dict(variant)
        kwargs = dict(max_new_tokens=N, num_beams=num_beams, return_dict_in_generate=True, output_scores=True,
                      eos_token_id=eos if variant.pop("eos", None) else None, pad_token_id=0, **variant)
        if kwargs["eos_token_id"] is None:
            kwargs["eos_token_id"] = 95  # never generated here: one eos id either way, so one compiled loop
        expected = hf_generate(hf, ids, mask, **kwargs)
        got = ours.generate(ids, attention_mask=mask, **kwargs)
        assert_same(expected, got)
        assert np.asarray(got.sequences).shape == tuple(expected.sequences.shape)


def test_sampling_seeded_and_rows(pair, batch):
    """Sampling draws differ from torch's, so: a seed (int or transformers 4.x TF's pair) reproduces the draw,
    num_return_sequences rows are consecutive per prompt, and a near-zero temperature gives greedy's tokens (one
    compiled loop: the temperature is a tensor, top_k the static 50)."""
    hf, ours, _ = pair
    ids, mask = batch
    kw = dict(attention_mask=mask, max_new_tokens=N, do_sample=True, num_return_sequences=2)
    a = np.asarray(ours.generate(ids, seed=[1, 2], **kw))
    np.testing.assert_array_equal(a, np.asarray(ours.generate(ids, seed=[1, 2], **kw)))
    assert a.shape == (6, ids.shape[1] + N)
    assert not np.array_equal(a, np.asarray(ours.generate(ids, seed=[1, 3], **kw)))
    np.testing.assert_array_equal(np.repeat(ids, 2, 0), a[:, : ids.shape[1]])
    cold = np.asarray(ours.generate(ids, seed=7, temperature=1e-4, **kw))
    greedy = hf_generate(hf, ids, mask, max_new_tokens=N).numpy()
    np.testing.assert_array_equal(cold, np.repeat(greedy, 2, 0))


# -- chunked loop: streamer and stop strings ----------------------------------------------------------------------------


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        assert isinstance(value, np.ndarray)
        self.puts.append(np.array(value))

    def end(self):
        self.ended = True


def test_streamer_gets_the_output_tokens(pair, batch):
    hf, ours, _ = pair
    ids, mask = batch
    eos = fires(hf, ids, mask, **PROCESSORS)
    traces = generation.trace_count(ours)
    rec = Recorder()
    kwargs = dict(max_new_tokens=N, eos_token_id=eos, **PROCESSORS, **OUTPUTS)
    out = ours.generate(ids, attention_mask=mask, streamer=rec, **kwargs)
    assert rec.ended and np.array_equal(rec.puts[0], ids) and all(p.shape == (3,) for p in rec.puts[1:])
    np.testing.assert_array_equal(np.concatenate([rec.puts[0]] + [p[:, None] for p in rec.puts[1:]], 1), out.sequences)
    assert_same(hf_generate(hf, ids, mask, **kwargs), out)
    ours.generate(ids, attention_mask=mask, streamer=Recorder(), **kwargs)
    assert generation.trace_count(ours) <= traces + 1  # the resume function, once; never per chunk


@pytest.fixture(scope="module")
def tokenizers_pair(tmp_path_factory):
    """A byte-level tokenizer of the tiny vocabulary (97 ids: bytes 32..124, "st", "op", " st", eos), as
    transformers' GPT2Tokenizer and this library's."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(32, 125)] + ["st", "op", "Ġst", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = [("s", "t"), ("o", "p"), ("Ġ", "st")]
    hf_tok = transformers.GPT2Tokenizer(vocab=vocab, merges=merges)
    directory = tmp_path_factory.mktemp("tok")
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return hf_tok, GPT2Tokenizer(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"))


def test_stop_strings_match_transformers(pair, batch, tokenizers_pair):
    hf, ours, _ = pair
    ids, mask = batch
    hf_tok, ours_tok = tokenizers_pair
    T = ids.shape[1]
    free = hf_generate(hf, ids, mask, max_new_tokens=N, eos_token_id=None, pad_token_id=0, **PROCESSORS).numpy()
    stops = [
        hf_tok.decode(free[0, T + 3 : T + 5]),  # across two tokens
        hf_tok.decode(free[1, T + 9 : T + 10])[:1],  # the last step: across a chunk boundary
        hf_tok.decode(free[2, T + 1 : T + 3])[1:],  # inside a token
    ]
    kwargs = dict(max_new_tokens=N, stop_strings=[s for s in stops if s.strip()], **PROCESSORS, **OUTPUTS)
    expected = hf_generate(hf, ids, mask, tokenizer=hf_tok, **kwargs).sequences
    for tok in (hf_tok, ours_tok):
        np.testing.assert_array_equal(np.asarray(ours.generate(ids, attention_mask=mask, tokenizer=tok, **kwargs).sequences), expected.numpy())


# -- each processor against transformers' class ------------------------------------------------------------------------


def _history(rng, R=4, T=9, V=97, start=3, spare=4):
    ids = rng.integers(0, 12, (R, T))  # small ids: repeats and n-grams occur
    buffer = np.concatenate([np.full((R, start), 50), ids, np.full((R, spare), 60)], 1).astype(np.int32)
    return ids, tf.constant(buffer), tf.constant(start), tf.constant(start + T)


PROCESSOR_CASES = {
    "repetition_penalty": (hf_lp.RepetitionPenaltyLogitsProcessor(1.7), lambda s, b, st, e: lp.repetition_penalty(s, b, tf.fill((4,), st), e, 1.7)),
    "no_repeat_ngram": (hf_lp.NoRepeatNGramLogitsProcessor(2), lambda s, b, st, e: lp.no_repeat_ngram(s, b, st, e, 2)),
    "no_repeat_3gram": (hf_lp.NoRepeatNGramLogitsProcessor(3), lambda s, b, st, e: lp.no_repeat_ngram(s, b, st, e, 3)),
    "min_length": (hf_lp.MinNewTokensLengthLogitsProcessor(5, 8, [7, 8]), lambda s, b, st, e: lp.min_length(s, e - st - 5, 8, tf.constant(np.isin(np.arange(97), [7, 8])))),
    "forced_bos": (hf_lp.ForcedBOSTokenLogitsProcessor(4), None),
    "forced_eos": (hf_lp.ForcedEOSTokenLogitsProcessor(10, [5, 6]), lambda s, b, st, e: lp.forced_eos(s, e - st, 10, tf.constant(np.isin(np.arange(97), [5, 6])))),
    "remove_invalid": (hf_lp.InfNanRemoveLogitsProcessor(), lambda s, b, st, e: lp.remove_invalid(s)),
    "suppress_tokens": (hf_lp.SuppressTokensLogitsProcessor([1, 9]), lambda s, b, st, e: lp.suppress_tokens(s, tf.constant(np.isin(np.arange(97), [1, 9])))),
    "begin_suppress_tokens": (hf_lp.SuppressTokensAtBeginLogitsProcessor([2, 3], 9), lambda s, b, st, e: lp.begin_suppress_tokens(s, e - st, 9, tf.constant(np.isin(np.arange(97), [2, 3])))),
    "temperature": (hf_lp.TemperatureLogitsWarper(0.7), lambda s, *_: lp.temperature(s, 0.7)),
    "top_k": (hf_lp.TopKLogitsWarper(5, min_tokens_to_keep=3), lambda s, *_: lp.top_k(s, 5, 3)),
    "top_p": (hf_lp.TopPLogitsWarper(0.6), lambda s, *_: lp.top_p(s, 0.6)),
    "top_p_keep": (hf_lp.TopPLogitsWarper(0.01, min_tokens_to_keep=3), lambda s, *_: lp.top_p(s, 0.01, 3)),
    "min_p": (hf_lp.MinPLogitsWarper(0.2, min_tokens_to_keep=2), lambda s, *_: lp.min_p(s, 0.2, 2)),
    "typical_p": (hf_lp.TypicalLogitsWarper(0.8), lambda s, *_: lp.typical_p(s, 0.8)),
    "typical_p_keep": (hf_lp.TypicalLogitsWarper(0.05, min_tokens_to_keep=3), lambda s, *_: lp.typical_p(s, 0.05, 3)),
    "epsilon": (hf_lp.EpsilonLogitsWarper(0.02, min_tokens_to_keep=2), lambda s, *_: lp.epsilon(s, 0.02, 2)),
    "eta": (hf_lp.EtaLogitsWarper(0.05, min_tokens_to_keep=2), lambda s, *_: lp.eta(s, 0.05, 2)),
    "renormalize": (hf_lp.LogitNormalization(), lambda s, *_: lp.renormalize(s)),
}


@pytest.mark.parametrize("name", list(PROCESSOR_CASES) + ["bad_words"])
def test_processor_matches_transformers(name):
    rng = np.random.default_rng(sorted(PROCESSOR_CASES).index(name) if name in PROCESSOR_CASES else 99)
    ids, buffer, start, end = _history(rng)
    scores = (rng.normal(size=(4, 97)) * 3).astype(np.float32)
    scores[0, 3] = -np.inf
    if name == "remove_invalid":
        scores[1, :3] = [np.nan, np.inf, -np.inf]
    if name == "bad_words":
        words = [[int(ids[0, -1]), 40], [int(ids[1, -2]), int(ids[1, -1]), 41], [42], [96]]  # [eos] is not banned
        expected = hf_lp.NoBadWordsLogitsProcessor(words, eos_token_id=96)(torch.from_numpy(ids), torch.from_numpy(scores.copy()))
        settings = generation.resolve_generation(make_config(), 9, bad_words_ids=words)
        arrays = {k: tf.constant(v) for k, v in generation._bad_word_tensors(settings, 97).items()}
        got = lp.bad_words(tf.constant(scores), buffer, end, end - start, arrays["bad_single"], arrays["bad_prefixes"],
                           arrays["bad_lengths"], arrays["bad_last"])
    else:
        processor, fn = PROCESSOR_CASES[name]
        history = ids
        if name == "forced_bos":  # fires on a one-token history only
            history = ids[:, :1]
            buffer = tf.constant(np.concatenate([np.full((4, 3), 50), history], 1).astype(np.int32))
            end = start + 1
            fn = lambda s, b, st, e: lp.forced_bos(s, e - st, tf.constant(np.arange(97) == 4))  # noqa: E731
        expected = processor(torch.from_numpy(history), torch.from_numpy(scores.copy()))
        got = fn(tf.constant(scores), buffer, start, end)
    expected, got = expected.numpy(), got.numpy()
    np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-5, atol=1e-5)


# -- errors ----------------------------------------------------------------------------------------------------------


ERRORS = {
    "nrs_greedy": dict(num_return_sequences=2),
    "nrs_beams": dict(num_beams=2, num_return_sequences=3),
    "temperature": dict(do_sample=True, temperature=0.0),
    "top_p": dict(do_sample=True, top_p=1.5),
    "early_stopping": dict(num_beams=2, early_stopping="sometimes"),
    "unknown": dict(num_beam=2),
    "stop_strings_tokenizer": dict(stop_strings=["ab"]),
    "stop_strings_beams": dict(stop_strings=["ab"], num_beams=2, tokenizer=object()),
    "streamer_beams": dict(num_beams=2, streamer=Recorder()),
    "too_long": dict(max_new_tokens=30),
    "bad_words": dict(bad_words_ids=[[200]]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors_match_torch(pair, batch, name):
    import gpt2_torch

    _, ours, directory = pair
    ids, mask = batch
    torch_model = gpt2_torch.GPT2LMHeadModel.from_pretrained(directory)
    texts = []
    for generate, to in ((ours.generate, np.asarray), (torch_model.generate, torch.from_numpy)):
        with pytest.raises(ValueError, match="Received") as info:
            generate(to(ids), attention_mask=to(mask), **ERRORS[name])
        texts.append(str(info.value))
    assert texts[0] == texts[1]


def test_seed_pair_error(pair, batch):
    _, ours, _ = pair
    ids, mask = batch
    with pytest.raises(ValueError, match=r"Received: seed=\[1, 2, 3\]"):
        ours.generate(ids, attention_mask=mask, do_sample=True, seed=[1, 2, 3])
