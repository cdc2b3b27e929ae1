"""XLA-compiled cached decoding for gpt2_tf: prefill and the whole decode loop in one `tf.function(jit_compile=True)`.

* Strategies: greedy, sampling, beam search and beam sampling, `num_return_sequences`, and every logits processor
  of gpt2_core.generation (`gpt2_tf.logits_process`, in `PROCESSOR_ORDER`), with transformers v5's semantics: the
  same tokens as transformers (PyTorch) on the same weights for greedy decoding and beam search. Beam search is
  transformers' vectorized `_beam_search` (fixed shapes: top `max(2, 1 + len(eos)) * num_beams` continuations, the
  `num_beams` best finished hypotheses, the early-stop heuristic), the cache reordered by beam (`KVCache.reorder`).
* The shapes follow `gpt2_core.generation.plan_decoding` (the one decoding plan of every backend): the prompt is
  left-padded to its bucket and the `gpt2_tf.cache.KVCache` preallocated for the prompt bucket plus the new-token
  bucket (`pad_prompt`), within `n_positions`. The attention mask covers the whole buffer (new slots hidden
  causally until written), so it is loop-invariant. The token history the processors read is one (R, S_max) buffer
  (the prompt bucket, then the generated tokens); a processor sees its columns from `start` (the bucket's extra
  padding) on, so it sees the caller's own padding but never the plan's.
* One compiled pair (begin, resume) per static key (`_Static`: strategy, num_beams, which processors are on, top_k,
  no_repeat_ngram_size, min_tokens_to_keep, the number of eos ids for beam search, the output switches), traced
  per bucketed shape. Every numeric setting (lengths, penalties, p values, eos / pad / forced ids as masks, the
  bad words as padded arrays, the seed) is a tensor: a new value does not recompile (`trace_count`).
* Chunks: `begin` runs the prefill and steps up to `until`, `resume` continues from the returned loop state (cache,
  token buffer, done flags, step, beam state). Without a streamer or stop strings one `begin` call runs the whole
  loop; with them the loop returns every `CHUNK_STEPS` steps, the host streams the new tokens and matches
  `stop_strings` (`StopStringMatcher`), and `resume` goes on (compiled once, not per chunk).
* Every shape inside the loop is static (position ids are `length + arange(T)`, tokens are written with a
  one-column `where`): a dynamic size makes XLA pad each step to the buffer length and, in TF 2.21, mis-compile the
  cache update. Sampling draws Gumbel noise from a stateless RNG keyed by (seed, step), so a seed reproduces a
  draw exactly (random streams differ from torch's); beam sampling draws without replacement by Gumbel top-k.
* `decode_loop` / `TFGPT2TextGenerator`: the SavedModel export (dynamic batch, greedy or sampling with
  temperature / top-k / top-p), kept on its own simpler loop.

References: gpt2_core.generation; transformers `generation/utils.py` (`_sample`, `_beam_search`) and
`logits_process.py`; keras-hub `GPT2CausalLM.generate_step` (one cache tensor updated at an index); Flax
`examples/gemma` sampler.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from gpt2_core import checks
from gpt2_core.generation import (
    CHUNK_STEPS,
    PROMPT_PAD_ID,
    DecodingPlan,
    GenerationConfig,
    GenerationSettings,
    StopStringMatcher,
    check_stop_strings,
    infer_attention_mask,
    make_generation_config,
    pad_prompt,
    plan_decoding,
    resolve_generation,
)
from gpt2_core.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from gpt2_tf import logits_process as lp
from gpt2_tf.cache import KVCache

logger = logging.getLogger(__name__)

# Graph code here and in the model uses Python control flow on static values only (tf.while_loop / tf.cond where
# a tensor decides), so AutoGraph's conversion is skipped: it only costs tracing time.
_AUTOGRAPH = False

# model -> {_Static: (begin, resume) tf.functions}
_COMPILED: "weakref.WeakKeyDictionary[Any, dict[Any, tuple[Any, Any]]]" = weakref.WeakKeyDictionary()


def process_logits(
    logits: tf.Tensor, temperature: Any = 1.0, top_k: int | None = None, top_p: Any = None
) -> tf.Tensor:
    """gpt2_core.generation.process_logits in TF: temperature, top-k, top-p on (B, V) logits, in float32.

    `top_k` is static (a Python int); `temperature` and `top_p` may be tensors. Removed tokens get finfo.min.
    """
    x = tf.cast(logits, tf.float32) / tf.cast(temperature, tf.float32)
    fill = tf.constant(tf.float32.min, tf.float32)
    if top_k is not None and top_k < x.shape[-1]:
        kth = tf.math.top_k(x, k=top_k).values[:, -1:]
        x = tf.where(x < kth, fill, x)
    if top_p is not None:
        order = tf.argsort(x, axis=-1, direction="DESCENDING", stable=True)
        sorted_x = tf.gather(x, order, batch_dims=1)
        probs = tf.nn.softmax(sorted_x, axis=-1)
        # keep a token if the mass before it is still below top_p (so the first token is always kept)
        keep_sorted = (tf.cumsum(probs, axis=-1) - probs) < tf.cast(top_p, tf.float32)
        keep = tf.gather(keep_sorted, tf.argsort(order, axis=-1, stable=True), batch_dims=1)
        x = tf.where(keep, x, fill)
    return x


def first_argmax(x: tf.Tensor) -> tf.Tensor:
    """(B, V) -> (B,) int32 index of the first maximum (gpt2_core.generation: greedy picks the first maximum)."""
    V = tf.shape(x)[-1]
    best = tf.reduce_max(x, axis=-1, keepdims=True)
    return tf.reduce_min(tf.where(x == best, tf.range(V)[None, :], V), axis=-1)


def _pick(logits, step, seed, temperature, top_p, *, do_sample: bool, top_k: int | None, use_top_p: bool):
    if not do_sample:
        return first_argmax(logits)
    x = process_logits(logits, temperature, top_k, top_p if use_top_p else None)
    # Gumbel-max: argmax(x + Gumbel noise) is a draw from softmax(x); removed tokens stay at finfo.min.
    u = tf.random.stateless_uniform(
        tf.shape(x), seed=tf.stack([seed[0], seed[1] + step]), minval=np.finfo(np.float32).tiny, maxval=1.0
    )
    return first_argmax(x - tf.math.log(-tf.math.log(u)))


def decode_loop(
    model,
    input_ids: tf.Tensor,
    attention_mask: tf.Tensor,
    max_new_tokens: tf.Tensor,
    temperature: tf.Tensor,
    top_p: tf.Tensor,
    eos_token_id: tf.Tensor,
    pad_token_id: tf.Tensor,
    seed: tf.Tensor,
    *,
    do_sample: bool = False,
    top_k: int | None = None,
    use_top_p: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Prefill + decode loop (graph code: run it inside `tf.function(jit_compile=True)`).

    Args:
        model: A TFGPT2LMHeadModel.
        input_ids: (B, Tb) int32 prompts, left-padded (`gpt2_core.generation.pad_prompt`).
        attention_mask: (B, S_max) int32, the whole KVCache buffer: the prompt's mask, then 1 for the Nb new slots.
        max_new_tokens: Scalar int32, at most Nb = S_max - Tb.
        temperature, top_p: Scalar float32 (used when sampling).
        eos_token_id: (E,) int32 ids that finish a row (pass [-1] for none).
        pad_token_id: Scalar int32 written after a row finished.
        seed: (2,) int32 seed of the stateless sampler.

    Returns:
        tokens (B, Nb) int32, of which the first `n` columns are the generated ones, and `n`.
    """
    config = model.config
    B, Tb = tf.shape(input_ids)[0], input_ids.shape[1]
    S = attention_mask.shape[1]  # S_max: the prompt bucket + every fed-back token
    if Tb is None or S is None or S <= Tb:
        raise ValueError(
            "decode_loop needs static prompt and buffer lengths, the buffer longer than the prompt. Received: "
            f"input_ids.shape={input_ids.shape}, attention_mask.shape={attention_mask.shape}. Pass the ids and "
            "mask of gpt2_core.generation.pad_prompt (trace with concrete shapes)."
        )
    Nb = S - Tb  # static: the size of the generated-token buffer
    cache = KVCache.init(config, B, S, dtype=model.transformer.compute_dtype)
    pick = lambda logits, step: _pick(  # noqa: E731
        logits, step, seed, temperature, top_p, do_sample=do_sample, top_k=top_k, use_top_p=use_top_p
    )
    is_eos = lambda t: tf.reduce_any(t[:, None] == eos_token_id[None, :], axis=-1)  # noqa: E731

    out = model.transformer(input_ids=input_ids, past_key_values=cache, attention_mask=attention_mask)
    logits = model.lm_logits(out.last_hidden_state[:, -1, :])  # (B, V): only the last position is needed
    nxt = pick(logits, 0)
    tokens = tf.zeros((Nb, B), tf.int32)  # step-major, so a step writes one row
    tokens = tf.tensor_scatter_nd_update(tokens, [[0]], nxt[None, :])
    done = is_eos(nxt)

    def cond(step, nxt, done, tokens, cache):
        return tf.logical_and(step < max_new_tokens, tf.logical_not(tf.reduce_all(done)))

    def body(step, nxt, done, tokens, cache):
        # the token fed back now is written at the cache's filled length, Tb + step - 1
        out = model.transformer(input_ids=nxt[:, None], past_key_values=cache, attention_mask=attention_mask)
        logits = model.lm_logits(out.last_hidden_state[:, 0, :])
        nxt = tf.where(done, pad_token_id, pick(logits, step))
        tokens = tf.tensor_scatter_nd_update(tokens, [[step]], nxt[None, :])
        return step + 1, nxt, done | is_eos(nxt), tokens, out.past_key_values

    state = (tf.constant(1), nxt, done, tokens, out.past_key_values)
    step, _, _, tokens, _ = tf.while_loop(cond, body, state, maximum_iterations=Nb - 1)
    return tf.transpose(tokens), step


