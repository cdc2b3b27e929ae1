"""GPT-2 in JAX/Flax (`flax.nnx`): the six transformers classes, argument for argument and output field for output field.

Mirrors `gpt2_torch/model.py` class for class and name for name; every decision (activation formulas, attention scale,
mask fill, position ids of padded batches, losses) follows `gpt2_core.reference`. What differs is only what JAX
needs: parameters cannot alias (the tied LM head multiplies by `wte.embedding` instead of sharing a second
parameter), dropout draws from `nnx.Rngs` and is switched by `model.train()` / `model.eval()` or `deterministic`, and
the cache (`gpt2_flax.cache.KVCache`, preallocated, updated with `dynamic_update_slice`, returned rather than
mutated) lets decoding compile to a fixed shape.

One attention path: with `use_cache` (or a past given) attention always goes through a `KVCache`. transformers'
`past_key_values` tuple of per-layer `(k, v)` is converted at the edge (`KVCache.from_legacy(past, max_length=P + T)`
in, `to_legacy()` out); a `KVCache` passed in is returned as a `KVCache`.

Shapes: B batch, T query length, S key length (past + new, or the cache buffer), N heads, H head dim, C n_embd,
V vocab.

References: OpenAI gpt-2 `src/model.py`; transformers `models/gpt2/modeling_gpt2.py` (v5) and
`modeling_flax_gpt2.py` (v4); flax `examples/gemma` (cache layout); nanoGPT `model.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpt2_core import checks, reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.outputs import (
    OUTPUT_CLASSES,
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from gpt2_flax.cache import KVCache

logger = logging.getLogger(__name__)


# The output dataclasses are JAX pytrees here, so they cross `jax.jit`, `nnx.jit` and `lax` control flow.
for _cls in OUTPUT_CLASSES:
    with contextlib.suppress(ValueError):  # already registered (module reloaded)
        jax.tree_util.register_dataclass(
            _cls, data_fields=[f.name for f in dataclasses.fields(_cls)], meta_fields=[]
        )


def _gelu_tanh(x: jax.Array) -> jax.Array:
    return 0.5 * x * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * jnp.power(x, 3))))


# The formulas of gpt2_core.reference.ACTIVATIONS.
ACT2FN = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + jnp.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def position_ids_from_attention_mask(
    attention_mask: jax.Array, query_length: int, past_length: jax.Array | int | None = None
) -> jax.Array:
    """gpt2_core.reference.position_ids_from_attention_mask: `max(0, index - leading_pads)`.

    The queries are the last `query_length` columns of the mask, or, with a preallocated `KVCache` (whose mask
    covers the whole buffer), the `query_length` columns from `past_length` on.
    """
    S = attention_mask.shape[-1]
    present = attention_mask != 0
    leading = jnp.where(present.any(-1), jnp.argmax(present, axis=-1), S)  # (B,)
    start = S - query_length if past_length is None else past_length
    index = start + jnp.arange(query_length)  # (T,)
    return jnp.maximum(index[None, :] - leading[:, None], 0)  # (B, T)


def last_non_pad_index(input_ids: jax.Array | None, pad_token_id: int | None, seq_len: int) -> jax.Array | int:
    """gpt2_core.reference.last_non_pad_index: the rightmost token that is not padding (a row of only padding: 0);
    -1 (the last position) without `pad_token_id` or without `input_ids`."""
    if pad_token_id is None or input_ids is None:
        return -1
    non_pad = (jnp.asarray(input_ids) != pad_token_id).astype(jnp.int32)
    return (jnp.arange(seq_len) * non_pad).argmax(-1)


# -- construction helpers ---------------------------------------------------------------------------------------
# The initial weights are drawn with jax.random from the `params` stream of the `nnx.Rngs` (so a model builds under
# `nnx.eval_shape` and `jax.jit`), by gpt2_core.reference.init_params's rule: N(0, initializer_range) for matrices and
# embeddings, residual projections (`c_proj`) scaled by 1/sqrt(2 * n_layer) (GPT-2 paper), zero biases, unit
# LayerNorm gains. Inside `reference.skip_init()` (a checkpoint is about to be loaded) they are zeros, not drawn;
# `from_config(config, seed)` loads exactly `reference.init_params(config, head, seed)` (every framework's weights).
_ZEROS = nnx.initializers.zeros_init()


def _normal(std: float) -> Any:
    return _ZEROS if reference.init_skipped() else nnx.initializers.normal(stddev=std)


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs, use_bias: bool = True, std: float = 0.02) -> nnx.Linear:
    return nnx.Linear(n_in, n_out, use_bias=use_bias, kernel_init=_normal(std), rngs=rngs)


def _residual_std(config: GPT2Config) -> float:
    return config.initializer_range / math.sqrt(2 * config.n_layer)


def _layer_norm(config: GPT2Config, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # use_fast_variance=False: E[(x - mean)^2] as the reference, not E[x^2] - mean^2 (cancels in float32).
    return nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, use_fast_variance=False, rngs=rngs)


def _dropout(rate: float | None, rngs: nnx.Rngs) -> nnx.Dropout:
    # Built in eval mode (deterministic), as transformers' Flax models ran by default; `model.train()` enables it.
    return nnx.Dropout(rate or 0.0, deterministic=True, rngs=rngs)


def default_rngs(seed: int = 0) -> nnx.Rngs:
    """The models' default randomness: `params` (draws the initial weights) and a `dropout` stream.

    Dropout draws from an `rbg` key (XLA's RngBitGenerator): with the default threefry keys, every dropout mask
    is a threefry computation that XLA compiles slowly (seconds per train step on CPU) and runs slowly.
    """
    return nnx.Rngs(params=seed, dropout=jax.random.key(seed, impl="rbg"))


def _seed_from(rngs: nnx.Rngs) -> int:
    """A NumPy seed for gpt2_core.reference.init_params (heads a checkpoint lacks), drawn from the `params` stream."""
    return int(jax.random.randint(rngs.params(), (), 0, 2**31 - 1))


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _min_max(x: Any) -> np.ndarray | None:
    # The range checks need the values: known when eager, not under jit/grad tracing (then they are skipped).
    if x is None or _is_traced(x):
        return None
    if x.size == 0:
        return np.zeros((0,), dtype=np.int64)
    with jax.ensure_compile_time_eval():  # a concrete array closed over by a jitted function stays concrete
        return np.array([int(x.min()), int(x.max())])


def _host(x: Any) -> np.ndarray | None:
    # The values for the label / index checks: known when eager, None under jit/grad tracing (then not checked).
    return None if x is None or _is_traced(x) else np.asarray(x)


def _use_return_dict(config: GPT2Config | None, return_dict: bool | None) -> bool:
    """transformers' rule: `return_dict=None` follows `config.use_return_dict`, i.e. `config.return_dict` (True when
    the config has neither)."""
    if return_dict is not None:
        return bool(return_dict)
    use = getattr(config, "use_return_dict", None)
    return bool(getattr(config, "return_dict", True) if use is None else use)


def _as_return(output: Any, return_dict: bool | None, config: GPT2Config | None = None) -> Any:
    # transformers' `return_dict`: the output dataclass, else its non-None fields in order (`to_tuple()`).
    return output if _use_return_dict(config, return_dict) else output.to_tuple()


def _layer_head_masks(head_mask: Any, config: GPT2Config, dtype: Any) -> list[Any]:
    """transformers 4.x `get_head_mask`: `(N,)` for every layer or `(n_layer, N)` -> per layer `(1, N, 1, 1)`."""
    if head_mask is None:
        return [None] * config.n_layer
    head_mask = jnp.asarray(head_mask)
    L, N = config.n_layer, config.n_head
    if tuple(head_mask.shape) == (N,):
        head_mask = jnp.broadcast_to(head_mask[None], (L, N))
    elif tuple(head_mask.shape) != (L, N):
        raise ValueError(
            f"head_mask must have shape (n_head,) or (n_layer, n_head) = ({N},) or ({L}, {N}). "
            f"Received: head_mask.shape={tuple(head_mask.shape)}. Pass one value per head (1.0 keeps it, 0.0 masks it)."
        )
    return list(head_mask.astype(dtype)[:, None, :, None, None])


def _fold_leading(x: jax.Array) -> jax.Array:
    """(..., T) -> (prod(...), T); unlike reshape(-1, T) also for T = 0."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _as_array(x: Any) -> jax.Array | None:
    # NumPy (or nested lists) in, JAX out; None stays None.
    return None if x is None else jnp.asarray(x)


