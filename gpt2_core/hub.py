"""Resolve a local directory or a Hugging Face Hub id to files, and read/write checkpoint files safely.

* `resolve_file`: a local file or directory, else a Hub id downloaded with `huggingface_hub` (imported lazily).
* `load_state_dict`: `model.safetensors` (also sharded, with `model.safetensors.index.json`) or `pytorch_model.bin`
  (also sharded), read into `dict[str, np.ndarray]` in the file's names. `.bin` files are read with
  `torch.load(weights_only=True)`, which refuses to unpickle arbitrary objects.
* `save_safetensors`: atomic (temporary name, then rename), sharded on request with transformers' index json.

Everything here speaks file names only; `gpt2_core.naming` turns file names into canonical names.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME)


# ---------------------------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------------------------


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The permissions a plainly created file (0o666) or directory (0o777) gets under the current umask; temporary
    files are created 0o600 and are given these before they take their final name."""
    return (0o777 if directory else 0o666) & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_mode())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# Resolving names
# ---------------------------------------------------------------------------------------------------------------


def _looks_like_hub_id(name: str) -> bool:
    parts = name.split("/")
    return 1 <= len(parts) <= 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in name


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    required: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path | None:
    """Path of `filename` in a local directory, or downloaded from the Hub repo `name_or_path`.

    Returns None when the file does not exist and `required` is False.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path if path.name == filename or not path.is_dir() else None
    if path.is_dir():
        candidate = path / filename
        if candidate.is_file():
            return candidate
        if required:
            raise FileNotFoundError(
                f"No {filename} in the directory. Received: name_or_path={str(name_or_path)!r}. "
                f"Save the model there with save_pretrained, or pass the directory that holds {filename}."
            )
        return None
    name = str(name_or_path)
    if not _looks_like_hub_id(name):
        raise FileNotFoundError(
            f"No such directory, and not a Hub id. Received: name_or_path={name!r}. "
            "Pass a local directory saved with save_pretrained or a Hub id such as 'openai-community/gpt2'."
        )
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise ImportError("Loading from the Hub needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return Path(
            hf_hub_download(
                repo_id=name,
                filename=filename,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=local_files_only,
            )
        )
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(f"The Hub repo has no {filename}. Received: name_or_path={name!r}.") from None
        return None
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"No such local directory or Hub repo. Received: name_or_path={name!r}. Check the name, or pass a "
            "local directory."
        ) from e
    except LocalEntryNotFoundError as e:
        if not required:
            return None
        raise FileNotFoundError(
            f"Could not fetch {filename} of {name!r} from the Hub (offline, or no network) and it is not in the "
            "local cache. Download it once with network access, or pass a local directory."
        ) from e


def resolve_weights(name_or_path: str | os.PathLike, **hub_kwargs) -> list[Path]:
    """The weight files of a checkpoint: safetensors preferred, then pytorch .bin; shards resolved via the index."""
    for filename in WEIGHT_FILES:
        found = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if found is None:
            continue
        if filename.endswith(".index.json"):
            index = _read_index(found)
            shards = sorted(set(index["weight_map"].values()))
            return [resolve_file(name_or_path, s, required=True, **hub_kwargs) for s in shards]  # type: ignore[misc]
        return [found]
    raise FileNotFoundError(
        f"No weights found. Received: name_or_path={str(name_or_path)!r}. Expected one of {WEIGHT_FILES} "
        "(or transformers 4.x tf_model.h5 / flax_model.msgpack). For an OpenAI checkpoint, convert first: "
        "gpt2-convert SRC -o DST."
    )


def _read_index(path: Path) -> dict:
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
        if not isinstance(index.get("weight_map"), dict):
            raise ValueError("no weight_map")
        return index
    except (json.JSONDecodeError, ValueError, AttributeError) as e:
        raise ValueError(f"Corrupt shard index. Received: path={str(path)!r} ({e}). Re-save the checkpoint.") from e


# ---------------------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------------------


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a `.safetensors` file as NumPy (bfloat16 is widened to float32)."""
    from safetensors import SafetensorError, safe_open

    out: dict[str, np.ndarray] = {}
    try:
        with safe_open(str(path), framework="numpy") as f:
            for key in f.keys():
                out[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"Cannot read the safetensors file; it is truncated or corrupt. Received: path={str(path)!r} ({e}). "
            "Download or save it again."
        ) from e
    except TypeError as e:  # numpy has no bfloat16: go through torch if present
        out = _read_safetensors_via_torch(path, e)
    return out


def _read_safetensors_via_torch(path, err) -> dict[str, np.ndarray]:
    try:
        import torch
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(f"Cannot read {path}: {err}. Install torch to read bfloat16 safetensors files.") from err
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in load_file(str(path)).items()}


