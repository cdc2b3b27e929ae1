"""Tests for gpt2_core.tokenization: GPT2Tokenizer (pure Python) and GPT2TokenizerFast (`tokenizers`).

Oracles:
    - tiktoken's Rust BPE (OpenAI's encoder), built offline from the shipped files, on the whole Shakespeare corpus
      in /work/shared and on hypothesis-generated Unicode text;
    - transformers v5 GPT2Tokenizer / GPT2TokenizerFast loaded from a directory our `save_pretrained` wrote.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpt2_core import tokenization
from gpt2_core.tokenization import (
    GPT2_PRETOKENIZE_PATTERN,
    BatchEncoding,
    GPT2Tokenizer,
    GPT2TokenizerFast,
    bytes_to_unicode,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "gpt2_core" / "data"
CORPUS_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "corpus" / "shakespeare"

# OpenAI's published SHA-256 sums of GPT-2's encoder.json and vocab.bpe: the values tiktoken checks
# (`expected_hash` in tiktoken_ext/openai_public.py) when it downloads them. Shipped as vocab.json / merges.txt.
VOCAB_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
MERGES_TXT_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"

EOT = "<|endoftext|>"
EOT_ID = 50256
TOKENIZER_CLASSES = {"python": GPT2Tokenizer, "fast": GPT2TokenizerFast}

SAMPLES = [
    "Hello world",
    " Hello world",
    "",
    " ",
    "   leading and trailing spaces   ",
    "I'm sure they'll've done it; we'd said 'twas so.",
    "Numbers: 12345 and 3.14159, 1,000,000!",
    "tabs\tand\nnewlines\r\n\n\nand  double  spaces",
    "Unicode: naïve café, Ünïcödé, 日本語のテキスト, Ελληνικά, עברית, emoji 👍🏽👨‍👩‍👧 and e\u0301 combining.",
    f"first{EOT}second {EOT} third{EOT}{EOT}",
    "<|endoftext",
    "\u00a0non-breaking\u2003spaces\u3000",
    "\U0003d000's \u0558's \U000323b0'll",  # letters new in Unicode 17.0: still "other" for GPT-2 (see below)
]


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=sorted(TOKENIZER_CLASSES))
def tokenizer(request):
    """One shared instance per class: tests that change settings build their own."""
    return TOKENIZER_CLASSES[request.param]()


@pytest.fixture(params=sorted(TOKENIZER_CLASSES))
def tokenizer_cls(request):
    return TOKENIZER_CLASSES[request.param]


@pytest.fixture(scope="module")
def tiktoken_gpt2():
    """tiktoken's GPT-2 encoding, built from the shipped files (tiktoken.get_encoding would download them)."""
    import tiktoken

    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads((DATA_DIR / "vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(byte_decoder[c] for c in token): i for token, i in vocab.items() if token != EOT}
    return tiktoken.Encoding(
        name="gpt2", pat_str=GPT2_PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens={EOT: EOT_ID}
    )


@pytest.fixture(scope="module")
def corpus_files() -> list[Path]:
    if not CORPUS_DIR.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"Shakespeare corpus not found at {CORPUS_DIR}; CI lays ../shared beside the repository.")
        pytest.skip(f"needs the whole Shakespeare corpus at {CORPUS_DIR} (../shared); a plain clone has only a sample")
    files = sorted(p for p in CORPUS_DIR.iterdir() if p.is_file())
    assert files, f"{CORPUS_DIR} is empty"
    return files


# ---------------------------------------------------------------------- shipped vocabulary


def test_shipped_files_match_openai_sha256():
    assert sha256(DATA_DIR / "vocab.json") == VOCAB_JSON_SHA256
    assert sha256(DATA_DIR / "merges.txt") == MERGES_TXT_SHA256


def test_save_vocabulary_writes_openai_files_byte_for_byte(tokenizer, tmp_path):
    vocab_path, merges_path = tokenizer.save_vocabulary(tmp_path)
    assert Path(vocab_path).name == "vocab.json" and Path(merges_path).name == "merges.txt"
    assert sha256(vocab_path) == VOCAB_JSON_SHA256
    assert sha256(merges_path) == MERGES_TXT_SHA256
    prefixed = tokenizer.save_vocabulary(tmp_path, filename_prefix="x")
    assert [Path(p).name for p in prefixed] == ["x-vocab.json", "x-merges.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_vocabulary_attributes(tokenizer):
    assert tokenizer.vocab_size == len(tokenizer) == 50257
    assert tokenizer.encoder[EOT] == EOT_ID and tokenizer.decoder[EOT_ID] == EOT
    assert tokenizer.bos_token == tokenizer.eos_token == tokenizer.unk_token == EOT
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.unk_token_id == EOT_ID
    assert tokenizer.pad_token is None and tokenizer.pad_token_id is None
    assert tokenizer.model_max_length == 1024
    assert tokenizer.padding_side == "right"
    assert tokenizer.add_prefix_space is False
    assert tokenizer.all_special_tokens == [EOT] and tokenizer.all_special_ids == [EOT_ID]
    vocab = tokenizer.get_vocab()
    vocab["Ġworld"] = -1
    assert tokenizer.encoder["Ġworld"] == 995, "get_vocab must return a copy"
    assert tokenizer.convert_tokens_to_ids("Ġworld") == 995
    assert tokenizer.convert_tokens_to_ids(["Hello", "Ġworld", "not-a-token!"]) == [15496, 995, EOT_ID]
    assert tokenizer.convert_ids_to_tokens(995) == "Ġworld"
    assert tokenizer.convert_ids_to_tokens([15496, 995, EOT_ID], skip_special_tokens=True) == ["Hello", "Ġworld"]
    assert tokenizer.convert_tokens_to_string(["Hello", "Ġworld", EOT]) == f"Hello world{EOT}"
    assert tokenizer.tokenize(f"Hello world{EOT}") == ["Hello", "Ġworld", EOT]


# ---------------------------------------------------------------------- ids: tiktoken as the oracle


def test_known_ids(tokenizer):
    # The examples in transformers' GPT2Tokenizer docstring.
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.encode(" Hello world") == [18435, 995]
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.encode(f"Hello world {EOT} x") == [15496, 995, 220, EOT_ID, 2124]


def test_whole_corpus_matches_tiktoken(tokenizer, tiktoken_gpt2, corpus_files):
    mismatches = []
    for path in corpus_files:
        text = path.read_text(encoding="utf-8")
        ours, reference = tokenizer.encode(text), tiktoken_gpt2.encode(text, allowed_special="all")
        if ours != reference:
            first = next((i for i, (a, b) in enumerate(zip(ours, reference)) if a != b), min(len(ours), len(reference)))
            mismatches.append(f"{path.name}: first difference at token {first} of {len(reference)}")
        assert tokenizer.decode(ours) == text, path.name
    assert not mismatches, "\n".join(mismatches)


def test_samples_match_tiktoken(tokenizer, tiktoken_gpt2):
    for text in SAMPLES:
        assert tokenizer.encode(text) == tiktoken_gpt2.encode(text, allowed_special="all"), text
        assert tokenizer.decode(tokenizer.encode(text)) == text


# Arbitrary Unicode (st.text() leaves out lone surrogates, which UTF-8 cannot encode), with extra weight on
# whitespace runs, repeated characters, contractions and the special token.
WHITESPACE = " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2028\u2029\u202f\u3000"
unicode_text = st.lists(
    st.one_of(
        st.text(),
        st.text(alphabet=WHITESPACE, min_size=1),
        st.characters(exclude_categories=["Cs"]).map(lambda c: c * 4),
        st.sampled_from(["'s", "'ll", "'ve", " 12", "😀", "e\u0301\u0302", "👨‍👩‍👧", EOT, " " + EOT]),
    ),
    max_size=8,
).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_arbitrary_text_matches_tiktoken_and_round_trips(tokenizer, tiktoken_gpt2, text):
    ids = tokenizer.encode(text)
    assert ids == tiktoken_gpt2.encode(text, allowed_special="all")
    assert tokenizer.decode(ids) == text


def test_character_classes_follow_unicode_16_like_tiktoken_and_tokenizers(tiktoken_gpt2):
    # `regex` may know a newer Unicode than tiktoken / `tokenizers`; GPT2Tokenizer pins its classes to theirs.
    # Probe the pinned ranges, their neighbours and a sample of all code points: "a{c}1{c}!" splits differently
    # for a letter, a number, whitespace and anything else, so equal splits mean equal classes.
    from tokenizers import pre_tokenizers

    rng = np.random.default_rng(0)
    code_points = set(rng.integers(0, 0x110000, 20_000).tolist())
    for start, end in tokenization._UNICODE_17_LETTERS_AND_NUMBERS:
        code_points.update(range(start - 1, end + 2))
    chars = [chr(c) for c in sorted(code_points) if not 0xD800 <= c <= 0xDFFF]
    text = "".join(f"a{c}1{c}!" for c in chars)
    tokenizer = GPT2Tokenizer()
    ours = [m.span() for m in tokenizer._pattern.finditer(text)]
    theirs = [span for _, span in pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)]
    assert ours == theirs
    text = "".join(f"{c}'s {c}1" for c in chars)
    assert tokenizer.encode(text) == tiktoken_gpt2.encode(text)


def test_long_words_encode_in_subquadratic_time(tokenizer, tiktoken_gpt2):
    # One 100k-character pre-token: a quadratic BPE loop would take minutes here.
    text = "ab" * 50_000
    assert tokenizer.encode(text) == tiktoken_gpt2.encode(text)


# ---------------------------------------------------------------------- transformers as the oracle


@pytest.fixture(scope="module")
def saved_dirs(tmp_path_factory):
    """Directories written by our save_pretrained, for add_prefix_space False and True."""
    dirs = {}
    for add_prefix_space in (False, True):
        directory = tmp_path_factory.mktemp(f"saved_prefix_{add_prefix_space}")
        GPT2Tokenizer(pad_token=EOT, add_prefix_space=add_prefix_space).save_pretrained(directory)
        dirs[add_prefix_space] = directory
    return dirs


@pytest.fixture(scope="module", params=["GPT2Tokenizer", "GPT2TokenizerFast"])
def hf_class(request):
    import transformers  # a dev dependency; skipped only in a bare install
    return getattr(transformers, request.param)


@pytest.fixture(scope="module", params=[False, True], ids=["no_prefix_space", "prefix_space"])
def hf_pair(request, saved_dirs, hf_class):
    """(ours, transformers') tokenizers loaded from the same saved directory, for each of our classes."""
    directory = saved_dirs[request.param]
    theirs = hf_class.from_pretrained(str(directory))
    assert theirs.add_prefix_space is request.param
    ours = {name: cls.from_pretrained(directory) for name, cls in TOKENIZER_CLASSES.items()}
    return ours, theirs


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=unicode_text)
def test_ids_match_transformers(hf_pair, text):
    ours, theirs = hf_pair
    expected = theirs.encode(text)
    for name, tokenizer in ours.items():
        assert tokenizer.encode(text) == expected, name


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ids=st.lists(st.integers(0, 50256), max_size=12), skip=st.booleans())
def test_decode_matches_transformers(hf_pair, ids, skip):
    # Random ids split UTF-8 sequences: both must replace the invalid bytes the same way.
    ours, theirs = hf_pair
    expected = theirs.decode(ids, skip_special_tokens=skip)
    for name, tokenizer in ours.items():
        assert tokenizer.decode(ids, skip_special_tokens=skip) == expected, name


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(padding=True),
        dict(padding="longest", padding_side="left"),
        dict(padding="max_length", max_length=24),
        dict(padding="max_length", max_length=24, padding_side="left"),
        dict(padding=True, truncation=True, max_length=5),
        dict(padding=True, pad_to_multiple_of=8),
        dict(truncation=True, max_length=3),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_batches_match_transformers(hf_pair, kwargs):
    ours, theirs = hf_pair
    batch = SAMPLES[:4] + [SAMPLES[9]]
    expected = theirs(batch, **kwargs)
    expected_np = theirs(batch, return_tensors="np", **kwargs) if "padding" in kwargs else None
    for name, tokenizer in ours.items():
        out = tokenizer(batch, **kwargs)
        assert out["input_ids"] == expected["input_ids"], name
        assert out["attention_mask"] == expected["attention_mask"], name
        if expected_np is not None:
            out_np = tokenizer(batch, return_tensors="np", **kwargs)
            np.testing.assert_array_equal(out_np["input_ids"], expected_np["input_ids"])
            np.testing.assert_array_equal(out_np["attention_mask"], expected_np["attention_mask"])


