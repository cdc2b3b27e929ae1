"""XLA-compiled cached decoding for gpt2_tf: prefill and the whole decode loop in one `tf.function(jit_compile=True)`.

* The shapes follow `gpt2_core.generation.plan_decoding` (the one decoding plan of every backend): the prompt is
  left-padded to its bucket and the `gpt2_tf.cache.KVCache` preallocated for the prompt bucket plus the new-token
  bucket (`pad_prompt`), within `n_positions`. So a new prompt length or `max_new_tokens` in the same buckets does
  not recompile. The attention mask covers the whole buffer, new slots included (they are hidden causally until
  written), so it is loop-invariant; the loop carries the KVCache, whose filled length is the write index.
* Every shape inside the loop is static (position ids are `length + arange(T)`, not a slice at a moving start): a
  dynamic size makes XLA pad each step to the buffer length (8x slower here) and, in TF 2.21, mis-compile the cache
  update. The real `max_new_tokens`, temperature, top-p, eos/pad ids and seed are tensors, so they do not recompile
  either; one compiled function is kept per (do_sample, top_k, top_p on/off) and traced per (batch, prompt bucket,
  cache length).
* Semantics are gpt2_core.generation's: argument checks (`make_generation_config`), logit processing in
  transformers' order (temperature, top-k, top-p), greedy = first maximum, a row stops at an eos id and then gets
  `pad_token_id`, and the output is cut after the last step any row needed. Sampling draws Gumbel noise from a
  stateless RNG keyed by (seed, step), so a seed reproduces a draw exactly (random streams differ from torch's).

References: gpt2_core.generation; keras-hub `GPT2CausalLM.generate_step` (one cache tensor updated at an index);
Flax `examples/gemma` sampler.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from gpt2_core import checks
from gpt2_core.generation import GenerationConfig, make_generation_config, pad_prompt, plan_decoding
from gpt2_tf.cache import KVCache

logger = logging.getLogger(__name__)

# model -> {(do_sample, top_k, top_p on): tf.function}
_COMPILED: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


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


def _compiled(model, key: tuple) -> Any:
    fns = _COMPILED.setdefault(model, {})
    if key not in fns:
        do_sample, top_k, use_top_p = key

        def run(input_ids, attention_mask, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id, seed):
            return decode_loop(
                model, input_ids, attention_mask, max_new_tokens, temperature, top_p, eos_token_id, pad_token_id, seed,
                do_sample=do_sample, top_k=top_k, use_top_p=use_top_p,
            )

        fns[key] = tf.function(run, jit_compile=True, reduce_retracing=False)
    return fns[key]


def trace_count(model) -> int:
    """How many times this model's generate functions were traced (and so compiled): for no-recompile tests."""
    return sum(fn.experimental_get_tracing_count() for fn in _COMPILED.get(model, {}).values())


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
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    seed: int | None = None,
    **unused: Any,
) -> tf.Tensor:
    """Generate tokens after `input_ids` (B, T); returns (B, T + generated) like transformers' `generate`.

    Runs eagerly around one XLA-compiled function (see the module docstring for bucketing and caching).

    Args:
        model: A TFGPT2LMHeadModel.
        input_ids: Prompt ids (tensor, NumPy or list); a batch of different lengths is left-padded, with
            `attention_mask`.
        attention_mask: (B, T) 1 for tokens, 0 for padding.
        max_new_tokens: Tokens to add (default 20); `max_length` (prompt + new) is the older form.
        do_sample: Sample (with temperature / top_k / top_p) instead of greedy.
        eos_token_id: Stops a row; default: the config's.
        pad_token_id: Written after a row stopped; default: the config's pad, else eos.
        seed: Seeds the stateless sampler, for reproducible sampling.
    """
    if unused:
        raise TypeError(f"generate() got unsupported arguments. Received: {sorted(unused)}.")
    if not hasattr(model, "lm_logits"):
        raise TypeError(f"generate needs a model with an LM head. Received: {type(model).__name__}.")
    out_dtype = input_ids.dtype if tf.is_tensor(input_ids) else tf.int64
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if ids.dtype.kind not in "iu":
        raise TypeError(f"input_ids must hold integer token ids. Received: input_ids.dtype={ids.dtype}.")
    B, T = ids.shape
    gen = make_generation_config(
        model.config, T, max_new_tokens=max_new_tokens, max_length=max_length, do_sample=do_sample,
        temperature=temperature, top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
        seed=seed,
    )
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    if mask.ndim == 1:
        mask = mask[None]
    checks.check_model_inputs(
        model.config, input_ids=ids, input_shape=ids.shape, inputs_embeds_shape=None, attention_mask_shape=mask.shape,
        position_ids=None, position_ids_shape=None, token_type_ids_shape=None, past_length=0,
    )
    plan = plan_decoding(model.config, B, T, gen.max_new_tokens)
    padded_ids, buffer_mask = pad_prompt(plan, ids, mask)  # (B, Tb), (B, S_max)
    key = (gen.do_sample, gen.top_k if gen.do_sample else None, gen.do_sample and gen.top_p is not None)
    tokens, n = _compiled(model, key)(tf.constant(padded_ids), tf.constant(buffer_mask), **_generation_tensors(gen))
    new = tf.cast(tokens[:, : int(n)], out_dtype)
    return tf.concat([tf.constant(ids, dtype=out_dtype), new], axis=1)


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
