"""The logits processors in JAX, for gpt2_flax's compiled decode loop: `gpt2_core.logits_process` function for
function (same names, same rules: transformers v5's), written for fixed shapes and traced settings.

What differs from the NumPy reference is only how the ids so far are seen. Inside the compiled loop they live in a
fixed-shape token buffer (`History`): (B, L) columns, of which `[start, start + length)` are transformers'
`input_ids` (the caller's prompt columns as given, then the generated tokens); the columns before `start` are the
decoding plan's extra bucket padding and the columns after are not generated yet, so every rule masks by position
instead of slicing. `start` and `length` are traced, so one compiled program serves every prompt length of a bucket.

Numeric settings (penalties, p values, ids) are traced arrays; what changes the program's structure is static: which
processors run, `no_repeat_ngram_size`, the bad-word lengths and `min_tokens_to_keep`. Removed tokens get -inf, as in
transformers. Reference: transformers v5 `generation/logits_process.py`; `gpt2_core.logits_process`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -jnp.inf


class History(NamedTuple):
    """The ids so far inside the compiled loop.

    Args:
        ids: (B, L) int32 token buffer.
        start: First column of the caller's prompt (the plan's extra padding before it), int32 scalar.
        length: transformers' `input_ids.shape[-1]`: prompt columns + generated tokens, int32 scalar.
    """

    ids: jax.Array
    start: jax.Array
    length: jax.Array

    def valid(self) -> jax.Array:
        """(1, L) True on the columns transformers' `input_ids` holds."""
        pos = jnp.arange(self.ids.shape[1])[None, :]
        return (pos >= self.start) & (pos < self.start + self.length)

    def last(self, n: int) -> jax.Array:
        """(B, n) the last n ids (clamped at the buffer's start: callers check `length >= n`)."""
        begin = jnp.maximum(self.start + self.length - n, 0)
        return jax.lax.dynamic_slice_in_dim(self.ids, begin, n, axis=1)


def _vocab_mask(V: int, ids: jax.Array) -> jax.Array:
    """(V,) True at `ids` (ids outside 0..V-1 are ignored)."""
    return jnp.zeros((V + 1,), bool).at[jnp.where((ids >= 0) & (ids < V), ids, V)].set(True)[:V]


def _scatter_rows(sorted_flags: jax.Array, order: jax.Array) -> jax.Array:
    """Flags in sorted order -> flags in vocabulary order (`order` is the sorting permutation of each row)."""
    rows = jnp.arange(order.shape[0])[:, None]
    return jnp.zeros_like(sorted_flags).at[rows, order].set(sorted_flags)


def _kth_largest(scores: jax.Array, k: Any) -> jax.Array:
    """(B, 1): the k-th largest score of each row (k may be traced)."""
    desc = -jnp.sort(-scores, axis=-1)
    return jnp.take(desc, jnp.clip(k, 1, scores.shape[-1]) - 1, axis=-1)[:, None]


# ----- the processors of every strategy


def repetition_penalty(
    scores: jax.Array, history: History, penalty: jax.Array, ignore_lengths: jax.Array
) -> jax.Array:
    """`RepetitionPenaltyLogitsProcessor`: each distinct id seen (from prompt column `ignore_lengths[b]` on) is
    penalised once: `score * penalty` if negative, `score / penalty` otherwise."""
    B, V = scores.shape
    pos = jnp.arange(history.ids.shape[1])[None, :]
    seen_col = history.valid() & (pos >= history.start + ignore_lengths[:, None])
    cols = jnp.where(seen_col, jnp.clip(history.ids, 0, V), V)  # column V absorbs the rest
    seen = jnp.zeros((B, V + 1), bool).at[jnp.arange(B)[:, None], cols].set(True)[:, :V]
    penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, penalised, scores)


def no_repeat_ngram(scores: jax.Array, history: History, ngram_size: int) -> jax.Array:
    """`NoRepeatNGramLogitsProcessor`: ban every id that would repeat an n-gram of the ids (prompt included)."""
    B, V = scores.shape
    L, n = history.ids.shape[1], ngram_size
    if L < n:
        return scores
    W = L - n + 1
    windows = jnp.stack([history.ids[:, k : k + W] for k in range(n)], axis=-1)  # (B, W, n)
    w = jnp.arange(W)[None, :]
    inside = (w >= history.start) & (w + n <= history.start + history.length)  # complete windows only
    prefix = history.last(n - 1)  # (B, n - 1); empty for n = 1: every seen id is banned
    match = jnp.all(windows[..., :-1] == prefix[:, None, :], axis=-1) & inside & (history.length >= n)
    cols = jnp.where(match, jnp.clip(windows[..., -1], 0, V), V)
    banned = jnp.zeros((B, V + 1), bool).at[jnp.arange(B)[:, None], cols].set(True)[:, :V]
    return jnp.where(banned, NEG_INF, scores)


