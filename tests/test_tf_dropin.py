"""gpt2_tf as a drop-in for transformers 4.x TF / Keras code (issue 11): Keras serialization (`model.save` /
`keras.saving.load_model`, `model.export`), `fit` with compiled metrics and labels in `x` or `y`, 4.x list / dict
inputs, `TFGPT2Tokenizer` in graph mode without `max_length` and its config, `from_pretrained` dtype / loading info.

Oracles: `gpt2_core.reference` (float64 NumPy) for outputs and losses, `gpt2_core`'s GPT2Tokenizer for token ids,
transformers v5 (PyTorch) for the loading info of a checkpoint.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TOL, make_config, padded_batch
from gpt2_core import reference

import tensorflow as tf
import backend_tf  # noqa: F401  (full fp32 matmul precision)
import keras
from gpt2_tf.model import MODEL_CLASSES, TFGPT2ForSequenceClassification, TFGPT2LMHeadModel, _keras_dtype
from gpt2_tf.tokenizer import TFGPT2Tokenizer


def _ref_logits(model, head, ids, mask):
    """The float64 reference of `head`'s main output on the model's own weights."""
    params, config = model.canonical_state_dict(), model.config
    hidden = reference.forward(params, config, ids, attention_mask=mask)["last_hidden_state"]
    if head == "lm":
        return reference.lm_logits(params, config, hidden)
    last = reference.last_non_pad_index(ids, config.pad_token_id, ids.shape[1])
    return (hidden @ params["score.weight"].T)[np.arange(len(ids)), last]  # score.weight is (L, C), Hub layout


# -- Keras serialization -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["base", "lm", "double", "qa", "seqcls", "tokcls"])
def test_keras_save_load_round_trips(head, tmp_path):
    config = make_config("untied" if head == "lm" else "default", num_labels=3)
    model = MODEL_CLASSES[head](config, seed=0)
    model.generation_config.max_new_tokens = 7
    ids, mask = padded_batch(config, "right")
    if head == "double":
        ids, mask = ids[:, None, :], mask[:, None, :]
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the classes are registered

    assert type(loaded) is type(model) and loaded.config == model.config
    assert loaded.generation_config.max_new_tokens == 7
    ours, theirs = model.canonical_state_dict(), loaded.canonical_state_dict()
    assert sorted(ours) == sorted(theirs) and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    field = {"qa": "start_logits", "base": "last_hidden_state"}.get(head, "logits")
    expected = model(input_ids=ids, attention_mask=mask)[field].numpy()
    assert np.array_equal(loaded(input_ids=ids, attention_mask=mask)[field].numpy(), expected)


def test_keras_save_load_keeps_dtype_and_layers_serialize(tmp_path):
    config = make_config("default")
    model = TFGPT2LMHeadModel(config, seed=0, dtype="bfloat16")
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.dtype_policy.name == "bfloat16" and loaded.transformer.h[0].attn.c_attn.kernel.dtype == "bfloat16"
    ids = np.array([[5, 6, 7]])
    assert np.array_equal(loaded(ids).logits.numpy(), model(ids).logits.numpy())
    # the inner layers serialize too (registered, config complete)
    block = model.transformer.h[1]
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(block))
    assert type(again) is type(block) and again.layer_idx == 1 and again.config == config


def test_export_serves_the_same_logits(tmp_path):
    head = "lm"
    config = make_config("default")
    model = MODEL_CLASSES[head](config, seed=0)
    model.export(tmp_path / "exported", verbose=False)  # no call needed first
    ids, mask = padded_batch(config, "right")
    reloaded = tf.saved_model.load(str(tmp_path / "exported"))  # keep it: the endpoint uses its variables
    served = reloaded.serve(
        {"input_ids": tf.constant(ids, tf.int32), "attention_mask": tf.constant(mask, tf.int32)}
    )["logits"].numpy()
    assert np.max(np.abs(served - model(input_ids=ids, attention_mask=mask).logits.numpy())) <= 1e-5
    assert np.max(np.abs(served - _ref_logits(model, head, ids, mask))) <= TOL


# -- fit: compiled metrics, labels in x or y ---------------------------------------------------------------------------


def _classification_data(config):
    rng = np.random.default_rng(0)
    ids = rng.integers(1, config.vocab_size - 1, (8, 6))
    return ids, rng.integers(0, config.num_labels, 8)


def test_fit_with_metrics_and_labels_in_x_or_y():
    config = make_config("default", num_labels=3)
    ids, y = _classification_data(config)
    seen = []

    def mean_max_logit(y_true, y_pred):  # a custom metric: gets the labels and the pooled logits
        seen.append((tuple(y_true.shape), tuple(y_pred.shape)))
        return tf.reduce_mean(tf.reduce_max(y_pred, axis=-1))

    model = TFGPT2ForSequenceClassification(config, seed=0)
    # no loss: the model's own; jit_compile=False only to keep the test fast (XLA compiles take seconds on CPU)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=["accuracy", mean_max_logit], jit_compile=False)
    history = model.fit(ids, {"labels": y}, batch_size=8, epochs=2, verbose=0).history  # labels as y, by name
    assert set(history) == {"loss", "accuracy", "mean_max_logit"} and history["loss"][1] < history["loss"][0]

    # evaluate (the same input rules as fit) on one batch: the reference's loss and accuracy on the trained weights
    pooled = _ref_logits(model, "seqcls", ids, None)
    for x, labels in (({"input_ids": ids, "labels": y}, None), ({"input_ids": ids}, y)):  # labels in x; y a tensor
        result = model.evaluate(x, labels, batch_size=8, verbose=0, return_dict=True)
        assert abs(result["loss"] - reference.sequence_classification_loss(config, pooled, y)) <= TOL
        assert result["accuracy"] == pytest.approx(np.mean(np.argmax(pooled, -1) == y))
        assert abs(result["mean_max_logit"] - np.mean(np.max(pooled, -1))) <= TOL
    assert seen and all(s == ((8,), (8, 3)) for s in seen)


def test_keras_loss_and_qa_labels_as_y():
    config = make_config("default")
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 96, (4, 6))
    starts, ends = rng.integers(0, 6, 4), rng.integers(0, 6, 4)
    qa = MODEL_CLASSES["qa"](config, seed=0)
    qa.compile(optimizer="adam", jit_compile=False)  # the model's own QA loss, labels given as y by name
    result = qa.evaluate(ids, {"start_positions": starts, "end_positions": ends}, verbose=0, return_dict=True)
    out = qa(input_ids=ids)
    expected = reference.qa_loss(out.start_logits.numpy(), out.end_logits.numpy(), starts, ends)
    assert abs(result["loss"] - expected) <= TOL

    lm = TFGPT2LMHeadModel(config, seed=0)  # a Keras loss and metric on `logits`, labels as {"labels": ...}
    lm.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        jit_compile=False,
    )
    result = lm.evaluate(ids, {"labels": ids}, verbose=0, return_dict=True)
    logits = _ref_logits(lm, "lm", ids, None)  # (B, T, V), unshifted: a Keras loss sees the logits as they are
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert abs(result["loss"] + np.mean(np.take_along_axis(logp, ids[..., None], -1))) <= TOL
    assert result["acc"] == pytest.approx(np.mean(np.argmax(logits, -1) == ids))


# -- 4.x input forms ---------------------------------------------------------------------------------------------------


def test_list_and_dict_inputs_follow_the_4x_order():
    config = make_config("default", num_labels=3)
    lm = TFGPT2LMHeadModel(config, seed=0)
    ids, mask = padded_batch(config, "right")
    expected = _ref_logits(lm, "lm", ids, mask)
    forms = ([ids, None, mask], (tf.constant(ids), None, tf.constant(mask)), {"input_ids": ids, "attention_mask": mask})
    for inputs in forms:
        assert np.max(np.abs(lm(inputs).logits.numpy() - expected)) <= TOL
    # past_key_values second, as in 4.x: the cached continuation equals the full forward
    first = lm([ids[:, :4], None, mask[:, :4]], use_cache=True)
    rest = lm([ids[:, 4:], first.past_key_values, mask])
    assert np.max(np.abs(rest.logits.numpy() - expected[:, 4:])) <= TOL

    clf = TFGPT2ForSequenceClassification(config, seed=0)
    y = np.array([0, 2, 1])
    #   input_ids, past, mask, token_type_ids, position_ids, head_mask, inputs_embeds, use_cache, output_attentions,
    #   output_hidden_states, return_dict, labels (transformers 4.x TFGPT2ForSequenceClassification.call)
    out = clf([ids, None, mask, None, None, None, None, None, None, None, None, y])
    pooled = _ref_logits(clf, "seqcls", ids, mask)
    assert abs(float(out.loss) - reference.sequence_classification_loss(config, pooled, y)) <= TOL
    head_mask = np.array([[1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0]], np.float32)  # list position 5 (4.x)
    assert np.array_equal(
        clf([ids, None, mask, None, None, head_mask]).logits.numpy(),
        clf(input_ids=ids, attention_mask=mask, head_mask=head_mask).logits.numpy(),
    )
    with pytest.raises(ValueError, match="head_mask must have shape"):
        clf([ids, None, mask, None, None, np.ones((3, 4))])


# -- TFGPT2Tokenizer ---------------------------------------------------------------------------------------------------

TEXTS = ["the other brother", "there the  bother:", "he"]


@pytest.fixture(scope="module")
def tokenizers():
    """A small custom BPE (the 256 byte tokens, a few merges, <|endoftext|>): gpt2_core's tokenizer and its twin."""
    from gpt2_core.tokenization import GPT2Tokenizer, bytes_to_unicode

    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "b"), ("e", "r"), ("t", "he")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    oracle = GPT2Tokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>")
    return oracle, TFGPT2Tokenizer.from_tokenizer(oracle)


