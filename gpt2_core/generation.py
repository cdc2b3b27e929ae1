"""Decoding decisions shared by every backend, with a NumPy reference decoder to test them against.

* Arguments: `GenerationConfig` (transformers' fields and defaults, `generation_config.json`) plus the call's
  keywords resolve, once, into the frozen `GenerationSettings` (`resolve_generation`), with the same errors in
  every backend. Strategies: greedy (first maximum), sampling, beam search (`num_beams > 1`) and beam sampling.
* Logits processors: transformers v5's semantics, in `PROCESSOR_ORDER`; only `GenerationSettings.processors` run.
  They see what transformers' processors see: the caller's prompt columns as given followed by the generated
  tokens, never the extra bucket padding of the decoding plan (backends keep a `start` offset for it). The
  repetition penalty skips each row's leading (left) padding, as transformers v5 does (`prompt_ignore_length`
  from the attention mask); right padding and pads in the middle are penalised, as there. Removed tokens get -inf, as
  in transformers, so `output_scores` compare equal; the sampling warpers always keep `min_tokens_to_keep`.
  Greedy and sampling process the raw logits; beam search processes `log_softmax(logits)` (transformers' order).
* Beam search: transformers v5's vectorized algorithm (`GenerationMixin._beam_search`), which has fixed shapes and
  so compiles: per prompt the top `max(2, 1 + len(eos)) * num_beams` continuations of the running beams' summed
  log-probabilities, the best `num_beams` that did not just finish keep running, finished ones enter the
  `num_beams` best hypotheses scored `sum_logprobs / generated_length ** length_penalty`, and `early_stopping`
  (True / False / "never") decides when no running beam can still improve them. The cache is reordered by beam
  (a gather into new buffers: the torch cache is written in place). `beam_indices` are flat (b * num_beams + k).
* Stopping: a row is finished once it emits any id in `eos_token_id`, or its text completes one of the
  `stop_strings` (`StopStringMatcher`, on the host, between chunks of `CHUNK_STEPS` steps of a compiled loop);
  afterwards it receives `pad_token_id` (default: the generation config's pad id, else the first eos id) when
  eos ids exist; without any, a row stopped by a stop string keeps its tokens (transformers' rule, which all three
  backends follow). Generation ends when
  every row has finished or `max_new_tokens` are made; the result is `prompt + generated`, cut after the last
  step any row needed (transformers' shape rule). stop_strings with beam search are refused (not implemented).
* Left padding: prompts are padded on the left with an attention mask; position ids follow
  `reference.position_ids_from_attention_mask`, and each generated token extends the mask with a 1. A batch without
  `attention_mask` whose rows hold `pad_token_id` gets the mask transformers infers (`infer_attention_mask`).

* The decoding plan (`plan_decoding`), the same in every backend: the prompt is left-padded to
  `bucket_length(T)` columns and the preallocated `KVCache` holds `bucket_length(max_new_tokens)` more slots, so a
  compiled loop sees a few shapes only. Extra left padding changes nothing (padding keys are masked, position ids
  count from the first real token). The buffer never exceeds `n_positions`: near the limit the prompt bucket
  shrinks to `n_positions - max_new_tokens`, then the new-token bucket to what is left (never below the exact
  sizes), so the shapes stay fixed within a bucket. The attention mask covers the whole buffer:
  `[0 * extra padding, the prompt's mask, 1 * new slots]` (future slots are hidden by the causal mask).
* Trimming: the result is the caller's prompt (unpadded) followed by the generated columns up to the last step
  any row needed (`steps`), never the bucket's spare columns.
* Streaming: a `streamer` (transformers' `put` / `end` protocol) gets the prompt once, then each step's tokens;
  the compiled TF / Flax loops run in chunks of `CHUNK_STEPS` steps when a streamer or stop strings need the host.

Random draws differ between frameworks, so only greedy decoding and beam search are bit-for-bit comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gpt2_core.config import GPT2Config


from gpt2_core.generation_config import GenerationConfig, as_id_tuple  # noqa: E402  (re-exported)

# The logits processors, in the order transformers v5 applies them (`GenerationMixin._get_logits_processor`):
# first the ones that apply to every strategy, then the caller's `logits_processor` list, then (sampling only) the
# warpers, then renormalisation. A backend applies exactly the active ones (`GenerationSettings.processors`), in
# this order. "min_length" stands for both of transformers' MinLength and MinNewTokensLength (one threshold).
PROCESSOR_ORDER: tuple[str, ...] = (
    "repetition_penalty", "no_repeat_ngram", "bad_words", "min_length", "forced_bos", "forced_eos",
    "remove_invalid", "suppress_tokens", "begin_suppress_tokens", "custom",
    "temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta",
    "renormalize",
)
WARPERS = frozenset({"temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon", "eta"})


@dataclass(frozen=True)
class GenerationSettings:
    """One `generate` call's decoding, resolved and validated once for every backend (`resolve_generation`).

    Every filter is "off" as None (or 0 / () for counts and id lists), so a backend tests `is not None` only.

    Length (in tokens of the caller's prompt of T columns, padding included, as transformers counts):
        prompt_length: T.
        max_new_tokens: N >= 1; `max_length` = T + N (transformers' `max_length` after its resolution).
        min_new_tokens: eos ids are suppressed while fewer than this many tokens were generated (0: off):
            transformers' `min_new_tokens` when set (it replaces `min_length`), else `min_length - T`.
    Strategy:
        do_sample, num_beams (1: greedy or sampling), num_return_sequences (rows per prompt in the output),
        length_penalty, early_stopping (True, False or "never": transformers' beam semantics).
    Processors (see PROCESSOR_ORDER; `processors` lists the active ones in order):
        repetition_penalty, no_repeat_ngram_size, bad_words_ids (tuple of id tuples), forced_bos_token_id,
        forced_eos_token_id (tuple), remove_invalid_values, suppress_tokens, begin_suppress_tokens,
        temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff (warpers: only when sampling),
        min_tokens_to_keep (1; with beams len(eos) + 1, transformers' rule), renormalize_logits.
    Stopping: eos_token_id (tuple, may be empty), pad_token_id (written after a row finished), stop_strings.
    Outputs: return_dict_in_generate, output_scores, output_logits. Sampler: seed.
    """

    prompt_length: int = 1
    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    num_beams: int = 1
    num_return_sequences: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    repetition_penalty: float | None = None
    no_repeat_ngram_size: int = 0
    bad_words_ids: tuple[tuple[int, ...], ...] = ()
    forced_bos_token_id: int | None = None
    forced_eos_token_id: tuple[int, ...] = ()
    remove_invalid_values: bool = False
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()
    temperature: Any = 1.0
    top_k: Any = None
    top_p: Any = None
    min_p: float | None = None
    typical_p: float | None = None
    epsilon_cutoff: float | None = None
    eta_cutoff: float | None = None
    min_tokens_to_keep: int = 1
    renormalize_logits: bool = False
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    stop_strings: tuple[str, ...] = ()
    return_dict_in_generate: bool = False
    output_scores: bool = False
    output_logits: bool = False
    seed: int | None = None
    has_custom_processors: bool = False

    @property
    def max_length(self) -> int:
        return self.prompt_length + self.max_new_tokens

    @property
    def is_beam(self) -> bool:
        return self.num_beams > 1

    @property
    def processors(self) -> tuple[str, ...]:
        """The active processors, in PROCESSOR_ORDER."""
        on = {
            "repetition_penalty": self.repetition_penalty is not None,
            "no_repeat_ngram": self.no_repeat_ngram_size > 0,
            "bad_words": bool(self.bad_words_ids),
            "min_length": self.min_new_tokens > 0 and bool(self.eos_token_id),
            "forced_bos": self.forced_bos_token_id is not None,
            "forced_eos": bool(self.forced_eos_token_id),
            "remove_invalid": self.remove_invalid_values,
            "suppress_tokens": bool(self.suppress_tokens),
            "begin_suppress_tokens": bool(self.begin_suppress_tokens),
            "custom": self.has_custom_processors,
            "temperature": self.do_sample and self.temperature is not None and self.temperature != 1.0,
            "top_k": self.do_sample and self.top_k is not None,
            "top_p": self.do_sample and self.top_p is not None,
            "min_p": self.do_sample and self.min_p is not None,
            "typical_p": self.do_sample and self.typical_p is not None,
            "epsilon": self.do_sample and self.epsilon_cutoff is not None,
            "eta": self.do_sample and self.eta_cutoff is not None,
            "renormalize": self.renormalize_logits,
        }
        return tuple(name for name in PROCESSOR_ORDER if on[name])


# Steps a compiled loop runs between host visits when a streamer or stop strings need them.
CHUNK_STEPS = 8

MIN_BUCKET = 16
BUCKET_STEP = 64


def bucket_length(n: int, limit: int | None = None) -> int:
    """The shape bucket of a length: 16, 32, 64, then multiples of 64; at most `limit` (and at least n)."""
    if n < 1:
        raise ValueError(f"A bucketed length must be positive. Received: n={n}.")
    b = max(MIN_BUCKET, 1 << (n - 1).bit_length()) if n <= BUCKET_STEP else -(-n // BUCKET_STEP) * BUCKET_STEP
    return max(n, min(b, limit)) if limit is not None else b


@dataclass(frozen=True)
class DecodingPlan:
    """Shapes of one `generate` call, decided once for every backend (see the module docstring).

    Args:
        batch_size: Rows of the prompt.
        prompt_length: Columns of the caller's prompt, T.
        prompt_bucket: Columns after left padding, Tb >= T.
        max_new_tokens: Tokens to generate, N.
        new_bucket: Cache slots for generated tokens, Nb >= N.
    """

    batch_size: int
    prompt_length: int
    prompt_bucket: int
    max_new_tokens: int
    new_bucket: int

    @property
    def cache_length(self) -> int:
        """S_max: slots of the preallocated KVCache (prompt bucket + new-token bucket), <= n_positions."""
        return self.prompt_bucket + self.new_bucket

    @property
    def extra_padding(self) -> int:
        """Left padding columns added to the caller's prompt."""
        return self.prompt_bucket - self.prompt_length


def plan_decoding(
    config: GPT2Config, batch_size: int, prompt_length: int, max_new_tokens: int, *, bucketed: bool = True
) -> DecodingPlan:
    """The decoding plan: bucketed prompt and cache sizes within `n_positions` (exact sizes if not `bucketed`)."""
    T, N, limit = int(prompt_length), int(max_new_tokens), config.n_positions
    if T + N > limit:
        raise ValueError(
            f"Sequence length {T + N} exceeds n_positions={limit}. Received: prompt length {T}, "
            f"max_new_tokens={N}. Generate fewer tokens or crop the prompt."
        )
    if not bucketed:
        Tb, Nb = T, N
    else:
        # Buckets shrink to what n_positions leaves (never below the exact size), so near the limit the shapes
        # still stay fixed within a bucket instead of following every new length.
        Tb = max(T, min(bucket_length(T), limit - N))
        Nb = max(N, min(bucket_length(N), limit - Tb))
    return DecodingPlan(batch_size=int(batch_size), prompt_length=T, prompt_bucket=Tb, max_new_tokens=N, new_bucket=Nb)


# The id written into the extra left-padding columns: any valid id does (those keys are masked out), and 0 is valid
# in every vocabulary, whereas a `pad_token_id` may lie past the embedding rows (an added token before a resize).
PROMPT_PAD_ID = 0


def pad_prompt(
    plan: DecodingPlan, input_ids: np.ndarray, attention_mask: np.ndarray | None, pad_token_id: int = PROMPT_PAD_ID
) -> tuple[np.ndarray, np.ndarray]:
    """Left-pad the prompt to the plan: ids (B, Tb) int32 and the whole-buffer attention mask (B, S_max) int32.

    Backends check the caller's prompt (ids in range) before padding, so errors name the caller's values."""
    ids = np.asarray(input_ids).astype(np.int32, copy=False)
    B, T = ids.shape
    mask = np.ones((B, T), np.int32) if attention_mask is None else np.asarray(attention_mask).astype(np.int32)
    pad = plan.extra_padding
    padded_ids = np.concatenate([np.full((B, pad), pad_token_id, np.int32), ids], axis=1)  # (B, Tb)
    buffer_mask = np.concatenate(
        [np.zeros((B, pad), np.int32), mask, np.ones((B, plan.new_bucket), np.int32)], axis=1
    )  # (B, S_max)
    return padded_ids, buffer_mask


def _field_error(name: str, value: Any, rule: str, fix: str) -> ValueError:
    return ValueError(f"{name} {rule}. Received: {name}={value!r}. {fix}")


def _check_ids(name: str, ids: Sequence[int], vocab_size: int) -> None:
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(
            f"{name} holds token ids outside the vocabulary (0..{vocab_size - 1}). Received: {name} containing "
            f"{bad[:5]}. Use ids of this model's tokenizer."
        )


def resolve_generation(
    config: GPT2Config,
    prompt_length: int,
    generation_config: GenerationConfig | None = None,
    *,
    model_generation_config: GenerationConfig | None = None,
    has_custom_processors: bool = False,
    **kwargs: Any,
) -> GenerationSettings:
    """The settings of one `generate` call, validated the same way in every backend.

    Fields come from, later winning: the model's `generation_config` (`model_generation_config`; default: the
    model config's special tokens), the fields of the caller's `generation_config` that differ from the defaults,
    then `kwargs` (GenerationConfig field names; a None value means "not given", as in transformers v5 where an
    unset field takes its default). Unknown keywords raise ValueError naming them.
    """
    gc = (model_generation_config or GenerationConfig.from_model_config(config)).copy()
    if generation_config is not None:
        if not isinstance(generation_config, GenerationConfig):
            raise TypeError(
                f"generation_config must be a GenerationConfig. Received: {type(generation_config).__name__}. "
                "Build one with gpt2_core.generation.GenerationConfig(...) or GenerationConfig.from_pretrained(dir)."
            )
        diff = generation_config.to_diff_dict()
        gc.extra.update({k: diff.pop(k) for k in list(diff) if k in generation_config.extra})
        gc.update(**diff)
    unknown = gc.update(**{k: v for k, v in kwargs.items() if v is not None})
    if unknown:
        raise ValueError(
            f"generate() got arguments it does not know. Received: {sorted(unknown)}. Valid generation fields: "
            f"{', '.join(GenerationConfig.field_names())}."
        )
    gc.validate()
    T, V, limit = int(prompt_length), config.vocab_size, config.n_positions

    # length
    if gc.max_new_tokens is not None:
        N = gc.max_new_tokens
    elif gc.max_length is not None:
        N = gc.max_length - T
        if not isinstance(N, (int, np.integer)) or N < 1:
            raise ValueError(
                f"max_length must exceed the prompt length {T}. Received: max_length={gc.max_length!r}. Use "
                "max_new_tokens to count only the new tokens."
            )
    else:
        N = max(1, min(20, limit - T))  # transformers: 20 new tokens, within the position table
    if not isinstance(N, (int, np.integer)) or isinstance(N, bool) or N < 1:
        raise _field_error("max_new_tokens", N, "must be a positive integer", "Pass e.g. max_new_tokens=20.")
    if T + N > limit:
        raise ValueError(
            f"Sequence length {T + N} exceeds n_positions={limit}. Received: prompt length {T}, "
            f"max_new_tokens={N}. Generate fewer tokens or crop the prompt."
        )
    for name in ("min_length", "min_new_tokens"):
        value = getattr(gc, name)
        if value is not None and (not isinstance(value, (int, np.integer)) or value < 0):
            raise _field_error(name, value, "must be a non-negative integer", f"Pass e.g. {name}=5, or 0 for none.")
    # transformers: min_new_tokens, when set, replaces min_length (min_length = T + min_new_tokens)
    min_new = gc.min_new_tokens if gc.min_new_tokens is not None else max((gc.min_length or 0) - T, 0)
    if min_new > N:
        raise ValueError(
            f"min_new_tokens exceeds max_new_tokens. Received: min_new_tokens={min_new} (from "
            f"min_length={gc.min_length!r}, min_new_tokens={gc.min_new_tokens!r}, prompt length {T}), "
            f"max_new_tokens={N}. Lower the minimum or raise max_new_tokens."
        )

    # strategy
    do_sample = bool(gc.do_sample)
    beams, nrs = gc.num_beams, gc.num_return_sequences
    if not isinstance(beams, (int, np.integer)) or isinstance(beams, bool) or beams < 1:
        raise _field_error("num_beams", beams, "must be an integer >= 1", "Use 1 for greedy or sampling.")
    if not isinstance(nrs, (int, np.integer)) or isinstance(nrs, bool) or nrs < 1:
        raise _field_error("num_return_sequences", nrs, "must be an integer >= 1", "Use 1 for one sequence per prompt.")
    if beams == 1 and not do_sample and nrs > 1:
        raise ValueError(
            f"Greedy decoding returns one sequence per prompt. Received: num_return_sequences={nrs}, num_beams=1, "
            "do_sample=False. Set do_sample=True, or num_beams >= num_return_sequences for beam search."
        )
    if beams > 1 and nrs > beams:
        raise ValueError(
            f"num_return_sequences must be <= num_beams. Received: num_return_sequences={nrs}, num_beams={beams}. "
            "Raise num_beams or lower num_return_sequences."
        )
    if gc.early_stopping not in (True, False, "never"):
        raise _field_error("early_stopping", gc.early_stopping, "must be True, False or 'never'", "See docs/generation.md.")
    if not isinstance(gc.length_penalty, (int, float, np.floating)) or not np.isfinite(gc.length_penalty):
        raise _field_error("length_penalty", gc.length_penalty, "must be a finite number", "Use 1.0 for none.")

    # processors
    rp = gc.repetition_penalty
    if rp is not None and (not isinstance(rp, (int, float, np.floating)) or not rp > 0):
        raise _field_error("repetition_penalty", rp, "must be > 0", "Use 1.0 for none; > 1 discourages repeats.")
    ngram = gc.no_repeat_ngram_size or 0
    if not isinstance(ngram, (int, np.integer)) or ngram < 0:
        raise _field_error("no_repeat_ngram_size", ngram, "must be a non-negative integer", "Use 0 for none.")
    bad_words: tuple[tuple[int, ...], ...] = ()
    if gc.bad_words_ids is not None:
        bw = gc.bad_words_ids
        if not isinstance(bw, (list, tuple)) or not bw or not all(isinstance(w, (list, tuple)) and len(w) for w in bw):
            raise _field_error(
                "bad_words_ids", bw, "must be a non-empty list of non-empty lists of token ids",
                "Pass e.g. bad_words_ids=[[id], [id1, id2]] (tokenizer(words, add_special_tokens=False).input_ids).",
            )
        bad_words = tuple(tuple(int(i) for i in w) for w in bw)
        _check_ids("bad_words_ids", [i for w in bad_words for i in w], V)
    forced_bos = None if gc.forced_bos_token_id is None else int(gc.forced_bos_token_id)
    forced_eos = as_id_tuple(gc.forced_eos_token_id)
    suppress, begin_suppress = as_id_tuple(gc.suppress_tokens), as_id_tuple(gc.begin_suppress_tokens)
    _check_ids("forced_bos_token_id", () if forced_bos is None else (forced_bos,), V)
    for name, ids in (("forced_eos_token_id", forced_eos), ("suppress_tokens", suppress),
                      ("begin_suppress_tokens", begin_suppress)):
        _check_ids(name, ids, V)

    # warpers (checked whenever sampling; transformers ignores them, with a warning, when greedy)
    temperature = 1.0 if gc.temperature is None else gc.temperature
    if do_sample and (not isinstance(temperature, (int, float, np.floating)) or not temperature > 0):
        raise _field_error("temperature", temperature, "must be > 0", "Use do_sample=False for greedy.")
    top_k = gc.top_k
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0):
        raise _field_error("top_k", top_k, "must be a non-negative integer", "Use 0 to turn top-k off.")
    checks_01 = (
        ("top_p", gc.top_p, lambda x: 0.0 < x <= 1.0, "must be in (0, 1]", "Use 1.0 to turn it off."),
        ("typical_p", gc.typical_p, lambda x: 0.0 < x <= 1.0, "must be in (0, 1]", "Use 1.0 to turn it off."),
        ("min_p", gc.min_p, lambda x: 0.0 <= x <= 1.0, "must be in [0, 1]", "Use None to turn it off."),
        ("epsilon_cutoff", gc.epsilon_cutoff, lambda x: 0.0 <= x < 1.0, "must be in [0, 1)", "Use 0.0 to turn it off."),
        ("eta_cutoff", gc.eta_cutoff, lambda x: 0.0 <= x < 1.0, "must be in [0, 1)", "Use 0.0 to turn it off."),
    )
    for name, value, ok, rule, fix in checks_01:
        if value is not None and (not isinstance(value, (int, float, np.floating)) or not ok(value)):
            raise _field_error(name, value, rule, fix)

    # stopping
    # transformers: the special tokens come from the generation config only (`from_model_config` copied the
    # model config's when the checkpoint had no generation_config.json); no pad id -> the first eos id.
    eos = as_id_tuple(gc.eos_token_id)
    pad = gc.pad_token_id if gc.pad_token_id is not None else (eos[0] if eos else 0)
    stops = gc.stop_strings
    stops = () if stops is None else (stops,) if isinstance(stops, str) else tuple(stops)
    if any(not isinstance(x, str) or not x for x in stops):
        raise _field_error("stop_strings", gc.stop_strings, "must be non-empty strings", "Remove the empty string.")
    if gc.seed is not None and not isinstance(gc.seed, (int, np.integer)):
        raise _field_error("seed", gc.seed, "must be an integer", "Pass e.g. seed=0.")

    return GenerationSettings(
        prompt_length=T,
        max_new_tokens=int(N),
        min_new_tokens=int(min_new),
        do_sample=do_sample,
        num_beams=int(beams),
        num_return_sequences=int(nrs),
        length_penalty=float(gc.length_penalty),
        early_stopping=gc.early_stopping,
        repetition_penalty=None if rp is None or rp == 1.0 else float(rp),
        no_repeat_ngram_size=int(ngram),
        bad_words_ids=bad_words,
        forced_bos_token_id=forced_bos,
        forced_eos_token_id=forced_eos,
        remove_invalid_values=bool(gc.remove_invalid_values),
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
        temperature=float(temperature),
        top_k=int(top_k) if top_k else None,
        top_p=None if gc.top_p is None or gc.top_p >= 1.0 else float(gc.top_p),
        min_p=float(gc.min_p) if gc.min_p else None,
        typical_p=None if gc.typical_p is None or gc.typical_p >= 1.0 else float(gc.typical_p),
        epsilon_cutoff=float(gc.epsilon_cutoff) if gc.epsilon_cutoff else None,
        eta_cutoff=float(gc.eta_cutoff) if gc.eta_cutoff else None,
        min_tokens_to_keep=(len(eos) + 1 if eos else 2) if beams > 1 else 1,
        renormalize_logits=bool(gc.renormalize_logits),
        eos_token_id=tuple(eos),
        pad_token_id=int(pad),
        stop_strings=stops,
        return_dict_in_generate=bool(gc.return_dict_in_generate),
        output_scores=bool(gc.output_scores),
        output_logits=bool(gc.output_logits),
        seed=None if gc.seed is None else int(gc.seed),
        has_custom_processors=bool(has_custom_processors),
    )


def make_generation_config(config: GPT2Config, prompt_length: int, **kwargs: Any) -> GenerationSettings:
    """`resolve_generation` with keyword fields only (the older name, kept for callers)."""
    return resolve_generation(config, prompt_length, **kwargs)


def check_stop_strings(settings: GenerationSettings, tokenizer: Any) -> None:
    """stop_strings need the tokenizer (to see text): the same error in every backend, as transformers."""
    if settings.stop_strings and tokenizer is None:
        raise ValueError(
            f"stop_strings need the tokenizer to read the generated text. Received: "
            f"stop_strings={list(settings.stop_strings)}, tokenizer=None. Pass generate(..., tokenizer=tok)."
        )


def process_logits(logits: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    """Temperature, top-k, top-p on (B, V) logits (float64; removed tokens -inf): the sampling warpers of
    `gpt2_core.logits_process`, for a GenerationConfig or GenerationSettings (top_k 0 / None and top_p >= 1 are off)."""
    from gpt2_core import logits_process

    x = logits_process.temperature(np.asarray(logits, dtype=np.float64), gen.temperature)
    if gen.top_k:
        x = logits_process.top_k(x, gen.top_k)
    if gen.top_p is not None and gen.top_p < 1.0:
        x = logits_process.top_p(x, gen.top_p)
    return x


def reference_greedy(params, config: GPT2Config, input_ids: np.ndarray, attention_mask: np.ndarray | None, gen: GenerationSettings) -> np.ndarray:
    """Greedy decoding with gpt2_core.reference (float64, uncached), every processor of `gen` included: the oracle
    for every backend's generate (`gpt2_core.generation_reference.reference_generate`, sequences only)."""
    import dataclasses

    from gpt2_core.generation_reference import reference_generate

    settings = dataclasses.replace(gen, do_sample=False, num_beams=1, num_return_sequences=1)
    return reference_generate(params, config, input_ids, attention_mask, settings)["sequences"]


class StopStringMatcher:
    """Where a row's text first completes a stop string: transformers' `StopStringCriteria` rule, on the host.

    A stop string completes at token i when an occurrence of it (in the bytes of the whole row, prompt included)
    ends inside token i's bytes; only generated tokens count (an occurrence ending in the prompt does not stop).
    Tokens are compared as bytes, so a stop string split across tokens, or ending inside a token ("stop" in
    " stops"), is found. The backends call `first_stop` between chunks of their compiled loop and treat the row
    as finished after that token (it then receives `pad_token_id`, like after an eos id).

    Args:
        tokenizer: This library's tokenizer or a transformers GPT-2 tokenizer (ids -> byte-level token strings).
        stop_strings: Non-empty strings.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        self.stops = tuple(s.encode("utf-8") for s in stop_strings)
        self._tokenizer = tokenizer
        self._bytes: dict[int, bytes] = {}
        table = getattr(tokenizer, "_token_bytes", None)
        self._table = table if isinstance(table, (list, tuple, dict)) else None
        from gpt2_core.tokenization_bpe import bytes_to_unicode

        self._byte_decoder = {c: b for b, c in bytes_to_unicode().items()}

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes token `token_id` stands for."""
        if token_id not in self._bytes:
            if self._table is not None:
                raw = self._table[token_id]
            else:
                token = self._tokenizer.convert_ids_to_tokens(int(token_id))
                token = "" if token is None else token
                if all(c in self._byte_decoder for c in token):
                    raw = bytes(self._byte_decoder[c] for c in token)
                else:  # an added or special token: its text
                    raw = token.encode("utf-8")
            self._bytes[token_id] = raw
        return self._bytes[token_id]

    def first_stop(self, row: Sequence[int], start: int) -> int | None:
        """The first index i >= start of `row` (the prompt and the generated ids) whose token completes a stop
        string, or None."""
        import bisect

        pieces = [self.token_bytes(int(t)) for t in row]
        ends = list(np.cumsum([len(b) for b in pieces]))  # ends[i]: byte offset after token i
        text = b"".join(pieces)
        begin = ends[start - 1] if start > 0 else 0  # occurrences must end after this offset
        best: int | None = None
        for stop in self.stops:
            pos = text.find(stop, max(0, begin - len(stop) + 1))
            while pos != -1:
                end = pos + len(stop)
                if end > begin:
                    i = bisect.bisect_left(ends, end)  # the token whose bytes contain offset end - 1
                    best = i if best is None else min(best, i)
                    break
                pos = text.find(stop, pos + 1)
        return best


def infer_attention_mask(
    input_ids: np.ndarray, pad_token_id: int | None, eos_token_id: Sequence[int]
) -> tuple[np.ndarray, str | None]:
    """The attention mask `generate` uses when the caller passes none: transformers' rule, plus a warning.

    With a pad id that occurs in the prompt and is not an eos id, the mask is `input_ids != pad_token_id` (the
    padding is ignored, as in transformers). When the pad id is also an eos id (GPT-2's usual setup) the padding
    cannot be told from a real end-of-text token: the mask is all ones and the returned warning says so (the
    backend logs it) instead of silently generating from padding.

    Returns:
        mask (B, T) int32, and a warning text or None.
    """
    ids = np.asarray(input_ids)
    ones = np.ones(ids.shape, np.int32)
    if pad_token_id is None or not np.any(ids == pad_token_id):
        return ones, None
    if pad_token_id in tuple(eos_token_id):
        return ones, (
            f"The prompt holds pad_token_id={pad_token_id}, which is also an eos id, and no attention_mask was "
            "passed: every token is attended to. If the batch is padded, pass the tokenizer's attention_mask."
        )
    return (ids != pad_token_id).astype(np.int32), None
