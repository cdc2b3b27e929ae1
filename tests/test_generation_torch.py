"""gpt2_torch's generate against transformers v5's generate on the same checkpoint (random weights saved by
transformers): greedy and every logits processor (alone and combined), sampling from the global seed, beam search
and beam sampling (num_beams, length_penalty, early_stopping, num_return_sequences, an eos that fires), outputs
(scores, logits, sequences_scores, beam_indices), generation_config.json both ways, stop strings, streamers, the
caller's processors and stopping criteria, attention-mask inference, and the error texts."""

from __future__ import annotations

import json
import logging
import threading

import pytest
import torch

from conftest import make_config, padded_batch
from gpt2_core.generation import GenerationConfig
from gpt2_core.tokenization import GPT2Tokenizer
from gpt2_core.tokenization_bpe import bytes_to_unicode
import gpt2_torch
from test_torch_hf import hf_model

import transformers  # a dev dependency: installed in CI
transformers.logging.set_verbosity_error()

N = 10  # new tokens (the tiny config has 24 positions, the prompt 7)
TOL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is faster, and much faster on a loaded machine (no spinning workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(transformers model, ours, checkpoint dir) on the same random weights."""
    directory = tmp_path_factory.mktemp("lm")
    hf = hf_model("lm", "default", directory, seed=1)
    return hf, gpt2_torch.GPT2LMHeadModel.from_pretrained(directory), directory


@pytest.fixture(scope="module")
def batch():
    ids, mask = padded_batch(make_config(), "left")  # 3 rows, left-padded
    return torch.from_numpy(ids), torch.from_numpy(mask)


@pytest.fixture(scope="module")
def frequent(pair, batch):
    """Tokens the beams generate most often: eos ids that fire."""
    hf, _, _ = pair
    ids, mask = batch
    with torch.no_grad():
        free = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, num_beams=4, num_return_sequences=4,
                           eos_token_id=None, pad_token_id=0)
    values, counts = free[:, ids.shape[1]:].unique(return_counts=True)
    return values[counts.argsort(descending=True)].tolist()


def run_both(pair, batch, seed=0, **kwargs):
    """transformers' and our generate after the same `torch.manual_seed`. eos_token_id=None means "no eos" in
    transformers (an explicit None overrides the model's), "not given" here: ours gets [] for it."""
    hf, ours, _ = pair
    ids, mask = batch
    with torch.no_grad():
        torch.manual_seed(seed)
        expected = hf.generate(input_ids=ids, attention_mask=mask, **kwargs)
    if "eos_token_id" in kwargs and kwargs["eos_token_id"] is None:
        kwargs["eos_token_id"] = []
    torch.manual_seed(seed)
    got = ours.generate(ids, attention_mask=mask, **kwargs)
    return expected, got


def assert_same(expected, got, beam=False):
    if isinstance(expected, torch.Tensor):
        assert torch.equal(got, expected), (got, expected)
        return
    assert type(got).__name__ == type(expected).__name__
    assert torch.equal(got.sequences, expected.sequences), (got.sequences, expected.sequences)
    for name in ("scores", "logits"):
        a, b = getattr(expected, name), getattr(got, name)
        assert (a is None) == (b is None), name
        if a is not None:
            assert len(a) == len(b), name
            for x, y in zip(a, b):
                assert torch.equal(torch.isinf(x), torch.isinf(y)), name  # the same tokens removed
                finite = torch.isfinite(x)
                assert (x[finite] - y[finite]).abs().max().item() <= TOL, name
    if beam:
        assert torch.equal(got.beam_indices.long(), expected.beam_indices.long())
        if expected.sequences_scores is not None:
            assert (got.sequences_scores - expected.sequences_scores).abs().max().item() <= TOL
        else:
            assert got.sequences_scores is None


OUT = dict(return_dict_in_generate=True, output_scores=True, output_logits=True)

PROCESSORS = {
    "repetition_penalty": dict(repetition_penalty=1.6),
    "repetition_penalty_below_1": dict(repetition_penalty=0.7),
    "no_repeat_ngram": dict(no_repeat_ngram_size=2),
    "bad_words": dict(bad_words_ids=[[5], [7, 8], [96], [3, 4, 9]]),
    "min_new_tokens": dict(min_new_tokens=6),
    "min_length": dict(min_length=12),
    "forced_bos": dict(forced_bos_token_id=3),
    "forced_eos": dict(forced_eos_token_id=[4, 5]),
    "remove_invalid": dict(remove_invalid_values=True),
    "suppress_tokens": dict(suppress_tokens=[1, 2, 3]),
    "begin_suppress_tokens": dict(begin_suppress_tokens=[1, 2]),
    "renormalize": dict(renormalize_logits=True),
    "combined": dict(repetition_penalty=1.3, no_repeat_ngram_size=3, bad_words_ids=[[7, 8]], min_new_tokens=3,
                     forced_eos_token_id=4, suppress_tokens=[9], begin_suppress_tokens=[10], renormalize_logits=True),
}


@pytest.mark.parametrize("name", list(PROCESSORS))
def test_greedy_processors_match_transformers(pair, batch, frequent, name):
    kwargs = dict(PROCESSORS[name])
    if name.startswith("min_"):
        kwargs["eos_token_id"] = frequent[:2]  # the minimum only matters where eos would fire
    assert_same(*run_both(pair, batch, max_new_tokens=N, **kwargs, **OUT))


WARPERS = {
    "plain": dict(),
    "temperature": dict(temperature=0.7),
    "top_k": dict(top_k=5),
    "top_p": dict(top_p=0.8),
    "min_p": dict(min_p=0.1),
    "typical_p": dict(typical_p=0.9),
    "epsilon": dict(epsilon_cutoff=0.02),
    "eta": dict(eta_cutoff=0.02),
    "combined_nrs": dict(temperature=1.3, top_k=10, top_p=0.9, repetition_penalty=1.2, num_return_sequences=3),
}


@pytest.mark.parametrize("name", list(WARPERS))
def test_sampling_with_the_global_seed_matches_transformers(pair, batch, name):
    """torch.manual_seed(s) before each: the same draws from the global RNG, so the same tokens."""
    assert_same(*run_both(pair, batch, seed=11, max_new_tokens=N, do_sample=True, **WARPERS[name], **OUT))


def test_sampling_seed_and_generator(pair, batch):
    _, ours, _ = pair
    ids, mask = batch
    kw = dict(attention_mask=mask, max_new_tokens=N, do_sample=True, top_k=20)
    a = ours.generate(ids, seed=3, **kw)
    torch.manual_seed(0)
    b = ours.generate(ids, seed=3, **kw)  # the global RNG plays no part
    g = torch.Generator().manual_seed(3)
    c = ours.generate(ids, generator=g, **kw)
    assert torch.equal(a, b) and torch.equal(a, c)
    assert not torch.equal(a, ours.generate(ids, seed=4, **kw))
    assert torch.equal(ours.generate(ids, seed=5, **dict(kw, top_k=1)), ours.generate(ids, **dict(kw, do_sample=False)))


@pytest.mark.parametrize("eos", ["none", "one", "two"])
def test_eos_fires_greedy_and_sampling(pair, batch, eos):
    hf, _, _ = pair
    ids, mask = batch
    with torch.no_grad():
        free = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, eos_token_id=None, pad_token_id=0)
    second = free[:, ids.shape[1] + 2].tolist()  # each row's third new token
    eos_ids = {"none": [], "one": second[:1], "two": sorted(set(second[1:]))}[eos]
    expected, got = run_both(pair, batch, max_new_tokens=N, eos_token_id=eos_ids or None, **OUT)
    assert_same(expected, got)
    if eos_ids:
        assert torch.isin(got.sequences[:, 7:], torch.tensor(eos_ids)).any()
    assert_same(*run_both(pair, batch, seed=2, max_new_tokens=N, eos_token_id=eos_ids or None, do_sample=True,
                          num_return_sequences=2, **OUT))


@pytest.mark.parametrize("early_stopping", [True, False, "never"])
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("num_beams", [2, 4])
def test_beam_search_matches_transformers(pair, batch, frequent, num_beams, length_penalty, early_stopping):
    """An eos that fires (two ids: keep = 3 * num_beams candidates), every returned beam."""
    expected, got = run_both(
        pair, batch, max_new_tokens=N, num_beams=num_beams, length_penalty=length_penalty,
        early_stopping=early_stopping, num_return_sequences=num_beams, eos_token_id=frequent[:2], **OUT,
    )
    assert_same(expected, got, beam=True)
    assert torch.isin(got.sequences[:, 7:], torch.tensor(frequent[:2])).any()  # hypotheses did finish


@pytest.mark.parametrize("case", ["no_eos", "one_eos_nrs", "processors", "beam_sample"])
def test_beam_variants_match_transformers(pair, batch, frequent, case):
    kwargs = {
        "no_eos": dict(num_beams=3, eos_token_id=None),
        "one_eos_nrs": dict(num_beams=4, num_return_sequences=2, eos_token_id=frequent[0]),
        "processors": dict(num_beams=3, eos_token_id=frequent[:2], **PROCESSORS["combined"]),
        "beam_sample": dict(num_beams=3, do_sample=True, top_k=20, temperature=0.8, num_return_sequences=2,
                            eos_token_id=frequent[:2]),
    }[case]
    assert_same(*run_both(pair, batch, seed=7, max_new_tokens=N, **kwargs, **OUT), beam=True)
    assert_same(*run_both(pair, batch, seed=7, max_new_tokens=N, **kwargs))  # the plain tensor


def test_reordered_cache_does_not_alias():
    """Beam search reorders the cache into new buffers: rows picked twice, and the source, stay separate."""
    config = make_config()
    H, Nh = config.head_dim, config.n_head
    cache = gpt2_torch.KVCache.init(config, 3, 8)
    cache.key[0][:] = torch.arange(3.0)[:, None, None, None]
    out = cache.reorder(torch.tensor([2, 2, 0]))
    assert out.key[0][:, 0, 0, 0].tolist() == [2.0, 2.0, 0.0]
    new = (10.0 + torch.arange(3.0))[:, None, None, None].expand(3, Nh, 1, H)
    out.update(0, new, torch.zeros(3, Nh, 1, H))
    assert out.key[0][:, 0, 0, 0].tolist() == [10.0, 11.0, 12.0]
    assert cache.key[0][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]


def test_generation_config_file_is_honoured_and_written(pair, batch, tmp_path):
    hf, _, _ = pair
    ids, mask = batch
    directory = tmp_path / "with_config"
    hf.save_pretrained(directory)
    hf_config = transformers.GenerationConfig.from_pretrained(directory)
    hf_config.num_beams, hf_config.max_new_tokens, hf_config.repetition_penalty = 3, 7, 1.4
    hf_config.save_pretrained(directory)
    hf_loaded = transformers.GPT2LMHeadModel.from_pretrained(directory)
    ours = gpt2_torch.GPT2LMHeadModel.from_pretrained(directory)
    assert ours.generation_config.num_beams == 3
    with torch.no_grad():
        expected = hf_loaded.generate(input_ids=ids, attention_mask=mask)
    got = ours.generate(ids, attention_mask=mask)
    assert got.shape[1] <= ids.shape[1] + 7 and torch.equal(got, expected)
    # written by save_pretrained: transformers reads it and generates the same
    ours.generation_config.max_new_tokens, ours.generation_config.no_repeat_ngram_size = 5, 2
    ours.save_pretrained(tmp_path / "ours")
    read = transformers.GenerationConfig.from_pretrained(tmp_path / "ours")
    assert (read.num_beams, read.max_new_tokens, read.no_repeat_ngram_size) == (3, 5, 2)
    with torch.no_grad():
        theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "ours")
        expected = theirs.generate(input_ids=ids, attention_mask=mask)
    assert torch.equal(ours.generate(ids, attention_mask=mask), expected)
    assert gpt2_torch.GPT2LMHeadModel.can_generate() and not gpt2_torch.GPT2Model.can_generate()


