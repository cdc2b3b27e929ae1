"""GPT-2's byte-level BPE tokenizer: a pure-Python one and one backed by Hugging Face `tokenizers`.

Both classes take the same arguments, expose the same API (a drop-in for transformers' `GPT2Tokenizer` /
`GPT2TokenizerFast`) and give the same ids as OpenAI's encoder and tiktoken's "gpt2" encoding. With no files they
use the vocabulary shipped in `gpt2_core/data` (OpenAI's `encoder.json` and `vocab.bpe`, named `vocab.json` and
`merges.txt` the Hugging Face way), so they work offline; every GPT-2 size and distilgpt2 share that vocabulary.

This module is the public entry point; the code lives in four modules:

* `gpt2_core.tokenization_bpe`: the byte <-> unicode table, the pre-tokenization pattern and the BPE merge loop;
* `gpt2_core.tokenization_api`: the user API (`__call__`, encode/decode, pairs, padding, truncation, overflow,
  offsets, added and special tokens) and `GPT2Tokenizer`;
* `gpt2_core.tokenization_fast`: `GPT2TokenizerFast` on `tokenizers`;
* `gpt2_core.tokenization_utils`: `BatchEncoding`, input checks, truncation windows, tensor conversion;
* `gpt2_core.tokenization_io`: reading and writing the tokenizer files, resolved through `gpt2_core.hub`.

References:
    - OpenAI, gpt-2 `src/encoder.py`: the pre-tokenization pattern, `bytes_to_unicode` and the BPE merge loop.
    - openai/tiktoken: the merge rule used here (merge the lowest-ranked adjacent pair, leftmost first).
    - huggingface/transformers `GPT2Tokenizer` (v4 and v5) and huggingface/tokenizers `ByteLevel`: the API, the
      files written by `save_pretrained`, and the handling of special tokens and `add_prefix_space`.

Only the standard library, numpy and `regex` are imported here; `tokenizers`, `huggingface_hub`, torch,
TensorFlow and JAX are imported when a feature that needs them is used.
"""

from __future__ import annotations

from gpt2_core.tokenization_api import GPT2Tokenizer, _GPT2TokenizerBase
from gpt2_core.tokenization_bpe import (
    _PRETOKENIZE_PATTERN_UNICODE_16,
    _UNICODE_17_LETTERS_AND_NUMBERS,
    ENDOFTEXT,
    GPT2_PRETOKENIZE_PATTERN,
    BytePairEncoder,
    bytes_to_unicode,
)
from gpt2_core.tokenization_fast import GPT2TokenizerFast
from gpt2_core.tokenization_io import (
    ADDED_TOKENS_FILE,
    KNOWN_GPT2_VOCAB_NAMES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILES_NAMES,
    AddedToken,
)
from gpt2_core.tokenization_utils import BatchEncoding

__all__ = [
    "AddedToken",
    "BatchEncoding",
    "GPT2Tokenizer",
    "GPT2TokenizerFast",
    "bytes_to_unicode",
    "GPT2_PRETOKENIZE_PATTERN",
    "ENDOFTEXT",
]

# Kept importable from here for code written against the single-module layout.
_ = (
    _GPT2TokenizerBase,
    _PRETOKENIZE_PATTERN_UNICODE_16,
    _UNICODE_17_LETTERS_AND_NUMBERS,
    BytePairEncoder,
    ADDED_TOKENS_FILE,
    KNOWN_GPT2_VOCAB_NAMES,
    SPECIAL_TOKENS_MAP_FILE,
    TOKENIZER_CONFIG_FILE,
    TOKENIZER_FILE,
    VOCAB_FILES_NAMES,
)
del _
