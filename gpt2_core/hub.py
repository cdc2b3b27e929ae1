"""Resolve a local directory or a Hugging Face Hub id to files, and write files atomically.

* `WEIGHT_FILES`: the one list of "which files are weights", in priority order, with each file's format name.
* `resolve_file`: a file of a local directory, else of a Hub repo downloaded with `huggingface_hub` (imported
  lazily), with the Hub keyword arguments `HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
  `force_download`, `subfolder`). A name that looks like a local path is never sent to the Hub.
* `resolve_weights`: the first of `WEIGHT_FILES` a checkpoint has; for a shard index, every shard is fetched beside it.
* `atomic_path` / `atomic_write_text` / `atomic_directory`: write under a temporary name, rename at the end.

This module speaks file names only; reading and writing the formats lives in `weights_convert`, and
`gpt2_core.naming` turns file names into canonical names. Standard library only (huggingface_hub when downloading).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

logger = logging.getLogger(__name__)

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
TF_WEIGHTS_NAME = "tf_model.h5"
TF_WEIGHTS_INDEX_NAME = "tf_model.h5.index.json"
FLAX_WEIGHTS_NAME = "flax_model.msgpack"
FLAX_WEIGHTS_INDEX_NAME = "flax_model.msgpack.index.json"

# The weight files of a checkpoint directory or Hub repo, in the order they are preferred, and the
# `weights_convert` format that reads each. A repo holding several (the Hub's gpt2 has all four) loads the first.
WEIGHT_FILES: dict[str, str] = {
    SAFE_WEIGHTS_NAME: "safetensors",
    SAFE_WEIGHTS_INDEX_NAME: "safetensors",
    WEIGHTS_NAME: "pytorch",
    WEIGHTS_INDEX_NAME: "pytorch",
    TF_WEIGHTS_NAME: "tf",
    TF_WEIGHTS_INDEX_NAME: "tf",
    FLAX_WEIGHTS_NAME: "flax",
    FLAX_WEIGHTS_INDEX_NAME: "flax",
}
INDEX_SUFFIX = ".index.json"

# Keyword arguments of `resolve_file` that the `from_pretrained` methods pass through.
HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")


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


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `directory`; on success it replaces `directory`, on any error it is removed.

    An existing `directory` is an error unless `force`; then it is swapped out only once the new one is complete.
    """
    directory = Path(directory)
    if directory.exists() and not force:
        raise FileExistsError(
            f"The output already exists. Received: output={str(directory)!r}. Pass --force (force=True) to replace "
            "it, or choose another directory."
        )
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        yield tmp
        os.chmod(tmp, default_mode(directory=True))  # mkdtemp makes it private; give it a normal directory's mode
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.replace(directory, old / "x")
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


# ---------------------------------------------------------------------------------------------------------------
# Resolving names
# ---------------------------------------------------------------------------------------------------------------


def check_hub_kwargs(kwargs: Mapping[str, Any], owner: str = "from_pretrained") -> None:
    """TypeError naming any keyword argument that is not one of `HUB_KWARGS`."""
    unknown = sorted(set(kwargs) - set(HUB_KWARGS))
    if unknown:
        raise TypeError(f"{owner} got unexpected keyword arguments {unknown}. Hub keyword arguments are {HUB_KWARGS}.")


def looks_like_path(name: str) -> bool:
    """True when `name` is meant as a local path, so it is never sent to the Hub: absolute, `./`, `../` or `~`,
    more than one `/` (a Hub id is `name` or `org/name`), a backslash, or a first component that exists here."""
    if os.path.isabs(name) or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    if name.count("/") > 1 or "\\" in name or (os.sep != "/" and os.sep in name):
        return True
    parts = name.split("/")
    if any(not p or p.startswith(".") for p in parts):
        return True  # not a valid Hub id either
    return len(parts) > 1 and os.path.exists(parts[0])


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cache_dir(cache_dir: str | os.PathLike | None) -> str:
    if cache_dir is not None:
        return str(cache_dir)
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        return "the huggingface_hub cache"