def test_generation_config_argument_with_overrides(pair, batch):
    hf, ours, _ = pair
    ids, mask = batch
    fields = dict(num_beams=2, max_new_tokens=6, no_repeat_ngram_size=2, length_penalty=0.5)
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, attention_mask=mask, generation_config=transformers.GenerationConfig(
            **fields), max_new_tokens=8, return_dict_in_generate=True, output_scores=True)
    got = ours.generate(ids, attention_mask=mask, generation_config=GenerationConfig(**fields), max_new_tokens=8,
                        return_dict_in_generate=True, output_scores=True)
    assert_same(expected, got, beam=True)
    assert got.sequences.shape[1] == ids.shape[1] + 8


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
    merges_text = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    (directory / "merges.txt").write_text(merges_text, encoding="utf-8")
    ours_tok = GPT2Tokenizer(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"))
    assert len(hf_tok) == 97 and hf_tok.decode([40, 93, 94, 95]) == ours_tok.decode([40, 93, 94, 95])
    return hf_tok, ours_tok


@pytest.mark.parametrize("which", ["two_tokens", "inside_a_token", "several"])
def test_stop_strings_match_transformers(pair, batch, tokenizers_pair, which):
    hf, ours, _ = pair
    ids, mask = batch
    hf_tok, ours_tok = tokenizers_pair
    T = ids.shape[1]

    def force_st(input_ids, scores):  # the token " st" (id 95) third, so " s" ends inside a token
        if input_ids.shape[1] == T + 2:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, 95] = 0.0
        return scores

    # no_repeat_ngram_size=1: varied text (random weights repeat themselves)
    kwargs = dict(attention_mask=mask, max_new_tokens=N, no_repeat_ngram_size=1)
    if which == "inside_a_token":
        kwargs["logits_processor"] = transformers.LogitsProcessorList([force_st])
    with torch.no_grad():
        free = hf.generate(input_ids=ids, eos_token_id=None, pad_token_id=0, **kwargs)
    texts = [hf_tok.decode(row[T:]) for row in free]
    two = hf_tok.decode(free[0, T + 3 : T + 5])
    kwargs["stop_strings"] = {"two_tokens": [two], "inside_a_token": [" s"], "several": [two, texts[2][5:7]]}[which]
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, tokenizer=hf_tok, **kwargs)
    assert not torch.equal(expected, free)  # a stop string fired
    if which == "inside_a_token":
        assert expected.shape[1] == T + 3  # every row, at the forced token
    assert torch.equal(ours.generate(ids, tokenizer=hf_tok, **kwargs), expected)
    assert torch.equal(ours.generate(ids, tokenizer=ours_tok, **kwargs), expected)


