"""Weight-only int8 inference for gpt2_torch: per-output-channel symmetric scales, torch's own CPU int8 kernels.

`quantize_int8(model)` (or `from_pretrained(..., quantize="int8")`) replaces every projection of the blocks
(`attn.c_attn`, `attn.c_proj`, `mlp.c_fc`, `mlp.c_proj`, cross-attention's too) and the LM head by an
`Int8Linear`: an int8 weight `[out, in]` and a float32 scale per output row, `w ~= w_int8 * scale` with
`scale = max|w_row| / 127` (round to nearest, no zero point). Embeddings, LayerNorms, biases and the small
classification heads stay float. A tied LM head (`tie_word_embeddings`) is quantized too: the head and the token
embedding then share the one int8 matrix (`Int8Embedding` looks rows up and scales them), so the tie survives and
the fp32 `wte` is dropped.

Kernels: `kernel="dynamic"` (default) is torch.ao's dynamically quantized linear (fbgemm / x86 `quantized::
linear_dynamic`: activations quantized per row on the fly, int8 x int8 -> int32 products, per-channel weight
scales); `kernel="int8pack"` is `torch.ops.aten._weight_int8pack_mm` (float activations times int8 weights, what
gpt-fast uses), measured slower on AVX2 CPUs (docs/performance.md). Both are CPU kernels; quantize after moving the
model to the CPU.

Saving: quantization happens at load time. `save_pretrained` of a quantized model raises; save the float model and
load it with `quantize="int8"` (the quantized weights are a pure function of the float ones).

References: gpt-fast `quantize.py` (WeightOnlyInt8QuantHandler); torch `ao/nn/quantized/dynamic/modules/linear.py`.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

QUANTIZE_METHODS = ("int8",)
KERNELS = ("dynamic", "int8pack")
# What `model.quantization_config` holds after quantizing (transformers' attribute name).
QUANT_METHOD = "gpt2_torch_int8_weight_only"


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[out, in]` float -> (int8 `[out, in]`, float32 scale `[out]`), symmetric, `scale = max|row| / 127`."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,); an all-zero row keeps a positive scale
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """`y = x @ (w_int8 * scale).T + bias` with an int8 weight and per-output-channel scales.

    Args:
        weight: Int8 weight `[out, in]`.
        scale: Float32 scale per output channel `[out]`.
        bias: Float bias `[out]` or None.
        kernel: `"dynamic"` (torch.ao dynamic quantized linear) or `"int8pack"` (`aten._weight_int8pack_mm`).
    """

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, kernel: str = "dynamic"):
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"Unknown int8 kernel. Received: kernel={kernel!r}. Use one of {KERNELS}.")
        self.out_features, self.in_features = weight.shape
        self.kernel = kernel
        self.register_buffer("weight", weight.to(torch.int8))  # (out, in)
        self.register_buffer("scale", scale.to(torch.float32))  # (out,)
        self.register_buffer("bias", None if bias is None else bias.detach().float())
        self._packed = None
        if kernel == "dynamic":
            self._packed = _prepack(self.weight, self.scale, self.bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kernel: str = "dynamic") -> "Int8Linear":
        q, scale = quantize_per_channel(linear.weight)
        return cls(q, scale, linear.bias, kernel)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight `[out, in]` the int8 one stands for."""
        return self.weight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features).float().contiguous()  # (M, in)
        if self.kernel == "dynamic":
            y = torch.ops.quantized.linear_dynamic(x2, self._packed, True)  # reduce_range: fbgemm's int16 headroom
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2, self.weight, self.scale)
            if self.bias is not None:
                y = y + self.bias
        return y.reshape(*lead, self.out_features).to(dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, kernel={self.kernel}"


class Int8Embedding(nn.Module):
    """The token embedding read from a tied `Int8Linear` head: row i is `w_int8[i] * scale[i]`.

    Args:
        head: The quantized LM head whose weight is the embedding matrix (`tie_word_embeddings`).
        dtype: Output dtype (the model's activations).
    """

    def __init__(self, head: Int8Linear, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.head = [head]  # a list: not a submodule, so state_dict and named_modules see the buffers once
        self.num_embeddings, self.embedding_dim = head.out_features, head.in_features
        self.dtype = dtype

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        head = self.head[0]
        return (F.embedding(ids, head.weight).float() * head.scale[ids][..., None]).to(self.dtype)  # (B, T, C)


def _prepack(weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """fbgemm's packed per-channel qint8 weight (what torch.ao's dynamic Linear holds)."""
    with warnings.catch_warnings():  # torch marks the quantized tensor constructors deprecated in favour of torchao
        warnings.simplefilter("ignore")
        zero = torch.zeros_like(scale, dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(weight, scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(qweight, bias)


def _projections(model: nn.Module) -> list[tuple[nn.Module, str, nn.Linear]]:
    from gpt2_torch.model import GPT2Attention, GPT2MLP

    out = []
    for module in model.modules():
        if isinstance(module, GPT2Attention):
            names = ("c_attn", "q_attn", "c_proj")
        elif isinstance(module, GPT2MLP):
            names = ("c_fc", "c_proj")
        else:
            continue
        out += [(module, n, getattr(module, n)) for n in names if isinstance(getattr(module, n, None), nn.Linear)]
    return out


def quantize_int8(model: nn.Module, kernel: str = "dynamic") -> nn.Module:
    """Quantize `model` (any gpt2_torch class) in place to weight-only int8 and return it, in eval mode.

    Args:
        model: A float gpt2_torch model on the CPU.
        kernel: `"dynamic"` (default, the faster one measured on CPU) or `"int8pack"`.
    """
    if kernel not in KERNELS:
        raise ValueError(f"Unknown int8 kernel. Received: kernel={kernel!r}. Use one of {KERNELS}.")
    if getattr(model, "quantization_config", None) is not None:
        raise ValueError(
            f"The model is already quantized. Received: quantization_config={model.quantization_config}. "
            "Quantize a float model once."
        )
    device = next(model.parameters()).device
    if device.type != "cpu":
        raise ValueError(
            f"int8 weight-only quantization runs on torch's CPU kernels. Received: model on device={device}. "
            "Quantize on the CPU (model.to('cpu')), or use dtype=torch.bfloat16 on an accelerator."
        )
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        for parent, name, linear in _projections(model):
            setattr(parent, name, Int8Linear.from_linear(linear, kernel))
        head = getattr(model, "lm_head", None)
        if isinstance(head, nn.Linear):
            tied = model.config.tie_word_embeddings and head.weight is model.transformer.wte.weight
            model.lm_head = Int8Linear.from_linear(head, kernel)
            if tied:
                model.transformer.wte = Int8Embedding(model.lm_head, dtype)
    model.quantization_config = {"quant_method": QUANT_METHOD, "bits": 8, "per_channel": True, "kernel": kernel,
                                 "lm_head": isinstance(getattr(model, "lm_head", None), Int8Linear)}
    model.tie_weights = lambda: None  # the head and wte share the int8 matrix already
    logger.info("Quantized %s to weight-only int8 (%s kernel).", type(model).__name__, kernel)
    return model.eval()


def quantize_model(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """`from_pretrained(..., quantize=method)`: "int8" -> `quantize_int8`."""
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"Unsupported quantization. Received: quantize={method!r}. Use one of {QUANTIZE_METHODS}.")
    return quantize_int8(model, **kwargs)
