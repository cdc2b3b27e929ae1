"""Cached decoding for gpt2_torch: prefill once, then one token at a time through `past_key_values`.

Follows gpt2_core.generation (argument checks, logit processing order, stopping and padding rules) and
gpt2_core.reference (position ids of left-padded prompts).
"""

from __future__ import annotations

from typing import Any

import torch

from gpt2_core.generation import GenerationConfig, make_generation_config


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


@torch.no_grad()
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
        model: A GPT2LMHeadModel.
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
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device).to(input_ids.dtype)
    if gen.do_sample and generator is None:
        generator = torch.Generator(device=device)
        generator.manual_seed(gen.seed if gen.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item()))
    eos = torch.tensor(gen.eos_token_id or [-1], device=device)
    was_training = model.training
    model.eval()
    out = model(input_ids, attention_mask=mask, use_cache=True)
    past = out.past_key_values
    logits = out.logits[:, -1, :]
    done = torch.zeros(B, dtype=torch.bool, device=device)
    tokens = []
    for step in range(gen.max_new_tokens):
        if gen.do_sample:
            probs = torch.softmax(process_logits(logits, gen), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)[:, 0]
        else:
            nxt = torch.argmax(logits, dim=-1)
        nxt = torch.where(done, torch.full_like(nxt, gen.pad_token_id), nxt)
        tokens.append(nxt)
        done = done | torch.isin(nxt, eos)
        if bool(done.all()) or step == gen.max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=device)], dim=1)
        out = model(nxt[:, None], past_key_values=past, attention_mask=mask, use_cache=True)
        past = out.past_key_values
        logits = out.logits[:, -1, :]
    model.train(was_training)
    return torch.cat([input_ids, torch.stack(tokens, dim=1)], dim=1)