class Recorder:
    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(torch.as_tensor(value).clone())

    def end(self):
        self.ended = True


def test_streamer_protocol(pair, batch, frequent):
    _, ours, _ = pair
    ids, mask = batch
    rec = Recorder()
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=N, eos_token_id=frequent[:3], streamer=rec)
    assert rec.ended and torch.equal(rec.puts[0], ids)
    assert all(p.shape == (3,) for p in rec.puts[1:])
    assert torch.equal(torch.cat([rec.puts[0]] + [p[:, None] for p in rec.puts[1:]], 1), out)
    rec = Recorder()
    out = ours.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=True, num_return_sequences=2, seed=0,
                        streamer=rec)
    assert rec.puts[0].shape == (6, 7)
    assert torch.equal(torch.cat([rec.puts[0]] + [p[:, None] for p in rec.puts[1:]], 1), out)


def test_transformers_streamers(pair, tokenizers_pair, capsys):
    hf, ours, _ = pair
    hf_tok, _ = tokenizers_pair
    ids = torch.tensor([[40, 41, 93, 94, 5]])
    with torch.no_grad():
        hf.generate(input_ids=ids, max_new_tokens=N, streamer=transformers.TextStreamer(hf_tok))
    expected = capsys.readouterr().out
    ours.generate(ids, max_new_tokens=N, streamer=transformers.TextStreamer(hf_tok))
    assert capsys.readouterr().out == expected and expected.strip()
    streamer = transformers.TextIteratorStreamer(hf_tok, skip_prompt=True)
    thread = threading.Thread(target=ours.generate, args=(ids,), kwargs=dict(max_new_tokens=N, streamer=streamer))
    thread.start()
    text = "".join(streamer)
    thread.join()
    with torch.no_grad():
        full = hf.generate(input_ids=ids, max_new_tokens=N)
    assert text == hf_tok.decode(full[0, ids.shape[1]:])


