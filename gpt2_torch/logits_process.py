"""The logits processors of gpt2_torch: `gpt2_core.logits_process` (transformers v5's rules) on the device.

The same functions, names and argument order as the NumPy reference: each takes `scores` (B, V) float32 and, where
the rule needs it, `input_ids` (B, L), the caller's prompt columns as given followed by the generated ids
(L = cur_len, a host int, so no function reads the device). Removed tokens get -inf (transformers' filter value).
`processor_values` turns one call's settings into device tensors once (no host-to-device copy per step);
`apply_processors` runs exactly `settings.processors`, in `PROCESSOR_ORDER`.

References: transformers `generation/logits_process.py` (v5) for every rule and edge case.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from gpt2_core.generation import GenerationSettings
from gpt2_core.logits_process import begin_suppress_index

Processor = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

NEG_INF = -math.inf


def _vocab_mask(V: int, ids: torch.Tensor) -> torch.Tensor:
    """(V,) bool: True at `ids` (ids outside 0..V-1 are ignored, as transformers' isin)."""
    return torch.isin(torch.arange(V, device=ids.device), ids)


# -- the processors of every strategy


def repetition_penalty(
    scores: torch.Tensor, input_ids: torch.Tensor, penalty: float, ignore_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """`RepetitionPenaltyLogitsProcessor`: each distinct id seen (from column `ignore_lengths[b]` on: each row's
    leading padding is skipped, as transformers v5's `generate` does) is penalised once: `score * penalty` if
    negative, `score / penalty` otherwise."""
    V = scores.shape[-1]
    ids = input_ids
    if ignore_lengths is not None:
        positions = torch.arange(ids.shape[1], device=ids.device)
        ids = ids.masked_fill(positions[None, :] < ignore_lengths[:, None], V)
    ids = ids.clamp(max=V)  # column V absorbs the ignored ids and ids past the output vocabulary
    padded = F.pad(scores, (0, 1))  # (B, V + 1)
    score = torch.gather(padded, 1, ids)
    score = torch.where(score < 0, score * penalty, score / penalty)
    return padded.scatter(1, ids, score)[:, :V]


def no_repeat_ngram(scores: torch.Tensor, input_ids: torch.Tensor, ngram_size: int) -> torch.Tensor:
    """`NoRepeatNGramLogitsProcessor`: ban every id that would repeat an n-gram of `input_ids` (prompt included)."""
    L, V = input_ids.shape[-1], scores.shape[-1]
    if L < ngram_size:
        return scores
    prefix = input_ids[:, L + 1 - ngram_size :]  # (B, n - 1)
    windows = input_ids.unfold(dimension=1, size=ngram_size, step=1)  # (B, L - n + 1, n)
    matches = (windows[..., :-1] == prefix.unsqueeze(1)).all(dim=-1)
    banned = scores.new_zeros((scores.shape[0], V + 1), dtype=torch.bool)
    banned.scatter_(1, torch.where(matches, windows[..., -1].clamp(max=V), V), True)
    return scores.masked_fill(banned[:, :V], NEG_INF)


def bad_words(
    scores: torch.Tensor, input_ids: torch.Tensor, single: torch.Tensor,
    groups: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """`NoBadWordsLogitsProcessor`: -inf on the last token of each bad word whose other tokens end `input_ids`.

    `single` (V,) bool marks the one-token words; `groups` hold, per prefix length P, the prefixes (G, P) and last
    tokens (G,) of the longer words (`bad_word_groups`)."""
    bias = torch.zeros_like(scores).masked_fill(single, NEG_INF)
    for prefixes, last in groups:
        P = prefixes.shape[1]
        if P > input_ids.shape[1]:
            continue
        matching = (input_ids[:, None, -P:] == prefixes).all(dim=-1)  # (B, G)
        bias.index_add_(1, last, torch.where(matching, NEG_INF, 0.0).to(bias.dtype))
    return scores + bias  # added, not assigned, as transformers (SequenceBiasLogitsProcessor) does


def bad_word_groups(
    bad_words_ids: Sequence[Sequence[int]], eos_token_id: Sequence[int], V: int, device: torch.device
) -> tuple[torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], ...]]:
    """Host side, once: the one-token words as a (V,) mask (eos ids dropped, as transformers) and, per prefix
    length, (prefixes (G, P), last tokens (G,)) of the longer words."""
    words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in tuple(eos_token_id))]
    single = torch.tensor([w[0] for w in words if len(w) == 1], dtype=torch.long, device=device)
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for w in dict.fromkeys(w for w in words if len(w) > 1):  # de-duplicated, as transformers' dict of words
        by_length.setdefault(len(w) - 1, []).append(w)
    groups = tuple(
        (torch.tensor([w[:-1] for w in ws], device=device), torch.tensor([w[-1] for w in ws], device=device))
        for ws in by_length.values()
    )
    return _vocab_mask(V, single), groups


