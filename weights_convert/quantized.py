"""The weight-only int8 checkpoint format: int8 weights beside float32 per-channel scales in `model.safetensors`.

A quantized checkpoint is an ordinary Hub directory (config.json + `model.safetensors`, sharded or not) in which
every quantized weight is stored as int8 under its usual name and layout, with a float32 tensor
`<weight name>_scale` beside it (compressed-tensors' `int-quantized` naming: `weight` + `weight_scale`):

    transformer.h.0.attn.c_attn.weight        int8    [C, 3C]   (the Hub's [in, out] layout, as in a float file)
    transformer.h.0.attn.c_attn.weight_scale  float32 [1, 3C]   one scale per output channel
    transformer.wte.weight                    int8    [V, C]    the tied LM head (rows are its output channels)
    transformer.wte.weight_scale              float32 [V, 1]

The scale keeps the weight's rank with the input axis set to 1, so `weight.astype(float32) * weight_scale`
(plain broadcasting, whatever the layout) is the float weight it stands for. Symmetric, no zero point:
`scale = max|w| over the input axis / 127`, `q = round(w / scale)` in [-127, 127]. Everything else (biases,
LayerNorms, `wpe`, an untied `wte`, the small classification heads) stays float. config.json records the scheme
under transformers' key (`QUANTIZATION_CONFIG_KEY`), see `quantization_config()`.

Readers: `read_quantized` gives the canonical tensors (int8 where quantized) and the scales; `dequantize` turns them
into an ordinary float32 canonical dict (what `load_pretrained` hands TF and Flax, which have no int8 path:
`refuse_quantize`). gpt2_torch builds its int8 modules from the int8 arrays directly (`gpt2_torch.quantize`).
Writers: `weights_convert.pretrained.save_pretrained(..., scales=..., quantization_config=...)`, the one atomic save.

References: compressed-tensors (neuralmagic) `int-quantized` format and its `weight_scale` tensors; transformers'
`quantization_config` in config.json (`transformers.utils.quantization_config`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gpt2_core import naming
from gpt2_core.config import GPT2Config

logger = logging.getLogger(__name__)

QUANTIZATION_CONFIG_KEY = "quantization_config"  # transformers' config.json key
QUANT_METHOD = "gpt2_int8_weight_only"
SCALE_SUFFIX = "_scale"
BITS = 8
QMAX = 2 ** (BITS - 1) - 1  # 127: symmetric, -128 unused
FORMAT_VERSION = 1
# The fields of `quantization_config()` a reader requires to have exactly these values.
REQUIRED = {"quant_method": QUANT_METHOD, "bits": BITS, "weight_dtype": "int8", "granularity": "per_channel",
            "symmetric": True, "scale_dtype": "float32", "scale_suffix": SCALE_SUFFIX}


def quantization_config() -> dict[str, Any]:
    """The `quantization_config` dict config.json gets: the method, bits, granularity and symmetric scheme."""
    return {
        **REQUIRED,
        "zero_point": False,
        "scale_rule": f"max(abs(w)) over the input axis / {QMAX}",
        "format_version": FORMAT_VERSION,
    }


def is_quantized(config: GPT2Config) -> bool:
    """Whether `config` (a checkpoint's config.json) describes a quantized checkpoint."""
    return config.extra.get(QUANTIZATION_CONFIG_KEY) is not None


def check_quantization_config(value: Any, where: str) -> dict[str, Any]:
    """A config.json's `quantization_config`, checked to be this format (other methods are not read here)."""
    if not isinstance(value, Mapping):
        raise ValueError(
            f"config.json's {QUANTIZATION_CONFIG_KEY} must be a dict. Received: {QUANTIZATION_CONFIG_KEY}={value!r} "
            f"({where}). Save the model again with save_pretrained."
        )
    method = value.get("quant_method")
    if method != QUANT_METHOD:
        raise ValueError(
            f"Unsupported quantized checkpoint. Received: quant_method={method!r} ({where}). Only this library's "
            f"weight-only int8 format (quant_method={QUANT_METHOD!r}) is read; load the float checkpoint instead "
            "(gpt2_torch can quantize it at load: from_pretrained(..., quantize='int8'))."
        )
    wrong = {k: value.get(k) for k, v in REQUIRED.items() if value.get(k) != v}
    if wrong:
        raise ValueError(
            f"The {QUANT_METHOD} quantization_config has unsupported settings. Received: "
            f"{', '.join(f'{k}={v!r}' for k, v in wrong.items())} ({where}). Expected {REQUIRED}; save the model "
            "again with save_pretrained."
        )
    return dict(value)


def scale_key(key: str) -> str:
    """The name of the scale tensor of weight `key` (`h.0.mlp.c_fc.weight` -> `h.0.mlp.c_fc.weight_scale`)."""
    return key + SCALE_SUFFIX


def output_axis(key: str, config: GPT2Config, head: str) -> int:
    """The output-channel axis of canonical matrix `key`: 1 for the Hub's `[in, out]` projections, 0 for
    embeddings and `nn.Linear`-layout heads (`[out, in]`, `wte` as the tied LM head `[V, C]`)."""
    table = naming.shape_table(config, head)
    if key not in table or len(table[key][0]) != 2:
        raise ValueError(f"Only weight matrices are quantized. Received: key={key!r}. Quantize a 2-D weight.")
    return 1 if table[key][1].kind == "conv1d" else 0


def scale_shape(key: str, config: GPT2Config, head: str) -> tuple[int, int]:
    """The shape of `key`'s scale: the weight's shape with the input axis set to 1."""
    shape = list(naming.shape_table(config, head)[key][0])
    shape[1 - output_axis(key, config, head)] = 1
    return tuple(shape)


def check_scales(
    canonical: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray], config: GPT2Config, head: str, where: str,
    *, values: bool = True,
) -> None:
    """Every int8 weight has a float32 scale of the right shape (positive and finite when `values`), and every scale
    belongs to an int8 weight. Shapes and dtypes only when `values` is False (stubs, before any data is read)."""
    problems = []
    int8 = {k for k, v in canonical.items() if np.dtype(v.dtype) == np.int8}
    problems += [f"{k}: int8 without a {SCALE_SUFFIX} tensor" for k in sorted(int8 - set(scales))]
    problems += [f"{scale_key(k)}: a scale for a weight that is not int8" for k in sorted(set(scales) - int8)]
    for key in sorted(set(scales) & int8):
        scale = scales[key]
        expected = scale_shape(key, config, head)
        if np.dtype(scale.dtype) != np.float32 or tuple(scale.shape) != expected:
            problems.append(f"{scale_key(key)}: {np.dtype(scale.dtype).name} {tuple(scale.shape)}, expected float32 "
                            f"{expected}")
        elif values and not (np.isfinite(scale).all() and (np.asarray(scale) > 0).all()):
            problems.append(f"{scale_key(key)}: non-positive or non-finite values")
    if problems:
        raise ValueError(
            f"The int8 weights and their scales do not fit together ({where}). Received: {'; '.join(problems[:10])}"
            f"{' ...' if len(problems) > 10 else ''}. Save the quantized model again with save_pretrained."
        )