class FlaxGPT2Attention(nnx.Module):
    """Multi-head (self or cross) attention.

    Args:
        config: The model config.
        layer_idx: Index of the block (for `scale_attn_by_inverse_layer_idx`).
        is_cross_attention: Queries from the decoder, keys and values from `encoder_hidden_states`.
        rngs: Dropout randomness.
    """

    def __init__(self, config: GPT2Config, layer_idx: int, is_cross_attention: bool = False, *, rngs: nnx.Rngs) -> None:
        C = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.layer_idx = layer_idx
        self.is_cross_attention = is_cross_attention
        self.scale = reference.attention_scale(config, layer_idx)
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        std = config.initializer_range
        if is_cross_attention:
            self.c_attn = _linear(C, 2 * C, rngs, std=std)
            self.q_attn = _linear(C, C, rngs, std=std)
        else:
            self.c_attn = _linear(C, 3 * C, rngs, std=std)
        self.c_proj = _linear(C, C, rngs, std=_residual_std(config))
        self.attn_dropout = _dropout(config.attn_pdrop, rngs)
        self.resid_dropout = _dropout(config.resid_pdrop, rngs)

    def _split_heads(self, x: jax.Array) -> jax.Array:
        B, T, C = x.shape
        return x.reshape(B, T, self.n_head, self.head_dim).transpose(0, 2, 1, 3)  # (B, N, T, H)

    def __call__(
        self,
        x: jax.Array,
        cache: KVCache | None = None,
        causal: jax.Array | None = None,
        key_ok: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        deterministic: bool | None = None,
        head_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None, jax.Array]:
        B, T, C = x.shape
        if self.is_cross_attention:
            q = self.q_attn(x)
            k, v = jnp.split(self.c_attn(encoder_hidden_states), 2, axis=2)
        else:
            q, k, v = jnp.split(self.c_attn(x), 3, axis=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, N, T, H)
        if cache is not None:
            # Write at the filled length and attend over the whole buffer (B, N, S_max, H); `causal` hides the rest.
            k, v = cache.update(self.layer_idx, k, v)
        present = None if self.is_cross_attention else (k, v)
        if self.reorder_and_upcast_attn:
            # Mistral: scale q before the product and keep scores and softmax in float32 (fp16/bf16 stability).
            att = jnp.matmul(q.astype(jnp.float32) * self.scale, k.astype(jnp.float32).swapaxes(-1, -2))  # (B, N, T, S)
        else:
            att = jnp.matmul(q, k.swapaxes(-1, -2)) * self.scale  # (B, N, T, S)
        # gpt2_core.reference: padding keys -> finfo.min / 2, future keys -> finfo.min (replace, not add)
        if key_ok is not None:
            att = jnp.where(key_ok, att, jnp.finfo(att.dtype).min / 2)
        if causal is not None:
            att = jnp.where(causal, att, jnp.finfo(att.dtype).min)
        # softmax in float32 whatever the compute dtype (torch's softmax accumulates bf16/fp16 in float32 too)
        att = jax.nn.softmax(att.astype(jnp.float32), axis=-1).astype(v.dtype)
        att = self.attn_dropout(att, deterministic=deterministic)
        if head_mask is not None:
            att = att * head_mask  # (1, N, 1, 1): transformers 4.x scales the probabilities after dropout
        y = jnp.matmul(att, v)  # (B, N, T, H)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)
        y = self.resid_dropout(self.c_proj(y), deterministic=deterministic)
        return y, present, att


class FlaxGPT2MLP(nnx.Module):
    """The feed-forward block: c_fc, activation, c_proj.

    Args:
        config: The model config (`n_inner`, `activation_function`, `resid_pdrop`).
        rngs: Dropout randomness.
    """

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        self.c_fc = _linear(config.n_embd, config.inner_dim, rngs, std=config.initializer_range)
        self.c_proj = _linear(config.inner_dim, config.n_embd, rngs, std=_residual_std(config))
        self.act = ACT2FN[config.activation_function]
        self.dropout = _dropout(config.resid_pdrop, rngs)

    def __call__(self, x: jax.Array, deterministic: bool | None = None) -> jax.Array:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))), deterministic=deterministic)


class FlaxGPT2Block(nnx.Module):
    """Pre-LayerNorm transformer block: attention (+ cross-attention) and MLP, each on a residual.

    Args:
        config: The model config.
        layer_idx: Index of the block.
        rngs: Dropout randomness.
    """

    def __init__(self, config: GPT2Config, layer_idx: int, *, rngs: nnx.Rngs) -> None:
        self.ln_1 = _layer_norm(config, rngs)
        self.attn = FlaxGPT2Attention(config, layer_idx, rngs=rngs)
        if config.add_cross_attention:
            self.crossattention = FlaxGPT2Attention(config, layer_idx, is_cross_attention=True, rngs=rngs)
            self.ln_cross_attn = _layer_norm(config, rngs)
        self.ln_2 = _layer_norm(config, rngs)
        self.mlp = FlaxGPT2MLP(config, rngs=rngs)

    def __call__(
        self,
        x: jax.Array,
        cache: KVCache | None = None,
        causal: jax.Array | None = None,
        key_ok: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_key_ok: jax.Array | None = None,
        deterministic: bool | None = None,
        head_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, Any, jax.Array, jax.Array | None]:
        y, present, att = self.attn(self.ln_1(x), cache, causal, key_ok, None, deterministic, head_mask)
        x = x + y
        cross_att = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise checks.no_cross_attention_error()
            y, _, cross_att = self.crossattention(
                self.ln_cross_attn(x), None, None, encoder_key_ok, encoder_hidden_states, deterministic, head_mask
            )
            x = x + y
        x = x + self.mlp(self.ln_2(x), deterministic)
        return x, present, att, cross_att


