"""GPT-2 in PyTorch: the six transformers classes, argument for argument and output field for output field.

Mirrors `gpt2_tf/model.py` and `gpt2_flax/model.py` class for class and name for name; every decision (activation
formulas, attention scale, mask fill, position ids of padded batches, losses) follows `gpt2_core.reference`.

Attention has one path: with a past or `use_cache`, every layer writes its keys and values into a preallocated
`gpt2_torch.cache.KVCache` and attends over the whole buffer (future slots hidden by the causal mask). transformers'
`past_key_values` tuple converts at the edge (`KVCache.from_legacy` in, `to_legacy` out); a `KVCache` passed in is
returned advanced. Input checks are `gpt2_core.checks` (every cache layer included). The scores are computed by
`F.scaled_dot_product_attention` (`attn_implementation="sdpa"`, the default, as in transformers v5) or by the eager
reference path (`"eager"`; always for `output_attentions` or a `head_mask`): see `attention_implementation`.

Shapes: B batch, T query length, S key length (the cache buffer, S_max, or T without a cache), N heads, H head dim,
C n_embd, V vocab.

References: OpenAI gpt-2 `src/model.py`; transformers `models/gpt2/modeling_gpt2.py` (v5); nanoGPT `model.py`.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt2_core import checks, naming, reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig
from gpt2_core.outputs import (
    BaseModelOutputWithPastAndCrossAttentions,
    CausalLMOutputWithCrossAttentions,
    GPT2DoubleHeadsModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutputWithPast,
    TokenClassifierOutput,
)
from gpt2_torch.cache import KVCache
from gpt2_torch.linear import Linear

logger = logging.getLogger(__name__)


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    # gpt2_core.reference's gelu_new, 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3))): torch's fused kernel of
    # the same formula (one kernel instead of seven, forward and backward; ~1 ulp from the composed form).
    return F.gelu(x, approximate="tanh")


# The formulas of gpt2_core.reference.ACTIVATIONS.
ACT2FN = {
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_fast": lambda x: 0.5 * x * (1.0 + torch.tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "linear": lambda x: x,
}


def position_ids_from_attention_mask(
    attention_mask: torch.Tensor, query_length: int, past_length: torch.Tensor | int | None = None
) -> torch.Tensor:
    """gpt2_core.reference.position_ids_from_attention_mask: `max(0, index - leading_pads)`.

    The queries are the last `query_length` columns of the mask, or, with a `KVCache` whose mask covers the whole
    buffer, the `query_length` columns from `past_length` on (a 0-d tensor is fine: nothing is read on the host).
    """
    S = attention_mask.shape[-1]
    present = attention_mask != 0
    leading = torch.where(present.any(-1), torch.argmax(present.to(torch.int32), dim=-1), S)  # (B,)
    start = S - query_length if past_length is None else past_length
    index = start + torch.arange(query_length, device=attention_mask.device)  # (T,)
    return torch.clamp(index[None, :] - leading[:, None], min=0)  # (B, T)


def last_non_pad_index(input_ids: torch.Tensor | None, pad_token_id: int | None, seq_len: int) -> torch.Tensor | int:
    """gpt2_core.reference.last_non_pad_index: the rightmost token that is not padding (-1 without pad/ids)."""
    if pad_token_id is None or input_ids is None:
        return -1
    non_pad = (input_ids != pad_token_id).to(torch.long)
    return (torch.arange(seq_len, device=input_ids.device) * non_pad).argmax(-1)


def _dropout(dropout: nn.Dropout, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
    # `deterministic` turns dropout off for one call without touching the module's train/eval mode (generation).
    return x if deterministic else dropout(x)


class GPT2Attention(nn.Module):
    """Multi-head (self or cross) attention.

    Args:
        config: The model config.
        layer_idx: Index of the block (for `scale_attn_by_inverse_layer_idx`).
        is_cross_attention: Queries from the decoder, keys and values from `encoder_hidden_states`.
    """

    def __init__(self, config: GPT2Config, layer_idx: int, is_cross_attention: bool = False) -> None:
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.is_cross_attention = is_cross_attention
        self.layer_idx = layer_idx
        self.scale = reference.attention_scale(config, layer_idx)
        self.reorder_and_upcast_attn = config.reorder_and_upcast_attn
        if is_cross_attention:
            self.c_attn = Linear(C, 2 * C)
            self.q_attn = Linear(C, C)
        else:
            self.c_attn = Linear(C, 3 * C)
        self.c_proj = Linear(C, C)
        self.attn_dropout = nn.Dropout(config.attn_pdrop)
        self.resid_dropout = nn.Dropout(config.resid_pdrop)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        return x.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, N, T, H)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        causal: torch.Tensor | None = None,
        key_ok: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        deterministic: bool = False,
        head_mask: torch.Tensor | None = None,
        implementation: str = "eager",
        attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
        """`implementation="eager"` (the reference path: `causal`, `key_ok`, `head_mask`, returns the probabilities)
        or `"sdpa"` (`F.scaled_dot_product_attention` with the additive `attn_bias` of `_sdpa_bias`, `None`: causal
        self-attention without cache or padding, or unmasked cross-attention; returns no probabilities)."""
        B, T, C = x.shape
        if self.is_cross_attention:
            q = self.q_attn(x)
            k, v = self.c_attn(encoder_hidden_states).split(C, dim=2)
        else:
            q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)  # (B, N, T, H)
        present = None
        if cache is not None and not self.is_cross_attention:
            # The whole preallocated buffer: slots past length + T are hidden by the causal mask.
            k, v = cache.update(self.layer_idx, k, v)  # (B, N, S_max, H)
            present = (k, v)
        if implementation == "sdpa":
            y = self._sdpa(q, k, v, attn_bias, deterministic)  # (B, N, T, H)
            y = y.transpose(1, 2).reshape(B, T, C)
            y = _dropout(self.resid_dropout, self.c_proj(y), deterministic)
            return y, present, None
        if self.reorder_and_upcast_attn:
            # Mistral: scale q before the product and keep scores and softmax in float32 (fp16/bf16 stability).
            att = torch.matmul(q.float() * self.scale, k.float().transpose(-1, -2))  # (B, N, T, S)
        else:
            att = torch.matmul(q, k.transpose(-1, -2)) * self.scale  # (B, N, T, S)
        # gpt2_core.reference: padding keys -> finfo.min / 2, future keys -> finfo.min (replace, not add)
        if key_ok is not None:
            att = att.masked_fill(~key_ok, torch.finfo(att.dtype).min / 2)
        if causal is not None:
            att = att.masked_fill(~causal, torch.finfo(att.dtype).min)
        # softmax in float32 whatever the dtype (bf16 / fp16 scores keep their order, their sum is exact enough)
        att = F.softmax(att, dim=-1, dtype=torch.float32).to(v.dtype)
        att = _dropout(self.attn_dropout, att, deterministic)
        if head_mask is not None:
            att = att * head_mask  # (1, N, 1, 1): transformers 4.x scales the probabilities after dropout
        y = torch.matmul(att, v)  # (B, N, T, H)
        y = y.transpose(1, 2).reshape(B, T, C)
        y = _dropout(self.resid_dropout, self.c_proj(y), deterministic)
        return y, present, att

    def _sdpa(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None, deterministic: bool
    ) -> torch.Tensor:
        """The fused kernel on (B, N, T, H) queries and (B, N, S, H) keys and values.

        The bias holds 0, `finfo.min / 2` (padding) and `finfo.min` (future): added to scores of ordinary size it
        gives exactly the reference's replaced scores (the large fills absorb them), so a query that sees only padding
        attends uniformly to it, as in eager. `reorder_and_upcast_attn` runs the kernel in float32 (transformers'
        sdpa ignores the flag; eager and this path honour it)."""
        dtype = v.dtype
        if self.reorder_and_upcast_attn:
            q, k, v = q.float(), k.float(), v.float()
        dropout_p = self.attn_dropout.p if self.attn_dropout.training and not deterministic else 0.0
        is_causal = attn_bias is None and not self.is_cross_attention
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if attn_bias is None else attn_bias.to(q.dtype), dropout_p=dropout_p,
            is_causal=is_causal, scale=self.scale,
        )
        return y.to(dtype)


class GPT2MLP(nn.Module):
    """The feed-forward block: c_fc, activation, c_proj.

    Args:
        config: The model config (`n_inner`, `activation_function`, `resid_pdrop`).
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.c_fc = Linear(config.n_embd, config.inner_dim)
        self.c_proj = Linear(config.inner_dim, config.n_embd)
        self.act = ACT2FN[config.activation_function]
        self.dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, deterministic: bool = False) -> torch.Tensor:
        return _dropout(self.dropout, self.c_proj(self.act(self.c_fc(x))), deterministic)


