"""The logits processors of gpt2_core.generation in TensorFlow: one function per entry of `PROCESSOR_ORDER`.

Each is graph code that XLA compiles (fixed shapes; a threshold, penalty or id list is a tensor, so a new value does
not recompile; only `top_k`, `ngram_size` and `min_tokens_to_keep` are Python ints). They follow transformers v5's
processors (`transformers/generation/logits_process.py`) and give -inf to a removed token, as transformers does.

The token history is the decoding buffer `input_ids` (R, S) of `gpt2_tf.generation`: the prompt's bucket padding,
the caller's prompt, the generated tokens, then spare slots. A processor sees the columns `[begin, end)` only:
`begin` skips the bucket padding (the caller's own padding is seen, as in transformers), `end` is the column after
the last token; `cur_len = end - start` is transformers' `input_ids.shape[-1]`.

Shapes: R rows (batch x beams or return sequences), S buffer columns, V vocabulary.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

NEG_INF = float("-inf")


def token_mask(ids: tf.Tensor, vocab_size: int) -> tf.Tensor:
    """(R, L) ids, where `vocab_size` means "none", -> (R, V) bool: which tokens occur in each row."""
    R = ids.shape[0]
    segments = ids + (vocab_size + 1) * tf.range(R, dtype=ids.dtype)[:, None]  # (R, L): one segment per (row, id)
    segments = tf.reshape(segments, [-1])
    hits = tf.math.unsorted_segment_max(tf.ones_like(segments), segments, R * (vocab_size + 1))
    return tf.reshape(hits, (R, vocab_size + 1))[:, :vocab_size] > 0


def _fill(scores: tf.Tensor, remove: tf.Tensor) -> tf.Tensor:
    return tf.where(remove, tf.constant(NEG_INF, scores.dtype), scores)


def _unsort(sorted_values: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """Values in sorted order (R, V) back to vocabulary order (`order` from argsort)."""
    return tf.gather(sorted_values, tf.argsort(order, axis=-1, stable=True), batch_dims=1)


def _kth_largest(scores: tf.Tensor, k: int) -> tf.Tensor:
    return tf.math.top_k(scores, k=min(k, scores.shape[-1])).values[:, -1:]


def _columns(begin: Any, end: Any, S: int) -> tf.Tensor:
    """(R or 1, S) bool: the buffer columns a processor sees."""
    col = tf.range(S)[None, :]
    return (col >= tf.reshape(begin, (-1, 1))) & (col < end)


# -- every strategy ---------------------------------------------------------------------------------------------------


def repetition_penalty(scores: tf.Tensor, input_ids: tf.Tensor, begin: tf.Tensor, end: tf.Tensor, penalty: tf.Tensor) -> tf.Tensor:
    """Tokens in the history: score * penalty where negative, / penalty otherwise (transformers' sign rule).

    `begin` (R,) is per row: transformers v5 skips each row's left padding here (`prompt_ignore_length` from the
    attention mask), unlike the other processors."""
    V = scores.shape[-1]
    seen = token_mask(tf.where(_columns(begin, end, input_ids.shape[1]), input_ids, V), V)
    return tf.where(seen, tf.where(scores < 0, scores * penalty, scores / penalty), scores)


def no_repeat_ngram(scores: tf.Tensor, input_ids: tf.Tensor, begin: tf.Tensor, end: tf.Tensor, ngram_size: int) -> tf.Tensor:
    """Ban every token that would complete an n-gram already in the history (prompt included)."""
    n, V, S = ngram_size, scores.shape[-1], input_ids.shape[1]
    J = S - n + 1  # window starts
    windows = [input_ids[:, i : J + i] for i in range(n)]  # n x (R, J): token i of the window starting at each column
    matches = tf.ones_like(windows[0], tf.bool)
    for i in range(n - 1):  # the window's first n - 1 tokens equal the history's last n - 1 tokens
        prefix_i = tf.gather(input_ids, tf.maximum(end - (n - 1) + i, 0), axis=1)  # (R,)
        matches &= windows[i] == prefix_i[:, None]
    start = tf.range(J)[None, :]
    whole = (start >= tf.reshape(begin, (-1, 1))) & (start + n <= end)  # the window lies in the seen history
    return _fill(scores, token_mask(tf.where(matches & whole, windows[-1], V), V))


def bad_words(
    scores: tf.Tensor,
    input_ids: tf.Tensor,
    end: tf.Tensor,
    cur_len: tf.Tensor,
    single: tf.Tensor,
    prefixes: tf.Tensor,
    prefix_lengths: tf.Tensor,
    last_tokens: tf.Tensor,
) -> tf.Tensor:
    """transformers' NoBadWordsLogitsProcessor: single-token words (`single`, (V,) bool) are always banned; a longer
    word bans its last token when the history ends with its prefix.

    Args:
        prefixes: (W, L) the longer words' prefixes, right-aligned, -1 before them.
        prefix_lengths: (W,) their lengths (past any history for padding rows, so they never match).
        last_tokens: (W,) their last tokens.
    """
    V = scores.shape[-1]
    L = prefixes.shape[1]
    tail = tf.gather(input_ids, tf.maximum(end - L + tf.range(L), 0), axis=1)  # (R, L): the history's last L tokens
    agree = (tail[:, None, :] == prefixes[None]) | (prefixes[None] < 0)  # (R, W, L)
    matched = tf.reduce_all(agree, axis=-1) & (prefix_lengths[None, :] <= cur_len)  # (R, W)
    banned = token_mask(tf.where(matched, last_tokens[None, :], V), V) | single[None, :]
    return _fill(scores, banned)


def min_length(scores: tf.Tensor, new_tokens: tf.Tensor, min_new_tokens: tf.Tensor, eos_mask: tf.Tensor) -> tf.Tensor:
    """eos ids (`eos_mask`, (V,) bool) get -inf while fewer than `min_new_tokens` tokens were generated."""
    return _fill(scores, eos_mask[None, :] & (new_tokens < min_new_tokens))


def _force(scores: tf.Tensor, when: tf.Tensor, allowed: tf.Tensor) -> tf.Tensor:
    forced = tf.where(allowed[None, :], tf.zeros_like(scores), tf.constant(NEG_INF, scores.dtype))
    return tf.where(when, forced, scores)


def forced_bos(scores: tf.Tensor, cur_len: tf.Tensor, bos_mask: tf.Tensor) -> tf.Tensor:
    """At cur_len == 1 only `bos_mask`'s token is allowed (score 0, the rest -inf)."""
    return _force(scores, cur_len == 1, bos_mask)


