"""TFGPT2Tokenizer: GPT-2's byte-level BPE as TensorFlow ops, so a SavedModel takes text in.

Gives exactly the ids of `gpt2_core.tokenization.GPT2Tokenizer` (the oracle), using only core TensorFlow
(`tf.strings` with RE2 regexes, `tf.lookup` tables, a `tf.while_loop` BPE); no tensorflow-text.

How OpenAI's pre-tokenization pattern is run without lookahead (RE2 has none):

    's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

`\\s+(?!\\S)` only differs from `\\s+` on a run of two or more whitespace characters followed by a non-space: the
run's last character then starts the next piece (as the optional space of ` ?\\p{L}+`..., or alone if it is not a
space). So a delimiter is first put before the last character of every such run (`(\\s)(\\s\\S)`), the text is split
there, and the rest of the pattern, with plain `\\s+`, runs on each part. The character classes are the `regex`
module's own (`\\s`, `\\p{L}`, `\\p{N}`), written out as code-point ranges, so the two tokenizers agree on every
character whatever Unicode version each library ships.

Delimiters: the text's NUL characters are first escaped to `NUL \\x02` (two characters of the same class, so no
piece boundary moves); `NUL \\x01` then marks piece boundaries and `NUL \\x03` special tokens, and can never be
confused with text.

The BPE merges, per pre-token and in parallel over the unique pre-tokens of a batch, the adjacent pair of lowest
rank (the leftmost on ties) until none is left: the rule of the oracle (and of tiktoken).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Mapping, Sequence

import numpy as np
import regex
import tensorflow as tf

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
import keras  # noqa: E402

from gpt2_core.tokenization import ENDOFTEXT, bytes_to_unicode  # noqa: E402

_NUL = "\x00"
_ESCAPED_NUL = "\x00\x02"
_DELIM = "\x00\x01"
_SPECIAL = "\x00\x03"
_ID_BITS = 20  # token ids < 2**20 (merge-table keys pack two ids into one int64)
_NO_RANK = np.iinfo(np.int64).max


def _re2_ranges(pattern: str) -> str:
    """The code points `regex` matches with `pattern`, as the inside of an RE2 character class."""
    parts = []
    for start, stop in ((0, 0xD800), (0xE000, 0x110000)):  # no surrogates: they are not valid UTF-8
        text = "".join(map(chr, range(start, stop)))
        for m in regex.finditer(f"(?:{pattern})+", text):
            lo, hi = start + m.start(), start + m.end() - 1
            parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
    return "".join(parts)


@functools.lru_cache(maxsize=None)
def pretokenize_patterns() -> tuple[str, str]:
    """(run-split pattern, piece pattern) in RE2 syntax, with the `regex` module's character classes."""
    ws, letter, number = _re2_ranges(r"\s"), _re2_ranges(r"\p{L}"), _re2_ranges(r"\p{N}")
    split_runs = f"([{ws}])([{ws}][^{ws}])"
    pieces = (
        f"(?s){_SPECIAL}.*"  # a special-token segment, whole (never matched in text: see the module docstring)
        f"|'s|'t|'re|'ve|'m|'ll|'d| ?[{letter}]+| ?[{number}]+| ?[^{ws}{letter}{number}]+|[{ws}]+"
    )
    return split_runs, pieces


