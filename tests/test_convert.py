"""weights_convert: every reader/writer pair, the CLI's errors, OpenAI checkpoints, and transformers as an oracle.

* Round trips are bit-exact in float32 for every format and head, directly and through every other format.
* The committed transformers-4.x fixtures (tests/fixtures/hf4, written by 4.x's own TF/Flax classes) read to the
  canonical weights transformers' own TF/Flax->PyTorch conversion gives (sha256), and `gpt2_core.reference` on them
  reproduces the logits the 4.x classes computed.
* transformers v5 (PyTorch) loads our safetensors and pytorch_model.bin outputs and gives the reference logits.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from gpt2_core import naming, reference
from gpt2_core.config import GPT2Config
from weights_convert import cli, convert, detect_format, load_checkpoint, open_checkpoint, save_checkpoint
from weights_convert import formats as F
from fixtures.hub_cache import no_network  # noqa: F401 - a fixture

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf4"
TINY = dict(vocab_size=64, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=63, eos_token_id=63)
WRITABLE = ("safetensors", "pytorch", "tf", "flax")
IDS = np.array([[5, 17, 33, 2, 60, 41, 9], [12, 1, 48, 30, 7, 22, 63]], dtype=np.int64)


def tiny(**overrides) -> GPT2Config:
    return GPT2Config(**{**TINY, "num_labels": 3, **overrides})


def weights(config: GPT2Config, head: str, seed: int = 0) -> dict[str, np.ndarray]:
    return reference.random_params(config, head, seed=seed)


def assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert np.array_equal(a[k], b[k]), k


def run_cli(*argv: str, capsys=None) -> tuple[int, str]:
    code = cli.main([*map(str, argv), "--no-progress"])
    err = capsys.readouterr().err if capsys is not None else ""
    return code, err


def leftovers(directory: Path) -> list[str]:
    """Temporary names the atomic writers would leave behind on failure."""
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") and p.name.endswith((".tmp", ".old")))


# ---------------------------------------------------------------------------------------------------------------
# Round trips
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", naming.HEADS)
@pytest.mark.parametrize("fmt", WRITABLE)
def test_write_read_round_trip(tmp_path, fmt, head):
    config = tiny()
    w = weights(config, head, seed=1)
    save_checkpoint(tmp_path / "out", config, w, head, to=fmt)
    assert detect_format(tmp_path / "out") == fmt
    config2, w2, head2 = load_checkpoint(tmp_path / "out")
    assert head2 == head
    assert config2.n_embd == config.n_embd and config2.num_labels == config.num_labels
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == [naming.ARCHITECTURES[head]]
    assert_same(w, w2)


@pytest.mark.parametrize("dst_fmt", WRITABLE)
@pytest.mark.parametrize("src_fmt", WRITABLE)
def test_convert_every_pair(tmp_path, src_fmt, dst_fmt):
    for head, config in (("double", tiny()), ("lm", tiny(tie_word_embeddings=False))):
        w = weights(config, head, seed=2)
        save_checkpoint(tmp_path / f"src_{head}", config, w, head, to=src_fmt)
        convert(tmp_path / f"src_{head}", tmp_path / f"dst_{head}", to=dst_fmt, progress=False)
        config2, w2, head2 = load_checkpoint(tmp_path / f"dst_{head}")
        assert head2 == head and config2.tie_word_embeddings == config.tie_word_embeddings
        assert_same(w, w2)


def test_sharded_safetensors_and_pytorch(tmp_path):
    config = tiny()
    w = weights(config, "lm", seed=3)
    for fmt, index in (("safetensors", "model.safetensors.index.json"), ("pytorch", "pytorch_model.bin.index.json")):
        d = save_checkpoint(tmp_path / fmt, config, w, "lm", to=fmt, max_shard_size="8KB")
        shards = sorted(p.name for p in d.iterdir() if "-of-" in p.name)
        assert len(shards) > 2 and (d / index).is_file()
        weight_map = json.loads((d / index).read_text())["weight_map"]
        assert set(weight_map.values()) == set(shards)
        assert all(k.startswith("transformer.") for k in weight_map)
        _, w2, _ = load_checkpoint(d)
        assert_same(w, w2)
        _, w3, _ = load_checkpoint(d / index)  # the index file itself as SRC
        assert_same(w, w3)
    convert(tmp_path / "safetensors", tmp_path / "one", to="safetensors", progress=False)
    assert (tmp_path / "one" / "model.safetensors").is_file()


def test_dtype_conversion(tmp_path):
    import ml_dtypes
    config = tiny()
    w = weights(config, "lm", seed=4)
    save_checkpoint(tmp_path / "src", config, w, "lm", to="safetensors")
    for fmt in ("safetensors", "pytorch", "flax", "tf"):
        for name, dtype in (("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)):
            if fmt == "tf" and name == "bfloat16":
                continue
            dst = tmp_path / f"{fmt}_{name}"
            convert(tmp_path / "src", dst, to=fmt, dtype=name, progress=False)
            _, w2, _ = load_checkpoint(dst)
            for k in w:
                assert w2[k].dtype == np.dtype(dtype), (fmt, name, k)
                assert np.array_equal(w2[k], w[k].astype(dtype)), (fmt, name, k)
            cfg = json.loads((dst / "config.json").read_text())
            assert cfg.get("torch_dtype", cfg.get("dtype")) == name
            # the reduced dtype survives a second conversion without --dtype, and widens exactly to float32
            convert(dst, tmp_path / f"{fmt}_{name}_again", to="safetensors", progress=False)
            _, w3, _ = load_checkpoint(tmp_path / f"{fmt}_{name}_again")
            assert_same(w2, w3)
            convert(dst, tmp_path / f"{fmt}_{name}_f32", to="safetensors", dtype="float32", progress=False)
            _, w4, _ = load_checkpoint(tmp_path / f"{fmt}_{name}_f32")
            assert all(np.array_equal(w4[k], w2[k].astype(np.float32)) for k in w)


def test_tf_refuses_bfloat16(tmp_path, capsys):
    config = tiny()
    save_checkpoint(tmp_path / "src", config, weights(config, "lm"), "lm", to="safetensors")
    code, err = run_cli(tmp_path / "src", "-o", tmp_path / "out", "--to", "tf", "--dtype", "bfloat16", capsys=capsys)
    assert code == 2 and "bfloat16" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_head_override_and_architectures(tmp_path):
    config = tiny()
    w = weights(config, "double", seed=5)
    save_checkpoint(tmp_path / "double", config, w, "double", to="tf")
    convert(tmp_path / "double", tmp_path / "base", to="safetensors", head="base", progress=False)
    _, wb, hb = load_checkpoint(tmp_path / "base")
    assert hb == "base" and set(wb) == set(naming.canonical_shapes(config, "base"))
    assert json.loads((tmp_path / "base" / "config.json").read_text())["architectures"] == ["GPT2Model"]
    # a head the checkpoint lacks is an error, never silently initialised
    with pytest.raises(ValueError, match="missing keys"):
        open_checkpoint(tmp_path / "base", head="seqcls")


def test_tied_lm_without_head_tensors_detected_from_config(tmp_path):
    config = tiny()
    w = weights(config, "lm")
    for fmt in WRITABLE:
        save_checkpoint(tmp_path / fmt, config, w, "lm", to=fmt)
        data = json.loads((tmp_path / fmt / "config.json").read_text())
        del data["architectures"]
        (tmp_path / fmt / "config.json").write_text(json.dumps(data))
        # then the layout decides: `transformer.`-prefixed names, or the Keras model name in tf_model.h5
        assert load_checkpoint(tmp_path / fmt)[2] == "lm", fmt


def test_tokenizer_files_copied(tmp_path):
    config = tiny()
    src = save_checkpoint(tmp_path / "src", config, weights(config, "lm"), "lm", to="safetensors")
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        (src / name).write_text(f"{name} content")
    convert(src, tmp_path / "dst", to="flax", progress=False)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        assert (tmp_path / "dst" / name).read_text() == f"{name} content"


def test_old_tf_embedding_name(tmp_path):
    """TF files written before transformers 4.27 (TFSharedEmbeddings) call the token embedding `wte/weight:0`."""
    import h5py
    config = tiny()
    w = weights(config, "lm", seed=6)
    d = save_checkpoint(tmp_path / "tf", config, w, "lm", to="tf")
    with h5py.File(d / "tf_model.h5", "r+") as f:
        g = f["transformer"]
        names = [n.decode() for n in g.attrs["weight_names"]]
        old = next(n for n in names if n.endswith("wte/embeddings:0"))
        new = old.replace("wte/embeddings:0", "wte/weight:0").replace("tfgpt2lm_head_model", "tfgp_t2lm_head_model")
        g.move(old, new)
        names = [new if n == old else n for n in names]
        g.attrs["weight_names"] = np.asarray([n.encode() for n in names])
    _, w2, head = load_checkpoint(d)
    assert head == "lm"
    assert_same(w, w2)


@pytest.mark.parametrize("fmt", WRITABLE)
def test_cross_attention_round_trip(tmp_path, fmt):
    config = tiny(add_cross_attention=True)
    w = weights(config, "lm", seed=10)
    save_checkpoint(tmp_path / "out", config, w, "lm", to=fmt)
    assert_same(w, load_checkpoint(tmp_path / "out")[1])


def test_transformers4_style_pytorch_bin_with_buffers(tmp_path):
    """transformers 4.x's pytorch_model.bin of GPT2LMHeadModel carries the tied lm_head.weight and, in old files,
    the causal-mask buffers `attn.bias` / `attn.masked_bias`; they are not parameters and are dropped."""
    import torch
    config = tiny()
    w = weights(config, "lm", seed=11)
    state = {f"transformer.{k}": torch.from_numpy(v.copy()) for k, v in w.items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    for i in range(config.n_layer):
        state[f"transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
        state[f"transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    (tmp_path / "old").mkdir()
    torch.save(state, tmp_path / "old" / "pytorch_model.bin")
    (tmp_path / "old" / "config.json").write_text(config.to_json_string())
    _, w2, head = load_checkpoint(tmp_path / "old")
    assert head == "lm"
    assert_same(w, w2)


def test_large_leaves_chunked_like_flax(tmp_path, monkeypatch):
    """Arrays past msgpack's object limit are stored in flax.serialization's chunked form; HDF5 attribute lists past
    the object-header limit are split like Keras does. Both read back, and flax's own decoder agrees."""
    config = tiny()
    w = weights(config, "lm", seed=12)
    from weights_convert.formats import flax_msgpack, tf_h5

    monkeypatch.setattr(flax_msgpack, "_MSGPACK_MAX_CHUNK", 1000)  # bytes: every matrix gets chunked
    monkeypatch.setattr(tf_h5, "_HDF5_ATTR_LIMIT", 200)
    save_checkpoint(tmp_path / "flax", config, w, "lm", to="flax")
    save_checkpoint(tmp_path / "tf", config, w, "lm", to="tf")
    assert_same(w, load_checkpoint(tmp_path / "flax")[1])
    assert_same(w, load_checkpoint(tmp_path / "tf")[1])
    import h5py
    with h5py.File(tmp_path / "tf" / "tf_model.h5", "r") as f:
        assert "weight_names0" in f["transformer"].attrs and "weight_names1" in f["transformer"].attrs
    from flax import serialization
    tree = serialization.msgpack_restore((tmp_path / "flax" / "flax_model.msgpack").read_bytes())
    kernel = np.asarray(tree["transformer"]["h"]["0"]["attn"]["c_attn"]["kernel"])
    assert np.array_equal(kernel, w["h.0.attn.c_attn.weight"].T)  # FlaxConv1D keeps [out, in]
    assert np.array_equal(np.asarray(tree["transformer"]["wte"]["embedding"]), w["wte.weight"])