def _flax4_call(method: Any) -> Any:
    """Add transformers 4.x Flax's call arguments to a model's `__call__`: `params=` (a pure function of that
    pytree, for `jax.jit` / `jax.grad`), `dropout_rng=` (a key: dropout draws from it) and `train=` (dropout on for
    this call; `None` follows `model.train()` / `model.eval()`)."""

    @functools.wraps(method)
    def __call__(
        self: "FlaxGPT2PreTrainedModel",
        *args: Any,
        params: Any = None,
        dropout_rng: jax.Array | None = None,
        train: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        if train is not None:
            if kwargs.get("deterministic") is not None:
                raise ValueError(
                    "train and deterministic say the same thing twice. "
                    f"Received: train={train!r}, deterministic={kwargs['deterministic']!r}. Pass one of them."
                )
            kwargs["deterministic"] = not train
        if params is None and dropout_rng is None:
            return method(self, *args, **kwargs)
        if params is not None and dropout_rng is None and kwargs.get("deterministic") is False and self._has_dropout():
            raise ValueError(
                "Dropout in a call with params= needs its key: the call is a pure function of its arguments. "
                "Received: train=True, dropout_rng=None. Pass dropout_rng=jax.random.key(...) (a new one per step)."
            )
        return method(self._functional_copy(params, dropout_rng), *args, **kwargs)

    signature = inspect.signature(method)
    extra = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation)
        for name, default, annotation in (("params", None, Any), ("dropout_rng", None, "jax.Array | None"),
                                          ("train", None, "bool | None"))
    ]
    __call__.__signature__ = signature.replace(parameters=[*signature.parameters.values(), *extra])
    return __call__


