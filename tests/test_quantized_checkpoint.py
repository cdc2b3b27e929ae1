"""The int8 checkpoint format (weights_convert.quantized): gpt2_torch's save_pretrained of an int8 model,
from_pretrained of that directory (the same logits as quantizing the float model at load), the file layout and config.json's
quantization_config, TF / Flax reading it dequantized, gpt2-convert and transformers on it, the refusals, and the
held-out loss of the shipped model from its saved int8 checkpoint.

Oracles: the fp32 weights quantized here in NumPy (`_np_quantize`) and dequantized from the file's raw tensors
(read with safetensors, not the library's reader), run through the float64 reference (gpt2_core.reference);
transformers v5 on the dequantized checkpoint."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import SAMPLE_CORPUS, TOL, make_config
from gpt2_core import GPT2Tokenizer, reference
from gpt2_torch import GPT2ForSequenceClassification, GPT2LMHeadModel
from gpt2_torch.quantize import Int8Embedding, Int8Linear
from weights_convert import convert
from weights_convert.quantized import QUANT_METHOD, dequantize_checkpoint

import transformers  # a dev dependency: installed in CI

transformers.logging.set_verbosity_error()

INT8_MAX_LOSS_GAP = 0.02  # nats, the bound (tests/test_torch_perf.py checks load-time quantization)
# torch's int8 kernel also quantizes the activations per row (fbgemm's dynamic linear), so its logits differ from
# the dequantized-weight float model's by that rounding: within 5% of the logits' range on these tiny models.
TOL_INT8_ACT = 0.05
BLOCK_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def _read_file(directory) -> dict[str, np.ndarray]:
    with safe_open(str(directory / "model.safetensors"), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def _np_quantize(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-output-channel int8: max|w| over the input axis / 127 (the documented rule)."""
    w = w.astype(np.float32)
    scale = np.maximum(np.abs(w).max(axis=1 - axis, keepdims=True), np.float32(1e-12)) / np.float32(127)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def _dequantized_canonical(directory) -> dict[str, np.ndarray]:
    """The file's tensors as canonical float64: `weight * weight_scale` for the int8 ones (independent reader)."""
    raw = _read_file(directory)
    out = {}
    for name, value in raw.items():
        if name.endswith("_scale"):
            continue
        if value.dtype == np.int8:
            value = value.astype(np.float64) * raw[name + "_scale"].astype(np.float64)
        out[name.removeprefix("transformer.")] = value.astype(np.float64)
    return out


def _ref_logits(directory, config, ids) -> np.ndarray:
    params = _dequantized_canonical(directory)
    return reference.lm_logits(params, config, reference.forward(params, config, ids)["last_hidden_state"])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """fp32 checkpoint, the model quantized at load from it, and its saved int8 checkpoint (tied LM head)."""
    root = tmp_path_factory.mktemp("q8")
    GPT2LMHeadModel.from_config(make_config(), seed=5).save_pretrained(root / "fp32")
    q = GPT2LMHeadModel.from_pretrained(root / "fp32", quantize="int8")
    q.save_pretrained(root / "int8")
    return root, q


def _ids(config, shape=(2, 7), seed=0):
    return np.random.default_rng(seed).integers(0, config.vocab_size, shape)