def test_tokenizer_in_graph_without_max_length(tokenizers, tmp_path):
    oracle, tok = tokenizers
    expected = oracle(TEXTS, padding=True, return_tensors="np")
    spec = tf.TensorSpec([None], tf.string)  # batch size unknown at trace time

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.tok = tok

        @tf.function(input_signature=[spec])
        def encode(self, texts):
            return self.tok(texts)

    module = Module()
    for got in (tok(TEXTS), module.encode(tf.constant(TEXTS))):  # eager, then graph (padded to the longest)
        assert got["input_ids"].numpy().tolist() == expected["input_ids"].tolist()
        assert got["attention_mask"].numpy().tolist() == expected["attention_mask"].tolist()
    tf.saved_model.save(module, str(tmp_path / "tok"))  # a SavedModel signature
    served = tf.saved_model.load(str(tmp_path / "tok")).encode(tf.constant(TEXTS))
    assert served["input_ids"].numpy().tolist() == expected["input_ids"].tolist()

    one = tok(TEXTS[0])  # a scalar string -> (L,)
    assert one["input_ids"].numpy().tolist() == oracle.encode(TEXTS[0])
    ds = tf.data.Dataset.from_tensor_slices(TEXTS)  # one scalar string per element, in graph mode
    assert [e["input_ids"].numpy().tolist() for e in ds.map(tok)] == [oracle.encode(t) for t in TEXTS]