def _flatten_params(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A params pytree (nested dicts with str or int keys, or an `nnx.State`) -> {dotted path: array}."""
    if isinstance(tree, nnx.State):
        tree = nnx.to_pure_dict(tree)
    if isinstance(tree, nnx.Variable):
        return {prefix: tree.get_value()}
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten_params(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _str_keys(tree: Any) -> Any:
    # nnx.List indices are ints; transformers 4.x's params (and orbax) spell them as strings: "h": {"0": ...}
    if isinstance(tree, Mapping):
        return {str(k): _str_keys(v) for k, v in tree.items()}
    return tree


def _cast_floating(params: Any, dtype: Any, mask: Any = None) -> Any:
    """transformers 4.x `FlaxPreTrainedModel._cast_floating_to`: floating leaves (where `mask` is True) to `dtype`."""

    def cast(x: Any, keep: bool = True) -> Any:
        x = jnp.asarray(x)
        return x.astype(dtype) if keep and jnp.issubdtype(x.dtype, jnp.floating) else x

    return jax.tree.map(cast, params) if mask is None else jax.tree.map(cast, params, mask)


class FlaxGPT2PreTrainedModel(nnx.Module):
    """Shared loading, saving and initialisation of every GPT-2 class, and transformers 4.x Flax's interface.

    Models are built in eval mode (dropout off), as transformers' Flax models ran by default; `model.train()`
    turns dropout on (drawing from the `dropout` stream of the `rngs` given at construction) and `model.eval()`
    off again, or pass `deterministic=` (or 4.x's `train=`) to one call.

    transformers 4.x Flax (`model(ids, params=params, dropout_rng=key, train=True)`): `model.params` is a plain
    pytree of the parameters (nested dicts, the module paths: `{"transformer": {"wte": {"embedding": ...}, "h":
    {"0": {"attn": {"c_attn": {"kernel", "bias"}}, ...}}, ...}}`), settable; a call with `params=` uses that pytree
    instead of the model's own parameters and is a pure function of it, so it can be `jax.jit`-ed and
    differentiated with `jax.grad`.

    Args:
        config: The model config.
    """

    head: str = "base"
    # What transformers' tools read off a model: transformers' values.
    main_input_name = "input_ids"
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True

    def __init__(self, config: GPT2Config) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a gpt2_core.GPT2Config. Received: type={type(config).__name__}.")
        self.config = config
        # what `generate` starts from (transformers' rule: only models that generate carry one)
        self.generation_config = GenerationConfig.from_model_config(config) if self.can_generate() else None

    @classmethod
    def can_generate(cls) -> bool:
        """Whether `generate` works on this class (the LM head model)."""
        return False

    # -- parameters through gpt2_core.naming ------------------------------------------------------------------
    def init_weights(self, seed: int | None = None) -> None:
        """Load exactly `gpt2_core.reference.init_params(config, head, seed)` (the same weights as every framework's
        `init_weights(seed)`); a random seed when None."""
        if seed is None:
            seed = int(np.random.default_rng().integers(0, 2**31 - 1))
        from gpt2_flax.weights import load_canonical

        load_canonical(self, reference.init_params(self.config, self.head, seed))

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as a canonical dict (gpt2_core.naming names and layouts), float32 NumPy."""
        from gpt2_flax.weights import canonical_state_dict

        return canonical_state_dict(self)

    def load_canonical(self, canonical: dict[str, np.ndarray]) -> None:
        from gpt2_flax.weights import load_canonical

        load_canonical(self, canonical)

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int | None = None) -> "FlaxGPT2PreTrainedModel":
        """A model holding `gpt2_core.reference.init_params(config, head, seed)` (random seed if None): the same
        seed gives the same weights in every framework (the constructor draws with jax.random instead)."""
        with reference.skip_init():
            model = cls(config, rngs=default_rngs(seed if seed is not None else 0))
        model.init_weights(seed)
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: GPT2Config | None = None,
        dtype: Any = None,
        param_dtype: Any = None,
        rngs: nnx.Rngs | None = None,
        quantize: str | None = None,
        **hub_kwargs: Any,
    ) -> "FlaxGPT2PreTrainedModel":
        """Load `config.json` + weights (`model.safetensors`, sharded or not, `pytorch_model.bin`, or a
        transformers 4.x `tf_model.h5` / `flax_model.msgpack`) from a local directory or a Hub id. Heads missing from the
        checkpoint (a base checkpoint loaded into a classifier) are initialised and logged, as transformers does.

        Args:
            pretrained_model_name_or_path: Local directory or Hub id (e.g. `openai-community/gpt2`).
            config: Use this config instead of the checkpoint's `config.json`.
            dtype: The computation dtype (`jnp.bfloat16`, `"float16"`, ...; `"auto"`: the checkpoint's), as in
                transformers 4.x Flax: matmuls and activations run in it, LayerNorm statistics, softmax and losses
                in float32; the parameters keep `param_dtype`. float32 by default.
            param_dtype: The parameters' storage dtype (`"auto"`: the checkpoint's); float32 by default (4.x:
                `model.to_bf16(model.params)`).
            rngs: Dropout randomness (and the init of missing heads); `default_rngs(0)` by default.
            quantize: None only: `"int8"` is a ValueError (XLA CPU has no fast weight-only int8 path; measured in
                docs/performance.md; int8 inference is gpt2_torch's). An int8 checkpoint loads dequantized to
                float32 (`weights_convert.quantized`, logged).
            **hub_kwargs: `gpt2_core.hub.HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
                `force_download`, `subfolder`), for config.json and the weights alike, and the other arguments of
                `weights_convert.pretrained.load_pretrained` (config overrides such as `num_labels=3`,
                `output_loading_info`, `from_pt`, ...).
        """
        from gpt2_flax.weights import cast_params, set_compute_dtype
        from weights_convert.pretrained import load_pretrained
        from weights_convert.quantized import refuse_quantize

        refuse_quantize(quantize, cls.__name__)  # no int8 path in XLA CPU: measured, docs/performance.md

        rngs = rngs if rngs is not None else default_rngs()
        loaded = load_pretrained(
            pretrained_model_name_or_path,
            cls.head,
            config=config,
            owner=cls.__name__,
            init_seed=lambda: _seed_from(rngs),
            **hub_kwargs,
        )
        with reference.skip_init():
            model = cls(loaded.config, rngs=rngs)
        model.load_canonical(loaded.canonical)
        if model.generation_config is not None:
            model.generation_config = loaded.generation_config
        param_dtype = loaded.resolve_dtype(param_dtype)  # "auto": the checkpoint's dtype
        dtype = loaded.resolve_dtype(dtype if dtype is not None else loaded.dtype)  # torch_dtype= also lands here
        if param_dtype is not None:
            cast_params(model, param_dtype)
        if dtype is not None:
            set_compute_dtype(model, dtype)
        model.eval()
        if loaded.output_loading_info:
            return model, loaded.loading_info  # transformers' contract for output_loading_info=True
        return model

    def save_pretrained(
        self, save_directory: str | os.PathLike, *, max_shard_size: int | str | None = None, safe_serialization: bool = True
    ) -> None:
        """Write `config.json` + `model.safetensors` (sharded above `max_shard_size`) that transformers loads
        (`weights_convert.pretrained.save_pretrained`)."""
        from weights_convert.pretrained import save_pretrained

        if not safe_serialization:
            raise ValueError("Only safetensors is written. Received: safe_serialization=False. Use gpt2-convert --to pytorch.")
        save_pretrained(
            save_directory, self.config, self.canonical_state_dict(), self.head, max_shard_size=max_shard_size,
            generation_config=self.generation_config,
        )

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload `save_pretrained`'s files to the Hub repo `repo_id` (created if missing), transformers'
        `push_to_hub`: `commit_message`, `commit_description`, `private`, `token`, `revision`, `create_pr`,
        `max_shard_size` (`weights_convert.push.push_to_hub`). Returns huggingface_hub's `CommitInfo`."""
        from weights_convert.push import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters, transformers' `num_parameters`.

        Args:
            only_trainable: Count only trainable parameters (every `nnx.Param` is; accepted for transformers' API).
            exclude_embeddings: Leave out the `nnx.Embed` tables (`wte`, `wpe`; a tied LM head has no own weight).
        """
        embeddings = set()
        if exclude_embeddings:
            embeddings = {id(m.embedding) for _, m in nnx.iter_modules(self) if isinstance(m, nnx.Embed)}
        return sum(
            int(np.prod(var.get_value().shape))
            for _, var in nnx.to_flat_state(nnx.state(self, nnx.Param))
            if id(var) not in embeddings
        )

    @property
    def dtype(self) -> Any:
        """The computation dtype (transformers 4.x Flax's `model.dtype`): `from_pretrained(dtype=)`, else the
        parameters' dtype."""
        wte = self.base_model.wte
        return jnp.dtype(wte.dtype if wte.dtype is not None else wte.embedding.get_value().dtype)

    # -- transformers 4.x Flax: params, pure calls, casts, cache --------------------------------------------
    @property
    def params(self) -> dict[str, Any]:
        """The parameters as a plain pytree of nested dicts (transformers 4.x Flax's `model.params`): the module
        paths, `{"transformer": {"wte": {"embedding"}, "wpe": ..., "h": {"0": {"ln_1": {"scale", "bias"}, "attn":
        {"c_attn": {"kernel", "bias"}, "c_proj": ...}, "ln_2": ..., "mlp": {"c_fc", "c_proj"}}}, "ln_f": ...}}`
        (`FlaxGPT2Model`: without the `"transformer"` level). Kernels are `[in, out]` (4.x's `FlaxConv1D` stored
        `[out, in]`). The arrays are the model's (JAX arrays are immutable: changing the model later does not change
        this tree). Assigning a tree of the same structure and shapes (any float dtype) replaces the parameters."""
        return _str_keys(nnx.to_pure_dict(nnx.state(self, nnx.Param)))

    @params.setter
    def params(self, params: Any) -> None:
        nnx.update(self, self._param_state(params))

    def __setattr__(self, name: str, value: Any) -> None:
        # nnx's attribute check would take `model.params = tree` for a new (data) attribute: use the setter
        if name == "params":
            type(self).params.fset(self, value)
            return
        super().__setattr__(name, value)

    def _param_state(self, params: Any) -> nnx.State:
        """`params` (a pytree as `model.params`, int or str list keys, or an `nnx.State`) as new `nnx.Param`
        Variables of this model's structure; every path present, every shape checked."""
        flat = nnx.to_flat_state(nnx.state(self, nnx.Param))
        want = {".".join(str(p) for p in path): (path, var) for path, var in flat}
        given = _flatten_params(params)
        missing = sorted(set(want) - set(given))
        unexpected = sorted(set(given) - set(want))
        mismatched = [
            f"{key}: {tuple(jnp.shape(given[key]))} instead of {tuple(var.get_value().shape)}"
            for key, (_, var) in want.items()
            if key in given and tuple(jnp.shape(given[key])) != tuple(var.get_value().shape)
        ]
        if missing or unexpected or mismatched:
            raise ValueError(
                f"params do not fit {type(self).__name__}. Received: missing={missing[:10]}, "
                f"unexpected={unexpected[:10]}, mismatched shapes={mismatched[:10]}. Pass a tree shaped like "
                "model.params (resize_token_embeddings changes the vocabulary size)."
            )
        return nnx.from_flat_state([(path, var.replace(given[key])) for key, (path, var) in want.items()])

    def _functional_copy(self, params: Any, dropout_rng: jax.Array | None) -> "FlaxGPT2PreTrainedModel":
        """A new module (`nnx.merge`) holding `params` (else copies of this model's parameters) and, with
        `dropout_rng`, dropout streams reseeded from it: nothing of `self` is read as mutable state or changed."""
        graphdef, param_state, rest = nnx.split(self, nnx.Param, ...)
        param_state = self._param_state(params) if params is not None else jax.tree.map(lambda v: v, param_state)
        model = nnx.merge(graphdef, param_state, jax.tree.map(lambda v: v, rest))  # new Variables (jit-safe)
        if dropout_rng is not None:
            nnx.reseed(model, dropout=dropout_rng)  # one key per dropout layer, split from dropout_rng
        return model

    def _has_dropout(self) -> bool:
        return any(isinstance(m, nnx.Dropout) and m.rate > 0 for _, m in nnx.iter_modules(self))

    def to_bf16(self, params: Any = None, mask: Any = None) -> Any:
        """transformers 4.x Flax: `params` (default `model.params`) with floating leaves cast to bfloat16 (only
        where `mask`, a pytree of bools of the same structure, is True). Returns the new tree; assign it to
        `model.params` (or pass it as `params=`) to use it."""
        return _cast_floating(self.params if params is None else params, jnp.bfloat16, mask)

    def to_fp16(self, params: Any = None, mask: Any = None) -> Any:
        """As `to_bf16`, to float16."""
        return _cast_floating(self.params if params is None else params, jnp.float16, mask)

    def to_fp32(self, params: Any = None, mask: Any = None) -> Any:
        """As `to_bf16`, to float32."""
        return _cast_floating(self.params if params is None else params, jnp.float32, mask)

    def init_cache(self, batch_size: int, max_length: int) -> KVCache:
        """An empty `KVCache` of `max_length` slots in the computation dtype, for `past_key_values=`
        (transformers 4.x Flax's `init_cache`; 4.x returned its flax `cache` collection dict instead)."""
        return KVCache.init(self.config, batch_size, max_length, self.dtype)

    # -- transformers' embedding accessors and resizing ---------------------------------------------------------
    @property
    def base_model(self) -> "FlaxGPT2Model":
        """The `FlaxGPT2Model` body (the model itself for `FlaxGPT2Model`)."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nnx.Embed:
        return self.base_model.wte

    def set_input_embeddings(self, value: nnx.Embed) -> None:
        if not isinstance(value, nnx.Embed) or value.features != self.config.n_embd:
            raise ValueError(
                f"The input embedding must be an nnx.Embed of n_embd={self.config.n_embd} features. Received: "
                f"value={type(value).__name__}{'' if not isinstance(value, nnx.Embed) else f'(features={value.features})'}. "
                "Build nnx.Embed(num_embeddings, config.n_embd, rngs=...)."
            )
        self.base_model.wte = value
        self.config.vocab_size = value.num_embeddings  # the tied head follows wte

    def get_output_embeddings(self) -> nnx.Linear | nnx.Embed | None:
        """The LM head: `lm_head` when untied, the tied `wte` (its `embedding` is the head's weight) when tied,
        `None` for models without an LM head."""
        if self.head not in ("lm", "double"):
            return None
        return getattr(self, "lm_head", None) or self.base_model.wte

    def resize_token_embeddings(
        self,
        new_num_tokens: int | None = None,
        pad_to_multiple_of: int | None = None,
        mean_resizing: bool = True,
        *,
        rngs: nnx.Rngs | None = None,
    ) -> nnx.Embed:
        """Grow or shrink the token embedding (and an untied LM head) to `new_num_tokens` rows; transformers v5's
        rule, as `gpt2_torch`'s `resize_token_embeddings`.

        Rows are kept or dropped at the end. New rows are drawn from a normal with the old rows' mean and `1e-9`
        times their covariance (`mean_resizing=True`, transformers' default; exactly the mean when that covariance
        is not positive definite, e.g. fewer rows than `n_embd`), or from `normal(0, initializer_range)`. The tied
        head follows `wte`, and `config.vocab_size` is updated. `model.params` changes shape: rebuild optimizer
        states made before.

        Args:
            new_num_tokens: Rows wanted, e.g. `len(tokenizer)` after `add_special_tokens`; `None` keeps the size.
            pad_to_multiple_of: Round the row count up to a multiple of this.
            mean_resizing: The mean/covariance rule above (True) or the plain normal init (False).
            rngs: Draws the new rows (`params` stream); `nnx.Rngs(0)` by default (torch draws from its global RNG).

        Returns:
            The input embedding module.
        """
        new_num_tokens = checks.resize_row_count(new_num_tokens, pad_to_multiple_of, self.get_input_embeddings().num_embeddings)
        if new_num_tokens is None:
            return self.get_input_embeddings()
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        std = self.config.initializer_range
        wte = self.get_input_embeddings()
        old = wte.embedding.get_value()  # (V, C)
        if old.shape[0] != new_num_tokens:
            wte.embedding.set_value(_resized_rows(old, new_num_tokens, mean_resizing, std, rngs.params()))
            wte.num_embeddings = new_num_tokens
        lm_head = getattr(self, "lm_head", None)  # untied: kernel (C, V)
        if lm_head is not None and lm_head.kernel.get_value().shape[1] != new_num_tokens:
            kernel = lm_head.kernel.get_value()
            lm_head.kernel.set_value(_resized_rows(kernel.T, new_num_tokens, mean_resizing, std, rngs.params()).T)
            lm_head.out_features = new_num_tokens
        self.config.vocab_size = new_num_tokens
        return wte

    # -- gradient (activation) checkpointing --------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them (`nnx.remat`, i.e.
        `jax.checkpoint`, per `FlaxGPT2Block`): same loss and gradients, less memory, one more forward per block.
        Calls without a `past_key_values` then build no cache (`use_cache` is turned off, logged once), as
        transformers does in training; JAX has no training flag to tell a training call from an evaluation, so
        disable it for cached evaluation, or pass a `KVCache`.

        Args:
            gradient_checkpointing_kwargs: `{"policy": jax.checkpoint_policies...}` (what to save instead of
                recompute); torch's `use_reentrant` is accepted and ignored.
        """
        kwargs = dict(gradient_checkpointing_kwargs or {})
        kwargs.pop("use_reentrant", None)
        unknown = sorted(set(kwargs) - {"policy"})
        if unknown:
            raise ValueError(
                f"Unknown gradient_checkpointing_kwargs. Received: {unknown}. gpt2_flax takes only 'policy' "
                "(a jax.checkpoint_policies function)."
            )
        self.base_model.gradient_checkpointing = True
        self.base_model.checkpoint_policy = kwargs.get("policy")

    def gradient_checkpointing_disable(self) -> None:
        self.base_model.gradient_checkpointing = False

    def enable_gradient_checkpointing(self) -> None:
        """transformers 4.x Flax's name of `gradient_checkpointing_enable`."""
        self.gradient_checkpointing_enable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.base_model.gradient_checkpointing)


def _resized_rows(old: jax.Array, n: int, mean_resizing: bool, std: float, key: jax.Array) -> jax.Array:
    """transformers v5 `_get_resized_embeddings` on a (V, C) table: the first min(V, n) rows kept, new rows
    ~ N(mean, 1e-9 * covariance) of the old rows (`_init_added_embeddings_weights_with_mean`; the mean where that
    covariance is not positive definite; https://nlp.stanford.edu/~johnhew/vocab-expansion.html) or
    N(0, std) without `mean_resizing`."""
    old_n, C = old.shape
    if n <= old_n:
        return old[:n]
    added = n - old_n
    if not mean_resizing:
        rows = std * jax.random.normal(key, (added, C), jnp.float32)
    else:
        w = np.asarray(old, np.float32)
        mean = w.mean(axis=0)
        centered = w - mean
        covariance = 1e-9 * (centered.T @ centered / old_n)  # (C, C)
        try:
            np.linalg.cholesky(covariance)
            positive_definite = True
        except np.linalg.LinAlgError:
            positive_definite = False
        if positive_definite:
            rows = jax.random.multivariate_normal(key, jnp.asarray(mean), jnp.asarray(covariance), (added,))
        else:
            rows = jnp.broadcast_to(jnp.asarray(mean), (added, C))
    return jnp.concatenate([old, rows.astype(old.dtype)], axis=0)


class FlaxGPT2Model(FlaxGPT2PreTrainedModel):
    """The bare GPT-2 transformer: embeddings, blocks, final LayerNorm.

    Args:
        config: The model config.
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "base"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        std = config.initializer_range
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, embedding_init=_normal(std), rngs=rngs)
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, embedding_init=_normal(std), rngs=rngs)
        self.drop = _dropout(config.embd_pdrop, rngs)
        self.h = nnx.List([FlaxGPT2Block(config, i, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = _layer_norm(config, rngs)
        self.gradient_checkpointing = False  # gradient_checkpointing_enable(): nnx.remat per block
        self.checkpoint_policy = None

    def get_input_embeddings(self) -> nnx.Embed:
        return self.wte

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        past_key_values: tuple[tuple[jax.Array, jax.Array], ...] | KVCache | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> BaseModelOutputWithPastAndCrossAttentions:
        """transformers' GPT2Model arguments. `past_key_values` is transformers' tuple (returned as a tuple when
        `use_cache`) or a `KVCache` (always returned as the advanced `KVCache`, whatever `use_cache` says; its mask
        covers `length + T` columns, or the whole buffer). `use_cache`, `output_attentions`,
        `output_hidden_states` and `return_dict` left at `None` follow the config; `return_dict=False` returns
        `to_tuple()`. `head_mask`: `(n_head,)` for every layer or `(n_layer, n_head)`, multiplies each head's
        attention probabilities (transformers 4.x). transformers 4.x Flax's `params=`, `dropout_rng=` and `train=`:
        see `FlaxGPT2PreTrainedModel.params`."""
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        checkpointing = self.gradient_checkpointing and past_key_values is None
        if checkpointing and use_cache:
            # transformers' rule: a cache built in a recomputed forward would be written twice
            _warn_once("use_cache=True is incompatible with gradient checkpointing. Setting use_cache=False.")
            use_cache = False
        input_ids, attention_mask, token_type_ids, position_ids = (
            _as_array(input_ids), _as_array(attention_mask), _as_array(token_type_ids), _as_array(position_ids)
        )
        inputs_embeds, encoder_hidden_states = _as_array(inputs_embeds), _as_array(encoder_hidden_states)
        encoder_attention_mask = _as_array(encoder_attention_mask)
        if input_ids is not None:
            checks.check_integer_ids(input_ids.dtype, "input_ids")  # known under jit too; a float id would truncate
        # Leading dims beyond batch (the multiple-choice head's choices) fold into the batch, as in transformers.
        lead_shape = None
        if input_ids is not None and input_ids.ndim > 2:
            lead_shape = input_ids.shape[:-1]
            input_ids = _fold_leading(input_ids)
        if inputs_embeds is not None and inputs_embeds.ndim > 3:
            lead_shape = inputs_embeds.shape[:-2]
            inputs_embeds = inputs_embeds.reshape(math.prod(lead_shape), *inputs_embeds.shape[-2:])
        if lead_shape is not None:
            attention_mask = None if attention_mask is None else _fold_leading(attention_mask)
            token_type_ids = None if token_type_ids is None else _fold_leading(token_type_ids)
            position_ids = None if position_ids is None else _fold_leading(position_ids)
        shape = (input_ids if input_ids is not None else inputs_embeds).shape
        B, T = shape[0], (shape[1] if len(shape) > 1 else 0)
        preallocated = isinstance(past_key_values, KVCache)
        if preallocated:
            P = past_key_values.length
            past_length = checks.check_cache(
                config,
                [(k.shape, v.shape) for k, v in zip(past_key_values.key, past_key_values.value)],
                B,
                T,
                length=None if _is_traced(P) else int(P),
                preallocated=True,
            )
        else:
            past_length = P = checks.check_past_key_values(config, past_key_values, B, T)
        checks.check_model_inputs(
            config,
            input_ids=_min_max(input_ids),
            input_shape=None if input_ids is None else tuple(input_ids.shape),
            inputs_embeds_shape=None if inputs_embeds is None else tuple(inputs_embeds.shape),
            attention_mask_shape=None if attention_mask is None else tuple(attention_mask.shape),
            position_ids=_min_max(position_ids),
            position_ids_shape=None if position_ids is None else tuple(position_ids.shape),
            token_type_ids_shape=None if token_type_ids is None else tuple(token_type_ids.shape),
            past_length=past_length,
            cache_max_length=past_key_values.max_length if preallocated else None,
        )
        if inputs_embeds is None:
            inputs_embeds = self.wte(nan_if_negative(input_ids, config.vocab_size))  # (B, T, C)
        T = inputs_embeds.shape[1]
        S = past_key_values.max_length if preallocated else P + T
        if attention_mask is not None and attention_mask.shape[-1] < S:
            # (B, length + T) -> (B, S_max): the slots after length + T are future keys, hidden by the causal mask.
            fill = jnp.ones((B, S - attention_mask.shape[-1]), attention_mask.dtype)
            attention_mask = jnp.concatenate([attention_mask, fill], axis=1)  # (B, S)
        if position_ids is None:
            if attention_mask is not None:
                position_ids = position_ids_from_attention_mask(attention_mask, T, P)
            else:
                position_ids = (P + jnp.arange(T))[None, :]
        x = inputs_embeds + self.wpe(nan_if_negative(position_ids, config.n_positions))
        if token_type_ids is not None:
            checks.check_index_range(_host(token_type_ids), config.vocab_size, "token_type_ids", "vocab_size")
            x = x + self.wte(nan_if_negative(token_type_ids, config.vocab_size))
        x = self.drop(x, deterministic=deterministic)

        # One attention path: with a cache, every layer writes its k, v into a KVCache and attends over its buffer.
        if preallocated:
            cache = past_key_values
        elif past_key_values is not None:
            cache = KVCache.from_legacy(past_key_values, max_length=S)
        elif use_cache:
            cache = KVCache.init(config, B, S, x.dtype)
        else:
            cache = None

        # causal[t, s]: key s is not in query t's future; key_ok[b, 0, 0, s]: key s is not padding
        causal = jnp.arange(S)[None, :] <= (P + jnp.arange(T))[:, None]  # (T, S)
        key_ok = None if attention_mask is None else (attention_mask != 0)[:, None, None, :]  # (B, 1, 1, S)
        encoder_key_ok = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_key_ok = (encoder_attention_mask != 0)[:, None, None, :]  # (B, 1, 1, S_enc)

        head_masks = _layer_head_masks(head_mask, config, x.dtype)
        presents = []
        all_hidden = [x] if output_hidden_states else None
        all_att = [] if output_attentions else None
        all_cross = [] if (output_attentions and encoder_hidden_states is not None) else None
        for i, block in enumerate(self.h):
            if checkpointing:
                x, present, att, cross_att = _remat_block(
                    block, x, causal, key_ok, encoder_hidden_states, encoder_key_ok, deterministic, head_masks[i],
                    self.checkpoint_policy,
                )
            else:
                x, present, att, cross_att = block(
                    x, cache, causal, key_ok, encoder_hidden_states, encoder_key_ok, deterministic, head_masks[i]
                )
            presents.append(present)
            if output_attentions:
                all_att.append(att)
                if all_cross is not None:
                    all_cross.append(cross_att)
            if output_hidden_states:
                all_hidden.append(x)
        x = self.ln_f(x)
        if output_hidden_states:
            all_hidden[-1] = x  # transformers reports the last block's output after ln_f
        if lead_shape is not None:
            # like transformers v5: last_hidden_state regains the choices dim; the other hidden states stay flat
            x = x.reshape(*lead_shape, *x.shape[-2:])
            if output_hidden_states:
                all_hidden[-1] = x
        past = None
        if cache is not None:
            cache = cache.advance([k for k, _ in presents], [v for _, v in presents], T)
            # A KVCache in is a KVCache out, whatever use_cache says; transformers' tuple at the edge otherwise.
            past = cache if preallocated else (cache.to_legacy() if use_cache else None)
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            past_key_values=past,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_att) if output_attentions else None,
            cross_attentions=tuple(all_cross) if all_cross is not None else None,
        )
        return _as_return(out, return_dict, config)


def _remat_block(
    block: FlaxGPT2Block,
    x: jax.Array,
    causal: jax.Array,
    key_ok: jax.Array | None,
    encoder_hidden_states: jax.Array | None,
    encoder_key_ok: jax.Array | None,
    deterministic: bool | None,
    head_mask: jax.Array | None,
    policy: Any = None,
) -> tuple[jax.Array, Any, jax.Array, jax.Array | None]:
    """One block under `nnx.remat` (jax.checkpoint): its activations are recomputed in the backward pass instead of
    kept. No cache (gradient checkpointing turns it off); `deterministic` is a Python value, so it is closed over."""

    def run(block, x, causal, key_ok, encoder_hidden_states, encoder_key_ok, head_mask):
        return block(x, None, causal, key_ok, encoder_hidden_states, encoder_key_ok, deterministic, head_mask)

    return nnx.remat(run, policy=policy)(block, x, causal, key_ok, encoder_hidden_states, encoder_key_ok, head_mask)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


class FlaxGPT2LMHeadModel(FlaxGPT2PreTrainedModel):
    """GPT-2 with a language-modeling head (tied to the token embedding unless `tie_word_embeddings=False`).

    Args:
        config: The model config.
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "lm"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        self.transformer = FlaxGPT2Model(config, rngs=rngs)
        # Tied: the logits use wte's embedding (JAX parameters cannot alias), so there is no lm_head parameter.
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.n_embd, config.vocab_size, rngs, use_bias=False, std=config.initializer_range)

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def lm_logits(self, x: jax.Array) -> jax.Array:
        """(..., C) hidden states -> (..., V) logits, through `lm_head` or the tied `wte` (x @ E^T)."""
        if self.config.tie_word_embeddings:
            # `Embed.attend`'s arithmetic (its dtype promotion, then x @ E^T) as one dot_general contracting C with
            # E's rows: attend's `x @ E.T` reaches XLA:CPU as transpose + dot, which at one row (batch-1 decoding)
            # compiles to a loop fusion reading E transposed instead of the row-major matrix-vector kernel this
            # gets (batch-1 decoding 1.1x-1.2x; docs/performance.md, "JAX/Flax: batch-1 decoding profile").
            wte = self.transformer.wte
            x, embedding = wte.promote_dtype((x, wte.embedding[...]), dtype=wte.dtype)
            return jax.lax.dot_general(x, embedding, (((x.ndim - 1,), (1,)), ((), ())))  # (..., V)
        return self.lm_head(x)

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        past_key_values: tuple[tuple[jax.Array, jax.Array], ...] | KVCache | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        encoder_hidden_states: jax.Array | None = None,
        encoder_attention_mask: jax.Array | None = None,
        labels: jax.Array | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> CausalLMOutputWithCrossAttentions:
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            deterministic=deterministic,
        )
        logits = self.lm_logits(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        output = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )
        return _as_return(output, return_dict, self.config)

    def generate(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
        generation_config: GenerationConfig | None = None, **kwargs: Any,
    ) -> Any:
        """Compiled cached decoding (greedy, sampling, beam search), transformers' `generate`; returns a
        `GenerateDecoderOnlyOutput` / `GenerateBeamDecoderOnlyOutput` of jax arrays (use `.sequences`). See
        `gpt2_flax.generation.generate` for the arguments; `params=` also takes a `model.params`-shaped tree
        (transformers 4.x Flax)."""
        from gpt2_flax.generation import generate

        params = kwargs.get("params")
        if params is not None and not isinstance(params, nnx.State):
            kwargs["params"] = self._param_state(params)  # a 4.x params tree (model.params) -> the nnx.State
        return generate(self, input_ids, attention_mask, generation_config, **kwargs)