def bad_words(
    scores: jax.Array, history: History, single: jax.Array, groups: Sequence[tuple[jax.Array, jax.Array]]
) -> jax.Array:
    """`NoBadWordsLogitsProcessor`: -inf on the last token of each bad word whose other tokens end the ids.

    `single` (S,) are the one-token words (eos ids already dropped: `bad_word_groups`); `groups` hold, per prefix
    length P, the prefixes (G, P) and last tokens (G,) of the longer words."""
    B, V = scores.shape
    bias = jnp.where(_vocab_mask(V, single)[None, :], NEG_INF, jnp.zeros_like(scores))
    for prefixes, lasts in groups:
        P = prefixes.shape[1]
        match = jnp.all(history.last(P)[:, None, :] == prefixes[None], axis=-1) & (history.length >= P)  # (B, G)
        hit = jnp.zeros((B, V + 1), bool).at[jnp.arange(B)[:, None], jnp.where(match, lasts[None], V)].set(True)
        bias = jnp.where(hit[:, :V], NEG_INF, bias)
    return scores + bias  # added, not assigned, as transformers (SequenceBiasLogitsProcessor) does


def bad_word_groups(
    bad_words_ids: Sequence[Sequence[int]], eos_token_id: Sequence[int]
) -> tuple[np.ndarray, tuple[tuple[np.ndarray, np.ndarray], ...]]:
    """Host side: the one-token words (S,) and, per prefix length, (prefixes (G, P), last tokens (G,))."""
    words = [tuple(w) for w in bad_words_ids if not (len(w) == 1 and w[0] in tuple(eos_token_id))]
    single = np.asarray([w[0] for w in words if len(w) == 1], np.int32)
    by_length: dict[int, list[tuple[int, ...]]] = {}
    for w in words:
        if len(w) > 1:
            by_length.setdefault(len(w) - 1, []).append(w)
    groups = tuple(
        (np.asarray([w[:-1] for w in ws], np.int32), np.asarray([w[-1] for w in ws], np.int32))
        for _, ws in sorted(by_length.items())
    )
    return single, groups


def min_length(
    scores: jax.Array, history: History, prompt_length: jax.Array, min_new_tokens: jax.Array, eos_token_id: jax.Array
) -> jax.Array:
    """`MinNewTokensLengthLogitsProcessor` (and `MinLengthLogitsProcessor`): every eos id -inf while fewer than
    `min_new_tokens` tokens were generated."""
    on = (history.length - prompt_length) < min_new_tokens
    return jnp.where(on & _vocab_mask(scores.shape[1], eos_token_id)[None, :], NEG_INF, scores)


def _force(scores: jax.Array, ids: jax.Array, on: jax.Array) -> jax.Array:
    forced = jnp.where(_vocab_mask(scores.shape[1], ids)[None, :], 0.0, NEG_INF).astype(scores.dtype)
    return jnp.where(on, jnp.broadcast_to(forced, scores.shape), scores)


def forced_bos(scores: jax.Array, history: History, bos_token_id: jax.Array) -> jax.Array:
    """`ForcedBOSTokenLogitsProcessor`: when the ids hold one token, only `bos_token_id` (score 0) is allowed."""
    return _force(scores, jnp.reshape(bos_token_id, (1,)), history.length == 1)


def forced_eos(scores: jax.Array, history: History, max_length: jax.Array, eos_token_id: jax.Array) -> jax.Array:
    """`ForcedEOSTokenLogitsProcessor`: at length `max_length - 1` (the last step), only the eos ids (score 0)."""
    return _force(scores, eos_token_id, history.length == max_length - 1)


def remove_invalid(scores: jax.Array) -> jax.Array:
    """`InfNanRemoveLogitsProcessor`: nan -> 0, +inf -> the dtype's max, -inf -> its min."""
    info = jnp.finfo(scores.dtype)
    out = jnp.where(jnp.isnan(scores), 0.0, scores)
    out = jnp.where(scores == jnp.inf, info.max, out)
    return jnp.where(scores == -jnp.inf, info.min, out)