# ---------------------------------------------------------------------------------------------------------------
# detect_format
# ---------------------------------------------------------------------------------------------------------------


def test_detect_format(tmp_path):
    config = tiny()
    w = weights(config, "lm")
    files = {
        "safetensors": "model.safetensors",
        "pytorch": "pytorch_model.bin",
        "tf": "tf_model.h5",
        "flax": "flax_model.msgpack",
    }
    for fmt, name in files.items():
        d = save_checkpoint(tmp_path / fmt, config, w, "lm", to=fmt)
        assert detect_format(d) == fmt
        assert detect_format(d / name) == fmt
        renamed = tmp_path / f"{fmt}.weights"  # an unusual name: the content decides
        renamed.write_bytes((d / name).read_bytes())
        if fmt == "flax":  # msgpack has no signature: the name must say it
            with pytest.raises(ValueError, match="--from"):
                detect_format(renamed)
        else:
            assert detect_format(renamed) == fmt
    # a Hub-like directory with several formats prefers safetensors
    (tmp_path / "tf" / "model.safetensors").write_bytes((tmp_path / "safetensors" / "model.safetensors").read_bytes())
    assert detect_format(tmp_path / "tf") == "safetensors"
    assert load_checkpoint(tmp_path / "tf", format="tf")[2] == "lm"
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No checkpoint found"):
        detect_format(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="Cannot tell the checkpoint format"):
        detect_format(tmp_path / "notes.txt")
    with pytest.raises(FileNotFoundError):
        detect_format(tmp_path / "missing")


