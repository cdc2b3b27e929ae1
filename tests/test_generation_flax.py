"""gpt2_flax generation against transformers v5 (PyTorch) on the same weights: greedy decoding with every logits
processor, beam search (num_beams 2 and 4, length penalties, early_stopping variants, num_return_sequences), eos,
left padding, output scores / logits / sequences_scores / beam_indices, stop strings, a streamer, the model's
generation_config.json, the attention mask transformers infers, `params=`; no recompilation within a bucket; the
processors one by one against transformers' classes; the errors.

The compiled programs are few on purpose (each costs seconds on CI's two cores): every greedy call uses the same
static switches (`GREEDY`: all processors on, all outputs kept), every beam call of a width the same ones.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers  # a dev dependency: installed in CI
from flax import nnx

from conftest import CONFIGS, REPO, make_config, padded_batch
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from gpt2_core.tokenization import GPT2Tokenizer
from gpt2_flax import FlaxGPT2LMHeadModel
from gpt2_flax import generation, logits_process

jax.config.update("jax_default_matmul_precision", "highest")

TOKENIZER_DIR = REPO / "gpt2_core" / "data" / "default-model"
N_POSITIONS = 64  # room for the plan's buckets: prompt 16 + 16 new slots
EOS = 96  # the tiny configs' eos id

# Every greedy call: the same processors (so one compiled program), the numbers vary between calls.
GREEDY = dict(
    max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[5], [11, 12]],
    min_new_tokens=2, forced_bos_token_id=4, forced_eos_token_id=EOS, remove_invalid_values=True,
    suppress_tokens=[6, 7], begin_suppress_tokens=[8], return_dict_in_generate=True, output_scores=True,
    output_logits=True,
)


def _hf_model(path, seed: int = 0):
    kw = dict(CONFIGS["default"], n_positions=N_POSITIONS)
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in model.parameters():  # well away from the init, so the greedy path is not one repeated token
            p.add_(0.3 * torch.randn_like(p))
    model.save_pretrained(path)
    return model


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_lm")
    hf = _hf_model(path)
    return hf, FlaxGPT2LMHeadModel.from_pretrained(path), path


@pytest.fixture(scope="module")
def batch():
    return padded_batch(make_config("default"), "left")  # 3 rows, lengths 7, 4, 6, left-padded with id 0


@pytest.fixture(scope="module")
def eos_ids(models, batch):
    """[EOS, a token that row 0 emits at its fourth greedy step]: an eos that fires mid-way."""
    hf, _, _ = models
    ids, mask = batch
    free = hf.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=6, eos_token_id=[])
    return [EOS, int(free[0, ids.shape[1] + 3])]


def hf_generate(hf, ids, mask=None, **kw):
    with torch.no_grad():
        return hf.generate(
            torch.from_numpy(np.asarray(ids, np.int64)),
            attention_mask=None if mask is None else torch.from_numpy(np.asarray(mask, np.int64)), **kw,
        )


def assert_scores_close(ours, theirs, atol=1e-4):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs):
        a, b = np.asarray(a), b.numpy()
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b))
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], atol=atol, rtol=0)


def assert_same_output(ours, theirs, beam: bool = False):
    np.testing.assert_array_equal(np.asarray(ours.sequences), theirs.sequences.numpy())
    assert_scores_close(ours.scores, theirs.scores)
    if ours.logits is not None:
        assert_scores_close(ours.logits, theirs.logits)
    if beam:
        np.testing.assert_allclose(np.asarray(ours.sequences_scores), theirs.sequences_scores.numpy(), atol=1e-4)
        np.testing.assert_array_equal(np.asarray(ours.beam_indices), theirs.beam_indices.numpy())


# -- greedy decoding and every processor ---------------------------------------------------------------------


def test_greedy_with_every_processor_matches_transformers(models, batch, eos_ids):
    """Left-padded batch, eos firing in a row, every processor on; then other numbers, a shorter prompt and a
    1-token prompt (forced BOS, begin-suppress after it) in the same buckets: no recompilation."""
    hf, model, _ = models
    ids, mask = batch
    kw = dict(GREEDY, eos_token_id=eos_ids)
    ours = model.generate(ids, attention_mask=mask, **kw)
    assert isinstance(ours, GenerateDecoderOnlyOutput) and ours.sequences.dtype == jnp.int32
    theirs = hf_generate(hf, ids, mask, **kw)
    assert_same_output(ours, theirs)
    assert (np.asarray(ours.sequences)[0, ids.shape[1] :] == eos_ids[1]).any() or ours.sequences.shape[1] < 19

    before = generation.trace_count()
    other = dict(
        kw, max_new_tokens=9, repetition_penalty=0.7, no_repeat_ngram_size=3, bad_words_ids=[[9], [20, 21]],
        min_new_tokens=5, forced_bos_token_id=30, forced_eos_token_id=eos_ids[1], suppress_tokens=[40, 41],
        begin_suppress_tokens=[42], eos_token_id=[eos_ids[1], EOS],
    )
    for p_ids, p_mask in ((ids[:, 1:], mask[:, 1:]), (ids[:, -1:], mask[:, -1:])):
        assert_same_output(model.generate(p_ids, attention_mask=p_mask, **other), hf_generate(hf, p_ids, p_mask, **other))
    assert generation.trace_count() == before


def test_streamer_and_stop_strings_match_transformers(models, batch, eos_ids):
    """The chunked loop (the same compiled program): streamed tokens equal the result; stop strings end rows where
    transformers' StopStringCriteria does."""
    hf, model, _ = models
    ids, mask = batch
    kw = dict(GREEDY, eos_token_id=eos_ids, max_new_tokens=16)
    hf_tok = transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)
    free = hf_generate(hf, ids, mask, **kw).sequences.numpy()
    T = ids.shape[1]
    # a stop string ending inside row 2's 10th step (crosses a chunk boundary), one ending at row 1's 3rd step
    stops = [hf_tok.decode(free[2, T + 8 : T + 10])[1:], hf_tok.decode(free[1, T + 2 : T + 3])]
    stops = [x for x in stops if x.strip()] or ["a"]
    plain = model.generate(ids, attention_mask=mask, **kw)  # the whole loop in one call
    before = generation.trace_count()

    class Streamer:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            assert isinstance(value, np.ndarray)
            self.puts.append(value)

        def end(self):
            self.ended = True

    streamer = Streamer()
    ours = model.generate(
        ids, attention_mask=mask, streamer=streamer, stop_strings=stops, tokenizer=GPT2Tokenizer.from_pretrained(TOKENIZER_DIR), **kw
    )
    theirs = hf_generate(hf, ids, mask, stop_strings=stops, tokenizer=hf_tok, **kw)
    np.testing.assert_array_equal(np.asarray(ours.sequences), theirs.sequences.numpy())
    got = np.asarray(ours.sequences)
    assert got.shape[1] < free.shape[1] or not np.array_equal(got, free)  # a stop string did end a row
    streamed = np.concatenate([streamer.puts[0]] + [t[:, None] for t in streamer.puts[1:]], axis=1)
    np.testing.assert_array_equal(streamed, np.asarray(ours.sequences))
    assert streamer.ended
    # streaming alone gives the whole-loop result
    streamer = Streamer()
    streamed_out = model.generate(ids, attention_mask=mask, streamer=streamer, **kw)
    np.testing.assert_array_equal(np.asarray(streamed_out.sequences), np.asarray(plain.sequences))
    assert generation.trace_count() == before  # the whole-loop program, resumed chunk by chunk


