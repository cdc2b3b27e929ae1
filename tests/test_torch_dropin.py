"""gpt2_torch as a drop-in for transformers' GPT-2 in the code and tools people run it in (issue "Drop-in for real
code", the torch part): embedding resizing, activation checkpointing, head_mask, the config's output flags,
num_parameters, state dicts in transformers' layout, and transformers' Trainer and pipeline, peft LoRA and
accelerate on our models. Every check compares against transformers v5 on the same weights (or, for checkpointing,
against the same model without it). Tiny configs, no network."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch

from conftest import CONFIGS, TOL_TORCH_HF, make_config
from gpt2_core import naming, reference
import gpt2_torch

import transformers  # dev dependencies, installed in CI
import accelerate
import peft

transformers.logging.set_verbosity_error()
logging.getLogger("peft").setLevel(logging.ERROR)

CLASSES = naming.ARCHITECTURES


def max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


def pair(head: str = "lm", config_name: str = "default", seed: int = 0, **overrides):
    """(ours, transformers') models of `head` holding the same random weights: ours random, copied to transformers
    through the canonical dict and the Hub state dict (`gpt2_core.naming`, not the state-dict hooks under test)."""
    config = make_config(config_name, **overrides)
    torch.manual_seed(seed)
    ours = getattr(gpt2_torch, CLASSES[head])(config).eval()
    hf_config = transformers.GPT2Config(**config.to_dict(), attn_implementation="eager")
    hf = getattr(transformers, CLASSES[head])(hf_config).eval()
    hub = naming.to_hub_state_dict(ours.canonical_state_dict(), head)
    result = hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in hub.items()}, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) <= {"lm_head.weight"}
    return ours, hf


def ids_batch(config, B=2, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, config.vocab_size, (B, T), generator=g)


# -- resize_token_embeddings ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "config_name,new,pad_to,mean",
    [
        ("default", 103, None, True),  # grow, tied head, mean/covariance draw
        ("default", 103, None, False),  # grow, normal(0, initializer_range)
        ("default", 90, None, True),  # shrink
        ("default", 100, 8, True),  # pad_to_multiple_of -> 104
        ("untied", 103, None, True),  # an untied head is resized too
        ("untied", 103, None, False),
    ],
)
def test_resize_token_embeddings_matches_transformers(config_name, new, pad_to, mean):
    ours, hf = pair("lm", config_name)
    torch.manual_seed(5)
    a = ours.resize_token_embeddings(new, pad_to_multiple_of=pad_to, mean_resizing=mean)
    torch.manual_seed(5)
    b = hf.resize_token_embeddings(new, pad_to_multiple_of=pad_to, mean_resizing=mean)
    assert a is ours.get_input_embeddings() and a.num_embeddings == b.num_embeddings
    assert ours.config.vocab_size == hf.config.vocab_size == b.num_embeddings
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)  # the same draws, row for row
    torch.testing.assert_close(ours.lm_head.weight, hf.lm_head.weight, rtol=0, atol=0)
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == ours.config.tie_word_embeddings
    ids = torch.tensor([[1, 5, b.num_embeddings - 1, 3]])
    with torch.no_grad():
        assert max_diff(ours(ids).logits, hf(ids).logits) <= TOL_TORCH_HF
    # the canonical table follows the new vocabulary (save_pretrained keeps working)
    assert ours.canonical_state_dict()["wte.weight"].shape == (b.num_embeddings, ours.config.n_embd)


def test_resize_keeps_the_parameter_and_mean_fallback():
    """Fewer rows than n_embd: the covariance is singular and the new rows are exactly the mean (transformers)."""
    ours, hf = pair("lm", "default", vocab_size=20, bos_token_id=1, eos_token_id=1)
    param = ours.transformer.wte.weight
    ours.resize_token_embeddings(22)
    hf.resize_token_embeddings(22)
    assert ours.transformer.wte.weight is param  # optimizers and ties keep their reference
    torch.testing.assert_close(param[-2:], param[:20].mean(0).expand(2, -1), rtol=0, atol=1e-7)
    torch.testing.assert_close(param, hf.transformer.wte.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="new_num_tokens"):
        ours.resize_token_embeddings(0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        ours.resize_token_embeddings(30, pad_to_multiple_of=2.5)


def test_new_pad_token_recipe():
    """`tok.add_special_tokens({"pad_token": "[PAD]"}); model.resize_token_embeddings(len(tok))`, then a padded
    classifier batch, as with transformers."""
    from gpt2_core.tokenization import GPT2Tokenizer

    tok = GPT2Tokenizer()
    assert tok.add_special_tokens({"pad_token": "[PAD]"}) == 1
    config = gpt2_torch.GPT2Config(vocab_size=50257, n_positions=16, n_embd=8, n_layer=1, n_head=2, num_labels=3)
    model = gpt2_torch.GPT2ForSequenceClassification(config).eval()
    model.resize_token_embeddings(len(tok))
    model.config.pad_token_id = tok.pad_token_id
    assert tok.pad_token_id == 50257 and model.config.vocab_size == len(tok) == 50258
    batch = tok(["hello world", "hi"], padding=True, return_tensors="pt")
    assert int(batch["input_ids"][1, -1]) == tok.pad_token_id
    with torch.no_grad():
        logits = model(**batch).logits
        alone = model(input_ids=batch["input_ids"][1:, :1]).logits  # "hi" without its padding
    torch.testing.assert_close(logits[1], alone[0], rtol=0, atol=1e-5)


def test_embedding_accessors():
    ours, hf = pair("lm", "untied")
    assert ours.get_input_embeddings() is ours.transformer.wte
    assert ours.get_output_embeddings() is ours.lm_head
    assert ours.transformer.get_input_embeddings() is ours.transformer.wte
    new = torch.nn.Embedding(ours.config.vocab_size, ours.config.n_embd)
    ours.set_input_embeddings(new)
    assert ours.transformer.wte is new
    head = torch.nn.Linear(ours.config.n_embd, ours.config.vocab_size, bias=False)
    ours.set_output_embeddings(head)
    assert ours.lm_head is head
    seqcls = gpt2_torch.GPT2ForSequenceClassification(make_config())
    assert seqcls.get_output_embeddings() is None
    with pytest.raises(ValueError, match="no LM head"):
        seqcls.set_output_embeddings(head)


# -- num_parameters, config flags, head_mask --------------------------------------------------------------------------
@pytest.mark.parametrize("head,config_name", [("lm", "default"), ("lm", "untied"), ("seqcls", "default")])
def test_num_parameters_matches_transformers(head, config_name):
    ours, hf = pair(head, config_name)
    for m in (ours, hf):
        m.transformer.h[0].ln_1.weight.requires_grad_(False)
    for only_trainable in (False, True):
        for exclude_embeddings in (False, True):
            kw = dict(only_trainable=only_trainable, exclude_embeddings=exclude_embeddings)
            assert ours.num_parameters(**kw) == hf.num_parameters(**kw), kw


@pytest.mark.parametrize("flag", ["output_hidden_states", "output_attentions", "return_dict", "use_cache"])
def test_config_flags_are_honoured(flag):
    """A flag set on the config applies when the call leaves the argument out, as in transformers."""
    ours, hf = pair("lm")
    value = flag in ("output_hidden_states", "output_attentions")  # the non-default value
    setattr(ours.config, flag, value)
    ids = ids_batch(ours.config)
    with torch.no_grad():
        a = ours(ids)
        # transformers v5.24's GPT2LMHeadModel itself fails with config.return_dict=False (its body returns a
        # tuple it then reads .last_hidden_state from), so its oracle gets the flag as an argument
        b = hf(ids, **{flag: value})
    if flag == "return_dict":
        assert isinstance(a, tuple) and isinstance(b, tuple) and len(a) == len(b)
        assert max_diff(a[0], b[0]) <= TOL_TORCH_HF
        return
    if flag == "use_cache":
        assert a.past_key_values is None and b.past_key_values is None
        return
    got, want = getattr(a, flag.removeprefix("output_")), getattr(b, flag.removeprefix("output_"))
    assert got is not None and len(got) == len(want)
    for x, y in zip(got, want):
        assert max_diff(x, y) <= TOL_TORCH_HF
    with torch.no_grad():
        assert getattr(ours(ids, **{flag: False}), flag.removeprefix("output_")) is None  # the call wins


@pytest.mark.parametrize("shape", ["per_head", "per_layer"])
def test_head_mask_as_transformers_4(shape):
    """transformers 4.x multiplied each head's attention probabilities by head_mask; v5 dropped the argument.
    Oracle: scaling head h's output is scaling the rows of c_proj that read it, in transformers v5."""
    ours, hf = pair("lm")
    L, N, H = ours.config.n_layer, ours.config.n_head, ours.config.head_dim
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(N, generator=g) if shape == "per_head" else torch.rand(L, N, generator=g)
    mask[..., 1] = 0.0  # one head fully masked
    per_layer = mask.expand(L, N)
    ids = ids_batch(ours.config)
    with torch.no_grad():
        for layer in range(L):
            w = hf.transformer.h[layer].attn.c_proj.weight  # Conv1D [in, out]: rows are the heads' outputs
            w.mul_(per_layer[layer].repeat_interleave(H)[:, None])
        want = hf(ids, output_attentions=True)  # c_proj comes after the probabilities: they are unmasked here
        got = ours(ids, head_mask=mask, output_attentions=True)
    assert max_diff(got.logits, want.logits) <= TOL_TORCH_HF
    for layer in range(L):  # the returned attentions are the masked probabilities, as in 4.x
        expected = want.attentions[layer] * per_layer[layer][None, :, None, None]
        assert max_diff(got.attentions[layer], expected) <= TOL_TORCH_HF
    with pytest.raises(ValueError, match="head_mask"):
        ours(ids, head_mask=torch.ones(N + 1))


def test_prepare_inputs_for_generation_step():
    """A hand-written decoding loop in transformers' style (peft and custom loops call the hook): one step on the
    past gives transformers' next-token logits on the whole (left-padded) sequence."""
    ours, hf = pair("lm")
    ids = ids_batch(ours.config, B=2, T=6)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with torch.no_grad():
        past = ours(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True).past_key_values
        inputs = ours.prepare_inputs_for_generation(ids, past_key_values=past, attention_mask=mask, use_cache=True)
        assert inputs["input_ids"].shape == (2, 1)
        got = ours(**inputs).logits[:, -1]
        # transformers v5 does not derive positions from the mask: give it this library's rule (gpt2_core.reference)
        pos = torch.from_numpy(reference.position_ids_from_attention_mask(mask.numpy(), ids.shape[1]))
        want = hf(ids, attention_mask=mask, position_ids=pos).logits[:, -1]
    assert max_diff(got, want) <= TOL_TORCH_HF


# -- activation checkpointing -----------------------------------------------------------------------------------------
def _loss_and_grads(model, ids):
    model.zero_grad()
    torch.manual_seed(11)  # the same dropout masks in both runs
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t.numel()) or t, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, sum(packed)


