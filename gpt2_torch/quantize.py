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

Saving: `save_pretrained` of a quantized model writes the int8 checkpoint format of `weights_convert.quantized`
(int8 weights under their Hub names, a float32 `<name>_scale` beside each, config.json's `quantization_config`);
`from_pretrained` of such a directory builds the int8 modules straight from the file's int8 arrays
(`load_quantized`: no float copy of the quantized weights is made), bit-identical to quantizing the float model at
load. `quantized_state_dict` is the canonical export both directions share.

References: gpt-fast `quantize.py` (WeightOnlyInt8QuantHandler); torch `ao/nn/quantized/dynamic/modules/linear.py`;
compressed-tensors' `int-quantized` checkpoints (`weight` + `weight_scale`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gpt2_core import naming
from weights_convert import quantized

logger = logging.getLogger(__name__)

QUANTIZE_METHODS = ("int8",)
KERNELS = ("dynamic", "int8pack")
# `model.quantization_config` (transformers' attribute name): config.json's `quantization_config` plus the kernel.
QUANT_METHOD = quantized.QUANT_METHOD


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
    return [(parent, name, linear) for _, parent, name, linear in _named_projections(model)]


def _named_projections(model: nn.Module) -> list[tuple[str, nn.Module, str, nn.Linear]]:
    """(module path, parent, attribute, nn.Linear) of every block projection that is quantized."""
    from gpt2_torch.model import GPT2Attention, GPT2MLP

    out = []
    for path, module in model.named_modules():
        if isinstance(module, GPT2Attention):
            names = ("c_attn", "q_attn", "c_proj")
        elif isinstance(module, GPT2MLP):
            names = ("c_fc", "c_proj")
        else:
            continue
        out += [(f"{path}.{n}", module, n, getattr(module, n)) for n in names
                if isinstance(getattr(module, n, None), nn.Linear)]
    return out


def _mark_quantized(model: nn.Module, kernel: str) -> nn.Module:
    model.quantization_config = {**quantized.quantization_config(), "kernel": kernel,
                                 "lm_head": isinstance(getattr(model, "lm_head", None), Int8Linear)}
    model.tie_weights = lambda: None  # the head and wte share the int8 matrix already
    return model.eval()


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
    logger.info("Quantized %s to weight-only int8 (%s kernel).", type(model).__name__, kernel)
    return _mark_quantized(model, kernel)


def quantize_model(model: nn.Module, method: str, **kwargs: Any) -> nn.Module:
    """`from_pretrained(..., quantize=method)`: "int8" -> `quantize_int8`."""
    if method not in QUANTIZE_METHODS:
        raise ValueError(f"Unsupported quantization. Received: quantize={method!r}. Use one of {QUANTIZE_METHODS}.")
    return quantize_int8(model, **kwargs)


# --- the int8 checkpoint (weights_convert.quantized) ------------------------------------------------------------


def _wte_path(model: nn.Module) -> str:
    return naming.to_backend({"wte.weight": np.zeros(0)}, "torch", model.config, model.head).popitem()[0]


def quantized_state_dict(model: nn.Module) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """A quantized model as (canonical dict, scales): the int8 weights in canonical layout (the Hub's), every other
    tensor float32-or-its-dtype as `canonical_state_dict` gives it, and each int8 weight's float32 scale in
    `weights_convert.quantized.scale_shape` (what `save_pretrained` writes)."""
    from gpt2_torch.weights import to_numpy

    config, head = model.config, model.head
    backend = {path: to_numpy(p) for path, p in model.named_parameters()}
    backend_scales = {}
    tied = isinstance(getattr(model.base_model, "wte", None), Int8Embedding)
    for path, module in model.named_modules():
        if not isinstance(module, Int8Linear):
            continue
        weight_path = _wte_path(model) if tied and path == "lm_head" else f"{path}.weight"  # the tie: wte's name
        backend[weight_path] = module.weight.numpy()  # (out, in) int8
        backend_scales[weight_path] = module.scale.numpy()  # (out,)
        if module.bias is not None:
            backend[f"{path}.bias"] = to_numpy(module.bias)
    canonical = naming.from_backend(backend, "torch", config, head)
    keys = naming.canonical_names("torch", config, head)
    scales = {}
    for path, scale in backend_scales.items():
        key = keys[path]
        scales[key] = scale.reshape(quantized.scale_shape(key, config, head))
    return canonical, scales


def load_quantized(
    model: nn.Module, canonical: dict[str, np.ndarray], scales: dict[str, np.ndarray], *,
    dtype: torch.dtype | None = None, kernel: str = "dynamic",
) -> nn.Module:
    """Build an int8 model from a quantized checkpoint's canonical arrays (`weights_convert.quantized`).

    Args:
        model: A model built on the meta device (no storage yet).
        canonical: Canonical tensors, int8 where quantized.
        scales: Float32 scale of each int8 weight (canonical key -> `quantized.scale_shape`).
        dtype: The dtype of the float parameters (float32 by default); the int8 modules keep float32 scales and
            biases, as `quantize_int8` does.
        kernel: As `quantize_int8`.

    The quantized modules are made straight from the int8 arrays: no float copy of their weights is allocated.
    Returns the model in eval mode, equal to `quantize_int8` of the float model the checkpoint was saved from.
    """
    from gpt2_torch.weights import from_numpy

    if kernel not in KERNELS:
        raise ValueError(f"Unknown int8 kernel. Received: kernel={kernel!r}. Use one of {KERNELS}.")
    config, head = model.config, model.head
    backend = naming.to_backend(canonical, "torch", config, head)  # int8 body matrices transposed to (out, in)
    paths = {key: path for path, key in naming.canonical_names("torch", config, head).items()}
    backend_scales = {paths[k]: v.reshape(-1) for k, v in scales.items()}
    wte_path = _wte_path(model)
    head_linear = getattr(model, "lm_head", None)
    tied = isinstance(head_linear, nn.Linear) and config.tie_word_embeddings and wte_path in backend_scales
    targets = [(f"{path}.weight", parent, name) for path, parent, name, _ in _named_projections(model)]
    if isinstance(head_linear, nn.Linear):
        targets.append((wte_path if tied else "lm_head.weight", model, "lm_head"))
    quantizable = {path for path, _, _ in targets}
    foreign = sorted(naming.canonical_names("torch", config, head)[p] for p in set(backend_scales) - quantizable)
    if foreign:
        raise ValueError(
            f"gpt2_torch quantizes only the block projections and the LM head. Received: int8 weights {foreign[:5]}. "
            "Save the checkpoint again from a gpt2_torch int8 model."
        )
    # 1. stand-ins for the quantized modules, so allocating the float parameters allocates none of theirs
    for weight_path, parent, name in targets:
        if weight_path in backend_scales:
            setattr(parent, name, nn.Identity())
    if tied:
        model.base_model.wte = nn.Identity()
    model = model.to_empty(device="cpu")
    if not tied:
        model.tie_weights()  # a float head tied to a float wte: one storage again after to_empty
    params = dict(model.named_parameters())
    int8_paths = set(backend_scales) | {p.removesuffix(".weight") + ".bias" for p in backend_scales
                                        if p != wte_path or not tied}
    floats = {p: v for p, v in backend.items() if p not in int8_paths}
    if set(floats) != set(params):
        raise ValueError(
            f"The quantized checkpoint does not fill the model. Received: missing="
            f"{sorted(set(params) - set(floats))[:5]}, unexpected={sorted(set(floats) - set(params))[:5]}. Save it "
            "again from a gpt2_torch int8 model."
        )
    with torch.no_grad():
        for path, value in floats.items():
            params[path].copy_(from_numpy(value).to(params[path].dtype))
    if dtype is not None:
        model = model.to(dtype)  # only float parameters exist yet
    dtype = next(model.parameters()).dtype
    # 2. the int8 modules from the file's arrays
    for weight_path, parent, name in targets:
        if weight_path not in backend_scales:
            continue
        bias_path = weight_path.removesuffix(".weight") + ".bias"
        bias = from_numpy(backend[bias_path]) if bias_path in backend and bias_path in int8_paths else None
        setattr(parent, name, Int8Linear(from_numpy(backend[weight_path]), from_numpy(backend_scales[weight_path]),
                                         bias, kernel))
    if tied:
        model.base_model.wte = Int8Embedding(model.lm_head, dtype)
    logger.info("Loaded %s from an int8 checkpoint (%d int8 weights, %s kernel).", type(model).__name__,
                len(backend_scales), kernel)
    return _mark_quantized(model, kernel)


def load_int8_checkpoint(
    cls: type, loaded: Any, *, dtype: Any = None, device: Any = None, device_map: Any = None,
    quantize: str | None = None,
) -> Any:
    """`cls.from_pretrained` of an int8 checkpoint (`loaded`: `weights_convert.pretrained.Pretrained` read with
    `keep_quantized=True`): the model built on the meta device, then `load_quantized`. Returns what `from_pretrained`
    returns (`(model, loading_info)` with `output_loading_info=True`)."""
    from gpt2_core import reference

    if quantize is not None and quantize not in QUANTIZE_METHODS:
        raise ValueError(f"Unsupported quantization. Received: quantize={quantize!r}. Use one of {QUANTIZE_METHODS}.")
    for name, value in (("device", device), ("device_map", device_map)):
        if value is not None and str(value) not in ("cpu", "auto"):
            raise ValueError(
                f"An int8 checkpoint runs on torch's CPU int8 kernels. Received: {name}={value!r}. Load it on the CPU "
                "(leave device and device_map out), or load the float checkpoint on an accelerator."
            )
    dtype = loaded.resolve_dtype(dtype)  # "auto": the checkpoint's float dtype
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with reference.skip_init(), torch.device("meta"):
        model = cls(loaded.config)
    model = load_quantized(model, loaded.canonical, loaded.scales, dtype=dtype)
    if model.can_generate():
        model.generation_config = loaded.generation_config
    if loaded.attn_implementation is not None:
        model.set_attn_implementation(loaded.attn_implementation)
    if loaded.output_loading_info:
        return model, loaded.loading_info
    return model