def test_generation_config_json_mask_inference_and_params(models, batch, eos_ids, tmp_path, caplog):
    hf, model, path = models
    ids, mask = batch
    kw = dict(GREEDY, eos_token_id=eos_ids)
    expected = model.generate(ids, attention_mask=mask, **kw)
    # generation_config.json is honoured (by both libraries, from the same directory)
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((path / name).read_bytes())
    # (pad_token_id written: transformers does not fall back to config.json's pad id once the file exists)
    GenerationConfig(**kw, pad_token_id=0).save_pretrained(tmp_path)
    loaded = FlaxGPT2LMHeadModel.from_pretrained(tmp_path)
    assert loaded.generation_config.repetition_penalty == GREEDY["repetition_penalty"]
    hf_loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    before = generation.trace_count()
    assert_same_output(loaded.generate(ids, attention_mask=mask), hf_generate(hf_loaded, ids, mask))
    assert generation.trace_count() == before  # another model, another generation_config: the same program
    loaded.save_pretrained(tmp_path / "again")
    assert GenerationConfig.from_pretrained(tmp_path / "again") == loaded.generation_config

    # no attention mask: inferred from the pad id (0, not an eos id) as transformers does
    np.testing.assert_array_equal(np.asarray(model.generate(ids, **kw).sequences), np.asarray(expected.sequences))
    np.testing.assert_array_equal(
        np.asarray(model.generate(ids, **kw).sequences), hf_generate(hf, ids, None, **kw).sequences.numpy()
    )
    with caplog.at_level(logging.WARNING, logger="gpt2_flax.generation"):
        model.generate(np.where(mask == 1, ids, EOS), **dict(kw, pad_token_id=EOS))
    assert "also an eos id" in caplog.text

    # params=: another model's weights through this model's program
    other = FlaxGPT2LMHeadModel.from_config(model.config, seed=3)
    got = model.generate(ids, attention_mask=mask, params=nnx.state(other, nnx.Param), **kw)
    np.testing.assert_array_equal(np.asarray(got.sequences), np.asarray(other.generate(ids, attention_mask=mask, **kw).sequences))


