"""Resolve a local directory or a Hugging Face Hub id to files, and write files atomically.

* `WEIGHT_FILES`: the one list of "which files are weights", in priority order, with each file's format name.
* `resolve_file`: a file of a local directory, else of a Hub repo downloaded with `huggingface_hub` (imported
  lazily), with the Hub keyword arguments `HUB_KWARGS` (`revision`, `cache_dir`, `token`, `local_files_only`,
  `force_download`, `subfolder`). A name that looks like a local path is never sent to the Hub.
* `resolve_weights`: the first of `WEIGHT_FILES` a checkpoint has; for a shard index, every shard is fetched beside it.
* `atomic_path` / `atomic_write_text` / `atomic_directory`: write under a temporary name, rename at the end.
  `atomic_directory` publishes without clobbering (Linux `renameat2(RENAME_NOREPLACE)`): an output that appeared
  while it was written is never replaced unless `force`, and with `force` the old one is swapped out in one step
  (`RENAME_EXCHANGE`). `atomic_files` stages a set of files (a model's weights + config.json) and publishes them
  together under `directory_lock`, config.json last. A writer that fails for lack of space raises `DiskFullError`
  ("No space left on device writing PATH"), whatever the library that hit it said, and leaves the old output.
* `hub_unreachable_reason`: a bounded TCP probe of the Hub (or its proxy) before a download, so an unreachable Hub
  is one clear `HubUnreachableError` at once (files already in the cache still load) instead of huggingface_hub's
  network retries, about 25 s per file. `HF_HUB_OFFLINE=1` / `local_files_only` skip the probe and the network.
* `sigterm_raises`: SIGTERM raises `Terminated` (a KeyboardInterrupt) in the main thread, so the temporaries of an
  interrupted write are removed on SIGTERM as on Ctrl-C.

This module speaks file names only; reading and writing the formats lives in `weights_convert`, and
`gpt2_core.naming` turns file names into canonical names. Standard library only (huggingface_hub when downloading).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
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


class DiskFullError(OSError):
    """A write failed because its filesystem is full (or over quota); the message names the output, `original` is
    what the writing library raised."""

    original: BaseException | None = None

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without "[Errno 28]" and the file name repeated


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread inside `sigterm_raises`: the same cleanup as Ctrl-C runs (temporaries are
    removed). A KeyboardInterrupt, so code that handles an interrupt handles this too; CLIs exit 143 on it."""


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises `Terminated` in the main thread (once: a second SIGTERM during the cleanup
    is ignored, so the cleanup finishes). Elsewhere than the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated(f"terminated by signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python


# Writers hide ENOSPC in their own errors (torch.save: "unexpected pos ...", h5py and TensorFlow: their own
# exception types); a write that fails with less than this free on its filesystem is reported as disk full.
_DISK_FULL_FREE_BYTES = 1 << 20
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "unexpected pos")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return None