def test_tokenizer_config_carries_the_vocabulary(tokenizers):
    base, _ = tokenizers
    from gpt2_core.tokenization import GPT2Tokenizer

    oracle = GPT2Tokenizer(vocab=base.get_vocab(), merges=base.merges)
    oracle.add_special_tokens({"additional_special_tokens": ["<sep>"]})  # an added token, not in vocab.json
    tok = TFGPT2Tokenizer.from_tokenizer(oracle)
    again = TFGPT2Tokenizer.from_config(tok.get_config())
    also = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(tok))
    text = "the other<sep> brother<|endoftext|> the"
    for t in (tok, again, also):
        assert t.tokenize(text).numpy().tolist() == oracle.encode(text)
    assert again.get_config()["vocab"] == oracle.get_vocab()


# -- from_pretrained ---------------------------------------------------------------------------------------------------


def test_from_pretrained_dtype_and_loading_info(tmp_path):
    config = make_config("default")
    TFGPT2LMHeadModel(config, seed=0, dtype="bfloat16").save_pretrained(tmp_path / "bf16")
    assert TFGPT2LMHeadModel.from_pretrained(tmp_path / "bf16", dtype="auto").dtype_policy.name == "bfloat16"
    assert TFGPT2LMHeadModel.from_pretrained(tmp_path / "bf16").dtype_policy.name == "float32"
    assert TFGPT2LMHeadModel.from_pretrained(tmp_path / "bf16", torch_dtype="float16").dtype_policy.name == "float16"
    assert [_keras_dtype(d) for d in (tf.float16, np.float16, "torch.bfloat16")] == ["float16", "float16", "bfloat16"]

    TFGPT2LMHeadModel(config, seed=0).save_pretrained(tmp_path / "lm")
    model, info = TFGPT2ForSequenceClassification.from_pretrained(
        tmp_path / "lm", num_labels=3, output_loading_info=True, from_pt=True
    )
    assert model.config.num_labels == 3 and tuple(model.score.kernel.shape) == (config.n_embd, 3)
    import transformers

    hf, hf_info = transformers.GPT2ForSequenceClassification.from_pretrained(
        tmp_path / "lm", num_labels=3, output_loading_info=True
    )
    assert set(info["missing_keys"]) == set(hf_info["missing_keys"])
    assert np.array_equal(model.transformer.wte.embeddings.numpy(), hf.transformer.wte.weight.detach().numpy())


