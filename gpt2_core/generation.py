"""Decoding decisions shared by every backend, with a NumPy reference decoder to test them against.

* Logit processing, in transformers' order: temperature, then top-k, then top-p (nucleus). Removed tokens get the
  most negative finite value (`reference.attention_mask_fill` of the dtype) so a row never becomes NaN. Top-p keeps
  the smallest set of most likely tokens whose probability reaches `top_p`, and always at least one token.
* Greedy picks the first maximum (`argmax`).
* Stopping: a row is finished once it emits any id in `eos_token_id`; afterwards it receives `pad_token_id`
  (defaulting to the first eos id). Generation ends when every row has finished or `max_new_tokens` are made;
  the result is `prompt + generated`, cut after the last step any row needed (transformers' shape rule).
* Left padding: prompts are padded on the left with an attention mask; position ids follow
  `reference.position_ids_from_attention_mask`, and each generated token extends the mask with a 1.

* The decoding plan (`plan_decoding`), the same in every backend: the prompt is left-padded to
  `bucket_length(T)` columns and the preallocated `KVCache` holds `bucket_length(max_new_tokens)` more slots, so a
  compiled loop sees a few shapes only. Extra left padding changes nothing (padding keys are masked, position ids
  count from the first real token). The buffer never exceeds `n_positions`: near the limit the prompt bucket
  shrinks to `n_positions - max_new_tokens`, then the new-token bucket to what is left (never below the exact
  sizes), so the shapes stay fixed within a bucket. The attention mask covers the whole buffer:
  `[0 * extra padding, the prompt's mask, 1 * new slots]` (future slots are hidden by the causal mask).
* Trimming: the result is the caller's prompt (unpadded) followed by the generated columns up to the last step
  any row needed (`steps`), never the bucket's spare columns.

Random draws differ between frameworks, so only greedy decoding is bit-for-bit comparable across backends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from gpt2_core.config import GPT2Config


@dataclass(frozen=True)
class GenerationConfig:
    """Arguments of `generate`, validated once for every backend.

    Args:
        max_new_tokens: Tokens to generate after the prompt.
        do_sample: Sample instead of greedy argmax.
        temperature: Divides the logits before sampling (> 0).
        top_k: Keep only the k most likely tokens (None or 0: all).
        top_p: Keep the smallest set of tokens whose probability reaches top_p (None or 1.0: all).
        eos_token_id: Id(s) that finish a row; None: the config's.
        pad_token_id: Id written after a row finished; None: the config's pad id, else the first eos id.
        seed: Seed of the sampling RNG.
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    eos_token_id: tuple[int, ...] = ()
    pad_token_id: int = 0
    seed: int | None = None


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


def make_generation_config(
    config: GPT2Config,
    prompt_length: int,
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
) -> GenerationConfig:
    """Validate `generate` arguments (same errors in every backend) and fill defaults from the model config."""
    if max_new_tokens is None:
        max_new_tokens = (max_length - prompt_length) if max_length is not None else 20
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive integer. Received: max_new_tokens={max_new_tokens!r}.")
    if prompt_length + max_new_tokens > config.n_positions:
        raise ValueError(
            f"Sequence length {prompt_length + max_new_tokens} exceeds n_positions={config.n_positions}. "
            f"Received: prompt length {prompt_length}, max_new_tokens={max_new_tokens}. Generate fewer tokens or "
            "crop the prompt."
        )
    if temperature is None or not temperature > 0:
        raise ValueError(f"temperature must be > 0. Received: temperature={temperature!r}. Use do_sample=False for greedy.")
    if top_k is not None and (top_k < 0 or int(top_k) != top_k):
        raise ValueError(f"top_k must be a non-negative integer. Received: top_k={top_k!r}.")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1]. Received: top_p={top_p!r}.")
    if eos_token_id is None:
        eos = config.eos_token_ids
    elif isinstance(eos_token_id, (list, tuple)):
        eos = tuple(int(x) for x in eos_token_id)
    else:
        eos = (int(eos_token_id),)
    if pad_token_id is None:
        pad_token_id = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationConfig(
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(do_sample),
        temperature=float(temperature),
        top_k=int(top_k) if top_k else None,
        top_p=float(top_p) if top_p is not None and top_p < 1.0 else None,
        eos_token_id=eos,
        pad_token_id=int(pad_token_id),
        seed=seed,
    )


def process_logits(logits: np.ndarray, gen: GenerationConfig) -> np.ndarray:
    """Temperature, top-k, top-p on (B, V) logits: the reference each backend's sampler follows."""
    x = np.asarray(logits, dtype=np.float64) / gen.temperature
    fill = np.finfo(x.dtype).min
    if gen.top_k is not None and gen.top_k < x.shape[-1]:
        kth = np.sort(x, axis=-1)[:, -gen.top_k][:, None]
        x = np.where(x < kth, fill, x)
    if gen.top_p is not None:
        order = np.argsort(-x, axis=-1, kind="stable")
        sorted_x = np.take_along_axis(x, order, -1)
        probs = np.exp(sorted_x - sorted_x[:, :1])
        probs /= probs.sum(-1, keepdims=True)
        cum = np.cumsum(probs, -1)
        # keep a token if the mass before it is still below top_p (so the first token is always kept)
        keep_sorted = (cum - probs) < gen.top_p
        keep = np.zeros_like(keep_sorted)
        np.put_along_axis(keep, order, keep_sorted, -1)
        x = np.where(keep, x, fill)
    return x


def reference_greedy(params, config: GPT2Config, input_ids: np.ndarray, attention_mask: np.ndarray | None, gen: GenerationConfig) -> np.ndarray:
    """Greedy decoding with gpt2_core.reference (float64, uncached): the oracle for every backend's generate."""
    from gpt2_core import reference

    ids = np.asarray(input_ids)
    B = ids.shape[0]
    mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
    done = np.zeros(B, dtype=bool)
    steps = []
    for _ in range(gen.max_new_tokens):
        h = reference.forward(params, config, ids, attention_mask=mask)["last_hidden_state"][:, -1:]
        logits = reference.lm_logits(params, config, h)[:, -1]
        nxt = np.argmax(logits, -1)
        nxt = np.where(done, gen.pad_token_id, nxt)
        steps.append(nxt)
        done |= np.isin(nxt, gen.eos_token_id)
        ids = np.concatenate([ids, nxt[:, None]], 1)
        mask = np.concatenate([mask, np.ones((B, 1), mask.dtype)], 1)
        if done.all():
            break
    return ids
