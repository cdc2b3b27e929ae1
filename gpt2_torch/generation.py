"""Cached decoding for gpt2_torch: transformers v5's `generate` for GPT-2 (greedy, sampling, beam search, beam
sampling) on one prefill and a preallocated `KVCache`.

Follows gpt2_core.generation: the arguments resolve once (`resolve_generation`: the model's `generation_config`,
the caller's `generation_config`, then keywords), the decoding plan (`plan_decoding`: the prompt is left-padded to
a bucket and the cache holds `plan.cache_length` slots, `pad_prompt` builds the whole-buffer mask), the processor
order (`gpt2_torch.logits_process`), stopping, padding and trimming. Position ids of left-padded prompts follow
gpt2_core.reference. Every step has the same shapes (a one-token input, the (B, S_max) mask, the same buffers).

The processors see a token history `seqs` (B, T + N): the caller's prompt columns as given, then the generated
ids, never the plan's extra padding. Prompts are expanded to `max(num_beams, num_return_sequences)` rows each
(`repeat_interleave`, as transformers).

Greedy and sampling never read the device on the host per step: the model's step skips its host-reading input
checks (`GPT2LMHeadModel._decode_step`) and the "every row finished" test is read only every `STOP_CHECK_EVERY`
steps; steps run past the end are cut off (they only add padding). A streamer or stop strings need the tokens on
the host, so they read every step (as transformers does). Sampling draws with `torch.multinomial` from torch's
global RNG, exactly as transformers does (same seed, same weights: same tokens), unless `seed=` or `generator=`
is given. Beam search is transformers v5's vectorized `_beam_search`, step for step; the cache is reordered by
beam into new buffers (`KVCache.reorder`: the buffers are written in place). Dropout is off for the call without
changing the model's train/eval mode. With `cache_implementation="static"` the per-token step is `torch.compile`d
under transformers v5's rule (CUDA / XPU, or a `compile_config` with `_compile_all_devices`; `disable_compile`):
`_decode_step_function`.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gpt2_core import checks
from gpt2_core.generation import (
    GenerationConfig,
    GenerationSettings,
    StopStringMatcher,
    check_stop_strings,
    infer_attention_mask,
    pad_prompt,
    plan_decoding,
    resolve_generation,
)
from gpt2_core.logits_process import padding_lengths
from gpt2_core.outputs import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from gpt2_torch.cache import KVCache
from gpt2_torch.logits_process import apply_processors, processor_values

logger = logging.getLogger(__name__)

# How often (in steps) the loop reads "has every row finished?" on the host: rarer means fewer device syncs, at
# the cost of up to this many - 1 steps computed after the end (their tokens are padding and are cut off).
STOP_CHECK_EVERY = 8

StoppingCriterion = Callable[[torch.Tensor, torch.Tensor], Any]


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    generation_config: GenerationConfig | None = None,
    *,
    logits_processor: Sequence[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] | None = None,
    stopping_criteria: Sequence[StoppingCriterion] | None = None,
    streamer: Any = None,
    tokenizer: Any = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> torch.Tensor | GenerateDecoderOnlyOutput | GenerateBeamDecoderOnlyOutput:
    """Generate tokens after `input_ids` (B, T), as transformers' `generate`: returns (B * num_return_sequences,
    T + generated) ids, or with `return_dict_in_generate=True` a `GenerateDecoderOnlyOutput` (greedy, sampling) or
    `GenerateBeamDecoderOnlyOutput` (beam search).

    Args:
        model: A GPT2LMHeadModel (its train/eval mode is left as it is; dropout is off while generating). Its
            `generation_config` is the base the call's settings start from.
        input_ids: Prompt ids; a batch of different lengths is left-padded, with `attention_mask`.
        attention_mask: (B, T) 1 for tokens, 0 for padding. Without it, transformers' rule infers one from
            `pad_token_id` (`gpt2_core.generation.infer_attention_mask`; its warning is logged).
        generation_config: A `GenerationConfig`; its non-default fields override the model's.
        logits_processor: transformers-style callables `f(input_ids, scores) -> scores` (a transformers
            `LogitsProcessorList` works), applied after the built-in processors and before the sampling warpers.
        stopping_criteria: Callables `f(input_ids, scores) -> bool tensor (B,)` (transformers' `StoppingCriteria`):
            a row whose criterion is True is finished.
        streamer: `put(prompt_ids)`, `put(step_tokens)` per step, `end()` (transformers' protocol, e.g.
            `transformers.TextStreamer`); not with beam search.
        tokenizer: Needed by `stop_strings`.
        seed: Seeds the sampler (a fresh `torch.Generator`), for reproducible sampling.
        generator: Or pass a generator. Without either, sampling draws from torch's global RNG as transformers does.
        **kwargs: Any `GenerationConfig` field (`max_new_tokens`, `do_sample`, `num_beams`, `top_p`, ...).
    """
    input_ids = torch.as_tensor(input_ids)
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    step = _decode_step_function(model, generation_config, kwargs)
    custom = list(logits_processor or ())
    criteria = list(stopping_criteria or ())
    settings = resolve_generation(
        model.config, T, generation_config, model_generation_config=getattr(model, "generation_config", None),
        has_custom_processors=bool(custom), seed=seed, **kwargs,
    )
    check_stop_strings(settings, tokenizer)
    if settings.is_beam and settings.stop_strings:
        raise ValueError(
            f"stop_strings are not implemented with beam search. Received: stop_strings="
            f"{list(settings.stop_strings)}, num_beams={settings.num_beams}. Use num_beams=1, or cut the text after."
        )
    if settings.is_beam and streamer is not None:
        raise ValueError(
            f"A streamer cannot be used with beam search (as in transformers). Received: num_beams="
            f"{settings.num_beams}, streamer={type(streamer).__name__}. Set num_beams=1 to stream."
        )
    for f in custom + criteria:
        if not callable(f):
            raise TypeError(
                f"logits_processor and stopping_criteria hold callables f(input_ids, scores). Received: "
                f"{type(f).__name__}. Pass e.g. transformers' LogitsProcessorList / StoppingCriteriaList items."
            )
    device = model.device
    prompt = input_ids.cpu().numpy()
    # The forward's checks on the caller's prompt, once (the decode steps run unchecked).
    checks.check_model_inputs(
        model.config, input_ids=prompt, input_shape=prompt.shape, inputs_embeds_shape=None,
        attention_mask_shape=None if attention_mask is None else tuple(attention_mask.shape), position_ids=None,
        position_ids_shape=None, token_type_ids_shape=None, past_length=0,
    )
    if attention_mask is None:
        mask, warning = infer_attention_mask(prompt, settings.pad_token_id, settings.eos_token_id)
        if warning:
            logger.warning(warning)
    else:
        mask = torch.as_tensor(attention_mask).detach().cpu().numpy().astype(np.int64)
    expand = max(settings.num_beams, settings.num_return_sequences)  # transformers' expansion of the prompt
    prompt, mask = np.repeat(prompt, expand, axis=0), np.repeat(mask, expand, axis=0)  # (B', T)
    ids = torch.as_tensor(prompt, dtype=torch.long).to(device)
    if streamer is not None:
        streamer.put(ids.cpu())
    if settings.do_sample and generator is None and settings.seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed)
    # the repetition penalty skips each row's leading padding (transformers v5's `prompt_ignore_length`)
    values = processor_values(
        settings, model.config.vocab_size, device, torch.from_numpy(padding_lengths(mask)).to(device)
    )
    processors = _Processors(settings, values, custom)
    with torch.inference_mode():
        if settings.is_beam:
            out = _beam_search(model, ids, mask, settings, processors, criteria, generator, step)
        else:
            matcher = StopStringMatcher(tokenizer, settings.stop_strings) if settings.stop_strings else None
            out = _sample(model, ids, mask, settings, processors, criteria, generator, streamer, matcher, step)
    if streamer is not None:
        streamer.end()
    # Outside inference mode, so the results are ordinary tensors (usable later in autograd, e.g. as labels).
    if isinstance(out, GenerateBeamDecoderOnlyOutput):
        out.sequences = out.sequences.clone()
        out.beam_indices = out.beam_indices.clone()
        out.sequences_scores = None if out.sequences_scores is None else out.sequences_scores.clone()
    else:
        out.sequences = torch.cat([ids, out.sequences], dim=1)
    out.scores = None if out.scores is None else tuple(x.clone() for x in out.scores)
    out.logits = None if out.logits is None else tuple(x.clone() for x in out.logits)
    return out if settings.return_dict_in_generate else out.sequences


class _Processors:
    """One call's processors: `(input_ids, scores) -> scores` on the device."""

    def __init__(self, settings: GenerationSettings, values: dict[str, Any], custom: Sequence[Callable]) -> None:
        self.settings, self.values, self.custom = settings, values, tuple(custom)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return apply_processors(scores, input_ids, self.settings, self.values, self.custom)


# transformers' `CompileConfig` defaults (generation/configuration_utils.py)
COMPILE_DEFAULTS = {"fullgraph": False, "dynamic": None, "backend": "inductor", "mode": "reduce-overhead",
                    "options": None}
_COMPILE_KEYS = ("cache_implementation", "compile_config", "disable_compile")


def _compile_setting(name: str, kwargs: dict, generation_config: GenerationConfig | None, model) -> Any:
    """A cache / compile key of transformers' GenerationConfig: the call's keyword, then the caller's
    generation_config, then the model's (these keys live in `GenerationConfig.extra` here)."""
    if kwargs.get(name) is not None:
        return kwargs[name]
    for gc in (generation_config, getattr(model, "generation_config", None)):
        if gc is not None and gc.extra.get(name) is not None:
            return gc.extra[name]
    return None


def compile_options(compile_config: Any) -> dict[str, Any]:
    """`torch.compile` keyword arguments from a transformers `CompileConfig`, a dict of its fields, or None."""
    if compile_config is None:
        return dict(COMPILE_DEFAULTS)
    if isinstance(compile_config, dict):
        data = dict(compile_config)
    else:
        data = {k: getattr(compile_config, k) for k in COMPILE_DEFAULTS if hasattr(compile_config, k)}
    unknown = sorted(set(data) - set(COMPILE_DEFAULTS) - {"_compile_all_devices"})
    if unknown:
        raise ValueError(
            f"compile_config has fields torch.compile does not take. Received: {unknown}. Use "
            f"{sorted(COMPILE_DEFAULTS)} (transformers' CompileConfig)."
        )
    return {**COMPILE_DEFAULTS, **{k: v for k, v in data.items() if k in COMPILE_DEFAULTS}}


def _compile_all_devices(compile_config: Any) -> bool:
    if isinstance(compile_config, dict):
        return bool(compile_config.get("_compile_all_devices"))
    return bool(getattr(compile_config, "_compile_all_devices", False))


def _decode_step_function(model, generation_config: GenerationConfig | None, kwargs: dict) -> Callable:
    """The per-token step: `model._decode_step`, or its `torch.compile`d form under transformers v5's rule
    (`_valid_auto_compile_criteria`): `cache_implementation="static"`, not `disable_compile`, and a CUDA / XPU
    device or a `compile_config` with `_compile_all_devices` (on CPU compiling was measured slower at batch 1, see
    docs/performance.md). Pops the three keys from `kwargs` (they are not decoding fields). The prefill is never
    compiled (one call per `generate`, and another shape). Compiled functions are kept on the model per option set,
    so later calls reuse them."""
    values = {name: _compile_setting(name, kwargs, generation_config, model) for name in _COMPILE_KEYS}
    for name in _COMPILE_KEYS:
        kwargs.pop(name, None)
    cache_implementation, compile_config, disable_compile = (values[n] for n in _COMPILE_KEYS)
    if cache_implementation not in (None, "static", "dynamic"):
        raise ValueError(
            f"Unsupported cache_implementation. Received: cache_implementation={cache_implementation!r}. Use "
            "'static' (preallocated, compilable: what every call here uses) or None."
        )
    options = compile_options(compile_config)
    device = model.device
    valid_hardware = device.type in ("cuda", "xpu") or _compile_all_devices(compile_config)
    if disable_compile or cache_implementation != "static" or not valid_hardware:
        if compile_config is not None and not disable_compile:
            logger.warning(
                "compile_config is set but the decode step is not compiled: it needs cache_implementation='static' "
                "and a CUDA/XPU device (or compile_config._compile_all_devices=True). Received: "
                "cache_implementation=%r, device=%s.", cache_implementation, device,
            )
        return model._decode_step
    if getattr(model, "quantization_config", None) is not None:
        logger.warning("A quantized model's decode step is not compiled (its int8 kernels are opaque to inductor).")
        return model._decode_step
    key = tuple(sorted((k, repr(v)) for k, v in options.items()))
    compiled = model.__dict__.setdefault("_compiled_decode_steps", {})
    if key not in compiled:
        compiled[key] = torch.compile(model._decode_step, **options)
    return compiled[key]


def _prefill(model, ids: torch.Tensor, mask: np.ndarray, settings: GenerationSettings):
    """The plan, the padded prompt through a fresh cache: logits of the last position (B, V), cache, buffer mask."""
    B, T = ids.shape
    device = ids.device
    plan = plan_decoding(model.config, B, T, settings.max_new_tokens)
    padded, buffer_mask = pad_prompt(plan, ids.cpu().numpy(), mask)  # (B, Tb), (B, S_max)
    padded = torch.from_numpy(padded).to(device=device, dtype=torch.long)
    buffer_mask = torch.from_numpy(buffer_mask).to(device=device, dtype=torch.long)
    cache = KVCache.init(model.config, B, plan.cache_length, dtype=model.dtype, device=device)
    if device.type != "cpu":
        for t in (*cache.key, *cache.value):  # the same addresses every step (CUDA graphs of a compiled step)
            torch._dynamo.mark_static_address(t)
    logits, cache = model._decode_step(padded, cache, buffer_mask)
    return logits, cache, buffer_mask


def _criteria_hits(criteria: Sequence[StoppingCriterion], seqs: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """OR of the caller's stopping criteria on (R, L) rows: (R,) bool on the device."""
    hit = torch.zeros(seqs.shape[0], dtype=torch.bool, device=seqs.device)
    for c in criteria:
        hit = hit | torch.as_tensor(c(seqs, scores), device=seqs.device).to(torch.bool).expand(seqs.shape[0])
    return hit


def _sample(
    model, ids: torch.Tensor, mask: np.ndarray, settings: GenerationSettings, processors: _Processors,
    criteria: Sequence[StoppingCriterion], generator: torch.Generator | None, streamer: Any,
    matcher: StopStringMatcher | None, step_fn: Callable,
) -> GenerateDecoderOnlyOutput:
    """Greedy decoding or sampling (transformers' `_sample`); `sequences` holds the generated columns (B, steps)."""
    B, T = ids.shape
    N = settings.max_new_tokens
    device = ids.device
    seqs = torch.empty((B, T + N), dtype=torch.long, device=device)  # the processors' token history
    seqs[:, :T] = ids
    logits, cache, buffer_mask = _prefill(model, ids, mask, settings)
    eos = torch.tensor(settings.eos_token_id or (-1,), device=device)
    has_eos = bool(settings.eos_token_id)  # transformers writes the pad id after the end only with eos ids
    check_stop = has_eos or bool(criteria) or matcher is not None  # otherwise no row finishes: never read `done`
    on_host = streamer is not None or matcher is not None  # these read the tokens every step anyway
    rows = ids.tolist() if matcher is not None else None
    scores_out: list[torch.Tensor] | None = [] if settings.return_dict_in_generate and settings.output_scores else None
    logits_out: list[torch.Tensor] | None = [] if settings.return_dict_in_generate and settings.output_logits else None
    done = torch.zeros(B, dtype=torch.bool, device=device)
    all_done = []
    steps = 0
    for step in range(N):
        cur_len = T + step
        raw = logits.float()  # (B, V)
        scores = processors(seqs[:, :cur_len], raw)
        if scores_out is not None:
            scores_out.append(scores)
        if logits_out is not None:
            logits_out.append(raw)
        if settings.do_sample:
            probs = F.softmax(scores, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)
        else:
            nxt = torch.argmax(scores, dim=-1)
        if has_eos:
            nxt = torch.where(done, torch.full_like(nxt, settings.pad_token_id), nxt)
        seqs[:, cur_len] = nxt
        steps = step + 1
        if has_eos:
            done = done | torch.isin(nxt, eos)
        if criteria:
            done = done | _criteria_hits(criteria, seqs[:, : cur_len + 1], scores)
        if on_host:
            host = nxt.tolist()
            if matcher is not None:
                finished = done.tolist()
                for i, token in enumerate(host):
                    rows[i].append(token)
                    if not finished[i] and matcher.first_stop(rows[i], cur_len) is not None:
                        finished[i] = True
                done = torch.tensor(finished, dtype=torch.bool, device=device)
            if streamer is not None:
                streamer.put(nxt.cpu())
        all_done.append(done.all())
        if step == N - 1:
            break
        if check_stop and (on_host or step % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1) and bool(all_done[-1]):
            break
        logits, cache = step_fn(nxt[:, None], cache, buffer_mask)
    if check_stop:
        # gpt2_core.generation's trimming: up to the first step after which every row had finished
        finished_at = torch.stack(all_done).nonzero()
        if finished_at.numel():
            steps = int(finished_at[0, 0]) + 1
    return GenerateDecoderOnlyOutput(
        sequences=seqs[:, T : T + steps],
        scores=None if scores_out is None else tuple(scores_out[:steps]),
        logits=None if logits_out is None else tuple(logits_out[:steps]),
    )


def _gather_beams(tensor: torch.Tensor, beam_indices: torch.Tensor) -> torch.Tensor:
    """(B, K, ...) -> (B, K', ...) rows `beam_indices` (B, K') of each prompt (a new tensor)."""
    while beam_indices.dim() < tensor.dim():
        beam_indices = beam_indices.unsqueeze(-1)
    return torch.take_along_dim(tensor, beam_indices, dim=1)


def _beam_search(
    model, ids: torch.Tensor, mask: np.ndarray, settings: GenerationSettings, processors: _Processors,
    criteria: Sequence[StoppingCriterion], generator: torch.Generator | None, step_fn: Callable,
) -> GenerateBeamDecoderOnlyOutput:
    """transformers v5's vectorized beam search (`GenerationMixin._beam_search`, with its helpers inlined in the
    same order): beam search, or beam sampling with `do_sample`. `ids` (B * num_beams, T) is the expanded prompt."""
    s = settings
    K = s.num_beams
    BK, T = ids.shape
    B = BK // K
    N, max_length = s.max_new_tokens, s.max_length
    device = ids.device
    eos = s.eos_token_id
    eos_t = torch.tensor(eos or (-1,), device=device)
    # per prompt the top `keep` continuations, so that num_beams stay unfinished even if the best all hit eos
    keep = max(2, 1 + len(eos)) * K
    top_num_beam_mask = torch.cat(
        (torch.ones(K, dtype=torch.bool), torch.zeros(keep - K, dtype=torch.bool))
    ).to(device)
    # transformers' `pad_token_id or eos_token_id[0] if eos_token_id is not None else -1` (precedence kept: a pad
    # id of 0 gives eos[0])
    fill = (s.pad_token_id or eos[0]) if eos else -1
    running_sequences = torch.full((B, K, max_length), fill, dtype=torch.long, device=device)
    running_sequences[:, :, :T] = ids.view(B, K, T)
    sequences = running_sequences.clone()
    # only the first beam starts alive, so the beams do not all pick the same tokens
    running_beam_scores = torch.zeros((B, K), dtype=torch.float, device=device)
    running_beam_scores[:, 1:] = -1e9
    beam_scores = torch.full((B, K), -1e9, dtype=torch.float, device=device)
    is_sent_finished = torch.zeros((B, K), dtype=torch.bool, device=device)
    is_early_stop_heuristic_unsatisfied = torch.ones((B, 1), dtype=torch.bool, device=device)
    running_beam_indices = torch.full((B, K, N), -1, dtype=torch.int32, device=device)
    beam_indices = running_beam_indices.clone()
    batch_offset = torch.arange(B, device=device).view(-1, 1) * K
    scores_out: list[torch.Tensor] | None = [] if s.return_dict_in_generate and s.output_scores else None
    logits_out: list[torch.Tensor] | None = [] if s.return_dict_in_generate and s.output_logits else None

    logits, cache, buffer_mask = _prefill(model, ids, mask, settings)
    cur_len = T
    for _ in range(N):
        flat_running_sequences = running_sequences[:, :, :cur_len].reshape(BK, cur_len)
        raw = logits.float()  # (B * K, V)
        log_probs = processors(flat_running_sequences, F.log_softmax(raw, dim=-1))
        if logits_out is not None:
            logits_out.append(raw)
        if scores_out is not None:
            scores_out.append(log_probs)
        V = log_probs.shape[-1]
        log_probs = (log_probs.view(B, K, V) + running_beam_scores[:, :, None]).reshape(B, K * V)

        # the top `keep` continuations (or `keep` sampled without replacement, then sorted)
        if s.do_sample:
            topk_indices = torch.multinomial(F.softmax(log_probs, dim=-1), num_samples=keep, generator=generator)
            topk_log_probs = torch.gather(log_probs, 1, topk_indices)
            topk_log_probs, order = topk_log_probs.sort(dim=-1, descending=True)
            topk_indices = topk_indices.gather(-1, order)
        else:
            topk_log_probs, topk_indices = torch.topk(log_probs, k=keep)
        topk_current_beam_indices = topk_indices // V
        topk_running_beam_indices = _gather_beams(running_beam_indices, topk_current_beam_indices)
        topk_running_sequences = _gather_beams(running_sequences, topk_current_beam_indices)
        topk_ids = topk_indices % V
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices[:, :, cur_len - T] = (topk_current_beam_indices + batch_offset).to(torch.int32)

        # which continuations hit a stopping criterion: eos, the length, the caller's
        hits = torch.isin(topk_ids, eos_t) if eos else torch.zeros_like(topk_ids, dtype=torch.bool)
        if cur_len + 1 >= max_length:
            hits = torch.ones_like(hits)
        if criteria:
            flat = topk_running_sequences[:, :, : cur_len + 1].reshape(B * keep, cur_len + 1)
            hits = hits | _criteria_hits(criteria, flat, log_probs).view(B, keep)

        # the best `K` unfinished continuations keep running
        topk_running_log_probs = topk_log_probs + hits.to(torch.float32) * -1.0e9
        next_topk_indices = torch.topk(topk_running_log_probs, k=K)[1]
        running_sequences = _gather_beams(topk_running_sequences, next_topk_indices)
        running_beam_scores = _gather_beams(topk_running_log_probs, next_topk_indices)
        running_beam_indices = _gather_beams(topk_running_beam_indices, next_topk_indices)

        # finished ones among the top `K` enter the `K` best hypotheses, scored with the length penalty
        did_top_num_beams_just_finish = hits & top_num_beam_mask[None, :]
        topk_log_probs = topk_log_probs / ((cur_len + 1 - T) ** s.length_penalty)
        beams_in_batch_are_full = torch.all(is_sent_finished, dim=-1, keepdim=True) & (s.early_stopping is True)
        topk_log_probs += beams_in_batch_are_full.to(torch.float32) * -1.0e9
        topk_log_probs += (~is_early_stop_heuristic_unsatisfied).to(torch.float32) * -1.0e9
        topk_log_probs += (~did_top_num_beams_just_finish) * -1.0e9
        merged_sequences = torch.cat((sequences, topk_running_sequences), dim=1)
        merged_scores = torch.cat((beam_scores, topk_log_probs), dim=1)
        merged_beam_indices = torch.cat((beam_indices, topk_running_beam_indices), dim=1)
        merged_is_sent_finished = torch.cat((is_sent_finished, did_top_num_beams_just_finish), dim=1)
        topk_merged_indices = torch.topk(merged_scores, k=K)[1]
        sequences = _gather_beams(merged_sequences, topk_merged_indices)
        beam_scores = _gather_beams(merged_scores, topk_merged_indices)
        beam_indices = _gather_beams(merged_beam_indices, topk_merged_indices)
        is_sent_finished = _gather_beams(merged_is_sent_finished, topk_merged_indices)

        beam_idx = running_beam_indices[..., cur_len - T].reshape(BK).to(torch.long)  # flat b * K + k
        cur_len = cur_len + 1

        # early stopping (transformers' `_check_early_stop_heuristic`): can a running beam still beat the worst
        # finished hypothesis?
        if s.early_stopping == "never" and s.length_penalty > 0.0:
            best_hypothetical_length = max_length - T
        else:
            best_hypothetical_length = cur_len - T
        best_possible_running_score = running_beam_scores[:, :1] / (best_hypothetical_length ** s.length_penalty)
        worst_finished_score = torch.where(
            is_sent_finished, torch.min(beam_scores, dim=1, keepdim=True)[0], -1.0e9
        )
        is_early_stop_heuristic_unsatisfied = is_early_stop_heuristic_unsatisfied & torch.any(
            best_possible_running_score > worst_finished_score, dim=-1, keepdim=True
        )
        improvement_possible = torch.any(is_early_stop_heuristic_unsatisfied)
        exists_open_beam = ~(torch.all(is_sent_finished) & (s.early_stopping is True))
        valid_continuations = ~torch.all(hits)
        if not bool(improvement_possible & exists_open_beam & valid_continuations):
            break
        cache = cache.reorder(beam_idx)
        logits, cache = step_fn(running_sequences[:, :, cur_len - 1].reshape(BK, 1), cache, buffer_mask)

    nrs = s.num_return_sequences
    sequences = sequences[:, :nrs].reshape(B * nrs, max_length)
    beam_scores = beam_scores[:, :nrs].reshape(B * nrs)
    beam_indices = beam_indices[:, :nrs].reshape(B * nrs, N)
    # the generated length: beam_indices stay -1 after a hypothesis ended
    max_generated_length = int((beam_indices + 1).bool().sum(dim=1).max())
    return GenerateBeamDecoderOnlyOutput(
        sequences=sequences[:, : T + max_generated_length],
        sequences_scores=beam_scores if s.output_scores else None,
        scores=None if scores_out is None else tuple(scores_out),
        logits=None if logits_out is None else tuple(logits_out),
        beam_indices=beam_indices[:, :max_generated_length],
    )
