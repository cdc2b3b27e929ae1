"""gpt2_torch against transformers v5 (the second oracle): checkpoints transformers saved with random weights load
here and give the same outputs (max abs diff <= 1e-5 fp32); ours load in transformers; greedy generate agrees."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import CONFIGS, TOL_TORCH_HF, make_config, padded_batch
from gpt2_core import naming, reference
import gpt2_torch

import transformers  # a dev dependency: installed in CI
transformers.logging.set_verbosity_error()

CLASSES = naming.ARCHITECTURES  # transformers' class of each head


def hf_model(head: str, config_name: str, tmp_path, seed: int = 0, **save_kwargs):
    """A transformers model with random weights (all tensors perturbed), saved to tmp_path."""
    kw = dict(CONFIGS[config_name])
    torch.manual_seed(seed)
    hf_config = transformers.GPT2Config(**kw, attn_implementation="eager")
    model = getattr(transformers, CLASSES[head])(hf_config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.save_pretrained(tmp_path, **save_kwargs)
    return model


def max_diff(a, b, sl=(...,)):
    return (a[sl].float() - b[sl].float()).abs().max().item()


def inputs_for(head, config, side):
    ids, mask = padded_batch(config, side)
    pos = torch.from_numpy(reference.position_ids_from_attention_mask(mask, ids.shape[1]))
    ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
    kw = dict(input_ids=ids, attention_mask=mask, position_ids=pos)
    # Label -100 on padding and on each row's first token: its prediction would come from a padding position.
    first = torch.nn.functional.pad(mask, (1, 0))[:, :-1] == 0
    labels = ids.masked_fill((mask == 0) | first, -100)
    if head == "lm":
        kw["labels"] = labels
    if head == "double":
        kw = dict(input_ids=ids[None].repeat(2, 1, 1), attention_mask=mask[None].repeat(2, 1, 1), position_ids=pos.repeat(2, 1))
        kw["mc_token_ids"] = torch.tensor([[6, 6, 6], [6, 3, 5]])
        kw["mc_labels"] = torch.tensor([1, 2])
        kw["labels"] = labels[None].repeat(2, 1, 1)
    if head == "seqcls":
        kw["labels"] = torch.tensor([0, 1, 1])
    if head == "tokcls":
        kw["labels"] = torch.randint(0, 2, ids.shape).masked_fill(mask == 0, -100)
    if head == "qa":
        kw["start_positions"] = torch.tensor([0, 2, 30])
        kw["end_positions"] = torch.tensor([3, 3, 1])
    return kw


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("config_name", ["default", "mistral", "n_inner", "relu", "gelu", "silu", "no_scale"])
@pytest.mark.parametrize("head", list(CLASSES))
def test_matches_transformers(head, config_name, side, tmp_path):
    hf = hf_model(head, config_name, tmp_path)
    ours = getattr(gpt2_torch, CLASSES[head]).from_pretrained(tmp_path)
    config = make_config(config_name)
    kw = inputs_for(head, config, side)
    with torch.no_grad():
        a = ours(**kw, output_hidden_states=True, output_attentions=True)
        b = hf(**kw, output_hidden_states=True, output_attentions=True)
    # Positions to compare: all for right padding; for left padding the padding queries attend to nothing, where
    # transformers and this library fill differently (documented in gpt2_core.reference): compare real tokens.
    valid = kw["attention_mask"].reshape(-1, kw["attention_mask"].shape[-1]).bool()  # (R, T)
    R, T = valid.shape

    def real(x, attention=False):
        if side == "right":
            return x
        if attention:
            return x.permute(0, 2, 1, 3)[valid]  # (R, N, T, S) -> queries that are real tokens
        if x.dim() >= 2 and x.numel() % (R * T) == 0 and x.shape[-1] != T and x.shape[-2] == T:
            return x.reshape(R, T, -1)[valid]
        if x.dim() >= 2 and x.shape[-1] == T:
            return x.reshape(R, T)[valid]
        return x

    fields = [f for f in a.keys() if f != "past_key_values"]
    if side == "left" and head == "qa":
        fields.remove("loss")  # the span softmax runs over padding positions too; right padding covers the loss
    assert {"hidden_states", "attentions"} <= set(fields)
    for f in fields:
        x, y = getattr(a, f), getattr(b, f)
        if f in ("hidden_states", "attentions"):
            assert len(x) == len(y), f
            for i, (xi, yi) in enumerate(zip(x, y)):
                att = f == "attentions"
                assert max_diff(real(xi, att), real(yi, att)) <= TOL_TORCH_HF, f"{f}[{i}]"
        else:
            assert max_diff(real(x), real(y)) <= TOL_TORCH_HF, f


@pytest.mark.parametrize("config_name", ["default", "mistral"])
def test_greedy_generate_matches_transformers(config_name, tmp_path):
    hf = hf_model("lm", config_name, tmp_path, seed=1)
    ours = gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)
    config = make_config(config_name)
    ids, mask = (torch.from_numpy(x) for x in padded_batch(config, "left"))
    with torch.no_grad():
        expected = hf.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=config.pad_token_id, eos_token_id=None
        )
    got = ours.generate(ids, attention_mask=mask, max_new_tokens=10, eos_token_id=[])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("head", list(CLASSES))
def test_our_checkpoint_loads_in_transformers(head, tmp_path):
    config = make_config("untied")
    torch.manual_seed(0)
    ours = getattr(gpt2_torch, CLASSES[head])(config).eval()
    ours.save_pretrained(tmp_path)
    hf = getattr(transformers, CLASSES[head]).from_pretrained(tmp_path, attn_implementation="eager").eval()
    ids = torch.randint(1, 90, (1, 2, 6)) if head == "double" else torch.randint(1, 90, (1, 6))
    with torch.no_grad():
        a, b = ours(ids), hf(ids)
    for f in a.keys():
        if f != "past_key_values":
            assert max_diff(getattr(a, f), getattr(b, f)) <= TOL_TORCH_HF, f
    hf_state = {k: v.numpy() for k, v in hf.state_dict().items()}
    canon, missing = naming.from_hub_state_dict(hf_state, config, ours.head)
    assert not missing
    for k, v in ours.canonical_state_dict().items():
        np.testing.assert_array_equal(canon[k], v, err_msg=k)


@pytest.mark.parametrize("save_kwargs", [{}, {"max_shard_size": "20KB"}], ids=["single", "sharded"])
def test_loads_transformers_safetensors(save_kwargs, tmp_path):
    hf = hf_model("lm", "default", tmp_path, **save_kwargs)
    if save_kwargs:
        assert (tmp_path / "model.safetensors.index.json").exists()
    ours = gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids = torch.randint(1, 90, (2, 5))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= TOL_TORCH_HF


def test_loads_pytorch_model_bin(tmp_path):
    hf = hf_model("lm", "default", tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids = torch.randint(1, 90, (2, 5))
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= TOL_TORCH_HF


def test_pytorch_bin_with_arbitrary_objects_is_refused(tmp_path):
    """weights_only loading: a pickle that would run code is rejected with a clear error, not executed."""
    hf_model("lm", "default", tmp_path)
    (tmp_path / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"wte.weight": torch.zeros(2), "x": Evil()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="holds objects other than tensors|corrupt"):
        gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)


def test_base_checkpoint_into_classifier_initialises_head(tmp_path, caplog):
    """Like transformers: loading a GPT2Model checkpoint into a classifier initialises the head, with a warning."""
    hf = hf_model("base", "default", tmp_path)
    with caplog.at_level(logging.WARNING):
        model = gpt2_torch.GPT2ForSequenceClassification.from_pretrained(tmp_path)
    assert "score.weight" in caplog.text
    ids = torch.randint(1, 90, (1, 5))
    with torch.no_grad():
        assert max_diff(model.transformer(ids).last_hidden_state, hf(ids).last_hidden_state) <= TOL_TORCH_HF


def test_old_checkpoint_buffers_are_ignored(tmp_path):
    """Old Hub files carry `h.N.attn.bias` / `masked_bias` buffers; they load without complaint."""
    from weights_convert.formats import read_safetensors, save_safetensors

    hf_model("lm", "default", tmp_path)
    state = read_safetensors(tmp_path / "model.safetensors")
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((24, 24), np.float32))[None, None]
    state["transformer.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_safetensors(state, tmp_path)
    gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)


def test_unexpected_key_is_an_error(tmp_path):
    from weights_convert.formats import read_safetensors, save_safetensors

    hf_model("lm", "default", tmp_path)
    state = read_safetensors(tmp_path / "model.safetensors")
    state["transformer.h.7.mlp.c_fc.weight"] = np.zeros((2, 2), np.float32)
    del state["transformer.ln_f.bias"]
    save_safetensors(state, tmp_path)
    with pytest.raises(ValueError, match=r"missing keys: \['ln_f.bias'\].*unexpected keys: \['transformer.h.7.mlp.c_fc.weight'\]"):
        gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)


def test_fp16_and_bf16_load(tmp_path):
    hf_model("lm", "default", tmp_path)
    for dtype in (torch.float16, torch.bfloat16):
        model = gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path, dtype=dtype)
        assert model.dtype == dtype
        out = model(torch.randint(1, 90, (1, 5)))
        assert torch.isfinite(out.logits.float()).all()


def test_cross_attention_matches_transformers(tmp_path):
    kw = dict(CONFIGS["default"], add_cross_attention=True)
    torch.manual_seed(3)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw, attn_implementation="eager")).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    ours = gpt2_torch.GPT2LMHeadModel.from_pretrained(tmp_path)
    ids = torch.randint(1, 90, (2, 6))
    enc = torch.randn(2, 4, kw["n_embd"])
    enc_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        a = ours(ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, output_attentions=True)
        b = hf(ids, encoder_hidden_states=enc, encoder_attention_mask=enc_mask, output_attentions=True)
    assert max_diff(a.logits, b.logits) <= TOL_TORCH_HF
    for x, y in zip(a.cross_attentions, b.cross_attentions):
        assert max_diff(x, y) <= TOL_TORCH_HF
