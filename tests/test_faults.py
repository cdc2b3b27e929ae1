"""Fault tests: `gpt2-convert` and `gpt2 train` killed by SIGINT / SIGTERM at random points, full disks on a real
tmpfs, and Ctrl-C during the commands' imports.

* Signals: each command runs as a real subprocess; a seeded random point is drawn in the span an uninterrupted
  run of the same command takes (measured first), counted from the moment the command's entry point is imported
  (`-X importtime` reports it), and the signal is sent then. Afterwards the destination must be absent, the old
  one byte for byte, or complete and loadable (every tensor equal to what an uninterrupted run writes); no hidden
  temporary is left; the exit status is 0 (finished first) or 130 / 143 with one line on stderr, no traceback.
* Disk full: a small tmpfs (CI runs as root, where mounting must work; elsewhere skipped with the reason) under
  gpt2-convert, save_pretrained and gpt2 train's checkpoints: one clear line (`No space left on device writing
  PATH`) and the old output intact.
* Ctrl-C right after start: `gpt2 generate`, `gpt2-convert`, `gpt2 train` print one line and exit 130.
"""

from __future__ import annotations

import concurrent.futures
import gc
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2_apps.errors import EXIT_FAILURE
from gpt2_core import hub, reference
from gpt2_core.config import GPT2Config
from weights_convert import cli as convert_cli
from weights_convert import load_checkpoint, pretrained, save_checkpoint

REPO = Path(__file__).resolve().parents[1]
KILLS = 6  # per command and signal
SIGNALS = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}
ENTRY = "import sys; from gpt2_apps.cli import {fn}; sys.exit({fn}())"
# ~1.3 MB of float32: big enough that the write is a span a signal can land in
CONVERT_CONFIG = dict(vocab_size=2000, n_positions=32, n_embd=96, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)

# The train loop (gpt2_core.training through the real `gpt2 train` CLI) with a NumPy backend whose saves are real
# save_pretrained checkpoints: the writers under test are the loop's and weights_convert's, not a framework's.
TRAIN_SCRIPT = """
import sys
import numpy as np
from gpt2_apps import train_cli
from gpt2_core import reference
from gpt2_core.config import GPT2Config
from gpt2_core.training import run_training
from weights_convert import pretrained

SAVE = GPT2Config(vocab_size=1000, n_positions=16, n_embd=64, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)

class Backend:
    name, rank, world_size, world_unit = "numpy", 0, 1, "devices"
    def build(self, tc, *, config, weights, optimizer_state):
        self.params, self.steps = reference.random_params(SAVE, "lm", seed=0), 0
    def num_parameters(self): return sum(v.size for v in self.params.values())
    def step(self, batch, lr):
        self.steps += 1
        self.params["wte.weight"][0, 0] = self.steps  # each save says which step it holds
        return 3.0, 1.0
    def eval_batch_size(self, tc): return tc.batch_size
    def evaluate(self, batches): return 3.0
    def save(self, directory, *, optimizer):
        if directory is not None:
            pretrained.save_pretrained(directory, SAVE, self.params, "lm")
            if optimizer:
                np.save(directory / "optimizer.npy", self.params["wte.weight"])
    def sync(self): pass
    def close(self): pass

class Adapter:
    def require(self): return self
    def train(self, tc, progress=True): return run_training(tc, Backend(), progress=progress)

train_cli.get_backend = lambda name: Adapter()
sys.argv[0] = "gpt2"
from gpt2_apps.cli import main
sys.exit(main(["train", *sys.argv[1:]]))
"""
TRAIN_STEPS, SAVE_EVERY = 10, 2


def env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3", HF_HUB_OFFLINE="1")