# --- round trip (torch) -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, config_name, overrides", [
    (GPT2LMHeadModel, "default", {}), (GPT2LMHeadModel, "untied", {}), (GPT2ForSequenceClassification, "untied", {}),
    (GPT2LMHeadModel, "default", {"add_cross_attention": True}),
], ids=["lm_tied", "lm_untied", "seqcls", "cross_attention"])
def test_int8_checkpoint_round_trip_equals_load_time_quantization(tmp_path, cls, config_name, overrides):
    cls.from_config(make_config(config_name, **overrides), seed=2).save_pretrained(tmp_path / "fp32")
    at_load = cls.from_pretrained(tmp_path / "fp32", quantize="int8")
    at_load.save_pretrained(tmp_path / "int8")
    reloaded = cls.from_pretrained(tmp_path / "int8")
    ids = torch.from_numpy(_ids(at_load.config))
    kwargs = {}
    if overrides.get("add_cross_attention"):
        generator = torch.Generator().manual_seed(0)
        kwargs["encoder_hidden_states"] = torch.randn(2, 5, at_load.config.n_embd, generator=generator)
    with torch.no_grad():
        assert torch.equal(reloaded(ids, **kwargs).logits, at_load(ids, **kwargs).logits)  # exactly, not just close
    buffers = dict(at_load.named_buffers())
    for name, value in reloaded.named_buffers():
        assert torch.equal(value, buffers[name]), name
    assert reloaded.quantization_config == at_load.quantization_config
    linear = [n for n, m in reloaded.named_modules() if isinstance(m, Int8Linear)]
    per_block = 4 + 3 * bool(overrides.get("add_cross_attention"))  # crossattention: c_attn, q_attn, c_proj
    assert len(linear) == per_block * at_load.config.n_layer + (cls is GPT2LMHeadModel)
    if config_name == "default":
        wte = reloaded.transformer.wte
        assert isinstance(wte, Int8Embedding) and wte.head[0] is reloaded.lm_head
    # saving the reloaded model again writes the same tensors
    reloaded.save_pretrained(tmp_path / "again")
    first, second = _read_file(tmp_path / "int8"), _read_file(tmp_path / "again")
    assert first.keys() == second.keys() and all(np.array_equal(first[k], second[k]) for k in first)


def test_int8_checkpoint_builds_no_float_copy_of_the_quantized_weights(saved, monkeypatch):
    """from_pretrained of the int8 directory never makes the float model: no nn.Linear of a block projection's
    shape is allocated with storage and load_canonical (the float path) is not called."""
    root, _ = saved
    import gpt2_torch.model as model_module

    called = []
    monkeypatch.setattr(model_module.GPT2PreTrainedModel, "load_canonical", lambda *a: called.append(a))
    reloaded = GPT2LMHeadModel.from_pretrained(root / "int8")
    assert not called
    assert not [n for n, p in reloaded.named_parameters() if p.ndim == 2 and n != "transformer.wpe.weight"]


def test_sharded_int8_checkpoint(saved, tmp_path):
    root, q = saved
    q.save_pretrained(tmp_path / "sharded", max_shard_size="4KB")
    assert len(list((tmp_path / "sharded").glob("model-*-of-*.safetensors"))) > 2
    reloaded = GPT2LMHeadModel.from_pretrained(tmp_path / "sharded")
    ids = torch.from_numpy(_ids(q.config))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, q(ids).logits)


# --- the file --------------------------------------------------------------------------------------------------