def test_loads_transformers_tokenizer_json(tmp_path, saved_dirs, hf_class):
    # transformers v5 save_pretrained writes tokenizer.json (no vocab.json / merges.txt); we read that too.
    hf_class.from_pretrained(str(saved_dirs[False])).save_pretrained(str(tmp_path))
    assert (tmp_path / "tokenizer.json").is_file()
    for cls in TOKENIZER_CLASSES.values():
        tokenizer = cls.from_pretrained(tmp_path)
        assert tokenizer.pad_token == EOT
        assert tokenizer.encode(SAMPLES[8]) == GPT2Tokenizer().encode(SAMPLES[8])


# ---------------------------------------------------------------------- __call__: padding, truncation, tensors


def test_call_single_and_batch(tokenizer):
    single = tokenizer("Hello world")
    assert isinstance(single, BatchEncoding)
    assert single == {"input_ids": [15496, 995], "attention_mask": [1, 1]}
    assert single.input_ids == [15496, 995]
    batch = tokenizer(["Hello world", " Hello"])
    assert batch.input_ids == [[15496, 995], [18435]] and batch.attention_mask == [[1, 1], [1]]
    assert tokenizer([]) == {"input_ids": [], "attention_mask": []}
    assert "attention_mask" not in tokenizer("hi", return_attention_mask=False)
    assert copy.deepcopy(batch) == batch and pickle.loads(pickle.dumps(batch)) == batch
    with pytest.raises(AttributeError, match="no field 'token_type_ids'"):
        batch.token_type_ids