def suppress_tokens(scores: jax.Array, suppress: jax.Array) -> jax.Array:
    """`SuppressTokensLogitsProcessor`: -inf on these ids at every step."""
    return jnp.where(_vocab_mask(scores.shape[1], suppress)[None, :], NEG_INF, scores)


def begin_suppress_tokens(
    scores: jax.Array, history: History, suppress: jax.Array, begin_index: jax.Array
) -> jax.Array:
    """`SuppressTokensAtBeginLogitsProcessor`: -inf on these ids when the ids have length `begin_index`
    (`gpt2_core.logits_process.begin_suppress_index`)."""
    return jnp.where(history.length == begin_index, suppress_tokens(scores, suppress), scores)


# ----- the sampling warpers


def temperature(scores: jax.Array, value: jax.Array) -> jax.Array:
    """`TemperatureLogitsWarper`."""
    return scores / value


def top_k(scores: jax.Array, k: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`TopKLogitsWarper`: keep the scores >= the k-th largest (k at least `min_tokens_to_keep`)."""
    k = jnp.minimum(jnp.maximum(k, min_tokens_to_keep), scores.shape[-1])
    return jnp.where(scores < _kth_largest(scores, k), NEG_INF, scores)


def top_p(scores: jax.Array, threshold: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`TopPLogitsWarper`: in ascending order, drop the tokens whose cumulative probability is <= `threshold`
    (= float32(1 - top_p), computed on the host in float64 as transformers does); the `min_tokens_to_keep` most
    likely always stay."""
    V = scores.shape[-1]
    order = jnp.argsort(scores, axis=-1, stable=True)  # ascending
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, -1), axis=-1), axis=-1)
    remove = (cum <= threshold) & (jnp.arange(V) < V - min_tokens_to_keep)[None, :]
    return jnp.where(_scatter_rows(remove, order), NEG_INF, scores)


def min_p(scores: jax.Array, p: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`MinPLogitsWarper`: drop tokens less likely than `p` times the most likely one."""
    probs = jax.nn.softmax(scores, axis=-1)
    remove = probs < p * jnp.max(probs, axis=-1, keepdims=True)
    k = min(min_tokens_to_keep, scores.shape[-1])
    top = jax.lax.top_k(probs, k)[1]
    remove = remove.at[jnp.arange(scores.shape[0])[:, None], top].set(False)
    return jnp.where(remove, NEG_INF, scores)


def typical_p(scores: jax.Array, mass: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`TypicalLogitsWarper`: keep the tokens whose surprisal is closest to the entropy, up to `mass`."""
    V = scores.shape[-1]
    normalized = jax.nn.log_softmax(scores, axis=-1)
    p = jnp.exp(normalized)
    ent = -jnp.nansum(normalized * p, -1, keepdims=True)
    shifted = jnp.abs(-normalized - ent)
    order = jnp.argsort(shifted, axis=-1, stable=True)
    sorted_shifted = jnp.take_along_axis(shifted, order, -1)
    cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(scores, order, -1), axis=-1), axis=-1)
    last = jnp.minimum(jnp.sum(cum < mass, -1), V - 1)
    remove = sorted_shifted > jnp.take_along_axis(sorted_shifted, last[:, None], -1)
    remove = remove & (jnp.arange(V) >= min_tokens_to_keep)[None, :]
    return jnp.where(_scatter_rows(remove, order), NEG_INF, scores)