def min_length(
    scores: torch.Tensor, input_ids: torch.Tensor, prompt_length: int, min_new_tokens: int, eos_mask: torch.Tensor
) -> torch.Tensor:
    """`MinNewTokensLengthLogitsProcessor` (and `MinLengthLogitsProcessor`): every eos id (`eos_mask` (V,)) -inf
    while fewer than `min_new_tokens` tokens were generated."""
    if input_ids.shape[-1] - prompt_length < min_new_tokens:
        return scores.masked_fill(eos_mask, NEG_INF)
    return scores


def forced_bos(scores: torch.Tensor, input_ids: torch.Tensor, bos_token_id: int) -> torch.Tensor:
    """`ForcedBOSTokenLogitsProcessor`: when the ids hold one token, only `bos_token_id` (score 0) is allowed."""
    if input_ids.shape[-1] == 1:
        scores = torch.full_like(scores, NEG_INF)
        scores[:, bos_token_id] = 0
    return scores


def forced_eos(
    scores: torch.Tensor, input_ids: torch.Tensor, max_length: int, eos_token_id: torch.Tensor
) -> torch.Tensor:
    """`ForcedEOSTokenLogitsProcessor`: at length `max_length - 1` (the last step), only the eos ids (score 0)."""
    if input_ids.shape[-1] == max_length - 1:
        scores = torch.full_like(scores, NEG_INF)
        scores[:, eos_token_id] = 0
    return scores


def remove_invalid(scores: torch.Tensor) -> torch.Tensor:
    """`InfNanRemoveLogitsProcessor`: nan -> 0, +inf -> the dtype's max, -inf -> its min."""
    out = torch.where(scores != scores, 0.0, scores)
    out = torch.where(scores == math.inf, torch.finfo(scores.dtype).max, out)
    return torch.where(scores == NEG_INF, torch.finfo(scores.dtype).min, out)


def suppress_tokens(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`SuppressTokensLogitsProcessor`: -inf on the ids of `mask` (V,) at every step."""
    return scores.masked_fill(mask, NEG_INF)


def begin_suppress_tokens(
    scores: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor, begin_index: int
) -> torch.Tensor:
    """`SuppressTokensAtBeginLogitsProcessor`: -inf on `mask`'s ids when the ids have length `begin_index`
    (`gpt2_core.logits_process.begin_suppress_index`)."""
    if input_ids.shape[-1] == begin_index:
        return scores.masked_fill(mask, NEG_INF)
    return scores


def custom(scores: torch.Tensor, input_ids: torch.Tensor, processors: Sequence[Processor]) -> torch.Tensor:
    """The caller's `logits_processor` list (transformers' `f(input_ids, scores) -> scores`), in order."""
    for f in processors:
        scores = f(input_ids, scores)
    return scores


# -- the sampling warpers


def temperature(scores: torch.Tensor, value: float) -> torch.Tensor:
    """`TemperatureLogitsWarper`."""
    return scores / value


def top_k(scores: torch.Tensor, k: int, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`TopKLogitsWarper`: -inf below the k-th largest score (k at least `min_tokens_to_keep`)."""
    k = min(max(k, min_tokens_to_keep), scores.shape[-1])
    return scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], NEG_INF)


