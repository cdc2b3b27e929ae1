"""Cached decoding for gpt2_torch: one prefill, then one token per step through a preallocated `KVCache`.

Follows gpt2_core.generation: argument checks (`make_generation_config`), the decoding plan (`plan_decoding`: the
prompt is left-padded to a bucket and the cache holds `plan.cache_length` slots, `pad_prompt` builds the
whole-buffer mask), the logit processing order, stopping, padding and trimming. Position ids of left-padded prompts
follow gpt2_core.reference. Every step has the same shapes (a one-token input, the (B, S_max) mask, the same
buffers), so `torch.compile` can take the step later.

The loop never reads the device on the host per step: the model's step skips its host-reading input checks
(`GPT2LMHeadModel._decode_step`), and with eos ids the "every row finished" test is read only every
`STOP_CHECK_EVERY` steps; steps run past the end are cut off (they only add padding). Dropout is off for the call
without changing the model's train/eval mode.
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2_core import checks
from gpt2_core.generation import GenerationConfig, make_generation_config, pad_prompt, plan_decoding
from gpt2_torch.cache import KVCache

# How often (in steps) the loop reads "has every row finished?" on the host: rarer means fewer device syncs, at
# the cost of up to this many - 1 steps computed after the end (their tokens are padding and are cut off).
STOP_CHECK_EVERY = 8


def process_logits(logits: torch.Tensor, gen: GenerationConfig) -> torch.Tensor:
    """gpt2_core.generation.process_logits in torch: temperature, top-k, top-p on (B, V) float32 logits."""
    x = logits.float() / gen.temperature
    fill = torch.finfo(x.dtype).min
    if gen.top_k is not None and gen.top_k < x.shape[-1]:
        kth = torch.topk(x, gen.top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, fill)
    if gen.top_p is not None:
        sorted_x, order = torch.sort(x, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_x, dim=-1)
        keep_sorted = (torch.cumsum(probs, -1) - probs) < gen.top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        x = x.masked_fill(~keep, fill)
    return x


def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    **unused: Any,
) -> torch.Tensor:
    """Generate tokens after `input_ids` (B, T); returns (B, T + generated) like transformers' `generate`.

    Args:
        model: A GPT2LMHeadModel (its train/eval mode is left as it is; dropout is off while generating).
        input_ids: Prompt ids; a batch of different lengths is left-padded, with `attention_mask`.
        attention_mask: (B, T) 1 for tokens, 0 for padding.
        max_new_tokens: Tokens to add (default 20); `max_length` (prompt + new) is the older form.
        do_sample: Sample (with temperature / top_k / top_p) instead of greedy.
        eos_token_id: Stops a row; default: the config's.
        pad_token_id: Written after a row stopped; default: the config's pad, else eos.
        seed: Seeds the sampler (a fresh `torch.Generator`), for reproducible sampling.
        generator: Or pass a generator.
    """
    if unused:
        raise TypeError(f"generate() got unsupported arguments. Received: {sorted(unused)}.")
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    B, T = input_ids.shape
    gen = make_generation_config(
        model.config, T, max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed,
    )
    device = model.device
    input_ids = input_ids.to(device)
    if gen.do_sample and generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(gen.seed if gen.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    with torch.inference_mode():
        generated = _decode(model, input_ids, attention_mask, gen, generator)  # (B, steps)
    # Outside inference mode, so the result is an ordinary tensor (usable later in autograd, e.g. as labels).
    return torch.cat([input_ids, generated], dim=1)


def _decode(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, gen: GenerationConfig,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """Prefill and decode on gpt2_core.generation's plan; returns the generated columns (B, steps)."""
    B, T = input_ids.shape
    device = input_ids.device
    plan = plan_decoding(model.config, B, T, gen.max_new_tokens)
    mask = None if attention_mask is None else attention_mask.detach().cpu().numpy()
    prompt = input_ids.cpu().numpy()
    # The forward's checks on the caller's prompt, once (the decode steps run unchecked).
    checks.check_model_inputs(
        model.config, input_ids=prompt, input_shape=prompt.shape, inputs_embeds_shape=None,
        attention_mask_shape=None if mask is None else mask.shape, position_ids=None, position_ids_shape=None,
        token_type_ids_shape=None, past_length=0,
    )
    ids, mask = pad_prompt(plan, prompt, mask)  # (B, Tb), (B, S_max)
    ids = torch.from_numpy(ids).to(device=device, dtype=input_ids.dtype)
    mask = torch.from_numpy(mask).to(device=device, dtype=input_ids.dtype)
    cache = KVCache.init(model.config, B, plan.cache_length, dtype=model.dtype, device=device)
    eos = torch.tensor(gen.eos_token_id or [-1], device=device)
    check_stop = bool(gen.eos_token_id)  # without eos no row ever finishes: never read `done`
    logits, cache = model._decode_step(ids, cache, mask)  # prefill
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens, all_done = [], []
    for step in range(gen.max_new_tokens):
        if gen.do_sample:
            probs = torch.softmax(process_logits(logits, gen), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = torch.argmax(logits, dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, gen.pad_token_id), nxt)
        tokens.append(nxt)
        done = done | torch.isin(nxt, eos)
        all_done.append(done.all())
        if step == gen.max_new_tokens - 1:
            break
        if check_stop and step % STOP_CHECK_EVERY == STOP_CHECK_EVERY - 1 and bool(all_done[-1]):
            break
        logits, cache = model._decode_step(nxt[:, None].to(ids.dtype), cache, mask)
    generated = torch.stack(tokens, dim=1)  # (B, steps run)
    if check_stop:
        # gpt2_core.generation's trimming: up to the first step after which every row had finished
        finished = torch.stack(all_done).nonzero()
        if finished.numel():
            generated = generated[:, : int(finished[0, 0]) + 1]
    return generated