def read_torch_bin(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A `pytorch_model.bin` state dict as NumPy, loaded with `weights_only=True` (no arbitrary unpickling)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {Path(path).name} needs PyTorch (pip install 'gpt2-frameworks[torch]'), or convert it to "
            "safetensors first."
        ) from e
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise ValueError(
            f"Cannot read the PyTorch checkpoint; it is corrupt, truncated or holds objects other than tensors. "
            f"Received: path={str(path)!r} ({type(e).__name__}: {str(e)[:200]})."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"The PyTorch checkpoint does not hold a state dict. Received: type={type(state).__name__}.")
    out = {}
    for key, value in state.items():
        if not hasattr(value, "detach"):
            raise ValueError(f"The PyTorch checkpoint holds a non-tensor. Received: {key}={type(value).__name__}.")
        t = value.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out[key] = t.numpy()
    return out


# Files of transformers 4.x's TensorFlow and Flax classes: read through weights_convert (the one place that parses
# them), so every backend's from_pretrained accepts them alike.
OTHER_WEIGHT_FILES = {"tf_model.h5": "tf", "tf_model.h5.index.json": "tf", "flax_model.msgpack": "flax",
                      "flax_model.msgpack.index.json": "flax"}


def load_state_dict(name_or_path: str | os.PathLike, *, config=None, **hub_kwargs) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint (one file or shards), in Hub (PyTorch) names.

    `model.safetensors` / `pytorch_model.bin` are read here; a checkpoint that has only a transformers 4.x
    `tf_model.h5` or `flax_model.msgpack` is read by `weights_convert.formats` (checked against `config`).
    """
    try:
        files = resolve_weights(name_or_path, **hub_kwargs)
    except FileNotFoundError:
        for filename, fmt in OTHER_WEIGHT_FILES.items():
            found = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
            if found is not None:
                return _read_other_format(found.parent if filename.endswith(".index.json") else found, fmt, config)
        raise
    out: dict[str, np.ndarray] = {}
    for f in files:
        part = read_safetensors(f) if f.suffix == ".safetensors" else read_torch_bin(f)
        dup = set(part) & set(out)
        if dup:
            raise ValueError(f"Tensor names repeat across shards. Received: {sorted(dup)[:5]} in {f.name}.")
        out.update(part)
    return out


def _read_other_format(path: Path, fmt: str, config) -> dict[str, np.ndarray]:
    try:
        from weights_convert.formats import load_checkpoint
    except ImportError as e:  # pragma: no cover - weights_convert ships in the same distribution
        raise FileNotFoundError(
            f"Only a {fmt} checkpoint was found, and reading it needs weights_convert. Received: path={str(path)!r}. "
            "Convert it first: gpt2-convert SRC -o DST."
        ) from e
    from gpt2_core import naming

    _, canonical, head = load_checkpoint(path, format=fmt, config=config)
    return naming.to_hub_state_dict(canonical, head)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / '10KiB' / 1000 -> bytes."""
    if isinstance(size, int):
        return size
    s = size.strip().upper()
    units = {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 10**3, "MB": 10**6, "GB": 10**9, "B": 1}
    for unit, factor in units.items():
        if s.endswith(unit):
            return int(float(s[: -len(unit)]) * factor)
    try:
        return int(s)
    except ValueError:
        raise ValueError(f"Cannot parse a size. Received: {size!r}. Use e.g. '5GB', '500MB' or bytes.") from None


def save_safetensors(
    state_dict: Mapping[str, np.ndarray],
    directory: str | os.PathLike,
    *,
    max_shard_size: int | str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write `model.safetensors`, or shards `model-0000i-of-0000n.safetensors` + the index json, atomically."""
    from safetensors.numpy import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", **(metadata or {})}
    arrays = {k: np.ascontiguousarray(v) for k, v in state_dict.items()}
    limit = parse_size(max_shard_size) if max_shard_size is not None else None
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for key, value in arrays.items():
        if limit is not None and shards[-1] and size + value.nbytes > limit:
            shards.append({})
            size = 0
        shards[-1][key] = value
        size += value.nbytes
    written = []
    if len(shards) == 1:
        path = directory / SAFE_WEIGHTS_NAME
        with atomic_path(path) as tmp:
            save_file(shards[0], str(tmp), metadata=meta)
        return [path]
    n = len(shards)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{n:05d}.safetensors"
        with atomic_path(directory / name) as tmp:
            save_file(shard, str(tmp), metadata=meta)
        written.append(directory / name)
        weight_map.update({k: name for k in shard})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in arrays.values()))}, "weight_map": weight_map}
    atomic_write_text(directory / SAFE_WEIGHTS_INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    stale = directory / SAFE_WEIGHTS_NAME
    if stale.exists():
        stale.unlink()
    return written + [directory / SAFE_WEIGHTS_INDEX_NAME]