# ---------------------------------------------------------------------------------------------------------------
# Bad input: clear errors, exit code 2, nothing written
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", WRITABLE)
def test_truncated_and_corrupt_files(tmp_path, capsys, fmt):
    config = tiny()
    d = save_checkpoint(tmp_path / "src", config, weights(config, "lm"), "lm", to=fmt)
    weight_file = next(p for p in d.iterdir() if p.name != "config.json")
    data = weight_file.read_bytes()
    for label, damaged in (("truncated", data[: len(data) // 2]), ("garbage", b"\x00garbage" * 50), ("empty", b"")):
        weight_file.write_bytes(damaged)
        code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
        assert code == 2, (label, err)
        assert err.startswith("gpt2-convert: error:") and "Traceback" not in err, (label, err)
        assert not (tmp_path / "out").exists() and leftovers(tmp_path) == [], label


def test_non_gpt2_checkpoint(tmp_path, capsys):
    from safetensors.numpy import save_file

    d = tmp_path / "bert"
    d.mkdir()
    save_file({"embeddings.word_embeddings.weight": np.zeros((64, 16), np.float32)}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 16}))
    code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "not a GPT-2 config" in err
    # the same tensors with a GPT-2 config: every unexpected and missing name is listed
    (d / "config.json").write_text(tiny().to_json_string())
    with pytest.raises(ValueError, match="unexpected keys: \\['embeddings.word_embeddings.weight'\\]") as e:
        open_checkpoint(d)
    assert "missing keys" in str(e.value)
    # an HDF5 file that is not a transformers checkpoint
    import h5py
    (d / "model.safetensors").unlink()
    with h5py.File(d / "tf_model.h5", "w") as f:
        f["x"] = np.zeros(3)
    code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "layer_names" in err


@pytest.mark.parametrize("fmt", WRITABLE)
def test_config_shape_mismatch(tmp_path, capsys, fmt):
    config = tiny()
    d = save_checkpoint(tmp_path / "src", config, weights(config, "seqcls"), "seqcls", to=fmt)
    wrong = tiny(n_layer=3, vocab_size=65, num_labels=4)
    (d / "config.json").write_text(wrong.to_json_string())
    with pytest.raises(ValueError) as e:
        open_checkpoint(d)
    msg = str(e.value)
    assert "h.2.ln_1.weight" in msg  # missing layer
    assert "wte.weight: expected (65, 16), found (64, 16)" in msg
    assert "score.weight: expected (4, 16), found (3, 16)" in msg
    code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "does not match the config" in err and not (tmp_path / "out").exists()


def test_existing_output_needs_force(tmp_path, capsys):
    config = tiny()
    w = weights(config, "lm", seed=7)
    src = save_checkpoint(tmp_path / "src", config, w, "lm", to="safetensors")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code, err = run_cli(src, "-o", out, "--to", "flax", capsys=capsys)
    assert code == 2 and "--force" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, err = run_cli(src, "-o", out, "--to", "flax", "--force", capsys=capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "flax_model.msgpack"]
    assert_same(w, load_checkpoint(out)[1])
    assert leftovers(tmp_path) == []
    # the source itself is never a valid output
    code, err = run_cli(src, "-o", src, "--force", capsys=capsys)
    assert code == 2 and "replace the source" in err


def test_failure_midway_leaves_nothing(tmp_path, monkeypatch):
    config = tiny()
    src = save_checkpoint(tmp_path / "src", config, weights(config, "lm"), "lm", to="safetensors")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    calls = {"n": 0}
    real = F.Checkpoint.__getitem__

    def interrupted(self, key):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(self, key)

    monkeypatch.setattr(F.Checkpoint, "__getitem__", interrupted)
    for fmt in WRITABLE:
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            convert(src, tmp_path / "new", to=fmt, progress=False)
        calls["n"] = 0
        with pytest.raises(KeyboardInterrupt):
            convert(src, tmp_path / "out", to=fmt, force=True, progress=False)
        assert not (tmp_path / "new").exists()
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["old.txt"]  # the old output is intact
        assert leftovers(tmp_path) == []
    calls["n"] = 0
    assert cli.main([str(src), "-o", str(tmp_path / "new"), "--no-progress"]) == 130


def test_cli_bad_arguments_and_verify_hook(tmp_path, capsys, monkeypatch):
    config = tiny()
    src = save_checkpoint(tmp_path / "src", config, weights(config, "lm"), "lm", to="safetensors")
    code, err = run_cli(tmp_path / "missing", "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "No such file or directory" in err
    code, err = run_cli(src, "-o", tmp_path / "out", "--max-shard-size", "lots", capsys=capsys)
    assert code == 2 and "Cannot parse a size" in err
    code, err = run_cli(src, "-o", tmp_path / "out", "--to", "tf", "--max-shard-size", "1MB", capsys=capsys)
    assert code == 2 and "Sharding" in err
    with pytest.raises(SystemExit) as e:
        cli.main([str(src), "-o", str(tmp_path / "out"), "--to", "onnx"])
    assert e.value.code == 2
    assert leftovers(tmp_path) == [] and not (tmp_path / "out").exists()
    code, err = run_cli(src, "-o", tmp_path / "out", "--config", tmp_path / "nope.json", capsys=capsys)
    assert code == 2
    # --verify: a missing verifier is a note, a failed verification exit code 1, a passed one 0
    monkeypatch.setattr(cli, "_load_verify", lambda: None)
    code, err = run_cli(src, "-o", tmp_path / "out", "--verify", capsys=capsys)
    assert code == 0 and "--verify needs" in err
    calls = []
    monkeypatch.setattr(cli, "_load_verify", lambda: lambda a, b: calls.append((a, b)) or False)
    code, err = run_cli(src, "-o", tmp_path / "out2", "--verify", capsys=capsys)
    assert code == 1 and "verification failed" in err and calls == [(str(src), str(tmp_path / "out2"))]
    monkeypatch.setattr(cli, "_load_verify", lambda: lambda a, b: True)
    code, err = run_cli(src, "-o", tmp_path / "out3", "--verify", capsys=capsys)
    assert code == 0
    assert (tmp_path / "out" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------------------
# OpenAI's original checkpoints
# ---------------------------------------------------------------------------------------------------------------


def make_openai_checkpoint(directory: Path, config: GPT2Config, w: dict, with_adam: bool = True) -> Path:
    """Write a checkpoint the way OpenAI's gpt-2 code (and fine-tuning scripts built on it) did: TF1 graph-mode
    variables under `model/`, conv1d weights [1, nx, nf], a tf.compat.v1.train.Saver; optionally Adam slots,
    beta1/2_power and global_step, as `gpt-2-simple`-style fine-tuning leaves them."""
    import tensorflow as tf
    names = {"model/wte": w["wte.weight"], "model/wpe": w["wpe.weight"]}
    for i in range(config.n_layer):
        for ln in ("ln_1", "ln_2"):
            names[f"model/h{i}/{ln}/g"] = w[f"h.{i}.{ln}.weight"]
            names[f"model/h{i}/{ln}/b"] = w[f"h.{i}.{ln}.bias"]
        for mod in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"):
            key = f"h.{i}.{mod.replace('/', '.')}"
            names[f"model/h{i}/{mod}/w"] = w[key + ".weight"][None]  # conv1d: [1, nx, nf]
            names[f"model/h{i}/{mod}/b"] = w[key + ".bias"]
    names["model/ln_f/g"] = w["ln_f.weight"]
    names["model/ln_f/b"] = w["ln_f.bias"]
    directory.mkdir(parents=True)
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.get_variable(n, initializer=tf.constant(v), use_resource=False) for n, v in names.items()]
        if with_adam:
            loss = tf.add_n([tf.reduce_sum(tf.square(v)) for v in variables])
            step = tf.compat.v1.train.get_or_create_global_step()
            tf.compat.v1.train.AdamOptimizer(1e-3).minimize(loss, global_step=step)
        saver = tf.compat.v1.train.Saver(tf.compat.v1.global_variables())
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(directory / "model.ckpt"))
    hparams = {"n_vocab": config.vocab_size, "n_ctx": config.n_positions, "n_embd": config.n_embd,
               "n_head": config.n_head, "n_layer": config.n_layer}
    (directory / "hparams.json").write_text(json.dumps(hparams))
    (directory / "encoder.json").write_text('{"!": 0}')
    (directory / "vocab.bpe").write_text("#version: 0.2\n")
    return directory


def test_openai_checkpoint_with_adam(tmp_path, caplog):
    config = GPT2Config(**TINY)
    w = weights(config, "lm", seed=8)
    d = make_openai_checkpoint(tmp_path / "124M", config, w, with_adam=True)
    import tensorflow as tf
    stored = dict(tf.train.list_variables(str(d / "model.ckpt")))
    assert "model/h0/attn/c_attn/w/Adam_1" in stored and "beta1_power" in stored and "global_step" in stored
    assert stored["model/h0/attn/c_attn/w"] == [1, 16, 48]
    assert detect_format(d) == "openai" and detect_format(d / "model.ckpt") == "openai"
    with caplog.at_level(logging.WARNING, logger="weights_convert"):
        config2, w2, head = load_checkpoint(d)
    assert "Skipping" in caplog.text and "Adam" in caplog.text and "global_step" in caplog.text
    assert head == "lm" and config2.n_positions == config.n_positions and config2.vocab_size == config.vocab_size
    assert_same(w, w2)
    # -> safetensors: same reference output as the original tensors; OpenAI's tokenizer files renamed
    code = cli.main([str(d / "model.ckpt.index"), "-o", str(tmp_path / "hf"), "--no-progress", "-q"])
    assert code == 0
    _, w3, _ = load_checkpoint(tmp_path / "hf")
    want = reference.forward(w, config, IDS)["last_hidden_state"]
    got = reference.forward(w3, config, IDS)["last_hidden_state"]
    assert np.abs(got - want).max() == 0.0
    assert (tmp_path / "hf" / "vocab.json").read_text() == '{"!": 0}'
    assert (tmp_path / "hf" / "merges.txt").read_text() == "#version: 0.2\n"
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    # our OpenAI writer round-trips, with OpenAI's names for the tokenizer files
    convert(tmp_path / "hf", tmp_path / "back", to="openai", progress=False)
    assert (tmp_path / "back" / "encoder.json").is_file() and (tmp_path / "back" / "vocab.bpe").is_file()
    assert sorted(dict(tf.train.list_variables(str(tmp_path / "back" / "model.ckpt")))) == sorted(
        k for k in stored if k.startswith("model/") and "Adam" not in k
    )
    assert_same(w, load_checkpoint(tmp_path / "back")[1])


def test_openai_mismatch_and_corrupt(tmp_path, capsys):
    config = GPT2Config(**TINY)
    d = make_openai_checkpoint(tmp_path / "ckpt", config, weights(config, "lm"), with_adam=False)
    hp = json.loads((d / "hparams.json").read_text())
    (d / "hparams.json").write_text(json.dumps({**hp, "n_layer": 3}))
    code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "h.2." in err
    (d / "hparams.json").write_text(json.dumps(hp))
    data = next(d.glob("model.ckpt.data-*"))
    data.write_bytes(data.read_bytes()[:100])
    code, err = run_cli(d, "-o", tmp_path / "out", capsys=capsys)
    assert code == 2 and "Traceback" not in err and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# transformers 4.x fixtures (independent oracle, no 4.x install needed)
# ---------------------------------------------------------------------------------------------------------------


def digest(value: np.ndarray) -> str:  # as tests/fixtures/hf4/make_fixtures.py
    value = np.ascontiguousarray(value, dtype=np.float32)
    return f"{hashlib.sha256(value.tobytes()).hexdigest()} {list(value.shape)}"


@pytest.mark.parametrize(
    "name, head",
    [("tf_lm", "lm"), ("tf_double", "double"), ("tf_seqcls", "seqcls"),
     ("flax_base", "base"), ("flax_lm", "lm"), ("flax_lm_untied", "lm")],
)
def test_transformers4_fixture(tmp_path, name, head):
    config, w, got_head = load_checkpoint(FIXTURES / name)
    assert got_head == head
    expected = np.load(FIXTURES / name / "expected.npz")
    hashes = {k[len("sha256/"):]: str(expected[k]) for k in expected.files if k.startswith("sha256/")}
    assert {k: digest(v) for k, v in w.items()} == hashes  # bit-exact vs transformers' own TF/Flax->PT conversion
    ids = expected["input_ids"]
    h = reference.forward(w, config, ids.reshape(-1, ids.shape[-1]))["last_hidden_state"]
    if "last_hidden_state" in expected.files:
        assert np.abs(h - expected["last_hidden_state"]).max() <= 1e-4
    if head == "seqcls":
        logits = (h @ w["score.weight"].astype(np.float64).T)[:, -1]  # no pad token in ids: the last position
    elif "logits" in expected.files:
        logits = reference.lm_logits(w, config, h).reshape(expected["logits"].shape)
    if "logits" in expected.files:
        assert np.abs(logits - expected["logits"]).max() <= 1e-4
    if "mc_logits" in expected.files:
        hh = h.reshape(ids.shape + (config.n_embd,))
        mc = reference.sequence_summary(w, config, hh, expected["mc_token_ids"])[..., 0]
        assert np.abs(mc - expected["mc_logits"]).max() <= 1e-4
    # and the fixture converts to every writable format and back unchanged
    dst = convert(FIXTURES / name, tmp_path / "st", to="safetensors", progress=False)
    assert_same(w, load_checkpoint(dst)[1])


# ---------------------------------------------------------------------------------------------------------------
# transformers v5 (PyTorch) loads what we write
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["safetensors", "pytorch"])
def test_transformers_v5_loads_our_output(tmp_path, fmt):
    import torch
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False
    config = GPT2Config(**TINY, tie_word_embeddings=False)
    w = weights(config, "lm", seed=9)
    # written through a conversion (tf -> fmt), so the reader's and the writer's mappings are both exercised
    save_checkpoint(tmp_path / "tf", config, w, "lm", to="tf")
    convert(tmp_path / "tf", tmp_path / fmt, to=fmt, progress=False)
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / fmt).eval()
    with torch.no_grad():
        logits = model(torch.tensor(IDS)).logits.numpy()
    want = reference.lm_logits(w, config, reference.forward(w, config, IDS)["last_hidden_state"])
    assert np.abs(logits - want).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Layers, the file-level safetensors helpers, bfloat16, and from_pretrained through the pipeline