def test_file_layout_and_quantization_config(saved):
    root, q = saved
    fp32, int8 = _read_file(root / "fp32"), _read_file(root / "int8")
    config = json.loads((root / "int8" / "config.json").read_text())
    qc = config["quantization_config"]
    assert qc["quant_method"] == QUANT_METHOD and qc["bits"] == 8 and qc["weight_dtype"] == "int8"
    assert qc["granularity"] == "per_channel" and qc["symmetric"] is True and qc["zero_point"] is False
    assert qc["scale_dtype"] == "float32" and qc["scale_suffix"] == "_scale"
    assert config["dtype"] == "float32"  # the float tensors' dtype, not the int8 one
    assert "quantization_config" not in json.loads((root / "fp32" / "config.json").read_text())
    # the same names and shapes as the float file, plus one scale per quantized weight
    scales = {k for k in int8 if k.endswith("_scale")}
    assert set(int8) - scales == set(fp32)
    quantized = {k.removesuffix("_scale") for k in scales}
    expected = {f"transformer.h.{i}.{w}" for i in range(q.config.n_layer) for w in BLOCK_WEIGHTS}
    assert quantized == expected | {"transformer.wte.weight"}  # the tied LM head is wte
    for name, value in int8.items():
        if name in scales:
            continue
        assert value.shape == fp32[name].shape, name
        if name not in quantized:
            assert value.dtype == np.float32 and np.array_equal(value, fp32[name]), name
            continue
        assert value.dtype == np.int8, name
        axis = 0 if name == "transformer.wte.weight" else 1  # output channels: vocab rows; [in, out] columns
        want_q, want_scale = _np_quantize(fp32[name], axis)
        scale = int8[name + "_scale"]
        assert scale.dtype == np.float32 and scale.shape == want_scale.shape, name  # [1, out] or [V, 1]
        np.testing.assert_allclose(scale, want_scale, rtol=1e-6, err_msg=name)
        assert np.abs(value.astype(np.int16) - want_q).max() <= 1, name  # a tie may round either way
        assert np.abs(value.astype(np.float64) * scale - fp32[name]).max() <= scale.max() / 2 * (1 + 1e-5), name


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """The shipped model saved in fp32 and, quantized at load, as an int8 checkpoint; and the fp32 model."""
    from gpt2_apps.cli import DEFAULT_MODEL_DIR

    root = tmp_path_factory.mktemp("shipped")
    fp32 = GPT2LMHeadModel.from_pretrained(DEFAULT_MODEL_DIR)
    fp32.save_pretrained(root / "fp32")
    GPT2LMHeadModel.from_pretrained(root / "fp32", quantize="int8").save_pretrained(root / "int8")
    return root, fp32


def test_file_size_of_the_shipped_model(shipped):
    """The block weights take 1/4 of their fp32 bytes; the whole file about 0.26 of the fp32 one (the scales,
    wpe, LayerNorms and biases stay float32)."""
    tmp_path, _ = shipped
    fp32, int8 = _read_file(tmp_path / "fp32"), _read_file(tmp_path / "int8")
    blocks = [k for k in fp32 if k.endswith(BLOCK_WEIGHTS)]
    assert sum(int8[k].nbytes for k in blocks) * 4 == sum(fp32[k].nbytes for k in blocks)
    size = {name: (tmp_path / name / "model.safetensors").stat().st_size for name in ("fp32", "int8")}
    ratio = size["int8"] / size["fp32"]
    assert 0.25 < ratio < 0.27, ratio


# --- other readers ------------------------------------------------------------------------------------------------


def test_every_backend_reads_the_int8_checkpoint(saved, backend, caplog):
    """torch: the int8 model (equal to load-time quantization); TF and Flax: dequantized to float32 (logged), so
    equal to the float64 reference on the dequantized weights within the fp32 tolerance."""
    root, q = saved
    ids = _ids(q.config)
    ref = _ref_logits(root / "int8", q.config, ids)
    with caplog.at_level(logging.INFO, logger="weights_convert.pretrained"):
        model = backend.load("lm", root / "int8")
    logits = np.asarray(backend.forward(model, "lm", input_ids=ids)["logits"], dtype=np.float64)
    if backend.name == "torch":
        with torch.no_grad():
            assert np.array_equal(logits, q(torch.from_numpy(ids)).logits.numpy())
        assert np.abs(logits - ref).max() <= TOL_INT8_ACT * np.abs(ref).max()
    else:
        assert "dequantized to float32" in caplog.text
        assert np.abs(logits - ref).max() <= TOL
        assert "quantization_config" not in model.config.extra  # a later save_pretrained writes a float checkpoint


@pytest.mark.parametrize("name", ["tf", "flax"])
def test_tf_and_flax_refuse_quantize_int8(saved, name):
    from conftest import backend_adapter

    root, _ = saved
    with pytest.raises(ValueError, match=r"no int8 inference.*XLA.*gpt2_torch"):
        backend_adapter(name).load("lm", root / "fp32", quantize="int8")