def leftovers(directory: Path) -> list[str]:
    return sorted(str(p) for p in Path(directory).rglob(".*") if p.name.endswith((".tmp", ".old")))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def stderr_lines(text: str) -> list[str]:
    """stderr without `-X importtime`'s lines."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("import time:")]


def run_killed(cmd: list[str], sig: int | None, delay: float, marker: str = "| gpt2_apps.cli") -> tuple[int, str, float]:
    """Run `cmd` (a python -X importtime command); `delay` seconds after its stderr shows a line containing
    `marker` (an import finished), send `sig`. Returns (exit status, stderr, seconds from the marker to the end)."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env(), cwd=REPO,
                            start_new_session=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                break
        t0 = time.monotonic()
        if sig is not None:
            time.sleep(delay)
            if proc.poll() is None:
                proc.send_signal(sig)
        rest = proc.stderr.read()
        code = proc.wait(timeout=120)
        return code, "".join(lines) + rest, time.monotonic() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def check_exit(code: int, err: str, sig: int) -> None:
    """0 (done first), or the signal's status with one line. A signal outside the commands' work keeps its
    default action, a silent death by the signal (-15 / -2 here, 143 / 130 in a shell): SIGTERM before
    `run_command` installs `sigterm_raises`, either once the command has returned (Python's finalization restores
    the default handlers; everything is written by then). The destination is checked either way."""
    want, word = SIGNALS[sig]
    lines = stderr_lines(err)
    assert not any("Traceback" in line for line in lines), err[-3000:]
    if code == 0 or (code == -sig and not lines):
        return
    assert code == want, (code, lines[-5:])
    assert len([line for line in lines if word in line]) == 1 and word in lines[-1], lines[-5:]


def draws(name: str, sig: int, span: float) -> list[float]:
    r = random.Random(f"{name}-{int(sig)}")  # seeded: the same points in every run
    return [r.uniform(0.0, span) for _ in range(KILLS)]


def parallel(fn, items):
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(fn, items))


# ------------------------------------------------------------------------------------------------ gpt2-convert


@pytest.fixture(scope="module")
def convert_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("convert-src")
    config = GPT2Config(**CONVERT_CONFIG)
    params = reference.random_params(config, "lm", seed=3)
    src = save_checkpoint(root / "src", config, params, "lm")
    return src, params


def convert_cmd(src: Path, dst: Path, to: str, force: bool) -> list[str]:
    args = [str(src), "-o", str(dst), "--to", to, "--no-progress", "-q"] + (["--force"] if force else [])
    return [sys.executable, "-X", "importtime", "-c", ENTRY.format(fn="convert_main"), *args]


@pytest.fixture(scope="module")
def convert_span(convert_source, tmp_path_factory):
    """Seconds an uninterrupted convert takes after its entry point is imported (the span signals are drawn in)."""
    src, _ = convert_source
    root = tmp_path_factory.mktemp("convert-baseline")
    code, err, seconds = run_killed(convert_cmd(src, root / "dst", "pytorch", False), None, 0.0)
    assert code == 0, err[-2000:]
    return seconds


@pytest.mark.parametrize("sig", list(SIGNALS), ids=lambda s: signal.Signals(s).name)
def test_convert_killed_at_random_points(convert_source, convert_span, tmp_path, sig):
    src, params = convert_source
    formats = ["pytorch", "safetensors", "flax", "tf"]

    def one(i_delay):
        i, delay = i_delay
        root = tmp_path / f"run{i}"
        root.mkdir()
        dst, to, old = root / "dst", formats[i % len(formats)], i % 2 == 1
        if old:  # an earlier output, replaced only with --force and only once the new one is complete
            dst.mkdir()
            (dst / "old.txt").write_text("the old output")
        code, err, _ = run_killed(convert_cmd(src, dst, to, force=old), sig, delay)
        return i, to, old, code, err

    runs = parallel(one, enumerate(draws("convert", sig, convert_span * 1.1)))
    assert any(code == SIGNALS[sig][0] for *_, code, _ in runs), "no run was interrupted: the test saw nothing"
    for i, to, old, code, err in runs:
        root, dst = tmp_path / f"run{i}", tmp_path / f"run{i}" / "dst"
        check_exit(code, err, sig)
        assert leftovers(root) == [], (i, to, leftovers(root))
        if not dst.exists():
            assert not old, f"run {i} ({to}): the old output was removed"
            continue
        if (dst / "old.txt").exists():
            assert old and snapshot(dst) == {"old.txt": b"the old output"}, f"run {i} ({to}): old output changed"
            continue
        got = load_checkpoint(dst)[1]  # complete: every tensor as written by an uninterrupted convert
        assert set(got) == set(params), (i, to)
        assert all(np.array_equal(got[k], params[k]) for k in params), (i, to)


# ------------------------------------------------------------------------------------------------ gpt2 train


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(" ".join(["to be or not to be that is the question"] * 60), encoding="utf-8")
    return path