# -- resize_token_embeddings, embedding accessors (against gpt2_torch on the same weights) -----------------------------


def _torch_twin(model):
    """gpt2_torch's class of the same head, holding the TF model's weights."""
    import torch  # noqa: F401
    from gpt2_torch.model import MODEL_CLASSES as TORCH_CLASSES

    twin = TORCH_CLASSES[model.head](model.config.copy())
    twin.load_canonical(model.canonical_state_dict())
    return twin.eval()


def _main_output(out):
    for field in ("logits", "start_logits", "last_hidden_state"):
        if field in out:
            return out[field]


@pytest.mark.parametrize("head", ["base", "lm", "double", "qa", "seqcls", "tokcls"])
def test_resize_token_embeddings_follows_torch(head, tmp_path):
    import torch

    config = make_config("untied" if head == "lm" else "default", num_labels=3)
    model = MODEL_CLASSES[head](config, seed=0)
    twin = _torch_twin(model)
    ids, mask = padded_batch(config, "right")
    if head == "double":
        ids, mask = ids[:, None, :], mask[:, None, :]
    before = _main_output(model(input_ids=ids, attention_mask=mask)).numpy()
    V = config.vocab_size

    n = V + 5  # 102 -> 104 with pad_to_multiple_of=8
    wte = model.resize_token_embeddings(n, pad_to_multiple_of=8)
    twin.resize_token_embeddings(n, pad_to_multiple_of=8)
    assert wte is model.get_input_embeddings() and tuple(wte.embeddings.shape) == (104, config.n_embd)
    assert model.config.vocab_size == twin.config.vocab_size == 104
    ours, theirs = model.canonical_state_dict(), {k: v.detach().numpy() for k, v in twin.state_dict().items()}
    for key in ("transformer.wte.weight", "lm_head.weight"):
        if key in ours:  # old rows kept; new rows: the old rows' mean (up to 1e-9 * covariance noise), as torch
            assert np.array_equal(ours[key][:V], theirs[key][:V])
            assert np.max(np.abs(ours[key][V:] - ours[key][:V].mean(0))) <= 1e-5
            assert np.max(np.abs(ours[key][V:] - theirs[key][V:])) <= 1e-5
    after = _main_output(model(input_ids=ids, attention_mask=mask)).numpy()
    with torch.no_grad():
        torch_out = _main_output(twin(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))).numpy()
    assert np.max(np.abs(after - torch_out)) <= TOL
    if head in ("lm", "double"):  # logits of the old tokens unchanged, new columns appended
        assert np.max(np.abs(after[..., :V] - before)) <= 1e-5 and after.shape[-1] == 104
    else:
        assert np.max(np.abs(after - before)) <= 1e-5
    model(input_ids=np.full_like(ids, 103))  # the new ids are valid now

    if head != "lm":
        return
    model.save_pretrained(tmp_path / "resized")
    again = type(model).from_pretrained(tmp_path / "resized")
    assert again.config.vocab_size == 104 and np.array_equal(again.get_input_embeddings().embeddings.numpy(),
                                                            wte.embeddings.numpy())
    assert model.num_parameters() == twin.num_parameters() == again.num_parameters()


