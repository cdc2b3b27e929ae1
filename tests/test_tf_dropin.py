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
    with pytest.raises(ValueError, match="head_mask"):
        clf([ids, None, mask, None, None, np.ones((2, 4))])


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
