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
from weights_convert import formats
from weights_convert.formats.base import dtype_name
from weights_convert.formats.safetensors import save_safetensors

logger = logging.getLogger(__name__)


@dataclass
class Pretrained:
    """A checkpoint read for a model.

    Args:
        config: The config (the checkpoint's config.json, or the one passed in).
        canonical: Every canonical tensor of `head` (`gpt2_core.naming`), in the file's dtype.
        head: The head it was read for.
        missing_head_keys: Head keys the checkpoint lacked, newly initialised in `canonical`.
        path: The weights file read (a shard index for sharded checkpoints).
        generation_config: The checkpoint's `generation_config.json`, else the model config's defaults
            (`GenerationConfig.from_model_config`), as transformers attaches it.
    """

    config: GPT2Config
    canonical: dict[str, np.ndarray]
    head: str
    missing_head_keys: list[str] = field(default_factory=list)
    path: Path | None = None
    generation_config: GenerationConfig | None = None


def load_pretrained(
    name_or_path: str | os.PathLike,
    head: str,
    *,
    config: GPT2Config | None = None,
    owner: str | None = None,
    init_seed: int | Callable[[], int] | None = None,
    **hub_kwargs: Any,
) -> Pretrained:
    """config.json + weights of a local directory or Hub id -> canonical tensors for a `head` model.

    Args:
        name_or_path: Local directory (or weights file) or Hub id (e.g. `openai-community/gpt2`).
        head: One of `gpt2_core.naming.HEADS`: the model the weights are for.
        config: Use this config instead of the checkpoint's `config.json`.
        owner: The class name used in log messages.
        init_seed: The seed (or a function drawing one, called only when needed) of `reference.init_params` for head
            keys the checkpoint lacks; each backend passes its own RNG so its seeding rules hold.
        **hub_kwargs: `gpt2_core.hub.HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
            `force_download`, `subfolder`), for config.json and the weights alike.

    Raises:
        FileNotFoundError: No such directory / repo / file, or a file not in the cache (named with the cache dir).
        ValueError: Corrupt files, or weights that do not fit the config (every mismatch listed).
    """
    hub.check_hub_kwargs(hub_kwargs, f"{owner or 'load_pretrained'}.from_pretrained")
    if head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    if config is None:
        config = GPT2Config.from_pretrained(name_or_path, **hub_kwargs)
    elif not isinstance(config, GPT2Config):
        raise TypeError(f"config must be a gpt2_core.GPT2Config. Received: type={type(config).__name__}.")
    path = hub.resolve_weights(name_or_path, **hub_kwargs)
    fmt = hub.WEIGHT_FILES.get(path.name) or formats.detect_format(path)
    with formats.open_checkpoint(path, format=fmt, config=config, head=head, allow_missing_head=True) as ckpt:
        canonical = ckpt.to_dict()
        missing = list(ckpt.missing_head_keys)
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
    generation_config = GenerationConfig.from_pretrained_or_model_config(name_or_path, config, **hub_kwargs)
    return Pretrained(
        config=config, canonical=canonical, head=head, missing_head_keys=missing, path=path,
        generation_config=generation_config,
    )


def save_pretrained(
    save_directory: str | os.PathLike,
    config: GPT2Config,
    canonical: Mapping[str, np.ndarray],
    head: str,
    *,
    max_shard_size: int | str | None = None,
    generation_config: GenerationConfig | None = None,
) -> list[Path]:
    """Write `config.json` + `model.safetensors` (sharded above `max_shard_size`) that transformers loads, and
    `generation_config.json` when `generation_config` is given.

    config.json gets `architectures = [naming.ARCHITECTURES[head]]` (the class transformers builds, whatever the
    framework that saved it) and `dtype`, the dtype the file holds. Files are written one by one, atomically, into
    `save_directory` (created if needed; other files in it, such as a tokenizer, are kept).

    Returns:
        The files written.
    """
    naming.check_canonical(canonical, config, head, f"canonical dict for {naming.ARCHITECTURES[head]}")
    directory = Path(save_directory)
    out_config = formats.output_config(config, head, None)
    if canonical:
        out_config.extra["dtype"] = dtype_name(np.asarray(next(iter(canonical.values()))).dtype)
    files = save_safetensors(naming.to_hub_state_dict(canonical, head), directory, max_shard_size=max_shard_size)
    files = files + [out_config.save_pretrained(directory)]
    if generation_config is not None:
        files.append(generation_config.save_pretrained(directory))
    return files
