"""The core's generation reference against transformers v5 (the spec): every logits processor alone and combined,
greedy decoding with processors, beam search (num_beams, length_penalty, early_stopping, num_return_sequences, an
eos that fires, a left-padded batch), the argument checks, GenerationConfig files both ways, the stop-string
matcher and the inferred attention mask."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import make_config, padded_batch
from gpt2_core import logits_process as lp
from gpt2_core import naming, reference
from gpt2_core.generation import (
    PROCESSOR_ORDER,
    GenerationConfig,
    StopStringMatcher,
    infer_attention_mask,
    process_logits,
    reference_greedy,
    resolve_generation,
)
from gpt2_core.generation_reference import reference_beam_search, reference_generate

import transformers  # a dev dependency: installed in CI
from transformers.generation import logits_process as hf_lp

transformers.logging.set_verbosity_error()

V = 97  # the tiny configs' vocabulary (eos = bos = 96, pad = 0)


def assert_scores_match(ours, theirs, tol=1e-6, what=""):
    """The same -inf set, and the finite entries within `tol` (max abs diff)."""
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, what
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs), err_msg=f"{what}: -inf sets differ")
    finite = np.isfinite(theirs)
    np.testing.assert_array_equal(np.isfinite(ours), finite, err_msg=what)
    if finite.any():
        diff = np.max(np.abs(ours[finite] - theirs[finite]))
        assert diff <= tol, f"{what}: max abs diff {diff}"


def hf_call(processor, input_ids, scores):
    with torch.no_grad():
        return processor(torch.from_numpy(np.asarray(input_ids)), torch.from_numpy(np.array(scores))).numpy()


# -- (a) each processor alone against transformers' class -------------------------------------------------------


@pytest.fixture(scope="module")
def batch():
    """Random float64 scores (B, V) with negatives, and ids (B, 14) over a few tokens so ids and n-grams repeat."""
    r = np.random.default_rng(0)
    scores = r.standard_normal((4, V)) * 3
    ids = r.integers(0, 12, (4, 14))
    ids[0, -3:] = ids[0, 2:5]  # the row's last bigram occurred before (an n-gram to ban)
    ids[1, :3] = 0  # leading padding
    return scores, ids


def test_repetition_penalty_matches_transformers(batch):
    scores, ids = batch
    for penalty in (1.7, 0.6):
        ours = lp.repetition_penalty(scores, ids, penalty)
        assert_scores_match(ours, hf_call(hf_lp.RepetitionPenaltyLogitsProcessor(penalty), ids, scores))
        ignore = np.array([0, 3, 1, 14])
        ours = lp.repetition_penalty(scores, ids, penalty, ignore)
        processor = hf_lp.RepetitionPenaltyLogitsProcessor(penalty, prompt_ignore_length=torch.from_numpy(ignore))
        theirs = hf_call(processor, ids, scores)
        assert_scores_match(ours, theirs)
    # the sign rule really was exercised: a seen negative score got more negative, a seen positive one smaller
    seen = np.zeros_like(scores, bool)
    np.put_along_axis(seen, ids, True, -1)
    assert (scores[seen] < 0).any() and (scores[seen] > 0).any()


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_matches_transformers(batch, n):
    scores, ids = batch
    ours = lp.no_repeat_ngram(scores, ids, n)
    assert_scores_match(ours, hf_call(hf_lp.NoRepeatNGramLogitsProcessor(n), ids, scores))
    assert np.isneginf(ours).any()
    short = ids[:, : n - 1]
    theirs = hf_call(hf_lp.NoRepeatNGramLogitsProcessor(n), short, scores)
    assert_scores_match(lp.no_repeat_ngram(scores, short, n), theirs)


def test_bad_words_match_transformers(batch):
    scores, ids = batch
    eos = [96]
    words = [
        [int(ids[0, -2]), int(ids[0, -1]), 50],  # three tokens: row 0 ends with the first two
        [int(ids[1, -1]), 51],  # two tokens: row 1 ends with the first
        [7],  # one token: always
        [96],  # the eos id alone: transformers lets it through
        [3, 4, 5, 6, 52],  # a prefix no row ends with
        list(range(20)),  # longer than the context
    ]
    ours = lp.bad_words(scores, ids, words, eos)
    assert_scores_match(ours, hf_call(hf_lp.NoBadWordsLogitsProcessor(words, eos), ids, scores))
    assert np.isneginf(ours[0, 50]) and np.isneginf(ours[1, 51]) and not np.isneginf(ours[:, 96]).any()


def test_length_and_forcing_processors_match_transformers(batch):
    scores, ids = batch
    T = 10
    for L in (10, 12, 13, 14):
        cur = ids[:, :L]
        cases = [
            (lp.min_length(scores, cur, T, 3, [5, 96]), hf_lp.MinNewTokensLengthLogitsProcessor(T, 3, [5, 96])),
            (lp.min_length(scores, cur, T, 3, [5, 96]), hf_lp.MinLengthLogitsProcessor(T + 3, [5, 96])),
            (lp.forced_eos(scores, cur, 14, [5, 96]), hf_lp.ForcedEOSTokenLogitsProcessor(14, [5, 96])),
            (lp.suppress_tokens(scores, [3, 8]), hf_lp.SuppressTokensLogitsProcessor([3, 8])),
            (lp.begin_suppress_tokens(scores, cur, [3, 8], lp.begin_suppress_index(T, None)),
             hf_lp.SuppressTokensAtBeginLogitsProcessor([3, 8], T)),
        ]
        for i, (ours, processor) in enumerate(cases):
            assert_scores_match(ours, hf_call(processor, cur, scores), what=f"L={L} case {i}")
    for L in (1, 2):
        ours = lp.forced_bos(scores, ids[:, :L], 9)
        assert_scores_match(ours, hf_call(hf_lp.ForcedBOSTokenLogitsProcessor(9), ids[:, :L], scores))
    assert lp.begin_suppress_index(1, 9) == 2 and lp.begin_suppress_index(1, None) == 1


def test_remove_invalid_and_renormalize_match_transformers(batch):
    scores, ids = batch
    bad = scores.copy()
    bad[0, :3] = [np.nan, np.inf, -np.inf]
    for dtype in (np.float32, np.float64):
        x = bad.astype(dtype)
        ours = lp.remove_invalid(x)
        assert ours.dtype == dtype
        np.testing.assert_array_equal(ours, hf_call(hf_lp.InfNanRemoveLogitsProcessor(), ids, x))
    assert_scores_match(lp.renormalize(scores), hf_call(hf_lp.LogitNormalization(), ids, scores))


WARPERS = [
    ("temperature", lambda x, k: lp.temperature(x, 0.7), lambda k: hf_lp.TemperatureLogitsWarper(0.7)),
    ("top_k", lambda x, k: lp.top_k(x, 10, k), lambda k: hf_lp.TopKLogitsWarper(10, min_tokens_to_keep=k)),
    ("top_k_small", lambda x, k: lp.top_k(x, 2, k), lambda k: hf_lp.TopKLogitsWarper(2, min_tokens_to_keep=k)),
    ("top_p", lambda x, k: lp.top_p(x, 0.8, k), lambda k: hf_lp.TopPLogitsWarper(0.8, min_tokens_to_keep=k)),
    ("top_p_tiny", lambda x, k: lp.top_p(x, 0.01, k), lambda k: hf_lp.TopPLogitsWarper(0.01, min_tokens_to_keep=k)),
    ("min_p", lambda x, k: lp.min_p(x, 0.1, k), lambda k: hf_lp.MinPLogitsWarper(0.1, min_tokens_to_keep=k)),
    ("typical_p", lambda x, k: lp.typical_p(x, 0.7, k), lambda k: hf_lp.TypicalLogitsWarper(0.7, min_tokens_to_keep=k)),
    ("epsilon", lambda x, k: lp.epsilon(x, 0.02, k), lambda k: hf_lp.EpsilonLogitsWarper(0.02, min_tokens_to_keep=k)),
    ("epsilon_high", lambda x, k: lp.epsilon(x, 0.5, k),
     lambda k: hf_lp.EpsilonLogitsWarper(0.5, min_tokens_to_keep=k)),
    ("eta", lambda x, k: lp.eta(x, 0.05, k), lambda k: hf_lp.EtaLogitsWarper(0.05, min_tokens_to_keep=k)),
]


@pytest.mark.parametrize("name, ours_fn, hf_fn", WARPERS, ids=[w[0] for w in WARPERS])
@pytest.mark.parametrize("min_keep", [1, 4])
def test_warpers_match_transformers(batch, name, ours_fn, hf_fn, min_keep):
    scores, ids = batch
    masked = scores.copy()
    masked[2, 10:] = -np.inf  # a row already filtered by an earlier processor
    for x in (scores, masked):
        ours = ours_fn(x, min_keep)
        assert_scores_match(ours, hf_call(hf_fn(min_keep), ids, x), what=name)
        assert (np.isfinite(ours).sum(-1) >= np.minimum(min_keep, np.isfinite(x).sum(-1))).all()


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(0.7, None, None), (1.0, 5, None), (1.0, None, 0.8), (1.3, 10, 0.6)]
)
def test_process_logits_is_the_warpers(temperature, top_k, top_p):
    logits = np.random.default_rng(1).standard_normal((3, 50)) * 3
    got = process_logits(logits, GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
    x = torch.from_numpy(logits)
    x = hf_lp.TemperatureLogitsWarper(temperature)(None, x)
    x = hf_lp.TopKLogitsWarper(top_k)(None, x) if top_k else x
    x = hf_lp.TopPLogitsWarper(top_p)(None, x) if top_p else x
    assert_scores_match(got, x.numpy())


# -- a tiny transformers model holding the reference's weights ----------------------------------------------------


@pytest.fixture(scope="module")
def lm():
    """(config, canonical params, transformers GPT2LMHeadModel with those weights, eager attention)."""
    config = make_config("default")
    params = reference.random_params(config, "lm", seed=3)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config.to_dict(), attn_implementation="eager")).eval()
    state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in naming.to_hub_state_dict(params, "lm").items()}
    result = hf.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and result.missing_keys == ["lm_head.weight"]  # tied to wte
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    return config, params, hf


def hf_generate(hf, ids, mask, **kwargs):
    with torch.no_grad():
        return hf.generate(
            torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), return_dict_in_generate=True,
            output_scores=True, **kwargs,
        )


def free_run(lm, ids, mask, n=10):
    config, params, _ = lm
    settings = resolve_generation(config, ids.shape[1], max_new_tokens=n, eos_token_id=[])
    return reference_greedy(params, config, ids, mask, settings)


# -- (b) the combined list against transformers' own `_get_logits_processor` -------------------------------------


@pytest.mark.parametrize("num_beams", [1, 3])
def test_apply_processors_matches_transformers_list(lm, num_beams):
    config, _, hf = lm
    ids, mask = padded_batch(config, "left")  # rows 1 and 2 start with pad id 0 (masked)
    T, N = ids.shape[1], 8
    eos = [96, 5]
    fields = dict(
        do_sample=True, num_beams=num_beams, repetition_penalty=1.4, no_repeat_ngram_size=2,
        bad_words_ids=[[int(ids[0, -1]), 40], [41], [96]], min_new_tokens=3, forced_eos_token_id=eos,
        remove_invalid_values=True, suppress_tokens=[42, 43], begin_suppress_tokens=[44], temperature=0.8,
        top_k=30, top_p=0.95, min_p=0.02, typical_p=0.97, epsilon_cutoff=0.001, eta_cutoff=0.001,
        renormalize_logits=True, eos_token_id=eos, pad_token_id=0,
    )
    settings = resolve_generation(config, T, max_new_tokens=N, **fields)
    assert set(settings.processors) == set(PROCESSOR_ORDER) - {"custom", "forced_bos"}
    gc = transformers.GenerationConfig(**fields, max_length=T + N, min_length=T + 3)
    hf._prepare_special_tokens(gc, True, device="cpu")
    expand = num_beams
    ids_x, mask_x = np.repeat(ids, expand, 0), np.repeat(mask, expand, 0)
    processors = hf._get_logits_processor(
        generation_config=gc, input_ids_seq_length=T, device="cpu",
        model_kwargs={"attention_mask": torch.from_numpy(mask_x)},
    )
    assert len(processors) == len(settings.processors) + 1  # transformers adds MinLength and MinNewTokens
    r = np.random.default_rng(2)
    for L in (T, T + 2, T + 3, T + N - 1):
        cur = np.concatenate([ids_x, r.integers(1, V, (ids_x.shape[0], L - T))], 1)
        scores = r.standard_normal((cur.shape[0], V)) * 2
        ours = lp.apply_processors(scores, cur, settings, ignore_lengths=lp.padding_lengths(mask_x))
        assert_scores_match(ours, hf_call(processors, cur, scores), what=f"L={L}")


def test_custom_processors_run_in_their_slot(lm):
    config, _, _ = lm
    settings = resolve_generation(config, 3, max_new_tokens=4, has_custom_processors=True, suppress_tokens=[1],
                                  do_sample=True, temperature=0.5, top_k=0)
    seen = []

    def custom(input_ids, scores):
        seen.append(scores.copy())
        return scores + 1.0

    scores = np.random.default_rng(0).standard_normal((2, V))
    out = lp.apply_processors(scores, np.zeros((2, 3), np.int64), settings, [custom])
    assert np.isneginf(seen[0][:, 1]).all()  # after suppress_tokens
    np.testing.assert_allclose(out[:, 2:], (scores[:, 2:] + 1.0) / 0.5)  # before temperature


# -- (c) greedy decoding with processors against transformers' generate -------------------------------------------


def test_greedy_with_processors_matches_transformers(lm):
    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T, N = ids.shape[1], 12
    free = free_run(lm, ids, mask, N)
    eos = int(free[0, T + 3])  # a token the model likes: it fires (after min_new_tokens)
    fields = dict(
        repetition_penalty=1.5, no_repeat_ngram_size=2,
        bad_words_ids=[[int(free[1, T + 1])], [int(free[2, T]), int(free[2, T + 1])]],
        min_new_tokens=3, suppress_tokens=[int(free[1, T + 2])], begin_suppress_tokens=[int(free[0, T])],
        forced_eos_token_id=eos, eos_token_id=eos, pad_token_id=config.pad_token_id, max_new_tokens=N,
    )
    settings = resolve_generation(config, T, **fields)
    ours = reference_generate(params, config, ids, mask, settings)
    theirs = hf_generate(hf, ids, mask, do_sample=False, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    assert len(ours["scores"]) == len(theirs.scores)
    for i, (a, b) in enumerate(zip(ours["scores"], theirs.scores)):
        assert_scores_match(a, b.numpy(), tol=1e-4, what=f"step {i}")
    np.testing.assert_array_equal(reference_greedy(params, config, ids, mask, settings), ours["sequences"])
    gen = ours["sequences"][:, T:]
    assert (gen == eos).any() and not (gen[:, :3] == eos).any()  # eos fired, never before min_new_tokens
    assert not np.array_equal(ours["sequences"], free[:, : ours["sequences"].shape[1]])  # the processors acted


@pytest.mark.parametrize("min_length_extra, min_new_tokens", [(6, 1), (6, None), (0, 4)])
def test_min_new_tokens_replaces_min_length_like_transformers(lm, min_length_extra, min_new_tokens):
    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T, N = ids.shape[1], 8
    free = free_run(lm, ids, mask, N)
    eos = int(free[0, T])  # the first greedy token of row 0: eos fires at once unless a minimum holds it back
    fields = dict(min_length=T + min_length_extra, min_new_tokens=min_new_tokens, eos_token_id=eos,
                  pad_token_id=config.pad_token_id, max_new_tokens=N)
    fields = {k: v for k, v in fields.items() if v is not None}
    ours = reference_generate(params, config, ids, mask, resolve_generation(config, T, **fields))
    theirs = hf_generate(hf, ids, mask, do_sample=False, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())


def test_sampling_rows_expand_like_transformers(lm):
    """top_k=1 sampling is greedy whatever the draws: num_return_sequences rows are consecutive copies per prompt,
    and the sampling path (warpers, draws, padding after eos) gives transformers' ids."""
    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T = ids.shape[1]
    eos = int(free_run(lm, ids, mask, 6)[1, T + 2])
    fields = dict(do_sample=True, top_k=1, temperature=0.7, num_return_sequences=2, eos_token_id=eos,
                  pad_token_id=config.pad_token_id, max_new_tokens=8, repetition_penalty=1.2)
    settings = resolve_generation(config, T, **fields)
    ours = reference_generate(params, config, ids, mask, settings, rng=np.random.default_rng(0))
    torch.manual_seed(0)
    theirs = hf_generate(hf, ids, mask, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    for a, b in zip(ours["scores"], theirs.scores):
        assert_scores_match(a, b.numpy(), tol=1e-4)
    assert ours["sequences"].shape[0] == 6 and (ours["sequences"][:, T:] == eos).any()


def test_sampling_draws_follow_the_processed_distribution(lm):
    config, params, _ = lm
    ids = np.array([[5, 6, 7]])
    settings = resolve_generation(
        config, 3, do_sample=True, top_k=3, max_new_tokens=1, num_return_sequences=400, eos_token_id=[]
    )
    out = reference_generate(params, config, ids, None, settings, rng=np.random.default_rng(0))
    probs = lp.softmax(out["scores"][0][0])
    drawn = out["sequences"][:, -1]
    assert set(drawn.tolist()) == set(np.flatnonzero(probs > 0).tolist())
    for token in set(drawn.tolist()):
        assert abs((drawn == token).mean() - probs[token]) < 0.08


# -- (d) beam search against transformers' generate -----------------------------------------------------------------

BEAM_CASES = [
    # num_beams, length_penalty, early_stopping, num_return_sequences
    (2, 1.0, False, 1),
    (2, 0.0, True, 2),
    (3, 2.0, "never", 2),
    (3, 1.0, True, 3),
    (4, 0.0, "never", 1),
    (4, 2.0, False, 4),
]


def beam_eos(lm, ids, mask):
    T = ids.shape[1]
    return int(free_run(lm, ids, mask, 4)[0, T + 1])


@pytest.mark.parametrize("num_beams, length_penalty, early_stopping, nrs", BEAM_CASES)
def test_beam_search_matches_transformers(lm, num_beams, length_penalty, early_stopping, nrs):
    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T = ids.shape[1]
    eos = beam_eos(lm, ids, mask)
    fields = dict(num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
                  num_return_sequences=nrs, eos_token_id=eos, pad_token_id=config.pad_token_id, max_new_tokens=8)
    ours = reference_beam_search(params, config, ids, mask, resolve_generation(config, T, **fields))
    theirs = hf_generate(hf, ids, mask, do_sample=False, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    np.testing.assert_array_equal(ours["beam_indices"], theirs.beam_indices.numpy())
    assert np.max(np.abs(ours["sequences_scores"] - theirs.sequences_scores.numpy())) <= 1e-4
    assert len(ours["scores"]) == len(theirs.scores)
    for i, (a, b) in enumerate(zip(ours["scores"], theirs.scores)):
        assert_scores_match(a, b.numpy(), tol=1e-4, what=f"step {i}")
    if length_penalty < 2.0:  # a strong length penalty prefers the long hypotheses that never emit it
        assert (ours["sequences"][:, T:] == eos).any()


@pytest.mark.parametrize("early_stopping", [False, "never", True])
def test_beam_search_early_stopping_modes_match_transformers(lm, early_stopping):
    """One left-padded prompt whose favourite token is the eos id: hypotheses finish at once, so the heuristic
    decides: False and True stop early, "never" (positive length penalty: judged at max_length) runs on."""
    config, params, hf = lm
    ids, mask = (x[1:2] for x in padded_batch(config, "left"))
    T, N = ids.shape[1], 8
    eos = int(free_run(lm, ids, mask, 1)[0, T])
    fields = dict(num_beams=3, length_penalty=1.0, early_stopping=early_stopping, num_return_sequences=2,
                  eos_token_id=eos, pad_token_id=config.pad_token_id, max_new_tokens=N)
    ours = reference_beam_search(params, config, ids, mask, resolve_generation(config, T, **fields))
    theirs = hf_generate(hf, ids, mask, do_sample=False, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    np.testing.assert_array_equal(ours["beam_indices"], theirs.beam_indices.numpy())
    assert np.max(np.abs(ours["sequences_scores"] - theirs.sequences_scores.numpy())) <= 1e-4
    assert len(ours["scores"]) == len(theirs.scores)
    assert (len(ours["scores"]) == N) == (early_stopping == "never")


def test_beam_search_with_processors_and_early_stop(lm):
    """Processors on the log-probabilities, and a search that ends before max_new_tokens (the early-stop heuristic
    with early_stopping=True) padded with transformers' fill value (pad id 0 -> eos[0])."""
    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T = ids.shape[1]
    eos = int(free_run(lm, ids, mask, 4)[0, T])
    fields = dict(num_beams=3, early_stopping=True, num_return_sequences=2, eos_token_id=eos,
                  pad_token_id=config.pad_token_id, max_new_tokens=12, repetition_penalty=1.3, no_repeat_ngram_size=2,
                  min_new_tokens=2, suppress_tokens=[3])
    ours = reference_beam_search(params, config, ids, mask, resolve_generation(config, T, **fields))
    theirs = hf_generate(hf, ids, mask, do_sample=False, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    np.testing.assert_array_equal(ours["beam_indices"], theirs.beam_indices.numpy())
    assert np.max(np.abs(ours["sequences_scores"] - theirs.sequences_scores.numpy())) <= 1e-4
    for a, b in zip(ours["scores"], theirs.scores):
        assert_scores_match(a, b.numpy(), tol=1e-4)
    assert len(ours["scores"]) < 12


# -- (e) argument checks ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_return_sequences=3, num_beams=2), "num_return_sequences must be <= num_beams"),
        (dict(num_return_sequences=2), "Greedy decoding returns one sequence"),
        (dict(num_beams=0), "num_beams must be an integer >= 1"),
        (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
        (dict(repetition_penalty=-1.0), "repetition_penalty must be > 0"),
        (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size must be a non-negative integer"),
        (dict(min_new_tokens=9, max_new_tokens=5), "min_new_tokens exceeds max_new_tokens"),
        (dict(bad_words_ids=[[5], [3, 97]]), "bad_words_ids holds token ids outside the vocabulary"),
        (dict(bad_words_ids=[[]]), "bad_words_ids must be a non-empty list"),
        (dict(stop_strings=["ok", ""]), "stop_strings must be non-empty strings"),
        (dict(num_beamz=2), r"generate\(\) got arguments it does not know. Received: \['num_beamz'\]"),
    ],
)
def test_resolve_generation_refuses(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        resolve_generation(make_config("default"), 3, **kwargs)
    assert "Received:" in str(info.value)


# -- (f) generation_config.json both ways ----------------------------------------------------------------------------

FIELDS = dict(max_new_tokens=17, do_sample=True, temperature=0.6, top_k=7, top_p=0.9, repetition_penalty=1.2,
              num_beams=3, num_return_sequences=2, length_penalty=0.5, early_stopping="never", no_repeat_ngram_size=3,
              bad_words_ids=[[5], [6, 7]], eos_token_id=[50, 96], pad_token_id=0, bos_token_id=96,
              min_new_tokens=2, suppress_tokens=[4], renormalize_logits=True)


def test_generation_config_written_by_transformers_reads_here(tmp_path):
    transformers.GenerationConfig(**FIELDS).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "generation_config.json").read_text())
    data["my_custom_key"] = {"a": 1}
    (tmp_path / "generation_config.json").write_text(json.dumps(data))
    ours = GenerationConfig.from_pretrained(tmp_path)
    for key, value in FIELDS.items():
        assert getattr(ours, key) == value, key
    ours.save_pretrained(tmp_path / "again")
    back = json.loads((tmp_path / "again" / "generation_config.json").read_text())
    assert back["my_custom_key"] == {"a": 1} and "transformers_version" in back


def test_generation_config_written_here_reads_in_transformers(tmp_path):
    GenerationConfig(**FIELDS).save_pretrained(tmp_path)
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    for key, value in FIELDS.items():
        assert getattr(theirs, key) == value, key
    theirs.validate()


def test_generation_config_refuses_unsupported_fields(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4, "num_beam_groups": 2}))
    gc = GenerationConfig.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_beam_groups is not supported"):
        gc.validate()
    with pytest.raises(ValueError, match="num_beam_groups"):
        resolve_generation(make_config("default"), 3, gc)
    (tmp_path / "generation_config.json").write_text(json.dumps({"num_beams": 4, "num_beam_groups": 1}))
    GenerationConfig.from_pretrained(tmp_path).validate()  # the no-op value is fine


# -- (g) stop strings against transformers' StopStringCriteria --------------------------------------------------------


def test_stop_string_matcher_matches_transformers():
    from pathlib import Path

    import gpt2_core
    from gpt2_core.tokenization import GPT2Tokenizer
    from transformers.generation.stopping_criteria import StopStringCriteria

    data = Path(gpt2_core.__file__).parent / "data"
    ours_tok = GPT2Tokenizer()
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(str(data))  # the shipped vocab.json / merges.txt
    stops = ["stop", "\n\n", "end."]
    texts = [
        "Please do not stop here and go on",  # a whole token " stop"
        "It now stops, ok",  # ends inside the token " stops"
        "First line\n\nsecond",  # split across tokens
        "The end. Fin",
        "no match at all in this one",
        "stop at the very start",  # in the prompt only: does not count
    ]
    criteria = StopStringCriteria(hf_tok, stops)
    matcher = StopStringMatcher(ours_tok, stops)
    found = 0
    for text in texts:
        row = ours_tok(text)["input_ids"]
        assert row == hf_tok(text)["input_ids"]
        start = 2
        first = matcher.first_stop(row, start)
        hf_hits = [bool(criteria(torch.tensor([row[: i + 1]]), None)[0]) for i in range(start, len(row))]
        expected = next((start + i for i, hit in enumerate(hf_hits) if hit), None)
        assert first == expected, text
        found += first is not None
    assert found == 4


def test_greedy_with_stop_strings_matches_transformers(lm):
    """The tiny model's ids 0..96 are printable one-byte tokens of the shipped vocabulary, so its output is text:
    rows whose text completes a stop string (across tokens) finish after that token and are padded."""
    from pathlib import Path

    import gpt2_core
    from gpt2_core.tokenization import GPT2Tokenizer

    config, params, hf = lm
    ids, mask = padded_batch(config, "left")
    T, N = ids.shape[1], 8
    ours_tok = GPT2Tokenizer()
    texts = [ours_tok.decode(row) for row in free_run(lm, ids, mask, N)[:, T:]]
    stops = [texts[0][3:5], texts[2][4:6]]  # two-token stop strings the greedy rows 0 and 2 produce
    fields = dict(stop_strings=stops, eos_token_id=96, pad_token_id=config.pad_token_id, max_new_tokens=N)
    ours = reference_generate(params, config, ids, mask, resolve_generation(config, T, **fields), tokenizer=ours_tok)
    hf_tok = transformers.GPT2TokenizerFast.from_pretrained(str(Path(gpt2_core.__file__).parent / "data"))
    theirs = hf_generate(hf, ids, mask, do_sample=False, tokenizer=hf_tok, **fields)
    np.testing.assert_array_equal(ours["sequences"], theirs.sequences.numpy())
    gen = ours["sequences"][:, T:]
    assert gen[0, 5:].tolist() == [0] * (N - 5) and gen[2, 6:].tolist() == [0] * (N - 6) and gen[1, -1] != 0


# -- (h) the inferred attention mask against transformers ------------------------------------------------------------


@pytest.mark.parametrize(
    "pad, eos",
    [(0, [96]), (96, [96]), (96, [5, 96]), (None, [96]), (7, [96]), (0, None)],
)
def test_infer_attention_mask_matches_transformers(lm, pad, eos):
    _, _, hf = lm
    ids = np.array([[0, 0, 5, 6, 7], [96, 96, 8, 9, 10], [1, 2, 3, 4, 5]])
    gc = transformers.GenerationConfig(pad_token_id=pad, eos_token_id=eos)
    hf._prepare_special_tokens(gc, False, device="cpu")
    # transformers sets pad = eos[0] when only eos is given; the library resolves pad the same way
    resolved_pad = gc._pad_token_tensor.item() if gc._pad_token_tensor is not None else None
    theirs = hf._prepare_attention_mask_for_generation(torch.from_numpy(ids), gc, {}).numpy()
    ours, warning = infer_attention_mask(ids, resolved_pad, eos or [])
    np.testing.assert_array_equal(ours, theirs)
    can_tell = resolved_pad is not None and (ids == resolved_pad).any()
    assert (warning is not None) == (can_tell and resolved_pad in (eos or []))
