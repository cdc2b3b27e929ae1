"""gpt2_torch's fast paths against its reference paths and the oracles: fused attention (`attn_implementation=
"sdpa"`) against eager, transformers v5's sdpa and the float64 NumPy reference, with padding and the KV cache; the
compiled decode step (same tokens); bf16 / fp16 inference against the float64 reference (tolerances below); weight-only
int8 against fp32 (held-out loss of the shipped model within 0.02 nats)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from conftest import CONFIGS, SAMPLE_CORPUS, TOL, TOL_TORCH_HF, make_config, padded_batch
from gpt2_core import GPT2Tokenizer, reference
from gpt2_torch import GPT2LMHeadModel, GPT2Model, KVCache
from gpt2_torch.model import attention_implementation
from gpt2_torch.quantize import Int8Embedding, Int8Linear, quantize_int8

import transformers  # a dev dependency: installed in CI

transformers.logging.set_verbosity_error()

# Max abs difference of the logits against the float64 reference, relative to the reference logits' max abs value,
# for the tiny configs below (measured: bf16 about 1e-2, fp16 about 1.5e-3): bf16 keeps 8 significant bits,
# fp16 11; the residual stream, the weights and the cache are in that dtype, LayerNorm and softmax accumulate in fp32.
TOL_REL = {torch.bfloat16: 4e-2, torch.float16: 6e-3}
INT8_MAX_LOSS_GAP = 0.02  # nats, the bound


def _model(cls, config_name: str = "default", seed: int = 0, **overrides):
    return cls.from_config(make_config(config_name, **overrides), seed=seed).eval()


def _canonical(model) -> dict:
    return {k.removeprefix("transformer."): v for k, v in model.canonical_state_dict().items()}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


# --- attention implementations ------------------------------------------------------------------------------------


def test_default_is_sdpa_and_explicit_choice_wins():
    config = make_config()
    assert attention_implementation(config) == "sdpa"  # transformers v5's default
    assert attention_implementation(config, output_attentions=True) == "eager"
    assert attention_implementation(config, head_mask=torch.ones(4)) == "eager"
    assert attention_implementation(make_config(attn_implementation="eager")) == "eager"
    model = _model(GPT2Model)
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match="attn_implementation='flash'"):
        model.set_attn_implementation("flash")


@pytest.mark.parametrize("config_name", ["default", "mistral"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("use_cache", [False, True])
def test_sdpa_matches_eager_and_reference(config_name, side, use_cache):
    model = _model(GPT2Model, config_name)
    ids, mask = padded_batch(model.config, side)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    out = {}
    for impl in ("eager", "sdpa"):
        model.set_attn_implementation(impl)
        with torch.no_grad():
            out[impl] = model(ids_t, attention_mask=mask_t, use_cache=use_cache).last_hidden_state
    ref = reference.forward(_canonical(model), model.config, ids, attention_mask=mask)["last_hidden_state"]
    # every position, padding ones included: the sdpa bias reproduces the reference's fills exactly
    assert _max_diff(out["sdpa"], out["eager"]) <= TOL_TORCH_HF
    assert _max_diff(out["sdpa"], torch.from_numpy(ref)) <= TOL


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_sdpa_kv_cache_matches_full_forward(impl):
    """Prefill into a preallocated KVCache, then one token at a time with the whole-buffer mask."""
    model = _model(GPT2LMHeadModel)
    model.set_attn_implementation(impl)
    ids, mask = padded_batch(model.config, "left")
    ids_t = torch.from_numpy(ids)
    B, T = ids.shape
    extra = torch.randint(1, 90, (B, 3))
    full_ids = torch.cat([ids_t, extra], 1)
    full_mask = torch.cat([torch.from_numpy(mask), torch.ones(B, 3, dtype=torch.long)], 1)
    S = T + 3
    with torch.no_grad():
        full = model(full_ids, attention_mask=full_mask, use_cache=False).logits  # (B, S, V)
        cache = KVCache.init(model.config, B, S)
        buffer_mask = full_mask
        logits, cache = model._decode_step(ids_t, cache, buffer_mask, check_inputs=True)
        steps = [logits]
        for j in range(3):
            logits, cache = model._decode_step(extra[:, j : j + 1], cache, buffer_mask, check_inputs=True)
            steps.append(logits)
    assert int(cache.length) == S
    for j, logits in enumerate(steps):
        assert _max_diff(logits, full[:, T - 1 + j]) <= TOL_TORCH_HF


def test_sdpa_matches_transformers_sdpa(tmp_path):
    """Same weights in transformers v5 with its sdpa: right padding (transformers' forward gives left-padded rows
    other position ids), a legacy past, all at the fp32 tolerance against transformers."""
    model = _model(GPT2LMHeadModel, seed=3)
    model.set_attn_implementation("sdpa")
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    ids, mask = (torch.from_numpy(a) for a in padded_batch(model.config, "right"))
    with torch.no_grad():
        ours, theirs = model(ids, attention_mask=mask), hf(ids, attention_mask=mask)
        assert _max_diff(ours.logits, theirs.logits) <= TOL_TORCH_HF
        # one more token on top of the (legacy tuple) past, as transformers' generate feeds it
        nxt = torch.tensor([[5], [6], [7]])
        mask2 = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        ours2 = model(nxt, past_key_values=ours.past_key_values, attention_mask=mask2).logits
        theirs2 = hf(nxt, past_key_values=theirs.past_key_values, attention_mask=mask2).logits
    assert _max_diff(ours2, theirs2) <= TOL_TORCH_HF


def test_output_attentions_and_head_mask_fall_back_to_eager():
    model = _model(GPT2Model)
    ids = torch.randint(1, 90, (2, 6))
    head_mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with torch.no_grad():
        model.set_attn_implementation("sdpa")
        sdpa = model(ids, output_attentions=True, head_mask=head_mask)
        model.set_attn_implementation("eager")
        eager = model(ids, output_attentions=True, head_mask=head_mask)
    assert sdpa.attentions is not None and len(sdpa.attentions) == model.config.n_layer
    for a, b in zip(sdpa.attentions, eager.attentions):
        assert torch.equal(a, b)
    assert torch.equal(sdpa.last_hidden_state, eager.last_hidden_state)


def test_from_pretrained_attn_implementation(tmp_path):
    _model(GPT2LMHeadModel).save_pretrained(tmp_path)
    eager = GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager")
    assert eager.config._attn_implementation == "eager"
    assert "_attn_implementation" not in eager.config.to_dict()
    default = GPT2LMHeadModel.from_pretrained(tmp_path)
    assert attention_implementation(default.config) == "sdpa"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="flash_attention_2")


# --- compiled decode step ----------------------------------------------------------------------------------------


def test_compiled_decode_step_same_tokens(caplog):
    """transformers' switch: cache_implementation="static" + a compile_config; on CPU only with
    `_compile_all_devices`. fullgraph=True: the step has no graph break (dynamo's "eager" backend keeps the test
    fast; inductor compiles the same graph)."""
    model = _model(GPT2LMHeadModel, n_layer=1)
    ids, mask = (torch.from_numpy(a) for a in padded_batch(model.config, "left"))
    ref = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[])
    compile_config = {"backend": "eager", "fullgraph": True, "mode": None, "_compile_all_devices": True}
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[],
                         cache_implementation="static", compile_config=compile_config)
    assert torch.equal(out, ref)
    assert len(model._compiled_decode_steps) == 1
    # on the CPU without _compile_all_devices nothing is compiled (transformers' rule), with a warning
    model.generation_config.extra["cache_implementation"] = "static"
    with caplog.at_level(logging.WARNING, logger="gpt2_torch.generation"):
        again = model.generate(ids, attention_mask=mask, max_new_tokens=8, eos_token_id=[],
                               compile_config={"backend": "eager"})
    assert torch.equal(again, ref)
    assert "not compiled" in caplog.text and len(model._compiled_decode_steps) == 1
    with pytest.raises(ValueError, match="cache_implementation='paged'"):
        model.generate(ids, max_new_tokens=2, cache_implementation="paged")


# --- bf16 / fp16 -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config_name", ["default", "mistral"])
@pytest.mark.parametrize("impl", ["eager", "sdpa"])
def test_half_precision_against_float64_reference(dtype, config_name, impl):
    model = _model(GPT2LMHeadModel, config_name, seed=1)
    canonical = _canonical(model)
    model = model.to(dtype)
    model.set_attn_implementation(impl)
    ids, mask = padded_batch(model.config, "right")
    with torch.no_grad():
        out = model(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    assert out.logits.dtype == dtype and out.past_key_values[0][0].dtype == dtype  # weights and cache in that dtype
    hidden = reference.forward(canonical, model.config, ids, attention_mask=mask)["last_hidden_state"]
    ref = reference.lm_logits(canonical, model.config, hidden)
    keep = torch.from_numpy(mask).bool()  # real tokens (the padding rows of fp16 sdpa are not the reference's)
    err = _max_diff(out.logits[keep], torch.from_numpy(ref)[keep])
    assert err <= TOL_REL[dtype] * np.abs(ref).max(), (err, np.abs(ref).max())


def test_bf16_generate_uses_bf16_cache_and_agrees_on_first_tokens():
    model = _model(GPT2LMHeadModel, seed=2)
    ids = torch.randint(1, 90, (2, 6))
    fp32 = model.generate(ids, max_new_tokens=4, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    model = model.to(torch.bfloat16)
    bf16 = model.generate(ids, max_new_tokens=4, eos_token_id=[], return_dict_in_generate=True, output_logits=True)
    # the first step's logits (prefill) within the bf16 tolerance of fp32's
    scale = fp32.logits[0].abs().max().item()
    assert _max_diff(bf16.logits[0], fp32.logits[0]) <= TOL_REL[torch.bfloat16] * scale


# --- int8 --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["dynamic", "int8pack"])
def test_int8_close_to_fp32_and_tied_head_shared(kernel):
    model = _model(GPT2LMHeadModel, seed=4)
    ids = torch.randint(1, 90, (2, 8))
    with torch.no_grad():
        ref = model(ids).logits
        q = quantize_int8(_model(GPT2LMHeadModel, seed=4), kernel=kernel)
        out = q(ids).logits
    assert isinstance(q.lm_head, Int8Linear) and isinstance(q.transformer.h[0].mlp.c_fc, Int8Linear)
    assert isinstance(q.transformer.wte, Int8Embedding) and q.transformer.wte.head[0] is q.lm_head  # one matrix
    # weight error <= scale / 2 per entry; the logits within a few percent of their range
    assert _max_diff(out, ref) <= 0.05 * ref.abs().max().item()
    assert torch.equal(q.generate(ids, max_new_tokens=3, eos_token_id=[])[:, :8], ids)
    with pytest.raises(ValueError, match="already quantized"):
        quantize_int8(q)


def test_int8_save_and_bad_values(tmp_path):
    _model(GPT2LMHeadModel).save_pretrained(tmp_path / "fp32")
    q = GPT2LMHeadModel.from_pretrained(tmp_path / "fp32", quantize="int8")
    assert q.quantization_config["bits"] == 8
    q.save_pretrained(tmp_path / "int8")  # the int8 format (tests/test_quantized_checkpoint.py checks it)
    with pytest.raises(ValueError, match="quantize='int4'"):
        GPT2LMHeadModel.from_pretrained(tmp_path / "fp32", quantize="int4")


def test_int8_held_out_loss_of_the_shipped_model():
    from gpt2_apps.cli import DEFAULT_MODEL_DIR

    ids = GPT2Tokenizer().encode((SAMPLE_CORPUS / "othello.txt").read_text())
    blocks = torch.tensor(ids[: 4 * 128]).reshape(4, 128)
    model = GPT2LMHeadModel.from_pretrained(DEFAULT_MODEL_DIR)
    with torch.no_grad():
        fp32 = float(model(blocks, labels=blocks).loss)
        int8 = float(quantize_int8(model)(blocks, labels=blocks).loss)
    assert abs(int8 - fp32) <= INT8_MAX_LOSS_GAP, (int8, fp32)