def resolve_file(
    name_or_path: str | os.PathLike,
    filename: str,
    *,
    required: bool = True,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | bool | None = None,
    local_files_only: bool = False,
    force_download: bool = False,
    subfolder: str | None = None,
) -> Path | None:
    """Path of `filename` in a local directory, or of the Hub repo `name_or_path` (downloaded, or from the cache).

    Args:
        name_or_path: A local directory (or the file itself), or a Hub id (`gpt2`, `org/name`).
        filename: The file to find, e.g. `config.json`.
        required: Raise FileNotFoundError when the file does not exist; else return None.
        revision, cache_dir, token, local_files_only, force_download, subfolder: as `huggingface_hub.hf_hub_download`.
            `HF_HUB_OFFLINE=1` (read at call time) implies `local_files_only`.

    Raises:
        FileNotFoundError: a missing file (required), a local path that does not exist, a file not in the cache.
    """
    path = Path(name_or_path).expanduser()
    if subfolder:
        path = path / subfolder
    if path.is_file():  # the file itself was given
        return path
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
    if looks_like_path(name):
        raise FileNotFoundError(
            f"No such local directory: {str(path)!r}. Received: name_or_path={name!r}. Check the path; a Hub id "
            "has the form 'name' or 'org/name' (e.g. 'openai-community/gpt2')."
        )
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise ImportError("Loading from the Hub needs huggingface_hub: pip install huggingface_hub") from e
    # Read at call time: huggingface_hub reads HF_HUB_OFFLINE only once, when it is imported.
    offline = bool(local_files_only) or _env_flag("HF_HUB_OFFLINE")
    try:
        return Path(
            hf_hub_download(
                repo_id=name,
                filename=filename,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=offline,
                force_download=force_download,
            )
        )
    except LocalEntryNotFoundError as e:  # before EntryNotFoundError, its base class
        if not required:
            return None
        cache = _cache_dir(cache_dir)
        if offline:
            raise FileNotFoundError(
                f"{filename} of {name!r} is not in the cache {cache!r} (local_files_only=True or HF_HUB_OFFLINE=1, "
                f"so nothing is downloaded). Received: name_or_path={name!r}, revision={revision!r}, "
                f"cache_dir={None if cache_dir is None else str(cache_dir)!r}. Download it once with network "
                "access, pass the cache_dir that holds it, or pass a local directory."
            ) from e
        raise FileNotFoundError(
            f"Could not fetch {filename} of {name!r} from the Hub (no network?) and it is not in the cache "
            f"{cache!r}. Received: name_or_path={name!r}, revision={revision!r}. Retry with network access, or "
            "pass a local directory."
        ) from e
    except EntryNotFoundError:
        if required:
            raise FileNotFoundError(
                f"The Hub repo has no {filename}. Received: name_or_path={name!r}, revision={revision!r}."
            ) from None
        return None
    except RepositoryNotFoundError as e:
        raise FileNotFoundError(
            f"No such local directory or Hub repo. Received: name_or_path={name!r}. Check the name, or pass a "
            "local directory."
        ) from e


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a transformers shard index json."""
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"Corrupt shard index. Received: path={str(path)!r} ({e}). Save the checkpoint again.") from e
    return weight_map


def resolve_weights(name_or_path: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """The weights of a checkpoint: the first of `WEIGHT_FILES` it has, as a local path.

    For a shard index (`*.index.json`) every shard it lists is resolved (downloaded) too, so the shards lie beside
    the returned index. The format that reads the file is `WEIGHT_FILES[path.name]`.
    """
    check_hub_kwargs(hub_kwargs, "resolve_weights")
    if Path(name_or_path).expanduser().is_file():
        return Path(name_or_path).expanduser()
    for filename in WEIGHT_FILES:
        found = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if found is None:
            continue
        if filename.endswith(INDEX_SUFFIX):
            for shard in sorted(set(read_index(found).values())):
                resolve_file(name_or_path, shard, required=True, **hub_kwargs)  # the Hub puts it beside the index
        return found
    raise FileNotFoundError(
        f"No weights found. Received: name_or_path={str(name_or_path)!r}. Expected one of {tuple(WEIGHT_FILES)}. "
        "For an OpenAI checkpoint, convert first: gpt2-convert SRC -o DST."
    )