def test_padding_right_and_left(tokenizer_cls):
    tokenizer = tokenizer_cls(pad_token=EOT)
    right = tokenizer(["Hello world", " Hello"], padding=True)
    assert right.input_ids == [[15496, 995], [18435, EOT_ID]]
    assert right.attention_mask == [[1, 1], [1, 0]]
    left = tokenizer(["Hello world", " Hello"], padding=True, padding_side="left")
    assert left.input_ids == [[15496, 995], [EOT_ID, 18435]]
    assert left.attention_mask == [[1, 1], [0, 1]]
    tokenizer.padding_side = "left"
    assert tokenizer(["Hello world", " Hello"], padding=True) == left
    out = tokenizer("Hello", padding="max_length", max_length=4, padding_side="right")
    assert out == {"input_ids": [15496, EOT_ID, EOT_ID, EOT_ID], "attention_mask": [1, 0, 0, 0]}
    out = tokenizer("Hello", padding="max_length", max_length=4, pad_to_multiple_of=3)
    assert len(out["input_ids"]) == 6
    assert tokenizer("Hello", padding=True).input_ids == [15496]
    assert len(tokenizer("Hello", padding="max_length").input_ids) == 1024  # model_max_length


def test_truncation(tokenizer_cls, caplog):
    tokenizer = tokenizer_cls()
    text = "one two three four five"
    ids = tokenizer.encode(text)
    assert len(ids) == 5
    assert tokenizer.encode(text, truncation=True, max_length=3) == ids[:3]
    assert tokenizer(text, truncation="longest_first", max_length=2).input_ids == ids[:2]
    assert tokenizer(text, truncation=False, max_length=2).input_ids == ids
    with caplog.at_level(logging.WARNING, logger="gpt2_core.tokenization"):
        assert tokenizer.encode(text, max_length=2) == ids[:2]  # transformers' default: truncate, with a warning
    assert "truncation=True" in caplog.text
    assert tokenizer(" x" * 2000, truncation=True).input_ids == tokenizer.encode(" x" * 1024)
    tokenizer.truncation_side = "left"
    assert tokenizer.encode(text, truncation=True, max_length=3) == ids[-3:]
    tokenizer = tokenizer_cls(add_bos_token=True)
    assert tokenizer.encode(text, truncation=True, max_length=3) == [EOT_ID, *ids[:2]]
    assert tokenizer.encode(text, add_special_tokens=False) == ids


def test_return_tensors_numpy(tokenizer_cls):
    tokenizer = tokenizer_cls(pad_token=EOT)
    out = tokenizer(["Hello world", " Hello"], padding=True, return_tensors="np")
    assert out.input_ids.dtype == np.int64 and out.input_ids.shape == (2, 2)
    np.testing.assert_array_equal(out.attention_mask, [[1, 1], [1, 0]])
    single = tokenizer("Hello world", return_tensors="np")
    assert single.input_ids.shape == (1, 2)  # a single text gets a batch dimension, as in transformers
    assert tokenizer("", return_tensors="np").input_ids.shape == (1, 0)


def test_return_tensors_torch(tokenizer_cls):
    import torch

    tokenizer = tokenizer_cls(pad_token=EOT)
    out = tokenizer(["Hello world", " Hello"], padding=True, return_tensors="pt")
    assert isinstance(out.input_ids, torch.Tensor) and out.input_ids.dtype == torch.int64
    assert out.input_ids.tolist() == [[15496, 995], [18435, EOT_ID]]
    assert out.to("cpu") is out and out.attention_mask.device.type == "cpu"
    assert tokenizer.decode(out.input_ids[0]) == "Hello world"
    assert tokenizer.batch_decode(out.input_ids, skip_special_tokens=True) == ["Hello world", " Hello"]


def test_return_tensors_tensorflow(tokenizer_cls):
    import tensorflow as tf

    tokenizer = tokenizer_cls(pad_token=EOT)
    out = tokenizer(["Hello world", " Hello"], padding=True, return_tensors="tf")
    assert isinstance(out.input_ids, tf.Tensor) and out.input_ids.dtype == tf.int32
    np.testing.assert_array_equal(out.input_ids.numpy(), [[15496, 995], [18435, EOT_ID]])
    assert tokenizer.decode(out.input_ids[0]) == "Hello world"