# ---------------------------------------------------------------------------------------------------------------

BACKEND_PACKAGES = ("gpt2_torch", "gpt2_tf", "gpt2_flax", "gpt2_apps")


def test_weights_convert_builds_no_model():
    """weights_convert imports no backend (at any depth), and importing it imports no framework."""
    import ast

    from conftest import REPO

    bad = []
    for path in sorted((REPO / "weights_convert").rglob("*.py")):
        if path.name == "verify.py":  # the cross-backend verifier: an application, moving to gpt2_apps
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            bad += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in BACKEND_PACKAGES]
    assert not bad, bad
    import subprocess
    import sys

    code = (
        "import sys, weights_convert, weights_convert.cli, weights_convert.conversion, weights_convert.pretrained;"
        "import weights_convert.formats.safetensors, weights_convert.formats.pytorch, weights_convert.formats.tf_h5,"
        " weights_convert.formats.flax_msgpack, weights_convert.formats.openai;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'jax', 'flax', 'keras', 'h5py',"
        " 'gpt2_torch', 'gpt2_tf', 'gpt2_flax', 'gpt2_apps')];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_registry_has_one_module_per_format():
    assert set(F.REGISTRY) == set(F.FORMATS) == {"safetensors", "pytorch", "tf", "flax", "openai"}
    for name, fmt in F.REGISTRY.items():
        assert fmt.name == name and callable(fmt.lister) and callable(fmt.writer)
    from gpt2_core import hub
    assert set(hub.WEIGHT_FILES.values()) <= set(F.FORMATS)


def test_sharded_safetensors_files_round_trip(tmp_path):
    params = weights(tiny(), "lm", seed=0)
    state = naming.to_hub_state_dict(params, "lm")
    files = F.save_safetensors(state, tmp_path, max_shard_size="10KB")
    assert len(files) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    back = {}
    for f in files[:-1]:
        back.update(F.read_safetensors(f))
    assert_same(state, back)
    assert_same(params, load_checkpoint(tmp_path, config=tiny(), head="lm")[1])


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    F.save_safetensors(weights(tiny(), "base"), tmp_path)
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        F.read_safetensors(f)


def test_bfloat16_is_kept_on_every_read_path(tmp_path):
    """The one bf16 rule: every reader gives ml_dtypes.bfloat16 (bits unchanged), load_pretrained too."""
    import ml_dtypes

    from weights_convert import load_pretrained
    config = tiny()
    w = weights(config, "lm", seed=3)
    want = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
    src = save_checkpoint(tmp_path / "st", config, w, "lm", to="safetensors", dtype="bfloat16")
    for fmt in ("safetensors", "pytorch", "flax"):
        d = convert(src, tmp_path / fmt, to=fmt, progress=False) if fmt != "safetensors" else src
        assert_same(want, load_checkpoint(d)[1])
        loaded = load_pretrained(d, "lm")
        assert loaded.missing_head_keys == [] and loaded.config.n_embd == config.n_embd
        assert_same(want, loaded.canonical)


def test_bfloat16_checkpoint_into_each_backend(backend, tmp_path):
    import ml_dtypes
    config = tiny()
    w = weights(config, "lm", seed=4)
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in w.items()}
    d = save_checkpoint(tmp_path / "st", config, w, "lm", to="safetensors", dtype="bfloat16")
    got = backend.canonical(backend.load("lm", d))  # float32 parameters: the bf16 values, widened exactly
    assert all(np.array_equal(got[k], bf16[k].astype(np.float32)) and got[k].dtype == np.float32 for k in w)
    model = backend.load("lm", d, dtype="bfloat16")
    got = backend.canonical(model)  # a bf16 model's canonical dict is bf16 too, bit for bit
    assert all(got[k].dtype == bf16[k].dtype and np.array_equal(got[k], bf16[k]) for k in w)
    backend.save(model, tmp_path / "again")
    assert json.loads((tmp_path / "again" / "config.json").read_text())["dtype"] == "bfloat16"
    assert_same(bf16, load_checkpoint(tmp_path / "again")[1])