def test_gradient_checkpointing_same_loss_and_gradients():
    config = make_config(n_layer=3, resid_pdrop=0.1, attn_pdrop=0.1, embd_pdrop=0.1)
    torch.manual_seed(0)
    model = gpt2_torch.GPT2LMHeadModel(config).train()
    ids = ids_batch(config, B=3, T=12)
    loss0, grads0, saved0 = _loss_and_grads(model, ids)
    assert not model.is_gradient_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.transformer.gradient_checkpointing
    loss1, grads1, saved1 = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss1, loss0, rtol=0, atol=0)
    for name, g in grads0.items():
        torch.testing.assert_close(grads1[name], g, rtol=1e-6, atol=1e-7, msg=name)
    assert saved1 < saved0 / 2  # far fewer activations kept for the backward pass
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    model.activation_checkpointing_enable(every_n_layers=2)  # transformers v5's name, blocks 0 and 2
    loss2, grads2, saved2 = _loss_and_grads(model, ids)
    torch.testing.assert_close(loss2, loss0, rtol=0, atol=0)
    assert saved1 < saved2 < saved0
    model.eval()  # checkpointing only applies in training, like transformers
    with torch.no_grad():
        assert model(ids).past_key_values is not None


# -- state dicts in transformers' layout ------------------------------------------------------------------------------
@pytest.mark.parametrize("head", list(CLASSES))
def test_state_dict_is_transformers_state_dict(head):
    """Same keys, shapes and values as transformers' state_dict; each loads into the other and gives the same
    outputs. A transposed square attn.c_proj would load without a shape error: the logits would catch it."""
    ours, hf = pair(head, add_cross_attention=head == "lm")
    a, b = ours.state_dict(), hf.state_dict()
    assert set(a) == set(b)  # (the order differs only with cross-attention: module order, not part of the format)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    fresh_ours = copy.deepcopy(ours)
    fresh_hf = copy.deepcopy(hf)
    with torch.no_grad():
        for p in list(fresh_ours.parameters()) + list(fresh_hf.parameters()):
            p.normal_()
    fresh_ours.load_state_dict(b)  # strict
    fresh_hf.load_state_dict(a)
    ids = ids_batch(ours.config)
    if head == "double":
        ids = ids[:, None, :]
    with torch.no_grad():
        want = hf(ids)
        for model in (fresh_ours, fresh_hf):
            got = model(ids)
            assert max_diff(got[0], want[0]) <= TOL_TORCH_HF


