"""Compiled cached decoding for gpt2_flax: one prefill and a `lax.while_loop` over a preallocated KV cache, in one
`jax.jit` program.

Follows gpt2_core.generation: the decoding plan (`plan_decoding`: prompt and new-token buckets, cache length;
`pad_prompt`: left padding and the whole-buffer attention mask), argument checks, logit processing order, stopping,
padding and trimming rules; and gpt2_core.reference (position ids of left-padded prompts), like gpt2_torch and
gpt2_tf. What is left here is JAX's step, sampler and loop:

* The cache is a `gpt2_flax.cache.KVCache` of `plan.cache_length` slots: per layer k and v (B, N, S_max, H) written
  with `dynamic_update_slice` at the filled length; attention runs over the whole buffer, future slots masked by
  position (causal mask).
* The parameters are an argument of the compiled program (`nnx.split`), not constants baked into it, so one program
  serves any weights of the same model structure.
* Shapes come from the plan's buckets; the real `max_new_tokens`, eos ids, temperature, top_k and top_p are traced
  values. Each (batch, prompt bucket, new-token bucket, greedy or sampling) compiles once and is cached by `jax.jit`.

References: flax `examples/gemma/sampler.py` (cache layout, split parameters); keras-hub `samplers/`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import checks
from gpt2_core.generation import GenerationConfig, make_generation_config, pad_prompt, plan_decoding
from gpt2_flax.cache import KVCache

_traces = 0


def trace_count() -> int:
    """How many times the decode program has been traced (= compiled), over all models and shapes."""
    return _traces


def process_logits(logits: jax.Array, gen: GenerationConfig) -> jax.Array:
    """gpt2_core.generation.process_logits in JAX: temperature, top-k, top-p on (B, V) float32 logits.

    `gen.temperature`, `gen.top_k` and `gen.top_p` may be traced values (None: that filter is off), so one
    compiled sampler serves every setting. One descending sort serves both filters: top-k removes a tail of the
    sorted order, so the order stays valid for top-p (the removed tokens have probability 0 there).
    """
    x = logits.astype(jnp.float32) / gen.temperature
    fill = jnp.finfo(x.dtype).min
    if gen.top_k is None and gen.top_p is None:
        return x
    B, V = x.shape
    order = jnp.argsort(-x, axis=-1, stable=True)  # descending, ties in index order
    sorted_x = jnp.take_along_axis(x, order, axis=-1)
    if gen.top_k is not None:
        kth = jnp.take(sorted_x, jnp.clip(gen.top_k, 1, V) - 1, axis=-1)[:, None]  # the k-th largest
        x = jnp.where(x < kth, fill, x)
        sorted_x = jnp.where(sorted_x < kth, fill, sorted_x)
    if gen.top_p is not None:
        probs = jax.nn.softmax(sorted_x, axis=-1)
        # keep a token if the mass before it is still below top_p (so the first token is always kept)
        keep_sorted = (jnp.cumsum(probs, -1) - probs) < gen.top_p
        keep = jnp.zeros_like(keep_sorted).at[jnp.arange(B)[:, None], order].set(keep_sorted)
        x = jnp.where(keep, x, fill)
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


@functools.partial(jax.jit, static_argnames=("structure", "new_bucket", "do_sample"))
def _generate(
    structure: _Structure,
    state: Any,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    max_new_tokens: jax.Array,
    eos: jax.Array,
    pad: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    key: jax.Array,
    *,
    new_bucket: int,
    do_sample: bool,
) -> tuple[jax.Array, jax.Array]:
    global _traces
    _traces += 1  # runs only while tracing
    model = nnx.merge(structure.graphdef, state)
    B, S_max = attention_mask.shape  # the plan's whole-buffer mask: padding, the prompt's mask, 1 per new slot
    # Sampling settings are traced: top_k = V and top_p = 2 (no filtering) stand for "off".
    gen = GenerationConfig(do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p)
    cache = KVCache.init(model.config, B, S_max, model.dtype)

    def step(tokens: jax.Array, cache: KVCache, i: jax.Array) -> tuple[jax.Array, KVCache]:
        out = model.transformer(
            tokens, past_key_values=cache, attention_mask=attention_mask, use_cache=True, deterministic=True
        )
        logits = model.lm_logits(out.last_hidden_state[:, -1])  # (B, V): the head on the last position only
        if gen.do_sample:
            nxt = jax.random.categorical(jax.random.fold_in(key, i), process_logits(logits, gen), axis=-1)
        else:
            nxt = jnp.argmax(logits, axis=-1)
        return nxt.astype(jnp.int32), out.past_key_values

    nxt, cache = step(input_ids, cache, jnp.int32(0))  # prefill: the whole prompt at once
    done = jnp.isin(nxt, eos)
    generated = jnp.full((B, new_bucket), pad, jnp.int32).at[:, 0].set(nxt)

    def cond(carry):
        i, _, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, generated, last, done, cache = carry
        nxt, cache = step(last[:, None], cache, i)
        nxt = jnp.where(done, pad, nxt)
        generated = jax.lax.dynamic_update_slice(generated, nxt[:, None], (0, i))
        return i + 1, generated, nxt, done | jnp.isin(nxt, eos), cache

    n, generated, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), generated, nxt, done, cache))
    return generated, n


def generate(
    model,
    input_ids: Any,
    attention_mask: Any = None,
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
    prng_key: jax.Array | None = None,
    **unused: Any,
) -> jax.Array:
    """Generate tokens after `input_ids` (B, T); returns (B, T + generated) int32 like transformers' `generate`.

    Args:
        model: A FlaxGPT2LMHeadModel.
        input_ids: Prompt ids (array-like); a batch of different lengths is left-padded, with `attention_mask`.
        attention_mask: (B, T) 1 for tokens, 0 for padding.
        max_new_tokens: Tokens to add (default 20); `max_length` (prompt + new) is the older form.
        do_sample: Sample (with temperature / top_k / top_p) instead of greedy.
        eos_token_id: Stops a row; default: the config's.
        pad_token_id: Written after a row stopped; default: the config's pad, else eos.
        seed: Seeds the sampler (`jax.random.key(seed)`), for reproducible sampling.
        prng_key: Or pass a JAX PRNG key.
    """
    if unused:
        raise TypeError(f"generate() got unsupported arguments. Received: {sorted(unused)}.")
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence). Received: input_ids.shape={ids.shape}.")
    B, T = ids.shape
    config = model.config
    gen = make_generation_config(
        config, T, max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed,
    )
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    # The forward's checks, eagerly: inside the compiled program the values are not known.
    checks.check_model_inputs(
        config, input_ids=ids, input_shape=ids.shape, inputs_embeds_shape=None, attention_mask_shape=mask.shape,
        position_ids=None, position_ids_shape=None, token_type_ids_shape=None, past_length=0,
    )
    plan = plan_decoding(config, B, T, gen.max_new_tokens)
    # Left-pad (gpt2_core.generation.PROMPT_PAD_ID; those keys are masked out); the mask covers the whole buffer.
    padded_ids, buffer_mask = pad_prompt(plan, ids, mask)
    if prng_key is None:
        prng_key = jax.random.key(gen.seed if gen.seed is not None else int(np.random.default_rng().integers(2**31 - 1)))
    graphdef, state = nnx.split(model)
    generated, n = _generate(
        _Structure(graphdef, config),
        state,
        jnp.asarray(padded_ids),
        jnp.asarray(buffer_mask),
        jnp.int32(gen.max_new_tokens),
        jnp.asarray(gen.eos_token_id or (-1,), jnp.int32),
        jnp.int32(gen.pad_token_id),
        jnp.float32(gen.temperature),
        jnp.int32(gen.top_k if gen.top_k is not None else config.vocab_size),
        jnp.float32(gen.top_p if gen.top_p is not None else 2.0),
        prng_key,
        new_bucket=plan.new_bucket,
        do_sample=gen.do_sample,
    )
    return jnp.concatenate([jnp.asarray(ids, jnp.int32), generated[:, : int(n)]], axis=1)