def top_p(scores: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`TopPLogitsWarper`: keep the most likely tokens whose mass reaches `p` (transformers' ascending sort)."""
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[..., -min_tokens_to_keep:] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, NEG_INF)


def min_p(scores: torch.Tensor, p: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`MinPLogitsWarper`: -inf on probabilities below `p` times the largest."""
    probs = torch.softmax(scores, dim=-1)
    remove = probs < p * probs.amax(dim=-1, keepdim=True)
    keep = torch.topk(probs, min(min_tokens_to_keep, probs.shape[-1]), dim=-1).indices
    remove.scatter_(-1, keep, False)
    return scores.masked_fill(remove, NEG_INF)


def typical_p(scores: torch.Tensor, mass: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`TypicalLogitsWarper`: keep the tokens closest to the entropy until their mass reaches `mass`."""
    normalized = F.log_softmax(scores, dim=-1)
    p = torch.exp(normalized)
    ent = -(normalized * p).nansum(-1, keepdim=True)
    shifted = torch.abs(-normalized - ent)
    sorted_scores, sorted_indices = torch.sort(shifted, descending=False)
    cumulative = scores.gather(-1, sorted_indices).softmax(dim=-1).cumsum(dim=-1)
    last_ind = (cumulative < mass).sum(dim=1).clamp(max=sorted_scores.shape[-1] - 1)
    remove_sorted = sorted_scores > sorted_scores.gather(1, last_ind.view(-1, 1))
    remove_sorted[..., :min_tokens_to_keep] = False
    remove = remove_sorted.scatter(1, sorted_indices, remove_sorted)
    return scores.masked_fill(remove, NEG_INF)


def _cutoff(scores: torch.Tensor, threshold: torch.Tensor | float, min_tokens_to_keep: int) -> torch.Tensor:
    remove = scores.softmax(dim=-1) < threshold
    k = min(min_tokens_to_keep, scores.shape[-1])
    remove = remove & (scores < torch.topk(scores, k)[0][..., -1, None])
    return scores.masked_fill(remove, NEG_INF)


def epsilon(scores: torch.Tensor, cutoff: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`EpsilonLogitsWarper`: -inf on probabilities below `cutoff`."""
    return _cutoff(scores, cutoff, min_tokens_to_keep)


def eta(scores: torch.Tensor, cutoff: float, min_tokens_to_keep: int = 1) -> torch.Tensor:
    """`EtaLogitsWarper`: -inf on probabilities below min(eta, sqrt(eta) * exp(-entropy))."""
    eps = torch.tensor(cutoff, device=scores.device)
    entropy = torch.distributions.Categorical(logits=scores, validate_args=False).entropy()  # no host check
    threshold = torch.min(eps, torch.sqrt(eps) * torch.exp(-entropy))[..., None]
    return _cutoff(scores, threshold, min_tokens_to_keep)


def renormalize(scores: torch.Tensor) -> torch.Tensor:
    """`LogitNormalization`: log_softmax, last."""
    return scores.log_softmax(dim=-1)


# -- all of them, in order


def processor_values(
    settings: GenerationSettings, V: int, device: torch.device, ignore_lengths: torch.Tensor | None = None
) -> dict[str, Any]:
    """The device tensors the active processors need, made once per call.

    Args:
        settings: The call's resolved settings.
        V: The vocabulary size.
        device: Where the scores live.
        ignore_lengths: (B,) each row's leading padding columns (`gpt2_core.logits_process.padding_lengths`).
    """
    s = settings

    def ids(values: Sequence[int]) -> torch.Tensor:
        return torch.tensor(tuple(values), dtype=torch.long, device=device)

    values: dict[str, Any] = {"ignore_lengths": ignore_lengths}
    on = set(s.processors)
    if "bad_words" in on:
        values["bad_single"], values["bad_groups"] = bad_word_groups(s.bad_words_ids, s.eos_token_id, V, device)
    if "min_length" in on:
        values["eos_mask"] = _vocab_mask(V, ids(s.eos_token_id))
    if "forced_eos" in on:
        values["forced_eos"] = ids(s.forced_eos_token_id)
    if "suppress_tokens" in on:
        values["suppress"] = _vocab_mask(V, ids(s.suppress_tokens))
    if "begin_suppress_tokens" in on:
        values["begin_suppress"] = _vocab_mask(V, ids(s.begin_suppress_tokens))
        values["begin_index"] = begin_suppress_index(s.prompt_length, s.forced_bos_token_id)
    return values


def apply_processors(
    scores: torch.Tensor,
    input_ids: torch.Tensor,
    settings: GenerationSettings,
    values: dict[str, Any],
    custom_processors: Sequence[Processor] = (),
) -> torch.Tensor:
    """Run exactly `settings.processors`, in `PROCESSOR_ORDER` (transformers' `_get_logits_processor` list), on
    (B, V) float32 logits (greedy, sampling) or log-probabilities (beam search); `values` from `processor_values`."""
    s, v, x = settings, values, scores
    k = s.min_tokens_to_keep
    for name in s.processors:
        if name == "repetition_penalty":
            x = repetition_penalty(x, input_ids, s.repetition_penalty, v["ignore_lengths"])
        elif name == "no_repeat_ngram":
            x = no_repeat_ngram(x, input_ids, s.no_repeat_ngram_size)
        elif name == "bad_words":
            x = bad_words(x, input_ids, v["bad_single"], v["bad_groups"])
        elif name == "min_length":
            x = min_length(x, input_ids, s.prompt_length, s.min_new_tokens, v["eos_mask"])
        elif name == "forced_bos":
            x = forced_bos(x, input_ids, s.forced_bos_token_id)
        elif name == "forced_eos":
            x = forced_eos(x, input_ids, s.max_length, v["forced_eos"])
        elif name == "remove_invalid":
            x = remove_invalid(x)
        elif name == "suppress_tokens":
            x = suppress_tokens(x, v["suppress"])
        elif name == "begin_suppress_tokens":
            x = begin_suppress_tokens(x, input_ids, v["begin_suppress"], v["begin_index"])
        elif name == "custom":
            x = custom(x, input_ids, custom_processors)
        elif name == "temperature":
            x = temperature(x, s.temperature)
        elif name == "top_k":
            x = top_k(x, s.top_k, k)
        elif name == "top_p":
            x = top_p(x, s.top_p, k)
        elif name == "min_p":
            x = min_p(x, s.min_p, k)
        elif name == "typical_p":
            x = typical_p(x, s.typical_p, k)
        elif name == "epsilon":
            x = epsilon(x, s.epsilon_cutoff, k)
        elif name == "eta":
            x = eta(x, s.eta_cutoff, k)
        elif name == "renormalize":
            x = renormalize(x)
        else:  # a processor the core lists and this backend lacks: fail loudly, never skip
            raise NotImplementedError(f"gpt2_torch has no logits processor {name!r}.")
    return x