def test_resize_rules_and_accessors(tmp_path):
    config = make_config("default")
    model = TFGPT2LMHeadModel(config, seed=0)
    assert model.get_output_embeddings() is model.get_input_embeddings()  # tied: the head is wte (4.x TF)
    keras.utils.set_random_seed(3)
    V = config.vocab_size
    model.resize_token_embeddings(V + 2000, mean_resizing=False)  # normal(0, initializer_range)
    new = model.get_input_embeddings().embeddings.numpy()[V:]
    assert abs(new.mean()) < 0.002 and abs(new.std() - config.initializer_range) < 0.001
    model.resize_token_embeddings(50)  # shrinking keeps the first rows
    assert model.config.vocab_size == 50 and model(np.array([[1, 49]])).logits.shape == (1, 2, 50)
    assert model.resize_token_embeddings(None).embeddings.shape[0] == 50
    with pytest.raises(ValueError, match="new_num_tokens must be a positive integer"):
        model.resize_token_embeddings(0)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        model.resize_token_embeddings(60, pad_to_multiple_of=0)
    # a fitted model trains again after a resize (compile again: the optimizer tracked the old variables)
    model.compile(optimizer="adam", jit_compile=False)
    data = np.random.default_rng(0).integers(0, 50, (4, 6))
    model.fit({"input_ids": data, "labels": data}, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    assert keras.saving.load_model(tmp_path / "m.keras").config.vocab_size == 50

    embedding = keras.layers.Embedding(60, config.n_embd)
    embedding.build()
    model.set_input_embeddings(embedding)
    assert model.config.vocab_size == 60 and model(np.array([[59]])).logits.shape == (1, 1, 60)
    assert TFGPT2ForSequenceClassification(make_config("default"), seed=0).get_output_embeddings() is None
    with pytest.raises(ValueError, match="keras.layers.Embedding"):
        model.set_input_embeddings(keras.layers.Dense(3))


# -- gradient checkpointing --------------------------------------------------------------------------------------------


def _loss_and_grads(model, ids, step):
    """(loss, gradients) of one training step from the same dropout seeds (put back afterwards)."""
    from gpt2_tf.model import _seed_generators

    generators = _seed_generators(model)
    seeds = [g.state.numpy().copy() for g in generators]
    loss, grads = step()
    for g, s in zip(generators, seeds):
        g.state.assign(s)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in grads]


def test_gradient_checkpointing_same_loss_and_gradients(monkeypatch):
    from gpt2_tf.model import TFGPT2Block

    config = make_config("default", attn_pdrop=0.2, resid_pdrop=0.2, embd_pdrop=0.2)  # dropout on: same masks
    model = TFGPT2LMHeadModel(config, seed=0)
    ids = np.random.default_rng(0).integers(0, config.vocab_size, (2, 8))
    calls = []
    block_call = TFGPT2Block.call
    monkeypatch.setattr(TFGPT2Block, "call", lambda self, *a, **k: calls.append(1) or block_call(self, *a, **k))

    def eager():
        with tf.GradientTape() as tape:
            loss = model(input_ids=ids, labels=ids, training=True).loss
        return loss, tape.gradient(loss, model.trainable_variables)

    plain = _loss_and_grads(model, ids, eager)
    assert len(calls) == config.n_layer
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and model.transformer.gradient_checkpointing
    calls.clear()
    loss, grads = _loss_and_grads(model, ids, eager)
    assert abs(loss - plain[0]) <= 1e-5
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(grads, plain[1])) <= 1e-5
    assert len(calls) == 2 * config.n_layer  # each block again in the backward pass: recomputed, not kept
    assert model(input_ids=ids, training=True).past_key_values is None  # use_cache off while training, as HF
    assert model(input_ids=ids).past_key_values is not None  # inference is untouched
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing
    with pytest.raises(ValueError, match="tf.recompute_grad takes no options"):
        model.gradient_checkpointing_enable({"use_reentrant": False})