def nan_if_negative(index: jax.Array, size: int) -> jax.Array:
    """Negative indices -> `size`, which JAX's gathers ("fill" mode) read as NaN, like indices >= size. Inside a
    user's jit nothing can raise, and a negative index would otherwise wrap to a plausible, wrong row (issue: a
    label -1 giving the finite loss of label V-1); eagerly the checks raise before this."""
    index = jnp.asarray(index)
    return jnp.where(index < 0, size, index)


def cross_entropy(logits: jax.Array, labels: jax.Array, ignore_index: int = reference.IGNORE_INDEX) -> jax.Array:
    """torch.nn.functional.cross_entropy: mean over labels != ignore_index (NaN when none), in float32."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    labels = jnp.asarray(labels).reshape(-1)
    keep = labels != ignore_index
    logp = jax.nn.log_softmax(logits, axis=-1)
    index = jnp.where(keep, nan_if_negative(labels, logits.shape[-1]), 0)
    nll = -jnp.take_along_axis(logp, index[:, None], axis=-1)[:, 0]  # out of range: NaN
    return jnp.sum(jnp.where(keep, nll, 0.0)) / jnp.sum(keep)


def lm_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """gpt2_core.reference.lm_loss: shift inside, ignore -100, mean in float32."""
    labels = jnp.asarray(labels)
    checks.check_labels(_host(labels[..., 1:]), logits.shape[-1], "labels", reference.IGNORE_INDEX)
    return cross_entropy(logits[..., :-1, :], labels[..., 1:])


class FlaxGPT2SequenceSummary(nnx.Module):
    """transformers' GPT2SequenceSummary: pool one vector per sequence (the multiple-choice head).

    Args:
        config: The model config (`summary_*` fields).
        rngs: Dropout randomness.
    """

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        self.summary_type = config.summary_type
        n = 1 if config.summary_proj_to_labels else config.n_embd
        self.summary = _linear(config.n_embd, n, rngs, std=config.initializer_range) if config.summary_use_proj else _identity
        self.activation = jnp.tanh if config.summary_activation == "tanh" else _identity
        self.first_dropout = _dropout(config.summary_first_dropout, rngs)

    def __call__(
        self, hidden_states: jax.Array, cls_index: jax.Array | None = None, deterministic: bool | None = None
    ) -> jax.Array:
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = hidden_states.mean(axis=-2)
        elif cls_index is None:
            x = hidden_states[..., -1, :]
        else:
            idx = nan_if_negative(jnp.asarray(cls_index), hidden_states.shape[-2])[..., None, None]
            idx = jnp.broadcast_to(idx, (*idx.shape[:-1], hidden_states.shape[-1]))
            x = jnp.take_along_axis(hidden_states, idx, axis=-2).squeeze(-2)  # (..., C)
        x = self.first_dropout(x, deterministic=deterministic)
        return self.activation(self.summary(x))


def _identity(x: jax.Array) -> jax.Array:
    return x


class FlaxGPT2DoubleHeadsModel(FlaxGPT2PreTrainedModel):
    """GPT-2 with a language-modeling head and a multiple-choice head (RocStories/SWAG style).

    Args:
        config: The model config; as in transformers, the model's copy has `num_labels = 1` (the caller's config is
            not changed).
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "double"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        if not isinstance(config, GPT2Config):
            raise TypeError(f"config must be a gpt2_core.GPT2Config. Received: type={type(config).__name__}.")
        config = config.copy()
        config.num_labels = 1
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        self.transformer = FlaxGPT2Model(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.n_embd, config.vocab_size, rngs, use_bias=False, std=config.initializer_range)
        self.multiple_choice_head = FlaxGPT2SequenceSummary(config, rngs=rngs)

    lm_logits = FlaxGPT2LMHeadModel.lm_logits

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        past_key_values: tuple[tuple[jax.Array, jax.Array], ...] | KVCache | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        mc_token_ids: jax.Array | None = None,
        labels: jax.Array | None = None,
        mc_labels: jax.Array | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> GPT2DoubleHeadsModelOutput:
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            deterministic=deterministic,
        )
        hidden = out.last_hidden_state  # (B, choices, T, C)
        logits = self.lm_logits(hidden)
        if mc_token_ids is not None and self.multiple_choice_head.summary_type == "cls_index":
            checks.check_index_range(_host(mc_token_ids), hidden.shape[-2], "mc_token_ids", "sequence length")
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids, deterministic).squeeze(-1)  # (B, choices)
        mc_loss = None
        if mc_labels is not None:
            checks.check_labels(_host(mc_labels), mc_logits.shape[-1], "mc_labels", reference.IGNORE_INDEX)
            mc_loss = cross_entropy(mc_logits.reshape(-1, mc_logits.shape[-1]), mc_labels)
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        output = GPT2DoubleHeadsModelOutput(
            loss=loss,
            mc_loss=mc_loss,
            logits=logits,
            mc_logits=mc_logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _as_return(output, return_dict, self.config)


class FlaxGPT2ForSequenceClassification(FlaxGPT2PreTrainedModel):
    """GPT-2 with a linear classifier on the last non-padding token (`config.pad_token_id`).

    Args:
        config: The model config (`num_labels`, `pad_token_id`, `problem_type`).
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "seqcls"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        self.num_labels = config.num_labels
        self.transformer = FlaxGPT2Model(config, rngs=rngs)
        self.score = _linear(config.n_embd, config.num_labels, rngs, use_bias=False, std=config.initializer_range)

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        past_key_values: tuple[tuple[jax.Array, jax.Array], ...] | KVCache | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        labels: jax.Array | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> SequenceClassifierOutputWithPast:
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            deterministic=deterministic,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, L)
        B, T = logits.shape[:2]
        checks.check_sequence_classification_batch(self.config, B)
        last = last_non_pad_index(input_ids, self.config.pad_token_id, T)
        pooled = logits[jnp.arange(B), last]  # (B, L)
        loss = None
        if labels is not None:
            labels = jnp.asarray(labels)
            kind = reference.problem_type(self.config, np.zeros((), dtype=_np_dtype(labels)))
            if kind == "regression":
                if self.num_labels == 1:
                    loss = jnp.mean((pooled.squeeze().astype(jnp.float32) - labels.squeeze().astype(jnp.float32)) ** 2)
                else:
                    loss = jnp.mean((pooled.astype(jnp.float32) - labels.astype(jnp.float32)) ** 2)
            elif kind == "single_label_classification":
                checks.check_labels(_host(labels), self.num_labels, "labels", reference.IGNORE_INDEX)
                loss = cross_entropy(pooled.reshape(-1, self.num_labels), labels.reshape(-1))
            else:
                loss = binary_cross_entropy_with_logits(pooled, labels)
        output = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _as_return(output, return_dict, self.config)


def binary_cross_entropy_with_logits(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean BCE on logits, in the stable form `max(x, 0) - x y + log(1 + exp(-|x|))` (float32)."""
    x, y = logits.astype(jnp.float32), labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(x, 0) - x * y + jnp.log1p(jnp.exp(-jnp.abs(x))))


