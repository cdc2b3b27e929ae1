"""The logits processors in NumPy: transformers v5's semantics, one small function each, in `PROCESSOR_ORDER`.

Each function takes `scores` (B, V) (and, where the rule needs it, the ids so far, `input_ids` (B, L): the caller's
prompt columns as given followed by the generated tokens) and returns new scores of the same dtype; removed tokens
get -inf. The backends follow these functions name for name; `apply_processors` runs exactly the active ones of a
`GenerationSettings` (`settings.processors`), in order. Reference: transformers v5
`generation/logits_process.py` (the classes named in each docstring) and `GenerationMixin._get_logits_processor`.

The rules worth knowing (all transformers'):
* repetition_penalty: each distinct id of `input_ids` is hit once: a negative score is multiplied by the penalty, a
  positive one divided (so > 1 always discourages). `generate` skips each row's leading padding columns (it passes
  the index of the row's first attended prompt column as `prompt_ignore_length`, `padding_lengths` here); other
  padding tokens (right padding, or a mask inferred from pad ids in the middle) are penalised.
* no_repeat_ngram: the last n-1 ids, matched against every earlier window, ban each window's next id.
* bad_words: a one-token word is always banned, a longer one when the ids end with all but its last token; one-token
  words equal to an eos id are dropped (transformers lets eos through).
* min_length: every eos id is banned while fewer than `min_new_tokens` tokens were generated.
* forced_bos when L == 1, forced_eos when L == max_length - 1: every other token -inf, the forced one 0.
* begin_suppress_tokens at the first generated step (L == T, or T + 1 when a forced BOS fills a 1-token prompt).
* warpers (sampling only) keep at least `min_tokens_to_keep` tokens; renormalize is a final log_softmax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from gpt2_core.generation import GenerationSettings

NEG_INF = -np.inf


def _float(scores: np.ndarray) -> np.ndarray:
    x = np.asarray(scores)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _vocab_mask(V: int, ids: Sequence[int]) -> np.ndarray:
    """(V,) bool: the ids that exist in this vocabulary (larger ids are ignored, as transformers' isin)."""
    mask = np.zeros(V, bool)
    ids = np.asarray([i for i in ids if 0 <= i < V], np.int64)
    mask[ids] = True
    return mask


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - np.max(x, axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _scatter_rows(sorted_flags: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Flags given in sorted order (B, V) back to vocabulary order."""
    out = np.empty_like(sorted_flags)
    np.put_along_axis(out, order, sorted_flags, -1)
    return out


def _kth_largest(scores: np.ndarray, k: int) -> np.ndarray:
    """(B, 1): the k-th largest score of each row."""
    return -np.sort(-scores, axis=-1)[:, k - 1 : k]


# ----- the processors of every strategy


def padding_lengths(attention_mask: np.ndarray | None) -> np.ndarray | None:
    """(B,) leading padding columns of each prompt row: the index of its first attended column (0 for a row with
    none), what transformers' `generate` passes to the repetition penalty as `prompt_ignore_length`."""
    if attention_mask is None:
        return None
    return np.argmax(np.asarray(attention_mask) != 0, axis=-1)


def repetition_penalty(
    scores: np.ndarray, input_ids: np.ndarray, penalty: float, ignore_lengths: np.ndarray | None = None
) -> np.ndarray:
    """`RepetitionPenaltyLogitsProcessor`: each distinct id seen (from column `ignore_lengths[b]` on) is penalised
    once: `score * penalty` if negative, `score / penalty` otherwise."""
    x = _float(scores).copy()
    ids = np.asarray(input_ids)
    B, V = x.shape
    seen = np.zeros((B, V + 1), bool)  # column V absorbs ignored ids and ids past the output vocabulary
    cols = np.minimum(ids, V)
    if ignore_lengths is not None:
        cols = np.where(np.arange(ids.shape[1])[None, :] < np.asarray(ignore_lengths)[:, None], V, cols)
    np.put_along_axis(seen, cols, True, -1)
    seen = seen[:, :V]
    penalised = np.where(x < 0, x * penalty, x / penalty)
    return np.where(seen, penalised, x).astype(x.dtype, copy=False)


def no_repeat_ngram(scores: np.ndarray, input_ids: np.ndarray, ngram_size: int) -> np.ndarray:
    """`NoRepeatNGramLogitsProcessor`: ban every id that would repeat an n-gram of `input_ids` (prompt included)."""
    x = _float(scores).copy()
    ids = np.asarray(input_ids)
    B, V = x.shape
    L, n = ids.shape[1], ngram_size
    if L < n:
        return x
    for b in range(B):
        row = ids[b].tolist()
        prefix = row[L + 1 - n :]  # the n-1 last ids (empty for n = 1: every seen id is banned)
        for i in range(L - n + 1):
            if row[i : i + n - 1] == prefix and row[i + n - 1] < V:
                x[b, row[i + n - 1]] = NEG_INF
    return x


def bad_words(
    scores: np.ndarray, input_ids: np.ndarray, bad_words_ids: Sequence[Sequence[int]], eos_token_id: Sequence[int] = ()
) -> np.ndarray:
    """`NoBadWordsLogitsProcessor`: -inf on the last token of each bad word whose other tokens end `input_ids`."""
    x = _float(scores)
    ids = np.asarray(input_ids)
    B, V = x.shape
    words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in tuple(eos_token_id))]
    bias = np.zeros_like(x)
    for word in words:
        prefix, last = word[:-1], word[-1]
        if len(prefix) > ids.shape[1]:
            continue
        if not prefix:
            bias[:, last] = NEG_INF
            continue
        match = np.all(ids[:, ids.shape[1] - len(prefix) :] == np.asarray(prefix)[None, :], axis=-1)  # (B,)
        bias[match, last] = NEG_INF
    # added, not assigned, as transformers (SequenceBiasLogitsProcessor) does
    return x + bias


def min_length(
    scores: np.ndarray, input_ids: np.ndarray, prompt_length: int, min_new_tokens: int, eos_token_id: Sequence[int]
) -> np.ndarray:
    """`MinNewTokensLengthLogitsProcessor` (and `MinLengthLogitsProcessor`): every eos id -inf while fewer than
    `min_new_tokens` tokens were generated."""
    x = _float(scores)
    if np.asarray(input_ids).shape[1] - prompt_length < min_new_tokens:
        x = np.where(_vocab_mask(x.shape[1], eos_token_id)[None, :], NEG_INF, x).astype(x.dtype, copy=False)
    return x


def forced_bos(scores: np.ndarray, input_ids: np.ndarray, bos_token_id: int) -> np.ndarray:
    """`ForcedBOSTokenLogitsProcessor`: when the ids hold one token, only `bos_token_id` (score 0) is allowed."""
    x = _float(scores)
    if np.asarray(input_ids).shape[1] == 1:
        x = np.full_like(x, NEG_INF)
        x[:, bos_token_id] = 0
    return x


def forced_eos(scores: np.ndarray, input_ids: np.ndarray, max_length: int, eos_token_id: Sequence[int]) -> np.ndarray:
    """`ForcedEOSTokenLogitsProcessor`: at length `max_length - 1` (the last step), only the eos ids (score 0)."""
    x = _float(scores)
    if np.asarray(input_ids).shape[1] == max_length - 1:
        x = np.full_like(x, NEG_INF)
        x[:, list(eos_token_id)] = 0
    return x


def remove_invalid(scores: np.ndarray) -> np.ndarray:
    """`InfNanRemoveLogitsProcessor`: nan -> 0, +inf -> the dtype's max, -inf -> its min."""
    x = _float(scores)
    info = np.finfo(x.dtype)
    out = np.where(np.isnan(x), 0.0, x)
    out = np.where(x == np.inf, info.max, out)
    out = np.where(x == -np.inf, info.min, out)
    return out.astype(x.dtype, copy=False)


def suppress_tokens(scores: np.ndarray, suppress: Sequence[int]) -> np.ndarray:
    """`SuppressTokensLogitsProcessor`: -inf on these ids at every step."""
    x = _float(scores)
    return np.where(_vocab_mask(x.shape[1], suppress)[None, :], NEG_INF, x).astype(x.dtype, copy=False)


def begin_suppress_index(prompt_length: int, forced_bos_token_id: int | None) -> int:
    """The length L at which `begin_suppress_tokens` applies: the first generated step (transformers' rule)."""
    return prompt_length if (prompt_length > 1 or forced_bos_token_id is None) else prompt_length + 1


def begin_suppress_tokens(
    scores: np.ndarray, input_ids: np.ndarray, suppress: Sequence[int], begin_index: int
) -> np.ndarray:
    """`SuppressTokensAtBeginLogitsProcessor`: -inf on these ids when the ids have length `begin_index`."""
    x = _float(scores)
    if np.asarray(input_ids).shape[1] == begin_index:
        x = suppress_tokens(x, suppress)
    return x


# ----- the sampling warpers


def temperature(scores: np.ndarray, value: float) -> np.ndarray:
    """`TemperatureLogitsWarper`."""
    with np.errstate(over="ignore"):  # a huge finite score (remove_invalid's finfo.max) may overflow, as in torch
        return _float(scores) / value


def top_k(scores: np.ndarray, k: int, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`TopKLogitsWarper`: keep the scores >= the k-th largest (k at least `min_tokens_to_keep`)."""
    x = _float(scores)
    k = min(max(k, min_tokens_to_keep), x.shape[-1])
    return np.where(x < _kth_largest(x, k), NEG_INF, x).astype(x.dtype, copy=False)


def top_p(scores: np.ndarray, p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`TopPLogitsWarper`: in ascending order, drop the tokens whose cumulative probability is <= 1 - p; the
    `min_tokens_to_keep` most likely always stay."""
    x = _float(scores)
    order = np.argsort(x, axis=-1, kind="stable")  # ascending
    cum = np.cumsum(softmax(np.take_along_axis(x, order, -1)), -1)
    remove = cum <= 1 - p
    remove[:, max(0, x.shape[-1] - min_tokens_to_keep) :] = False
    return np.where(_scatter_rows(remove, order), NEG_INF, x).astype(x.dtype, copy=False)


def min_p(scores: np.ndarray, p: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`MinPLogitsWarper`: drop tokens less likely than `p` times the most likely one."""
    x = _float(scores)
    probs = softmax(x)
    remove = probs < p * probs.max(-1, keepdims=True)
    k = min(min_tokens_to_keep, x.shape[-1])
    top = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    np.put_along_axis(remove, top, False, -1)
    return np.where(remove, NEG_INF, x).astype(x.dtype, copy=False)


def typical_p(scores: np.ndarray, mass: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`TypicalLogitsWarper`: keep the tokens whose surprisal is closest to the entropy, up to `mass`."""
    x = _float(scores)
    normalized = log_softmax(x)
    p = np.exp(normalized)
    with np.errstate(invalid="ignore"):  # -inf * 0 = nan, skipped by nansum as in transformers
        ent = -np.nansum(normalized * p, -1, keepdims=True)
    shifted = np.abs(-normalized - ent)
    order = np.argsort(shifted, axis=-1, kind="stable")
    sorted_shifted = np.take_along_axis(shifted, order, -1)
    cum = np.cumsum(softmax(np.take_along_axis(x, order, -1)), -1)
    last = np.minimum((cum < mass).sum(-1), x.shape[-1] - 1)
    remove = sorted_shifted > np.take_along_axis(sorted_shifted, last[:, None], -1)
    remove[:, :min_tokens_to_keep] = False
    return np.where(_scatter_rows(remove, order), NEG_INF, x).astype(x.dtype, copy=False)


def epsilon(scores: np.ndarray, cutoff: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`EpsilonLogitsWarper`: drop tokens with probability < `cutoff` (the `min_tokens_to_keep` best stay)."""
    x = _float(scores)
    k = min(min_tokens_to_keep, x.shape[-1])
    remove = (softmax(x) < cutoff) & (x < _kth_largest(x, k))
    return np.where(remove, NEG_INF, x).astype(x.dtype, copy=False)


def eta(scores: np.ndarray, cutoff: float, min_tokens_to_keep: int = 1) -> np.ndarray:
    """`EtaLogitsWarper`: drop tokens with probability < min(cutoff, sqrt(cutoff) * exp(-entropy))."""
    x = _float(scores)
    probs = softmax(x)
    # torch.distributions.Categorical's entropy: normalised logits clamped to the dtype's min, so 0 * -inf = 0
    logp = np.maximum(log_softmax(x), np.finfo(x.dtype).min)
    entropy = -(logp * probs).sum(-1, keepdims=True)
    threshold = np.minimum(cutoff, np.sqrt(cutoff) * np.exp(-entropy))
    k = min(min_tokens_to_keep, x.shape[-1])
    remove = (probs < threshold) & (x < _kth_largest(x, k))
    return np.where(remove, NEG_INF, x).astype(x.dtype, copy=False)


def renormalize(scores: np.ndarray) -> np.ndarray:
    """`LogitNormalization`: log_softmax, last."""
    return log_softmax(_float(scores))


# ----- all of them, in order


def apply_processors(
    scores: np.ndarray,
    input_ids: np.ndarray,
    settings: "GenerationSettings",
    custom: Sequence[Callable[[np.ndarray, np.ndarray], np.ndarray]] = (),
    *,
    ignore_lengths: np.ndarray | None = None,
) -> np.ndarray:
    """Run exactly `settings.processors`, in `PROCESSOR_ORDER` (transformers' `_get_logits_processor` list).

    Args:
        scores: (B, V) logits (greedy, sampling) or log-probabilities (beam search).
        input_ids: (B, L) the caller's prompt columns as given, then the generated ids (L = T + generated).
        settings: The resolved settings of the call.
        custom: The caller's processors, each `f(input_ids, scores) -> scores`, run at "custom".
        ignore_lengths: (B,) leading prompt columns the repetition penalty skips (`padding_lengths(mask)`).
    """
    s = settings
    x = _float(scores)
    ids = np.asarray(input_ids)
    k = s.min_tokens_to_keep
    for name in s.processors:
        if name == "repetition_penalty":
            x = repetition_penalty(x, ids, s.repetition_penalty, ignore_lengths)
        elif name == "no_repeat_ngram":
            x = no_repeat_ngram(x, ids, s.no_repeat_ngram_size)
        elif name == "bad_words":
            x = bad_words(x, ids, s.bad_words_ids, s.eos_token_id)
        elif name == "min_length":
            x = min_length(x, ids, s.prompt_length, s.min_new_tokens, s.eos_token_id)
        elif name == "forced_bos":
            x = forced_bos(x, ids, s.forced_bos_token_id)
        elif name == "forced_eos":
            x = forced_eos(x, ids, s.max_length, s.forced_eos_token_id)
        elif name == "remove_invalid":
            x = remove_invalid(x)
        elif name == "suppress_tokens":
            x = suppress_tokens(x, s.suppress_tokens)
        elif name == "begin_suppress_tokens":
            x = begin_suppress_tokens(
                x, ids, s.begin_suppress_tokens, begin_suppress_index(s.prompt_length, s.forced_bos_token_id)
            )
        elif name == "custom":
            for f in custom:
                x = _float(f(ids, x))
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
        else:  # pragma: no cover  (PROCESSOR_ORDER and this list change together)
            raise ValueError(f"Unknown logits processor. Received: {name!r}.")
    return x
