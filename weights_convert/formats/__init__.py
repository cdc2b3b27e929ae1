"""The registry of checkpoint formats: detect a checkpoint's format, open it for reading by format name, write by
format name. One module per format, each with one reader/writer pair:

* `safetensors`   `model.safetensors`, or shards + `model.safetensors.index.json` (Hub names).
* `pytorch`       `pytorch_model.bin`, or shards + `pytorch_model.bin.index.json` (Hub names, `torch.save`).
* `tf`            `tf_model.h5` as transformers 4.x's TFGPT2* classes save and load it (`tf_h5.py`).
* `flax`          `flax_model.msgpack` as transformers 4.x's FlaxGPT2* classes save and load it (`flax_msgpack.py`).
* `openai`        OpenAI's original TF1 checkpoint (`model.ckpt.index` + `.data-*`, `hparams.json`); needs TensorFlow.

`open_checkpoint` gives a `Checkpoint`: the `GPT2Config`, the task `head`, and the canonical tensors
(`gpt2_core.naming`), checked against the config (`naming.check_canonical`, the one strict check) before any tensor
is read and then read one at a time, so a large checkpoint is not held several times in memory. `write` hands
canonical tensors to a format's writer. The atomic directory-level `save_checkpoint` / `convert` are in
`weights_convert.conversion`; `weights_convert.pretrained` serves the models' `from_pretrained`.

bfloat16: every reader gives `ml_dtypes.bfloat16` arrays, never widened (see `weights_convert.formats.base`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import CONFIG_NAME, GPT2Config
from weights_convert.formats import flax_msgpack, openai, pytorch, safetensors, tf_h5
from weights_convert.formats.base import (
    DTYPES,
    Checkpoint,
    Format,
    Source,
    dtype_name,
    hub_names,
    is_float_dtype,
    numpy_dtype,
    stub,
    table_names,
)
from weights_convert.formats.openai import config_from_hparams
from weights_convert.formats.safetensors import read_safetensors, save_safetensors

logger = logging.getLogger(__name__)

REGISTRY: dict[str, Format] = {
    f.name: f for f in (safetensors.FORMAT, pytorch.FORMAT, tf_h5.FORMAT, flax_msgpack.FORMAT, openai.FORMAT)
}
FORMATS = tuple(REGISTRY)  # ("safetensors", "pytorch", "tf", "flax", "openai")

__all__ = [
    "DTYPES",
    "FORMATS",
    "REGISTRY",
    "Checkpoint",
    "Format",
    "config_from_hparams",
    "detect_format",
    "get_format",
    "load_checkpoint",
    "numpy_dtype",
    "open_checkpoint",
    "output_config",
    "read_safetensors",
    "save_safetensors",
    "write",
    # from weights_convert.conversion, importable from here as before
    "atomic_directory",
    "convert",
    "save_checkpoint",
]


def get_format(name: str) -> Format:
    """The registry entry of format `name` (one of `FORMATS`)."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown format. Received: format={name!r}. Use one of {FORMATS}.")
    return REGISTRY[name]


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------


