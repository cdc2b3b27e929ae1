"""The NumPy reference decoders (float64, uncached): greedy, sampling and beam search as transformers v5 does them.

Every backend's `generate` is tested against these functions. Each step runs `gpt2_core.reference.forward` on the
whole sequence so far (position ids from the attention mask, each generated token extending it with a 1), then
`gpt2_core.logits_process.apply_processors`. References: transformers v5 `GenerationMixin._sample` and the
vectorized `GenerationMixin._beam_search` with its helpers (`_get_top_k_continuations`,
`_get_running_beams_for_next_iteration`, `_update_finished_beams`, `_check_early_stop_heuristic`,
`_beam_search_has_unfinished_sequences`), whose roles the small functions below keep, name for name.

* Rows: each prompt row is repeated `max(num_beams, num_return_sequences)` times, consecutively (transformers'
  `repeat_interleave`), before decoding.
* Greedy / sampling: processors on the raw logits; greedy takes the first maximum, sampling draws from
  `softmax(scores)` with a NumPy Generator (inverse CDF), so it matches no framework's draws. A row that emitted an
  eos id (or completed a stop string) is finished: it then receives `pad_token_id`. The loop ends when every row
  finished or `max_new_tokens` were made; the output is cut after the last step taken.
* Beam search: processors on `log_softmax(logits)`; the scores added to the running beams' sums; the top
  `max(2, 1 + len(eos)) * num_beams` continuations of each prompt; the best `num_beams` of them that did not just
  finish keep running; the ones that finished (among the first `num_beams`) enter the finished hypotheses with
  score `sum / (cur_len + 1 - T) ** length_penalty`; the early-stop heuristic per `early_stopping`. The output is
  the best `num_return_sequences` hypotheses per prompt, cut to the longest one, its tail filled with
  `pad_token_id or eos[0]` (transformers' expression, so a pad id of 0 gives eos[0]; -1 without eos).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from gpt2_core import reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation import GenerationSettings, StopStringMatcher
from gpt2_core.logits_process import apply_processors, log_softmax, padding_lengths, softmax

# transformers' "impossible" score for beams that must not be chosen (a finite number, not -inf, on purpose)
BEAM_NEG = -1.0e9

Processor = Callable[[np.ndarray, np.ndarray], np.ndarray]


def expand_rows(x: np.ndarray, expand_size: int) -> np.ndarray:
    """Each row repeated `expand_size` times, consecutively (torch's repeat_interleave on dim 0)."""
    return np.repeat(np.asarray(x), expand_size, axis=0)


def next_token_logits(
    params: Mapping[str, np.ndarray], config: GPT2Config, ids: np.ndarray, mask: np.ndarray
) -> np.ndarray:
    """(B, V) float64 logits of the next token after `ids` (B, L) with padding mask `mask` (B, L)."""
    h = reference.forward(params, config, ids, attention_mask=mask)["last_hidden_state"][:, -1:]  # (B, 1, C)
    return reference.lm_logits(params, config, h)[:, -1]  # (B, V)


def sample_tokens(scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) one draw per row from softmax(scores) (inverse CDF: the first token whose cumulative mass exceeds u)."""
    probs = softmax(np.asarray(scores, np.float64))
    cum = np.cumsum(probs, -1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    idx = (cum <= u[:, None]).sum(-1)
    last_positive = probs.shape[1] - 1 - np.argmax(probs[:, ::-1] > 0, axis=-1)
    return np.minimum(idx, last_positive)


def reference_generate(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    settings: GenerationSettings,
    rng: np.random.Generator | None = None,
    custom: Sequence[Processor] = (),
    *,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Greedy decoding or sampling (`settings.do_sample`), every processor of `settings` applied.

    Args:
        params, config: Canonical LM parameters and their config.
        input_ids: (B, T) the prompt (left-padded for a batch).
        attention_mask: (B, T) or None (all ones).
        settings: `resolve_generation`'s settings (num_beams must be 1).
        rng: The sampler's Generator (default: `np.random.default_rng(settings.seed)`).
        custom: The caller's processors, `f(input_ids, scores) -> scores`.
        tokenizer: Needed for `settings.stop_strings`.

    Returns:
        dict: `sequences` (B * num_return_sequences, T + steps) int64, `scores` and `logits`: tuples of (B', V)
        float64 per step (processed scores, raw logits).
    """
    if settings.is_beam:
        raise ValueError(
            f"reference_generate decodes greedily or by sampling. Received: num_beams={settings.num_beams}. Use "
            "reference_beam_search."
        )
    ids = np.asarray(input_ids).astype(np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
    expand = settings.num_return_sequences
    ids, mask = expand_rows(ids, expand), expand_rows(mask, expand)
    B, T = ids.shape
    ignore = padding_lengths(mask)
    if settings.do_sample and rng is None:
        rng = np.random.default_rng(settings.seed)
    matcher = StopStringMatcher(tokenizer, settings.stop_strings) if settings.stop_strings else None
    eos = np.asarray(settings.eos_token_id, np.int64)
    done = np.zeros(B, bool)
    scores, logits_steps = [], []
    for _ in range(settings.max_new_tokens):
        logits = next_token_logits(params, config, ids, mask)
        x = apply_processors(logits, ids, settings, custom, ignore_lengths=ignore)
        scores.append(x)
        logits_steps.append(logits)
        nxt = sample_tokens(x, rng) if settings.do_sample else np.argmax(x, -1)
        nxt = np.where(done, settings.pad_token_id, nxt)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones((B, 1), mask.dtype)], 1)
        done |= np.isin(nxt, eos)
        if matcher is not None:
            L = ids.shape[1]
            done |= np.array([not d and matcher.first_stop(row, L - 1) is not None for row, d in zip(ids, done)])
        if done.all():
            break
    return {"sequences": ids, "scores": tuple(scores), "logits": tuple(logits_steps)}