def test_return_tensors_jax(tokenizer_cls):
    import jax
    import jax.numpy as jnp

    tokenizer = tokenizer_cls(pad_token=EOT)
    out = tokenizer(["Hello world", " Hello"], padding=True, return_tensors="jax")
    assert isinstance(out.input_ids, jax.Array) and out.input_ids.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(out.attention_mask), [[1, 1], [1, 0]])
    assert tokenizer.decode(out.input_ids[0]) == "Hello world"


def test_ragged_batch_to_tensor_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match="different lengths.*padding=True"):
        tokenizer(["Hello world", " Hello"], return_tensors="np")


def test_padding_without_pad_token_is_a_clear_error(tokenizer):
    with pytest.raises(ValueError, match=r"does not have a padding token.*tokenizer\.pad_token = tokenizer\.eos_token"):
        tokenizer(["Hello world", " Hello"], padding=True)


def test_pad_token_can_be_set_by_token_or_id(tokenizer_cls):
    tokenizer = tokenizer_cls()
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == EOT_ID
    tokenizer.pad_token_id = 0
    assert tokenizer.pad_token == "!"
    assert tokenizer(["a", "a b"], padding=True).input_ids[0] == [64, 0]


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(padding="everything"), "Unknown padding strategy"),
        (dict(truncation="only_third"), "Unknown truncation strategy"),
        (dict(return_tensors="mlx"), "return_tensors must be"),
        (dict(padding_side="middle"), "padding_side must be"),
        (dict(max_length=-1), "max_length must be"),
    ],
)
def test_bad_call_arguments(tokenizer, kwargs, error):
    with pytest.raises(ValueError, match=error):
        tokenizer("Hello", **kwargs)


def test_lone_surrogate_is_a_value_error(tokenizer):
    with pytest.raises(ValueError, match=r"lone surrogate.*Received: text\[2\]='\\ud800'"):
        tokenizer("ab\ud800")
    with pytest.raises(ValueError, match=r"Received: text\[1\]\[0\]"):
        tokenizer(["ok", "\udfff"])


@pytest.mark.parametrize("bad", [123, None, b"bytes", ["ok", 5]])
def test_non_string_text_is_a_type_error(tokenizer, bad):
    with pytest.raises(TypeError, match="Received: text"):
        tokenizer(bad)
    if not isinstance(bad, list):
        with pytest.raises(TypeError, match="Received: text"):
            tokenizer.encode(bad)


# ---------------------------------------------------------------------- decoding


def test_decode_inputs(tokenizer):
    ids = [15496, 995, EOT_ID]
    assert tokenizer.decode(ids) == f"Hello world{EOT}"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Hello world"
    assert tokenizer.decode(np.array(ids, dtype=np.int32)) == f"Hello world{EOT}"
    assert tokenizer.decode(tuple(np.array(ids))) == f"Hello world{EOT}"
    assert tokenizer.decode(995) == " world"
    assert tokenizer.decode([]) == "" and tokenizer.decode(np.array([], dtype=np.int64)) == ""
    assert tokenizer.batch_decode([[15496], [995]]) == ["Hello", " world"]
    assert tokenizer.batch_decode(np.array([[15496, 995]])) == ["Hello world"]
    assert tokenizer.decode(tokenizer.encode("Hi , you !")) == "Hi , you !"
    assert tokenizer.decode(tokenizer.encode("Hi , you !"), clean_up_tokenization_spaces=True) == "Hi, you!"


def test_decode_invalid_utf8_follows_errors(tokenizer_cls):
    ids = GPT2Tokenizer().encode("😀")  # 4 UTF-8 bytes in more than one token
    assert len(ids) > 1
    assert tokenizer_cls().decode(ids[:1]) == "\ufffd"
    assert tokenizer_cls(errors="ignore").decode(ids[:1]) == ""
    with pytest.raises(UnicodeDecodeError):
        tokenizer_cls(errors="strict").decode(ids[:1])
    with pytest.raises(ValueError, match="errors"):
        tokenizer_cls(errors="no-such-handler")


@pytest.mark.parametrize("bad_id", [50257, -1, 10**20])
def test_decode_out_of_range_id(tokenizer, bad_id):
    with pytest.raises(ValueError, match=rf"Token id {bad_id} .*vocab_size=50257"):
        tokenizer.decode([15496, bad_id])


def test_decode_bad_types(tokenizer):
    with pytest.raises(TypeError, match="Received"):
        tokenizer.decode([1.5])
    with pytest.raises(TypeError, match="dtype=float"):
        tokenizer.decode(np.array([1.0, 2.0]))
    with pytest.raises(TypeError, match="batch_decode"):
        tokenizer.decode([[1, 2]])
    with pytest.raises(ValueError, match="batch_decode"):
        tokenizer.decode(np.array([[1, 2]]))


# ---------------------------------------------------------------------- settings


def test_add_prefix_space(tokenizer_cls):
    tokenizer = tokenizer_cls(add_prefix_space=True)
    assert tokenizer.encode("Hello world") == [18435, 995]
    assert tokenizer.encode(" Hello world") == [18435, 995]
    # As `tokenizers` does (and so transformers v5): every segment around a special token gets the space.
    assert tokenizer.encode(f"Hello{EOT}world") == [18435, EOT_ID, 995]
    tokenizer.add_prefix_space = False
    assert tokenizer.encode("Hello world") == [15496, 995]


def test_add_bos_token(tokenizer_cls):
    tokenizer = tokenizer_cls(add_bos_token=True)
    assert tokenizer.encode("Hello") == [EOT_ID, 15496]
    assert tokenizer("Hello", add_special_tokens=False).input_ids == [15496]


# ---------------------------------------------------------------------- save and load