def epsilon(scores: jax.Array, cutoff: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`EpsilonLogitsWarper`: drop tokens with probability < `cutoff` (the `min_tokens_to_keep` best stay)."""
    k = min(min_tokens_to_keep, scores.shape[-1])
    remove = (jax.nn.softmax(scores, axis=-1) < cutoff) & (scores < _kth_largest(scores, k))
    return jnp.where(remove, NEG_INF, scores)


def eta(scores: jax.Array, cutoff: jax.Array, min_tokens_to_keep: int = 1) -> jax.Array:
    """`EtaLogitsWarper`: drop tokens with probability < min(cutoff, sqrt(cutoff) * exp(-entropy))."""
    probs = jax.nn.softmax(scores, axis=-1)
    # torch.distributions.Categorical's entropy: normalised logits clamped to the dtype's min, so 0 * -inf = 0
    logp = jnp.maximum(jax.nn.log_softmax(scores, axis=-1), jnp.finfo(scores.dtype).min)
    entropy = -jnp.sum(logp * probs, -1, keepdims=True)
    threshold = jnp.minimum(cutoff, jnp.sqrt(cutoff) * jnp.exp(-entropy))
    k = min(min_tokens_to_keep, scores.shape[-1])
    remove = (probs < threshold) & (scores < _kth_largest(scores, k))
    return jnp.where(remove, NEG_INF, scores)


def renormalize(scores: jax.Array) -> jax.Array:
    """`LogitNormalization`: log_softmax, last."""
    return jax.nn.log_softmax(scores, axis=-1)


# ----- the caller's processors, on the host


def _host_custom(custom: Sequence[Callable], ids: np.ndarray, start: Any, length: Any, scores: np.ndarray) -> np.ndarray:
    begin = int(start)
    ids = np.array(ids[:, begin : begin + int(length)])  # writable copies, as torch's tensors would be
    x = np.array(scores, np.float32)
    for f in custom:
        x = np.asarray(f(ids, x), np.float32)
    return x.astype(np.float32, copy=False)


def custom(scores: jax.Array, history: History, processors: Sequence[Callable]) -> jax.Array:
    """The caller's `logits_processor` list, each `f(input_ids, scores) -> scores` on NumPy arrays with
    transformers' shapes (input_ids (B, length)), called from the compiled loop with `jax.pure_callback`."""
    return jax.pure_callback(
        lambda ids, start, length, x: _host_custom(processors, ids, start, length, x),
        jax.ShapeDtypeStruct(scores.shape, jnp.float32),
        history.ids, history.start, history.length, scores,
    )


# ----- all of them, in order


def apply_processors(
    scores: jax.Array,
    history: History,
    processors: Sequence[str],
    values: dict[str, Any],
    *,
    min_tokens_to_keep: int = 1,
    no_repeat_ngram_size: int = 0,
    custom_processors: Sequence[Callable] = (),
) -> jax.Array:
    """Run exactly `processors` (a `GenerationSettings.processors` tuple, in `PROCESSOR_ORDER`) on (B, V) float32
    scores: logits (greedy, sampling) or log-probabilities (beam search). `values` holds the traced settings
    (`gpt2_flax.generation` builds it from the `GenerationSettings`)."""
    x = scores.astype(jnp.float32)
    v, k = values, min_tokens_to_keep
    for name in processors:
        if name == "repetition_penalty":
            x = repetition_penalty(x, history, v["repetition_penalty"], v["ignore_lengths"])
        elif name == "no_repeat_ngram":
            x = no_repeat_ngram(x, history, no_repeat_ngram_size)
        elif name == "bad_words":
            x = bad_words(x, history, v["bad_single"], v["bad_groups"])
        elif name == "min_length":
            x = min_length(x, history, v["prompt_length"], v["min_new_tokens"], v["eos"])
        elif name == "forced_bos":
            x = forced_bos(x, history, v["forced_bos"])
        elif name == "forced_eos":
            x = forced_eos(x, history, v["prompt_length"] + v["max_new_tokens"], v["forced_eos"])
        elif name == "remove_invalid":
            x = remove_invalid(x)
        elif name == "suppress_tokens":
            x = suppress_tokens(x, v["suppress"])
        elif name == "begin_suppress_tokens":
            x = begin_suppress_tokens(x, history, v["begin_suppress"], v["begin_index"])
        elif name == "custom":
            x = custom(x, history, custom_processors)
        elif name == "temperature":
            x = temperature(x, v["temperature"])
        elif name == "top_k":
            x = top_k(x, v["top_k"], k)
        elif name == "top_p":
            x = top_p(x, v["top_p_threshold"], k)
        elif name == "min_p":
            x = min_p(x, v["min_p"], k)
        elif name == "typical_p":
            x = typical_p(x, v["typical_p"], k)
        elif name == "epsilon":
            x = epsilon(x, v["epsilon"], k)
        elif name == "eta":
            x = eta(x, v["eta"], k)
        elif name == "renormalize":
            x = renormalize(x)
        else:  # pragma: no cover - PROCESSOR_ORDER and this list are kept equal
            raise ValueError(f"Unknown logits processor. Received: {name!r}. See gpt2_core.generation.PROCESSOR_ORDER.")
    return x