def test_custom_logits_processor_matches_transformers(models, batch):
    """The caller's processors see transformers' input_ids (the caller's columns, no bucket padding) and run in
    order after the built-in ones (here: the repetition penalty)."""
    hf, model, _ = models
    ids, mask = batch
    seen = []

    def ban_last(input_ids, scores):  # works on NumPy (ours) and torch (transformers) alike
        seen.append(tuple(input_ids.shape))
        scores[np.arange(scores.shape[0]), input_ids[:, -1]] = -float("inf")
        return scores

    kw = dict(max_new_tokens=4, repetition_penalty=0.5, eos_token_id=[])
    ours = model.generate(ids, attention_mask=mask, logits_processor=[ban_last], **kw)
    assert seen == [(3, ids.shape[1] + j) for j in range(4)]
    theirs = hf_generate(hf, ids, mask, logits_processor=transformers.LogitsProcessorList([ban_last]), **kw)
    np.testing.assert_array_equal(np.asarray(ours.sequences), theirs.numpy())


# -- beam search ---------------------------------------------------------------------------------------------


BEAM = dict(max_new_tokens=10, return_dict_in_generate=True, output_scores=True, output_logits=True)


def test_beam_search_two_beams_matches_transformers(models, batch, eos_ids):
    hf, model, _ = models
    ids, mask = batch
    kw = dict(BEAM, num_beams=2, eos_token_id=eos_ids)
    ours = model.generate(ids, attention_mask=mask, **kw)
    assert isinstance(ours, GenerateBeamDecoderOnlyOutput)
    assert_same_output(ours, hf_generate(hf, ids, mask, **kw), beam=True)
    before = generation.trace_count()
    kw = dict(kw, num_return_sequences=2, length_penalty=0.0, early_stopping=True)
    assert_same_output(model.generate(ids, attention_mask=mask, **kw), hf_generate(hf, ids, mask, **kw), beam=True)
    assert generation.trace_count() == before


@pytest.mark.parametrize("variant", [
    dict(num_return_sequences=2, length_penalty=0.5, early_stopping=True),
    dict(num_return_sequences=4, length_penalty=2.0, early_stopping="never"),
    dict(length_penalty=-1.0, early_stopping=False),
    dict(length_penalty=1.0, early_stopping="never", max_new_tokens=7),
])
def test_beam_search_four_beams_matches_transformers(models, batch, eos_ids, variant):
    hf, model, _ = models
    ids, mask = batch
    kw = dict(BEAM, num_beams=4, eos_token_id=eos_ids, **variant)
    assert_same_output(model.generate(ids, attention_mask=mask, **kw), hf_generate(hf, ids, mask, **kw), beam=True)