class _Source:
    """The vocabulary and merges a tokenizer was built from (for get_config)."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        self.vocab, self.merges = vocab, merges


def _escape_re2(text: str) -> str:
    return "".join(f"\\x{{{ord(c):X}}}" for c in text)


@keras.saving.register_keras_serializable(package="gpt2_tf")
class TFGPT2Tokenizer(keras.layers.Layer):
    """GPT-2's tokenizer as a Keras layer of TensorFlow ops: a batch of strings in, padded token ids out.

    Ids equal `gpt2_core.tokenization.GPT2Tokenizer`'s (special tokens such as `<|endoftext|>` in the text included).
    Runs eagerly, in `tf.function` and `tf.data` (batched or one string per element), and inside a SavedModel
    signature; without `max_length` it pads to the longest row of the batch (`tokenize` gives the ragged ids).
    `get_config()` carries the vocabulary, merges and special tokens, so `from_config` (and `keras.saving`) rebuild
    this tokenizer, not GPT-2's.

    Args:
        vocab: Token -> id (`vocab.json`); with `merges` left out too, the shipped GPT-2 vocabulary.
        merges: The BPE merges, as pairs of token strings in rank order.
        max_length: Truncate and pad to this many tokens; None pads to the longest row of the batch.
        pad_token_id: Id written in padding; None: the id of `<|endoftext|>` (GPT-2 has no pad token).
        padding_side: `"right"` or `"left"` (left for generation).
        truncation_side: `"right"` or `"left"` (keep the end of a long prompt).
        add_prefix_space: Put a space before text that does not start with one (as the oracle does).
        special_tokens: Token strings matched as one id inside text; default `<|endoftext|>`.
    """

    def __init__(
        self,
        vocab: Mapping[str, int] | None = None,
        merges: Sequence[Sequence[str]] | None = None,
        *,
        max_length: int | None = None,
        pad_token_id: int | None = None,
        padding_side: str = "right",
        truncation_side: str = "right",
        add_prefix_space: bool = False,
        special_tokens: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (vocab is None) != (merges is None):
            raise ValueError("Pass both vocab and merges, or neither (the shipped GPT-2 vocabulary).")
        if vocab is None:
            from gpt2_core.tokenization import GPT2Tokenizer

            oracle = GPT2Tokenizer()
            vocab, merges = oracle.encoder, oracle.merges
        vocab = dict(vocab)
        merges = [tuple(m) for m in merges]
        # kept for get_config (a plain holder: Keras would wrap a dict attribute in a tracking container)
        self._source = _Source(vocab, merges)
        if max(vocab.values()) >= 2**_ID_BITS:
            raise ValueError(f"Token ids must be < 2**{_ID_BITS}. Received: max id {max(vocab.values())}.")
        self.vocab_size = max(vocab.values()) + 1
        special_tokens = [ENDOFTEXT] if special_tokens is None else list(special_tokens)
        self.special_tokens = [t for t in dict.fromkeys(special_tokens) if t in vocab]
        self.add_prefix_space = bool(add_prefix_space)
        default_pad = vocab.get(ENDOFTEXT, 0)
        self.configure(
            max_length=max_length,
            pad_token_id=default_pad if pad_token_id is None else pad_token_id,
            padding_side=padding_side,
            truncation_side=truncation_side,
        )
        self._build_tables(vocab, merges)
        self.built = True

    def __call__(self, texts: Any, *args: Any, **kwargs: Any) -> dict[str, tf.Tensor]:
        # Keras takes only tensors positionally: a Python string or list of strings is converted first
        if not isinstance(texts, (tf.Tensor, tf.RaggedTensor)) and not tf.is_tensor(texts):
            texts = tf.convert_to_tensor(texts, tf.string)
        return super().__call__(texts, *args, **kwargs)

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def from_tokenizer(cls, tokenizer: Any, **kwargs: Any) -> "TFGPT2Tokenizer":
        """The in-graph twin of a `gpt2_core` (or transformers) GPT2Tokenizer: same vocabulary, merges, special
        tokens, `add_prefix_space`, padding side and pad id."""
        # added tokens (transformers' `added_tokens_encoder`) are matched whole in text, as the tokenizer does
        added = dict(getattr(tokenizer, "added_tokens_encoder", None) or {})
        specials = [ENDOFTEXT, *getattr(tokenizer, "all_special_tokens", []), *added]
        defaults = dict(
            add_prefix_space=bool(getattr(tokenizer, "add_prefix_space", False)),
            special_tokens=specials,
            pad_token_id=getattr(tokenizer, "pad_token_id", None),
            padding_side=getattr(tokenizer, "padding_side", "right"),
            truncation_side=getattr(tokenizer, "truncation_side", "right"),
        )
        defaults.update(kwargs)
        return cls({**tokenizer.encoder, **added}, list(tokenizer.merges), **defaults)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **kwargs: Any) -> "TFGPT2Tokenizer":
        """Read `vocab.json` + `merges.txt` (a local directory or Hub id, as `GPT2Tokenizer.from_pretrained`)."""
        from gpt2_core.tokenization import GPT2Tokenizer

        return cls.from_tokenizer(GPT2Tokenizer.from_pretrained(name_or_path), **kwargs)

    def configure(
        self,
        *,
        max_length: int | None = None,
        pad_token_id: int | None = None,
        padding_side: str | None = None,
        truncation_side: str | None = None,
    ) -> None:
        """Change the padding settings (read when a function is traced)."""
        for name, value in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if value is not None and value not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right'. Received: {name}={value!r}.")
        if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer or None. Received: max_length={max_length!r}.")
        self.max_length = None if max_length is None else int(max_length)
        if pad_token_id is not None:
            self.pad_token_id = int(pad_token_id)
        if padding_side is not None:
            self.padding_side = padding_side
        if truncation_side is not None:
            self.truncation_side = truncation_side

    def _build_tables(self, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
        byte_encoder = bytes_to_unicode()
        missing = [byte_encoder[b] for b in range(256) if byte_encoder[b] not in vocab]
        if missing:
            raise ValueError(
                "TFGPT2Tokenizer needs a token for each of the 256 bytes (GPT-2's byte-level alphabet). Received: a "
                f"vocabulary of {len(vocab)} tokens without {len(missing)} of them, e.g. {missing[:5]}. Add the byte "
                "tokens to the vocabulary, or use gpt2_core's GPT2Tokenizer outside the graph."
            )
        byte_keys = tf.constant([bytes([b]) for b in range(256)])
        byte_ids = tf.constant([vocab[byte_encoder[b]] for b in range(256)], tf.int64)
        self._byte_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(byte_keys, byte_ids), default_value=-1
        )
        # (left id, right id) -> rank << ID_BITS | merged id; the first occurrence of a pair wins (as the oracle)
        table: dict[int, int] = {}
        for rank, (a, b) in enumerate(merges):
            key = (vocab[a] << _ID_BITS) | vocab[b]
            table.setdefault(key, (rank << _ID_BITS) | vocab[a + b])
        self._merge_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(table), tf.int64), tf.constant(list(table.values()), tf.int64)
            ),
            default_value=-1,
        )
        specials = self.special_tokens or ["<never>"]
        self._special_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant([(_SPECIAL + t).encode("utf-8") for t in specials]),
                tf.constant([vocab.get(t, -1) for t in specials], tf.int64),
            ),
            default_value=-1,
        )
        byte_decoder = {c: b for b, c in byte_encoder.items()}
        ids = sorted(vocab.values())
        token_of = {i: t for t, i in vocab.items()}
        special = set(self.special_tokens)
        raw = [
            t.encode("utf-8") if t in special else bytes(byte_decoder.get(c, 0) for c in t)
            for t in (token_of[i] for i in ids)
        ]
        self._decode_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(ids, tf.int64), tf.constant(raw)), default_value=b""
        )

    # -- encoding ---------------------------------------------------------------------------------------------------
    def _pretokenize(self, texts: tf.Tensor) -> tf.RaggedTensor:
        """(B,) strings -> (B, None) pieces (escaped special segments kept whole)."""
        split_runs, pieces_pattern = pretokenize_patterns()
        t = tf.strings.regex_replace(texts, "\\x00", _ESCAPED_NUL)
        if self.special_tokens:
            # longest first, so the longest special token at a position wins (as the oracle's regex)
            alternatives = "|".join(_escape_re2(s) for s in sorted(self.special_tokens, key=len, reverse=True))
            t = tf.strings.regex_replace(t, f"({alternatives})", _DELIM + _SPECIAL + "\\1" + _DELIM)
        segments = tf.strings.split(t, _DELIM)  # (B, None)
        s = segments.flat_values
        if self.add_prefix_space:
            s = tf.strings.regex_replace(s, "^([^ \\x00]|\\x00\\x02)", " \\1")
        s = tf.strings.regex_replace(s, split_runs, "\\1" + _DELIM + "\\2")
        s = tf.strings.regex_replace(s, pieces_pattern, _DELIM + "\\0")
        pieces = segments.with_flat_values(tf.strings.split(s, _DELIM)).merge_dims(1, 2)
        return tf.ragged.boolean_mask(pieces, tf.strings.length(pieces) > 0)

    def _bpe(self, words: tf.Tensor) -> tf.RaggedTensor:
        """(U,) distinct pre-tokens (raw bytes) -> (U, None) token ids."""
        ids = self._byte_table.lookup(tf.strings.bytes_split(words))  # (U, None) base tokens
        U = tf.shape(words, out_type=tf.int64)[0]
        big = tf.constant(_NO_RANK, tf.int64)
        mask = tf.constant((1 << _ID_BITS) - 1, tf.int64)

        def body(values, rows, _):
            M = tf.shape(values, out_type=tf.int64)[0]
            pair_row = rows[:-1]
            found = self._merge_table.lookup(tf.bitwise.left_shift(values[:-1], _ID_BITS) | values[1:])  # (M-1,)
            valid = (pair_row == rows[1:]) & (found >= 0)
            rank = tf.where(valid, tf.bitwise.right_shift(found, _ID_BITS), big)
            best = tf.math.unsorted_segment_min(rank, pair_row, U)  # (U,) lowest rank per word
            index = tf.range(M - 1)
            at = tf.where(valid & (rank == tf.gather(best, pair_row)), index, big)
            first = tf.math.unsorted_segment_min(at, pair_row, U)  # (U,) leftmost pair of that rank
            sel = tf.boolean_mask(first, first < big)  # one merge per word per iteration
            values = tf.tensor_scatter_nd_update(values, sel[:, None], tf.gather(found, sel) & mask)
            keep = tf.logical_not(tf.scatter_nd((sel + 1)[:, None], tf.ones_like(sel, tf.bool), [M]))
            return tf.boolean_mask(values, keep), tf.boolean_mask(rows, keep), tf.size(sel) > 0

        values, rows, _ = tf.while_loop(
            lambda v, r, go: go,
            body,
            (ids.flat_values, ids.value_rowids(), tf.size(ids.flat_values) > 1),
            shape_invariants=(tf.TensorShape([None]), tf.TensorShape([None]), tf.TensorShape([])),
        )
        return tf.RaggedTensor.from_value_rowids(values, rows, nrows=U)

    def tokenize(self, texts: Any) -> tf.RaggedTensor:
        """(B,) strings (or one string) -> (B, None) int32 token ids, unpadded."""
        texts = tf.convert_to_tensor(texts, tf.string)
        scalar = texts.shape.rank == 0
        if scalar:
            texts = texts[None]
        pieces = self._pretokenize(texts)  # (B, None)
        flat = pieces.flat_values
        is_special = tf.strings.substr(flat, 0, 2) == _SPECIAL
        special_ids = self._special_table.lookup(tf.boolean_mask(flat, is_special))
        words = tf.strings.regex_replace(tf.boolean_mask(flat, ~is_special), "\\x00\\x02", _NUL)
        unique, where = tf.unique(words)
        word_ids = tf.gather(self._bpe(unique), where)  # (n_words, None)
        n_words = tf.shape(where, out_type=tf.int64)[0]
        both = tf.concat([word_ids, tf.RaggedTensor.from_tensor(special_ids[:, None])], axis=0)
        # back to piece order: the k-th word is row k, the k-th special row n_words + k
        order = tf.where(
            is_special,
            n_words + tf.cumsum(tf.cast(is_special, tf.int64), exclusive=True),
            tf.cumsum(tf.cast(~is_special, tf.int64), exclusive=True),
        )
        piece_ids = tf.gather(both, order)  # (n_pieces, None)
        ids = tf.RaggedTensor.from_row_splits(piece_ids, pieces.row_splits).merge_dims(1, 2)
        ids = tf.cast(ids, tf.int32)
        return ids[0] if scalar else ids

    def call(self, texts: Any, max_length: int | None = None) -> dict[str, tf.Tensor]:
        """(B,) strings -> {"input_ids", "attention_mask"}, (B, L) int32; one string -> (L,) each.

        `L` is `max_length` (this call's, else the layer's: rows truncated per `truncation_side`, padded to it) or,
        with neither, the longest row of the batch. Works in graph mode (`tf.function`, `tf.data`, a SavedModel
        signature with unknown batch size) either way.
        """
        texts = tf.convert_to_tensor(texts, tf.string)
        scalar = texts.shape.rank == 0
        ids = self.tokenize(texts[None] if scalar else texts)  # (B, None) ragged
        max_length = self.max_length if max_length is None else int(max_length)
        if max_length is not None:
            ids = ids[:, :max_length] if self.truncation_side == "right" else ids[:, -max_length:]
        lengths = ids.row_lengths()
        if max_length is None:
            dense = ids.to_tensor(default_value=self.pad_token_id)  # (B, longest) right-padded
            L = tf.shape(dense, out_type=tf.int64)[1]
        else:
            L = max_length
            dense = ids.to_tensor(default_value=self.pad_token_id, shape=[None, L])  # (B, L) right-padded
        mask = tf.sequence_mask(lengths, L, dtype=tf.int32)
        if self.padding_side == "left":
            shift = tf.cast(L, tf.int64) - lengths  # (B,)
            src = tf.range(L, dtype=tf.int64)[None, :] - shift[:, None]
            dense = tf.where(src >= 0, tf.gather(dense, tf.maximum(src, 0), batch_dims=1), self.pad_token_id)
            mask = tf.reverse(mask, axis=[1])
        if scalar:
            return {"input_ids": dense[0], "attention_mask": mask[0]}
        return {"input_ids": dense, "attention_mask": mask}

    # -- decoding ---------------------------------------------------------------------------------------------------
    def detokenize(self, ids: Any, skip_ids: Sequence[int] | None = None) -> tf.Tensor:
        """(B, L) ids (dense or ragged) -> (B,) UTF-8 strings; invalid UTF-8 becomes U+FFFD (the oracle's
        errors="replace"). `skip_ids` (e.g. the pad id) are left out."""
        ids = tf.cast(ids, tf.int64) if not isinstance(ids, tf.RaggedTensor) else tf.cast(ids, tf.int64)
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids)
        if skip_ids:
            keep = tf.reduce_all(ids.flat_values[:, None] != tf.constant(list(skip_ids), tf.int64)[None, :], axis=-1)
            ids = tf.ragged.boolean_mask(ids, ids.with_flat_values(keep))
        raw = tf.strings.reduce_join(ids.with_flat_values(self._decode_table.lookup(ids.flat_values)), axis=-1)
        return tf.strings.unicode_transcode(raw, "UTF-8", "UTF-8", errors="replace")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            vocab=dict(self._source.vocab),
            merges=[list(m) for m in self._source.merges],
            max_length=self.max_length,
            pad_token_id=self.pad_token_id,
            padding_side=self.padding_side,
            truncation_side=self.truncation_side,
            add_prefix_space=self.add_prefix_space,
            special_tokens=list(self.special_tokens),
        )
        return config