def test_state_dict_files_and_layout_errors(tmp_path):
    import safetensors.torch

    ours, hf = pair("lm")
    # torch.save(state_dict()) is a pytorch_model.bin transformers reads; safetensors takes it (no shared storage)
    torch.save(ours.state_dict(), tmp_path / "pytorch_model.bin")
    ours.config.save_pretrained(tmp_path)
    loaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager").eval()
    safetensors.torch.save_file(ours.state_dict(), tmp_path / "sd.safetensors")
    ids = ids_batch(ours.config)
    with torch.no_grad():
        assert max_diff(loaded(ids).logits, ours(ids).logits) <= TOL_TORCH_HF
    # transformers' saved files leave the tied head out; loading them strictly still works
    sd = hf.state_dict()
    del sd["lm_head.weight"]
    ours.load_state_dict(sd)
    # a dict in nn.Linear layout (not transformers') is refused by name, not loaded transposed
    bad = dict(hf.state_dict())
    bad["transformer.h.0.attn.c_attn.weight"] = bad["transformer.h.0.attn.c_attn.weight"].t()
    with pytest.raises(RuntimeError, match="Conv1D layout"):
        ours.load_state_dict(bad)


# -- the tools: Trainer, pipeline, peft, accelerate -------------------------------------------------------------------
class _Batch(torch.utils.data.Dataset):
    def __init__(self, rows):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


