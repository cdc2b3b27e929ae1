"""What every backend's `from_pretrained` / `save_pretrained` calls: files <-> canonical `dict[str, np.ndarray]`.

    loaded = load_pretrained("openai-community/gpt2", "lm", cache_dir=C, local_files_only=True)
    # the backend: build the model under gpt2_core.reference.skip_init(), then model.load_canonical(loaded.canonical)
    save_pretrained(directory, model.config, model.canonical_state_dict(), model.head)

`load_pretrained` resolves `config.json` and the weights with the same Hub keyword arguments (so both come from the
same revision and cache), reads the first of `gpt2_core.hub.WEIGHT_FILES` the checkpoint has through the format
registry (any format, sharded or not), checks it against the config once (`gpt2_core.naming.check_canonical`, before
any tensor is read) and initialises the head keys a checkpoint lacks (a base checkpoint loaded into a classifier),
as transformers does. It builds no model. bfloat16 tensors stay `ml_dtypes.bfloat16`; the backend casts.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gpt2_core import hub, naming, reference
from gpt2_core.config import GPT2Config
from gpt2_core.generation_config import GenerationConfig
from weights_convert import formats, quantized
from weights_convert.formats import base as formats_base
from weights_convert.formats.base import dtype_name
from weights_convert.formats.safetensors import save_safetensors

logger = logging.getLogger(__name__)


# The keyword arguments of transformers' `from_pretrained` that `load_pretrained` takes besides the Hub keyword
# arguments and config fields (the backends pass them through in `**hub_kwargs`).
LOAD_KWARGS = (
    "check_finite",
    "ignore_mismatched_sizes",
    "output_loading_info",
    "attn_implementation",
    "device_map",
    "dtype",
    "torch_dtype",
    "from_pt",
    "from_tf",
    "from_flax",
    "trust_remote_code",
    "low_cpu_mem_usage",
    "use_safetensors",
    "variant",
)
ATTN_IMPLEMENTATIONS = ("eager", "sdpa")
# transformers' `dtype="auto"`: take the checkpoint's dtype.
AUTO_DTYPE = "auto"


@dataclass
class Pretrained:
    """A checkpoint read for a model.

    Args:
        config: The config (the checkpoint's config.json, or the one passed in), with the keyword overrides applied.
        canonical: Every canonical tensor of `head` (`gpt2_core.naming`), in the file's dtype: a dict, or for
            safetensors checkpoints a `weights_convert.formats.base.CheckpointTensors` mapping that reads each
            tensor from the still open file when it is accessed (a read-only memory map of it).
        head: The head it was read for.
        missing_head_keys: Head keys the checkpoint lacked (or, with `ignore_mismatched_sizes`, had in another
            shape), newly initialised in `canonical`.
        path: The weights file read (a shard index for sharded checkpoints).
        generation_config: The checkpoint's `generation_config.json`, else the model config's defaults
            (`GenerationConfig.from_model_config`), as transformers attaches it.
        loading_info: transformers' `output_loading_info` dict: `missing_keys`, `unexpected_keys` (tensors of the
            file this head does not use, e.g. another task's head), `mismatched_keys` ((key, checkpoint shape,
            model shape), with `ignore_mismatched_sizes`), `error_msgs` (always empty: errors raise). Canonical key
            names (`gpt2_core.naming`).
        output_loading_info: The caller asked for `loading_info`: a backend's `from_pretrained` then returns
            `(model, loaded.loading_info)`, as transformers does.
        checkpoint_dtype: The dtype name of the checkpoint's weights (`"float32"`, `"bfloat16"`, ...): the
            config's `dtype` / `torch_dtype` when it records one, else the first weight's (transformers' rule for
            `dtype="auto"`).
        dtype: The dtype the caller asked for (`dtype=` or its old name `torch_dtype=`), with `"auto"` resolved to
            `checkpoint_dtype`; None: the backend's default. The backend casts (`load_pretrained` never does).
        attn_implementation: `"eager"`, `"sdpa"` or None (the backend's default), as passed.
        device_map: `None`, `"auto"` or `"cpu"` as passed (`{"": "cpu"}` reads as `"cpu"`): models load whole
            on one device.
        scales: For a quantized checkpoint read with `keep_quantized=True`: canonical weight key -> its float32
            scale (`weights_convert.quantized`); `canonical` then holds those weights as int8. None otherwise.
        quantization_config: config.json's `quantization_config` of such a checkpoint (kept in `config` too).
    """

    config: GPT2Config
    canonical: "dict[str, np.ndarray] | formats_base.CheckpointTensors"
    head: str
    missing_head_keys: list[str] = field(default_factory=list)
    path: Path | None = None
    generation_config: GenerationConfig | None = None
    loading_info: dict[str, list] = field(default_factory=dict)
    output_loading_info: bool = False
    checkpoint_dtype: str | None = None
    dtype: Any = None
    attn_implementation: str | None = None
    device_map: str | None = None
    scales: dict[str, np.ndarray] | None = None
    quantization_config: dict[str, Any] | None = None

    def resolve_dtype(self, dtype: Any) -> Any:
        """A backend's own `dtype` argument with `"auto"` replaced by `checkpoint_dtype`."""
        return self.checkpoint_dtype if isinstance(dtype, str) and dtype == AUTO_DTYPE else dtype


def _as_config(config: Any, name_or_path: str | os.PathLike, hub_kwargs: Mapping[str, Any]) -> GPT2Config:
    """`config=` of `from_pretrained`: a GPT2Config, a dict (config.json's content), a transformers `GPT2Config`
    (anything with `to_dict()` and `model_type`), a path / Hub id of a config, or None (the checkpoint's)."""
    if config is None:
        return GPT2Config.from_pretrained(name_or_path, **hub_kwargs)
    if isinstance(config, GPT2Config):
        return config
    if isinstance(config, Mapping):
        return GPT2Config.from_dict(dict(config))
    if isinstance(config, (str, os.PathLike)):
        return GPT2Config.from_pretrained(config, **hub_kwargs)
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict) and hasattr(config, "model_type"):
        data = {k: v for k, v in dict(to_dict()).items() if not k.startswith("_")}  # _name_or_path, _commit_hash
        return GPT2Config.from_dict(data)
    raise TypeError(
        f"config must be a GPT2Config (gpt2_core or transformers), a dict or a config path. Received: "
        f"config of type {type(config).__name__}. Pass GPT2Config(...), config.to_dict(), or leave it out to use the "
        "checkpoint's config.json."
    )


