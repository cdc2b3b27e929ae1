"""Compiled cached decoding for gpt2_flax: greedy, sampling, beam search and beam sampling, every logits processor,
in one `jax.jit` program around a `lax.while_loop` over a preallocated KV cache.

Follows gpt2_core.generation: the settings (`resolve_generation` -> `GenerationSettings`: the same checks and
errors in every backend), the decoding plan (`plan_decoding`: prompt and new-token buckets, cache length;
`pad_prompt`: left padding and the whole-buffer attention mask), the processors (`gpt2_core.logits_process`,
mirrored function for function in `gpt2_flax.logits_process`), stopping, padding and trimming; and transformers v5's
`GenerationMixin._sample` / `_beam_search` step for step, so greedy decoding and beam search give transformers'
tokens on the same weights. What is left here is JAX's step, sampler and loop:

* One program per (model structure, batch, prompt bucket, new-token bucket, static switches). It takes the loop's
  carry and returns it: a fresh carry runs the prefill (the whole prompt at once) under a `lax.cond`, then the
  `while_loop` runs until every row finished, `max_new_tokens` are made, or `stop_at` steps are done. Without a
  streamer or stop strings `stop_at` is the whole length (one call); with them the host calls the same compiled
  program again every `CHUNK_STEPS` steps, reads the new tokens (streamer `put`, `StopStringMatcher`) and resumes.
* Static switches: the strategy, `num_beams`, which processors run, `no_repeat_ngram_size`, the bad-word lengths,
  the number of eos ids and which outputs are kept. Every numeric setting (lengths, penalties, p
  values, token ids, the prompt's bucket offset) is a traced value, so calls in the same buckets never recompile.
* The parameters are an argument of the program (`nnx.split`), not constants baked into it: one program serves any
  weights of the same structure (`params=` swaps them for one call, as transformers 4.x Flax did). The split is
  reused while the model's pytree structure is unchanged, its states rebuilt from the model's current arrays
  (`_split`): `nnx.split` alone was half the fixed cost of a call.
* The carry holds the token buffer (B, Tb + Nb) the processors read: the plan's extra left padding (ignored, via a
  `start` offset), the caller's prompt columns (its own padding tokens included, as transformers' processors see
  them), then the generated tokens. The cache is a `gpt2_flax.cache.KVCache` of `plan.cache_length` slots;
  beam search reorders its rows by `running_beam_indices` each step (`KVCache.reorder`).
* Beam search is transformers v5's vectorized algorithm with its fixed shapes: log_softmax, processors on
  log-probabilities, the top `max(2, 1 + len(eos)) * num_beams` continuations (beam sampling: Gumbel top-k, i.e.
  multinomial without replacement, then sorted), running beams, finished hypotheses merged with the length
  penalty, and the early-stop heuristic. The length penalties `n ** length_penalty` are a table computed on the
  host in float64 and rounded to float32, as PyTorch does with a Python scalar.

Random draws differ between frameworks, so only greedy decoding and beam search are bit-for-bit comparable.
References: flax `examples/gemma/sampler.py` (cache layout, split parameters); transformers v5
`generation/utils.py` (`_sample`, `_beam_search`) and `generation/logits_process.py`.
"""

from __future__ import annotations

import functools
import logging
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import checks
from gpt2_core.generation import (
    CHUNK_STEPS,
    GenerationConfig,
    GenerationSettings,
    StopStringMatcher,
    check_stop_strings,
    infer_attention_mask,
    pad_prompt,
    plan_decoding,
    resolve_generation,
)
from gpt2_core.logits_process import begin_suppress_index, padding_lengths
from gpt2_core.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from gpt2_flax import logits_process
from gpt2_flax.cache import KVCache

logger = logging.getLogger(__name__)

_traces = 0

# transformers' "very large negative" beam score (not -inf, so sums stay finite)
_BEAM_NEG = -1.0e9


def trace_count() -> int:
    """How many times the decode program has been traced (= compiled), over all models and shapes."""
    return _traces