def _pad_ids(ids: Sequence[int]) -> list[int]:
    # -1 (never produced) pads the eos list to a power of two >= 4, so one more eos id does not retrace
    n = max(4, 1 << max(len(ids) - 1, 0).bit_length())
    return list(ids) + [-1] * (n - len(ids))


def _generation_tensors(gen: GenerationConfig) -> dict[str, tf.Tensor]:
    seed = gen.seed if gen.seed is not None else int(np.random.randint(0, 2**31 - 1))
    return dict(
        max_new_tokens=tf.constant(gen.max_new_tokens, tf.int32),
        temperature=tf.constant(gen.temperature, tf.float32),
        top_p=tf.constant(gen.top_p if gen.top_p is not None else 1.0, tf.float32),
        eos_token_id=tf.constant(_pad_ids(gen.eos_token_id), tf.int32),
        pad_token_id=tf.constant(gen.pad_token_id, tf.int32),
        seed=tf.constant([seed % (2**31 - 1), 0], tf.int32),
    )


# -- generate: greedy, sampling and beam search in one compiled loop -------------------------------------------------


@dataclass(frozen=True)
class _Static:
    """What a compiled loop is specialised on (the key of `_COMPILED`); every other setting is a tensor."""

    strategy: str  # "greedy", "sample" or "beam"
    num_beams: int
    processors: tuple[str, ...]
    top_k: int | None
    no_repeat_ngram_size: int
    min_tokens_to_keep: int
    beams_to_keep: int  # beam search: max(2, 1 + len(eos)) * num_beams candidates per prompt
    do_sample: bool
    keep_scores: bool
    keep_logits: bool
    custom: tuple[Any, ...]  # the caller's logits processors (callables), traced into the loop


def _static(settings: GenerationSettings, custom: Sequence[Any]) -> _Static:
    beam = settings.num_beams > 1
    return _Static(
        strategy="beam" if beam else "sample" if settings.do_sample else "greedy",
        num_beams=settings.num_beams,
        processors=settings.processors,
        top_k=settings.top_k if "top_k" in settings.processors else None,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
        min_tokens_to_keep=settings.min_tokens_to_keep,
        beams_to_keep=max(2, 1 + len(settings.eos_token_id)) * settings.num_beams if beam else 0,
        do_sample=settings.do_sample,
        keep_scores=settings.return_dict_in_generate and settings.output_scores,
        keep_logits=settings.return_dict_in_generate and settings.output_logits,
        custom=tuple(custom),
    )


def _vocab_mask(ids: Sequence[int], V: int) -> np.ndarray:
    mask = np.zeros(V, bool)
    mask[[i for i in ids if 0 <= i < V]] = True  # an eos id past the vocabulary never fires
    return mask