def test_sampling_and_beam_sampling_run_in_the_loop(models, batch):
    """Random draws differ from torch's: reproducible with seed / prng_key, num_return_sequences rows per prompt,
    every warper compiled into the loop; top_k=1 leaves no randomness."""
    _, model, _ = models
    ids, mask = batch
    kw = dict(
        do_sample=True, num_return_sequences=2, max_new_tokens=6, temperature=0.8, top_k=20, top_p=0.95, min_p=0.01,
        typical_p=0.99, epsilon_cutoff=1e-5, eta_cutoff=1e-5, eos_token_id=[],
    )
    a = np.asarray(model.generate(ids, attention_mask=mask, seed=1, **kw).sequences)
    b = np.asarray(model.generate(ids, attention_mask=mask, prng_key=jax.random.key(1), **kw).sequences)
    c = np.asarray(model.generate(ids, attention_mask=mask, seed=2, **kw).sequences)
    assert a.shape == (6, ids.shape[1] + 6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(a[::2, : ids.shape[1]], ids)
    top1 = np.asarray(model.generate(ids, attention_mask=mask, seed=3, **dict(kw, top_k=1)).sequences)
    np.testing.assert_array_equal(top1[::2], top1[1::2])  # no randomness left
    beam_kw = dict(do_sample=True, num_beams=2, max_new_tokens=6, eos_token_id=[], seed=4)
    out = model.generate(ids, attention_mask=mask, **beam_kw)
    again = model.generate(ids, attention_mask=mask, **beam_kw)
    assert isinstance(out, GenerateBeamDecoderOnlyOutput) and out.sequences.shape == (3, ids.shape[1] + 6)
    np.testing.assert_array_equal(np.asarray(out.sequences), np.asarray(again.sequences))


# -- the processors one by one, against transformers' classes -------------------------------------------------


def _processor_case(seed: int = 0):
    r = np.random.default_rng(seed)
    B, V, T, start, L = 4, 30, 9, 3, 16
    scores = (r.standard_normal((B, V)) * 3).astype(np.float32)
    input_ids = r.integers(0, 6, (B, T))  # few distinct ids: n-grams and bad-word prefixes repeat
    buffer = np.concatenate([np.full((B, start), 29), input_ids, np.full((B, L - start - T), -1)], axis=1)
    history = logits_process.History(jnp.asarray(buffer, jnp.int32), jnp.int32(start), jnp.int32(T))
    return scores, input_ids, history


def _check(ours, theirs):
    ours, theirs = np.asarray(ours), theirs.numpy()
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [
    "repetition_penalty", "no_repeat_ngram", "bad_words", "min_length", "forced_bos", "forced_eos", "remove_invalid",
    "suppress_tokens", "begin_suppress_tokens", "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon",
    "eta", "renormalize",
])
def test_processor_matches_transformers(name):
    scores, input_ids, h = _processor_case()
    P = transformers.generation.logits_process
    T = input_ids.shape[1]
    ignore = np.array([0, 2, 0, 5])
    if name == "remove_invalid":
        scores[0, :3] = [np.nan, np.inf, -np.inf]
    cases = {
        "repetition_penalty": (
            lambda x: logits_process.repetition_penalty(x, h, jnp.float32(1.7), jnp.asarray(ignore, jnp.int32)),
            P.RepetitionPenaltyLogitsProcessor(1.7, prompt_ignore_length=torch.from_numpy(ignore)),
        ),
        "no_repeat_ngram": (lambda x: logits_process.no_repeat_ngram(x, h, 2), P.NoRepeatNGramLogitsProcessor(2)),
        "bad_words": (
            lambda x: logits_process.bad_words(x, h, *map(_device, logits_process.bad_word_groups([[3], [7], [2, 1], [4, 4, 0]], [7]))),
            P.NoBadWordsLogitsProcessor([[3], [7], [2, 1], [4, 4, 0]], eos_token_id=7),
        ),
        "min_length": (
            lambda x: logits_process.min_length(x, h, jnp.int32(T - 2), jnp.int32(3), jnp.asarray([1, 5], jnp.int32)),
            P.MinNewTokensLengthLogitsProcessor(T - 2, 3, [1, 5]),
        ),
        "forced_bos": (
            lambda x: logits_process.forced_bos(x, h._replace(length=jnp.int32(1)), jnp.int32(4)),
            P.ForcedBOSTokenLogitsProcessor(4),
        ),
        "forced_eos": (
            lambda x: logits_process.forced_eos(x, h, jnp.int32(T + 1), jnp.asarray([2, 9], jnp.int32)),
            P.ForcedEOSTokenLogitsProcessor(T + 1, [2, 9]),
        ),
        "remove_invalid": (logits_process.remove_invalid, P.InfNanRemoveLogitsProcessor()),
        "suppress_tokens": (
            lambda x: logits_process.suppress_tokens(x, jnp.asarray([1, 3], jnp.int32)), P.SuppressTokensLogitsProcessor([1, 3]),
        ),
        "begin_suppress_tokens": (
            lambda x: logits_process.begin_suppress_tokens(x, h, jnp.asarray([0, 2], jnp.int32), jnp.int32(T)),
            P.SuppressTokensAtBeginLogitsProcessor([0, 2], T),
        ),
        "temperature": (lambda x: logits_process.temperature(x, jnp.float32(0.7)), P.TemperatureLogitsWarper(0.7)),
        "top_k": (lambda x: logits_process.top_k(x, jnp.int32(4), 2), P.TopKLogitsWarper(4, min_tokens_to_keep=2)),
        "top_p": (lambda x: logits_process.top_p(x, jnp.float32(1 - 0.8), 2), P.TopPLogitsWarper(0.8, min_tokens_to_keep=2)),
        "min_p": (lambda x: logits_process.min_p(x, jnp.float32(0.1), 3), P.MinPLogitsWarper(0.1, min_tokens_to_keep=3)),
        "typical_p": (lambda x: logits_process.typical_p(x, jnp.float32(0.7), 2), P.TypicalLogitsWarper(0.7, min_tokens_to_keep=2)),
        "epsilon": (lambda x: logits_process.epsilon(x, jnp.float32(0.05), 2), P.EpsilonLogitsWarper(0.05, min_tokens_to_keep=2)),
        "eta": (lambda x: logits_process.eta(x, jnp.float32(0.05), 2), P.EtaLogitsWarper(0.05, min_tokens_to_keep=2)),
        "renormalize": (logits_process.renormalize, P.LogitNormalization()),
    }
    ours, theirs = cases[name]
    if name == "forced_bos":  # it acts on a 1-token prompt
        input_ids = input_ids[:, :1]
    _check(jax.jit(ours)(jnp.asarray(scores)), theirs(torch.from_numpy(input_ids), torch.from_numpy(scores.copy())))


def _device(x):
    if isinstance(x, tuple):
        return tuple(_device(y) for y in x)
    return jnp.asarray(x)


# -- errors ----------------------------------------------------------------------------------------------------


def test_generate_errors(models, batch):
    _, model, _ = models
    ids, mask = batch
    with pytest.raises(ValueError, match="Streaming is not supported with beam search. Received: num_beams=2"):
        model.generate(ids, attention_mask=mask, num_beams=2, streamer=object())
    with pytest.raises(ValueError, match="stop_strings are not implemented with beam search"):
        model.generate(ids, attention_mask=mask, num_beams=2, stop_strings=["a"], tokenizer=object())
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        model.generate(ids, attention_mask=mask, stop_strings=["a"])
    with pytest.raises(ValueError, match=r"generate\(\) got arguments it does not know. Received: \['max_tokens'\]"):
        model.generate(ids, attention_mask=mask, max_tokens=3)
    with pytest.raises(ValueError, match="num_return_sequences must be <= num_beams"):
        model.generate(ids, attention_mask=mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="input_ids must have shape"):
        model.generate(np.ones((1, 2, 3), np.int32))