# -- head_mask (transformers 4.x) against gpt2_torch -------------------------------------------------------------------


@pytest.mark.parametrize("head", ["lm", "seqcls"])
def test_head_mask_matches_torch(head):
    import torch

    config = make_config("default", num_labels=3)
    model = MODEL_CLASSES[head](config, seed=0)
    twin = _torch_twin(model)
    ids, mask = padded_batch(config, "left")
    for head_mask in (np.array([1.0, 0.0, 1.0, 0.5], np.float32), np.array([[0, 1, 1, 1], [1, 1, 0, 0]], np.float32)):
        ours = model(input_ids=ids, attention_mask=mask, head_mask=head_mask, output_attentions=True)
        with torch.no_grad():
            theirs = twin(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask),
                          head_mask=torch.as_tensor(head_mask), output_attentions=True)
        assert np.max(np.abs(ours.logits.numpy() - theirs.logits.numpy())) <= TOL
        for a, b in zip(ours.attentions, theirs.attentions):  # the masked probabilities, as 4.x returned them
            assert np.max(np.abs(a.numpy() - b.numpy())) <= TOL
    unmasked = model(input_ids=ids, attention_mask=mask).logits.numpy()
    assert np.max(np.abs(ours.logits.numpy() - unmasked)) > 1e-3  # it does something


# -- generate inside the caller's tf.function(jit_compile=True) --------------------------------------------------------


def test_generate_inside_tf_function_jit_compile():
    config = make_config("default")
    model = TFGPT2LMHeadModel(config, seed=0)
    ids, mask = padded_batch(config, "left")
    N = 6
    traced = tf.function(model.generate, jit_compile=True)  # transformers 4.x TF's XLA recipe

    def padded(eager):  # 4.x XLA generate's result: every row T + max_new_tokens, the pad id after the end
        eager = eager.numpy()
        full = np.full((len(eager), ids.shape[1] + N), config.pad_token_id, eager.dtype)
        full[:, : eager.shape[1]] = eager
        return full

    free = model.generate(ids, attention_mask=mask, max_new_tokens=N).numpy()
    eos = sorted({int(t) for t in free[:, ids.shape[1] + 1]})  # each row's step-2 token: every row stops by then
    # (sampling with seed=[a, b] and beam search go through the same code; tried by hand, left out for CI time)
    eager = model.generate(ids, attention_mask=mask, max_new_tokens=N, eos_token_id=eos)
    got = traced(tf.constant(ids), attention_mask=tf.constant(mask), max_new_tokens=N, eos_token_id=eos)
    assert eager.shape[1] <= ids.shape[1] + 2 and got.shape == (len(ids), ids.shape[1] + N)
    assert got.dtype == tf.int64
    np.testing.assert_array_equal(got.numpy(), padded(eager))  # the columns eager generate cut: pad_token_id
    with pytest.raises(ValueError, match="stop_strings"):
        traced(tf.constant(ids), max_new_tokens=N, stop_strings=["x"])


# -- bad ids (issue 12): eager errors, NaN inside a graph --------------------------------------------------------------