def test_save_pretrained_round_trip(tokenizer_cls, tmp_path):
    original = tokenizer_cls(pad_token=EOT, add_prefix_space=True, model_max_length=512, padding_side="left")
    paths = original.save_pretrained(tmp_path / "new" / "dir")
    assert sorted(Path(p).name for p in paths) == [
        "merges.txt",
        "special_tokens_map.json",
        "tokenizer.json",  # what transformers v5 writes and loads first
        "tokenizer_config.json",
        "vocab.json",
    ]
    config = json.loads((tmp_path / "new" / "dir" / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer" and config["pad_token"] == EOT
    special = json.loads((tmp_path / "new" / "dir" / "special_tokens_map.json").read_text())
    assert special == {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT, "pad_token": EOT}
    for cls in TOKENIZER_CLASSES.values():
        loaded = cls.from_pretrained(tmp_path / "new" / "dir")
        assert (loaded.pad_token, loaded.add_prefix_space, loaded.model_max_length, loaded.padding_side) == (
            EOT,
            True,
            512,
            "left",
        )
        assert loaded(["a b", "c"], padding=True) == original(["a b", "c"], padding=True)
        assert cls.from_pretrained(tmp_path / "new" / "dir", padding_side="right").padding_side == "right"


def test_from_pretrained_reads_transformers_style_config(tokenizer_cls, tmp_path):
    tokenizer_cls().save_vocabulary(tmp_path)
    added_token = {"content": EOT, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"add_prefix_space": True, "model_max_length": 1e30, "tokenizer_class": "GPT2Tokenizer"})
    )
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": added_token}))
    tokenizer = tokenizer_cls.from_pretrained(str(tmp_path))
    assert tokenizer.add_prefix_space is True and tokenizer.pad_token == EOT
    assert tokenizer.model_max_length == int(1e30)
    with pytest.raises(ValueError, match="max_length"):
        tokenizer("x", padding="max_length")