def process_logits(logits: jax.Array, gen: Any) -> jax.Array:
    """Temperature, top-k, top-p on (B, V) float32 logits (transformers' warpers; removed tokens -inf).

    `gen.temperature`, `gen.top_k` and `gen.top_p` may be traced values (None: that filter is off; top_k = V and
    top_p >= 1 also mean off), so one compiled sampler serves every setting. Kept for callers of the older API; the
    decode loop runs `gpt2_flax.logits_process.apply_processors`.
    """
    x = logits_process.temperature(logits.astype(jnp.float32), gen.temperature)
    if gen.top_k is not None:
        x = logits_process.top_k(x, gen.top_k)
    if gen.top_p is not None:
        x = logits_process.top_p(x, 1.0 - jnp.asarray(gen.top_p, jnp.float32))
    return x


class _Structure:
    """The model's graphdef as a static (hashable) argument of `jax.jit`: the same model class, config and mode
    compare equal, so they share compiled programs."""

    def __init__(self, graphdef: Any, config: Any) -> None:
        self.graphdef = graphdef
        self._key = config.to_json_string()

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Structure) and self._key == other._key and self.graphdef == other.graphdef


# model -> (its pytree structure, the graphdef, and per state its tree structure and leaf positions in the model's
# leaves), from the last `nnx.split`; no arrays, so a model's replaced parameters are not kept alive here.
_SPLITS: "weakref.WeakKeyDictionary[Any, tuple[Any, Any, tuple[tuple[Any, list[int]], ...]]]" = (
    weakref.WeakKeyDictionary()
)


def _split(model: Any) -> tuple[Any, Any, Any]:
    """`nnx.split(model, nnx.Param, ...)` without `generation_config`: nnx keeps plain attributes in the graphdef,
    and a changed generation config must not recompile the program (it never reads it).

    `nnx.split` walks the module graph in Python (about 40 ms a call for 12 layers on a loaded 2-core machine, a
    fixed cost of every `generate`); `jax.tree.flatten(model)` gives the same arrays in a few ms. While the model's
    pytree structure (its modules and static attributes) is the one of the last split, the graphdef is reused and the
    states are rebuilt from the current arrays, so replaced or updated parameters are always the ones used."""
    generation_config = model.generation_config
    model.generation_config = None
    try:
        leaves, treedef = jax.tree.flatten(model)
        cached = _SPLITS.get(model)
        if cached is not None and cached[0] == treedef:
            states = tuple(jax.tree.unflatten(td, [leaves[i] for i in index]) for td, index in cached[2])
            return (cached[1], *states)
        graphdef, *states = nnx.split(model, nnx.Param, ...)
        position = {id(x): i for i, x in reversed(list(enumerate(leaves)))}
        layout = []
        for state in states:
            state_leaves, td = jax.tree.flatten(state)
            if any(id(x) not in position for x in state_leaves):
                return (graphdef, *states)  # not all of its arrays are pytree leaves of the model: no cache
            layout.append((td, [position[id(x)] for x in state_leaves]))
        _SPLITS[model] = (treedef, graphdef, tuple(layout))
        return (graphdef, *states)
    finally:
        model.generation_config = generation_config


@dataclass(frozen=True)
class _Spec:
    """The static switches of the decode program (see the module docstring)."""

    strategy: str  # "greedy", "sample", "beam" or "beam_sample"
    num_beams: int
    processors: tuple[str, ...]
    no_repeat_ngram_size: int
    min_tokens_to_keep: int
    n_eos: int
    output_scores: bool
    output_logits: bool
    custom: tuple[Callable, ...] = ()

    @property
    def is_beam(self) -> bool:
        return self.strategy in ("beam", "beam_sample")

    @property
    def beams_to_keep(self) -> int:
        return max(2, 1 + self.n_eos) * self.num_beams


def _forward(model: Any, tokens: jax.Array, cache: KVCache, attention_mask: jax.Array) -> tuple[jax.Array, KVCache]:
    """(R, t) tokens -> (R, V) float32 logits of the last position, and the advanced cache."""
    out = model.transformer(tokens, past_key_values=cache, attention_mask=attention_mask, use_cache=True, deterministic=True)
    return model.lm_logits(out.last_hidden_state[:, -1]).astype(jnp.float32), out.past_key_values