def forced_eos(scores: tf.Tensor, cur_len: tf.Tensor, max_length: tf.Tensor, eos_mask: tf.Tensor) -> tf.Tensor:
    """At cur_len == max_length - 1 only the forced eos ids are allowed."""
    return _force(scores, cur_len == max_length - 1, eos_mask)


def remove_invalid(scores: tf.Tensor) -> tf.Tensor:
    """nan -> 0, +inf -> float32 max, -inf -> float32 min."""
    big = tf.constant(scores.dtype.max, scores.dtype)
    x = tf.where(tf.math.is_nan(scores), tf.zeros_like(scores), scores)
    x = tf.where(scores == float("inf"), big, x)
    return tf.where(scores == NEG_INF, -big, x)


def suppress_tokens(scores: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The tokens of `mask` ((V,) bool) get -inf."""
    return _fill(scores, mask[None, :])


def begin_suppress_tokens(scores: tf.Tensor, cur_len: tf.Tensor, begin_index: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """The tokens of `mask` get -inf at cur_len == begin_index (the first generated token)."""
    return _fill(scores, mask[None, :] & (cur_len == begin_index))


# -- sampling only ----------------------------------------------------------------------------------------------------


def temperature(scores: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    return scores / value


def top_k(scores: tf.Tensor, k: int, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Keep the `max(k, min_tokens_to_keep)` best (ties with the k-th kept)."""
    return _fill(scores, scores < _kth_largest(scores, max(k, min_tokens_to_keep)))


def top_p(scores: tf.Tensor, p: tf.Tensor, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Nucleus: drop the least likely tokens whose total probability is <= 1 - p (ascending sort, as transformers)."""
    order = tf.argsort(scores, axis=-1, direction="ASCENDING", stable=True)
    sorted_scores = tf.gather(scores, order, batch_dims=1)
    cumulative = tf.cumsum(tf.nn.softmax(sorted_scores, axis=-1), axis=-1)
    remove = cumulative <= 1 - p
    V = scores.shape[-1]
    remove &= tf.range(V)[None, :] < V - min_tokens_to_keep
    return _fill(scores, _unsort(remove, order))


def min_p(scores: tf.Tensor, p: tf.Tensor, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Drop tokens less likely than `p` times the most likely one."""
    probs = tf.nn.softmax(scores, axis=-1)
    remove = probs < p * tf.reduce_max(probs, axis=-1, keepdims=True)
    k = min(min_tokens_to_keep, scores.shape[-1])
    best = tf.math.top_k(probs, k=k).indices  # (R, k)
    keep = tf.reduce_any(tf.range(scores.shape[-1])[None, None, :] == best[:, :, None], axis=1)
    return _fill(scores, remove & ~keep)


def _nan_to_zero(x: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.math.is_nan(x), tf.zeros_like(x), x)


def typical_p(scores: tf.Tensor, mass: tf.Tensor, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Locally typical sampling: keep the tokens whose surprise is closest to the entropy, up to `mass`."""
    normalized = tf.nn.log_softmax(scores, axis=-1)
    p = tf.exp(normalized)
    ent = -tf.reduce_sum(_nan_to_zero(normalized * p), axis=-1, keepdims=True)
    shifted = tf.abs(-normalized - ent)
    order = tf.argsort(shifted, axis=-1, direction="ASCENDING", stable=True)
    sorted_shifted = tf.gather(shifted, order, batch_dims=1)
    sorted_logits = tf.gather(scores, order, batch_dims=1)
    cumulative = tf.cumsum(tf.nn.softmax(sorted_logits, axis=-1), axis=-1)
    V = scores.shape[-1]
    last = tf.minimum(tf.reduce_sum(tf.cast(cumulative < mass, tf.int32), axis=1), V - 1)  # (R,)
    remove = sorted_shifted > tf.gather(sorted_shifted, last[:, None], batch_dims=1)
    remove &= tf.range(V)[None, :] >= min_tokens_to_keep
    return _fill(scores, _unsort(remove, order))


def epsilon(scores: tf.Tensor, value: tf.Tensor, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Drop tokens of probability < epsilon (keeping the `min_tokens_to_keep` best)."""
    remove = tf.nn.softmax(scores, axis=-1) < value
    return _fill(scores, remove & (scores < _kth_largest(scores, min_tokens_to_keep)))


def eta(scores: tf.Tensor, value: tf.Tensor, min_tokens_to_keep: int = 1) -> tf.Tensor:
    """Drop tokens of probability < min(eta, sqrt(eta) * exp(-entropy))."""
    probs = tf.nn.softmax(scores, axis=-1)
    log_probs = tf.maximum(tf.nn.log_softmax(scores, axis=-1), scores.dtype.min)  # torch's Categorical.entropy
    entropy = -tf.reduce_sum(log_probs * probs, axis=-1, keepdims=True)
    threshold = tf.minimum(value, tf.sqrt(value) * tf.exp(-entropy))
    return _fill(scores, (probs < threshold) & (scores < _kth_largest(scores, min_tokens_to_keep)))


def renormalize(scores: tf.Tensor) -> tf.Tensor:
    """log_softmax, so the processed scores are log-probabilities again."""
    return tf.nn.log_softmax(scores, axis=-1)
