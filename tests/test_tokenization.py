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
        if os.environ.get("GPT2_NO_SHARED") == "1":
            pytest.skip("GPT2_NO_SHARED=1: the shared corpus is not available.")
        pytest.fail(
            f"Shakespeare corpus not found at {CORPUS_DIR}. Check out shared/ beside the repository, "
            "or set GPT2_NO_SHARED=1 to skip the corpus tests."
        )
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
        (dict(truncation="only_second"), "Unknown truncation strategy"),
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