def disk_full_error(exc: BaseException, path: str | os.PathLike) -> DiskFullError | None:
    """A `DiskFullError` naming `path` when `exc` (a failed write of `path`) was caused by a full disk, else None.

    An OSError ENOSPC/EDQUOT anywhere in the exception chain, the text of one, or (for writers that hide it) any
    error with under 1 MiB left on the filesystem of `path`."""
    if not isinstance(exc, Exception):
        return None
    if isinstance(exc, DiskFullError):  # an inner writer's (a file in a staging directory): name the output instead
        if exc.filename == str(path):
            return None
        if exc.original is None:  # a failed `check_free_space`: name the output
            return _disk_full(path, exc.strerror.split("Received: ", 1)[-1].split(". Free some", 1)[0], None)
        exc = exc.original
    path = Path(path)
    full = any(
        (isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
        or any(text in str(e) for text in _DISK_FULL_TEXT)
        for e in _chain(exc)
    )
    free = _free_bytes(path)
    if not full and (free is None or free >= _DISK_FULL_FREE_BYTES):
        return None
    detail = f"{free} bytes free on its filesystem" if free is not None else "its filesystem is full"
    return _disk_full(path, f"{detail} ({type(exc).__name__}: {_short(exc)})", exc)


def _short(exc: BaseException) -> str:
    """One line of a library's error (TensorFlow's carry whole stacks): the line naming the full disk, else the
    first, at most 200 characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [""]
    line = next((x for x in lines if any(t in x for t in _DISK_FULL_TEXT)), lines[0])
    return line if len(line) <= 200 else line[:197] + "..."


def _disk_full(path: Path, detail: str, original: BaseException | None) -> DiskFullError:
    error = DiskFullError(
        errno.ENOSPC,
        f"No space left on device writing {path}. Received: {detail}. Free some space or write elsewhere; nothing "
        "was published and an earlier output there is intact.",
        str(path),
    )
    error.original = original
    return error


def check_free_space(path: str | os.PathLike, needed: int) -> None:
    """DiskFullError before writing when the filesystem of `path` (or its nearest existing parent) has less than
    `needed` bytes free: some writers crash outright on a full disk (h5py can segfault) instead of raising."""
    path = Path(path)
    free = _free_bytes(path)
    if free is not None and free < needed:
        raise _disk_full(path, f"about {needed} bytes to write, {free} bytes free on its filesystem", None)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it to `path`, on any error remove it (a full disk
    raises `DiskFullError`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, default_mode())
        os.replace(tmp_path, path)
    except BaseException as e:
        full = disk_full_error(e, path)
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if full is not None:
            raise full from e
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """Linux `renameat2(src, dst, flags)`: True when done, False when this system or filesystem lacks it; any
    other failure raises the OSError (FileExistsError with RENAME_NOREPLACE when `dst` exists)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def rename_noreplace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Rename `src` to `dst` in one step, FileExistsError if `dst` exists (then nothing changed). Atomic on Linux
    (`renameat2(RENAME_NOREPLACE)`); elsewhere an existence check first, so a `dst` created in between may lose
    the race only if it is an empty directory."""
    src, dst = Path(src), Path(dst)
    try:
        if _renameat2(src, dst, _RENAME_NOREPLACE):
            return
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, "File exists", str(dst))
    try:
        os.rename(src, dst)  # fails on a non-empty directory or a file appeared meanwhile
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise FileExistsError(errno.EEXIST, "File exists", str(dst)) from None
        raise


def _exists_error(directory: Path, meanwhile: bool = False) -> FileExistsError:
    when = "appeared while it was being written" if meanwhile else "already exists"
    return FileExistsError(
        f"The output {when}. Received: output={str(directory)!r}. Pass --force (force=True) to replace it, or "
        f"choose another directory.{' Nothing was replaced; the new output was discarded.' if meanwhile else ''}"
    )


@contextlib.contextmanager
def atomic_directory(directory: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside `directory`; on success it becomes `directory`, on any error (or
    SIGINT, or SIGTERM inside `sigterm_raises`) it is removed.

    An existing `directory` is an error unless `force`, checked again at the end: one that appeared meanwhile (a
    second writer) is never replaced, the rename refuses it (`rename_noreplace`) and FileExistsError is raised.
    With `force` the old one is swapped out only once the new one is complete, in one step where Linux allows
    (`RENAME_EXCHANGE`), so a reader sees the old or the new directory, never none. A full disk raises
    `DiskFullError` and leaves an old `directory` intact.
    """
    directory = Path(directory)
    if os.path.lexists(directory) and not force:
        raise _exists_error(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    # a private hidden folder beside `directory` holding the new one under its final name (writers that read
    # `directory.name` see the real name)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    tmp = staging / directory.name
    try:
        tmp.mkdir(mode=default_mode(directory=True))
        yield tmp
        if not force:
            try:
                rename_noreplace(tmp, directory)
            except FileExistsError:
                raise _exists_error(directory, meanwhile=True) from None
        elif os.path.lexists(directory) and _exchange(tmp, directory):
            pass  # tmp is now the old output, removed with the staging folder
        elif os.path.lexists(directory):
            os.replace(directory, staging / ".old")
            os.replace(tmp, directory)
        else:
            os.replace(tmp, directory)
        shutil.rmtree(staging, ignore_errors=True)
    except BaseException as e:
        full = disk_full_error(e, directory)
        shutil.rmtree(staging, ignore_errors=True)
        if full is not None:
            raise full from e
        raise


def _exchange(a: Path, b: Path) -> bool:
    try:
        return _renameat2(a, b, _RENAME_EXCHANGE)
    except FileNotFoundError:
        return False  # b vanished meanwhile: the caller falls back


@contextlib.contextmanager
def directory_lock(directory: str | os.PathLike, *, shared: bool = False) -> Iterator[None]:
    """An advisory lock on `directory` itself (`flock` on the directory, no lock file): exclusive for a writer
    publishing a file set (`atomic_files`), shared for a reader that must see one consistent set (config.json and
    the weights of the same save). A no-op where the system has no `flock` or the filesystem refuses it."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        except OSError:
            pass  # a filesystem without locks: publish unlocked
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_stale(directory: Path, patterns: tuple[str, ...], keep: list[str]) -> None:
    for pattern in patterns:
        for path in directory.glob(pattern):
            if path.name not in keep and path.is_file():
                path.unlink()


@contextlib.contextmanager
def atomic_files(
    directory: str | os.PathLike, *, last: tuple[str, ...] = ("config.json",), stale: tuple[str, ...] = ()
) -> Iterator[Path]:
    """Stage files for `directory` in a hidden temporary directory; publish them together at the end, or none.

    On any error (a full disk: `DiskFullError`) the staging directory is removed and `directory` is as it was.
    The staging directory is hidden inside `directory` when that exists, else beside it.
    Publishing: a `directory` that does not exist is the staging directory renamed (one step); otherwise each file
    is renamed into it under an exclusive `directory_lock`, the names in `last` last (config.json: once it is
    published, that save's weights are there; a reader that takes the shared `directory_lock` while it reads
    never pairs one save's config with another's weights), and other files already in `directory` (a tokenizer,
    checkpoints) are kept. Two writers publish one after the other: the
    result is one writer's whole set, never a mix. Files of `directory` matching a glob of `stale` that the new set
    lacks (the shards of an earlier sharded save) are removed before the `last` files are published.
    """
    directory = Path(directory)
    if os.path.lexists(directory) and not directory.is_dir():
        raise NotADirectoryError(
            f"The output must be a directory. Received: save_directory={str(directory)!r}, a file. Remove it or "
            "choose another directory."
        )
    existed = directory.is_dir()
    if not existed:
        directory.parent.mkdir(parents=True, exist_ok=True)
    # Staged inside an existing directory (the same filesystem, and its parent need not be writable), else beside it.
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory if existed else directory.parent))
    try:
        yield tmp
        for f in tmp.iterdir():
            os.chmod(f, default_mode(directory=f.is_dir()))
        os.chmod(tmp, default_mode(directory=True))
        if not existed:
            try:
                rename_noreplace(tmp, directory)
                return
            except FileExistsError:
                pass  # it appeared meanwhile: publish file by file into it
        names = sorted(f.name for f in tmp.iterdir())
        names = [n for n in names if n not in last] + [n for n in last if n in names]
        first_last = next((n for n in names if n in last), None)
        with directory_lock(directory):
            for name in names:
                if name == first_last:
                    _remove_stale(directory, stale, keep=names)
                if (directory / name).is_dir() and not (directory / name).is_symlink():
                    shutil.rmtree(directory / name)
                os.replace(tmp / name, directory / name)
            if first_last is None:
                _remove_stale(directory, stale, keep=names)
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException as e:
        full = disk_full_error(e, directory)
        shutil.rmtree(tmp, ignore_errors=True)
        if full is not None:
            raise full from e
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


class HubUnreachableError(FileNotFoundError):
    """A Hub id whose files are not in the cache while the Hub cannot be reached (no network, a firewall): said at
    once, instead of huggingface_hub's retries (about 25 s per file). A FileNotFoundError: the name may also be a
    local path with a typo."""


# Seconds to open a TCP connection to the Hub (or the HTTPS proxy) before a download is tried: without it an
# unreachable Hub costs huggingface_hub's retries, 5 per file with backoff. Overridden by GPT2_HUB_CONNECT_TIMEOUT.
HUB_CONNECT_TIMEOUT = 3.0
_REACHABILITY: dict[tuple[str, int], tuple[float, str | None]] = {}
_REACHABILITY_TTL = 30.0  # seconds a probe's answer is reused


def _hub_address() -> tuple[str, int, str]:
    """(host, port, what) the Hub's HTTPS requests connect to first: the proxy of HTTPS_PROXY when one applies,
    else the endpoint (HF_ENDPOINT, default https://huggingface.co)."""
    import urllib.parse
    import urllib.request

    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:  # pragma: no cover - huggingface_hub is a core dependency
        endpoint = "https://huggingface.co"
    endpoint = os.environ.get("HF_ENDPOINT", endpoint).rstrip("/")
    url = urllib.parse.urlsplit(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if p.hostname:
            return p.hostname, p.port or 80, f"the proxy {p.hostname}:{p.port or 80}"
    return host, port, endpoint


def hub_unreachable_reason(timeout: float | None = None) -> str | None:
    """None when a TCP connection to the Hub (or its HTTPS proxy) opens within `timeout` seconds, else why not
    (name resolution and connection both bounded: the probe runs in a daemon thread). Answers are reused for 30 s."""
    import socket
    import time

    if timeout is None:
        try:
            timeout = float(os.environ.get("GPT2_HUB_CONNECT_TIMEOUT", HUB_CONNECT_TIMEOUT))
        except ValueError:
            timeout = HUB_CONNECT_TIMEOUT
    host, port, what = _hub_address()
    cached = _REACHABILITY.get((host, port))
    if cached is not None and time.monotonic() - cached[0] < _REACHABILITY_TTL:
        return cached[1]
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot connect to {what}: {e.strerror or e}")

    thread = threading.Thread(target=probe, name="gpt2-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    reason = result[0] if result else f"no connection to {what} within {timeout:g} s"
    _REACHABILITY[(host, port)] = (time.monotonic(), reason)
    return reason


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
        HubUnreachableError: (a FileNotFoundError) a Hub file not in the cache while the Hub cannot be reached
            (`hub_unreachable_reason`, probed before downloading so huggingface_hub's retries are not waited out).
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
    unreachable = None if offline else hub_unreachable_reason()
    if unreachable is not None and force_download:
        raise HubUnreachableError(
            f"force_download=True needs the Hugging Face Hub, which is unreachable ({unreachable}). Received: "
            f"name_or_path={name!r}, filename={filename!r}. Retry with network access, or drop force_download to "
            "use the cached files."
        )
    try:
        return Path(
            hf_hub_download(
                repo_id=name,
                filename=filename,
                subfolder=subfolder or None,
                revision=revision,
                cache_dir=cache_dir,
                token=token,
                local_files_only=offline or unreachable is not None,  # unreachable: the cache, without retries
                force_download=force_download,
            )
        )
    except LocalEntryNotFoundError as e:  # before EntryNotFoundError, its base class
        if not required:
            return None
        cache = _cache_dir(cache_dir)
        if unreachable is not None:
            raise HubUnreachableError(
                f"{name!r} is not a local directory, and the Hugging Face Hub is unreachable ({unreachable}); "
                f"{filename} of it is not in the cache {cache!r}. Received: name_or_path={name!r}. Check the path "
                "if you meant a local directory; for the Hub, retry with network access (HF_HUB_OFFLINE=1 uses "
                "only the cache without trying the network)."
            ) from e
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


def is_index_name(name: str) -> bool:
    """Whether a file name is a transformers shard index: `*.index.json`, or with a variant
    `model.safetensors.index.fp16.json` (transformers' `_add_variant`)."""
    if name.endswith(INDEX_SUFFIX):
        return True
    stem, _, ext = name.rpartition(".")
    return ext == "json" and ".index." in stem + "."


def weight_file_name(name: str, variant: str | None = None) -> str:
    """`name` (one of `WEIGHT_FILES`) with a variant inserted as transformers names it: `model.safetensors` ->
    `model.fp16.safetensors`, `model.safetensors.index.json` -> `model.safetensors.index.fp16.json`."""
    if not variant:
        return name
    bad = not isinstance(variant, str) or not variant.strip() or variant.startswith(".")
    if bad or any(c in variant for c in "/\\"):
        raise ValueError(
            f"variant must be a plain name such as 'fp16'. Received: variant={variant!r}. Pass the part between the "
            "dots of the file name (model.<variant>.safetensors)."
        )
    parts = name.split(".")
    return ".".join(parts[:-1] + [variant] + parts[-1:])


def weight_file_format(name: str, variant: str | None = None) -> str | None:
    """The `weights_convert` format of a weight file name (`WEIGHT_FILES`, with `variant` inserted), or None."""
    for filename, fmt in WEIGHT_FILES.items():
        if name in (filename, weight_file_name(filename, variant)):
            return fmt
    return None


def _check_shard_name(shard: Any, key: Any, path: str | os.PathLike) -> str:
    """A shard named in an index must be a plain file name beside the index: no directories, no `..`, not absolute
    (a hostile index naming `../../x.safetensors` must not make us read, or download, files elsewhere)."""
    if (
        not isinstance(shard, str)
        or not shard
        or shard in (".", "..")
        or "/" in shard
        or "\\" in shard
        or "\0" in shard
        or os.path.isabs(shard)
        or Path(shard).name != shard
        or (os.name == "nt" and ":" in shard)
    ):
        raise ValueError(
            f"The shard index names a file outside the checkpoint directory. Received: path={str(path)!r}, "
            f"weight_map[{key!r}]={shard!r}. A shard must be a plain file name beside the index (as transformers "
            "writes it, e.g. 'model-00001-of-00002.safetensors'); save the checkpoint again."
        )
    return shard


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of a transformers shard index json.

    Raises:
        ValueError: A corrupt index, or a shard that is not a plain file name beside the index (a path with
            directories, `..` or an absolute path is refused: shards are confined to the checkpoint directory).
    """
    try:
        index = json.loads(Path(path).read_text(encoding="utf-8"))
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"Corrupt shard index. Received: path={str(path)!r} ({e}). Save the checkpoint again.") from e
    for key, shard in weight_map.items():
        _check_shard_name(shard, key, path)
    return weight_map


def _other_weight_files(directory: Path, used: str, variant: str | None) -> list[str]:
    """The other weight files of the same variant beside `used` (other variants are expected beside it)."""
    names = {weight_file_name(f, variant) for f in WEIGHT_FILES}
    return sorted(n for n in names if n != used and (directory / n).is_file())


def resolve_weights(
    name_or_path: str | os.PathLike,
    *,
    use_safetensors: bool | None = None,
    variant: str | None = None,
    **hub_kwargs: Any,
) -> Path:
    """The weights of a checkpoint: the first of `WEIGHT_FILES` it has, as a local path.

    For a shard index (`*.index.json`) every shard it lists is resolved (downloaded) too, so the shards lie beside
    the returned index; shard names are confined to the checkpoint directory (`read_index`). The format that reads
    the file is `weight_file_format(path.name, variant)`. A local directory holding several weight files (say
    `model.safetensors` and a stale `pytorch_model.bin`) loads the first, as transformers does, with a warning
    naming both.

    Args:
        name_or_path: A local directory, a weights file, or a Hub id.
        use_safetensors: transformers' switch: True loads only safetensors weights (an error when there are none),
            False never safetensors, None (default) the first found.
        variant: Load `model.<variant>.safetensors` (and likewise for every name of `WEIGHT_FILES`) instead, as
            transformers' `variant=` does; an error when the checkpoint has no such file.
        **hub_kwargs: `HUB_KWARGS`.
    """
    check_hub_kwargs(hub_kwargs, "resolve_weights")
    if use_safetensors not in (None, True, False):
        raise ValueError(f"use_safetensors must be True, False or None. Received: use_safetensors={use_safetensors!r}.")
    if Path(name_or_path).expanduser().is_file():
        return Path(name_or_path).expanduser()
    candidates = [
        f for f, fmt in WEIGHT_FILES.items()
        if use_safetensors is None or (fmt == "safetensors") == bool(use_safetensors)
    ]
    for filename in candidates:
        filename = weight_file_name(filename, variant)
        found = resolve_file(name_or_path, filename, required=False, **hub_kwargs)
        if found is None:
            continue
        if is_index_name(filename):
            for shard in sorted(set(read_index(found).values())):
                resolve_file(name_or_path, shard, required=True, **hub_kwargs)  # the Hub puts it beside the index
        others = _other_weight_files(found.parent, filename, variant)
        if others:
            logger.warning(
                "%s holds several weight files: %s and %s. Loading %s (the first of gpt2_core.hub.WEIGHT_FILES, as "
                "transformers does); remove the others if they are stale.",
                found.parent, filename, ", ".join(others), filename,
            )
        return found
    if variant or use_safetensors is not None:
        wanted = [weight_file_name(f, variant) for f in candidates]
        raise FileNotFoundError(
            f"No weights of the requested kind. Received: name_or_path={str(name_or_path)!r}, variant={variant!r}, "
            f"use_safetensors={use_safetensors!r}. Expected one of {wanted}. Leave out variant= / use_safetensors= "
            "to load the checkpoint's default weights."
        )
    raise FileNotFoundError(
        f"No weights found. Received: name_or_path={str(name_or_path)!r}. Expected one of {tuple(WEIGHT_FILES)}. "
        "For an OpenAI checkpoint, convert first: gpt2-convert SRC -o DST."
    )