def test_gpt2_convert_dequantizes_and_dequantize_checkpoint_converts(saved, tmp_path):
    root, q = saved
    converted = convert(root / "int8", tmp_path / "via-convert")  # gpt2-convert reads it as its float weights
    assert "quantization_config" not in json.loads((Path(converted) / "config.json").read_text())
    assert all(v.dtype == np.float32 for v in _read_file(Path(converted)).values())
    out = dequantize_checkpoint(root / "int8", tmp_path / "fp32")
    assert {k: v.tobytes() for k, v in _read_file(Path(converted)).items()} == {
        k: v.tobytes() for k, v in _read_file(out).items()}
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"
    assert all(v.dtype == np.float32 for v in _read_file(out).values())
    ids = _ids(q.config)
    ref = _ref_logits(root / "int8", q.config, ids)
    hf = transformers.GPT2LMHeadModel.from_pretrained(out).eval()  # transformers reads the dequantized one
    with torch.no_grad():
        assert np.abs(hf(torch.from_numpy(ids)).logits.double().numpy() - ref).max() <= TOL
    convert(out, tmp_path / "h5", to="tf")  # and gpt2-convert takes it from there


def test_transformers_does_not_know_the_method(saved):
    """transformers v5 logs 'Unknown quantization type', skips the quantization and loads the int8 integers as
    float weights, listing every scale as unexpected: the documented reason to dequantize first."""
    root, q = saved
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(root / "int8", output_loading_info=True)
    assert {k for k in info["unexpected_keys"] if k.endswith("_scale")}
    assert hf.transformer.h[0].mlp.c_fc.weight.abs().max() > 100  # int8 values taken as weights


# --- refusals -------------------------------------------------------------------------------------------------


def test_refusals(saved, tmp_path):
    root, q = saved
    for source in ("fp32", "int8"):
        with pytest.raises(ValueError, match="quantize='int4'"):
            GPT2LMHeadModel.from_pretrained(root / source, quantize="int4")
    with pytest.raises(ValueError, match="CPU int8 kernels"):
        GPT2LMHeadModel.from_pretrained(root / "int8", device="meta")
    # another method's checkpoint (e.g. bitsandbytes) is named, not misread
    import shutil

    other = tmp_path / "bnb"
    shutil.copytree(root / "int8", other)
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quant_method='bitsandbytes'"):
        GPT2LMHeadModel.from_pretrained(other)
    # a scale missing from the file
    from safetensors.numpy import save_file

    broken = tmp_path / "broken"
    shutil.copytree(root / "int8", broken)
    tensors = _read_file(broken)
    del tensors["transformer.h.1.mlp.c_fc.weight_scale"]
    save_file(tensors, str(broken / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight: int8 without a _scale tensor"):
        GPT2LMHeadModel.from_pretrained(broken)
    # the writer takes both scales and quantization_config, or neither
    from gpt2_torch.quantize import quantized_state_dict
    from weights_convert.pretrained import save_pretrained

    canonical, scales = quantized_state_dict(q)
    with pytest.raises(ValueError, match="both scales and quantization_config"):
        save_pretrained(tmp_path / "half", q.config, canonical, "lm", scales=scales)
    assert not (tmp_path / "half").exists()


# --- accuracy of the shipped model -------------------------------------------------------------------------------


def test_held_out_loss_of_the_shipped_model_from_its_int8_checkpoint(shipped):
    """The data of tests/test_torch_perf.py's load-time check: 4 x 128 tokens of othello.txt."""
    root, fp32 = shipped
    ids = GPT2Tokenizer().encode((SAMPLE_CORPUS / "othello.txt").read_text())
    blocks = torch.tensor(ids[: 4 * 128]).reshape(4, 128)
    int8 = GPT2LMHeadModel.from_pretrained(root / "int8")
    assert isinstance(int8.lm_head, Int8Linear)
    with torch.no_grad():
        gap = float(int8(blocks, labels=blocks).loss) - float(fp32(blocks, labels=blocks).loss)
    assert abs(gap) <= INT8_MAX_LOSS_GAP, gap
