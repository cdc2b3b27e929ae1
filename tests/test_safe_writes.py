"""Nothing lost, nothing half-written: the writers (gpt2-convert, save_pretrained, gpt2 train) under races,
signals, full disks and reused output directories, and `gpt2 train`'s flags checked before anything runs.

The oracle is what was there before: an output that appeared while a writer ran, an earlier save, an earlier run's
final model, byte for byte. Disk full is simulated by making the writer fail the way each library does
(OSError ENOSPC, torch.save's "unexpected pos", TensorFlow's "No space left on device", an opaque error on a
filesystem with no space left); signals are real, sent to a subprocess while it is inside the write.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gpt2_apps import train_cli
from gpt2_apps.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE
from gpt2_core import hub, reference
from gpt2_core import training as core_training
from gpt2_core.config import GPT2Config
from gpt2_core.training import TrainConfig, run_training
from weights_convert import cli, convert, load_checkpoint, save_checkpoint
from weights_convert import formats as F
from weights_convert import pretrained

REPO = Path(__file__).resolve().parents[1]
TINY = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=63, eos_token_id=63)
TRAIN_TINY = dict(n_layer=1, n_embd=32, n_head=2, n_positions=64)


def leftovers(directory: Path) -> list[str]:
    """Hidden temporaries a writer would leave behind (staging directories, temporary files)."""
    return sorted(p.name for p in Path(directory).rglob(".*") if p.name.endswith((".tmp", ".old")))


def snapshot(directory: Path) -> dict[str, bytes]:
    """The published files (a writer's hidden staging directory aside) and their bytes."""
    files = (p for p in sorted(Path(directory).rglob("*")) if p.is_file())
    return {str(p.relative_to(directory)): p.read_bytes() for p in files
            if not any(part.startswith(".") for part in p.relative_to(directory).parts)}


@pytest.fixture
def src(tmp_path):
    config = GPT2Config(**TINY)
    return save_checkpoint(tmp_path / "src", config, reference.random_params(config, "lm", seed=1), "lm")


def subprocess_env() -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", TF_CPP_MIN_LOG_LEVEL="3")


# ---------------------------------------------------------------------------------------------------------------
# gpt2-convert: no clobbering, one winner
# ---------------------------------------------------------------------------------------------------------------


def test_convert_never_replaces_an_output_that_appeared_meanwhile(src, tmp_path, monkeypatch, capsys):
    dst = tmp_path / "dst"
    real = F.write

    def another_writer_first(fmt, directory, *args, **kwargs):
        dst.mkdir()
        (dst / "theirs.txt").write_text("another run's output")
        return real(fmt, directory, *args, **kwargs)

    monkeypatch.setattr(F, "write", another_writer_first)
    code = cli.main([str(src), "-o", str(dst), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and "appeared while it was being written" in err and "Traceback" not in err
    assert snapshot(dst) == {"theirs.txt": b"another run's output"}
    assert leftovers(tmp_path) == []
    # even an empty directory that appeared is not replaced
    dst2 = tmp_path / "dst2"
    monkeypatch.setattr(F, "write", lambda fmt, d, *a, **k: (dst2.mkdir(), real(fmt, d, *a, **k))[1])
    with pytest.raises(FileExistsError, match="appeared"):
        convert(src, dst2, progress=False)
    assert dst2.is_dir() and list(dst2.iterdir()) == [] and leftovers(tmp_path) == []


def test_two_converts_to_one_output_one_wins(src, tmp_path, monkeypatch):
    """The second convert starts and publishes while the first is writing: the second wins whole, the first fails
    without touching it."""
    dst = tmp_path / "dst"
    config = GPT2Config(**TINY)
    want = reference.random_params(config, "lm", seed=2)
    other = save_checkpoint(tmp_path / "other", config, want, "lm")
    real = F.write
    nested = {}

    def race(fmt, directory, *args, **kwargs):
        if not nested:
            nested["done"] = True
            convert(other, dst, to="safetensors", progress=False)  # the second run, start to finish
        return real(fmt, directory, *args, **kwargs)

    monkeypatch.setattr(F, "write", race)
    with pytest.raises(FileExistsError, match="appeared"):
        convert(src, dst, to="flax", progress=False)
    got = load_checkpoint(dst)[1]
    assert (dst / "model.safetensors").is_file() and not (dst / "flax_model.msgpack").exists()
    assert all(np.array_equal(got[k], want[k]) for k in want) and set(got) == set(want)
    assert leftovers(tmp_path) == []


def test_two_convert_processes_exactly_one_succeeds(src, tmp_path):
    dst = tmp_path / "dst"
    cmd = [sys.executable, "-m", "weights_convert.cli", str(src), "-o", str(dst), "--no-progress", "-q"]
    procs = [subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=subprocess_env(), cwd=REPO) for _ in range(2)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, EXIT_USAGE], results
    loser = next(err for code, err in results if code)
    assert ("already exists" in loser or "appeared" in loser) and "Traceback" not in loser
    assert (dst / "model.safetensors").is_file() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# Signals: SIGTERM cleans up like Ctrl-C
# ---------------------------------------------------------------------------------------------------------------

CONVERT_SCRIPT = """
import sys, time
from pathlib import Path
from weights_convert import cli, formats
real = formats.write
def slow(fmt, directory, *args, **kwargs):
    out = real(fmt, directory, *args, **kwargs)
    Path(sys.argv[3]).write_text(str(directory))  # inside the staging directory, weights written
    time.sleep(60)
    return out
formats.write = slow
sys.exit(cli.main([sys.argv[1], "-o", sys.argv[2], "--no-progress"]))
"""

TRAIN_SCRIPT = """
import sys, time
from pathlib import Path
import numpy as np
from gpt2_apps import train_cli
from gpt2_core.training import run_training
marker = Path(sys.argv[1])

class Backend:
    name, rank, world_size, world_unit = "numpy", 0, 1, "devices"
    def build(self, tc, *, config, weights, optimizer_state):
        self.w = np.zeros(config.vocab_size if config is not None else 50257)
    def num_parameters(self): return self.w.size
    def step(self, batch, lr): return 3.0, 1.0
    def eval_batch_size(self, tc): return tc.batch_size
    def evaluate(self, batches): return 3.0
    def save(self, directory, *, optimizer):
        np.save(directory / "w.npy", self.w)
        if optimizer:
            marker.write_text(str(directory))  # inside a checkpoint's staging directory
            time.sleep(60)
    def sync(self): pass
    def close(self): pass

class Adapter:
    def require(self): return self
    def train(self, tc, progress=True): return run_training(tc, Backend(), progress=progress)

train_cli.get_backend = lambda name: Adapter()
sys.exit(train_cli.main(sys.argv[2:]))
"""


def _signal_inside_write(script: str, args: list[str], marker: Path, sig: int) -> tuple[int, str]:
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stderr=subprocess.PIPE, text=True,
                            env=subprocess_env(), cwd=REPO)
    deadline = time.monotonic() + 90
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the writer never started"
        time.sleep(0.05)
    assert Path(marker.read_text()).is_dir()  # the staging directory exists now
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    return code, proc.stderr.read()


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_convert_leaves_nothing(src, tmp_path, sig, code, word):
    dst, marker = tmp_path / "dst", tmp_path / "marker"
    got, err = _signal_inside_write(CONVERT_SCRIPT, [str(src), str(dst), str(marker)], marker, sig)
    assert got == code and word in err and "Traceback" not in err, err
    assert not dst.exists() and not Path(marker.read_text()).exists()
    assert leftovers(tmp_path) == []


def test_sigterm_during_train_checkpoint_leaves_nothing(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(["to be or not to be that is the question"] * 60), encoding="utf-8")
    out, marker = tmp_path / "out", tmp_path / "marker"
    args = ["--data", str(corpus), "-o", str(out), "--block-size", "16", "--batch-size", "2", "--max-steps", "4",
            "--save-every", "2", "--no-progress"] + [f"--set={k}={v}" for k, v in TRAIN_TINY.items()]
    got, err = _signal_inside_write(TRAIN_SCRIPT, [str(marker), *args], marker, signal.SIGTERM)
    assert got == 143 and "gpt2 train: terminated" in err and "Traceback" not in err, err
    assert not Path(marker.read_text()).exists() and leftovers(tmp_path) == []
    assert not list(out.glob("checkpoint-*"))  # no half-written checkpoint-2


def test_sigterm_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with hub.sigterm_raises():
        assert signal.getsignal(signal.SIGTERM) is not before
        with pytest.raises(hub.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
    assert signal.getsignal(signal.SIGTERM) is before


# ---------------------------------------------------------------------------------------------------------------
# Disk full: one clear line, the old output intact
# ---------------------------------------------------------------------------------------------------------------


class ResourceExhaustedError(Exception):
    """What TensorFlow's Saver raises on a full disk (tf.errors.ResourceExhaustedError), without importing TF."""


def _full_disk_writers(monkeypatch):
    import torch  # the pytorch writer's own library (the all extra): a missing torch fails, never skips

    def torch_save(obj, path, *a, **k):
        Path(path).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4480 vs 4374")

    def tf_like(fmt, directory, *args, **kwargs):
        (directory / "model.ckpt.data-00000-of-00001").write_bytes(b"partial")
        raise ResourceExhaustedError(f"{directory}/model.ckpt_temp/part-00000-of-00001.data; No space left on device")

    def opaque(fmt, directory, *args, **kwargs):
        (directory / "flax_model.msgpack").write_bytes(b"partial")
        monkeypatch.setattr(hub.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
        raise ValueError("msgpack: write failed")

    def enospc(fmt, directory, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / "model.safetensors"))

    return {"pytorch": ("save", torch, torch_save), "openai": ("write", F, tf_like),
            "flax": ("write", F, opaque), "safetensors": ("write", F, enospc)}


@pytest.mark.parametrize("to", ["pytorch", "openai", "flax", "safetensors"])
def test_convert_on_a_full_disk_is_one_clear_line(src, tmp_path, monkeypatch, capsys, to):
    name, owner, fake = _full_disk_writers(monkeypatch)[to]
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "old.txt").write_text("the old output")
    monkeypatch.setattr(owner, name, fake)
    code = cli.main([str(src), "-o", str(dst), "--to", to, "--force", "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE, err
    assert err.count("\n") == 1 and f"No space left on device writing {dst}" in err and "Traceback" not in err, err
    assert snapshot(dst) == {"old.txt": b"the old output"} and leftovers(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 192 KiB tmpfs, where this machine lets us mount one (root with CAP_SYS_ADMIN, as in CI)."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the monkeypatched tests cover it")
    try:
        yield mnt
    finally:
        def unmounted() -> bool:
            return subprocess.run(["umount", str(mnt)], capture_output=True).returncode == 0

        if not unmounted():
            gc.collect()  # busy: a failed writer (torch.save's) may still hold a file open there
            if not unmounted():
                subprocess.run(["umount", "-l", str(mnt)], check=True)  # still busy: detach now, freed on close


@pytest.mark.parametrize("to", ["pytorch", "safetensors", "flax"])
def test_convert_on_a_real_full_tmpfs(tmp_path, tiny_tmpfs, monkeypatch, capsys, to):
    """The real writers on a real full filesystem (the free-space check skipped, so they hit ENOSPC mid-write)."""
    config = GPT2Config(**{**TINY, "vocab_size": 1000, "n_embd": 64, "n_layer": 2})  # ~660 KB of float32
    big = save_checkpoint(tmp_path / "big", config, reference.random_params(config, "lm", seed=0), "lm")
    monkeypatch.setattr(hub, "check_free_space", lambda path, needed: None)
    code = cli.main([str(big), "-o", str(tiny_tmpfs / "out"), "--to", to, "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE and f"No space left on device writing {tiny_tmpfs / 'out'}" in err, err
    assert err.count("\n") == 1 and os.listdir(tiny_tmpfs) == []
    monkeypatch.undo()  # and with the check: refused before anything is written
    code = cli.main([str(big), "-o", str(tiny_tmpfs / "out"), "--to", "tf", "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_FAILURE and "bytes to write" in err and os.listdir(tiny_tmpfs) == [], err


# ---------------------------------------------------------------------------------------------------------------
# save_pretrained: all or nothing, one save's whole set
# ---------------------------------------------------------------------------------------------------------------


def _model(seed: int, **overrides):
    config = GPT2Config(**{**TINY, **overrides})
    return config, reference.random_params(config, "lm", seed=seed)


def test_save_pretrained_failure_leaves_the_old_save(tmp_path, monkeypatch):
    from gpt2_core.generation_config import GenerationConfig

    d = tmp_path / "model"
    config, w = _model(1)
    pretrained.save_pretrained(d, config, w, "lm", generation_config=GenerationConfig.from_model_config(config))
    (d / "vocab.json").write_text("{}")  # a tokenizer saved beside it is kept
    before = snapshot(d)
    real = pretrained.save_safetensors

    def fails_midway(state, directory, **kwargs):
        files = real(state, directory, max_shard_size="2KB")  # some shards are written ...
        raise OSError(errno.ENOSPC, "No space left on device", str(files[0]))  # ... then the disk is full

    monkeypatch.setattr(pretrained, "save_safetensors", fails_midway)
    config2, w2 = _model(2, n_layer=2)
    with pytest.raises(hub.DiskFullError, match=f"No space left on device writing {d}"):
        pretrained.save_pretrained(d, config2, w2, "lm")
    assert snapshot(d) == before and leftovers(tmp_path) == []
    with pytest.raises(hub.DiskFullError):
        pretrained.save_pretrained(tmp_path / "new", config2, w2, "lm")
    assert not (tmp_path / "new").exists() and leftovers(tmp_path) == []


def test_save_pretrained_layout_change_removes_the_stale_weights(tmp_path):
    d = tmp_path / "model"
    config, w = _model(1)
    pretrained.save_pretrained(d, config, w, "lm")
    config2, w2 = _model(2)
    pretrained.save_pretrained(d, config2, w2, "lm", max_shard_size="2KB")  # sharded now
    assert not (d / "model.safetensors").exists() and (d / "model.safetensors.index.json").exists()
    got = pretrained.load_pretrained(d, "lm").canonical
    assert all(np.array_equal(got[k], w2[k]) for k in w2)
    pretrained.save_pretrained(d, config, w, "lm")  # and back: no shard of the earlier save is left
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_publishes_under_the_directory_lock(tmp_path):
    """A reader holding the shared lock sees one save whole: the next save's files appear only after it lets go,
    and then all together."""
    d = tmp_path / "model"
    config, w = _model(1)
    pretrained.save_pretrained(d, config, w, "lm")
    config2, w2 = _model(2, n_layer=2)
    before = snapshot(d)
    with hub.directory_lock(d, shared=True):
        writer = threading.Thread(target=pretrained.save_pretrained, args=(d, config2, w2, "lm"))
        writer.start()
        writer.join(timeout=1.0)
        assert writer.is_alive() and snapshot(d) == before  # staged, waiting to publish
    writer.join(timeout=30)
    loaded = pretrained.load_pretrained(d, "lm")
    assert loaded.config.n_layer == 2 and all(np.array_equal(loaded.canonical[k], w2[k]) for k in w2)
    assert leftovers(tmp_path) == []


def test_two_saves_interleaved_leave_one_whole_save(tmp_path, monkeypatch):
    """Save B runs start to finish while save A is staging: A publishes after it, so the directory holds A's
    config with A's weights (never B's config with A's weights or the reverse)."""
    d = tmp_path / "model"
    config_a, w_a = _model(1)
    config_b, w_b = _model(2, n_layer=2)
    pretrained.save_pretrained(d, config_a, w_a, "lm")
    real = pretrained.save_safetensors
    nested = {}

    def interleave(state, directory, **kwargs):
        files = real(state, directory, **kwargs)
        if not nested:
            nested["done"] = True
            pretrained.save_pretrained(d, config_b, w_b, "lm", max_shard_size="2KB")
        return files

    monkeypatch.setattr(pretrained, "save_safetensors", interleave)
    pretrained.save_pretrained(d, config_a, w_a, "lm")
    loaded = pretrained.load_pretrained(d, "lm")
    assert loaded.config.n_layer == 1 and all(np.array_equal(loaded.canonical[k], w_a[k]) for k in w_a)
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]


def test_tokenizer_atomic_save_is_all_or_nothing(tmp_path):
    from gpt2_core import tokenization_io as io

    d = tmp_path / "tok"
    with io.atomic_save(d) as staging:
        io.write_vocab_files(staging, {"x": 0}, [])
    assert sorted(p.name for p in d.iterdir()) == ["merges.txt", "vocab.json"] and leftovers(tmp_path) == []
    before = snapshot(d)
    with pytest.raises(hub.DiskFullError):
        with io.atomic_save(d) as staging:
            io.write_vocab_files(staging, {"a": 0}, [])
            raise OSError(errno.ENOSPC, "No space left on device")
    assert snapshot(d) == before and leftovers(tmp_path) == []
    with io.atomic_save(d) as staging:
        written = io.write_vocab_files(staging, {"a": 0, "b": 1}, [("a", "b")])
    assert io.published(written, d) == (str(d / "vocab.json"), str(d / "merges.txt"))
    assert json.loads((d / "vocab.json").read_text()) == {"a": 0, "b": 1} and leftovers(tmp_path) == []



def test_tokenizer_save_pretrained_on_a_full_disk_keeps_the_old_save(tmp_path, monkeypatch):
    """GPT2Tokenizer.save_pretrained itself goes through atomic_save: a disk full after the vocabulary was written
    leaves the previous save byte for byte, and no staging directory."""
    from gpt2_core import tokenization_io as io
    from gpt2_core.tokenization import GPT2Tokenizer

    d = tmp_path / "tok"
    tok = GPT2Tokenizer()
    tok.save_pretrained(d)
    before = snapshot(d)
    tok.add_special_tokens({"pad_token": "[PAD]"})
    real = io.write_vocab_files

    def full(*args, **kwargs):
        real(*args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io, "write_vocab_files", full)
    with pytest.raises(hub.DiskFullError):
        tok.save_pretrained(d)
    assert snapshot(d) == before and leftovers(tmp_path) == []
    monkeypatch.setattr(io, "write_vocab_files", real)
    tok.save_pretrained(d)
    assert GPT2Tokenizer.from_pretrained(d).pad_token == "[PAD]"

# ---------------------------------------------------------------------------------------------------------------
# gpt2 train: output directories, resume, flags
# ---------------------------------------------------------------------------------------------------------------


class NumpyBackend:
    """A TrainerBackend in NumPy (unigram logits, SGD), enough to drive the loop and its files."""

    name, rank, world_size, world_unit = "numpy", 0, 1, "devices"

    def __init__(self, loss: float | None = None, interrupt_at: int | None = None) -> None:
        self.fixed_loss, self.interrupt_at, self.steps = loss, interrupt_at, 0

    def build(self, tc, *, config, weights, optimizer_state):
        if weights is not None:
            self.logits = np.load(Path(weights) / "logits.npy")
        else:
            self.logits = np.random.default_rng(tc.seed).normal(0, 0.02, config.vocab_size)

    def num_parameters(self):
        return self.logits.size

    def step(self, batch, lr):
        self.steps += 1
        if self.steps == self.interrupt_at:
            raise KeyboardInterrupt
        z = self.logits - self.logits.max()
        p = np.exp(z) / np.exp(z).sum()
        counts = np.bincount(batch.reshape(-1), minlength=p.size) / batch.size
        loss = float(-(counts * np.log(p)).sum())
        self.logits = self.logits - 100 * lr * (p - counts)
        return (loss if self.fixed_loss is None else self.fixed_loss), 1.0

    def eval_batch_size(self, tc):
        return tc.batch_size

    def evaluate(self, batches):
        return 1.0

    def save(self, directory, *, optimizer):
        np.save(directory / "logits.npy", self.logits)

    def sync(self):
        pass

    def close(self):
        pass


class QuickTokenizer:
    """GPT-2's tokenizer whose save writes only vocab.json: these tests are about the loop's files, and a full
    tokenizer save (tokenizer.json of 50k tokens) per checkpoint would be most of their time."""

    def __init__(self, tok):
        self.tok, self.eos_token_id, self.vocab_size = tok, tok.eos_token_id, tok.vocab_size

    def encode(self, text):
        return self.tok.encode(text)

    def save_pretrained(self, directory):
        hub.atomic_write_text(Path(directory) / "vocab.json", "{}")


@pytest.fixture(scope="module")
def tokenizer():
    return QuickTokenizer(core_training.load_tokenizer(None))


@pytest.fixture(autouse=True)
def one_tokenizer(request, monkeypatch):
    """Every run below uses the same (stateless) GPT-2 tokenizer, loaded once."""
    if "corpus" in request.fixturenames:
        tok = request.getfixturevalue("tokenizer")
        monkeypatch.setattr(core_training, "load_tokenizer", lambda pretrained: tok)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    f = tmp_path_factory.mktemp("corpus") / "text.txt"
    f.write_text(" ".join(np.random.default_rng(0).choice(["to", "be", "or", "not", "that", "is"], 1500)),
                 encoding="utf-8")
    return f


def tconf(corpus, out, **kw) -> TrainConfig:
    base = dict(data=[str(corpus)], output_dir=str(out), model="gpt2", overrides=dict(TRAIN_TINY), block_size=16,
                batch_size=2, max_steps=6, warmup_steps=1, learning_rate=1e-2, eval_every=3, eval_batches=1,
                log_every=1, save_every=3, dropout=0.0)
    base.update(kw)
    return TrainConfig(**base)


def test_train_refuses_a_directory_of_an_earlier_run(corpus, tmp_path):
    out = tmp_path / "out"
    run_training(tconf(corpus, out), NumpyBackend(), progress=False)
    before = snapshot(out)
    with pytest.raises(FileExistsError, match=r"--output-dir is not empty.*--resume.*--force"):
        run_training(tconf(corpus, out, max_steps=2, seed=5), NumpyBackend(), progress=False)
    # --resume beyond --max-steps: refused, the final model is not replaced with old weights
    with pytest.raises(ValueError, match="checkpoint at step 6 is beyond --max-steps 2"):
        run_training(tconf(corpus, out, max_steps=2, resume=True), NumpyBackend(), progress=False)
    # --resume with other settings: refused, naming them
    with pytest.raises(ValueError, match=r"other settings.*batch_size=4 \(checkpoint: 2\)"):
        run_training(tconf(corpus, out, batch_size=4, resume=True), NumpyBackend(), progress=False)
    assert snapshot(out) == before
    # --resume of the finished run: its stored metrics, not {}; the final model stays the run's own
    result = run_training(tconf(corpus, out, resume=True), NumpyBackend(), progress=False)
    state = core_training.read_state(out / "checkpoint-6")
    assert result["step"] == 6 and result["loss"] == state["loss"]
    assert np.array_equal(np.load(out / "logits.npy"), np.load(out / "checkpoint-6" / "logits.npy"))
    # --force: afresh, the earlier checkpoints and metrics gone
    run_training(tconf(corpus, out, max_steps=2, save_every=0, force=True), NumpyBackend(), progress=False)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r.get("event") for r in rows if "event" in r] == ["start", "end"] and rows[-1]["step"] == 2
    assert leftovers(tmp_path) == []


def run_train_cli(monkeypatch, capsys, argv, backend=None):
    class Adapter:
        def require(self):
            return self

        def train(self, tc, progress=True):
            return run_training(tc, backend or NumpyBackend(), progress=progress)

    monkeypatch.setattr(train_cli, "get_backend", lambda name: Adapter())
    code = train_cli.main([*map(str, argv), "--no-progress"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size must be an integer >= 1. Received: batch_size=0"),
    (["--log-every", "0"], "--log-every must be an integer >= 1. Received: log_every=0"),
    (["--eval-every", "0"], "--eval-every must be an integer >= 1. Received: eval_every=0"),
    (["--eval-fraction", "1.5"], "--eval-fraction must be in [0, 1)"),
    (["--eval-fraction", "-0.1"], "--eval-fraction must be in [0, 1)"),
    (["--learning-rate", "nan"], "--learning-rate must be a finite number"),
    (["--resume", "--force"], "--resume and --force contradict"),
])
def test_train_flags_out_of_range_are_one_line(corpus, tmp_path, monkeypatch, capsys, flags, message):
    out = tmp_path / "out"
    code, err = run_train_cli(monkeypatch, capsys, ["--data", corpus, "-o", out, *flags])
    assert code == EXIT_USAGE and message in err and err.count("\n") == 1, err
    assert not out.exists()  # checked before anything is written


def test_train_output_errors_nan_and_ctrl_c(corpus, tmp_path, monkeypatch, capsys):
    base = ["--data", corpus, "--block-size", "16", "--batch-size", "2", "--max-steps", "3", "--warmup-steps", "1"]
    base += [f"--set={k}={v}" for k, v in TRAIN_TINY.items()]
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    code, err = run_train_cli(monkeypatch, capsys, [*base, "-o", a_file])
    assert code == EXIT_USAGE and "--output-dir is not a directory" in err and err.count("\n") == 1, err

    def read_only(*args, **kwargs):  # what a read-only mount says, even to root
        raise OSError(errno.EROFS, "Read-only file system")

    with monkeypatch.context() as m:
        m.setattr(core_training.tempfile, "mkstemp", read_only)
        code, err = run_train_cli(m, capsys, [*base, "-o", tmp_path / "ro"])
    assert code == EXIT_FAILURE and "Cannot write in --output-dir" in err and "Read-only" in err, err

    code, err = run_train_cli(monkeypatch, capsys, [*base, "-o", tmp_path / "nan"], NumpyBackend(loss=float("nan")))
    assert code == EXIT_FAILURE and "The loss became nan at step 0 (optimizer step 1 of 3)" in err, err
    assert "Traceback" not in err and err.count("\n") == 1

    code, err = run_train_cli(monkeypatch, capsys, [*base, "-o", tmp_path / "int"], NumpyBackend(interrupt_at=2))
    assert code == EXIT_INTERRUPTED and err.strip() == "gpt2 train: interrupted." and leftovers(tmp_path) == []

    code, err = run_train_cli(monkeypatch, capsys, [*base, "-o", tmp_path / "int"])  # the interrupted run's dir
    assert code == EXIT_USAGE and "--resume" in err
    code, err = run_train_cli(monkeypatch, capsys, [*base, "-o", tmp_path / "int", "--resume"])
    assert code == 0, err


def test_train_set_typo_is_refused_before_anything_is_written(tmp_path, capsys):
    """`--set n_layers=1` (the field is n_layer) is exit 2 with the suggestion, and -o is never created."""
    out = tmp_path / "run"
    code = train_cli.main(["--backend", "torch", "--data", str(tmp_path), "--set", "n_layers=1", "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "'n_layers' (did you mean 'n_layer'?)" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_set_overrides_are_strict_in_the_training_loop():
    """The loop's own config building (what a TrainConfig from Python reaches) refuses the typo too."""
    from gpt2_core.config import GPT2Config

    with pytest.raises(ValueError, match="did you mean 'n_layer'"):
        GPT2Config.from_preset("gpt2").update_fields({"n_layers": 1}, source="--set")
