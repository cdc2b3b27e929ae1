"""Float64 NumPy reference of GPT-2: the oracle every backend is tested against, and the home of the decisions.

The decisions every backend follows are made here, once:

* `ACTIVATIONS`: what each `activation_function` name means (`gelu_new` is the tanh approximation, `gelu` the
  exact erf form), as in transformers' `ACT2FN`.
* `position_ids_from_attention_mask`: position ids of a padded batch. A row's positions count from its first
  attended token: `position = max(0, index - number_of_leading_pad_tokens)`. A right-padded batch therefore gets
  `arange`, exactly like an unpadded one (and like transformers' forward), and a left-padded row gets the ids it
  would have had without padding (like transformers' `generate`). With a cache the mask covers past + new tokens
  and the new tokens take the last columns.
* `attention_scale`: `1/sqrt(head_dim)` if `scale_attn_weights`, further divided by `layer_idx + 1` if
  `scale_attn_by_inverse_layer_idx` (Mistral). `reorder_and_upcast_attn` changes only where the scale is applied
  and that scores are computed in float32: in float32 it is the same function.
* `attention_mask_fill` / `padding_mask_fill`: masked scores are *replaced* (not added to). A future key (causal
  mask) gets the most negative finite value of the compute dtype, `finfo.min`; a padding key gets half of it,
  `finfo.min / 2`. A query with at least one visible key is unaffected by the difference (both underflow to 0 after
  softmax). A query that may attend to nothing (a left-padding position) then attends uniformly to the padding keys
  at or before it: finite, never NaN, identical in every backend, and the same with or without a KV cache (it
  never depends on later keys).
* Losses: the LM loss shifts labels inside the model and ignores `-100`; the sequence classifier pools the last
  token that is not `pad_token_id`; the QA loss clamps positions and ignores the out-of-range ones. All as in
  transformers.

References: OpenAI gpt-2 `src/model.py`; transformers `modeling_gpt2.py` (v5).
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from gpt2_core.config import GPT2Config

IGNORE_INDEX = -100

_init_state = threading.local()


@contextlib.contextmanager
def skip_init() -> Iterator[None]:
    """Build models without drawing their initial parameters (they are about to be loaded from a checkpoint).

    The one skip-init rule of every backend: model constructors call `init_skipped()` and draw
    `init_params` only when it is False. Thread-local, so another thread building a model is unaffected.
    """
    previous = getattr(_init_state, "skip", False)
    _init_state.skip = True
    try:
        yield
    finally:
        _init_state.skip = previous


def init_skipped() -> bool:
    """True inside `skip_init()`: constructors leave their parameters for the caller to load."""
    return getattr(_init_state, "skip", False)

_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * np.power(x, 3.0))))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# name -> float64 function. Backends implement exactly these formulas (see each backend's `ACT2FN`).
ACTIVATIONS = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0))),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + np.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * _sigmoid(1.702 * x),
    "relu": lambda x: np.maximum(x, 0.0),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "linear": lambda x: x,
}


def attention_mask_fill(dtype: Any) -> float:
    """The score of a future (causally masked) key: the most negative finite value of `dtype`."""
    return float(np.finfo(np.dtype(dtype)).min)


def padding_mask_fill(dtype: Any) -> float:
    """The score of a padding key: half of `attention_mask_fill`, so causality still wins in a fully padded row."""
    return float(np.finfo(np.dtype(dtype)).min) / 2


def attention_scale(config: GPT2Config, layer_idx: int) -> float:
    """Factor multiplying `q @ k^T` in layer `layer_idx`."""
    scale = 1.0
    if config.scale_attn_weights:
        scale = config.head_dim ** -0.5
    if config.scale_attn_by_inverse_layer_idx:
        scale /= float(layer_idx + 1)
    return scale


def position_ids_from_attention_mask(
    attention_mask: np.ndarray, query_length: int, past_length: Any = None
) -> np.ndarray:
    """Position ids (B, T) of `query_length` tokens of a (B, S) padding mask (1 = token, 0 = padding).

    `position = max(0, index - leading_pads)`: see the module docstring. The queries are the last `query_length`
    columns of the mask, or, when `past_length` is given (a preallocated cache whose mask covers the whole buffer),
    the columns `past_length .. past_length + query_length - 1`. Every backend implements this function with this
    signature and this algorithm.
    """
    mask = np.asarray(attention_mask)
    S = mask.shape[-1]
    # number of leading padding tokens: index of the first attended token, S for a row that is all padding
    leading = np.where((mask != 0).any(-1), np.argmax(mask != 0, axis=-1), S)  # (B,)
    start = S - query_length if past_length is None else past_length
    index = start + np.arange(query_length)  # (T,)
    return np.maximum(index[None, :] - leading[:, None], 0).astype(np.int64)  # (B, T)


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _split_heads(x: np.ndarray, n_head: int) -> np.ndarray:
    B, T, C = x.shape
    return x.reshape(B, T, n_head, C // n_head).transpose(0, 2, 1, 3)  # (B, N, T, H)


def _merge_heads(x: np.ndarray) -> np.ndarray:
    B, N, T, H = x.shape
    return x.transpose(0, 2, 1, 3).reshape(B, T, N * H)  # (B, T, C)


def _attend(q, k, v, causal, key_ok, scale):
    # q (B, N, T, H), k/v (B, N, S, H); causal (T, S) or None; key_ok (B, 1, 1, S) padding mask or None
    att = np.einsum("bnth,bnsh->bnts", q, k) * scale
    if key_ok is not None:
        att = np.where(key_ok, att, padding_mask_fill(att.dtype))
    if causal is not None:
        att = np.where(causal, att, attention_mask_fill(att.dtype))
    att = softmax(att, -1)
    y = np.einsum("bnts,bnsh->bnth", att, v)
    return y, att


def forward(
    params: Mapping[str, np.ndarray],
    config: GPT2Config,
    input_ids: np.ndarray | None = None,
    past_key_values: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    attention_mask: np.ndarray | None = None,
    token_type_ids: np.ndarray | None = None,
    position_ids: np.ndarray | None = None,
    inputs_embeds: np.ndarray | None = None,
    encoder_hidden_states: np.ndarray | None = None,
    encoder_attention_mask: np.ndarray | None = None,
) -> dict[str, Any]:
    """GPT2Model forward in float64.

    Args:
        params: Canonical parameters (body keys, no `transformer.` prefix).
        config: The model config.
        input_ids: (B, T) ints, or None when `inputs_embeds` is given.
        past_key_values: Per layer (k, v), each (B, N, P, H), from a previous call.
        attention_mask: (B, P + T) padding mask, 1 = attend.
        token_type_ids: (B, T), embedded with `wte` as transformers does.
        position_ids: (B, T); by default derived from `attention_mask` (see module docstring).
        inputs_embeds: (B, T, C) instead of `input_ids`.
        encoder_hidden_states: (B, S_enc, C) for cross-attention.
        encoder_attention_mask: (B, S_enc).

    Returns:
        dict with `last_hidden_state` (B, T, C), `past_key_values` (per layer (k, v), (B, N, P + T, H)),
        `hidden_states` (n_layer + 1 arrays: the embeddings, each block's output, the last one after `ln_f`),
        `attentions` (per layer (B, N, T, P + T)) and `cross_attentions`.
    """
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    if inputs_embeds is None:
        ids = np.asarray(input_ids)
        x = p["wte.weight"][ids]
    else:
        x = np.asarray(inputs_embeds, dtype=np.float64)
    B, T, _ = x.shape
    P = 0 if not past_key_values else np.asarray(past_key_values[0][0]).shape[2]
    S = P + T
    if attention_mask is None:
        mask = np.ones((B, S), dtype=np.int64)
    else:
        mask = np.asarray(attention_mask).astype(np.int64)
    if position_ids is None:
        position_ids = position_ids_from_attention_mask(mask, T)
    x = x + p["wpe.weight"][np.asarray(position_ids)]
    if token_type_ids is not None:
        x = x + p["wte.weight"][np.asarray(token_type_ids)]

    causal = np.arange(S)[None, :] <= (P + np.arange(T))[:, None]  # (T, S)
    key_ok = mask[:, None, None, :] != 0  # (B, 1, 1, S)
    if encoder_hidden_states is not None:
        enc = np.asarray(encoder_hidden_states, dtype=np.float64)
        enc_mask = (
            np.ones(enc.shape[:2], dtype=np.int64) if encoder_attention_mask is None else np.asarray(encoder_attention_mask)
        )
        enc_key_ok = enc_mask[:, None, None, :] != 0

    act = ACTIVATIONS[config.activation_function]
    eps = config.layer_norm_epsilon
    C = config.n_embd
    presents, hidden_states, attentions, cross_attentions = [], [x], [], []
    for i in range(config.n_layer):
        h = f"h.{i}."
        a = layer_norm(x, p[h + "ln_1.weight"], p[h + "ln_1.bias"], eps)
        qkv = a @ p[h + "attn.c_attn.weight"] + p[h + "attn.c_attn.bias"]
        q, k, v = (_split_heads(t, config.n_head) for t in np.split(qkv, 3, axis=-1))
        if past_key_values:
            k = np.concatenate([np.asarray(past_key_values[i][0], np.float64), k], axis=2)
            v = np.concatenate([np.asarray(past_key_values[i][1], np.float64), v], axis=2)
        presents.append((k, v))
        y, att = _attend(q, k, v, causal, key_ok, attention_scale(config, i))
        attentions.append(att)
        x = x + (_merge_heads(y) @ p[h + "attn.c_proj.weight"] + p[h + "attn.c_proj.bias"])
        if encoder_hidden_states is not None:
            a = layer_norm(x, p[h + "ln_cross_attn.weight"], p[h + "ln_cross_attn.bias"], eps)
            q = _split_heads(a @ p[h + "crossattention.q_attn.weight"] + p[h + "crossattention.q_attn.bias"], config.n_head)
            kv = enc @ p[h + "crossattention.c_attn.weight"] + p[h + "crossattention.c_attn.bias"]
            k, v = (_split_heads(t, config.n_head) for t in (kv[..., :C], kv[..., C:]))
            y, att = _attend(q, k, v, None, enc_key_ok, attention_scale(config, i))
            cross_attentions.append(att)
            x = x + (_merge_heads(y) @ p[h + "crossattention.c_proj.weight"] + p[h + "crossattention.c_proj.bias"])
        a = layer_norm(x, p[h + "ln_2.weight"], p[h + "ln_2.bias"], eps)
        m = act(a @ p[h + "mlp.c_fc.weight"] + p[h + "mlp.c_fc.bias"])
        x = x + (m @ p[h + "mlp.c_proj.weight"] + p[h + "mlp.c_proj.bias"])
        hidden_states.append(x)
    x = layer_norm(x, p["ln_f.weight"], p["ln_f.bias"], eps)
    hidden_states[-1] = x
    return {
        "last_hidden_state": x,
        "past_key_values": tuple(presents),
        "hidden_states": tuple(hidden_states),
        "attentions": tuple(attentions),
        "cross_attentions": tuple(cross_attentions) if encoder_hidden_states is not None else None,
    }


# ----------------------------------------------------------------------------------------------------------------
# Heads and losses
# ----------------------------------------------------------------------------------------------------------------


def cross_entropy(logits: np.ndarray, labels: np.ndarray, ignore_index: int = IGNORE_INDEX) -> float:
    """Mean cross entropy over labels != ignore_index (torch.nn.CrossEntropyLoss)."""
    logits = np.asarray(logits, np.float64).reshape(-1, logits.shape[-1])
    labels = np.asarray(labels).reshape(-1)
    keep = labels != ignore_index
    if not keep.any():
        return float("nan")
    lp = log_softmax(logits[keep], -1)
    return float(-lp[np.arange(keep.sum()), labels[keep]].mean())


def lm_logits(params: Mapping[str, np.ndarray], config: GPT2Config, hidden: np.ndarray) -> np.ndarray:
    w = params["wte.weight"] if config.tie_word_embeddings else params["lm_head.weight"]
    return hidden @ np.asarray(w, np.float64).T


def lm_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    """Causal LM loss: predict token t+1 from position t; labels == -100 are ignored."""
    return cross_entropy(logits[..., :-1, :], np.asarray(labels)[..., 1:])


def sequence_summary(
    params: Mapping[str, np.ndarray], config: GPT2Config, hidden: np.ndarray, cls_index: np.ndarray | None
) -> np.ndarray:
    """transformers' GPT2SequenceSummary (multiple-choice head), hidden (..., T, C) -> (..., num_classes)."""
    if config.summary_type == "last":
        out = hidden[..., -1, :]
    elif config.summary_type == "first":
        out = hidden[..., 0, :]
    elif config.summary_type == "mean":
        out = hidden.mean(-2)
    else:  # cls_index
        if cls_index is None:
            out = hidden[..., -1, :]
        else:
            idx = np.asarray(cls_index)[..., None, None]
            out = np.take_along_axis(hidden, np.broadcast_to(idx, idx.shape[:-1] + (hidden.shape[-1],)), -2)[..., 0, :]
    if config.summary_use_proj:
        out = out @ np.asarray(params["multiple_choice_head.summary.weight"], np.float64).T
        out = out + params["multiple_choice_head.summary.bias"]
    if config.summary_activation == "tanh":
        out = np.tanh(out)
    return out


def last_non_pad_index(input_ids: np.ndarray | None, pad_token_id: int | None, seq_len: int) -> np.ndarray | int:
    """Index of the token the sequence classifier pools: the rightmost token that is not padding.

    transformers' rule (v5): `(arange(T) * (input_ids != pad)).argmax(-1)`, so a row of only padding pools index 0;
    without `pad_token_id` or without `input_ids` (embeddings given) the last position, -1. Backends mirror this.
    """
    if pad_token_id is None or input_ids is None:
        return -1
    non_pad = (np.asarray(input_ids) != pad_token_id).astype(np.int64)
    return (np.arange(seq_len) * non_pad).argmax(-1)


def problem_type(config: GPT2Config, labels: np.ndarray) -> str:
    """transformers' rule for the sequence-classification loss."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if np.issubdtype(np.asarray(labels).dtype, np.integer):
        return "single_label_classification"
    return "multi_label_classification"


def sequence_classification_loss(config: GPT2Config, pooled: np.ndarray, labels: np.ndarray) -> float:
    kind = problem_type(config, labels)
    labels = np.asarray(labels)
    if kind == "regression":
        if config.num_labels == 1:
            return float(np.mean((pooled.squeeze() - labels.squeeze().astype(np.float64)) ** 2))
        return float(np.mean((pooled - labels.astype(np.float64)) ** 2))
    if kind == "single_label_classification":
        return cross_entropy(pooled.reshape(-1, config.num_labels), labels.reshape(-1))
    y = labels.astype(np.float64)  # multi-label: BCE with logits
    return float(np.mean(np.maximum(pooled, 0) - pooled * y + np.log1p(np.exp(-np.abs(pooled)))))


def qa_loss(start_logits: np.ndarray, end_logits: np.ndarray, start_positions, end_positions) -> float:
    ignored = start_logits.shape[1]
    s = np.clip(np.asarray(start_positions).reshape(-1), 0, ignored)
    e = np.clip(np.asarray(end_positions).reshape(-1), 0, ignored)
    return (cross_entropy(start_logits, s, ignored) + cross_entropy(end_logits, e, ignored)) / 2


# ----------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------


def init_params(config: GPT2Config, head: str = "base", seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Canonical parameters initialised as transformers/OpenAI do: N(0, initializer_range) for matrices and
    embeddings, residual projections (`c_proj`) scaled by 1/sqrt(2 * n_layer) (GPT-2 paper), zero biases, unit
    LayerNorm gains. Backends initialise from this so the same seed gives the same model in every framework."""
    from gpt2_core.naming import canonical_shapes

    rng = np.random.default_rng(seed)
    std = config.initializer_range
    out = {}
    for key, shape in canonical_shapes(config, head).items():
        module, leaf = key.rsplit(".", 1)
        if "ln_" in module:
            value = np.ones(shape) if leaf == "weight" else np.zeros(shape)
        elif leaf == "bias":
            value = np.zeros(shape)
        elif module.endswith("c_proj"):
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std / math.sqrt(2 * config.n_layer))
        else:
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        out[key] = value.astype(dtype, copy=False)
    return out


def random_params(config: GPT2Config, head: str = "base", seed: int = 0, dtype: Any = np.float32) -> dict[str, np.ndarray]:
    """Canonical parameters with every tensor random (biases and LayerNorm too), for equivalence tests: a
    parameter that a backend drops or mis-maps then changes the output."""
    from gpt2_core.naming import canonical_shapes

    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in canonical_shapes(config, head).items():
        module, leaf = key.rsplit(".", 1)
        if "ln_" in module and leaf == "weight":
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif leaf == "bias":
            value = 0.02 * rng.standard_normal(shape)
        elif module in ("wte", "wpe"):
            value = 0.1 * rng.standard_normal(shape)
        else:
            fan_in = shape[0] if not module.split(".")[0] in ("lm_head", "multiple_choice_head", "score", "qa_outputs", "classifier") else shape[1]
            value = rng.standard_normal(shape) / math.sqrt(fan_in)
        out[key] = value.astype(dtype)
    return out
