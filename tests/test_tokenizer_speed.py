"""The fast paths of the tokenizers: GPT2TokenizerFast on tiktoken (cut long texts, thread pool, added tokens split
in Python) and GPT2Tokenizer on long pre-tokens (no quadratic merge loop, bounded cache).

Oracles, none of them the code under test:
    - a plain merge-list BPE written here (OpenAI's encoder.py loop) for every token of GPT-2's vocabulary;
    - Hugging Face `tokenizers`' BPE built from the shipped files (the engine GPT2TokenizerFast used before);
    - the pure-Python GPT2Tokenizer against the fast one, and each engine's uncut single call against the cut text.
No test asserts an absolute time; the scaling check compares two sizes with a wide margin.
"""

from __future__ import annotations

import random
import string
import time

import pytest

from gpt2_core import tokenization_bpe, tokenization_fast
from gpt2_core import tokenization_io as io
from gpt2_core.tokenization import GPT2Tokenizer, GPT2TokenizerFast, bytes_to_unicode
from tests.conftest import corpus_dir

EOT = "<|endoftext|>"
TRICKY = [
    "",
    " ",
    "Hello world",
    "   leading and trailing   \n\n\n  \t\r\n",
    "I'm sure they'll've done it; we'd said 'twas so. DON'T 'S",
    "Unicode: naïve café, 日本語のテキスト, Ελληνικά, emoji 👍🏽👨‍👩‍👧 and e\u0301 combining \u00a0\u3000.",
    f"first{EOT}second {EOT} third{EOT}{EOT}<|endoftext",
    "x\ny\n\nz\n \nw\n" * 50,
    "a" * 3000 + "1" * 3000 + "!" * 3000,
]


@pytest.fixture(scope="module")
def python_tok():
    return GPT2Tokenizer()


@pytest.fixture(scope="module")
def fast_tok():
    tok = GPT2TokenizerFast()
    if tok._tiktoken() is None:
        pytest.fail("tiktoken is not installed: the dev extra has it, and these tests check the tiktoken path")
    return tok


