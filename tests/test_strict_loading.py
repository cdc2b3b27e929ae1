"""Nothing silent on the loading side (issue 12) and transformers' `from_pretrained` keywords (issue 11), in the
framework-neutral path every backend's `from_pretrained` goes through (`weights_convert.pretrained.load_pretrained`,
`gpt2_core.hub`, `weights_convert.formats`, `gpt2_core.config`, `gpt2_core.tokenization_io`, `gpt2-verify`).

Oracles: transformers v5 (its strict config types, its `from_pretrained` keywords: `num_labels=`, `variant=`,
`dtype="auto"`, the missing keys it reports) and the weights as written; behaviour transformers lacks (it loads NaN
weights, integer weights and out-of-directory shards silently) is checked against the files themselves.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from conftest import make_config
from gpt2_core import hub, reference
from gpt2_core import tokenization_io as tio
from gpt2_core.config import GPT2Config
from weights_convert import load_checkpoint
from weights_convert.formats.safetensors import read_safetensors, save_safetensors
from weights_convert.pretrained import load_pretrained, save_pretrained


def _checkpoint(directory, head="lm", seed=0, **config_overrides):
    config = make_config("default", **config_overrides)
    canonical = reference.random_params(config, head, seed=seed)
    save_pretrained(directory, config, canonical, head)
    return config, canonical


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# ---------------------------------------------------------------------------------------------------- config


BAD_TYPES = [
    ("tie_word_embeddings", "false"),
    ("layer_norm_epsilon", "1e-5"),
    ("n_layer", "2"),
    ("n_layer", 2.0),
    ("use_cache", 1),
    ("eos_token_id", [1, "2"]),
    ("n_inner", 2.5),
    ("activation_function", 3),
    ("bos_token_id", True),
]


@pytest.mark.parametrize("key,value", BAD_TYPES, ids=[f"{k}={v!r}" for k, v in BAD_TYPES])
def test_config_json_wrong_types_are_refused_like_transformers(tmp_path, key, value):
    import transformers

    with pytest.raises(Exception):  # the oracle: transformers v5's strict config refuses it too
        transformers.GPT2Config(**{key: value})
    data = make_config("default").to_dict()
    data[key] = value
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=f"`{key}`") as e:
        GPT2Config.from_json_file(tmp_path / "config.json")
    assert f"Received: {key}={value!r}" in str(e.value)


def test_untied_checkpoint_with_string_false_is_not_loaded_tied(tmp_path):
    """The silent case of the issue: "false" read as True would drop the untied head (logits off by ~1)."""
    config, _ = _checkpoint(tmp_path, tie_word_embeddings=False)
    data = json.loads((tmp_path / "config.json").read_text())
    data["tie_word_embeddings"] = "false"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="tie_word_embeddings='false'"):
        load_pretrained(tmp_path, "lm")


@pytest.mark.parametrize("num_labels", [-1, 0, "3", True])
def test_num_labels_must_be_a_positive_integer(num_labels):
    with pytest.raises(ValueError, match="num_labels"):
        GPT2Config(num_labels=num_labels)
    config = GPT2Config()
    with pytest.raises(ValueError, match="num_labels"):
        config.num_labels = num_labels
    assert config.num_labels == 2  # unchanged


def test_preset_overrides_are_strict_with_a_suggestion():
    assert GPT2Config.from_preset("gpt2", n_layer=1).n_layer == 1
    with pytest.raises(ValueError, match=r"'n_layers' \(did you mean 'n_layer'\?\)"):
        GPT2Config.from_preset("gpt2", n_layers=1)
    config = GPT2Config.from_preset("gpt2")
    with pytest.raises(ValueError, match="--set"):
        config.update_fields({"n_embed": 64}, source="--set")
    with pytest.raises(ValueError, match="n_layer='4'"):  # a known field of the wrong type
        config.update_fields({"n_layer": "4"}, source="--set")
    assert config.update_fields({"n_layer": 4, "hidden_size": 64, "n_head": 4}).n_embd == 64


def test_utf16_config_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(make_config("default").to_json_string(), encoding="utf-16")
    with pytest.raises(ValueError, match="not UTF-8"):
        GPT2Config.from_json_file(tmp_path / "config.json")


# ---------------------------------------------------------------------------------------------------- checkpoints


def _sharded(tmp_path):
    config = make_config("default")
    canonical = reference.random_params(config, "lm", seed=3)
    d = tmp_path / "m"
    save_pretrained(d, config, canonical, "lm", max_shard_size=20_000)
    index = json.loads((d / hub.SAFE_WEIGHTS_INDEX_NAME).read_text())
    assert len(set(index["weight_map"].values())) > 1
    return d, index


@pytest.mark.parametrize("where", ["parent", "absolute", "subdir"])
def test_shard_index_cannot_name_files_outside_the_checkpoint(tmp_path, where):
    d, index = _sharded(tmp_path)
    shard = sorted(set(index["weight_map"].values()))[0]
    # a real, loadable shard outside the directory: a reader that follows the path would load it without an error
    target = {"parent": tmp_path / "x.safetensors", "absolute": tmp_path / "abs.safetensors",
              "subdir": d / "sub" / shard}[where]
    target.parent.mkdir(exist_ok=True)
    target.write_bytes((d / shard).read_bytes())
    name = {"parent": "../x.safetensors", "absolute": str(target), "subdir": f"sub/{shard}"}[where]
    index["weight_map"] = {k: (name if v == shard else v) for k, v in index["weight_map"].items()}
    (d / hub.SAFE_WEIGHTS_INDEX_NAME).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="outside the checkpoint directory") as e:
        load_pretrained(d, "lm")
    assert name in str(e.value)
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        load_checkpoint(d)  # gpt2-convert's path


def test_nan_weights_warn_by_default_and_raise_with_check_finite(tmp_path, caplog):
    _checkpoint(tmp_path)
    state = read_safetensors(tmp_path / "model.safetensors")
    state["transformer.wpe.weight"][-1, 2] = np.nan  # a row the usual prompts never reach
    save_safetensors(state, tmp_path)
    with caplog.at_level(logging.WARNING, logger="weights_convert.pretrained"):
        loaded = load_pretrained(tmp_path, "lm")
    assert np.isnan(loaded.canonical["wpe.weight"][-1, 2])  # loaded, as transformers does ...
    assert "'wpe.weight'" in caplog.text and "check_finite=True" in caplog.text  # ... but never silently
    with pytest.raises(ValueError, match=r"tensor 'wpe\.weight' has 1 non-finite value.*index \[23, 2\]"):
        load_pretrained(tmp_path, "lm", check_finite=True)


def test_gpt2_verify_names_the_nan_tensor(tmp_path, capsys):
    from gpt2_apps import verify

    _checkpoint(tmp_path)
    state = read_safetensors(tmp_path / "model.safetensors")
    state["transformer.wpe.weight"][-1, 0] = np.inf
    save_safetensors(state, tmp_path)
    assert verify.main([str(tmp_path), "--backends", "torch"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "'wpe.weight'" in out


def test_integer_weights_are_refused_with_the_tensor_name(tmp_path):
    _checkpoint(tmp_path)
    state = read_safetensors(tmp_path / "model.safetensors")
    key = "transformer.h.0.ln_1.weight"
    state[key] = state[key].astype(np.int32)
    save_safetensors(state, tmp_path)
    with pytest.raises(ValueError, match=r"non-float tensors.*transformer\.h\.0\.ln_1\.weight \(int32\)"):
        load_pretrained(tmp_path, "lm")


def test_safetensors_wins_over_a_disagreeing_pytorch_bin_with_a_warning(tmp_path, caplog):
    import torch
    import transformers

    _, canonical = _checkpoint(tmp_path, seed=1)
    _, other = _checkpoint(tmp_path / "other", seed=2)
    torch.save({k: torch.from_numpy(v) for k, v in read_safetensors(tmp_path / "other" / "model.safetensors").items()},
               tmp_path / "pytorch_model.bin")
    with caplog.at_level(logging.WARNING, logger="gpt2_core.hub"):
        loaded = load_pretrained(tmp_path, "lm")
    assert "model.safetensors" in caplog.text and "pytorch_model.bin" in caplog.text
    oracle = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)  # transformers' choice: safetensors
    assert _max_diff(oracle.transformer.wte.weight.detach().numpy(), loaded.canonical["wte.weight"]) == 0.0
    assert _max_diff(loaded.canonical["wte.weight"], canonical["wte.weight"]) == 0.0
    assert _max_diff(loaded.canonical["wte.weight"], other["wte.weight"]) > 0.0


# ---------------------------------------------------------------------------------------------------- tokenizer files


def _vocab_dir(tmp_path):
    vocab, merges = tio.shipped_files()
    tio.write_vocab_files(tmp_path, vocab, merges)
    return tmp_path / "vocab.json", tmp_path / "merges.txt"


def test_corrupt_vocab_json_is_a_clear_error_naming_the_file(tmp_path):
    from gpt2_core.tokenization import GPT2Tokenizer

    vocab_path, _ = _vocab_dir(tmp_path)
    vocab_path.write_text(vocab_path.read_text()[:1000])  # truncated JSON
    with pytest.raises(ValueError, match="vocab.json is not valid JSON") as e:
        GPT2Tokenizer.from_pretrained(tmp_path)
    assert str(vocab_path) in str(e.value)
    vocab_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not UTF-8"):
        tio.read_vocab(vocab_path)
    vocab_path.write_text(json.dumps({"a": "1"}))
    with pytest.raises(ValueError, match="integer ids"):
        tio.read_vocab(vocab_path)


def test_truncated_merges_is_refused(tmp_path):
    vocab_path, merges_path = _vocab_dir(tmp_path)
    full = merges_path.read_text().splitlines(keepends=True)
    vocab, merges = tio.read_vocab_files(vocab_path, merges_path)
    assert len(merges) == 50000  # the whole file reads
    merges_path.write_text("".join(full[: len(full) * 4 // 5]))  # cut at a line boundary
    with pytest.raises(ValueError, match="merges.txt looks truncated"):
        tio.read_vocab_files(vocab_path, merges_path)
    merges_path.write_text("".join(full[:100]) + "Ġzzq xx\n")  # a merge of another vocabulary
    with pytest.raises(ValueError, match="does not belong to vocab.json"):
        tio.read_vocab_files(vocab_path, merges_path)


def test_corrupt_tokenizer_json_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}')
    with pytest.raises(ValueError, match="tokenizer.json is not valid JSON"):
        tio.read_tokenizer_json(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}}}')
    with pytest.raises(ValueError, match="lacks its BPE vocabulary or merges"):
        tio.read_tokenizer_json(tmp_path / "tokenizer.json")


# ---------------------------------------------------------------------------------------------------- keywords (#11)


def test_config_field_keywords_override_the_config_like_transformers(tmp_path, backend):
    import transformers

    _, canonical = _checkpoint(tmp_path, head="lm", seed=4)
    model = backend.load("seqcls", tmp_path, num_labels=3, pad_token_id=5, summary_first_dropout=0.2)
    oracle = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path, num_labels=3, pad_token_id=5,
                                                                          summary_first_dropout=0.2)
    assert model.config.num_labels == oracle.config.num_labels == 3
    assert model.config.id2label == oracle.config.id2label
    assert model.config.pad_token_id == oracle.config.pad_token_id == 5
    assert model.config.summary_first_dropout == 0.2
    got = backend.canonical(model)
    assert got["score.weight"].shape == (3, 32)
    assert _max_diff(got["h.1.attn.c_attn.weight"], canonical["h.1.attn.c_attn.weight"]) == 0.0
    with pytest.raises(ValueError, match="num_labels"):
        backend.load("seqcls", tmp_path, num_labels=0)


def test_transformers_keywords_are_accepted_and_unknown_ones_named(tmp_path, backend):
    import transformers

    config, canonical = _checkpoint(tmp_path, head="lm", seed=5)
    hf_config = transformers.GPT2Config(**{k: v for k, v in config.to_dict().items() if k != "model_type"})
    model = backend.load(
        "lm", tmp_path, config=hf_config, attn_implementation="eager", device_map="auto", from_pt=True,
        from_tf=False, from_flax=False, trust_remote_code=False, low_cpu_mem_usage=True, use_safetensors=True,
        check_finite=True,
    )
    got = backend.canonical(model)
    assert _max_diff(got["wte.weight"], canonical["wte.weight"]) == 0.0
    model = backend.load("lm", tmp_path, config=config.to_dict())
    assert model.config.n_layer == config.n_layer
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['revison'\].*did you mean 'revision'"):
        backend.load("lm", tmp_path, revison="main")
    with pytest.raises(ValueError, match="device_map"):
        backend.load("lm", tmp_path, device_map={"h.0": "cuda:1"})


def test_loading_info_matches_transformers_missing_keys(tmp_path):
    import transformers

    _checkpoint(tmp_path, head="lm", seed=6)
    loaded = load_pretrained(tmp_path, "seqcls", output_loading_info=True)
    _, info = transformers.GPT2ForSequenceClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert loaded.output_loading_info
    assert sorted(loaded.loading_info["missing_keys"]) == sorted(info["missing_keys"]) == ["score.weight"]
    assert loaded.loading_info["unexpected_keys"] == [] and loaded.loading_info["error_msgs"] == []
    # a 2-label classifier loaded with num_labels=3: an error naming the way out, or new heads when asked
    save_pretrained(tmp_path / "cls", make_config("default"), reference.random_params(make_config("default"),
                    "seqcls", seed=7), "seqcls")
    with pytest.raises(ValueError, match="ignore_mismatched_sizes=True"):
        load_pretrained(tmp_path / "cls", "seqcls", num_labels=3)
    loaded = load_pretrained(tmp_path / "cls", "seqcls", num_labels=3, ignore_mismatched_sizes=True)
    assert loaded.loading_info["mismatched_keys"] == [("score.weight", (2, 32), (3, 32))]
    assert loaded.canonical["score.weight"].shape == (3, 32)
    assert load_pretrained(tmp_path / "cls", "lm").loading_info["unexpected_keys"] == ["score.weight"]


def test_dtype_auto_and_variant_follow_transformers(tmp_path):
    import ml_dtypes
    import transformers

    config = make_config("default")
    bf16 = {k: v.astype(ml_dtypes.bfloat16) for k, v in reference.random_params(config, "lm", seed=8).items()}
    save_pretrained(tmp_path, config, bf16, "lm")
    loaded = load_pretrained(tmp_path, "lm", dtype="auto")
    oracle = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, dtype="auto")
    assert loaded.dtype == loaded.checkpoint_dtype == str(oracle.dtype).replace("torch.", "") == "bfloat16"
    assert load_pretrained(tmp_path, "lm", torch_dtype="float16").dtype == "float16"
    assert loaded.resolve_dtype("auto") == "bfloat16" and loaded.resolve_dtype(None) is None
    # variant: model.fp16.safetensors holds other weights than model.safetensors
    d, other = tmp_path / "variant", tmp_path / "other"
    _checkpoint(d, seed=9)
    _, canonical = _checkpoint(other, seed=10)
    (d / "model.fp16.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    loaded = load_pretrained(d, "lm", variant="fp16")
    oracle = transformers.GPT2LMHeadModel.from_pretrained(d, variant="fp16", dtype="float32")
    assert _max_diff(oracle.transformer.wte.weight.detach().numpy(), loaded.canonical["wte.weight"]) == 0.0
    assert _max_diff(loaded.canonical["wte.weight"], canonical["wte.weight"]) == 0.0
    with pytest.raises(FileNotFoundError, match="model.int8.safetensors"):
        load_pretrained(d, "lm", variant="int8")


def test_h5_missing_a_dataset_names_the_missing_key(tmp_path):
    import h5py

    from weights_convert import save_checkpoint

    config = make_config("default")
    save_checkpoint(tmp_path / "h5", config, reference.random_params(config, "lm", seed=11), "lm", to="tf",
                    progress=False)
    path = tmp_path / "h5" / "tf_model.h5"
    with h5py.File(path, "r+") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and "ln_f" in n else None)
        victim = sorted(names)[0]
        del f[victim]
    with pytest.raises(ValueError, match="missing key") as e:
        load_checkpoint(tmp_path / "h5")
    assert victim.rsplit("/", 1)[-1] in str(e.value) and "truncated" not in str(e.value)


def test_weights_file_as_the_model_path_reads_the_config_beside_it(tmp_path):
    _, canonical = _checkpoint(tmp_path, seed=12)
    loaded = load_pretrained(tmp_path / "model.safetensors", "lm")
    assert _max_diff(loaded.canonical["wte.weight"], canonical["wte.weight"]) == 0.0