def _gather_beams(x: jax.Array, idx: jax.Array) -> jax.Array:
    """transformers' `_gather_beams`: x (B, K, ...) indexed by idx (B, K') along the beam axis."""
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


@functools.partial(jax.jit, static_argnames=("structure", "spec"), donate_argnames=("carry",))
def _generate(
    structure: _Structure,
    state: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    carry: dict[str, Any],
    values: dict[str, Any],
    stop_at: jax.Array,
    *,
    spec: _Spec,
) -> dict[str, Any]:
    """The decode program: prefill (once, for a fresh carry), then the loop up to step `stop_at`.

    input_ids (R, Tb) are the plan's padded prompt rows (R = B * num_beams or B * num_return_sequences) and
    attention_mask (R, S_max) its whole-buffer mask; `carry` comes from `_init_carry` or a previous call."""
    global _traces
    _traces += 1  # runs only while tracing
    model = nnx.merge(structure.graphdef, *state)
    Tb = input_ids.shape[1]
    v = values
    history_of = lambda ids, i: logits_process.History(ids, v["start"], v["prompt_length"] + i)  # noqa: E731
    process = functools.partial(
        logits_process.apply_processors, processors=spec.processors, values=v,
        min_tokens_to_keep=spec.min_tokens_to_keep, no_repeat_ngram_size=spec.no_repeat_ngram_size,
        custom_processors=spec.custom,
    )

    def prefill(c: dict[str, Any]) -> dict[str, Any]:
        logits, cache = _forward(model, input_ids, c["cache"], attention_mask)
        return {**c, "cache": cache, "logits": logits, "prefilled": jnp.bool_(True)}

    carry = jax.lax.cond(carry["prefilled"], lambda c: c, prefill, carry)

    def record(c: dict[str, Any], out: dict[str, Any], i: jax.Array, scores: jax.Array) -> None:
        if spec.output_scores:
            out["scores"] = c["scores"].at[i].set(scores)
        if spec.output_logits:
            out["raw_logits"] = c["raw_logits"].at[i].set(c["logits"])

    def greedy_body(c: dict[str, Any]) -> dict[str, Any]:
        i, out = c["i"], dict(c)
        scores = process(c["logits"], history_of(c["seq"], i))  # (R, V)
        record(c, out, i, scores)
        if spec.strategy == "sample":
            nxt = jax.random.categorical(jax.random.fold_in(c["key"], i), scores, axis=-1)
        else:
            nxt = jnp.argmax(scores, axis=-1)  # the first maximum, as torch.argmax
        nxt = jnp.where(c["done"], v["pad"], nxt.astype(jnp.int32))
        out["seq"] = jax.lax.dynamic_update_slice(c["seq"], nxt[:, None], (0, Tb + i))
        out["done"] = c["done"] | jnp.isin(nxt, v["eos"])
        out["i"] = i + 1
        out["running"] = (i + 1 < v["max_new_tokens"]) & ~jnp.all(out["done"])
        out["logits"], out["cache"] = jax.lax.cond(
            out["running"],
            lambda: _forward(model, nxt[:, None], c["cache"], attention_mask),
            lambda: (c["logits"], c["cache"]),
        )
        return out

    def beam_body(c: dict[str, Any]) -> dict[str, Any]:
        # transformers v5 `_beam_search`, one iteration (the forward of the new tokens comes last here).
        i, out = c["i"], dict(c)
        nb, K = spec.num_beams, spec.beams_to_keep
        R, V = c["logits"].shape
        B = R // nb
        running_seq = c["running_seq"]  # (B, nb, L)
        log_probs = jax.nn.log_softmax(c["logits"], axis=-1)
        log_probs = process(log_probs, history_of(running_seq.reshape(R, -1), i))  # (R, V)
        record(c, out, i, log_probs)
        acc = (log_probs.reshape(B, nb, V) + c["running_scores"][:, :, None]).reshape(B, nb * V)

        # top-K continuations (`_get_top_k_continuations`)
        if spec.strategy == "beam_sample":
            # multinomial without replacement on softmax(acc) == the top K of acc + Gumbel noise
            gumbel = jax.random.gumbel(jax.random.fold_in(c["key"], i), acc.shape, jnp.float32)
            topk_idx = jax.lax.top_k(acc + gumbel, K)[1]
            topk_lp = jnp.take_along_axis(acc, topk_idx, axis=1)
            order = jnp.argsort(-topk_lp, axis=1, stable=True)
            topk_lp, topk_idx = jnp.take_along_axis(topk_lp, order, 1), jnp.take_along_axis(topk_idx, order, 1)
        else:
            topk_lp, topk_idx = jax.lax.top_k(acc, K)
        topk_beam = topk_idx // V  # (B, K)
        topk_ids = (topk_idx % V).astype(jnp.int32)
        topk_running_bi = _gather_beams(c["running_bi"], topk_beam)
        topk_running_seq = _gather_beams(running_seq, topk_beam)
        topk_running_seq = jax.lax.dynamic_update_slice(topk_running_seq, topk_ids[:, :, None], (0, 0, Tb + i))
        flat_beam = (topk_beam + jnp.arange(B)[:, None] * nb).astype(jnp.int32)
        topk_running_bi = jax.lax.dynamic_update_slice(topk_running_bi, flat_beam[:, :, None], (0, 0, i))

        # stopping criteria on the new last token: an eos id, or the length
        hits = jnp.isin(topk_ids, v["eos"]) | (i + 1 >= v["max_new_tokens"])  # (B, K)

        # running beams (`_get_running_beams_for_next_iteration`)
        topk_running_lp = topk_lp + hits.astype(jnp.float32) * _BEAM_NEG
        next_idx = jax.lax.top_k(topk_running_lp, nb)[1]
        out["running_seq"] = _gather_beams(topk_running_seq, next_idx)
        out["running_scores"] = _gather_beams(topk_running_lp, next_idx)
        out["running_bi"] = _gather_beams(topk_running_bi, next_idx)

        # finished hypotheses (`_update_finished_beams`)
        top_num_beam_mask = jnp.arange(K) < nb
        did_finish = hits & top_num_beam_mask[None, :]
        lp = topk_lp / v["length_penalties"][i + 1]
        full = jnp.all(c["finished"], axis=-1, keepdims=True) & v["early_true"]
        lp = lp + full.astype(jnp.float32) * _BEAM_NEG
        lp = lp + (~c["unsatisfied"]).astype(jnp.float32) * _BEAM_NEG
        lp = lp + (~did_finish).astype(jnp.float32) * _BEAM_NEG
        merged_seq = jnp.concatenate([c["seqs"], topk_running_seq], axis=1)
        merged_scores = jnp.concatenate([c["beam_scores"], lp], axis=1)
        merged_bi = jnp.concatenate([c["bi"], topk_running_bi], axis=1)
        merged_finished = jnp.concatenate([c["finished"], did_finish], axis=1)
        keep = jax.lax.top_k(merged_scores, nb)[1]
        out["seqs"] = _gather_beams(merged_seq, keep)
        out["beam_scores"] = _gather_beams(merged_scores, keep)
        out["bi"] = _gather_beams(merged_bi, keep)
        out["finished"] = _gather_beams(merged_finished, keep)

        # the early-stop heuristic (`_check_early_stop_heuristic`), at cur_len + 1
        best_len = jnp.where(v["never_long"], v["max_new_tokens"], i + 1)
        best_running = out["running_scores"][:, :1] / v["length_penalties"][best_len]
        worst_finished = jnp.where(
            out["finished"], jnp.min(out["beam_scores"], axis=1, keepdims=True), jnp.float32(_BEAM_NEG)
        )
        out["unsatisfied"] = c["unsatisfied"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
        # `_beam_search_has_unfinished_sequences`
        improvement_possible = jnp.any(out["unsatisfied"])
        exists_open_beam = ~(jnp.all(out["finished"]) & v["early_true"])
        valid_continuations = ~jnp.all(hits)
        out["running"] = improvement_possible & exists_open_beam & valid_continuations
        out["i"] = i + 1

        def advance() -> tuple[jax.Array, KVCache]:
            beam_idx = out["running_bi"][:, :, i].reshape(R)
            tokens = out["running_seq"][:, :, Tb + i].reshape(R, 1)
            return _forward(model, tokens, c["cache"].reorder(beam_idx), attention_mask)

        out["logits"], out["cache"] = jax.lax.cond(out["running"], advance, lambda: (c["logits"], c["cache"]))
        return out

    body = beam_body if spec.is_beam else greedy_body
    return jax.lax.while_loop(lambda c: (c["i"] < stop_at) & c["running"], body, carry)


@functools.partial(jax.jit, static_argnames=("shape", "n", "dtype"))
def _zeros(shape: tuple[int, ...], n: int, dtype: Any) -> tuple[jax.Array, ...]:
    # n zero buffers in one dispatch (24 eager jnp.zeros were ~10 ms of every generate call)
    return tuple(jnp.zeros(shape, dtype) for _ in range(n))


def _empty_cache(model: Any, batch_size: int, max_length: int) -> KVCache:
    """`KVCache.init` with a buffer of its own per layer, key and value (the carry is donated to the program)."""
    config = model.config
    shape = (batch_size, config.n_head, max_length, config.head_dim)  # (B, N, S_max, H)
    zeros = _zeros(shape, 2 * config.n_layer, jnp.dtype(model.dtype))
    return KVCache(key=zeros[: config.n_layer], value=zeros[config.n_layer :], length=jnp.int32(0))


def _init_carry(
    model: Any, spec: _Spec, padded_ids: np.ndarray, new_bucket: int, S_max: int, values: dict[str, Any], key: jax.Array
) -> dict[str, Any]:
    """The loop's state before the prefill (host side, eager)."""
    R, Tb = padded_ids.shape
    L = Tb + new_bucket
    V = model.config.vocab_size
    fill = int(values["fill"]) if spec.is_beam else int(values["pad"])
    seq = np.concatenate([padded_ids, np.full((R, new_bucket), fill, np.int32)], axis=1)  # (R, L)
    carry: dict[str, Any] = {
        "i": jnp.int32(0),
        "running": jnp.bool_(True),
        "prefilled": jnp.bool_(False),
        "cache": _empty_cache(model, R, S_max),
        "logits": jnp.zeros((R, V), jnp.float32),
        "key": key,
    }
    if spec.output_scores:
        carry["scores"] = jnp.zeros((new_bucket, R, V), jnp.float32)
    if spec.output_logits:
        carry["raw_logits"] = jnp.zeros((new_bucket, R, V), jnp.float32)
    if not spec.is_beam:
        carry.update(seq=jnp.asarray(seq), done=jnp.zeros((R,), bool))
        return carry
    nb = spec.num_beams
    B = R // nb
    running_scores = np.full((B, nb), _BEAM_NEG, np.float32)
    running_scores[:, 0] = 0.0  # only the first beam's tokens count at the first step
    carry.update(
        running_seq=jnp.asarray(seq.reshape(B, nb, L)),
        seqs=jnp.asarray(seq.reshape(B, nb, L)),
        running_scores=jnp.asarray(running_scores),
        beam_scores=jnp.full((B, nb), _BEAM_NEG, jnp.float32),
        finished=jnp.zeros((B, nb), bool),
        unsatisfied=jnp.ones((B, 1), bool),
        running_bi=jnp.full((B, nb, new_bucket), -1, jnp.int32),
        bi=jnp.full((B, nb, new_bucket), -1, jnp.int32),
    )
    return carry


def _ids(x: Sequence[int]) -> jax.Array:
    return jnp.asarray(np.asarray(x, np.int32).reshape(-1))


def _values(s: GenerationSettings, plan: Any, mask: np.ndarray, strategy: str) -> dict[str, Any]:
    """The traced settings of the program (the same pytree structure for the same static switches)."""
    on = set(s.processors)
    eos = s.eos_token_id
    v: dict[str, Any] = {
        "prompt_length": jnp.int32(plan.prompt_length),
        "start": jnp.int32(plan.extra_padding),
        "max_new_tokens": jnp.int32(s.max_new_tokens),
        "eos": _ids(eos if eos else (-1,)),
        "pad": jnp.int32(s.pad_token_id),
    }
    if "repetition_penalty" in on:
        v["repetition_penalty"] = jnp.float32(s.repetition_penalty)
        v["ignore_lengths"] = _ids(padding_lengths(mask))
    if "bad_words" in on:
        single, groups = logits_process.bad_word_groups(s.bad_words_ids, eos)
        v["bad_single"] = _ids(single)
        v["bad_groups"] = tuple((jnp.asarray(p), jnp.asarray(t)) for p, t in groups)
    if "min_length" in on:
        v["min_new_tokens"] = jnp.int32(s.min_new_tokens)
    if "forced_bos" in on:
        v["forced_bos"] = jnp.int32(s.forced_bos_token_id)
    if "forced_eos" in on:
        v["forced_eos"] = _ids(s.forced_eos_token_id)
    if "suppress_tokens" in on:
        v["suppress"] = _ids(s.suppress_tokens)
    if "begin_suppress_tokens" in on:
        v["begin_suppress"] = _ids(s.begin_suppress_tokens)
        v["begin_index"] = jnp.int32(begin_suppress_index(s.prompt_length, s.forced_bos_token_id))
    # Python floats become float32 the way PyTorch's scalar operands do (rounded once, from float64).
    for name, field in (("temperature", "temperature"), ("min_p", "min_p"), ("typical_p", "typical_p"),
                        ("epsilon", "epsilon_cutoff"), ("eta", "eta_cutoff")):
        if name in on:
            v[name] = jnp.float32(getattr(s, field))
    if "top_k" in on:
        v["top_k"] = jnp.int32(s.top_k)
    if "top_p" in on:
        v["top_p_threshold"] = jnp.float32(1 - s.top_p)
    if strategy in ("beam", "beam_sample"):
        # output_fill_value = `pad_token_id or eos_token_id[0]` (Python precedence: a pad id of 0 gives eos[0])
        v["fill"] = jnp.int32((s.pad_token_id or eos[0]) if eos else -1)
        n = np.arange(plan.new_bucket + 2, dtype=np.float64)
        n[0] = 1.0
        v["length_penalties"] = jnp.asarray(np.asarray([x**s.length_penalty for x in n], np.float32))
        v["early_true"] = jnp.bool_(s.early_stopping is True)
        v["never_long"] = jnp.bool_(s.early_stopping == "never" and s.length_penalty > 0.0)
    return v


def _strategy(s: GenerationSettings) -> str:
    if s.is_beam:
        return "beam_sample" if s.do_sample else "beam"
    return "sample" if s.do_sample else "greedy"


def generate(
    model: Any,
    input_ids: Any,
    attention_mask: Any = None,
    generation_config: GenerationConfig | None = None,
    *,
    logits_processor: Sequence[Callable] | None = None,
    streamer: Any = None,
    tokenizer: Any = None,
    seed: int | None = None,
    prng_key: jax.Array | None = None,
    params: Any = None,
    **kwargs: Any,
) -> GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
    """Generate tokens after `input_ids` (B, T), as transformers v5's `generate` decides them.

    Unlike transformers (and like transformers 4.x Flax, which returned an object with `.sequences`), the result is
    always an output object of jax arrays: `GenerateDecoderOnlyOutput` (greedy, sampling) or
    `GenerateBeamDecoderOnlyOutput` (`num_beams > 1`). `sequences` is (B * num_return_sequences, T + steps) int32,
    trimmed after the last step any row needed (4.x Flax padded it to `max_length`). With
    `return_dict_in_generate=True`, `output_scores` fills `scores` (per step the processed (rows, V) scores; beam
    search: log-probabilities, and `sequences_scores`) and `output_logits` fills `logits` (the raw logits);
    beam search always sets `beam_indices`.

    Args:
        model: A FlaxGPT2LMHeadModel; its `generation_config` gives the defaults.
        input_ids: Prompt ids (array-like, (B, T) or (T,)); a batch of different lengths is left-padded.
        attention_mask: (B, T) 1 for tokens, 0 for padding. Without it, transformers' rule infers one from
            `pad_token_id` (`gpt2_core.generation.infer_attention_mask`, with a logged warning when it cannot).
        generation_config: A `GenerationConfig`; its non-default fields override the model's.
        logits_processor: The caller's processors, each `f(input_ids, scores) -> scores` on NumPy arrays (called
            from the compiled loop through `jax.pure_callback`), run after the built-in ones, before the warpers.
        streamer: transformers' protocol: `put(prompt_ids)` once, `put(tokens)` per step ((rows,) NumPy arrays),
            `end()`. Not with beam search.
        tokenizer: Needed with `stop_strings`.
        seed: Seeds the sampler (`jax.random.key(seed)`), for reproducible sampling.
        prng_key: Or pass a JAX PRNG key.
        params: Other parameters of the same structure for this call: an `nnx.State` of the model's `nnx.Param`
            variables (`nnx.state(model, nnx.Param)`), as transformers 4.x Flax's `generate(params=...)`.
        **kwargs: `GenerationConfig` fields (`max_new_tokens`, `do_sample`, `num_beams`, `top_p`, ...).
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence). Received: input_ids.shape={ids.shape}.")
    B, T = ids.shape
    config = model.config
    custom = tuple(logits_processor or ())
    s = resolve_generation(
        config, T, generation_config, model_generation_config=model.generation_config,
        has_custom_processors=bool(custom), seed=seed, **kwargs,
    )
    if s.is_beam and streamer is not None:
        raise ValueError(
            f"Streaming is not supported with beam search. Received: num_beams={s.num_beams}, a streamer. "
            "Use num_beams=1, or no streamer."
        )
    if s.is_beam and s.stop_strings:
        raise ValueError(
            f"stop_strings are not implemented with beam search. Received: num_beams={s.num_beams}, "
            f"stop_strings={list(s.stop_strings)}. Use num_beams=1, or eos_token_id."
        )
    check_stop_strings(s, tokenizer)
    if attention_mask is None:
        mask, warning = infer_attention_mask(ids, s.pad_token_id, s.eos_token_id)
        if warning:
            logger.warning(warning)
    else:
        mask = np.asarray(attention_mask)
    # The forward's checks, eagerly: inside the compiled program the values are not known.
    checks.check_model_inputs(
        config, input_ids=ids, input_shape=ids.shape, inputs_embeds_shape=None, attention_mask_shape=mask.shape,
        position_ids=None, position_ids_shape=None, token_type_ids_shape=None, past_length=0,
    )
    ids = ids.astype(np.int32)
    # transformers expands the prompt rows (repeat_interleave) to B * num_beams, or B * num_return_sequences
    expand = max(s.num_beams, s.num_return_sequences)
    rows_ids, rows_mask = np.repeat(ids, expand, axis=0), np.repeat(mask.astype(np.int32), expand, axis=0)
    R = rows_ids.shape[0]
    plan = plan_decoding(config, R, T, s.max_new_tokens)
    padded_ids, buffer_mask = pad_prompt(plan, rows_ids, rows_mask)

    strategy = _strategy(s)
    spec = _Spec(
        strategy=strategy, num_beams=s.num_beams, processors=s.processors, no_repeat_ngram_size=s.no_repeat_ngram_size,
        min_tokens_to_keep=s.min_tokens_to_keep, n_eos=len(s.eos_token_id),
        output_scores=s.return_dict_in_generate and s.output_scores,
        output_logits=s.return_dict_in_generate and s.output_logits, custom=custom,
    )
    values = _values(s, plan, rows_mask, strategy)
    if prng_key is None:
        prng_key = jax.random.key(s.seed if s.seed is not None else int(np.random.default_rng().integers(2**31 - 1)))
    graphdef, param_state, rest = _split(model)
    if params is not None:
        param_state = params
    structure = _Structure(graphdef, config)
    carry = _init_carry(model, spec, padded_ids, plan.new_bucket, plan.cache_length, values, prng_key)
    device_ids, device_mask = jnp.asarray(padded_ids), jnp.asarray(buffer_mask)

    def run(carry: dict[str, Any], stop_at: int) -> dict[str, Any]:
        return _generate(
            structure, (param_state, rest), device_ids, device_mask, carry, values, jnp.int32(stop_at), spec=spec
        )

    N, Tb = s.max_new_tokens, plan.prompt_bucket
    if streamer is None and not s.stop_strings:
        carry = run(carry, N)
        steps = int(carry["i"])
    else:
        carry, steps = _run_chunked(run, carry, s, rows_ids, Tb, streamer, tokenizer)

    if not s.is_beam:
        generated = carry["seq"][:, Tb : Tb + steps]
        sequences = jnp.concatenate([jnp.asarray(rows_ids), generated], axis=1)
        return GenerateDecoderOnlyOutput(
            sequences=sequences,
            scores=tuple(carry["scores"][j] for j in range(steps)) if spec.output_scores else None,
            logits=tuple(carry["raw_logits"][j] for j in range(steps)) if spec.output_logits else None,
        )
    # beam search: the best num_return_sequences hypotheses per prompt, cut to the longest one's length
    nrs = s.num_return_sequences
    seqs = carry["seqs"][:, :nrs].reshape(B * nrs, -1)
    beam_indices = carry["bi"][:, :nrs].reshape(B * nrs, -1)
    longest = int(jnp.max(jnp.sum(beam_indices != -1, axis=1)))
    sequences = jnp.concatenate([jnp.asarray(np.repeat(ids, nrs, axis=0)), seqs[:, Tb : Tb + longest]], axis=1)
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences,
        sequences_scores=carry["beam_scores"][:, :nrs].reshape(-1) if spec.output_scores else None,
        scores=tuple(carry["scores"][j] for j in range(steps)) if spec.output_scores else None,
        logits=tuple(carry["raw_logits"][j] for j in range(steps)) if spec.output_logits else None,
        beam_indices=beam_indices[:, :longest] if s.return_dict_in_generate else None,
    )


def _run_chunked(
    run: Callable[[dict[str, Any], int], dict[str, Any]],
    carry: dict[str, Any],
    s: GenerationSettings,
    prompt: np.ndarray,
    Tb: int,
    streamer: Any,
    tokenizer: Any,
) -> tuple[dict[str, Any], int]:
    """The loop in chunks of CHUNK_STEPS steps of the same compiled program, the host reading the new tokens in
    between: stop strings finish rows (their later tokens become padding, like after an eos id; what the model
    computed for those padding steps is not recomputed) and the streamer gets each step's tokens.

    Returns the final carry and the number of steps of the result."""
    R, T = prompt.shape
    N = s.max_new_tokens
    matcher = StopStringMatcher(tokenizer, s.stop_strings) if s.stop_strings else None
    eos = np.asarray(s.eos_token_id, np.int64)
    finish = np.full((R,), N, np.int64)  # the step at which each row finished (N: not yet)
    if streamer is not None:
        streamer.put(prompt.copy())
    done_steps = 0
    while True:
        carry = run(carry, done_steps + CHUNK_STEPS)
        i = int(carry["i"])
        new = np.array(carry["seq"][:, Tb + done_steps : Tb + i])  # (R, n) this chunk's tokens
        generated = np.array(carry["seq"][:, Tb : Tb + i])
        changed = False
        for r in range(R):
            if finish[r] < N:
                continue
            stop = None
            hit = np.flatnonzero(np.isin(new[r], eos)) if eos.size else np.empty(0, np.int64)
            if hit.size:
                stop = done_steps + int(hit[0])
            if matcher is not None:
                k = matcher.first_stop(list(prompt[r]) + list(generated[r]), T + done_steps)
                if k is not None and (stop is None or k - T < stop):
                    stop, changed = k - T, True
            if stop is not None:
                finish[r] = stop
                new[r, stop + 1 - done_steps :] = s.pad_token_id
        if changed:  # rows finished by a stop string: pad their later tokens and mark them done on the device
            seq = np.array(carry["seq"])
            seq[:, Tb + done_steps : Tb + i] = new
            done = np.array(carry["done"]) | (finish < N)
            carry = {**carry, "seq": jnp.asarray(seq), "done": jnp.asarray(done)}
            carry["running"] = jnp.bool_(bool(carry["running"]) and not done.all())
        total = int(finish.max()) + 1 if (finish < N).all() else None
        last = i if total is None else min(i, total)
        if streamer is not None:
            for j in range(last - done_steps):
                streamer.put(new[:, j].copy())
        done_steps = last
        if total is not None or i >= N or not bool(carry["running"]):
            break
    if streamer is not None:
        streamer.end()
    return carry, done_steps
