"""Write a checkpoint directory atomically, and convert between formats: `save_checkpoint` and `convert`.

The output is written into a temporary directory beside the destination and renamed at the end
(`gpt2_core.hub.atomic_directory`); on any error (or Ctrl-C) nothing half-written is left, and an existing output is
replaced only with `force`, once the new one is complete. `convert` streams tensor by tensor from
`weights_convert.formats.open_checkpoint` to the format's writer; no model is built.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Mapping

import numpy as np

from gpt2_core import hub, naming
from gpt2_core.config import GPT2Config
from weights_convert import formats
from weights_convert.formats.base import Checkpoint, Source, numpy_dtype
from weights_convert.formats.openai import TOKENIZER_FILES as OPENAI_TOKENIZER_FILES

logger = logging.getLogger(__name__)

# Files copied beside the weights when the source directory has them.
TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "added_tokens.json",
    "generation_config.json",
)
atomic_directory = hub.atomic_directory


def _copy_tokenizer(source_dir: Path | None, directory: Path, to: str) -> list[Path]:
    if source_dir is None:
        return []
    copied = []
    renames = {n: n for n in TOKENIZER_FILES}
    renames.update({src: dst for src, dst in OPENAI_TOKENIZER_FILES.items()})
    for src_name, dst_name in renames.items():
        src = source_dir / src_name
        if not src.is_file():
            continue
        if to == "openai":  # OpenAI's own names for the BPE files
            dst_name = {v: k for k, v in OPENAI_TOKENIZER_FILES.items()}.get(dst_name, dst_name)
        dst = directory / dst_name
        if dst.exists():
            continue  # vocab.json already copied; don't let encoder.json overwrite it
        shutil.copyfile(src, dst)
        copied.append(dst)
    return copied


def _output_bytes(tensors: Mapping[str, np.ndarray] | Checkpoint, dtype: np.dtype | None) -> int:
    """The bytes of the tensors as written (headers aside): what the output needs at least."""
    total = 0
    for key in tensors.keys():
        if isinstance(tensors, Checkpoint):
            shape, item = tensors.shapes[key], np.dtype(dtype or tensors.dtypes[key]).itemsize
        else:
            value = np.asarray(tensors[key])
            shape, item = value.shape, np.dtype(dtype or value.dtype).itemsize
        total += int(np.prod(shape, dtype=np.int64)) * item
    return total


def save_checkpoint(
    directory: str | os.PathLike,
    config: GPT2Config,
    tensors: Mapping[str, np.ndarray] | Checkpoint,
    head: str = "base",
    *,
    to: str = "safetensors",
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    force: bool = False,
    tokenizer_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """Write canonical tensors as a checkpoint directory in format `to`, atomically.

    Args:
        directory: The output directory; it must not exist unless `force` (then it is replaced at the end).
        config: The model config; config.json is written with `architectures` for `head`.
        tensors: Canonical tensors (a dict, or an open `Checkpoint` read one tensor at a time).
        head: One of `naming.HEADS`.
        to: One of `FORMATS`.
        dtype: 'float32', 'float16', 'bfloat16', or None to keep each tensor's dtype.
        max_shard_size: e.g. '2GB': shard safetensors / pytorch outputs.
        force: Replace an existing `directory`.
        tokenizer_dir: Copy tokenizer files from there.
        progress: tqdm progress bar; None shows it when stderr is a terminal.
    """
    if to not in formats.REGISTRY:
        raise ValueError(f"Unknown output format. Received: to={to!r}. Use one of {formats.FORMATS}.")
    if head not in naming.HEADS:
        raise ValueError(f"Unknown head. Received: head={head!r}. Use one of {naming.HEADS}.")
    np_dtype = numpy_dtype(dtype)
    if max_shard_size is not None:
        hub.parse_size(max_shard_size)  # fail before writing anything
    if not isinstance(tensors, Checkpoint):  # the same strict check readers apply
        tensors, _ = naming.from_hub_state_dict(tensors, config, head, allow_missing_head=False, source="tensors")
    directory = Path(directory)
    hub.check_free_space(directory, _output_bytes(tensors, np_dtype))  # before a writer meets a full disk
    with hub.atomic_directory(directory, force=force) as tmp:
        source = Source(tensors, np_dtype, progress, f"{to} <- {directory.name}")
        formats.write(to, tmp, config, head, source, max_shard_size=max_shard_size)
        out_dtype = np_dtype
        if out_dtype is None and source.keys:
            out_dtype = source.output_dtype(source.keys[0])
        formats.output_config(config, head, out_dtype).save_pretrained(tmp)
        _copy_tokenizer(Path(tokenizer_dir) if tokenizer_dir else None, tmp, to)
    return directory


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    to: str = "safetensors",
    *,
    src_format: str | None = None,
    dtype: str | None = None,
    max_shard_size: int | str | None = None,
    force: bool = False,
    head: str | None = None,
    config: GPT2Config | str | os.PathLike | None = None,
    progress: bool | None = None,
) -> Path:
    """Convert the checkpoint at `src` into a directory `dst` in format `to`, streaming tensor by tensor.

    Arguments as `open_checkpoint` and `save_checkpoint`. Tokenizer files beside `src` are copied.
    """
    src_path, dst_path = Path(src).resolve(), Path(dst).resolve()
    if dst_path == src_path or dst_path in src_path.parents:
        raise ValueError(
            f"The output would replace the source. Received: src={str(src)!r}, output={str(dst)!r}. Write to "
            "another directory."
        )
    if dst_path.exists() and not force:  # fail before reading anything
        raise FileExistsError(
            f"The output already exists. Received: output={str(dst)!r}. Pass --force to replace it, or choose "
            "another directory."
        )
    with formats.open_checkpoint(src, format=src_format, config=config, head=head) as ckpt:
        logger.info(
            "Read %s checkpoint %s: head=%s, %d tensors, n_layer=%d, n_embd=%d.",
            ckpt.format, src, ckpt.head, len(ckpt), ckpt.config.n_layer, ckpt.config.n_embd,
        )
        return save_checkpoint(
            dst,
            ckpt.config,
            ckpt,
            ckpt.head,
            to=to,
            dtype=dtype,
            max_shard_size=max_shard_size,
            force=force,
            tokenizer_dir=ckpt.source_dir,
            progress=progress,
        )