def detect_format(path: str | os.PathLike) -> str:
    """The format of a checkpoint file or directory (one of `FORMATS`).

    A directory holding several formats (a Hub repo) takes the first of `gpt2_core.hub.WEIGHT_FILES`.
    """
    path = Path(path)
    if path.is_dir():
        for filename, fmt in hub.WEIGHT_FILES.items():
            if (path / filename).is_file():
                return fmt
        if openai.is_checkpoint_dir(path):
            return "openai"
        found = sorted(p.name for p in path.iterdir())[:10]
        raise ValueError(
            f"No checkpoint found in the directory. Received: path={str(path)!r} holding {found}. Expected one of "
            f"{', '.join(n for n in hub.WEIGHT_FILES if not n.endswith(hub.INDEX_SUFFIX))} or an OpenAI "
            "model.ckpt.index with hparams.json."
        )
    if not path.exists():
        if Path(str(path) + ".index").is_file():  # an OpenAI checkpoint prefix, e.g. models/124M/model.ckpt
            return "openai"
        raise FileNotFoundError(f"No such file or directory. Received: path={str(path)!r}.")
    for fmt in REGISTRY.values():
        if fmt.claims_name(path.name):
            return fmt.name
    with open(path, "rb") as f:  # an unusual name: look at the content
        head = f.read(16)
    for fmt in REGISTRY.values():
        if fmt.signature is not None and fmt.signature(head):
            return fmt.name
    raise ValueError(
        f"Cannot tell the checkpoint format of the file. Received: path={str(path)!r}. Pass --from "
        f"{{{','.join(FORMATS)}}} or a directory saved with save_pretrained."
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def _load_config(source_dir: Path, fmt: Format, config: GPT2Config | str | os.PathLike | None) -> GPT2Config:
    if isinstance(config, GPT2Config):
        return config
    if config is not None:
        path = Path(config)
        return GPT2Config.from_json_file(path / CONFIG_NAME if path.is_dir() else path)
    if (source_dir / CONFIG_NAME).is_file():
        return GPT2Config.from_json_file(source_dir / CONFIG_NAME)
    if fmt.config_beside is not None:
        found = fmt.config_beside(source_dir)
        if found is not None:
            return found
    raise FileNotFoundError(
        f"No {CONFIG_NAME} beside the checkpoint. Received: directory={str(source_dir)!r}. Pass the model's "
        f"config with --config PATH (for OpenAI checkpoints, {openai.HPARAMS_NAME})."
    )


def open_checkpoint(
    path: str | os.PathLike,
    *,
    format: str | None = None,
    config: GPT2Config | str | os.PathLike | None = None,
    head: str | None = None,
    allow_missing_head: bool = False,
    ignore_mismatched_sizes: bool = False,
) -> Checkpoint:
    """Open a checkpoint (file or directory) for reading; shapes are checked against the config before any read.

    Args:
        path: A checkpoint directory, a weights file (or shard index), or an OpenAI checkpoint prefix.
        format: One of `FORMATS`; detected when None.
        config: A `GPT2Config` or a config.json path; by default the config.json beside the weights (OpenAI:
            hparams.json).
        head: The task head to read (one of `naming.HEADS`); by default the one the tensor names show, else the
            config's `architectures`, else the file's own metadata, else `base`. Other heads are dropped.
        allow_missing_head: A head the file lacks is then listed in `Checkpoint.missing_head_keys` (for
            `from_pretrained` to initialise) instead of an error.
        ignore_mismatched_sizes: transformers' switch: a head tensor whose shape differs from the config's (a
            2-label classifier loaded with `num_labels=3`) is left out and listed in `Checkpoint.mismatched_keys`
            and `missing_head_keys` (to be initialised) instead of an error. Body tensors must always fit.

    Raises:
        ValueError: Corrupt or non-GPT-2 files, a config that disagrees with the tensors (every mismatch listed), a
            weight stored as an integer or boolean tensor, a shard index naming files outside its directory.
        FileNotFoundError: Missing files.
    """
    path = Path(path)
    fmt = get_format(format or detect_format(path))
    if head is not None and head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    closers: list[Callable[[], None]] = []
    try:
        return _open(path, fmt, config, head, allow_missing_head, closers, ignore_mismatched_sizes)
    except BaseException:
        for close in reversed(closers):
            with contextlib.suppress(Exception):
                close()
        raise


def drop_mismatched_head(selected: dict, expected: Mapping) -> list[tuple[str, tuple, tuple]]:
    """`ignore_mismatched_sizes`: remove from `selected` the head tensors whose shape is not the config's
    (`expected[key][0]`); returns (key, file shape, config shape) of each, for the caller to initialise and report."""
    mismatched = []
    for key in [k for k in selected if naming.is_head_key(k) and k in expected]:
        if tuple(selected[key].shape) != tuple(expected[key][0]):
            mismatched.append((key, tuple(selected[key].shape), tuple(expected[key][0])))
            del selected[key]
    return mismatched


def _open(
    path: Path, fmt: Format, config, head: str | None, allow_missing_head: bool, closers: list,
    ignore_mismatched_sizes: bool = False,
) -> Checkpoint:
    files, source_dir = fmt.locate(path)
    cfg = _load_config(source_dir, fmt, config)
    from weights_convert import quantized  # lazy: it opens float checkpoints through this module

    if quantized.is_quantized(cfg):  # an int8 checkpoint of gpt2_torch: read as the float weights it stands for
        return quantized.open_dequantized(path, cfg, head)

    # 1. list the file's tensors, {name: (shape, dtype, loader)}, and map each name to a canonical key
    listing, metadata_head = fmt.lister(files, closers)
    if fmt.table is None:
        names, prefixed = hub_names(listing)
    else:
        names, prefixed, skipped = table_names(fmt, cfg, listing)
        if skipped:
            logger.warning(
                "Skipping %d variables of the OpenAI checkpoint that are not model parameters (optimizer state, "
                "counters): %s%s",
                len(skipped),
                ", ".join(sorted(skipped)[:8]),
                " ..." if len(skipped) > 8 else "",
            )
    file_head = naming.head_from_names([k for k, _ in names.values() if k is not None])

    # 2. which head
    if head is None:
        head = (
            file_head
            or naming.head_from_architectures(cfg.extra.get("architectures"))
            or metadata_head
            or fmt.default_head
            or ("lm" if prefixed else "base")
        )

    # 3. the one strict check of names and shapes against the config, on stubs: before reading any data
    stubs: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    for name, (shape, dtype, _) in listing.items():
        key, layout = names[name]
        if key is None:
            continue
        if key in stubs:  # e.g. both h.0.x and transformer.h.0.x, or wte/weight:0 and wte/embeddings:0
            raise ValueError(f"The checkpoint holds {key!r} twice. Received: {origin[key]!r} and {name!r}.")
        stubs[key] = naming.from_file_layout(stub(shape, dtype), layout)
        origin[key] = name
    expected = naming.shape_table(cfg, head)
    # names the table does not know are reported under the file's own name
    selected = {(k if k in expected else origin[k]): v for k, v in naming.select_head(stubs, cfg, head).items()}
    unexpected = [
        origin[k] for k in stubs
        if k not in selected and not any(p.match(origin[k]) for p in naming.IGNORED_KEY_PATTERNS)
        and not (k == "lm_head.weight" and cfg.tie_word_embeddings)
    ]
    mismatched = drop_mismatched_head(selected, expected) if ignore_mismatched_sizes else []
    if ignore_mismatched_sizes:
        if mismatched:
            logger.warning(
                "Head tensors of the checkpoint do not fit the config and are newly initialised "
                "(ignore_mismatched_sizes=True): %s",
                ", ".join(f"{k}: checkpoint {a}, model {b}" for k, a, b in mismatched),
            )
    missing_head = naming.check_canonical(
        selected, cfg, head, f"{fmt.name} checkpoint at {str(path)!r}",
        allow_missing_head=allow_missing_head or bool(mismatched),
    )
    not_float = [f"{origin[k]} ({dtype_name(listing[origin[k]][1])})" for k in selected
                 if not is_float_dtype(listing[origin[k]][1])]
    if not_float:
        raise ValueError(
            f"The {fmt.name} checkpoint at {str(path)!r} stores weights as non-float tensors. Received: "
            f"{', '.join(not_float[:10])}{' ...' if len(not_float) > 10 else ''}. Weights must be float16, "
            "bfloat16, float32 or float64; the file is corrupt or not a GPT-2 checkpoint: save or convert it again."
        )

    loaders, views = {}, {}
    for key in selected:
        name = origin[key]
        layout = names[name][1]
        loaders[key] = lambda load=listing[name][2], layout=layout: naming.from_file_layout(load(), layout)
        if fmt.mapped:
            views[key] = lambda load=listing[name][2], layout=layout: naming.from_file_layout(load(copy=False), layout)
    return Checkpoint(
        format=fmt.name,
        config=cfg,
        head=head,
        shapes={k: tuple(v.shape) for k, v in selected.items()},
        dtypes={k: listing[origin[k]][1] for k in selected},
        source_dir=source_dir,
        missing_head_keys=missing_head,
        unexpected_keys=unexpected,
        mismatched_keys=mismatched,
        _loaders=loaders,
        _views=views,
        _closers=closers,
    )


def load_checkpoint(path: str | os.PathLike, **kwargs: Any) -> tuple[GPT2Config, dict[str, np.ndarray], str]:
    """(config, canonical tensors, head) of a checkpoint, all in memory. Arguments as `open_checkpoint`."""
    with open_checkpoint(path, **kwargs) as ckpt:
        return ckpt.config, ckpt.to_dict(), ckpt.head


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def write(to: str, directory: Path, config: GPT2Config, head: str, source: Source, max_shard_size=None) -> list[Path]:
    """Write canonical tensors (`Source`) as format `to`'s files into `directory`; returns the files written."""
    return get_format(to).writer(Path(directory), config, head, source, max_shard_size=max_shard_size)


def output_config(config: GPT2Config, head: str, dtype: np.dtype | None) -> GPT2Config:
    """The config.json to write: `architectures` for `head` (transformers' class name), the dtype recorded."""
    data = config.to_dict()
    data["architectures"] = [naming.ARCHITECTURES[head]]
    if dtype is not None:
        key = "dtype" if "dtype" in data else "torch_dtype"
        data[key] = dtype_name(np.dtype(dtype))
    return GPT2Config.from_dict(data)


def __getattr__(name: str):
    # The atomic directory-level functions live in weights_convert.conversion (which imports this module).
    if name in ("convert", "save_checkpoint", "atomic_directory", "TOKENIZER_FILES"):
        from weights_convert import conversion

        return getattr(conversion, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