def dequantize(canonical: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """int8 weights + scales -> a float32 canonical dict (`q * scale`, the float weight each int8 one stands for);
    the float tensors are returned as they are."""
    out = dict(canonical)
    for key, scale in scales.items():
        out[key] = np.asarray(canonical[key]).astype(np.float32) * np.asarray(scale, dtype=np.float32)
    return out


def hub_state_dict(
    canonical: Mapping[str, np.ndarray], scales: Mapping[str, np.ndarray], head: str
) -> dict[str, np.ndarray]:
    """Canonical tensors + scales -> the state dict written to `model.safetensors` (each scale after its weight)."""
    merged: dict[str, np.ndarray] = {}
    for key, value in canonical.items():
        merged[key] = value
        if key in scales:
            merged[scale_key(key)] = np.asarray(scales[key], dtype=np.float32)
    return naming.to_hub_state_dict(merged, head)


@dataclass
class Quantized:
    """A quantized checkpoint read for a model: what `read_quantized` gives.

    Args:
        canonical: Every canonical tensor of the head, int8 where quantized, else in the file's float dtype.
        scales: Canonical weight key -> its float32 scale (`scale_shape`).
        quantization_config: config.json's `quantization_config`, checked.
        missing_head_keys, unexpected_keys, mismatched_keys: As `weights_convert.formats.Checkpoint`'s.
    """

    canonical: dict[str, np.ndarray]
    scales: dict[str, np.ndarray]
    quantization_config: dict[str, Any]
    missing_head_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    mismatched_keys: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def to_dict(self) -> dict[str, np.ndarray]:
        """The canonical tensors (int8 where quantized), as `Checkpoint.to_dict`."""
        return dict(self.canonical)

    def __enter__(self) -> "Quantized":  # read whole already: `with` as for an open Checkpoint
        return self

    def __exit__(self, *exc) -> None:
        pass


def read_quantized(
    path: Path, fmt: str, config: GPT2Config, head: str, *, allow_missing_head: bool = False,
    ignore_mismatched_sizes: bool = False,
) -> Quantized:
    """Read the quantized checkpoint whose weights file (or shard index) is `path`, for a `head` model.

    The names and shapes (scales included) are checked against `config` before any tensor is read, with the strict
    check every reader uses (`naming.check_canonical`); then each tensor is read once.

    Raises:
        ValueError: Another quantization method, a format other than safetensors, int8 weights and scales that do
            not pair up, shapes that do not fit the config.
    """
    from weights_convert.formats import drop_mismatched_head, get_format
    from weights_convert.formats.base import dtype_name, is_float_dtype, stub
    from weights_convert.formats.safetensors import list_tensors

    where = f"checkpoint at {str(path)!r}"
    qconfig = check_quantization_config(config.extra.get(QUANTIZATION_CONFIG_KEY), where)
    if fmt != "safetensors":
        raise ValueError(
            f"A quantized checkpoint is read from safetensors only. Received: format={fmt!r} ({where}). Save it "
            "with save_pretrained (model.safetensors)."
        )
    files, _ = get_format("safetensors").locate(Path(path))
    closers: list[Callable[[], None]] = []
    try:
        listing, _ = list_tensors(files, closers)
        expected = naming.shape_table(config, head)

        def canonical_name(name: str) -> str:
            stripped = name.removeprefix(naming.BODY_PREFIX)
            return stripped if stripped in expected else name

        scale_names = {n[: -len(SCALE_SUFFIX)]: n for n in listing if n.endswith(".weight" + SCALE_SUFFIX)}
        stubs = {n: stub(shape, dtype) for n, (shape, dtype, _) in listing.items() if n not in scale_names.values()}
        selected = naming.select_head(stubs, config, head)
        origin = {canonical_name(n): n for n in stubs}
        unexpected = [origin[k] for k in stubs if canonical_name(k) not in selected
                      and not any(p.match(k) for p in naming.IGNORED_KEY_PATTERNS)
                      and not (k.endswith("lm_head.weight") and config.tie_word_embeddings)]
        unexpected += [scale_names[n] for n in unexpected if n in scale_names]
        mismatched = drop_mismatched_head(selected, expected) if ignore_mismatched_sizes else []
        missing = naming.check_canonical(selected, config, head, f"quantized {where}",
                                         allow_missing_head=allow_missing_head or bool(mismatched))
        scale_of = {k: scale_names[origin[k]] for k in selected if origin[k] in scale_names}
        orphans = sorted(n for base, n in scale_names.items() if base not in stubs)
        if orphans:
            raise ValueError(
                f"Scale tensors without their weight in the quantized {where}. Received: {orphans[:10]}. The file is "
                "corrupt: save the quantized model again with save_pretrained."
            )
        check_scales(selected, {k: stub(*listing[n][:2]) for k, n in scale_of.items()}, config, head, where,
                     values=False)
        not_float = [f"{origin[k]} ({dtype_name(v.dtype)})" for k, v in selected.items()
                     if k not in scale_of and not is_float_dtype(v.dtype)]
        if not_float:
            raise ValueError(
                f"The quantized {where} stores weights as non-float tensors without a scale. Received: "
                f"{', '.join(not_float[:10])}. Save the quantized model again with save_pretrained."
            )
        canonical = {k: listing[origin[k]][2]() for k in selected}
        scales = {k: listing[n][2]() for k, n in scale_of.items()}
    finally:
        for close in reversed(closers):
            close()
    check_scales(canonical, scales, config, head, where)
    return Quantized(canonical=canonical, scales=scales, quantization_config=qconfig, missing_head_keys=missing,
                     unexpected_keys=unexpected, mismatched_keys=mismatched)


def open_dequantized(path: str | Path, config: GPT2Config | None = None, head: str | None = None) -> Any:
    """A quantized checkpoint directory as an open `weights_convert.formats.Checkpoint` of float32 tensors (the
    int8 weights dequantized; its config without `quantization_config`): what `save_checkpoint` (and so every
    output format) takes. `head`: by default the one config.json's `architectures` names."""
    from weights_convert.formats import get_format
    from weights_convert.formats.base import Checkpoint

    path = Path(path)
    _, source_dir = get_format("safetensors").locate(path)
    if config is None:
        config = GPT2Config.from_json_file(source_dir / "config.json")
    if not is_quantized(config):
        raise ValueError(
            f"Not a quantized checkpoint: its config.json has no {QUANTIZATION_CONFIG_KEY}. Received: "
            f"path={str(path)!r}. Convert it with gpt2-convert."
        )
    if head is None:
        head = naming.head_from_architectures(config.extra.get("architectures")) or "base"
    q = read_quantized(path, "safetensors", config, head)
    tensors = dequantize(q.canonical, q.scales)
    logger.info("Dequantized the int8 checkpoint %s to float32 (%d weights).", path, len(q.scales))
    return Checkpoint(
        format="safetensors", config=without_quantization_config(config), head=head,
        shapes={k: tuple(v.shape) for k, v in tensors.items()}, dtypes={k: v.dtype for k, v in tensors.items()},
        source_dir=source_dir, unexpected_keys=q.unexpected_keys,
        _loaders={k: (lambda v=v: v) for k, v in tensors.items()},
    )


def dequantize_checkpoint(
    src: str | Path, dst: str | Path, *, to: str = "safetensors", dtype: str | None = None, force: bool = False,
    max_shard_size: int | str | None = None,
) -> Path:
    """Write the float checkpoint an int8 one stands for (`weight * weight_scale`), in any `gpt2-convert` output
    format, with `weights_convert.conversion.save_checkpoint` (atomic; tokenizer files copied): the way to hand an
    int8 checkpoint to transformers, TF / Flax files or `gpt2-convert`, which read float weights only."""
    from weights_convert.conversion import save_checkpoint

    with open_dequantized(src) as ckpt:
        return save_checkpoint(dst, ckpt.config, ckpt, ckpt.head, to=to, dtype=dtype, force=force,
                               max_shard_size=max_shard_size, tokenizer_dir=ckpt.source_dir)


def without_quantization_config(config: GPT2Config) -> GPT2Config:
    """A copy of `config` that no longer says the weights are quantized (after `dequantize`)."""
    out = config.copy()
    out.extra.pop(QUANTIZATION_CONFIG_KEY, None)
    return out


# Measured (docs/performance.md, "Weight-only int8"): at batch 1 no int8 dot on XLA CPU beats its fp32 one.
NO_INT8_PATH = (
    "XLA on CPU has no fast path for weight-only int8: at batch 1 every int8 variant measured (float activations "
    "times int8 weights, dequantizing inside the jitted function, int8 x int8 -> int32 dots; TF's QuantizedMatMul has "
    "no qint8-weight kernel) was 1.1x to 15x slower than the float32 dot (docs/performance.md, 'Weight-only int8')"
)


def refuse_quantize(quantize: Any, owner: str) -> None:
    """TF and Flax `from_pretrained(quantize=...)`: anything but None is a ValueError saying why and what to use."""
    if quantize is None:
        return
    if quantize != "int8":
        raise ValueError(f"Unsupported quantization. Received: quantize={quantize!r}. Use 'int8' (gpt2_torch) or None.")
    raise ValueError(
        f"{owner} has no int8 inference: {NO_INT8_PATH}. Received: quantize={quantize!r}. Use gpt2_torch "
        "(GPT2LMHeadModel.from_pretrained(..., quantize='int8')) for int8; an int8 checkpoint loads here dequantized "
        "to float32 with quantize=None."
    )