def _train(model, rows, tmp_path, **args):
    """Two Trainer steps on one full batch (every step sees the same examples); the logged losses."""
    arguments = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=len(rows), learning_rate=1e-2,
        logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True, **args,
    )
    trainer = transformers.Trainer(model=model, args=arguments, train_dataset=_Batch(rows))
    trainer.train()
    return trainer, [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


@pytest.mark.parametrize("head", ["lm", "seqcls"])
def test_trainer(head, tmp_path):
    import safetensors.torch

    config = make_config(num_labels=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = getattr(gpt2_torch, CLASSES[head])(config)
    ids = ids_batch(config, B=4, T=10)
    if head == "lm":
        rows = [{"input_ids": r, "labels": r} for r in ids]
    else:
        rows = [{"input_ids": r, "labels": torch.tensor(i % 3)} for i, r in enumerate(ids)]
    with torch.no_grad():
        batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
        first = model(**batch).loss.item()
    trainer, losses = _train(model, rows, tmp_path, activation_checkpointing=head == "lm")
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert losses[0] == pytest.approx(first, abs=1e-4)  # Trainer's loss is the model's loss
    assert losses[1] < losses[0]
    # the checkpoint Trainer writes (our state_dict, transformers' layout) loads back, here and in transformers
    trainer.save_model(str(tmp_path / "saved"))
    state = safetensors.torch.load_file(str(tmp_path / "saved" / "model.safetensors"))
    again = getattr(gpt2_torch, CLASSES[head])(config).eval()
    again.load_state_dict(state)
    hf = getattr(transformers, CLASSES[head])(transformers.GPT2Config(**config.to_dict())).eval()
    hf.load_state_dict(state)  # strict: the file is a transformers state dict (the tied head included)
    model.eval()
    with torch.no_grad():
        assert max_diff(again(**batch).logits, model(**batch).logits) == 0
        assert max_diff(hf(**batch).logits, model(**batch).logits) <= TOL_TORCH_HF


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    """transformers' GPT2TokenizerFast with the GPT-2 vocabulary (written by our tokenizer, no download)."""
    from gpt2_core.tokenization import GPT2Tokenizer

    directory = tmp_path_factory.mktemp("tokenizer")
    GPT2Tokenizer().save_pretrained(directory)
    return transformers.GPT2TokenizerFast.from_pretrained(str(directory))


def test_text_generation_pipeline(hf_tokenizer):
    config = gpt2_torch.GPT2Config(vocab_size=50257, n_positions=32, n_embd=16, n_layer=2, n_head=2)
    torch.manual_seed(0)
    ours = gpt2_torch.GPT2LMHeadModel(config).eval()
    hf_config = transformers.GPT2Config(**config.to_dict(), attn_implementation="eager")
    hf = transformers.GPT2LMHeadModel(hf_config).eval()
    hf.load_state_dict(ours.state_dict())
    prompts = ["Hello there, my name is", "The"]
    outs = {}
    for name, model in (("ours", ours), ("hf", hf)):
        generator = transformers.pipeline("text-generation", model=model, tokenizer=hf_tokenizer)
        outs[name] = [o[0]["generated_text"] for o in generator(prompts, max_new_tokens=8, do_sample=False)]
    assert outs["ours"] == outs["hf"]
    assert all(len(text) > len(p) for text, p in zip(outs["ours"], prompts))


@pytest.mark.filterwarnings("ignore:fan_in_fan_out:UserWarning", "ignore::FutureWarning")
def test_peft_lora_train_save_reload_merge(tmp_path):
    ours, hf = pair("lm")
    lora = peft.LoraConfig(task_type="CAUSAL_LM", target_modules=["c_attn", "mlp.c_proj"], r=4, lora_alpha=8,
                           lora_dropout=0.0)
    model = peft.get_peft_model(copy.deepcopy(ours), lora)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids = ids_batch(ours.config)
    model.train()
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    model.eval()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        assert max_diff(tuned, ours(ids).logits) > 1e-4  # the adapter changed something
        # the adapter file reloads on our model, and on transformers' model with the same weights (Conv1D there)
        reloaded = peft.PeftModel.from_pretrained(copy.deepcopy(ours), tmp_path / "adapter").eval()
        assert max_diff(reloaded(input_ids=ids).logits, tuned) <= TOL_TORCH_HF
        on_hf = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "adapter").eval()
        assert max_diff(on_hf(input_ids=ids).logits, tuned) <= TOL_TORCH_HF
        merged = model.merge_and_unload()
        assert isinstance(merged, gpt2_torch.GPT2LMHeadModel)
        assert max_diff(merged(ids).logits, tuned) <= TOL_TORCH_HF
        assert max_diff(on_hf.merge_and_unload()(ids).logits, tuned) <= TOL_TORCH_HF
    # the one-liner: peft's default GPT-2 targets (found through config.model_type) apply
    default = peft.get_peft_model(copy.deepcopy(ours), peft.LoraConfig(task_type="CAUSAL_LM"))
    assert any("attn.c_attn.lora_A" in n for n, _ in default.named_parameters())


def test_accelerate_prepare():
    config = make_config(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    model = gpt2_torch.GPT2LMHeadModel(config)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    accelerator = accelerate.Accelerator(cpu=True)
    prepared, optimizer = accelerator.prepare(model, optimizer)
    ids = ids_batch(config)
    losses = []
    for _ in range(2):
        loss = prepared(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    with torch.no_grad():
        assert losses[0] == pytest.approx(reference(ids, labels=ids).loss.item(), abs=1e-5)
    assert losses[1] < losses[0]
    unwrapped = accelerator.unwrap_model(prepared)
    assert isinstance(unwrapped, gpt2_torch.GPT2LMHeadModel)
    assert set(accelerator.get_state_dict(prepared)) == set(reference.state_dict())
