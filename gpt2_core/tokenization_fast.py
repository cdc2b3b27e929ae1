"""`GPT2TokenizerFast`: GPT-2's tokenizer on Hugging Face `tokenizers` (Rust), with `GPT2Tokenizer`'s API and ids.

`tokenizers` does the splitting at added tokens, the byte-level pre-tokenization and BPE (and gives the character
offsets); everything else (templates, truncation, padding, files) is the shared code in
`gpt2_core.tokenization_api`, so the two classes cannot drift apart.

References:
    - huggingface/tokenizers: `models.BPE`, `pre_tokenizers.ByteLevel`, `decoders.ByteLevel`, `AddedToken`.
    - huggingface/transformers `models/gpt2/tokenization_gpt2.py` (v5): how it builds the same pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gpt2_core.tokenization_api import _GPT2TokenizerBase


class GPT2TokenizerFast(_GPT2TokenizerBase):
    """GPT-2's tokenizer backed by Hugging Face `tokenizers` (Rust): the same API and ids as `GPT2Tokenizer`.

    Needs `pip install tokenizers`. The underlying `tokenizers.Tokenizer` is `backend_tokenizer`.

    Args:
        vocab_file: Path to `vocab.json` (token -> id). With `merges_file` left out too, the shipped GPT-2
            vocabulary is used.
        merges_file: Path to `merges.txt` (one merge per line, in rank order, after a `#version` header).
        errors: How `decode` treats bytes that are not valid UTF-8 (a `bytes.decode` error handler).
        unk_token: The unknown token.
        bos_token: The beginning-of-sequence token (prepended only when `add_bos_token=True`).
        eos_token: The end-of-sequence token.
        pad_token: The padding token; GPT-2 has none, so padding needs e.g. `pad_token="<|endoftext|>"`. A special
            token missing from the vocabulary is added (as transformers does).
        add_prefix_space: Put a space before text that does not start with one.
        add_bos_token: Prepend `bos_token` when encoding with `add_special_tokens=True`.
        model_max_length: The longest input the model takes (1024 for GPT-2); the default for truncation.
        padding_side: `"right"` or `"left"`.
        truncation_side: `"right"` or `"left"`.
        vocab: A token -> id mapping to use instead of files (with `merges`).
        merges: The merges as pairs of token strings, in rank order (with `vocab`).
        name_or_path: Where the tokenizer came from (set by `from_pretrained`).
        sep_token, cls_token, mask_token: Further special-token roles (GPT-2 has none).
        additional_special_tokens: Extra special tokens, matched in text and skipped by `skip_special_tokens`.
    """

    def _build_backend(self) -> None:
        try:
            import tokenizers
        except ImportError as exc:
            raise ImportError(
                "GPT2TokenizerFast needs the `tokenizers` package: pip install tokenizers. "
                "GPT2Tokenizer gives the same ids in pure Python."
            ) from exc
        self._tokenizers = tokenizers
        self._backends: dict[bool, Any] = {}  # add_prefix_space -> tokenizers.Tokenizer, built on first use

    def _on_added_tokens_changed(self) -> None:
        self._backends = {}

    def _backend(self, add_prefix_space: bool) -> Any:
        backend = self._backends.get(add_prefix_space)
        if backend is None:
            backend = self._backends[add_prefix_space] = self._make_backend(add_prefix_space)
        return backend

    def _make_backend(self, add_prefix_space: bool) -> Any:
        tokenizers = self._tokenizers
        from tokenizers import decoders, models, pre_tokenizers

        vocab = dict(self.encoder)
        unk = self.unk_token
        if unk is not None and unk not in vocab:
            vocab[unk] = self.unk_token_id  # an added unk token must be in the model for BPE to emit it
        bpe = models.BPE(
            vocab=vocab,
            merges=list(self.merges),
            dropout=None,
            unk_token=unk,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
        )
        backend = tokenizers.Tokenizer(bpe)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space, use_regex=True)
        backend.decoder = decoders.ByteLevel()
        for content, token in sorted(self._added.items(), key=lambda kv: self._added_ids[kv[0]]):
            added = tokenizers.AddedToken(content, special=token.special, normalized=False)
            backend.add_special_tokens([added]) if token.special else backend.add_tokens([added])
            if backend.token_to_id(content) != self._added_ids[content]:
                raise ValueError(
                    f"Added token {content!r} got id {backend.token_to_id(content)} from `tokenizers`, not "
                    f"{self._added_ids[content]}. Received: added token ids that are not consecutive after the "
                    "vocabulary. Use GPT2Tokenizer, or re-save the tokenizer with consecutive ids."
                )
        return backend

    @property
    def backend_tokenizer(self) -> Any:
        """The `tokenizers.Tokenizer` doing the work (for the current `add_prefix_space`)."""
        return self._backend(self._add_prefix_space)

    def _encode_texts(
        self, texts: Sequence[str], add_prefix_space: bool, with_offsets: bool
    ) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        if not texts:
            return []
        encodings = self._backend(add_prefix_space).encode_batch(list(texts), add_special_tokens=False)
        return [(e.ids, list(e.offsets) if with_offsets else None) for e in encodings]