def test_bad_ids_raise_eagerly_and_give_nan_in_graphs():
    config = make_config("default")
    model = TFGPT2LMHeadModel(config, seed=0)
    ids = np.array([[1, 2, 3]])
    for bad in (np.array([[1.7, 2.0, 3.0]]), tf.constant([[1.0, 2.0, 3.0]]), [[1.7, 2.0, 3.0]]):
        with pytest.raises(ValueError, match="input_ids must hold integer token ids. Received: input_ids.dtype="):
            model(input_ids=bad)
    with pytest.raises(ValueError, match="input_ids must hold integer"):  # the dtype is static: refused in a trace
        tf.function(lambda x: model(input_ids=x).logits)(tf.constant([[1.7]]))
    for bad in (-1, config.vocab_size):
        with pytest.raises(ValueError, match=r"token_type_ids must be in \[0, 96\].*Received: token_type_ids min="):
            model(input_ids=ids, token_type_ids=np.array([[0, bad, 0]]))
    with pytest.raises(ValueError, match="token_type_ids must hold integer"):
        model(input_ids=ids, token_type_ids=np.array([[0.5, 0, 0]]))
    with pytest.raises(ValueError, match="Label 500 is out of range for 97 classes"):  # TF's kernel error before
        model(input_ids=ids, labels=np.array([[-100, 1, 500]]))

    def logits_and_loss(input_ids, token_type_ids, position_ids):
        out = model(input_ids=input_ids, token_type_ids=token_type_ids, position_ids=position_ids, labels=input_ids)
        return out.logits, out.loss

    good = (ids, np.zeros_like(ids), np.arange(3)[None])
    cases = {  # what a plain gather did: negative ids wrapped (Keras' take), large ones clamped (XLA): finite
        "input_ids": [(np.array([[1, -1, 3]]),) + good[1:], (np.array([[1, config.vocab_size, 3]]),) + good[1:]],
        "token_type_ids": [(ids, np.array([[0, -2, 0]]), good[2]), (ids, np.array([[0, 0, 500]]), good[2])],
        "position_ids": [(ids, good[1], np.array([[0, 1, config.n_positions]]))],
    }
    for jit in (True, False):
        fn = tf.function(logits_and_loss, jit_compile=jit)
        logits, loss = fn(*(tf.constant(a) for a in good))
        assert np.all(np.isfinite(logits.numpy()))
        for name, inputs in cases.items():
            for args in inputs:
                logits, loss = fn(*(tf.constant(a) for a in args))
                assert np.all(np.isnan(logits.numpy())) and np.isnan(float(loss)), (name, jit)


# -- transformers' model attributes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "untied"])
def test_num_parameters_and_attributes_match_torch(name):
    import torch
    from gpt2_torch.model import MODEL_CLASSES as TORCH_CLASSES

    config = make_config(name, num_labels=3)
    for head, cls in MODEL_CLASSES.items():
        model = cls(config, seed=0)
        twin = _torch_twin(model)
        assert cls.can_generate() == TORCH_CLASSES[head].can_generate() == (head == "lm")
        assert model.main_input_name == twin.main_input_name == "input_ids"
        for kwargs in ({}, {"exclude_embeddings": True}):
            assert model.num_parameters(**kwargs) == twin.num_parameters(**kwargs), (head, kwargs)
    model.transformer.h[0].trainable = False
    twin.transformer.h[0].requires_grad_(False)
    trainable = model.num_parameters(only_trainable=True)
    assert trainable == twin.num_parameters(only_trainable=True) < model.num_parameters()

    lm = TFGPT2LMHeadModel(config, seed=0)
    ids, mask = padded_batch(config, "left")
    past = lm(input_ids=ids[:, :5], attention_mask=mask[:, :5], use_cache=True).past_key_values
    ours = lm.prepare_inputs_for_generation(tf.constant(ids), past_key_values=past, attention_mask=mask)
    theirs = _torch_twin(lm).prepare_inputs_for_generation(
        torch.as_tensor(ids), past_key_values=tuple((torch.as_tensor(k.numpy()), torch.as_tensor(v.numpy()))
                                                    for k, v in past), attention_mask=torch.as_tensor(mask))
    assert sorted(ours) == sorted(theirs) and np.array_equal(ours["input_ids"].numpy(), theirs["input_ids"].numpy())
    step = lm(**ours).logits.numpy()  # the continuation equals the full forward's last positions
    assert np.max(np.abs(step - lm(input_ids=ids, attention_mask=mask).logits.numpy()[:, 5:])) <= TOL