@pytest.fixture(scope="module")
def hf_bpe():
    """`tokenizers`' BPE on the shipped files, without our wrapper: ids only (it knows `<|endoftext|>`)."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    encoder, merges = io.shipped_files()
    tok = Tokenizer(models.BPE(vocab=dict(encoder), merges=list(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    return lambda text: tok.encode(text, add_special_tokens=False).ids


def _sample_text() -> str:
    # The committed sample, or the same openings of the shared corpus (conftest.corpus_dir).
    directory = corpus_dir()
    names = sorted(p.name for p in directory.iterdir() if p.suffix == ".txt")[:5]
    return "".join((directory / name).read_text(encoding="utf-8")[:30_000] for name in names)


def test_tiktoken_rank_rule_equals_the_merge_list_on_every_gpt2_token():
    # Why tiktoken may stand in for GPT-2's merge list: its rule (merge the adjacent pair whose result has the lowest
    # rank) gives the merge list's result on each token's own bytes. Checked here with encoder.py's loop.
    engine = tokenization_fast._gpt2_tiktoken()
    encoder, merges = io.shipped_files()
    byte_decoder = {c: b for b, c in bytes_to_unicode().items()}
    merge_rank = {(a, b): r for r, (a, b) in enumerate(merges)}
    byte_token = bytes_to_unicode()
    ranks_increase = [encoder[a + b] for a, b in merges]
    assert ranks_increase == sorted(ranks_increase), "merge results must have ids in merge order"
    wrong = []
    for token, token_id in encoder.items():
        if token == EOT:
            continue
        word = [byte_token[b] for b in bytes(byte_decoder[c] for c in token)]
        while len(word) > 1:  # OpenAI's encoder.py: merge every occurrence of the lowest-ranked pair
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)} & merge_rank.keys()
            if not pairs:
                break
            best = min(pairs, key=merge_rank.__getitem__)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        expected = [encoder[t] for t in word]
        got = engine._encode_single_piece(bytes(byte_decoder[c] for c in token))
        if expected != [token_id] or got != expected:
            wrong.append((token, expected, got))
    assert not wrong, wrong[:5]


def test_fast_equals_python_and_tokenizers_on_corpus_sample(fast_tok, python_tok, hf_bpe):
    text = _sample_text()
    ids = fast_tok.encode(text)
    assert ids == python_tok.encode(text) == hf_bpe(text)
    assert fast_tok.decode(ids) == text


def test_long_text_is_cut_only_where_pre_tokens_break(fast_tok, python_tok, hf_bpe, monkeypatch):
    # Small chunks so the cut path runs often, on text full of newlines next to spaces, digits, letters, other
    # newlines and non-ASCII characters (where a cut would change the pre-tokens), and text without any newline.
    monkeypatch.setattr(tokenization_fast, "_CHUNK_CHARS", 64)
    monkeypatch.setattr(tokenization_fast, "_PARALLEL_MIN_CHARS", 1)
    rng = random.Random(0)
    alphabet = ["\n", "\n\n", " \n", "\n ", "a", "Z", "7", "'s", "!", "é", "\u3000", " ", "\t", "x\ny", "\r\n"]
    text = "".join(rng.choice(alphabet) for _ in range(20_000))
    engine = tokenization_fast._gpt2_tiktoken()
    assert len(tokenization_fast._safe_cuts(text, 64)) > 10
    for sample in (text, text.replace("\n", ""), _sample_text()):
        expected = engine.encode_ordinary(sample)  # one uncut call
        assert fast_tok.encode(sample) == expected == python_tok.encode(sample)
    assert hf_bpe(text) == engine.encode_ordinary(text)


def test_tricky_text_added_tokens_and_prefix_space(python_tok, hf_bpe):
    for cls in (GPT2Tokenizer, GPT2TokenizerFast):
        assert cls().encode(TRICKY[5]) == hf_bpe(TRICKY[5])
    fast, slow = GPT2TokenizerFast(), GPT2Tokenizer()
    for tok in (fast, slow):
        tok.add_tokens(["<tag>", "<tag>long</tag>", "zz"])  # overlapping: the longest wins at a position
        tok.add_special_tokens({"additional_special_tokens": ["[SPECIAL]"]})
    extra = ["a<tag>long</tag>b<tag>c", "[SPECIAL]zz zzz[SPECIAL] <tag>", "zz" * 10]
    for text in TRICKY + extra:
        assert fast.encode(text) == slow.encode(text), text
        assert fast.encode(text, add_prefix_space=True) == slow.encode(text, add_prefix_space=True), text
        assert fast(text, return_offsets_mapping=True)["offset_mapping"] == slow(
            text, return_offsets_mapping=True
        )["offset_mapping"], text
    assert fast(TRICKY + extra)["input_ids"] == slow(TRICKY + extra)["input_ids"]


def test_batches_threads_and_fallbacks_give_the_same_ids(python_tok, monkeypatch):
    text = _sample_text()
    rng = random.Random(1)
    batch = [text[i : i + rng.randrange(0, 3000)] for i in range(0, len(text), 1500)] + ["", EOT, "x" * 70_000]
    expected = [python_tok.encode(t) for t in batch]
    assert GPT2TokenizerFast()(batch)["input_ids"] == expected  # thread pool
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    assert GPT2TokenizerFast()(batch)["input_ids"] == expected  # calling thread only
    monkeypatch.setattr(tokenization_fast, "_gpt2_tiktoken", lambda: None)  # tiktoken missing: `tokenizers`
    assert GPT2TokenizerFast()(batch)["input_ids"] == expected


def test_other_vocabularies_do_not_use_tiktoken():
    encoder, merges = io.shipped_files()
    vocab = {t: i for t, i in encoder.items() if i < 256 + 500}
    tok = GPT2TokenizerFast(vocab=vocab, merges=merges[:500])
    assert tok._tiktoken() is None
    assert tok.encode(TRICKY[4]) == GPT2Tokenizer(vocab=vocab, merges=merges[:500]).encode(TRICKY[4])


def _long_word(n: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(string.ascii_letters) for _ in range(n))


def test_python_long_words_are_right_and_not_cached(python_tok, fast_tok):
    # Long pre-tokens take the segmented NumPy path (> 4 KB), medium ones the heap, short ones the plain loop.
    rng = random.Random(4)
    mixed = "".join(rng.choice("aeiouéßжπ日本語한") for _ in range(20_000))
    words = [_long_word(30_000, 0), "a" * 30_001, "ab" * 15_000, "!?" * 10_000 + "7" * 5_000, mixed,
             "👍🏽" * 3000, "aaab" * 4000, _long_word(3000, 5), _long_word(100, 6)]  # fmt: skip
    for text in words:
        assert python_tok.encode(text) == fast_tok.encode(text), text[:20]
        assert python_tok._core.bpe(text) == python_tok._core._bpe_long(
            [python_tok._core.byte_ids[b] for b in text.encode()]
        ), text[:20]
    cache = python_tok._core._cache
    assert all(len(piece) <= tokenization_bpe._CACHE_MAX_PIECE_CHARS for piece in cache)
    assert len(cache) <= tokenization_bpe._CACHE_MAX_ENTRIES


def test_python_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(tokenization_bpe, "_CACHE_MAX_ENTRIES", 50)
    tok = GPT2Tokenizer()
    tok.encode(" ".join(f"w{i}x" for i in range(1000)))
    assert 0 < len(tok._core._cache) <= 50


def test_python_long_words_scale_about_linearly(python_tok):
    # 20x the input may take 20x the time (n log n a bit more); quadratic would be 400x. The margin (5x) absorbs
    # a loaded machine; the best of three runs of each size keeps one slow run from deciding.
    small, large = _long_word(10_000, 2), _long_word(200_000, 3)

    def best(text: str) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            python_tok._core.bpe(text)
            times.append(time.perf_counter() - start)
        return min(times)

    best(small)
    ratio = best(large) / best(small)
    assert ratio < 100, f"200 KB took {ratio:.0f}x the time of 10 KB (linear: 20x, quadratic: 400x)"