# ----- beam search: transformers v5's `_beam_search`, function for function


def gather_beams(x: np.ndarray, beam_indices: np.ndarray) -> np.ndarray:
    """x (B, K, ...) at beam_indices (B, K') along axis 1 (transformers' `_gather_beams`)."""
    idx = beam_indices.reshape(beam_indices.shape + (1,) * (x.ndim - 2))
    return np.take_along_axis(x, idx, axis=1)


def top_k_indices(x: np.ndarray, k: int) -> np.ndarray:
    """(B, k) indices of the k largest of each row, best first (ties: the lower index, as torch.topk on CPU)."""
    return np.argsort(-x, axis=-1, kind="stable")[:, :k]


def get_top_k_continuations(
    accumulated_log_probs: np.ndarray,
    running_sequences: np.ndarray,
    running_beam_indices: np.ndarray,
    cur_len: int,
    decoder_prompt_len: int,
    do_sample: bool,
    beams_to_keep: int,
    num_beams: int,
    batch_size: int,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The top `beams_to_keep` continuations (B, K) of the (B, num_beams * V) summed log-probs (beam sampling:
    drawn without replacement from their softmax, then sorted), with their sequences and beam indices."""
    if do_sample:
        probs = softmax(accumulated_log_probs)
        topk_indices = np.stack([rng.choice(p.shape[0], size=beams_to_keep, replace=False, p=p) for p in probs])
        topk_log_probs = np.take_along_axis(accumulated_log_probs, topk_indices, -1)
        order = top_k_indices(topk_log_probs, beams_to_keep)
        topk_log_probs = np.take_along_axis(topk_log_probs, order, -1)
        topk_indices = np.take_along_axis(topk_indices, order, -1)
    else:
        topk_indices = top_k_indices(accumulated_log_probs, beams_to_keep)
        topk_log_probs = np.take_along_axis(accumulated_log_probs, topk_indices, -1)

    vocab_size = accumulated_log_probs.shape[-1] // num_beams
    topk_current_beam_indices = topk_indices // vocab_size  # (B, K)
    topk_running_beam_indices = gather_beams(running_beam_indices, topk_current_beam_indices)
    topk_running_sequences = gather_beams(running_sequences, topk_current_beam_indices)
    topk_ids = topk_indices % vocab_size
    topk_running_sequences[:, :, cur_len] = topk_ids
    # flat beam index b * num_beams + beam
    batch_offset = np.arange(batch_size)[:, None] * num_beams
    topk_running_beam_indices[:, :, cur_len - decoder_prompt_len] = topk_current_beam_indices + batch_offset
    return topk_log_probs, topk_running_sequences, topk_running_beam_indices


def get_running_beams_for_next_iteration(
    topk_log_probs: np.ndarray,
    topk_running_sequences: np.ndarray,
    topk_running_beam_indices: np.ndarray,
    next_token_hits_stopping_criteria: np.ndarray,
    num_beams: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best `num_beams` continuations that did not just finish (finished ones get BEAM_NEG added)."""
    topk_running_log_probs = topk_log_probs + next_token_hits_stopping_criteria * BEAM_NEG
    next_topk_indices = top_k_indices(topk_running_log_probs, num_beams)
    running_sequences = gather_beams(topk_running_sequences, next_topk_indices)
    running_beam_scores = gather_beams(topk_running_log_probs, next_topk_indices)
    running_beam_indices = gather_beams(topk_running_beam_indices, next_topk_indices)
    return running_sequences, running_beam_scores, running_beam_indices


def update_finished_beams(
    sequences: np.ndarray,
    topk_running_sequences: np.ndarray,
    beam_scores: np.ndarray,
    topk_log_probs: np.ndarray,
    beam_indices: np.ndarray,
    topk_running_beam_indices: np.ndarray,
    is_early_stop_heuristic_unsatisfied: np.ndarray,
    is_sent_finished: np.ndarray,
    next_token_hits_stopping_criteria: np.ndarray,
    top_num_beam_mask: np.ndarray,
    num_beams: int,
    cur_len: int,
    decoder_prompt_len: int,
    length_penalty: float,
    early_stopping: bool | str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Merge the continuations that just finished (among the first `num_beams`) into the `num_beams` best
    finished hypotheses, scored with the length penalty."""
    did_top_num_beams_just_finished = next_token_hits_stopping_criteria & top_num_beam_mask[None, :]
    topk_log_probs = topk_log_probs / ((cur_len + 1 - decoder_prompt_len) ** length_penalty)
    beams_in_batch_are_full = np.all(is_sent_finished, axis=-1, keepdims=True) & (early_stopping is True)
    topk_log_probs = topk_log_probs + beams_in_batch_are_full * BEAM_NEG
    topk_log_probs = topk_log_probs + (~is_early_stop_heuristic_unsatisfied) * BEAM_NEG
    topk_log_probs = topk_log_probs + (~did_top_num_beams_just_finished) * BEAM_NEG

    merged_sequences = np.concatenate([sequences, topk_running_sequences], 1)
    merged_scores = np.concatenate([beam_scores, topk_log_probs], 1)
    merged_beam_indices = np.concatenate([beam_indices, topk_running_beam_indices], 1)
    merged_is_sent_finished = np.concatenate([is_sent_finished, did_top_num_beams_just_finished], 1)
    topk_merged_indices = top_k_indices(merged_scores, num_beams)
    sequences = gather_beams(merged_sequences, topk_merged_indices)
    beam_scores = gather_beams(merged_scores, topk_merged_indices)
    beam_indices = gather_beams(merged_beam_indices, topk_merged_indices)
    is_sent_finished = gather_beams(merged_is_sent_finished, topk_merged_indices)
    return sequences, beam_scores, beam_indices, is_sent_finished


def check_early_stop_heuristic(
    is_early_stop_heuristic_unsatisfied: np.ndarray,
    running_beam_scores: np.ndarray,
    beam_scores: np.ndarray,
    is_sent_finished: np.ndarray,
    cur_len: int,
    max_length: int,
    decoder_prompt_len: int,
    early_stopping: bool | str,
    length_penalty: float,
) -> np.ndarray:
    """(B, 1): can the best running beam still beat the worst finished hypothesis? False / "never" differ in the
    length they assume for it (now, or `max_length` when "never" and a positive length penalty)."""
    if early_stopping == "never" and length_penalty > 0.0:
        best_hypothetical_length = max_length - decoder_prompt_len
    else:
        best_hypothetical_length = cur_len - decoder_prompt_len
    best_possible_running_score = running_beam_scores[:, :1] / (best_hypothetical_length**length_penalty)
    worst_finished_score = np.where(is_sent_finished, np.min(beam_scores, axis=1, keepdims=True), BEAM_NEG)
    return is_early_stop_heuristic_unsatisfied & np.any(
        best_possible_running_score > worst_finished_score, axis=-1, keepdims=True
    )


def beam_search_has_unfinished_sequences(
    is_early_stop_heuristic_unsatisfied: np.ndarray,
    is_sent_finished: np.ndarray,
    next_token_hits_stopping_criteria: np.ndarray,
    early_stopping: bool | str,
) -> bool:
    """Continue while some prompt can improve, some hypothesis slot is open (early_stopping=True), and some
    continuation did not hit a stopping criterion."""
    improvement_possible = bool(np.any(is_early_stop_heuristic_unsatisfied))
    exists_open_beam = not (bool(np.all(is_sent_finished)) and early_stopping is True)
    valid_continuations = not bool(np.all(next_token_hits_stopping_criteria))
    return improvement_possible and exists_open_beam and valid_continuations


def beam_output_fill_value(settings: GenerationSettings) -> int:
    """transformers' `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1` (a pad id of 0 gives
    eos[0]; no eos gives -1)."""
    eos = settings.eos_token_id
    return (settings.pad_token_id or eos[0]) if eos else -1


def reference_beam_search(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    input_ids: np.ndarray,
    attention_mask: np.ndarray | None,
    settings: GenerationSettings,
    rng: np.random.Generator | None = None,
    custom: Sequence[Processor] = (),
) -> dict[str, Any]:
    """Beam search (beam sampling with `settings.do_sample`), transformers v5's vectorized algorithm step for step.

    Returns:
        dict: `sequences` (B * num_return_sequences, T + steps) int64, `sequences_scores` (B * nrs,) float64,
        `beam_indices` (B * nrs, steps) int64 (flat b * num_beams + beam; -1 past a hypothesis' end), `scores`
        and `logits`: tuples of (B * num_beams, V) per step (processed log-probabilities, raw logits).
    """
    if settings.stop_strings:
        raise ValueError(
            f"stop_strings are not implemented for beam search. Received: stop_strings={list(settings.stop_strings)}, "
            f"num_beams={settings.num_beams}. Use num_beams=1 or stop on eos_token_id."
        )
    num_beams, nrs = settings.num_beams, settings.num_return_sequences
    ids = np.asarray(input_ids).astype(np.int64)
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask).astype(np.int64)
    ids, mask = expand_rows(ids, max(num_beams, nrs)), expand_rows(mask, max(num_beams, nrs))
    batch_size = ids.shape[0] // num_beams
    cur_len = decoder_prompt_len = ids.shape[1]
    max_length = settings.max_length
    eos = np.asarray(settings.eos_token_id, np.int64)
    early_stopping, length_penalty = settings.early_stopping, settings.length_penalty
    ignore = padding_lengths(mask)
    if settings.do_sample and rng is None:
        rng = np.random.default_rng(settings.seed)

    beams_to_keep = max(2, 1 + len(eos)) * num_beams
    top_num_beam_mask = np.arange(beams_to_keep) < num_beams
    fill = beam_output_fill_value(settings)
    running_sequences = np.full((batch_size, num_beams, max_length), fill, np.int64)
    running_sequences[:, :, :cur_len] = ids.reshape(batch_size, num_beams, cur_len)
    sequences = running_sequences.copy()
    # only the first beam's continuations count at the first step (the others are copies of it)
    running_beam_scores = np.zeros((batch_size, num_beams))
    running_beam_scores[:, 1:] = BEAM_NEG
    beam_scores = np.full((batch_size, num_beams), BEAM_NEG)
    is_sent_finished = np.zeros((batch_size, num_beams), bool)
    is_early_stop_heuristic_unsatisfied = np.ones((batch_size, 1), bool)
    running_beam_indices = np.full((batch_size, num_beams, max_length - cur_len), -1, np.int64)
    beam_indices = running_beam_indices.copy()
    all_scores, raw_logits = [], []

    while True:
        flat_running_sequences = running_sequences[:, :, :cur_len].reshape(batch_size * num_beams, cur_len)
        step_mask = np.concatenate([mask, np.ones((mask.shape[0], cur_len - decoder_prompt_len), np.int64)], 1)
        logits = next_token_logits(params, config, flat_running_sequences, step_mask)  # (B * num_beams, V)
        log_probs = log_softmax(logits)
        log_probs = apply_processors(log_probs, flat_running_sequences, settings, custom, ignore_lengths=ignore)
        all_scores.append(log_probs)
        raw_logits.append(logits)
        V = log_probs.shape[-1]
        accumulated = (log_probs.reshape(batch_size, num_beams, V) + running_beam_scores[:, :, None]).reshape(
            batch_size, num_beams * V
        )

        topk_log_probs, topk_running_sequences, topk_running_beam_indices = get_top_k_continuations(
            accumulated, running_sequences, running_beam_indices, cur_len, decoder_prompt_len,
            settings.do_sample, beams_to_keep, num_beams, batch_size, rng,
        )
        # the stopping criteria on the continuations: the length, or an eos id as the new token
        next_token_hits_stopping_criteria = np.broadcast_to(cur_len + 1 >= max_length, topk_log_probs.shape) | np.isin(
            topk_running_sequences[:, :, cur_len], eos
        )
        running_sequences, running_beam_scores, running_beam_indices = get_running_beams_for_next_iteration(
            topk_log_probs, topk_running_sequences, topk_running_beam_indices, next_token_hits_stopping_criteria,
            num_beams,
        )
        sequences, beam_scores, beam_indices, is_sent_finished = update_finished_beams(
            sequences, topk_running_sequences, beam_scores, topk_log_probs, beam_indices, topk_running_beam_indices,
            is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria,
            top_num_beam_mask, num_beams, cur_len, decoder_prompt_len, length_penalty, early_stopping,
        )
        cur_len += 1
        is_early_stop_heuristic_unsatisfied = check_early_stop_heuristic(
            is_early_stop_heuristic_unsatisfied, running_beam_scores, beam_scores, is_sent_finished, cur_len,
            max_length, decoder_prompt_len, early_stopping, length_penalty,
        )
        if not beam_search_has_unfinished_sequences(
            is_early_stop_heuristic_unsatisfied, is_sent_finished, next_token_hits_stopping_criteria, early_stopping
        ):
            break

    # the best num_return_sequences hypotheses of each prompt, cut to the longest one
    sequences = sequences[:, :nrs].reshape(batch_size * nrs, max_length)
    beam_scores = beam_scores[:, :nrs].reshape(batch_size * nrs)
    beam_indices = beam_indices[:, :nrs].reshape(batch_size * nrs, -1)
    max_generated_length = int((beam_indices != -1).sum(1).max())
    return {
        "sequences": sequences[:, : decoder_prompt_len + max_generated_length],
        "sequences_scores": beam_scores,
        "beam_indices": beam_indices[:, :max_generated_length],
        "scores": tuple(all_scores),
        "logits": tuple(raw_logits),
    }