class GPT2Block(nn.Module):
    """Pre-LayerNorm transformer block: attention (+ cross-attention) and MLP, each on a residual.

    Args:
        config: The model config.
        layer_idx: Index of the block.
    """

    def __init__(self, config: GPT2Config, layer_idx: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = GPT2Attention(config, layer_idx)
        if config.add_cross_attention:
            self.crossattention = GPT2Attention(config, layer_idx, is_cross_attention=True)
            self.ln_cross_attn = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = GPT2MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        causal: torch.Tensor | None = None,
        key_ok: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_key_ok: torch.Tensor | None = None,
        deterministic: bool = False,
        head_mask: torch.Tensor | None = None,
        implementation: str = "eager",
        attn_bias: torch.Tensor | None = None,
        encoder_attn_bias: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None, torch.Tensor | None]:
        y, present, att = self.attn(
            self.ln_1(x), cache, causal, key_ok, deterministic=deterministic, head_mask=head_mask,
            implementation=implementation, attn_bias=attn_bias,
        )
        x = x + y
        cross_att = None
        if encoder_hidden_states is not None:
            if not hasattr(self, "crossattention"):
                raise checks.no_cross_attention_error()
            y, _, cross_att = self.crossattention(
                self.ln_cross_attn(x), None, None, encoder_key_ok, encoder_hidden_states, deterministic, head_mask,
                implementation, encoder_attn_bias,
            )
            x = x + y
        x = x + self.mlp(self.ln_2(x), deterministic)
        return x, present, att, cross_att