def _split_kwargs(kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Hub keyword arguments, the rest: config field overrides to check once the config is known)."""
    hub_kwargs = {k: v for k, v in kwargs.items() if k in hub.HUB_KWARGS}
    return hub_kwargs, {k: v for k, v in kwargs.items() if k not in hub.HUB_KWARGS}


def _check_overrides(overrides: Mapping[str, Any], config: GPT2Config, owner: str) -> None:
    import difflib

    from gpt2_core.config import config_field_names

    known = config_field_names() | set(config.extra)
    unknown = sorted(k for k in overrides if k not in known)
    if not unknown:
        return
    accepted = (*hub.HUB_KWARGS, *LOAD_KWARGS)
    hints = [
        f"{k!r} (did you mean {close[0]!r}?)"
        for k in unknown
        for close in [difflib.get_close_matches(k, [*accepted, *sorted(known)], n=1, cutoff=0.75)]
        if close
    ]
    raise TypeError(
        f"{owner} got unexpected keyword arguments {unknown}{': ' + ', '.join(hints) if hints else ''}. "
        f"Received: {', '.join(f'{k}={overrides[k]!r}' for k in unknown)}. Accepted: the Hub keyword arguments "
        f"{hub.HUB_KWARGS}, any GPT2Config field (num_labels=3, pad_token_id=...), and {LOAD_KWARGS}."
    )


def _check_attn_implementation(value: Any) -> str | None:
    if value is None or value in ATTN_IMPLEMENTATIONS:
        if value is not None:
            logger.info(
                "attn_implementation=%r: recorded for the backend (Pretrained.attn_implementation); every backend "
                "computes the same attention (gpt2_core.reference), a fused kernel where its framework has one.",
                value,
            )
        return value
    raise ValueError(
        f"Unsupported attention implementation. Received: attn_implementation={value!r}. Use one of "
        f"{ATTN_IMPLEMENTATIONS} or None (flash-attention and other kernels are not available here)."
    )


# `device_map` strings a backend that places modules across devices accepts (gpt2_torch: transformers' names)
DEVICE_MAP_PLACEMENTS = ("auto", "balanced", "balanced_low_0", "sequential", "cpu")


def parse_device_map(value: Any) -> str | dict[str, Any] | None:
    """A `device_map=` for a backend that places modules across devices (gpt2_torch.distributed): None, one of
    `DEVICE_MAP_PLACEMENTS`, or a non-empty dict {module prefix: device} (its keys as strings; the backend checks
    them against the model and the devices against the machine)."""
    if value is None:
        return None
    if isinstance(value, str) and value in DEVICE_MAP_PLACEMENTS:
        return value
    if isinstance(value, Mapping) and value:
        return {str(k): v for k, v in value.items()}
    raise ValueError(
        f"Unknown device_map. Received: device_map={value!r}. Use one of {DEVICE_MAP_PLACEMENTS} or a dict "
        "{module prefix: device} such as {'transformer.h.0': 'cuda:0', '': 'cuda:1'}."
    )


def _check_device_map(value: Any) -> str | None:
    if isinstance(value, Mapping) and value and all(str(v) == "cpu" for v in value.values()):
        value = "cpu"
    if value is not None and str(value) in ("auto", "cpu"):
        logger.info(
            "device_map=%r: the model loads whole on one device (no sharding across devices); pass device= (torch) "
            "or move it afterwards to choose another.", str(value),
        )
        return str(value)
    if value is None:
        return None
    raise ValueError(
        f"Unsupported device_map. Received: device_map={value!r}. Use None, 'auto' or 'cpu': models load whole on "
        "one device. To put it on an accelerator, pass device= (torch) or move it afterwards (model.to('cuda'))."
    )


def _checkpoint_dtype(config: GPT2Config, canonical: Mapping[str, np.ndarray]) -> str | None:
    for key in ("dtype", "torch_dtype"):
        value = config.extra.get(key)
        if isinstance(value, str) and value in formats_base.FLOAT_DTYPES:
            return value
    for value in canonical.values():
        if formats_base.is_float_dtype(np.asarray(value).dtype):
            return dtype_name(np.asarray(value).dtype)
    return None


def _flag(name: str, value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"`{name}` must be True, False or None. Received: {name}={value!r}.")


def load_pretrained(
    name_or_path: str | os.PathLike,
    head: str,
    *,
    config: Any = None,
    owner: str | None = None,
    init_seed: int | Callable[[], int] | None = None,
    check_finite: bool | None = None,
    ignore_mismatched_sizes: bool = False,
    output_loading_info: bool = False,
    attn_implementation: str | None = None,
    device_map: Any = None,
    dtype: Any = None,
    torch_dtype: Any = None,
    from_pt: bool | None = None,
    from_tf: bool | None = None,
    from_flax: bool | None = None,
    trust_remote_code: bool | None = None,
    low_cpu_mem_usage: bool | None = None,
    use_safetensors: bool | None = None,
    variant: str | None = None,
    keep_quantized: bool = False,
    **kwargs: Any,
) -> Pretrained:
    """config.json + weights of a local directory or Hub id -> canonical tensors for a `head` model.

    Takes what transformers' `from_pretrained` takes (each backend passes its other keyword arguments through).

    Args:
        name_or_path: Local directory (or weights file) or Hub id (e.g. `openai-community/gpt2`).
        head: One of `gpt2_core.naming.HEADS`: the model the weights are for.
        config: Use this config instead of the checkpoint's `config.json`: a `GPT2Config`, a transformers
            `GPT2Config`, a dict of config.json's content, or the path / Hub id of another config.
        owner: The class name used in log messages.
        init_seed: The seed (or a function drawing one, called only when needed) of `reference.init_params` for head
            keys the checkpoint lacks; each backend passes its own RNG so its seeding rules hold.
        check_finite: NaN / inf weights: True raises a ValueError naming the first such tensor, None (default)
            loads them with a warning naming it (transformers loads them silently), False skips the check.
        ignore_mismatched_sizes: Head tensors whose shape differs from the config's (a 2-label checkpoint loaded
            with `num_labels=3`) are newly initialised instead of an error (transformers' switch).
        output_loading_info: Ask for `Pretrained.loading_info` to be returned by the backend.
        attn_implementation: `"eager"`, `"sdpa"` or None, recorded in `Pretrained.attn_implementation`.
        device_map: None, `"auto"` or `"cpu"` (recorded; the model loads whole on one device); others raise.
        dtype, torch_dtype: Recorded in `Pretrained.dtype` for the backend (`"auto"` -> the checkpoint's dtype);
            both given and different is an error. The tensors keep the file's dtype.
        from_pt, from_tf, from_flax: Accepted, as the no-ops they are here: every format loads in every backend.
        trust_remote_code: Accepted; no code is ever downloaded or run.
        low_cpu_mem_usage: Accepted; tensors are always read one at a time (safetensors: as they are copied into
            the model).
        use_safetensors: True: only safetensors weights; False: never; None: the first of `hub.WEIGHT_FILES`.
        variant: Load `model.<variant>.safetensors` (or another format's file with the variant), as transformers.
        keep_quantized: A quantized checkpoint (config.json's `quantization_config`, `weights_convert.quantized`):
            True keeps its int8 weights in `canonical` and the scales in `Pretrained.scales` (gpt2_torch builds its
            int8 modules from them); False (default) dequantizes them to float32 (logged) and drops
            `quantization_config` from the config.
        **kwargs: `gpt2_core.hub.HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
            `force_download`, `subfolder`), for config.json and the weights alike; any GPT2Config field
            (`num_labels=3`, `pad_token_id=...`), or a key the config.json holds, overrides the config, as in
            transformers. Anything else is a TypeError naming it.

    Raises:
        FileNotFoundError: No such directory / repo / file, or a file not in the cache (named with the cache dir).
        ValueError: Corrupt files (a shard outside the checkpoint directory, integer tensors where weights belong,
            NaN weights with `check_finite=True`), weights that do not fit the config (every mismatch listed),
            unsupported `attn_implementation` / `device_map` values, config overrides of the wrong type.
        TypeError: Unknown keyword arguments, or a `config` of an unknown type.
    """
    who = f"{owner or 'load_pretrained'}.from_pretrained"
    hub_kwargs, overrides = _split_kwargs(kwargs)
    if head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    attn_implementation = _check_attn_implementation(attn_implementation)
    device_map = _check_device_map(device_map)
    for name, value in (("from_pt", from_pt), ("from_tf", from_tf), ("from_flax", from_flax),
                        ("low_cpu_mem_usage", low_cpu_mem_usage), ("trust_remote_code", trust_remote_code),
                        ("check_finite", check_finite), ("ignore_mismatched_sizes", ignore_mismatched_sizes),
                        ("output_loading_info", output_loading_info)):
        _flag(name, value)
    if trust_remote_code:
        logger.info("trust_remote_code=True: GPT-2 is built in; no code is downloaded or run.")
    if dtype is not None and torch_dtype is not None and dtype is not torch_dtype and str(dtype) != str(torch_dtype):
        raise ValueError(
            f"dtype and torch_dtype (its old name) disagree. Received: dtype={dtype!r}, torch_dtype={torch_dtype!r}. "
            "Pass only dtype."
        )
    requested_dtype = dtype if dtype is not None else torch_dtype
    # a weights file given as the model: config.json and generation_config.json are the ones beside it
    weights_file = Path(name_or_path).expanduser()
    files_of = weights_file.parent if weights_file.is_file() and weights_file.name != "config.json" else name_or_path
    # A local directory is read (config.json, weights, generation_config.json) under its shared lock: a
    # save_pretrained publishing there meanwhile holds the exclusive one (gpt2_core.hub.atomic_files), so this
    # reader sees one save's config with that save's weights, never a mix.
    import contextlib

    local_dir = Path(files_of).expanduser() if isinstance(files_of, (str, os.PathLike)) else None
    if local_dir is not None and hub_kwargs.get("subfolder"):
        local_dir = local_dir / hub_kwargs["subfolder"]
    reading = hub.directory_lock(local_dir, shared=True) if local_dir is not None and local_dir.is_dir() \
        else contextlib.nullcontext()
    with reading:
        loaded_config = _as_config(config, files_of, hub_kwargs)
        if overrides:
            _check_overrides(overrides, loaded_config, who)
            source = f"the keyword arguments of {who}"
            if loaded_config is config:  # never change the caller's object
                loaded_config = loaded_config.copy()
            loaded_config.update_fields(overrides, strict=True, source=source)
        config = loaded_config
        path = hub.resolve_weights(name_or_path, use_safetensors=use_safetensors, variant=variant, **hub_kwargs)
        fmt = hub.weight_file_format(path.name, variant) or formats.detect_format(path)
        try:
            if quantized.is_quantized(config):  # int8 weights + scales (weights_convert.quantized)
                ckpt = quantized.read_quantized(path, fmt, config, head, allow_missing_head=True,
                                                ignore_mismatched_sizes=bool(ignore_mismatched_sizes))
            else:
                ckpt = formats.open_checkpoint(
                    path, format=fmt, config=config, head=head, allow_missing_head=True,
                    ignore_mismatched_sizes=bool(ignore_mismatched_sizes),
                )
        except ValueError as e:
            if "wrong shapes" in str(e) and not ignore_mismatched_sizes and overrides:
                raise ValueError(
                    f"{e} The keyword overrides {sorted(overrides)} changed the config; to load this checkpoint with "
                    "newly initialised head tensors of the new shape, pass ignore_mismatched_sizes=True."
                ) from e
            raise
        # A memory-mapped format (safetensors: what save_pretrained writes and the Hub serves) is read lazily, one
        # tensor at a time as the backend copies it into its parameters (formats_base.CheckpointTensors): the load
        # then peaks near the model's size instead of twice it. Other formats, and int8 checkpoints, are read into
        # a dict here.
        lazy = isinstance(ckpt, formats_base.Checkpoint) and ckpt.mapped
        with contextlib.nullcontext() if lazy else ckpt:  # the lazy mapping closes the checkpoint itself
            canonical = formats_base.CheckpointTensors(ckpt) if lazy else ckpt.to_dict()
            missing = list(ckpt.missing_head_keys)
            loading_info = {
                "missing_keys": list(missing),
                "unexpected_keys": list(ckpt.unexpected_keys),
                "mismatched_keys": list(ckpt.mismatched_keys),
                "error_msgs": [],
            }
        scales = getattr(ckpt, "scales", None)
        quantization_config = getattr(ckpt, "quantization_config", None)
        if scales is not None and not keep_quantized:
            canonical = quantized.dequantize(canonical, scales)
            config = quantized.without_quantization_config(config)
            logger.info(
                "%s: the int8 checkpoint %s was dequantized to float32 (weight * weight_scale, %d weights); this "
                "backend has no int8 inference.", owner or naming.ARCHITECTURES[head], name_or_path, len(scales),
            )
            scales = quantization_config = None
        if check_finite is not False:
            bad = formats_base.non_finite(canonical)
            if bad:
                message = formats_base.non_finite_message(bad, f"name_or_path={str(name_or_path)!r}, file={path.name}")
                if check_finite:
                    raise ValueError(message + " Use a checkpoint saved before the values diverged, or retrain.")
                logger.warning(
                    "%s Loaded anyway, as transformers does; pass check_finite=True to refuse such weights.", message
                )
        checkpoint_dtype = _checkpoint_dtype(config, canonical)
        if missing:
            logger.warning(
                "%s: %s not in the checkpoint; newly initialised. Train the model before using it for predictions.",
                owner or naming.ARCHITECTURES[head],
                missing,
            )
            seed = init_seed() if callable(init_seed) else init_seed
            if seed is None:
                seed = int(np.random.default_rng().integers(0, 2**31 - 1))
            init = reference.init_params(config, head, int(seed))
            canonical.update({k: init[k] for k in missing})
        generation_config = GenerationConfig.from_pretrained_or_model_config(files_of, config, **hub_kwargs)
    return Pretrained(
        config=config, canonical=canonical, head=head, missing_head_keys=missing, path=path,
        generation_config=generation_config,
        loading_info=loading_info,
        output_loading_info=bool(output_loading_info),
        checkpoint_dtype=checkpoint_dtype,
        dtype=checkpoint_dtype if isinstance(requested_dtype, str) and requested_dtype == AUTO_DTYPE
        else requested_dtype,
        attn_implementation=attn_implementation,
        device_map=device_map,
        scales=scales,
        quantization_config=quantization_config,
    )


def save_pretrained(
    save_directory: str | os.PathLike,
    config: GPT2Config,
    canonical: Mapping[str, np.ndarray],
    head: str,
    *,
    max_shard_size: int | str | None = None,
    generation_config: GenerationConfig | None = None,
    scales: Mapping[str, np.ndarray] | None = None,
    quantization_config: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write `config.json` + `model.safetensors` (sharded above `max_shard_size`) that transformers loads, and
    `generation_config.json` when `generation_config` is given.

    config.json gets `architectures = [naming.ARCHITECTURES[head]]` (the class transformers builds, whatever the
    framework that saved it) and `dtype`, the dtype the file holds. All or nothing (`gpt2_core.hub.atomic_files`):
    every file is written into a hidden staging directory first (inside `save_directory` when it exists, else
    beside it); on any error (a full disk:
    `hub.DiskFullError`) it is removed and `save_directory` is untouched. Then the set is published together:
    weights first, `generation_config.json` and `config.json` last, under an exclusive lock on the directory, so
    two processes saving there leave one whole save and a reader holding the shared lock sees one save's config
    with that save's weights. Other files in `save_directory` (a tokenizer, checkpoints) are kept; the shards or
    single file of an earlier save in the other layout are removed.

    A quantized model (`weights_convert.quantized`): `canonical` holds its quantized weights as int8, `scales` their
    float32 scales (written as `<weight name>_scale`) and `quantization_config` goes to config.json; both or neither.
    A float save never writes a `quantization_config` (one the config carries from an int8 checkpoint is dropped).

    Returns:
        The files written (their final paths).
    """
    from gpt2_core import config as config_module, generation_config as generation_config_module

    naming.check_canonical(canonical, config, head, f"canonical dict for {naming.ARCHITECTURES[head]}")
    if (scales is None) != (quantization_config is None):
        raise ValueError(
            f"A quantized save needs both scales and quantization_config. Received: scales given={scales is not None}"
            f", quantization_config={quantization_config!r}. Pass both (weights_convert.quantized) or neither."
        )
    if scales is not None:
        quantized.check_quantization_config(quantization_config, "save_pretrained")
        quantized.check_scales(canonical, scales, config, head, "save_pretrained")
    directory = Path(save_directory)
    out_config = formats.output_config(config, head, None)
    out_config.extra.pop(quantized.QUANTIZATION_CONFIG_KEY, None)
    if quantization_config is not None:
        out_config.extra[quantized.QUANTIZATION_CONFIG_KEY] = dict(quantization_config)
    floats = [v for v in canonical.values() if formats_base.is_float_dtype(np.asarray(v).dtype)]
    if floats:  # the dtype of the float tensors (an int8 checkpoint's wte is int8)
        out_config.extra["dtype"] = dtype_name(np.asarray(floats[0]).dtype)
    if generation_config is not None:
        generation_config.validate()  # before anything is written
    stale = (hub.SAFE_WEIGHTS_NAME, hub.SAFE_WEIGHTS_INDEX_NAME, "model-*-of-*.safetensors")
    last = (generation_config_module.GENERATION_CONFIG_NAME, config_module.CONFIG_NAME)
    with hub.atomic_files(directory, last=last, stale=stale) as tmp:
        state = naming.to_hub_state_dict(canonical, head) if scales is None \
            else quantized.hub_state_dict(canonical, scales, head)
        files = save_safetensors(state, tmp, max_shard_size=max_shard_size)
        if generation_config is not None:
            files.append(generation_config.save_pretrained(tmp))
        files.append(out_config.save_pretrained(tmp))
    return [directory / f.name for f in files]