def _np_dtype(t: jax.Array) -> Any:
    return np.int64 if jnp.issubdtype(t.dtype, jnp.integer) else np.float32


class FlaxGPT2ForTokenClassification(FlaxGPT2PreTrainedModel):
    """GPT-2 with a linear classifier on every token.

    Args:
        config: The model config (`num_labels`, `classifier_dropout`).
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "tokcls"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        self.num_labels = config.num_labels
        self.transformer = FlaxGPT2Model(config, rngs=rngs)
        p = config.classifier_dropout if config.classifier_dropout is not None else 0.1
        self.dropout = _dropout(p, rngs)
        self.classifier = _linear(config.n_embd, config.num_labels, rngs, std=config.initializer_range)

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        past_key_values: tuple[tuple[jax.Array, jax.Array], ...] | KVCache | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        labels: jax.Array | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> TokenClassifierOutput:
        out = self.transformer(
            input_ids,
            past_key_values=past_key_values,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            deterministic=deterministic,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state, deterministic=deterministic))  # (B, T, L)
        loss = None
        if labels is not None:
            checks.check_labels(_host(labels), self.num_labels, "labels", reference.IGNORE_INDEX)
            loss = cross_entropy(logits.reshape(-1, self.num_labels), jnp.asarray(labels).reshape(-1))
        output = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return _as_return(output, return_dict, self.config)


class FlaxGPT2ForQuestionAnswering(FlaxGPT2PreTrainedModel):
    """GPT-2 with a span-extraction head (start and end logits per token).

    Args:
        config: The model config.
        rngs: Randomness: the initial weights (`params` stream, transformers' init rule) and dropout; `default_rngs(0)`
            by default.
    """

    head = "qa"

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs | None = None) -> None:
        super().__init__(config)
        rngs = rngs if rngs is not None else default_rngs()
        self.transformer = FlaxGPT2Model(config, rngs=rngs)
        self.qa_outputs = _linear(config.n_embd, 2, rngs, std=config.initializer_range)

    @_flax4_call
    def __call__(
        self,
        input_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        inputs_embeds: jax.Array | None = None,
        start_positions: jax.Array | None = None,
        end_positions: jax.Array | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: jax.Array | None = None,
        deterministic: bool | None = None,
    ) -> QuestionAnsweringModelOutput:
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            head_mask=head_mask,
            deterministic=deterministic,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start_positions = jnp.clip(jnp.asarray(start_positions).reshape(-1), 0, ignored)
            end_positions = jnp.clip(jnp.asarray(end_positions).reshape(-1), 0, ignored)
            start_loss = cross_entropy(start_logits, start_positions, ignore_index=ignored)
            end_loss = cross_entropy(end_logits, end_positions, ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        output = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return _as_return(output, return_dict, self.config)


MODEL_CLASSES = {
    "base": FlaxGPT2Model,
    "lm": FlaxGPT2LMHeadModel,
    "double": FlaxGPT2DoubleHeadsModel,
    "qa": FlaxGPT2ForQuestionAnswering,
    "seqcls": FlaxGPT2ForSequenceClassification,
    "tokcls": FlaxGPT2ForTokenClassification,
}