class GPT2PreTrainedModel(nn.Module):
    """Shared loading, saving and initialisation of every GPT-2 class.

    Args:
        config: The model config.
    """

    head: str = "base"
    # What transformers' tools read off a model (Trainer, pipeline, peft, accelerate): transformers' values.
    main_input_name = "input_ids"
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GPT2Block"]
    _keys_to_ignore_on_save = None
    _tied_weights_keys = None

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
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
        """Initialise as transformers does (gpt2_core.reference.init_params); the seed comes from torch's RNG."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()).item())
        from gpt2_torch.weights import load_canonical

        load_canonical(self, reference.init_params(self.config, self.head, seed))

    def canonical_state_dict(self) -> dict[str, np.ndarray]:
        """Parameters as a canonical dict (gpt2_core.naming names and layouts), float32 NumPy."""
        from gpt2_torch.weights import canonical_state_dict

        return canonical_state_dict(self)

    def load_canonical(self, canonical: dict[str, np.ndarray]) -> None:
        from gpt2_torch.weights import load_canonical

        load_canonical(self, canonical)

    @classmethod
    def from_config(cls, config: GPT2Config, seed: int | None = None) -> "GPT2PreTrainedModel":
        model = cls(config)
        if seed is not None:
            model.init_weights(seed)
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        config: GPT2Config | None = None,
        dtype: torch.dtype | str | None = None,
        torch_dtype: torch.dtype | str | None = None,
        device: str | torch.device | None = None,
        quantize: str | None = None,
        **hub_kwargs: Any,
    ) -> "GPT2PreTrainedModel":
        """Load `config.json` + weights (`model.safetensors`, sharded or not, `pytorch_model.bin`, or a transformers
        4.x `tf_model.h5` / `flax_model.msgpack`) from a local directory or a Hub id. Heads missing from the checkpoint (a base checkpoint loaded into a classifier) are
        initialised and logged, as transformers does.

        Args:
            pretrained_model_name_or_path: Local directory or Hub id (e.g. `openai-community/gpt2`).
            config: Use this config instead of the checkpoint's `config.json`.
            dtype: Parameter dtype (`torch.float16`, `"bfloat16"`, ...); float32 by default.
            torch_dtype: Old name of `dtype`.
            device: Where to put the model.
            device_map: transformers' placement across devices (`gpt2_torch.distributed.place`): `"auto"`,
                `"balanced"`, `"balanced_low_0"`, `"sequential"`, `"cpu"`, or {module prefix: device}.
            quantize: `"int8"`: weight-only int8 with per-output-channel scales after loading
                (`gpt2_torch.quantize.quantize_int8`; CPU inference), or None. An int8 checkpoint (saved by
                `save_pretrained` of an int8 model, `weights_convert.quantized`) loads as int8 either way, its
                modules built from the file's int8 weights (`gpt2_torch.quantize.load_quantized`).
            **hub_kwargs: `gpt2_core.hub.HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
                `force_download`, `subfolder`), for config.json and the weights alike.
        """
        from weights_convert.pretrained import load_pretrained, parse_device_map

        device_map = parse_device_map(hub_kwargs.pop("device_map", None))  # placed below (gpt2_torch.distributed)
        if device_map is not None and device is not None:
            raise ValueError(
                f"device and device_map both choose where the model goes. Received: device={device!r}, "
                f"device_map={device_map!r}. Pass one of them."
            )
        loaded = load_pretrained(
            pretrained_model_name_or_path,
            cls.head,
            config=config,
            owner=cls.__name__,
            init_seed=lambda: int(torch.randint(0, 2**31 - 1, ()).item()),
            keep_quantized=True,
            **hub_kwargs,
        )
        if loaded.scales is not None:  # an int8 checkpoint: the int8 modules straight from the file
            from gpt2_torch.quantize import load_int8_checkpoint

            return load_int8_checkpoint(cls, loaded, dtype=dtype if dtype is not None else torch_dtype,
                                        device=device, device_map=device_map, quantize=quantize)
        with reference.skip_init(), torch.device("meta"):
            model = cls(loaded.config)
        model = model.to_empty(device="cpu")
        model.tie_weights()  # to_empty gives every parameter its own storage
        model.load_canonical(loaded.canonical)
        if model.can_generate():
            model.generation_config = loaded.generation_config
        dtype = loaded.resolve_dtype(dtype if dtype is not None else torch_dtype)  # "auto": the checkpoint's
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is not None:
            model = model.to(dtype)
        if device is not None:
            model = model.to(device)
        if device_map is not None:
            from gpt2_torch.distributed import place

            model = place(model, device_map)
        if loaded.attn_implementation is not None:
            model.set_attn_implementation(loaded.attn_implementation)
        if quantize is not None:
            from gpt2_torch.quantize import quantize_model

            quantize_model(model, quantize)
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
        if getattr(self, "quantization_config", None) is not None:  # the int8 format of weights_convert.quantized
            from gpt2_torch.quantize import quantized_state_dict
            from weights_convert.quantized import quantization_config

            canonical, scales = quantized_state_dict(self)
            save_pretrained(
                save_directory, self.config, canonical, self.head, max_shard_size=max_shard_size,
                generation_config=self.generation_config, scales=scales, quantization_config=quantization_config(),
            )
            return
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

    def set_attn_implementation(self, attn_implementation: str) -> None:
        """Choose the attention path, transformers v5's `set_attn_implementation`: `"sdpa"` (fused
        `F.scaled_dot_product_attention`, the default) or `"eager"` (the reference path). Recorded as
        `config._attn_implementation`, which is not written to config.json."""
        if attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"Unsupported attention implementation. Received: attn_implementation={attn_implementation!r}. Use "
                f"one of {ATTN_IMPLEMENTATIONS}."
            )
        self.config._attn_implementation = attn_implementation

    def tie_weights(self) -> None:
        """Share the token embedding with the LM head when `tie_word_embeddings` (models with an LM head)."""
        if hasattr(self, "lm_head") and self.config.tie_word_embeddings:
            self.lm_head.weight = self.transformer.wte.weight
            self.lm_head.out_features = self.transformer.wte.num_embeddings  # after a resize

    def num_parameters(self, only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        """Number of parameters (a tied weight counted once), transformers' `num_parameters`.

        Args:
            only_trainable: Count only parameters with `requires_grad`.
            exclude_embeddings: Leave out the `nn.Embedding` weights (`wte`, `wpe`; a tied LM head with them).
        """
        embedding_names = set()
        if exclude_embeddings:
            embedding_names = {f"{name}.weight" for name, m in self.named_modules() if isinstance(m, nn.Embedding)}
        return sum(
            p.numel()
            for name, p in self.named_parameters()
            if name not in embedding_names and (p.requires_grad or not only_trainable)
        )

    # -- transformers' embedding accessors and resizing ---------------------------------------------------------
    @property
    def base_model(self) -> "GPT2Model":
        """The `GPT2Model` body (the model itself for `GPT2Model`)."""
        return getattr(self, self.base_model_prefix, self)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.base_model.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.base_model.wte = value

    def get_output_embeddings(self) -> nn.Linear | None:
        """The LM head (`None` for models without one)."""
        return getattr(self, "lm_head", None)

    def set_output_embeddings(self, new_embeddings: nn.Linear) -> None:
        if not hasattr(self, "lm_head"):
            raise ValueError(
                f"{type(self).__name__} has no LM head to replace. "
                f"Received: new_embeddings={type(new_embeddings).__name__}. "
                "Use GPT2LMHeadModel or GPT2DoubleHeadsModel."
            )
        self.lm_head = new_embeddings

    def resize_token_embeddings(
        self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
    ) -> nn.Embedding:
        """Grow or shrink the token embedding (and an untied LM head) to `new_num_tokens` rows; transformers v5's
        `resize_token_embeddings`, step for step and draw for draw (the same rows under the same torch seed).

        Rows are kept or dropped at the end. New rows are drawn from a normal with the old rows' mean and
        `1e-9` times their covariance (`mean_resizing=True`, transformers' default; exactly the mean when that
        covariance is not positive definite, e.g. fewer rows than `n_embd`), or from `normal(0, initializer_range)`.
        The embedding keeps its `Parameter` (a tied LM head follows), and `config.vocab_size` is updated.

        Args:
            new_num_tokens: Rows wanted, e.g. `len(tokenizer)` after `add_special_tokens`; `None` keeps the size.
            pad_to_multiple_of: Round the row count up to a multiple of this (tensor-core friendly sizes).
            mean_resizing: The mean/covariance rule above (True) or the plain normal init (False).

        Returns:
            The input embedding module.
        """
        new_num_tokens = checks.resize_row_count(new_num_tokens, pad_to_multiple_of, self.get_input_embeddings().num_embeddings)
        if new_num_tokens is None:
            return self.get_input_embeddings()
        std = self.config.initializer_range
        wte = self.get_input_embeddings()
        new_wte = _resized_embedding(wte, new_num_tokens, mean_resizing, std)
        if new_wte is not wte:
            # transformers keeps the old module and Parameter and swaps the data: ties and references survive
            wte.weight.data = new_wte.weight.data
            wte.num_embeddings = new_num_tokens
        lm_head = self.get_output_embeddings()
        if lm_head is not None and lm_head.weight.shape[0] != new_num_tokens:  # an untied head
            new_head = _resized_lm_head(lm_head, new_num_tokens, mean_resizing, std)
            new_head.requires_grad_(lm_head.weight.requires_grad)
            self.set_output_embeddings(new_head)
        self.config.vocab_size = new_num_tokens
        self.tie_weights()
        return self.get_input_embeddings()

    # -- activation (gradient) checkpointing ------------------------------------------------------------------
    def activation_checkpointing_enable(
        self,
        activation_checkpointing_kwargs: dict[str, Any] | None = None,
        every_n_layers: int = 1,
        offload: bool = False,
    ) -> None:
        """Recompute each block's activations in the backward pass instead of keeping them
        (`torch.utils.checkpoint.checkpoint` per `GPT2Block`, in training mode, without a cache), transformers'
        `activation_checkpointing_enable`: same loss and gradients, less memory, one more forward per block.

        Args:
            activation_checkpointing_kwargs: Keyword arguments of `torch.utils.checkpoint.checkpoint`;
                default `{"use_reentrant": False}`.
            every_n_layers: Checkpoint only every n-th block (blocks 0, n, 2n, ...).
            offload: Keep the tensors saved for the recompute in (pinned) host memory.
        """
        if not _positive_int(every_n_layers):
            raise ValueError(
                f"every_n_layers must be a positive integer. Received: every_n_layers={every_n_layers!r}. "
                "Use 1 to checkpoint every block."
            )
        kwargs = activation_checkpointing_kwargs
        kwargs = {"use_reentrant": False} if kwargs is None else dict(kwargs)
        func = functools.partial(_checkpoint, offload=offload, **kwargs)
        for body in self.modules():
            if isinstance(body, GPT2Model):
                body.gradient_checkpointing = True
                body._gradient_checkpointing_func = func
                body._checkpoint_every = every_n_layers
        if getattr(self, "_hf_peft_config_loaded", False):
            self.enable_input_require_grads()

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """transformers' older name of `activation_checkpointing_enable` (what most training scripts call)."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    def activation_checkpointing_disable(self) -> None:
        for body in self.modules():
            if isinstance(body, GPT2Model):
                body.gradient_checkpointing = False

    def gradient_checkpointing_disable(self) -> None:
        """transformers' older name of `activation_checkpointing_disable`."""
        self.activation_checkpointing_disable()

    @property
    def is_activation_checkpointing(self) -> bool:
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.is_activation_checkpointing

    def enable_input_require_grads(self) -> None:
        """Make the token embedding's output require grad (peft with frozen embeddings plus checkpointing)."""

        def make_inputs_require_grads(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
            output.requires_grad_(True)

        self._require_grads_hook = self.get_input_embeddings().register_forward_hook(make_inputs_require_grads)

    def disable_input_require_grads(self) -> None:
        hook = self.__dict__.pop("_require_grads_hook", None)
        if hook is not None:
            hook.remove()

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class GPT2Model(GPT2PreTrainedModel):
    """The bare GPT-2 transformer: embeddings, blocks, final LayerNorm.

    Args:
        config: The model config.
    """

    head = "base"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.n_positions, config.n_embd)
        self.drop = nn.Dropout(config.embd_pdrop)
        self.h = nn.ModuleList([GPT2Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.gradient_checkpointing = False  # activation_checkpointing_enable sets it
        self._gradient_checkpointing_func: Any = None
        self._checkpoint_every = 1
        _register_hub_layout_hooks(self, config)
        if type(self) is GPT2Model and not _skip_init():
            self.init_weights()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
        deterministic: bool = False,
        _check_inputs: bool = True,
    ) -> BaseModelOutputWithPastAndCrossAttentions | tuple:
        """The transformer; see transformers' `GPT2Model.forward` for the arguments.

        `past_key_values` is transformers' tuple (returned as a tuple when `use_cache`) or a `KVCache` (always
        returned, advanced). `use_cache`, `output_attentions`, `output_hidden_states` and `return_dict` left at
        `None` follow the config (`config.output_hidden_states = True` works as in transformers). `head_mask`
        (transformers 4.x; keyword only here): `(n_head,)` for every layer or `(n_layer, n_head)`, multiplies each
        head's attention probabilities. `deterministic=True` turns dropout off for this call whatever the
        train/eval mode. `_check_inputs=False` skips the input checks, which read values on the host: only for the
        generation loop, which built its inputs itself.
        """
        config = self.config
        use_cache = config.use_cache if use_cache is None else use_cache
        if output_attentions is None:
            output_attentions = bool(getattr(config, "output_attentions", False))
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(config, "output_hidden_states", False))
        checkpointing = self.gradient_checkpointing and self.training
        if checkpointing and use_cache and past_key_values is None:
            # transformers' rule: a cache built in a recomputed forward would be written twice
            _warn_once("use_cache=True is incompatible with gradient checkpointing. Setting use_cache=False.")
            use_cache = False
        if input_ids is not None and _check_inputs:
            checks.check_integer_ids(_np_dtype(input_ids), "input_ids")  # a float id would be truncated
            if input_ids.dtype not in (torch.int32, torch.int64):
                input_ids = input_ids.long()  # uint8 / int16 ids: the embedding takes int32 or int64
        # Leading dims beyond batch (the multiple-choice head's choices) fold into the batch, as in transformers.
        lead_shape = None
        if input_ids is not None and input_ids.dim() > 2:
            lead_shape = input_ids.shape[:-1]
            input_ids = _fold_leading(input_ids)
        if inputs_embeds is not None and inputs_embeds.dim() > 3:
            lead_shape = inputs_embeds.shape[:-2]
            inputs_embeds = inputs_embeds.reshape(math.prod(lead_shape), *inputs_embeds.shape[-2:])
        if lead_shape is not None:
            attention_mask = None if attention_mask is None else _fold_leading(attention_mask)
            token_type_ids = None if token_type_ids is None else _fold_leading(token_type_ids)
            position_ids = None if position_ids is None else _fold_leading(position_ids)
        shape = (input_ids if input_ids is not None else inputs_embeds).shape
        B, T = shape[0], shape[1] if len(shape) > 1 else 0  # a 1-d input gets its error from the checks
        preallocated = isinstance(past_key_values, KVCache)
        if _check_inputs:
            _check_forward_inputs(
                config, past_key_values, B, T, input_ids, inputs_embeds, attention_mask, position_ids, token_type_ids
            )
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)  # (B, T, C)
        device = inputs_embeds.device

        # One attention path: with a past or use_cache, every layer attends over a preallocated KVCache. A legacy
        # tuple converts at the edge (as transformers' DynamicCache.from_legacy_cache) and converts back below.
        legacy_length = None
        if preallocated:
            cache = past_key_values
        elif past_key_values is not None:
            legacy_length = past_key_values[0][0].shape[2] + T
            cache = KVCache.from_legacy(past_key_values, max_length=legacy_length)
        elif use_cache:
            legacy_length = T
            cache = KVCache.init(config, B, T, dtype=inputs_embeds.dtype, device=device)
        else:
            cache = None
        # a fresh cache (or none) starts at 0, known on the host: sdpa's own causal mask then applies
        fresh = cache is None or (not preallocated and past_key_values is None)
        P = 0 if cache is None else cache.length  # a 0-d tensor with a cache: never read on the host
        S = T if cache is None else cache.max_length
        if position_ids is None:
            if attention_mask is not None:
                whole_buffer = cache is not None and attention_mask.shape[-1] == S
                position_ids = position_ids_from_attention_mask(attention_mask, T, P if whole_buffer else None)
            else:
                position_ids = (P + torch.arange(T, device=device))[None, :]
        x = inputs_embeds + self.wpe(position_ids)
        if token_type_ids is not None:
            x = x + self.wte(token_type_ids)
        x = _dropout(self.drop, x, deterministic)

        # causal[t, s]: key s is not in query t's future; key_ok[b, 0, 0, s]: key s is not padding
        causal = torch.arange(S, device=device)[None, :] <= (P + torch.arange(T, device=device))[:, None]  # (T, S)
        key_ok = None
        if attention_mask is not None:
            # A mask of (B, length + T) covers the filled and new slots; the later ones are hidden by `causal`.
            key_ok = F.pad(attention_mask != 0, (0, S - attention_mask.shape[-1]), value=True)[:, None, None, :]
        encoder_key_ok = None
        if encoder_hidden_states is not None and encoder_attention_mask is not None:
            encoder_key_ok = (encoder_attention_mask != 0)[:, None, None, :]  # (B, 1, 1, S_enc)

        head_masks = _layer_head_masks(head_mask, config, x.dtype, device)
        implementation = attention_implementation(config, output_attentions, head_mask)
        attn_bias = encoder_attn_bias = None
        if implementation == "sdpa":
            bias_dtype = torch.float32 if config.reorder_and_upcast_attn else x.dtype
            if not (fresh and key_ok is None):
                attn_bias = _sdpa_bias(causal, key_ok, bias_dtype)  # (B or 1, 1, T, S)
            if encoder_key_ok is not None:
                encoder_attn_bias = _sdpa_bias(None, encoder_key_ok, bias_dtype)  # (B, 1, 1, S_enc)
        presents = []
        all_hidden = [x] if output_hidden_states else None
        all_att = [] if output_attentions else None
        all_cross = [] if (output_attentions and encoder_hidden_states is not None) else None
        for i, block in enumerate(self.h):
            args = (x, cache, causal, key_ok, encoder_hidden_states, encoder_key_ok, deterministic, head_masks[i],
                    implementation, attn_bias, encoder_attn_bias)
            if checkpointing and cache is None and i % self._checkpoint_every == 0:
                func = self._gradient_checkpointing_func or functools.partial(_checkpoint, use_reentrant=False)
                x, present, att, cross_att = func(block.__call__, *args)
            else:
                x, present, att, cross_att = block(*args)
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
        new_cache = None
        if cache is not None:
            new_cache = cache.advance([k for k, _ in presents], [v for _, v in presents], T)
        if preallocated:
            past_out = new_cache  # a KVCache given is always returned
        elif use_cache:
            past_out = new_cache.to_legacy(legacy_length)
        else:
            past_out = None
        out = BaseModelOutputWithPastAndCrossAttentions(
            last_hidden_state=x,
            past_key_values=past_out,
            hidden_states=tuple(all_hidden) if output_hidden_states else None,
            attentions=tuple(all_att) if output_attentions else None,
            cross_attentions=tuple(all_cross) if all_cross is not None else None,
        )
        return out if _use_return_dict(config, return_dict) else out.to_tuple()


ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# transformers v5's default where `F.scaled_dot_product_attention` exists (every supported torch)
DEFAULT_ATTN_IMPLEMENTATION = "sdpa"


def attention_implementation(
    config: GPT2Config, output_attentions: bool = False, head_mask: torch.Tensor | None = None
) -> str:
    """The attention path of a forward: `config._attn_implementation` (set by `from_pretrained(...,
    attn_implementation=)` and `set_attn_implementation`; else a config.json / `GPT2Config(attn_implementation=)`
    key; else "sdpa", transformers v5's default). `output_attentions` or a `head_mask` need the probabilities and
    run eager, as transformers 4.x's sdpa fell back."""
    value = getattr(config, "_attn_implementation", None)
    if value is None:
        value = config.extra.get("attn_implementation") or DEFAULT_ATTN_IMPLEMENTATION
    if value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"Unsupported attention implementation. Received: attn_implementation={value!r}. Use one of "
            f"{ATTN_IMPLEMENTATIONS}."
        )
    if output_attentions or head_mask is not None:
        return "eager"
    return value


def _sdpa_bias(causal: torch.Tensor | None, key_ok: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """The additive mask of the sdpa path: gpt2_core.reference's fills (padding `finfo.min / 2`, future
    `finfo.min`, future winning) as 0 / fill values, (B or 1, 1, T, S)."""
    fill = torch.finfo(dtype).min
    bias = torch.zeros((), dtype=dtype, device=(causal if causal is not None else key_ok).device)
    if key_ok is not None:
        bias = torch.where(key_ok, bias, torch.tensor(fill / 2, dtype=dtype, device=bias.device))  # (B, 1, 1, S)
    if causal is not None:
        bias = torch.where(causal, bias, torch.tensor(fill, dtype=dtype, device=bias.device))  # (B or 1, 1, T, S)
    return bias if bias.dim() == 4 else bias[None, None]


def _fold_leading(x: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (prod(...), T); unlike reshape(-1, T) also for T = 0."""
    return x.reshape(math.prod(x.shape[:-1]), x.shape[-1])


def _check_forward_inputs(
    config: GPT2Config,
    past_key_values: Any,
    B: int,
    T: int,
    input_ids: torch.Tensor | None,
    inputs_embeds: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    token_type_ids: torch.Tensor | None,
) -> None:
    """gpt2_core.checks on a forward's inputs (reads the id range and a KVCache's length on the host)."""
    cache_max_length = None
    if isinstance(past_key_values, KVCache):
        shapes = [(tuple(k.shape), tuple(v.shape)) for k, v in zip(past_key_values.key, past_key_values.value)]
        P = checks.check_cache(config, shapes, B, T, length=int(past_key_values.length), preallocated=True)
        cache_max_length = past_key_values.max_length
    else:
        P = checks.check_past_key_values(config, past_key_values, B, T)
    checks.check_model_inputs(
        config,
        input_ids=None if input_ids is None else _min_max(input_ids),
        input_shape=None if input_ids is None else tuple(input_ids.shape),
        inputs_embeds_shape=None if inputs_embeds is None else tuple(inputs_embeds.shape),
        attention_mask_shape=None if attention_mask is None else tuple(attention_mask.shape),
        position_ids=None if position_ids is None else _min_max(position_ids),
        position_ids_shape=None if position_ids is None else tuple(position_ids.shape),
        token_type_ids_shape=None if token_type_ids is None else tuple(token_type_ids.shape),
        past_length=P,
        cache_max_length=cache_max_length,
    )
    if token_type_ids is not None:  # they index the token embedding, as input_ids do
        checks.check_integer_ids(_np_dtype(token_type_ids), "token_type_ids")
        checks.check_index_range(_min_max(token_type_ids), config.vocab_size, "token_type_ids", "vocab_size")


def _use_return_dict(config: GPT2Config, return_dict: bool | None) -> bool:
    """transformers' rule: `return_dict=None` follows `config.use_return_dict`, i.e. `config.return_dict` (True when
    the config has neither)."""
    if return_dict is not None:
        return bool(return_dict)
    use = getattr(config, "use_return_dict", None)
    return bool(getattr(config, "return_dict", True) if use is None else use)


def _layer_head_masks(
    head_mask: torch.Tensor | None, config: GPT2Config, dtype: torch.dtype, device: torch.device
) -> list[Any]:
    """transformers 4.x `get_head_mask`: `(N,)` for every layer or `(n_layer, N)` -> per layer `(1, N, 1, 1)`."""
    if head_mask is None:
        return [None] * config.n_layer
    head_mask = torch.as_tensor(head_mask)
    L, N = config.n_layer, config.n_head
    if tuple(head_mask.shape) == (N,):
        head_mask = head_mask[None].expand(L, N)
    elif tuple(head_mask.shape) != (L, N):
        raise ValueError(
            f"head_mask must have shape (n_head,) or (n_layer, n_head) = ({N},) or ({L}, {N}). "
            f"Received: head_mask.shape={tuple(head_mask.shape)}. Pass one value per head (1.0 keeps it, 0.0 masks it)."
        )
    return list(head_mask.to(device=device, dtype=dtype)[:, None, :, None, None])


def _register_hub_layout_hooks(body: nn.Module, config: GPT2Config) -> None:
    """Make `state_dict()` / `load_state_dict()` speak transformers' layout.

    The body's projections are `nn.Linear` (`[out, in]`) here and transformers' `Conv1D` (`[in, out]`) there;
    `gpt2_core.naming` says which (its torch `transpose` flag). Each such module gets a state-dict hook that writes
    its weight transposed and a load pre-hook that transposes what it reads: a state dict of this library is a
    transformers state dict, key for key and shape for shape, and `load_state_dict` always reads that layout, the
    square `attn.c_proj` included (no guessing from shapes). The hooks sit on the modules, so they follow a module
    wrapped by peft (`c_attn.base_layer`) or under `torch.compile` (`_orig_mod.`).
    """
    for key in naming.shape_table(config, "base"):
        path, transpose = naming.backend_path(key, "torch", config, "base")
        module_path, leaf = path.rsplit(".", 1)
        if transpose and leaf == "weight":
            module = body.get_submodule(module_path)
            module.register_state_dict_post_hook(_hub_layout_state_dict_hook)
            module.register_load_state_dict_pre_hook(_hub_layout_load_hook)


def _hub_layout_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    key = prefix + "weight"
    if key in state_dict:
        w = state_dict[key]
        # A contiguous copy (safetensors and Trainer's checkpoints need one); with keep_vars a view of the Parameter.
        state_dict[key] = w.t() if isinstance(w, nn.Parameter) else w.t().contiguous()


def _hub_layout_load_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
    missing_keys: list, unexpected_keys: list, error_msgs: list,
) -> None:
    key = prefix + "weight"
    if key not in state_dict:
        return
    w = state_dict[key]
    out_features, in_features = module.weight.shape
    if out_features != in_features and tuple(w.shape) == (out_features, in_features):
        error_msgs.append(
            f"{key} has the nn.Linear layout {tuple(w.shape)}; state dicts here have transformers' Conv1D layout "
            f"[in, out] = ({in_features}, {out_features}). Received: {key}.shape={tuple(w.shape)}. Pass a "
            "transformers state dict (or this library's `state_dict()`), or use `load_canonical`."
        )
        return
    state_dict[key] = w.t()


def _tied_head_state_dict_hook(module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any) -> None:
    # transformers' state_dict() carries the tied lm_head.weight too; a copy, so the dict has no shared storage
    # (safetensors refuses shared tensors, and Trainer saves a non-transformers model with safetensors).
    key = prefix + "lm_head.weight"
    if module.config.tie_word_embeddings and key in state_dict and not isinstance(state_dict[key], nn.Parameter):
        state_dict[key] = state_dict[key].clone()


def _tied_head_load_hook(
    module: nn.Module, state_dict: dict, prefix: str, local_metadata: Any, strict: bool,
    missing_keys: list, unexpected_keys: list, error_msgs: list,
) -> None:
    # transformers' saved files leave the tied head out: it is the token embedding
    key, wte = prefix + "lm_head.weight", prefix + "transformer.wte.weight"
    if module.config.tie_word_embeddings and key not in state_dict and wte in state_dict:
        state_dict[key] = state_dict[wte]


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def _resized_embedding(old: nn.Embedding, n: int, mean_resizing: bool, std: float) -> nn.Embedding:
    """transformers v5 `_get_resized_embeddings`: a new `nn.Embedding` built the same way (so torch's RNG is drawn
    in the same order), new rows initialised, the old rows copied; `old` itself when the size is unchanged."""
    old_n, C = old.weight.shape
    if old_n == n:
        return old
    new = nn.Embedding(n, C, device=old.weight.device, dtype=old.weight.dtype)
    if n > old_n and not mean_resizing:
        nn.init.normal_(new.weight, mean=0.0, std=std)
    elif n > old_n:
        _init_added_rows_with_mean(old.weight, new.weight, n - old_n)
    k = min(old_n, n)
    new.weight.data[:k] = old.weight.data[:k]
    return new


def _resized_lm_head(old: nn.Linear, n: int, mean_resizing: bool, std: float) -> nn.Linear:
    """transformers v5 `_get_resized_lm_head` for an untied head (an `nn.Linear`, `[V, C]`)."""
    old_n, C = old.weight.shape
    has_bias = old.bias is not None
    new = Linear(C, n, bias=has_bias, device=old.weight.device, dtype=old.weight.dtype)
    if n > old_n and not mean_resizing:
        nn.init.normal_(new.weight, mean=0.0, std=std)
        if has_bias:
            nn.init.zeros_(new.bias)
    elif n > old_n:
        _init_added_rows_with_mean(old.weight, new.weight, n - old_n)
        if has_bias:
            bias_mean = torch.mean(old.bias.data, dim=0, dtype=torch.float32)
            bias_std = torch.std(old.bias.data, dim=0).to(torch.float32)
            new.bias.data[-(n - old_n):].normal_(mean=bias_mean, std=1e-9 * bias_std)
    k = min(old_n, n)
    new.weight.data[:k] = old.weight.data[:k]
    if has_bias:
        new.bias.data[:k] = old.bias.data[:k]
    return new


def _init_added_rows_with_mean(old: torch.Tensor, new: torch.Tensor, added: int) -> None:
    """transformers v5 `_init_added_embeddings_weights_with_mean`: new rows ~ N(mean, 1e-9 * covariance) of the old
    rows, or the mean where that covariance is not positive definite
    (https://nlp.stanford.edu/~johnhew/vocab-expansion.html)."""
    w = old.data.to(torch.float32)
    mean = torch.mean(w, dim=0)
    centered = w - mean
    covariance = centered.T @ centered / w.shape[0]  # (C, C)
    epsilon = 1e-9
    if torch.distributions.constraints.positive_definite.check(epsilon * covariance).all():
        dist = torch.distributions.multivariate_normal.MultivariateNormal(mean, covariance_matrix=epsilon * covariance)
        new.data[-added:] = dist.sample(sample_shape=(added,)).to(old.dtype)
    else:
        new.data[-added:] = mean[None, :].repeat(added, 1).to(old.dtype)


def _checkpoint(function: Any, *args: Any, offload: bool = False, **kwargs: Any) -> Any:
    """`torch.utils.checkpoint.checkpoint`, with the saved tensors in host memory when `offload`."""
    from torch.utils.checkpoint import checkpoint

    if not offload:
        return checkpoint(function, *args, **kwargs)
    with torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available()):
        return checkpoint(function, *args, **kwargs)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _skip_init() -> bool:
    """gpt2_core.reference's skip-init rule (or a build on the meta device, where nothing can be drawn)."""
    return reference.init_skipped() or _on_meta()


def _on_meta() -> bool:
    return torch.empty(()).device.type == "meta"


def _min_max(t: torch.Tensor) -> np.ndarray:
    # Two numbers are enough for the range checks; avoid copying the whole tensor to the host.
    if t.numel() == 0:
        return np.zeros((0,), dtype=np.int64)
    return np.array([int(t.min()), int(t.max())])


class GPT2LMHeadModel(GPT2PreTrainedModel):
    """GPT-2 with a language-modeling head (tied to the token embedding unless `tie_word_embeddings=False`).

    Args:
        config: The model config.
    """

    head = "lm"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        self.register_state_dict_post_hook(_tied_head_state_dict_hook)
        self.register_load_state_dict_pre_hook(_tied_head_load_hook)
        if not _skip_init():
            self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> CausalLMOutputWithCrossAttentions | tuple:
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
            return_dict=True,
            head_mask=head_mask,
        )
        logits = self.lm_head(out.last_hidden_state)  # (B, T, V)
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        result = CausalLMOutputWithCrossAttentions(
            loss=loss,
            logits=logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
            cross_attentions=out.cross_attentions,
        )
        return result if _use_return_dict(self.config, return_dict) else result.to_tuple()

    def _decode_step(
        self, input_ids: torch.Tensor, cache: KVCache, attention_mask: torch.Tensor, *, check_inputs: bool = False
    ) -> tuple[torch.Tensor, KVCache]:
        """gpt2_torch.generation's step: (B, T) ids through `cache` -> logits of the last position (B, V), new cache.

        Dropout is off (whatever the module's mode) and, unless `check_inputs`, the host-reading input checks are
        skipped, so a decode step never waits for the device. The mask covers the whole buffer, (B, S_max).
        """
        out = self.transformer(
            input_ids,
            past_key_values=cache,
            attention_mask=attention_mask,
            use_cache=True,
            return_dict=True,
            deterministic=True,
            _check_inputs=check_inputs,
        )
        return self.lm_head(out.last_hidden_state[:, -1]), out.past_key_values  # the head on the last position only

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.Tensor,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """transformers' hook for one decoding step's `forward` arguments (what peft and custom loops call; this
        library's own `generate` does not need it). With a past, only the tokens it has not seen are kept; the
        position ids then follow from the (whole) attention mask inside `forward`.
        """
        token_type_ids = kwargs.get("token_type_ids")
        if past_key_values is not None:
            if isinstance(past_key_values, KVCache):
                past_length = int(past_key_values.length)
            else:
                past_length = past_key_values[0][0].shape[2]
            cut = past_length if input_ids.shape[1] > past_length else input_ids.shape[1] - 1
            input_ids = input_ids[:, cut:]
            if token_type_ids is not None:
                token_type_ids = token_type_ids[:, cut:]
        if inputs_embeds is not None and past_key_values is None:
            model_inputs: dict[str, Any] = {"inputs_embeds": inputs_embeds}
        else:
            model_inputs = {"input_ids": input_ids}
        model_inputs.update(
            past_key_values=past_key_values,
            use_cache=kwargs.get("use_cache"),
            position_ids=kwargs.get("position_ids"),
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
        )
        return model_inputs

    def generate(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None, **kwargs: Any,
    ) -> Any:
        """Cached decoding (greedy, sampling, beam search), transformers' `generate`; see
        `gpt2_torch.generation.generate` for the arguments."""
        from gpt2_torch.generation import generate

        return generate(self, input_ids, attention_mask, generation_config, **kwargs)


def _check_labels(labels: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """gpt2_core.checks.check_labels on the host (torch's own error is `Target -1 is out of bounds`); skipped while
    torch.compile traces, where no value can be read."""
    if torch.compiler.is_compiling() or labels.dtype.is_floating_point:
        return
    checks.check_labels(labels.detach().cpu().numpy(), num_classes, name, reference.IGNORE_INDEX)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """gpt2_core.reference.lm_loss: shift inside, ignore -100, mean in float32."""
    labels = labels.to(logits.device)
    shift_logits = logits[..., :-1, :].float()
    shift_labels = labels[..., 1:]
    _check_labels(shift_labels, shift_logits.shape[-1])
    return F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1), ignore_index=reference.IGNORE_INDEX
    )


class GPT2SequenceSummary(nn.Module):
    """transformers' GPT2SequenceSummary: pool one vector per sequence (the multiple-choice head).

    Args:
        config: The model config (`summary_*` fields).
    """

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.summary_type = config.summary_type
        self.summary = nn.Identity()
        if config.summary_use_proj:
            n = 1 if config.summary_proj_to_labels else config.n_embd
            self.summary = Linear(config.n_embd, n)
        self.activation = torch.tanh if config.summary_activation == "tanh" else (lambda x: x)
        self.first_dropout = nn.Dropout(config.summary_first_dropout or 0.0)

    def forward(self, hidden_states: torch.Tensor, cls_index: torch.Tensor | None = None) -> torch.Tensor:
        if self.summary_type == "last":
            x = hidden_states[..., -1, :]
        elif self.summary_type == "first":
            x = hidden_states[..., 0, :]
        elif self.summary_type == "mean":
            x = hidden_states.mean(dim=-2)
        elif cls_index is None:
            x = hidden_states[..., -1, :]
        else:
            idx = cls_index[..., None, None].expand(*cls_index.shape, 1, hidden_states.shape[-1])
            x = hidden_states.gather(-2, idx).squeeze(-2)  # (..., C)
        x = self.first_dropout(x)
        return self.activation(self.summary(x))


class GPT2DoubleHeadsModel(GPT2PreTrainedModel):
    """GPT-2 with a language-modeling head and a multiple-choice head (RocStories/SWAG style).

    Args:
        config: The model config; as in transformers, `num_labels` is set to 1.
    """

    head = "double"
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: GPT2Config) -> None:
        if isinstance(config, GPT2Config):
            config = config.copy()  # the caller's config keeps its num_labels
            config.num_labels = 1
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.lm_head = Linear(config.n_embd, config.vocab_size, bias=False)
        self.tie_weights()
        self.register_state_dict_post_hook(_tied_head_state_dict_hook)
        self.register_load_state_dict_pre_hook(_tied_head_load_hook)
        self.multiple_choice_head = GPT2SequenceSummary(config)
        if not _skip_init():
            self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        mc_token_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mc_labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> GPT2DoubleHeadsModelOutput | tuple:
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
            return_dict=True,
            head_mask=head_mask,
        )
        hidden = out.last_hidden_state  # (B, choices, T, C)
        logits = self.lm_head(hidden)
        mc_logits = self.multiple_choice_head(hidden, mc_token_ids).squeeze(-1)  # (B, choices)
        mc_loss = None
        if mc_labels is not None:
            _check_labels(mc_labels, mc_logits.shape[-1], "mc_labels")
            mc_loss = F.cross_entropy(mc_logits.reshape(-1, mc_logits.shape[-1]).float(), mc_labels.reshape(-1))
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
        result = GPT2DoubleHeadsModelOutput(
            loss=loss,
            mc_loss=mc_loss,
            logits=logits,
            mc_logits=mc_logits,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if _use_return_dict(self.config, return_dict) else result.to_tuple()


class GPT2ForSequenceClassification(GPT2PreTrainedModel):
    """GPT-2 with a linear classifier on the last non-padding token (`config.pad_token_id`).

    Args:
        config: The model config (`num_labels`, `pad_token_id`, `problem_type`).
    """

    head = "seqcls"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        self.score = Linear(config.n_embd, config.num_labels, bias=False)
        if not _skip_init():
            self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> SequenceClassifierOutputWithPast | tuple:
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
            return_dict=True,
            head_mask=head_mask,
        )
        logits = self.score(out.last_hidden_state)  # (B, T, L)
        B, T = logits.shape[:2]
        checks.check_sequence_classification_batch(self.config, B)
        last = last_non_pad_index(input_ids, self.config.pad_token_id, T)  # (B,) or -1
        if isinstance(last, torch.Tensor):
            last = last.to(logits.device)
        pooled = logits[torch.arange(B, device=logits.device), last]  # (B, L)
        loss = None
        if labels is not None:
            kind = reference.problem_type(self.config, np.zeros((), dtype=_np_dtype(labels)))
            if kind == "regression":
                if self.num_labels == 1:
                    loss = F.mse_loss(pooled.squeeze().float(), labels.squeeze().float())
                else:
                    loss = F.mse_loss(pooled.float(), labels.float())
            elif kind == "single_label_classification":
                _check_labels(labels, self.num_labels)
                loss = F.cross_entropy(pooled.reshape(-1, self.num_labels).float(), labels.reshape(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(pooled.float(), labels.float())
        result = SequenceClassifierOutputWithPast(
            loss=loss,
            logits=pooled,
            past_key_values=out.past_key_values,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if _use_return_dict(self.config, return_dict) else result.to_tuple()


def _np_dtype(t: torch.Tensor) -> Any:
    return np.int64 if not t.is_floating_point() else np.float32


class GPT2ForTokenClassification(GPT2PreTrainedModel):
    """GPT-2 with a linear classifier on every token.

    Args:
        config: The model config (`num_labels`, `classifier_dropout`).
    """

    head = "tokcls"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.num_labels = config.num_labels
        self.transformer = GPT2Model(config)
        p = config.classifier_dropout if config.classifier_dropout is not None else 0.1
        self.dropout = nn.Dropout(p)
        self.classifier = Linear(config.n_embd, config.num_labels)
        if not _skip_init():
            self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | KVCache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> TokenClassifierOutput | tuple:
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
            return_dict=True,
            head_mask=head_mask,
        )
        logits = self.classifier(self.dropout(out.last_hidden_state))  # (B, T, L)
        loss = None
        if labels is not None:
            _check_labels(labels, self.num_labels)
            loss = F.cross_entropy(
                logits.reshape(-1, self.num_labels).float(), labels.reshape(-1), ignore_index=reference.IGNORE_INDEX
            )
        result = TokenClassifierOutput(
            loss=loss, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions
        )
        return result if _use_return_dict(self.config, return_dict) else result.to_tuple()


class GPT2ForQuestionAnswering(GPT2PreTrainedModel):
    """GPT-2 with a span-extraction head (start and end logits per token).

    Args:
        config: The model config.
    """

    head = "qa"

    def __init__(self, config: GPT2Config) -> None:
        super().__init__(config)
        self.transformer = GPT2Model(config)
        self.qa_outputs = Linear(config.n_embd, 2)
        if not _skip_init():
            self.init_weights()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        head_mask: torch.Tensor | None = None,
    ) -> QuestionAnsweringModelOutput | tuple:
        out = self.transformer(
            input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
            head_mask=head_mask,
        )
        logits = self.qa_outputs(out.last_hidden_state)  # (B, T, 2)
        start_logits, end_logits = logits[..., 0], logits[..., 1]
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]
            start_positions = start_positions.reshape(-1).clamp(0, ignored)
            end_positions = end_positions.reshape(-1).clamp(0, ignored)
            start_loss = F.cross_entropy(start_logits.float(), start_positions, ignore_index=ignored)
            end_loss = F.cross_entropy(end_logits.float(), end_positions, ignore_index=ignored)
            loss = (start_loss + end_loss) / 2
        result = QuestionAnsweringModelOutput(
            loss=loss,
            start_logits=start_logits,
            end_logits=end_logits,
            hidden_states=out.hidden_states,
            attentions=out.attentions,
        )
        return result if _use_return_dict(self.config, return_dict) else result.to_tuple()


MODEL_CLASSES = {
    "base": GPT2Model,
    "lm": GPT2LMHeadModel,
    "double": GPT2DoubleHeadsModel,
    "qa": GPT2ForQuestionAnswering,
    "seqcls": GPT2ForSequenceClassification,
    "tokcls": GPT2ForTokenClassification,
}