def _bad_word_tensors(settings: GenerationSettings, V: int) -> dict[str, np.ndarray]:
    """transformers' NoBadWordsLogitsProcessor as arrays: single-token words as a (V,) mask (an eos id alone is
    not banned), longer ones as right-aligned prefixes (W, L), padded to powers of two (fewer shapes to trace)."""
    eos = set(settings.eos_token_id)
    words = [w for w in dict.fromkeys(settings.bad_words_ids) if not (len(w) == 1 and w[0] in eos)]
    single = _vocab_mask([w[0] for w in words if len(w) == 1], V)
    longer = [w for w in words if len(w) > 1]
    W = 1 << max(len(longer) - 1, 0).bit_length()
    L = 1 << max(max((len(w) - 1 for w in longer), default=1) - 1, 0).bit_length()
    prefixes = np.full((W, L), -1, np.int32)
    lengths = np.full(W, np.iinfo(np.int32).max, np.int32)  # padding words never match
    last = np.zeros(W, np.int32)
    for i, w in enumerate(longer):
        prefixes[i, L - len(w) + 1 :] = w[:-1]
        lengths[i], last[i] = len(w) - 1, w[-1]
    return dict(bad_single=single, bad_prefixes=prefixes, bad_lengths=lengths, bad_last=last)


def _loop_tensors(settings: GenerationSettings, plan: DecodingPlan, mask: np.ndarray, V: int, seed: Any) -> dict[str, tf.Tensor]:
    """The numeric settings of one call as tensors (a new value never recompiles). `mask` (R, T) is the caller's
    attention mask, expanded to the loop's rows."""
    T, start = settings.prompt_length, plan.extra_padding
    if seed is None:
        seed = (int(np.random.randint(0, 2**31 - 1)), 0)
    bos = () if settings.forced_bos_token_id is None else (settings.forced_bos_token_id,)
    begin_index = T + 1 if T == 1 and settings.forced_bos_token_id is not None else T
    arrays = dict(
        prompt_length=np.int32(T),
        max_new_tokens=np.int32(settings.max_new_tokens),
        min_new_tokens=np.int32(settings.min_new_tokens),
        start=np.int32(start),
        # transformers v5 skips each row's left padding in the repetition penalty (mask.argmax: its first token)
        penalty_begin=(start + np.argmax(mask != 0, axis=1)).astype(np.int32),
        pad_token_id=np.int32(settings.pad_token_id),
        eos_token_id=np.asarray(_pad_ids(settings.eos_token_id), np.int32),
        eos_mask=_vocab_mask(settings.eos_token_id, V),
        seed=(np.asarray(seed, np.int64) % (2**31 - 1)).astype(np.int32),
        repetition_penalty=np.float32(settings.repetition_penalty or 1.0),
        forced_bos_mask=_vocab_mask(bos, V),
        forced_eos_mask=_vocab_mask(settings.forced_eos_token_id, V),
        suppress_mask=_vocab_mask(settings.suppress_tokens, V),
        begin_suppress_mask=_vocab_mask(settings.begin_suppress_tokens, V),
        begin_index=np.int32(begin_index),
        temperature=np.float32(settings.temperature),
        top_p=np.float32(settings.top_p or 1.0),
        min_p=np.float32(settings.min_p or 0.0),
        typical_p=np.float32(settings.typical_p or 1.0),
        epsilon=np.float32(settings.epsilon_cutoff or 0.0),
        eta=np.float32(settings.eta_cutoff or 0.0),
        length_penalty=np.float32(settings.length_penalty),
        early_stopping_true=np.bool_(settings.early_stopping is True),
        early_stopping_never=np.bool_(settings.early_stopping == "never"),
        **_bad_word_tensors(settings, V),
    )
    return {k: tf.constant(v) for k, v in arrays.items()}