@pytest.mark.parametrize(
    "name", ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2", "openai-community/gpt2"]
)
def test_known_names_use_the_shipped_vocabulary_offline(tokenizer_cls, name, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("from_pretrained must not download the GPT-2 vocabulary")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    tokenizer = tokenizer_cls.from_pretrained(name, pad_token=EOT)
    assert tokenizer.encode("Hello world") == [15496, 995]
    assert tokenizer.model_max_length == 1024 and tokenizer.pad_token == EOT and tokenizer.name_or_path == name


def test_from_pretrained_missing_directory_or_repo(tokenizer_cls, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="directory not found"):
        tokenizer_cls.from_pretrained(tmp_path / "does-not-exist")
    with pytest.raises(OSError, match="no-such-user/no-such-gpt2-tokenizer.*offline"):
        tokenizer_cls.from_pretrained("no-such-user/no-such-gpt2-tokenizer")
    with pytest.raises(OSError, match="vocab.json and merges.txt"):
        tokenizer_cls.from_pretrained(tmp_path)  # exists, but empty


def test_constructor_with_explicit_files(tokenizer_cls, tmp_path):
    vocab_file, merges_file = GPT2Tokenizer().save_vocabulary(tmp_path)
    assert tokenizer_cls(vocab_file, merges_file).encode(SAMPLES[5]) == GPT2Tokenizer().encode(SAMPLES[5])
    with pytest.raises(ValueError, match="both vocab_file and merges_file"):
        tokenizer_cls(vocab_file=vocab_file)
    (tmp_path / "bad-merges.txt").write_text("#version: 0.2\nĠ t\nthree tokens here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        tokenizer_cls(vocab_file, tmp_path / "bad-merges.txt")


# ---------------------------------------------------------------------- docs and imports


def test_docs_examples_run_and_print_what_they_say():
    # Every ```python block of docs/tokenizer.md runs, and each line it prints appears in the block's comments.
    page = (Path(__file__).resolve().parents[1] / "docs" / "tokenizer.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert blocks
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, "docs/tokenizer.md", "exec"), {})
        for line in out.getvalue().splitlines():
            assert line.strip() in block, f"docs/tokenizer.md prints {line!r}, which the example does not show"



def test_import_pulls_in_no_framework():
    code = (
        "import sys, gpt2_core.tokenization as t; t.GPT2Tokenizer().encode('hi'); "
        "heavy = ('tokenizers', 'torch', 'tensorflow', 'jax', 'transformers', 'tiktoken', 'huggingface_hub'); "
        "print([m for m in heavy if m in sys.modules])"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root, check=True)
    assert result.stdout.strip() == "[]"


def test_fast_tokenizer_without_tokenizers_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` raise ImportError
    with pytest.raises(ImportError, match="pip install tokenizers"):
        GPT2TokenizerFast()


# ---------------------------------------------------------------------- transformers' API surface (issue 11)


def _hf(directory, **kwargs):
    import transformers

    return transformers.GPT2TokenizerFast.from_pretrained(str(directory), **kwargs)


_LOADED: dict = {}


def _shared(cls, directory, **kwargs):
    """A tokenizer loaded once per (class, directory, settings) for tests that do not change it (loading is slow)."""
    key = (cls, str(directory), tuple(sorted(kwargs.items())))
    if key not in _LOADED:
        _LOADED[key] = _hf(directory, **kwargs) if cls is None else cls.from_pretrained(directory, **kwargs)
    return _LOADED[key]


def _plain(encoding):
    """A BatchEncoding's fields as lists (tuples inside offsets become lists), for comparing ours with theirs."""
    out = {}
    for key, value in dict(encoding).items():
        value = value.tolist() if hasattr(value, "tolist") else value
        out[key] = json.loads(json.dumps(value))
    return out


@pytest.mark.parametrize("return_tensors", ["np", "pt", "tf", "jax"])
def test_encode_return_tensors(tokenizer, return_tensors, saved_dirs):
    hf_padded = _shared(None, saved_dirs[False])
    out = tokenizer.encode("Hello world there", return_tensors=return_tensors)
    assert tuple(out.shape) == (1, 3)
    np.testing.assert_array_equal(np.asarray(out), [[15496, 995, 612]])
    if return_tensors in ("np", "pt"):
        assert _plain({"x": out}) == _plain({"x": hf_padded.encode("Hello world there", return_tensors=return_tensors)})


PAIRS = [
    ("Hello world", "How are you?"),
    ("one two three four five", "six seven"),
    ("a b c d e f g h", "b c d e"),
    (f"x{EOT}y", " z"),
]


@pytest.mark.parametrize("add_bos_token", [False, True], ids=["plain", "bos"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(return_token_type_ids=True, return_special_tokens_mask=True, return_offsets_mapping=True),
        dict(truncation=True, max_length=5),
        dict(truncation="longest_first", max_length=4, return_token_type_ids=True),
        dict(truncation="only_first", max_length=7),
        dict(truncation="only_second", max_length=11),
        dict(padding=True, return_length=True),
        dict(padding="max_length", max_length=16, padding_side="left", return_offsets_mapping=True),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_pairs_match_transformers(tokenizer_cls, saved_dirs, add_bos_token, kwargs):
    theirs = _shared(None, saved_dirs[False], add_bos_token=add_bos_token)
    ours = _shared(tokenizer_cls, saved_dirs[False], add_bos_token=add_bos_token)
    firsts, seconds = [p[0] for p in PAIRS], [p[1] for p in PAIRS]
    expected = _plain(theirs(firsts, seconds, **kwargs))
    assert _plain(ours(firsts, seconds, **kwargs)) == expected
    assert _plain(ours(PAIRS, **kwargs)) == expected  # a list of (text, text_pair)
    assert _plain(ours.batch_encode_plus(PAIRS, **kwargs)) == expected
    for first, second in PAIRS[:2]:
        single = _plain(theirs(first, second, **kwargs))
        assert _plain(ours(first, second, **kwargs)) == single
        assert _plain(ours.encode_plus(first, second, **kwargs)) == single
        assert ours.encode(first, second, **{k: v for k, v in kwargs.items() if k in ("truncation", "max_length")}) == (
            theirs.encode(first, second, **{k: v for k, v in kwargs.items() if k in ("truncation", "max_length")})
        )


def test_second_positional_string_is_the_pair_not_padding(tokenizer):
    assert tokenizer("question", "answer").input_ids == tokenizer.encode("question") + tokenizer.encode("answer")
    with pytest.raises(TypeError, match="add_special_tokens= by keyword"):
        tokenizer.encode("question", False)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        dict(padding_side="left"),
        dict(pad_to_multiple_of=8),
        dict(padding="max_length", max_length=7),
        dict(return_tensors="np"),
        dict(return_tensors="pt", padding_side="left", pad_to_multiple_of=4),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "default",
)
def test_pad_features_matches_transformers(tokenizer_cls, saved_dirs, kwargs):
    theirs = _shared(None, saved_dirs[False])
    ours = _shared(tokenizer_cls, saved_dirs[False])
    texts = ["Hello world", "A longer second sentence here", "x"]
    features = [dict(ours(t, return_special_tokens_mask=True)) for t in texts]
    assert _plain(ours.pad(features, **kwargs)) == _plain(theirs.pad(features, **kwargs))
    # Fields pad does not know (labels) are left alone; a dict of lists is a batch too.
    with_labels = [{"input_ids": f["input_ids"], "labels": f["input_ids"]} for f in features]
    assert _plain(ours.pad(with_labels)) == _plain(theirs.pad(with_labels))
    batch = {"input_ids": [f["input_ids"] for f in features]}
    assert _plain(ours.pad(batch, **kwargs)) == _plain(theirs.pad(batch, **kwargs))


def test_pad_infers_tensors_from_the_input(tokenizer_cls):
    import torch

    tokenizer = tokenizer_cls(pad_token=EOT)
    out = tokenizer.pad([{"input_ids": torch.tensor([1, 2, 3])}, {"input_ids": torch.tensor([4])}])
    assert isinstance(out.input_ids, torch.Tensor) and out.input_ids.tolist() == [[1, 2, 3], [4, EOT_ID, EOT_ID]]
    assert tokenizer.pad({"input_ids": [1, 2]}) == {"input_ids": [1, 2], "attention_mask": [1, 1]}
    with pytest.raises(ValueError, match="input_ids"):
        tokenizer.pad([{"labels": [1]}])


ADDED_TEXTS = ["x<new>y hello world", "[PAD] and <sp>in<sp> text", f"{EOT}<new><new>  hello<sp>", "plain text"]


def _add_tokens(tokenizer):
    n_plain = tokenizer.add_tokens(["<new>", "hello"])
    n_special = tokenizer.add_special_tokens({"pad_token": "[PAD]", "additional_special_tokens": ["<sp>"]})
    return n_plain, n_special


def test_add_tokens_and_special_tokens_match_transformers(tokenizer_cls, saved_dirs, tmp_path):
    theirs = _hf(saved_dirs[False])
    ours = tokenizer_cls.from_pretrained(saved_dirs[False])
    ours.pad_token = None
    theirs.pad_token = None
    assert _add_tokens(ours) == _add_tokens(theirs)
    assert len(ours) == len(theirs) == 50260 and ours.vocab_size == theirs.vocab_size == 50257
    assert ours.pad_token_id == theirs.pad_token_id == 50258
    assert ours.get_added_vocab() == theirs.get_added_vocab()
    assert ours.all_special_tokens == theirs.all_special_tokens
    for text in ADDED_TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.tokenize(text) == theirs.tokenize(text), text
        ids = ours.encode(text)
        assert ours.decode(ids) == theirs.decode(ids)
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
        expected = _plain(theirs(text, return_offsets_mapping=True))
        assert _plain(ours(text, return_offsets_mapping=True)) == expected
    # Saved by us: transformers and both of our classes load the added tokens back at the same ids.
    ours.save_pretrained(tmp_path / "ours")
    assert json.loads((tmp_path / "ours" / "added_tokens.json").read_text()) == {"<new>": 50257, "[PAD]": 50258,
                                                                                 "<sp>": 50259}  # fmt: skip
    config = json.loads((tmp_path / "ours" / "tokenizer_config.json").read_text())
    assert config["added_tokens_decoder"]["50258"]["special"] is True and config["extra_special_tokens"] == ["<sp>"]
    reloaded = [_hf(tmp_path / "ours"), *(cls.from_pretrained(tmp_path / "ours") for cls in TOKENIZER_CLASSES.values())]
    for other in reloaded:
        assert len(other) == 50260 and other.pad_token == "[PAD]" and other.pad_token_id == 50258, type(other)
        assert "<sp>" in other.all_special_tokens
        for text in ADDED_TEXTS:
            assert other.encode(text) == theirs.encode(text), (type(other), text)
    # Saved by transformers (tokenizer.json + tokenizer_config.json only): we load it back.
    theirs.save_pretrained(str(tmp_path / "theirs"))
    for cls in TOKENIZER_CLASSES.values():
        loaded = cls.from_pretrained(tmp_path / "theirs")
        assert len(loaded) == 50260 and loaded.pad_token_id == 50258
        assert [loaded.encode(t) for t in ADDED_TEXTS] == [theirs.encode(t) for t in ADDED_TEXTS]


def test_special_token_missing_from_vocabulary_is_added(tokenizer_cls, saved_dirs):
    ours = tokenizer_cls(pad_token="[PAD]")
    theirs = _hf(saved_dirs[False], pad_token="[PAD]")
    assert ours.pad_token_id == theirs.pad_token_id == 50257 and len(ours) == len(theirs) == 50258
    assert ours(["a", "b c"], padding=True).input_ids == theirs(["a", "b c"], padding=True).input_ids
    ours.pad_token = "<pad2>"  # setting the attribute adds it too: never an id of None
    assert ours.pad_token_id == 50258


def test_new_pad_token_recipe(tokenizer_cls):
    tokenizer = tokenizer_cls()
    assert tokenizer.add_special_tokens({"pad_token": "[PAD]"}) == 1
    assert len(tokenizer) == 50258 and tokenizer.pad_token_id == 50257
    assert tokenizer.add_special_tokens({"pad_token": "[PAD]"}) == 0
    with pytest.raises(ValueError, match="Unknown special token role"):
        tokenizer.add_special_tokens({"padding_token": "x"})


offset_text = st.lists(
    st.one_of(st.text(), st.sampled_from([" ", "  ", "\n", "é", "日本", "👍🏽", "e\u0301", EOT, " " + EOT, "'s", "ab"])),
    max_size=8,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=offset_text)
def test_offsets_match_transformers_fast(hf_pair, text):
    ours, theirs = hf_pair
    expected = theirs(text, return_offsets_mapping=True)
    for name, tokenizer in ours.items():
        out = tokenizer(text, return_offsets_mapping=True)
        assert out.input_ids == expected.input_ids, name
        assert [tuple(o) for o in out.offset_mapping] == [tuple(o) for o in expected.offset_mapping], name


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(max_length=3, stride=1),
        dict(max_length=4, stride=0, return_offsets_mapping=True, return_length=True),
        dict(max_length=5, stride=2, padding=True, return_special_tokens_mask=True),
        dict(max_length=5, stride=2, padding=True, return_tensors="np", return_offsets_mapping=True),
        dict(max_length=4, stride=1, add_bos=True, return_special_tokens_mask=True, return_offsets_mapping=True),
        dict(max_length=4, stride=1, truncation_side="left"),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_overflowing_tokens_with_stride_match_transformers(tokenizer_cls, saved_dirs, kwargs):
    kwargs = dict(kwargs)
    init = dict(add_bos_token=kwargs.pop("add_bos", False), truncation_side=kwargs.pop("truncation_side", "right"))
    theirs = _shared(None, saved_dirs[False], **init)
    ours = _shared(tokenizer_cls, saved_dirs[False], **init)
    texts = ["one two three four five six seven eight nine", "a b", "Hello world, how are you doing today?"]
    call = dict(truncation=True, return_overflowing_tokens=True, **kwargs)
    assert _plain(ours(texts, **call)) == _plain(theirs(texts, **call))
    assert _plain(ours(texts[0], **call)) == _plain(theirs(texts[0], **call))


PAIR_A = "one two three four five six seven eight nine ten"
PAIR_B = "alpha beta gamma delta epsilon zeta"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(truncation=True, max_length=8, stride=2),
        dict(truncation="longest_first", max_length=9, stride=1, padding=True, return_special_tokens_mask=True),
        dict(truncation="only_first", max_length=12, stride=1, return_offsets_mapping=True, return_length=True),
        dict(truncation="only_second", max_length=12, stride=1, return_token_type_ids=True),
        dict(truncation=True, max_length=8, stride=1, add_bos=True, return_offsets_mapping=True),
        dict(truncation=True, max_length=8, stride=2, truncation_side="left"),
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()),
)
def test_overflowing_tokens_of_pairs_match_transformers(tokenizer_cls, saved_dirs, kwargs):
    # Each window of the text with each of the pair, in `tokenizers`' order (Encoding.merge_with).
    kwargs = dict(kwargs)
    init = dict(add_bos_token=kwargs.pop("add_bos", False), truncation_side=kwargs.pop("truncation_side", "right"))
    theirs = _shared(None, saved_dirs[False], **init)
    ours = _shared(tokenizer_cls, saved_dirs[False], **init)
    call = dict(return_overflowing_tokens=True, **kwargs)
    for args in [(PAIR_A, PAIR_B), ([PAIR_A, "x y", "a b c d e f g h"], [PAIR_B, "z", "short"])]:
        expected = _plain(theirs(*args, **call))
        n_texts = len(args[0]) if isinstance(args[0], list) else 1
        assert len(expected["input_ids"]) > n_texts  # windows did overflow
        assert _plain(ours(*args, **call)) == expected


def test_text_target_matches_transformers(tokenizer_cls, saved_dirs):
    theirs = _shared(None, saved_dirs[False])
    ours = _shared(tokenizer_cls, saved_dirs[False])
    for kwargs in [
        dict(text="Hello there", text_target="General Kenobi"),
        dict(text=["a b", "Hello there"], text_target=["c", "General Kenobi"], padding=True),
        dict(text_target=["c", "General Kenobi"]),
        dict(text="q", text_pair="context", text_target="answer", text_pair_target="more"),
        dict(text=["Hello there"], text_target=["General Kenobi you are"], truncation=True, max_length=3),
    ]:
        assert _plain(ours(**kwargs)) == _plain(theirs(**kwargs)), kwargs
    with pytest.raises(ValueError, match="text_pair_target needs text_target"):
        ours("x", text_pair_target="y")


@pytest.mark.parametrize("kwargs", [dict(return_length=True), dict(return_special_tokens_mask=True)])
def test_return_length_and_special_tokens_mask_single(tokenizer_cls, saved_dirs, kwargs):
    for add_bos_token in (False, True):
        theirs = _shared(None, saved_dirs[False], add_bos_token=add_bos_token)
        ours = _shared(tokenizer_cls, saved_dirs[False], add_bos_token=add_bos_token)
        for text in ("Hello world", ["Hello world", "x"]):
            assert _plain(ours(text, **kwargs)) == _plain(theirs(text, **kwargs))
            assert _plain(ours(text, return_tensors="np", padding=True, **kwargs)) == _plain(
                theirs(text, return_tensors="np", padding=True, **kwargs)
            )


def test_per_call_add_prefix_space(tokenizer_cls, saved_dirs):
    with_space = _shared(None, saved_dirs[True])
    tokenizer = _shared(tokenizer_cls, saved_dirs[False])
    for text in ["Hello world", f"Hello{EOT}world", " already spaced"]:
        expected = with_space(text, return_offsets_mapping=True)
        out = tokenizer(text, add_prefix_space=True, return_offsets_mapping=True)
        assert out.input_ids == expected.input_ids and out.offset_mapping == expected.offset_mapping
        assert tokenizer.encode(text, add_prefix_space=True) == expected.input_ids
        assert tokenizer.tokenize(text, add_prefix_space=True) == with_space.tokenize(text)
        assert tokenizer.encode(text) == _shared(GPT2Tokenizer, saved_dirs[False]).encode(text)  # setting unchanged


def _small_bpe(directory, with_bytes: bool, unk: bool):
    """A tiny byte-level BPE: with or without the 256 byte tokens, with or without an unk token."""
    byte_encoder = bytes_to_unicode()
    tokens = [byte_encoder[b] for b in range(256)] if with_bytes else ["a", "b", "c", "Ġ", "h", "i"]
    merges = [("a", "b"), ("Ġ", "ab"), ("h", "i"), ("Ġ", "hi"), ("ab", "c")]
    tokens += [a + b for a, b in merges]
    if unk:
        tokens.append("<unk>")
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return vocab, merges


SMALL_TEXTS = ["abc ab hi", "hi there xyz", "é abc", "abab  abc\n", ""]


@pytest.mark.parametrize("with_bytes", [True, False], ids=["all_bytes", "no_bytes"])
def test_any_byte_level_vocabulary(tmp_path, with_bytes):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab, merges = _small_bpe(tmp_path / "small", with_bytes, unk=True)
    reference = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=False))
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.decoder = decoders.ByteLevel()
    ours = [cls.from_pretrained(tmp_path / "small", unk_token="<unk>", bos_token="<unk>", eos_token="<unk>")
            for cls in TOKENIZER_CLASSES.values()]  # fmt: skip
    for tokenizer in ours:
        assert len(tokenizer) == len(vocab)
        for text in SMALL_TEXTS:
            expected = reference.encode(text)
            out = tokenizer(text, return_offsets_mapping=True)
            assert out.input_ids == expected.ids, (type(tokenizer), text)
            assert [tuple(o) for o in out.offset_mapping] == expected.offsets, (type(tokenizer), text)
    # Saved by us, loaded by transformers v5: the same ids, except that v5's GPT2Tokenizer builds its BPE model
    # without an unk token and so drops bytes that have no token, where we (like v4 and `tokenizers` with
    # unk_token) give unk_token.
    ours[0].save_pretrained(tmp_path / "saved")
    theirs = _hf(tmp_path / "saved")
    unk = vocab["<unk>"]
    for text in SMALL_TEXTS:
        assert ours[0].encode(text) == ours[1].encode(text), text
        assert theirs.encode(text) == [i for i in ours[0].encode(text) if i != unk], text
        assert (unk in ours[0].encode(text)) == (not with_bytes and bool(set(text) - set("abchi "))), text


def test_vocabulary_without_special_tokens_gets_them_added(tmp_path):
    _small_bpe(tmp_path / "small", with_bytes=True, unk=False)
    theirs = _hf(tmp_path / "small", pad_token="[PAD]")
    for cls in TOKENIZER_CLASSES.values():
        ours = cls.from_pretrained(tmp_path / "small", pad_token="[PAD]")
        assert ours.get_added_vocab() == theirs.get_added_vocab()
        assert ours.eos_token_id == theirs.eos_token_id is not None
        assert ours.pad_token_id == theirs.pad_token_id is not None
        assert ours.encode(f"ab{EOT}hi") == theirs.encode(f"ab{EOT}hi")


def test_hub_id_resolves_through_gpt2_core_hub_from_a_populated_cache(tokenizer_cls, tmp_path, monkeypatch):
    # A Hub cache laid out as huggingface_hub writes it; local_files_only=True never touches the network.
    monkeypatch.delenv("HF_HOME", raising=False)
    commit = "0" * 40
    snapshot = tmp_path / "cache" / "models--someone--tiny-gpt2" / "snapshots" / commit
    GPT2Tokenizer(pad_token="[PAD]", padding_side="left").save_pretrained(snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(commit)
    tokenizer = tokenizer_cls.from_pretrained("someone/tiny-gpt2", cache_dir=tmp_path / "cache", local_files_only=True)
    assert (tokenizer.pad_token_id, tokenizer.padding_side, len(tokenizer)) == (50257, "left", 50258)
    with pytest.raises(OSError, match="someone/other"):
        tokenizer_cls.from_pretrained("someone/other", cache_dir=tmp_path / "cache", local_files_only=True)


@pytest.mark.parametrize("add_prefix_space", [False, True], ids=["no_prefix_space", "prefix_space"])
def test_is_split_into_words_matches_transformers(tokenizer_cls, saved_dirs, add_prefix_space):
    theirs = _shared(None, saved_dirs[add_prefix_space])
    ours = _shared(tokenizer_cls, saved_dirs[add_prefix_space])
    words = [["Hello", "world", "x"], ["naïve", f"a{EOT}b", " spaced"], []]
    kwargs = dict(is_split_into_words=True, return_offsets_mapping=True)
    assert _plain(ours(words[0], **kwargs)) == _plain(theirs(words[0], **kwargs))
    assert _plain(ours(words[:2], **kwargs)) == _plain(theirs(words[:2], **kwargs))
    assert _plain(ours(words[:2], words[1::-1], **kwargs)) == _plain(theirs(words[:2], words[1::-1], **kwargs))
    with pytest.raises(TypeError, match="list of words"):
        ours([["ok"], "not a list"], is_split_into_words=True)