def test_custom_processors_and_stopping_criteria(pair, batch, frequent):
    class StopOn(transformers.StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return input_ids[:, -1] == frequent[0]

    processors = transformers.LogitsProcessorList(
        [transformers.NoRepeatNGramLogitsProcessor(2),
         lambda input_ids, scores: scores + 0.5 * (torch.arange(scores.shape[-1]) % 3 == 0)]
    )
    for extra in (dict(), dict(do_sample=True, top_k=20), dict(num_beams=3)):
        assert_same(
            *run_both(pair, batch, seed=4, max_new_tokens=N, logits_processor=processors,
                      stopping_criteria=transformers.StoppingCriteriaList([StopOn()]), **extra, **OUT),
            beam="num_beams" in extra,
        )


def test_attention_mask_inferred(pair, batch, caplog):
    hf, ours, _ = pair
    ids, _ = batch  # left-padded with pad id 0, not an eos id: transformers infers the mask
    with torch.no_grad():
        expected = hf.generate(input_ids=ids, max_new_tokens=N)
    with caplog.at_level(logging.WARNING, logger="gpt2_torch.generation"):
        assert torch.equal(ours.generate(ids, max_new_tokens=N), expected)
    assert not caplog.records
    padded = ids.masked_fill(ids == 0, 96)  # padded with the eos id: every token attended, and a warning
    with torch.no_grad():
        expected = hf.generate(input_ids=padded, max_new_tokens=N, pad_token_id=96)
    with caplog.at_level(logging.WARNING, logger="gpt2_torch.generation"):
        assert torch.equal(ours.generate(padded, max_new_tokens=N, pad_token_id=96), expected)
    assert any("attention_mask" in r.getMessage() for r in caplog.records)


ERRORS = {
    "nrs_greedy": (dict(num_return_sequences=2), "num_return_sequences=2"),
    "nrs_beams": (dict(num_beams=2, num_return_sequences=3), "num_return_sequences=3"),
    "temperature": (dict(do_sample=True, temperature=0.0), "temperature=0.0"),
    "top_p": (dict(do_sample=True, top_p=1.5), "top_p=1.5"),
    "early_stopping": (dict(num_beams=2, early_stopping="sometimes"), "early_stopping='sometimes'"),
    "unknown": (dict(num_beam=2), "num_beam"),
    "stop_strings_tokenizer": (dict(stop_strings=["ab"]), "tokenizer=None"),
    "stop_strings_beams": (dict(stop_strings=["ab"], num_beams=2, tokenizer=object()), "num_beams=2"),
    "streamer_beams": (dict(num_beams=2, streamer=Recorder()), "num_beams=2"),
    "too_long": (dict(max_new_tokens=30), "n_positions=24"),
    "bad_words": (dict(bad_words_ids=[[200]]), "bad_words_ids"),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_errors(pair, batch, name):
    _, ours, _ = pair
    ids, mask = batch
    kwargs, text = ERRORS[name]
    with pytest.raises(ValueError, match="Received") as info:
        ours.generate(ids, attention_mask=mask, **kwargs)
    assert text in str(info.value)