def _process(static: _Static, p: dict[str, tf.Tensor], input_ids: tf.Tensor, end: tf.Tensor, step: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """The active processors in PROCESSOR_ORDER on (R, V) float32 scores; `input_ids` (R, S) the history, `end` the
    column after its last token, `step` the tokens generated so far."""
    cur_len = p["prompt_length"] + step
    m = static.min_tokens_to_keep
    apply = {
        "repetition_penalty": lambda x: lp.repetition_penalty(x, input_ids, p["penalty_begin"], end, p["repetition_penalty"]),
        "no_repeat_ngram": lambda x: lp.no_repeat_ngram(x, input_ids, p["start"], end, static.no_repeat_ngram_size),
        "bad_words": lambda x: lp.bad_words(
            x, input_ids, end, cur_len, p["bad_single"], p["bad_prefixes"], p["bad_lengths"], p["bad_last"]
        ),
        "min_length": lambda x: lp.min_length(x, step, p["min_new_tokens"], p["eos_mask"]),
        "forced_bos": lambda x: lp.forced_bos(x, cur_len, p["forced_bos_mask"]),
        "forced_eos": lambda x: lp.forced_eos(x, cur_len, p["prompt_length"] + p["max_new_tokens"], p["forced_eos_mask"]),
        "remove_invalid": lp.remove_invalid,
        "suppress_tokens": lambda x: lp.suppress_tokens(x, p["suppress_mask"]),
        "begin_suppress_tokens": lambda x: lp.begin_suppress_tokens(x, cur_len, p["begin_index"], p["begin_suppress_mask"]),
        "custom": lambda x: _custom(static.custom, input_ids, x),
        "temperature": lambda x: lp.temperature(x, p["temperature"]),
        "top_k": lambda x: lp.top_k(x, static.top_k, m),
        "top_p": lambda x: lp.top_p(x, p["top_p"], m),
        "min_p": lambda x: lp.min_p(x, p["min_p"], m),
        "typical_p": lambda x: lp.typical_p(x, p["typical_p"], m),
        "epsilon": lambda x: lp.epsilon(x, p["epsilon"], m),
        "eta": lambda x: lp.eta(x, p["eta"], m),
        "renormalize": lp.renormalize,
    }
    for name in static.processors:
        scores = apply[name](scores)
    return scores


def _custom(processors: Sequence[Any], input_ids: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    for fn in processors:
        scores = fn(input_ids, scores)
    return scores


def _gumbel(shape: Any, seed: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Gumbel noise keyed by (seed, step): argmax(scores + noise) draws from softmax(scores); its top k draw k
    tokens without replacement."""
    u = tf.random.stateless_uniform(
        shape, seed=tf.stack([seed[0], seed[1] + step]), minval=np.finfo(np.float32).tiny, maxval=1.0
    )
    return -tf.math.log(-tf.math.log(u))


def _write_column(buffer: tf.Tensor, column: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
    """`buffer` (..., S) with `values` (...) at `column` (a tensor)."""
    return tf.where(tf.range(buffer.shape[-1]) == column, values[..., None], buffer)


def _keep_step(state: dict[str, Any], name: str, step: tf.Tensor, values: tf.Tensor) -> None:
    if name in state:
        state[name] = tf.tensor_scatter_nd_update(state[name], [[step]], values[None])


def _forward(model, cache: KVCache, tokens: tf.Tensor, attention_mask: tf.Tensor) -> tuple[tf.Tensor, KVCache]:
    """One step: `tokens` (R,) fed back -> (R, V) float32 logits and the advanced cache."""
    out = model.transformer(input_ids=tokens[:, None], past_key_values=cache, attention_mask=attention_mask)
    return tf.cast(model.lm_logits(out.last_hidden_state[:, 0, :]), tf.float32), out.past_key_values


def _select_token(static: _Static, p: dict[str, tf.Tensor], state: dict[str, Any], logits: tf.Tensor) -> dict[str, Any]:
    """Greedy / sampling: process, pick, write the token (pad after the row finished), update `done`."""
    state = dict(state)
    step, seq, done = state["step"], state["seq"], state["done"]
    end = p["start"] + p["prompt_length"] + step
    scores = _process(static, p, seq, end, step, logits)
    if static.do_sample:
        scores_for_pick = scores + _gumbel(tf.shape(scores), p["seed"], step)
    else:
        scores_for_pick = scores
    nxt = tf.where(done, p["pad_token_id"], first_argmax(scores_for_pick))
    state["seq"] = _write_column(seq, end, nxt)
    state["done"] = done | tf.reduce_any(nxt[:, None] == p["eos_token_id"][None, :], axis=-1)
    _keep_step(state, "scores", step, scores)
    _keep_step(state, "logits", step, logits)
    state["step"] = step + 1
    return state


def _select_beams(static: _Static, p: dict[str, tf.Tensor], state: dict[str, Any], logits: tf.Tensor) -> dict[str, Any]:
    """One step of transformers v5's vectorized beam search (`GenerationMixin._beam_search`, steps b-g)."""
    state = dict(state)
    K, K2 = static.num_beams, static.beams_to_keep
    seq = state["seq"]  # (B, K, S) running sequences
    B, S = seq.shape[0], seq.shape[2]
    V = logits.shape[-1]
    step = state["step"]
    end = p["start"] + p["prompt_length"] + step  # the column the new token goes to
    flat_seq = tf.reshape(seq, (B * K, S))
    log_probs = _process(static, p, flat_seq, end, step, tf.nn.log_softmax(logits, axis=-1))  # (B*K, V)
    _keep_step(state, "scores", step, log_probs)
    _keep_step(state, "logits", step, logits)
    accumulated = tf.reshape(log_probs, (B, K, V)) + state["running_scores"][:, :, None]
    accumulated = tf.reshape(accumulated, (B, K * V))

    # c. the top K2 continuations (beam sampling: K2 draws without replacement, sorted by score)
    if static.do_sample:
        noisy = accumulated + _gumbel(tf.shape(accumulated), p["seed"], step)
        topk_indices = tf.math.top_k(noisy, k=K2).indices
        topk_log_probs = tf.gather(accumulated, topk_indices, batch_dims=1)
        order = tf.argsort(topk_log_probs, axis=-1, direction="DESCENDING", stable=True)
        topk_log_probs = tf.gather(topk_log_probs, order, batch_dims=1)
        topk_indices = tf.gather(topk_indices, order, batch_dims=1)
    else:
        topk_log_probs, topk_indices = tf.math.top_k(accumulated, k=K2)
    topk_beams = topk_indices // V  # (B, K2)
    topk_ids = topk_indices % V
    topk_seq = _write_column(tf.gather(seq, topk_beams, batch_dims=1), end, topk_ids)  # (B, K2, S)
    flat_beams = topk_beams + K * tf.range(B)[:, None]  # beam indices with the batch offset: b * K + k
    topk_beam_indices = _write_column(tf.gather(state["running_beam_indices"], topk_beams, batch_dims=1), step, flat_beams)

    # d. which continuations hit a stopping criterion: an eos id, or the last step
    hits = tf.reduce_any(topk_ids[:, :, None] == p["eos_token_id"][None, None, :], axis=-1)
    hits |= step + 1 >= p["max_new_tokens"]  # (B, K2)

    # e. the best K that did not just finish keep running
    running_log_probs = topk_log_probs + tf.cast(hits, tf.float32) * -1.0e9
    next_indices = tf.math.top_k(running_log_probs, k=K).indices
    state["seq"] = tf.gather(topk_seq, next_indices, batch_dims=1)
    state["running_scores"] = tf.gather(running_log_probs, next_indices, batch_dims=1)
    state["running_beam_indices"] = tf.gather(topk_beam_indices, next_indices, batch_dims=1)

    # f. finished ones enter the K best hypotheses, with the length penalty
    lp = p["length_penalty"]
    top_num_beam_mask = tf.range(K2) < K
    did_finish = hits & top_num_beam_mask[None, :]
    length = tf.cast(step + 1, tf.float64) ** tf.cast(lp, tf.float64)
    finished_scores = topk_log_probs / tf.cast(length, tf.float32)
    finished = state["finished"]
    full = tf.reduce_all(finished, axis=-1, keepdims=True) & p["early_stopping_true"]
    finished_scores += tf.cast(full, tf.float32) * -1.0e9
    finished_scores += tf.cast(~state["unsatisfied"], tf.float32) * -1.0e9
    finished_scores += tf.cast(~did_finish, tf.float32) * -1.0e9
    merged_scores = tf.concat([state["best_scores"], finished_scores], axis=1)  # (B, K + K2)
    best = tf.math.top_k(merged_scores, k=K).indices
    state["best_seq"] = tf.gather(tf.concat([state["best_seq"], topk_seq], axis=1), best, batch_dims=1)
    state["best_scores"] = tf.gather(merged_scores, best, batch_dims=1)
    state["best_beam_indices"] = tf.gather(
        tf.concat([state["best_beam_indices"], topk_beam_indices], axis=1), best, batch_dims=1
    )
    finished = tf.gather(tf.concat([finished, did_finish], axis=1), best, batch_dims=1)
    state["finished"] = finished

    # g. reorder the cache by beam; can any running beam still improve the finished ones?
    beam_idx = tf.reshape(tf.gather(state["running_beam_indices"], step, axis=2), (B * K,))
    state["cache"] = state["cache"].reorder(beam_idx)
    step = step + 1
    state["step"] = step
    best_length = tf.where(p["early_stopping_never"] & (lp > 0.0), p["max_new_tokens"], step)
    best_possible = state["running_scores"][:, :1] / tf.cast(
        tf.cast(best_length, tf.float64) ** tf.cast(lp, tf.float64), tf.float32
    )
    worst_finished = tf.where(finished, tf.reduce_min(state["best_scores"], axis=1, keepdims=True), -1.0e9)
    unsatisfied = state["unsatisfied"] & tf.reduce_any(best_possible > worst_finished, axis=-1, keepdims=True)
    state["unsatisfied"] = unsatisfied
    running = tf.reduce_any(unsatisfied) & ~tf.reduce_all(hits)
    running &= ~(tf.reduce_all(finished) & p["early_stopping_true"])
    state["running"] = running
    return state


def _last_tokens(static: _Static, p: dict[str, tf.Tensor], state: dict[str, Any]) -> tf.Tensor:
    """(R,) the tokens written last, fed back next."""
    seq = state["seq"]
    if static.strategy == "beam":
        seq = tf.reshape(seq, (-1, seq.shape[-1]))
    return tf.gather(seq, p["start"] + p["prompt_length"] + state["step"] - 1, axis=1)


def _unfinished(static: _Static, state: dict[str, Any]) -> tf.Tensor:
    return state["running"] if static.strategy == "beam" else ~tf.reduce_all(state["done"])


def _decode(model, static: _Static, p: dict[str, tf.Tensor], attention_mask: tf.Tensor, state: dict[str, Any], until: tf.Tensor) -> dict[str, Any]:
    """Steps until `until` tokens were generated, `max_new_tokens` reached or every row finished (graph code).

    A step runs the model on the tokens written last, then picks the next ones from its logits (`_begin` makes the
    first pick, from the prefill's logits), so the body has no branch: with the forward inside a `tf.cond` (to skip
    it after the last pick) XLA copied every cache buffer into the branch each step."""
    select = _select_beams if static.strategy == "beam" else _select_token
    limit = tf.minimum(until, p["max_new_tokens"])

    def cond(state):
        return (state["step"] < limit) & _unfinished(static, state)

    def body(state):
        logits, cache = _forward(model, state["cache"], _last_tokens(static, p, state), attention_mask)
        return (select(static, p, dict(state, cache=cache), logits),)

    # at most S_max iterations (a static bound: fewer than the buffer's columns remain)
    (state,) = tf.while_loop(cond, body, (state,), maximum_iterations=attention_mask.shape[1])
    return state


def _begin(model, static: _Static, p: dict[str, tf.Tensor], input_ids: tf.Tensor, attention_mask: tf.Tensor, until: tf.Tensor, new_bucket: int) -> dict[str, Any]:
    """Prefill, the first token, then `_decode` (graph code). `input_ids` (R, Tb) rows already expanded."""
    config = model.config
    R, Tb = input_ids.shape
    S = attention_mask.shape[1]
    V = config.vocab_size
    cache = KVCache.init(config, R, S, dtype=model.transformer.compute_dtype)
    out = model.transformer(input_ids=input_ids, past_key_values=cache, attention_mask=attention_mask)
    logits = tf.cast(model.lm_logits(out.last_hidden_state[:, -1, :]), tf.float32)  # (R, V)
    state: dict[str, Any] = {"cache": out.past_key_values, "step": tf.constant(0)}
    if static.strategy == "beam":
        K = static.num_beams
        B = R // K
        fill = tf.where(tf.reduce_any(p["eos_token_id"] >= 0), _fill_value(p), -1)
        seq = tf.concat([input_ids, tf.fill((R, new_bucket), fill)], axis=1)  # (R, S)
        seq = tf.reshape(seq, (B, K, S))
        state.update(
            seq=seq,
            running_scores=tf.concat([tf.zeros((B, 1)), tf.fill((B, K - 1), -1.0e9)], axis=1),
            running_beam_indices=tf.fill((B, K, new_bucket), -1),
            best_seq=seq,
            best_scores=tf.fill((B, K), -1.0e9),
            best_beam_indices=tf.fill((B, K, new_bucket), -1),
            finished=tf.zeros((B, K), tf.bool),
            unsatisfied=tf.ones((B, 1), tf.bool),
            running=tf.constant(True),
        )
    else:
        state.update(
            seq=tf.concat([input_ids, tf.zeros((R, new_bucket), tf.int32)], axis=1), done=tf.zeros((R,), tf.bool)
        )
    if static.keep_scores:
        state["scores"] = tf.zeros((new_bucket, R, V))
    if static.keep_logits:
        state["logits"] = tf.zeros((new_bucket, R, V))
    # the first pick (max_new_tokens and `until` are >= 1), from the prefill's logits
    state = (_select_beams if static.strategy == "beam" else _select_token)(static, p, state, logits)
    return _decode(model, static, p, attention_mask, state, until)


def _fill_value(p: dict[str, tf.Tensor]) -> tf.Tensor:
    # transformers: `pad_token_id or eos_token_id[0]`: a pad id of 0 falls through to the first eos id
    return tf.where(p["pad_token_id"] != 0, p["pad_token_id"], p["eos_token_id"][0])


def _compiled(model, static: _Static) -> tuple[Any, Any]:
    """(begin, resume) compiled for `static`: traced once per bucketed shape."""
    fns = _COMPILED.setdefault(model, {})
    if static not in fns:

        def begin(input_ids, attention_mask, p, until):
            return _begin(model, static, p, input_ids, attention_mask, until, attention_mask.shape[1] - input_ids.shape[1])

        def resume(attention_mask, p, state, until):
            return _decode(model, static, p, attention_mask, state, until)

        fns[static] = (
            tf.function(begin, jit_compile=True, reduce_retracing=False, autograph=_AUTOGRAPH),
            tf.function(resume, jit_compile=True, reduce_retracing=False, autograph=_AUTOGRAPH),
        )
    return fns[static]


def trace_count(model) -> int:
    """How many times this model's generate functions were traced (and so compiled): for no-recompile tests."""
    return sum(fn.experimental_get_tracing_count() for pair in _COMPILED.get(model, {}).values() for fn in pair)


def _seed_pair(seed: Any) -> tuple[Any, tuple[int, int] | None]:
    """`seed` as (the field resolve_generation checks, the stateless pair): an int, or transformers 4.x TF's pair."""
    if seed is None or isinstance(seed, (int, np.integer)):
        return seed, None
    pair = np.asarray(seed).reshape(-1)
    if pair.size != 2 or pair.dtype.kind not in "iu":
        raise ValueError(
            f"seed must be an integer or a pair of integers. Received: seed={seed!r}. Pass e.g. seed=0 or seed=[1, 2]."
        )
    return None, (int(pair[0]), int(pair[1]))


def generate(
    model,
    input_ids: Any,
    attention_mask: Any = None,
    generation_config: GenerationConfig | None = None,
    *,
    logits_processor: Sequence[Any] | None = None,
    streamer: Any = None,
    tokenizer: Any = None,
    seed: Any = None,
    **fields: Any,
) -> Any:
    """Generate after `input_ids` (B, T): greedy, sampling, beam search or beam sampling, as transformers v5.

    Runs eagerly around one XLA-compiled loop (see the module docstring for the buckets, the static key and the
    chunks). Returns the (B * num_return_sequences, T + steps) ids, or with `return_dict_in_generate=True` a
    `GenerateDecoderOnlyOutput` / `GenerateBeamDecoderOnlyOutput` of tf tensors.

    Args:
        model: A TFGPT2LMHeadModel; its `generation_config` is the base of the settings.
        input_ids: Prompt ids (tensor, NumPy or list); a batch of different lengths is left-padded.
        attention_mask: (B, T) 1 for tokens, 0 for padding; None: inferred as transformers does (with a warning
            where it cannot tell padding from an eos id).
        generation_config: A GenerationConfig whose non-default fields override the model's.
        logits_processor: Callables `(input_ids, scores) -> scores` in TF, traced into the compiled loop after the
            built-in processors (transformers' place for them); `input_ids` is the (R, S_max) decoding buffer.
        streamer: transformers' protocol: `put` the prompt (B, T), then each step's tokens (NumPy), then `end()`.
        tokenizer: Needed by `stop_strings`.
        seed: Seeds the stateless sampler: an int, or a pair (transformers 4.x TF's `seed=[1, 2]`).
        **fields: GenerationConfig fields (`max_new_tokens`, `do_sample`, `num_beams`, `top_p`, ...).
    """
    if not hasattr(model, "lm_logits"):
        raise TypeError(f"generate needs a model with an LM head. Received: {type(model).__name__}.")
    if not tf.executing_eagerly():  # traced: `tf.function(model.generate, jit_compile=True)`, 4.x's XLA recipe
        return _generate_traced(
            model, input_ids, attention_mask, generation_config, logits_processor=logits_processor, streamer=streamer,
            seed=seed, **fields,
        )
    out_dtype = input_ids.dtype if tf.is_tensor(input_ids) else tf.int64
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must hold integer token ids. Received: input_ids.dtype={ids.dtype}.")
    B, T = ids.shape
    seed, pair = _seed_pair(seed)
    custom = tuple(logits_processor or ())
    settings = resolve_generation(
        model.config, T, generation_config, model_generation_config=getattr(model, "generation_config", None),
        has_custom_processors=bool(custom), seed=seed, **fields,
    )
    if pair is None and settings.seed is not None:
        pair = (settings.seed, 0)
    check_stop_strings(settings, tokenizer)
    if settings.num_beams > 1 and settings.stop_strings:
        raise ValueError(
            f"stop_strings are not implemented with beam search. Received: stop_strings="
            f"{list(settings.stop_strings)}, num_beams={settings.num_beams}. Use num_beams=1, or cut the text after."
        )
    if settings.num_beams > 1 and streamer is not None:
        raise ValueError(
            f"A streamer cannot be used with beam search (as in transformers). Received: num_beams="
            f"{settings.num_beams}, streamer={type(streamer).__name__}. Set num_beams=1 to stream."
        )
    if attention_mask is None:
        mask, warning = infer_attention_mask(ids, settings.pad_token_id, settings.eos_token_id)
        if warning:
            logger.warning(warning)
    else:
        mask = np.asarray(attention_mask)
        if mask.ndim == 1:
            mask = mask[None]
    checks.check_model_inputs(
        model.config, input_ids=ids, input_shape=ids.shape, inputs_embeds_shape=None, attention_mask_shape=mask.shape,
        position_ids=None, position_ids_shape=None, token_type_ids_shape=None, past_length=0,
    )
    plan = plan_decoding(model.config, B, T, settings.max_new_tokens)
    padded_ids, buffer_mask = pad_prompt(plan, ids, mask)  # (B, Tb), (B, S_max)
    expand = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
    # rows b * expand + j, as transformers' repeat_interleave
    padded_ids, buffer_mask = np.repeat(padded_ids, expand, 0), np.repeat(buffer_mask, expand, 0)
    static = _static(settings, custom)
    begin, resume = _compiled(model, static)
    p = _loop_tensors(settings, plan, np.repeat(mask, expand, 0), model.config.vocab_size, pair)
    ids_t, mask_t = tf.constant(padded_ids), tf.constant(buffer_mask)
    N = settings.max_new_tokens

    if streamer is None and not settings.stop_strings:
        state = begin(ids_t, mask_t, p, tf.constant(N, tf.int32))  # the whole loop in one call
        steps = int(state["step"])
    else:  # chunks of CHUNK_STEPS steps; the host streams and matches stop strings in between
        if streamer is not None:
            streamer.put(ids)
        matcher = StopStringMatcher(tokenizer, settings.stop_strings) if settings.stop_strings else None
        rows = np.repeat(ids, expand, 0)
        ended = np.full(len(rows), -1)  # per row: the step of its last token (eos or a stop string), -1: running
        sent = 0
        until = CHUNK_STEPS
        state = begin(ids_t, mask_t, p, tf.constant(until, tf.int32))
        while True:
            steps = int(state["step"])
            if matcher is not None:
                state, steps = _apply_stop_strings(state, settings, plan, rows, ended, matcher, sent, steps)
            if streamer is not None:
                seq = state["seq"].numpy()
                for t in range(sent, steps):
                    streamer.put(seq[:, plan.prompt_bucket + t])
            sent = steps
            if steps >= N or steps < until or bool(np.all(state["done"].numpy())) or bool(np.all(ended >= 0)):
                break
            until += CHUNK_STEPS
            state = resume(mask_t, p, state, tf.constant(until, tf.int32))
        if streamer is not None:
            streamer.end()
    return _outputs(state, settings, plan, ids, expand, steps, out_dtype)


def _generate_traced(
    model,
    input_ids: Any,
    attention_mask: Any,
    generation_config: GenerationConfig | None,
    *,
    logits_processor: Sequence[Any] | None,
    streamer: Any,
    seed: Any,
    **fields: Any,
) -> Any:
    """`generate` while a `tf.function` of the caller's is tracing it: the same plan and compiled loop (called
    from inside the caller's graph), with the host-side steps done in graph ops. Shapes must be static; the values
    cannot be checked or trimmed, so, as transformers 4.x's XLA generate, the result is `(B * num_return_sequences,
    T + max_new_tokens)` with `pad_token_id` after the last step (the same tokens as eager generate, padded)."""
    input_ids = tf.convert_to_tensor(input_ids)
    out_dtype = input_ids.dtype
    if input_ids.shape.rank == 1:
        input_ids = input_ids[None]
    if not input_ids.dtype.is_integer:
        raise TypeError(f"input_ids must hold integer token ids. Received: input_ids.dtype={input_ids.dtype.name}.")
    if input_ids.shape.rank != 2 or None in input_ids.shape.as_list():
        raise ValueError(
            "generate inside a tf.function needs input_ids of a static shape (batch, length). Received: "
            f"input_ids.shape={input_ids.shape}. Trace without an input_signature of unknown dims (tf.function "
            "traces each shape), or call generate eagerly."
        )
    if streamer is not None or fields.get("stop_strings"):
        raise ValueError(
            "A streamer and stop_strings need the host between decoding chunks, which a traced generate does not "
            f"have. Received: streamer={type(streamer).__name__}, stop_strings={fields.get('stop_strings')!r}. "
            "Call generate eagerly (it is compiled with XLA already)."
        )
    B, T = input_ids.shape.as_list()
    seed, pair = _seed_pair(seed)
    custom = tuple(logits_processor or ())
    settings = resolve_generation(
        model.config, T, generation_config, model_generation_config=getattr(model, "generation_config", None),
        has_custom_processors=bool(custom), seed=seed, **fields,
    )
    if pair is None and settings.seed is not None:
        pair = (settings.seed, 0)
    ids = tf.cast(input_ids, tf.int32)
    if attention_mask is None:
        # infer_attention_mask's rule in graph ops: `ids != pad` unless the pad id is also an eos id (or unset)
        pad = settings.pad_token_id
        if pad is None or pad in tuple(settings.eos_token_id):
            mask = tf.ones_like(ids)
        else:
            mask = tf.cast(ids != pad, tf.int32)
    else:
        mask = tf.cast(tf.convert_to_tensor(attention_mask), tf.int32)
        if mask.shape.rank == 1:
            mask = mask[None]
    checks.check_model_inputs(
        model.config, input_ids=None, input_shape=(B, T), inputs_embeds_shape=None,
        attention_mask_shape=tuple(mask.shape.as_list()), position_ids=None, position_ids_shape=None,
        token_type_ids_shape=None, past_length=0,
    )
    plan = plan_decoding(model.config, B, T, settings.max_new_tokens)
    # pad_prompt in graph ops: extra left padding (id PROMPT_PAD_ID, masked), then the new-token slots
    pad = plan.extra_padding
    padded_ids = tf.concat([tf.fill((B, pad), PROMPT_PAD_ID), ids], axis=1)  # (B, Tb)
    buffer_mask = tf.concat([tf.zeros((B, pad), tf.int32), mask, tf.ones((B, plan.new_bucket), tf.int32)], axis=1)
    expand = settings.num_beams if settings.num_beams > 1 else settings.num_return_sequences
    padded_ids, buffer_mask = tf.repeat(padded_ids, expand, 0), tf.repeat(buffer_mask, expand, 0)
    rows_mask = tf.repeat(mask, expand, 0)
    static = _static(settings, custom)
    begin, _ = _compiled(model, static)
    p = _loop_tensors(settings, plan, np.ones((B * expand, T), np.int32), model.config.vocab_size, pair)
    p["penalty_begin"] = plan.extra_padding + tf.cast(tf.argmax(rows_mask != 0, axis=1), tf.int32)
    N = settings.max_new_tokens
    state = begin(padded_ids, buffer_mask, p, tf.constant(N, tf.int32))
    Tb, start, nrs = plan.prompt_bucket, plan.extra_padding, settings.num_return_sequences
    if settings.num_beams > 1:
        # a hypothesis shorter than N is followed by the buffer's fill (the pad id), as eager generate's
        seq = tf.reshape(state["best_seq"][:, :nrs], (-1, plan.cache_length))
        sequences = seq[:, start : Tb + N]
    else:
        generated = state["seq"][:, Tb : Tb + N]
        # the steps the loop did not run (every row had finished): the pad id a finished row gets
        generated = tf.where(tf.range(N)[None, :] < state["step"], generated, p["pad_token_id"])
        sequences = tf.concat([tf.repeat(ids, expand, 0), generated], axis=1)
    sequences = tf.cast(sequences, out_dtype)
    if not settings.return_dict_in_generate:
        return sequences
    if settings.num_beams > 1:
        return GenerateBeamDecoderOnlyOutput(sequences=sequences)
    return GenerateDecoderOnlyOutput(sequences=sequences)


def _apply_stop_strings(state, settings: GenerationSettings, plan: DecodingPlan, rows: np.ndarray, ended: np.ndarray,
                        matcher: StopStringMatcher, checked: int, steps: int) -> tuple[dict[str, Any], int]:
    """Rows whose text completed a stop string in steps [checked, steps) finish after that token: with eos ids the
    tokens the loop made after it become pad_token_id and `done` is set (without, transformers leaves them). Returns
    the state and the steps the result keeps (up to the step after which every row had finished)."""
    seq, done = state["seq"].numpy(), state["done"].numpy()
    Tb, T = plan.prompt_bucket, settings.prompt_length
    eos = np.asarray(settings.eos_token_id, np.int64)
    for r in range(len(rows)):
        if ended[r] >= 0:
            continue
        generated = seq[r, Tb : Tb + steps]
        hit = np.flatnonzero(np.isin(generated, eos)) if eos.size else np.array([], np.int64)
        limit = int(hit[0]) + 1 if hit.size else steps  # the row's tokens (up to its eos)
        stop = matcher.first_stop(list(rows[r]) + generated[:limit].tolist(), T + checked)
        if stop is not None:
            ended[r] = stop - T
            if eos.size:  # transformers writes the pad id after a row's end only when there are eos ids
                seq[r, Tb + stop - T + 1 : Tb + steps] = settings.pad_token_id
                done[r] = True
        elif hit.size:
            ended[r] = int(hit[0])
    if np.all(ended >= 0):
        steps = min(steps, int(ended.max()) + 1)  # transformers stops at the step every row had finished
    return dict(state, seq=tf.constant(seq), done=tf.constant(done)), steps


def _outputs(state, settings: GenerationSettings, plan: DecodingPlan, ids: np.ndarray, expand: int, steps: int,
             out_dtype: Any) -> Any:
    """The trimmed sequences (and with return_dict_in_generate the output object) from the loop's state."""
    Tb, start, nrs = plan.prompt_bucket, plan.extra_padding, settings.num_return_sequences

    def per_step(name: str) -> tuple[tf.Tensor, ...] | None:
        return tuple(state[name][t] for t in range(steps)) if name in state else None

    if settings.num_beams > 1:
        seq = state["best_seq"].numpy()[:, :nrs].reshape(-1, plan.cache_length)
        beam_indices = state["best_beam_indices"].numpy()[:, :nrs].reshape(-1, plan.new_bucket)
        length = int((beam_indices != -1).sum(1).max())
        sequences = tf.constant(seq[:, start : Tb + length], out_dtype)
        if not settings.return_dict_in_generate:
            return sequences
        scores = state["best_scores"][:, :nrs]
        return GenerateBeamDecoderOnlyOutput(
            sequences=sequences,
            sequences_scores=tf.reshape(scores, (-1,)) if settings.output_scores else None,
            scores=per_step("scores"),
            logits=per_step("logits"),
            beam_indices=tf.constant(beam_indices[:, :length]),
        )
    generated = state["seq"][:, Tb : Tb + steps]
    sequences = tf.concat([tf.constant(np.repeat(ids, expand, 0), out_dtype), tf.cast(generated, out_dtype)], axis=1)
    if not settings.return_dict_in_generate:
        return sequences
    return GenerateDecoderOnlyOutput(sequences=sequences, scores=per_step("scores"), logits=per_step("logits"))


class TFGPT2TextGenerator(tf.Module):
    """A SavedModel-ready module: text in, token ids and generated text out, tokenizer and XLA decoding inside.

    `tf.saved_model.save(TFGPT2TextGenerator(model, tokenizer), path)` writes a SavedModel whose `serving_default`
    signature takes a batch of strings; `tf.saved_model.load(path).generate(tf.constant(["ROMEO:"]))` works in a
    process without this library. Prompts are left-padded (or left-truncated) to `prompt_length` tokens.

    Args:
        model: A TFGPT2LMHeadModel.
        tokenizer: A `gpt2_tf.tokenizer.TFGPT2Tokenizer`, or None for the shipped GPT-2 vocabulary.
        prompt_length: The fixed prompt length (tokens) of the signature.
        max_new_tokens, do_sample, temperature, top_k, top_p, eos_token_id, pad_token_id, seed: As in `generate`,
            fixed at export.
    """

    def __init__(
        self,
        model,
        tokenizer=None,
        *,
        prompt_length: int = 32,
        max_new_tokens: int = 32,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        from gpt2_tf.tokenizer import TFGPT2Tokenizer

        gen = make_generation_config(
            model.config, prompt_length, max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed,
        )
        self.model = model
        self.tokenizer = tokenizer if tokenizer is not None else TFGPT2Tokenizer()
        # the prompt's padding is masked, so the tokenizer keeps its own pad id
        self.tokenizer.configure(max_length=prompt_length, padding_side="left", truncation_side="left")
        self._gen = gen
        # the signature's shapes are fixed at export, so exact sizes: nothing to bucket against recompiles
        self._plan = plan_decoding(model.config, 1, prompt_length, gen.max_new_tokens, bucketed=False)
        self._key = (gen.do_sample, gen.top_k if gen.do_sample else None, gen.do_sample and gen.top_p is not None)
        self._decode = tf.function(self._decode_fn, jit_compile=True)
        self.generate = tf.function(self._generate, input_signature=[tf.TensorSpec((None,), tf.string, name="text")])

    def _decode_fn(self, input_ids, attention_mask, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id,
                   seed):
        do_sample, top_k, use_top_p = self._key
        return decode_loop(
            self.model, input_ids, attention_mask, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id, seed,
            do_sample=do_sample, top_k=top_k, use_top_p=use_top_p,
        )

    def _generate(self, text: tf.Tensor) -> dict[str, tf.Tensor]:
        enc = self.tokenizer(text)
        ids, mask = tf.cast(enc["input_ids"], tf.int32), tf.cast(enc["attention_mask"], tf.int32)
        ids, mask = (tf.ensure_shape(t, (None, self._plan.prompt_length)) for t in (ids, mask))
        # gpt2_core.generation.pad_prompt's buffer mask; no extra padding, the tokenizer pads to prompt_length
        new_slots = tf.ones((tf.shape(mask)[0], self._plan.new_bucket), tf.int32)
        tokens, n = self._decode(ids, tf.concat([mask, new_slots], axis=1), **_generation_tensors(self._gen))
        generated = tokens[:, :n]
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "generated_ids": generated,
            "text": self.tokenizer.detokenize(generated, skip_ids=[self._gen.pad_token_id]),
        }