@pytest.mark.parametrize("revision", [None, "main", "sha"])
def test_from_pretrained_from_a_hub_cache(backend, tmp_path, no_network, revision):
    """A model saved by this library, put into a huggingface_hub cache: from_pretrained(hub_id, cache_dir=C,
    local_files_only=True) with HF_HOME unset gives the reference logits, in every backend."""
    from fixtures.hub_cache import SHA, cache_directory

    config = tiny()
    w = weights(config, "lm", seed=5)
    backend.save(backend.build("lm", config, w), tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    cache_directory(tmp_path / "cache", "org/name", tmp_path / "saved")
    model = backend.load("lm", "org/name", cache_dir=tmp_path / "cache", local_files_only=True,
                         revision=SHA if revision == "sha" else revision)
    logits = backend.forward(model, "lm", input_ids=IDS)["logits"]
    want = reference.lm_logits(w, config, reference.forward(w, config, IDS)["last_hidden_state"])
    assert np.abs(logits - want).max() <= 1e-4


def test_from_pretrained_sharded_tf_checkpoint_from_a_hub_cache(backend, tmp_path, no_network):
    """A Hub repo holding only a sharded checkpoint of another format (here tf_model.h5 shards + index, the layout
    transformers 4.x's TF save_pretrained(max_shard_size=...) writes) downloads the index and every shard."""
    import h5py
    from fixtures.hub_cache import make_hub_cache

    config = tiny()
    w = weights(config, "lm", seed=6)
    names = naming.file_names("tf_h5", config, "lm")
    keys = list(w)
    files, weight_map = {}, {}
    for i, part in enumerate((keys[: len(keys) // 2], keys[len(keys) // 2:]), 1):
        shard = f"tf_model-0000{i}-of-00002.h5"
        with h5py.File(tmp_path / shard, "w") as f:  # 4.x's shards: one dataset per weight, named by its path
            layer_names = []
            for key in part:
                name, layout = names[key]
                f.create_dataset(name, data=naming.to_file_layout(w[key], layout))
                layer_names.append(name.encode())
                weight_map[name] = shard
            f.attrs["layer_names"] = np.asarray(layer_names)
        files[shard] = (tmp_path / shard).read_bytes()
    files["tf_model.h5.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    files["config.json"] = F.output_config(config, "lm", None).to_json_string().encode()
    make_hub_cache(tmp_path / "cache", "org/tf-sharded", files)
    model = backend.load("lm", "org/tf-sharded", cache_dir=tmp_path / "cache", local_files_only=True)
    got = backend.canonical(model)
    assert all(np.array_equal(got[k], w[k]) for k in w)


def test_from_pretrained_mistyped_path_and_missing_cache_file(backend, tmp_path, no_network, monkeypatch):
    import huggingface_hub
    from fixtures.hub_cache import make_hub_cache

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: pytest.fail("sent to the Hub"))
    with pytest.raises(FileNotFoundError, match="No such local directory") as e:
        backend.load("lm", str(tmp_path / "checkpoints" / "typo"))
    assert str(tmp_path / "checkpoints" / "typo") in str(e.value)
    monkeypatch.undo()
    for var in ("HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    make_hub_cache(tmp_path / "cache", "org/no-weights", {"config.json": tiny().to_json_string().encode()})
    with pytest.raises(FileNotFoundError, match="No weights found"):
        backend.load("lm", "org/no-weights", cache_dir=tmp_path / "cache", local_files_only=True)
    make_hub_cache(tmp_path / "cache", "org/no-config", {"model.safetensors": b"x"})
    with pytest.raises(FileNotFoundError, match="config.json of 'org/no-config' is not in the cache") as e:
        backend.load("lm", "org/no-config", cache_dir=tmp_path / "cache", local_files_only=True)
    assert str(tmp_path / "cache") in str(e.value)


def test_unknown_hub_keyword_is_a_type_error(tmp_path):
    from weights_convert import load_pretrained
    save_checkpoint(tmp_path / "m", tiny(), weights(tiny(), "lm"), "lm")
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['revison'\\]"):
        load_pretrained(tmp_path / "m", "lm", revison="main")


def test_save_pretrained_architectures_from_naming(tmp_path):
    from weights_convert import save_pretrained
    for head in naming.HEADS:
        config = tiny()
        save_pretrained(tmp_path / head, config, weights(config, head), head)
        data = json.loads((tmp_path / head / "config.json").read_text())
        assert data["architectures"] == [naming.ARCHITECTURES[head]] and data["dtype"] == "float32"
        assert load_checkpoint(tmp_path / head)[2] == head