def train_cmd(corpus: Path, out: Path) -> list[str]:
    args = ["--data", str(corpus), "-o", str(out), "--block-size", "16", "--batch-size", "2", "--max-steps",
            str(TRAIN_STEPS), "--save-every", str(SAVE_EVERY), "--no-progress", "--set", "n_layer=1",
            "--set", "n_embd=32", "--set", "n_head=2", "--set", "n_positions=32"]
    return [sys.executable, "-X", "importtime", "-c", TRAIN_SCRIPT, *args]


@pytest.fixture(scope="module")
def train_span(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("train-baseline") / "out"
    code, err, seconds = run_killed(train_cmd(corpus, out), None, 0.0)
    assert code == 0, err[-2000:]
    return seconds


def check_train_output(out: Path) -> None:
    """Absent, or: no temporaries; every checkpoint whole (its weights hold its step, its state parses); the final
    model, when there, whole (config and weights of the last step); every metrics line complete JSON."""
    if not out.exists():
        return
    assert leftovers(out.parent) == [], leftovers(out.parent)
    for ckpt in sorted(out.glob("checkpoint-*")):
        step = int(ckpt.name.split("-")[1])
        loaded = pretrained.load_pretrained(ckpt, "lm")
        assert loaded.canonical["wte.weight"][0, 0] == step, ckpt
        state = json.loads((ckpt / "trainer_state.json").read_text())
        assert state and np.load(ckpt / "optimizer.npy")[0, 0] == step
    if (out / "config.json").exists() or (out / "model.safetensors").exists():
        final = pretrained.load_pretrained(out, "lm")
        assert final.canonical["wte.weight"][0, 0] == TRAIN_STEPS
    if (out / "metrics.jsonl").exists():
        for line in (out / "metrics.jsonl").read_text().splitlines():
            json.loads(line)


@pytest.mark.parametrize("sig", list(SIGNALS), ids=lambda s: signal.Signals(s).name)
def test_train_killed_at_random_points(corpus, train_span, tmp_path, sig):
    def one(i_delay):
        i, delay = i_delay
        out = tmp_path / f"run{i}" / "out"
        out.parent.mkdir()
        code, err, _ = run_killed(train_cmd(corpus, out), sig, delay)
        return i, code, err

    runs = parallel(one, enumerate(draws("train", sig, train_span * 1.1)))
    assert any(code == SIGNALS[sig][0] for _, code, _ in runs), "no run was interrupted: the test saw nothing"
    for i, code, err in runs:
        check_exit(code, err, sig)
        check_train_output(tmp_path / f"run{i}" / "out")


# ------------------------------------------------------------------------------------------------ disk full


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs of `size` bytes: `tmpfs(size) -> Path`. As root (CI) the mount must work; elsewhere skipped
    with the reason."""
    mounted = []

    def mount(size: int) -> Path:
        if os.geteuid() != 0:
            if os.environ.get("CI"):
                pytest.fail("CI runs these as root, which can mount a tmpfs; here euid != 0")
            pytest.skip(f"mounting a tmpfs needs root (euid={os.geteuid()}); CI runs these as root")
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, f"root cannot mount a tmpfs here: {r.stderr.strip()}"
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in mounted:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode:
            # busy: a failed writer may still hold a file open there (a full collection costs ~1 s in a process
            # holding every framework, so only then)
            gc.collect()
            if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode:
                subprocess.run(["umount", "-l", str(mnt)], check=True, timeout=30)


def _small_and_big(tmp_path):
    small = GPT2Config(**{**CONVERT_CONFIG, "vocab_size": 64, "n_embd": 16, "n_layer": 1})
    big = GPT2Config(**CONVERT_CONFIG)  # ~1.3 MB: does not fit 512 KiB
    return (small, reference.random_params(small, "lm", seed=1)), (big, reference.random_params(big, "lm", seed=2))


# "mid-write": the free-space check off, so the writer itself hits ENOSPC (not for h5py / TensorFlow's writers,
# which can crash the process on ENOSPC: the check refuses those before writing)
@pytest.mark.parametrize("to,free_space_check", [
    ("safetensors", True), ("pytorch", True), ("flax", True), ("tf", True), ("openai", True),
    ("safetensors", False), ("pytorch", False), ("flax", False),
])
def test_convert_on_a_full_tmpfs_keeps_the_old_output(tmp_path, tmpfs, capsys, monkeypatch, to, free_space_check):
    mnt = tmpfs(512 * 1024)
    (small, small_params), (big, big_params) = _small_and_big(tmp_path)
    src = save_checkpoint(tmp_path / "big", big, big_params, "lm")
    old = save_checkpoint(mnt / "out", small, small_params, "lm")
    before = snapshot(old)
    if not free_space_check:
        monkeypatch.setattr(hub, "check_free_space", lambda path, needed: None)
    code = convert_cli.main([str(src), "-o", str(old), "--to", to, "--force", "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE, err
    assert err.count("\n") == 1 and f"No space left on device writing {old}" in err and "Traceback" not in err, err
    assert snapshot(old) == before and leftovers(mnt) == []
    got = load_checkpoint(old)[1]
    assert all(np.array_equal(got[k], small_params[k]) for k in small_params)


def test_save_pretrained_on_a_full_tmpfs_keeps_the_old_save(tmp_path, tmpfs):
    mnt = tmpfs(512 * 1024)
    (small, small_params), (big, big_params) = _small_and_big(tmp_path)
    pretrained.save_pretrained(mnt / "model", small, small_params, "lm")
    before = snapshot(mnt / "model")
    with pytest.raises(hub.DiskFullError) as e:
        pretrained.save_pretrained(mnt / "model", big, big_params, "lm")
    assert str(e.value).startswith(f"No space left on device writing {mnt / 'model'}") and "\n" not in str(e.value)
    assert snapshot(mnt / "model") == before and leftovers(mnt) == []
    got = pretrained.load_pretrained(mnt / "model", "lm").canonical
    assert all(np.array_equal(got[k], small_params[k]) for k in small_params)


def test_train_checkpoint_on_a_full_tmpfs_keeps_the_earlier_checkpoint(corpus, tmp_path, tmpfs):
    """The train CLI with growing checkpoints: the first fits, the second does not (one line, exit 1), and the
    first is still whole."""
    # a checkpoint is ~5.8 MB of tokenizer and model files plus grow.npy, 4 MB per step: checkpoint-2 takes ~14 MB
    mnt = tmpfs(20 * 1024 * 1024)
    script = TRAIN_SCRIPT.replace(
        "pretrained.save_pretrained(directory, SAVE, self.params, \"lm\")",
        "pretrained.save_pretrained(directory, SAVE, self.params, \"lm\"); "
        "np.save(directory / 'grow.npy', np.zeros(self.steps * 1_000_000, np.float32))",
    )
    out = mnt / "out"
    cmd = [sys.executable, "-c", script, *train_cmd(corpus, out)[5:]]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=REPO, timeout=300)
    lines = stderr_lines(r.stderr)
    assert r.returncode == EXIT_FAILURE, r.stderr[-2000:]
    assert "Traceback" not in r.stderr and "No space left on device writing" in lines[-1], lines[-5:]
    assert leftovers(mnt) == []
    kept = sorted(out.glob("checkpoint-*"))
    assert kept, "no checkpoint fitted: make the tmpfs larger"
    for ckpt in kept:
        step = int(ckpt.name.split("-")[1])
        assert pretrained.load_pretrained(ckpt, "lm").canonical["wte.weight"][0, 0] == step
        assert np.load(ckpt / "grow.npy").size == step * 1_000_000


# ------------------------------------------------------------------------------------------------ Ctrl-C at start


@pytest.mark.parametrize("command", ["generate", "convert", "train", "gpt2-verify"])
def test_ctrl_c_right_after_start_is_one_line_and_130(tmp_path, command):
    """SIGINT while the command is still importing (numpy, the framework): `main` catches it from its first line.
    Sent as numpy's import starts (the first import inside `main`) and at a seeded random point in the 0.6 s
    after."""
    args = {
        "generate": ["generate", "--model", str(tmp_path / "missing"), "x"],
        "convert": ["convert", str(tmp_path / "missing"), "-o", str(tmp_path / "out")],
        "train": ["train", "--data", str(tmp_path / "missing"), "-o", str(tmp_path / "out")],
        "gpt2-verify": [str(tmp_path / "missing")],
    }[command]
    fn = "verify_main" if command == "gpt2-verify" else "main"
    r = random.Random(command)
    for delay in (0.0, r.uniform(0.0, 0.6)):
        cmd = [sys.executable, "-X", "importtime", "-c", ENTRY.format(fn=fn), *args]
        code, err, _ = run_killed(cmd, signal.SIGINT, delay, marker="numpy")
        lines = stderr_lines(err)
        if lines and "error:" in lines[-1]:
            # the command had finished (the missing path) when the signal came: 2, or -2 when it came during
            # Python's finalization (default handlers restored)
            assert code in (2, -2) and len(lines) == 1, (delay, code, lines[-5:])
            continue
        assert code == 130 and len(lines) == 1 and "interrupted" in lines[0], (delay, code, lines[-5:])


def test_cli_backends_list_matches_the_registry():
    from gpt2_apps import backends, cli

    assert cli.BACKENDS == backends.BACKENDS


# ------------------------------------------------------------------------------------------------ the Hub unreachable

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connection refused at once, whatever the network


def test_generate_with_a_missing_path_shaped_like_a_hub_id_fails_fast(tmp_path):
    """`gpt2 generate --model typo/dir`: not a local path, not in the cache, the Hub unreachable: one line naming
    that, exit 2, within seconds (huggingface_hub's retries took 73 s); HF_HUB_OFFLINE=1 says it is offline."""
    base = {k: v for k, v in env().items() if k != "HF_HUB_OFFLINE"}
    base.update(HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT=UNREACHABLE)
    cmd = [sys.executable, "-c", ENTRY.format(fn="main"), "generate", "--model", "typo/dir", "x"]
    for extra, words in (({}, ("unreachable", "typo/dir", "Received: name_or_path='typo/dir'")),
                         ({"HF_HUB_OFFLINE": "1"}, ("not in the cache", "HF_HUB_OFFLINE=1", "typo/dir"))):
        start = time.monotonic()
        r = subprocess.run(cmd, capture_output=True, text=True, env={**base, **extra}, cwd=tmp_path, timeout=120)
        seconds = time.monotonic() - start
        lines = stderr_lines(r.stderr)
        assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr, (extra, lines)
        assert all(w in lines[0] for w in words), lines[0]
        assert seconds < 30, f"took {seconds:.0f} s: network retries?"


def test_resolve_file_when_the_hub_is_unreachable(tmp_path, monkeypatch):
    """The probe: a file in the cache still resolves; one that is not is HubUnreachableError at once."""
    from fixtures.hub_cache import make_hub_cache

    monkeypatch.setenv("HF_ENDPOINT", UNREACHABLE)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "_REACHABILITY", {})
    snapshot = make_hub_cache(tmp_path / "cache", "org/name", {"config.json": b"{}"})
    assert hub.resolve_file("org/name", "config.json", cache_dir=tmp_path / "cache") == snapshot / "config.json"
    start = time.monotonic()
    with pytest.raises(hub.HubUnreachableError, match=r"unreachable .*127\.0\.0\.1.*Received: name_or_path='org/x'"):
        hub.resolve_file("org/x", "config.json", cache_dir=tmp_path / "cache")
    assert hub.resolve_file("org/name", "vocab.json", cache_dir=tmp_path / "cache", required=False) is None
    with pytest.raises(hub.HubUnreachableError, match="force_download"):
        hub.resolve_file("org/name", "config.json", cache_dir=tmp_path / "cache", force_download=True)
    assert time.monotonic() - start < 20
    assert issubclass(hub.HubUnreachableError, FileNotFoundError)  # exit 2 in the CLIs, like a missing path


def test_the_probe_is_bounded_by_its_timeout(monkeypatch):
    """A connection that never answers (name resolution or connect hanging) costs the timeout, not more."""
    import socket

    class Socket:
        def close(self):
            pass

    def hang(*args, **kwargs):
        time.sleep(30)
        return Socket()

    monkeypatch.setattr(socket, "create_connection", hang)
    monkeypatch.setattr(hub, "_REACHABILITY", {})
    start = time.monotonic()
    reason = hub.hub_unreachable_reason(timeout=0.5)
    assert time.monotonic() - start < 5 and "within 0.5 s" in reason
