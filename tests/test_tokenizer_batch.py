"""`GPT2TokenizerFast.__call__`'s direct path for plain calls (no template tokens, padding, truncation or extra
fields) gives exactly what the general path and the pure-Python `GPT2Tokenizer` give, and transformers' own
`GPT2TokenizerFast`; every other call takes the general path (same results, same errors)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from gpt2_core.tokenization import GPT2Tokenizer, GPT2TokenizerFast
from gpt2_core.tokenization_api import _GPT2TokenizerBase
from gpt2_core.tokenization_utils import BatchEncoding

TEXTS = [
    "Hello world, this is GPT-2.",
    "  two leading spaces<|endoftext|>after the end of text",
    "",
    "héllo wörld 😀\n\n\tthere's 1234 numbers   ",
    "<|endoftext|>",
]
# Each is a plain call (the direct path) unless marked general.
CALLS = [
    {},
    {"add_special_tokens": False},
    {"return_attention_mask": False},
    {"return_attention_mask": True, "return_token_type_ids": False},
    {"add_prefix_space": True},
    {"padding": False, "truncation": False, "verbose": False},
    {"padding": None, "stride": 0, "max_length": None},
    {"return_token_type_ids": True},  # general
    {"return_length": True},  # general
    {"padding": True},  # general
    {"truncation": True, "max_length": 4},  # general
    {"return_special_tokens_mask": True, "return_offsets_mapping": True},  # general
]


def general(tok: GPT2TokenizerFast, *args, **kwargs) -> BatchEncoding:
    return _GPT2TokenizerBase.__call__(tok, *args, **kwargs)


def same(a: BatchEncoding, b: BatchEncoding) -> None:
    assert type(a) is type(b) is BatchEncoding
    assert list(a) == list(b)
    for key in a:
        if isinstance(a[key], np.ndarray) or hasattr(a[key], "numpy"):
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def toks():
    fast, python = GPT2TokenizerFast(pad_token="<|endoftext|>"), GPT2Tokenizer(pad_token="<|endoftext|>")
    return fast, python


@pytest.mark.parametrize("kwargs", CALLS, ids=lambda k: ",".join(f"{n}={v}" for n, v in k.items()) or "plain")
def test_plain_and_general_calls_equal_the_general_path_and_python(toks, kwargs):
    fast, python = toks
    for text in (TEXTS, tuple(TEXTS), TEXTS[0], TEXTS[2], TEXTS[1], []):
        got = fast(text, **kwargs)
        same(got, general(fast, text, **kwargs))
        same(got, python(text, **kwargs))


def test_plain_calls_with_tensors(toks):
    fast, python = toks
    for text in (TEXTS[0], [TEXTS[0], TEXTS[0]], []):
        for return_tensors in ("np", "pt"):
            got = fast(text, return_tensors=return_tensors)
            same(got, general(fast, text, return_tensors=return_tensors))
            same(got, python(text, return_tensors=return_tensors))
    with pytest.raises(ValueError, match="different lengths"):
        fast([TEXTS[0], TEXTS[3]], return_tensors="np")
    with pytest.raises(ValueError, match="return_tensors must be"):
        fast(TEXTS, return_tensors="xx")


def test_equals_transformers_fast_tokenizer(tmp_path):
    import transformers

    GPT2Tokenizer().save_pretrained(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(tmp_path)
    fast = GPT2TokenizerFast()
    for text in (TEXTS, TEXTS[3]):
        ours, theirs = fast(text), hf(text)
        assert list(ours) == list(theirs) == ["input_ids", "attention_mask"]
        assert ours["input_ids"] == theirs["input_ids"] and ours["attention_mask"] == theirs["attention_mask"]


def test_results_are_fresh_lists():
    fast = GPT2TokenizerFast()
    first = fast(["same text", "same text"])
    first["input_ids"][0].append(-1)
    first["attention_mask"][1].append(-1)
    assert fast(["same text", "same text"]) == general(fast, ["same text", "same text"])
    assert first["input_ids"][1] != first["input_ids"][0]


def test_other_inputs_keep_the_general_paths_behaviour():
    fast, python = GPT2TokenizerFast(add_bos_token=True), GPT2Tokenizer(add_bos_token=True)
    same(fast(TEXTS), python(TEXTS))  # a template token: general path
    assert fast(TEXTS[0])["input_ids"][0] == fast.bos_token_id
    same(fast(TEXTS[0], add_special_tokens=False), python(TEXTS[0], add_special_tokens=False))
    plain = GPT2TokenizerFast()
    same(plain([("a pair", "of texts")]), GPT2Tokenizer()([("a pair", "of texts")]))
    same(plain("a text", "its pair"), GPT2Tokenizer()("a text", "its pair"))
    same(plain(text_target=TEXTS[0]), GPT2Tokenizer()(text_target=TEXTS[0]))
    words = ["split", "words"]
    same(plain(words, is_split_into_words=True), GPT2Tokenizer()(words, is_split_into_words=True))
    same(plain(TEXTS[0], None, None, None, False), GPT2Tokenizer()(TEXTS[0], None, None, None, False))
    for bad, error in ((None, TypeError), (3, TypeError), (["ok", 3], TypeError), ("\ud800", ValueError)):
        with pytest.raises(error) as ours:
            plain(bad)
        with pytest.raises(error) as theirs:
            GPT2Tokenizer()(bad)
        assert str(ours.value) == str(theirs.value)
    with pytest.raises(TypeError, match="unexpected keyword"):
        plain(TEXTS, no_such_argument=1)
    with pytest.raises(ValueError, match="Unknown padding strategy"):
        plain(TEXTS, padding=0)  # 0 is not False for the strategy table: the general path's error


def test_signature_and_docstring_are_the_general_ones():
    assert inspect.signature(GPT2TokenizerFast.__call__) == inspect.signature(_GPT2TokenizerBase.__call__)
    assert GPT2TokenizerFast.__call__.__doc__ == _GPT2TokenizerBase.__call__.__doc__
