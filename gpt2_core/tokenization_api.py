"""The user API of GPT-2's tokenizers: `__call__`, encode/decode, batches, pairs, padding, truncation, overflow,
offsets, added and special tokens, and `GPT2Tokenizer` (pure Python, on `gpt2_core.tokenization_bpe`).

`_GPT2TokenizerBase` holds everything both tokenizers share; a subclass only turns a piece of text between added
tokens into ids (and character offsets). `GPT2TokenizerFast` (`gpt2_core.tokenization_fast`) does that with
`tokenizers`; files are read and written by `gpt2_core.tokenization_io`.

References:
    - huggingface/transformers `tokenization_utils_base.py` and `tokenization_utils_tokenizers.py` (v5): the call
      signature, padding / truncation / overflow rules, `pad`, `add_tokens` / `add_special_tokens`.
    - huggingface/tokenizers `utils/truncation.rs`: the longest-first rule for pairs and the stride windows.
"""

from __future__ import annotations

import codecs
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import numpy as np
import regex

from gpt2_core import tokenization_io as io
from gpt2_core.tokenization_bpe import ENDOFTEXT, BytePairEncoder, bytes_to_unicode
from gpt2_core.tokenization_io import SPECIAL_TOKEN_NAMES, VOCAB_FILES_NAMES, AddedToken
from gpt2_core.tokenization_utils import (
    BatchEncoding,
    _check_inputs,
    _check_optional_int,
    _check_return_tensors,
    _check_side,
    _check_text,
    _clean_up_tokenization,
    _lookup,
    _no_unknown_kwargs,
    _round_up,
    _short_repr,
    _tensor_kind,
    _to_lists,
    _to_tensor,
    _windows,
    _words_as_pairs,
)

logger = logging.getLogger("gpt2_core.tokenization")

_PADDING_STRATEGIES = {
    False: "do_not_pad",
    None: "do_not_pad",
    "do_not_pad": "do_not_pad",
    True: "longest",
    "longest": "longest",
    "max_length": "max_length",
}
_TRUNCATION_STRATEGIES = {
    False: "do_not_truncate",
    "do_not_truncate": "do_not_truncate",
    True: "longest_first",
    "longest_first": "longest_first",
    "only_first": "only_first",
    "only_second": "only_second",
}
# Per-row fields of an encoding, and the value padding fills them with (transformers' `pad`).
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "special_tokens_mask": 1, "offset_mapping": (0, 0)}

TokenIds = Union[Sequence[int], np.ndarray, Any]


def _special_token_property(name: str, doc: str) -> property:
    return property(lambda self: self._special.get(name), lambda self, value: self._set_special(name, value), doc=doc)


def _special_id_property(name: str) -> property:
    doc = f"The id of `{name}` (None when it is unset); setting it sets `{name}`."
    return property(lambda self: self._special_id(name), lambda self, value: self._set_special_id(name, value), doc=doc)


_Tokenizer = TypeVar("_Tokenizer", bound="_GPT2TokenizerBase")


class _GPT2TokenizerBase:
    """Everything the two GPT-2 tokenizers share; subclasses only turn text into ids (and offsets)."""

    vocab_files_names = VOCAB_FILES_NAMES
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(
        self,
        vocab_file: str | os.PathLike | None = None,
        merges_file: str | os.PathLike | None = None,
        errors: str = "replace",
        unk_token: str | None = ENDOFTEXT,
        bos_token: str | None = ENDOFTEXT,
        eos_token: str | None = ENDOFTEXT,
        pad_token: str | None = None,
        add_prefix_space: bool = False,
        add_bos_token: bool = False,
        model_max_length: int = 1024,
        padding_side: str = "right",
        truncation_side: str = "right",
        *,
        vocab: Mapping[str, int] | None = None,
        merges: Iterable[Sequence[str]] | None = None,
        name_or_path: str = "",
        sep_token: str | None = None,
        cls_token: str | None = None,
        mask_token: str | None = None,
        additional_special_tokens: Sequence[Any] | None = None,
        _added_tokens: Sequence[tuple[int | None, AddedToken]] = (),
    ) -> None:
        if (vocab_file is None) != (merges_file is None):
            raise ValueError(
                "Pass both vocab_file and merges_file, or neither to use the shipped GPT-2 vocabulary. "
                f"Received: vocab_file={vocab_file!r}, merges_file={merges_file!r}."
            )
        if (vocab is None) != (merges is None):
            raise ValueError("Pass both vocab and merges, or neither.")
        if vocab is not None:
            encoder, merge_list = dict(vocab), tuple((str(a), str(b)) for a, b in merges)  # type: ignore[union-attr]
        elif vocab_file is not None:
            # checked against each other: a truncated merges.txt is an error, not a tokenizer that splits differently
            encoder, merge_list = io.read_vocab_files(Path(vocab_file), Path(merges_file))  # type: ignore[arg-type]
        else:
            shipped_encoder, merge_list = io.shipped_files()
            encoder = dict(shipped_encoder)
        if not isinstance(model_max_length, int) or isinstance(model_max_length, bool) or model_max_length < 1:
            raise ValueError(
                f"model_max_length must be a positive int. Received: model_max_length={model_max_length!r}."
            )
        try:
            codecs.lookup_error(errors)
        except (LookupError, TypeError):
            raise ValueError(
                f"Unknown decoding error handler. Received: errors={errors!r}. Use 'replace', 'strict' or 'ignore'."
            ) from None

        self.encoder: dict[str, int] = encoder  # the BPE vocabulary (vocab.json); added tokens are kept apart
        self.decoder: dict[int, str] = {i: t for t, i in encoder.items()}  # every id, added tokens included
        self.merges: tuple[tuple[str, str], ...] = merge_list
        self.byte_encoder: dict[int, str] = bytes_to_unicode()
        self.byte_decoder: dict[str, int] = {c: b for b, c in self.byte_encoder.items()}
        self._check_vocabulary()
        self.errors = errors
        self.add_bos_token = bool(add_bos_token)
        self.model_max_length = model_max_length
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.name_or_path = name_or_path
        self._add_prefix_space = bool(add_prefix_space)
        self._special: dict[str, str | None] = {}
        self._extra_special: list[str] = []
        self._added: dict[str, AddedToken] = {}  # content -> token, in the order they were added
        self._added_ids: dict[str, int] = {}
        self._token_bytes: dict[int, bytes] = {i: self._bytes_of_token(t) for i, t in self.decoder.items()}
        self._warned_implicit_truncation = False
        self._build_backend()
        if ENDOFTEXT in encoder:  # GPT-2's one special token, matched in text as transformers does
            self._add_token(AddedToken(ENDOFTEXT, special=True), notify=False)
        for token_id, token in _added_tokens:
            self._add_token(token, token_id=token_id, notify=False)
        # Roles in transformers' order, so special tokens missing from the vocabulary get transformers' ids.
        roles = dict(bos_token=bos_token, eos_token=eos_token, unk_token=unk_token, sep_token=sep_token,
                     pad_token=pad_token, cls_token=cls_token, mask_token=mask_token)  # fmt: skip
        for name in SPECIAL_TOKEN_NAMES:
            self._set_special(name, roles[name], notify=False)
        for token in additional_special_tokens or ():
            self._add_extra_special(token, notify=False)
        self._on_added_tokens_changed()

    # ------------------------------------------------------------------ construction helpers

    def _check_vocabulary(self) -> None:
        for rank, (a, b) in enumerate(self.merges):
            if a not in self.encoder or b not in self.encoder or a + b not in self.encoder:
                raise ValueError(
                    f"Merge {rank} ({a!r} {b!r}) uses or makes a token missing from the vocabulary. "
                    f"Received: merges[{rank}]={(a, b)!r}. Pass the merges.txt that belongs to this vocab.json."
                )

    def _bytes_of_token(self, token: str) -> bytes:
        # `tokenizers`' ByteLevel decoder: byte-level characters become their byte, any other character its UTF-8.
        decoder = self.byte_decoder
        if all(c in decoder for c in token):
            return bytes(decoder[c] for c in token)
        return b"".join(bytes([decoder[c]]) if c in decoder else c.encode("utf-8") for c in token)

    def _build_backend(self) -> None:
        raise NotImplementedError

    def _on_added_tokens_changed(self) -> None:
        """Called after tokens were added (or special tokens set), so a backend can rebuild its matcher."""
        raise NotImplementedError

    def _add_token(self, token: AddedToken, token_id: int | None = None, notify: bool = True) -> bool:
        """Register an added token (matched verbatim in text before BPE); True if it was not one already."""
        if not token.content:
            raise ValueError("An added token cannot be empty. Received: token=''.")
        known = self._added.get(token.content)
        if known is not None:
            if token.special and not known.special:
                self._added[token.content] = AddedToken(token.content, special=True)
            return False
        if token_id is None:
            token_id = self.encoder.get(token.content)
        if token_id is None:
            token_id = max(self.decoder, default=-1) + 1
        elif self.decoder.get(token_id, token.content) != token.content:
            raise ValueError(
                f"Added token {token.content!r} has id {token_id}, which is already {self.decoder[token_id]!r}. "
                f"Received: token={token.content!r}, id={token_id}. The tokenizer files disagree; re-save them."
            )
        self._added[token.content] = token
        self._added_ids[token.content] = token_id
        self.decoder[token_id] = token.content
        self._token_bytes[token_id] = self._bytes_of_token(token.content)
        if notify:
            self._on_added_tokens_changed()
        return True

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(cls: type[_Tokenizer], name_or_path: str | os.PathLike, **kwargs: Any) -> _Tokenizer:
        """Load a tokenizer from a local directory, a known GPT-2 checkpoint name, or a Hub repo id.

        A directory needs `vocab.json` and `merges.txt` (or a BPE `tokenizer.json`); its optional
        `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json` set `add_prefix_space`,
        `model_max_length`, `pad_token`, `padding_side`, the added tokens and the other constructor arguments. The
        names "gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2" and their "openai-community/" /
        "distilbert/" forms use the shipped vocabulary without network access. Other names are resolved by
        `gpt2_core.hub.resolve_file` (a local directory, else a Hub id downloaded with `huggingface_hub`;
        HF_HUB_OFFLINE=1 restricts that to the local cache).

        Args:
            name_or_path: A directory or a Hub repo id.
            **kwargs: Constructor arguments, which override the saved configuration, and the Hub options
                `cache_dir`, `revision`, `token`, `local_files_only`, `subfolder`.

        Returns:
            The tokenizer.
        """
        hub_kwargs = {k: kwargs.pop(k) for k in io.HUB_KWARGS if k in kwargs}
        name = os.fspath(name_or_path)
        files = io.resolve_tokenizer_files(name, hub_kwargs)
        init_kwargs: dict[str, Any] = {}
        added: dict[str, tuple[int | None, AddedToken]] = {}
        if files.get("vocab.json"):
            init_kwargs["vocab_file"], init_kwargs["merges_file"] = files["vocab.json"], files["merges.txt"]
        elif files.get(io.TOKENIZER_FILE):
            data = io.read_tokenizer_json(files[io.TOKENIZER_FILE])  # type: ignore[arg-type]
            init_kwargs["vocab"], init_kwargs["merges"] = data.vocab, data.merges
            added.update((t.content, (i, t)) for i, t in data.added_tokens)
            if data.add_prefix_space is not None:
                init_kwargs["add_prefix_space"] = data.add_prefix_space
        if files.get(io.ADDED_TOKENS_FILE):
            for i, t in io.read_added_tokens_json(files[io.ADDED_TOKENS_FILE]):  # type: ignore[arg-type]
                added.setdefault(t.content, (i, t))
        if files.get(io.TOKENIZER_CONFIG_FILE):
            config = io.read_config(files[io.TOKENIZER_CONFIG_FILE])  # type: ignore[arg-type]
            for i, t in config.pop("_added_tokens", ()):
                added[t.content] = (i, t)  # the config knows which ones are special
            init_kwargs.update(config)
        if files.get(io.SPECIAL_TOKENS_MAP_FILE):
            init_kwargs.update(io.read_config(files[io.SPECIAL_TOKENS_MAP_FILE], special_only=True))
        init_kwargs["_added_tokens"] = sorted(added.values(), key=lambda it: (it[0] is None, it[0] or 0))
        init_kwargs["name_or_path"] = name
        init_kwargs.update(kwargs)
        return cls(**init_kwargs)

    def save_vocabulary(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, str]:
        """Write `vocab.json` and `merges.txt` in OpenAI's format (byte-identical to the originals for GPT-2).

        Args:
            save_directory: An existing or new directory.
            filename_prefix: Optional prefix; files are then named `{prefix}-vocab.json` and `{prefix}-merges.txt`.

        Returns:
            The paths of the vocabulary file and the merges file.
        """
        directory = io.prepare_directory(save_directory)
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        return io.write_vocab_files(directory, self.encoder, self.merges, prefix)

    def save_pretrained(
        self, save_directory: str | os.PathLike, filename_prefix: str | None = None
    ) -> tuple[str, ...]:
        """Write the vocabulary and a transformers-compatible configuration to `save_directory`.

        Writes `vocab.json`, `merges.txt`, `tokenizer_config.json` (with v4's `added_tokens_decoder`),
        `special_tokens_map.json`, `tokenizer.json` (what transformers v5 writes and loads first) and, when tokens
        were added beyond the vocabulary, `added_tokens.json`. transformers' `GPT2Tokenizer(Fast).from_pretrained`
        and `AutoTokenizer.from_pretrained` load the directory, added tokens included.

        Args:
            save_directory: An existing or new directory.
            filename_prefix: Optional prefix for the vocabulary files (see `save_vocabulary`).

        Returns:
            The paths of the files written.
        """
        added = [(self._added_ids[c], t) for c, t in self._added.items()]
        config: dict[str, Any] = {
            "add_bos_token": self.add_bos_token,
            "add_prefix_space": self.add_prefix_space,
            "added_tokens_decoder": {str(i): t.to_dict() for i, t in sorted(added, key=lambda it: it[0])},
            "clean_up_tokenization_spaces": False,
            "errors": self.errors,
            "model_max_length": self.model_max_length,
            "padding_side": self.padding_side,
            "tokenizer_class": "GPT2Tokenizer",
            "truncation_side": self.truncation_side,
        }
        for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
            config[name] = self._special.get(name)
        for name in ("sep_token", "cls_token", "mask_token"):
            if self._special.get(name) is not None:
                config[name] = self._special[name]
        special_map: dict[str, Any] = dict(self.special_tokens_map)
        if self._extra_special:
            config["extra_special_tokens"] = list(self._extra_special)
            special_map["additional_special_tokens"] = list(self._extra_special)
        tokenizer_json = io.tokenizer_json(
            self.encoder,
            self.merges,
            added,
            add_prefix_space=self.add_prefix_space,
            bos_token=self.bos_token,
            bos_token_id=self.bos_token_id,
            add_bos_token=self.add_bos_token,
            unk_token=self.unk_token,
        )
        prefix = f"{filename_prefix}-" if filename_prefix else ""
        # All or nothing: staged, then published together (a full disk or a signal leaves the old save intact).
        with io.atomic_save(save_directory) as staging:
            written = io.write_pretrained(
                staging,
                config=config,
                special_tokens_map=special_map,
                added_vocab={c: i for c, i in self._added_ids.items() if c not in self.encoder},
                tokenizer_json_data=tokenizer_json,
            )
            vocab = io.write_vocab_files(staging, self.encoder, self.merges, prefix)
        return io.published((*written, *vocab), save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        commit_description: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> Any:
        """Upload the tokenizer's `save_pretrained` files to the Hub repo `repo_id` (created if missing), as
        transformers' `push_to_hub`; the arguments are its (see `gpt2_core.tokenization_io.push_to_hub`). Unlike
        transformers, no model card (README.md) is written or tagged.

        Returns:
            huggingface_hub's `CommitInfo`.
        """
        return io.push_to_hub(
            self.save_pretrained,
            repo_id,
            default_message="Upload tokenizer",
            commit_message=commit_message,
            commit_description=commit_description,
            private=private,
            token=token,
            revision=revision,
            create_pr=create_pr,
        )

    # ------------------------------------------------------------------ vocabulary and special tokens

    @property
    def vocab_size(self) -> int:
        """The number of tokens in the BPE vocabulary (50257 for GPT-2), without added tokens (as transformers)."""
        return len(self.encoder)

    def __len__(self) -> int:
        """The size of the whole vocabulary, added tokens included (what `resize_token_embeddings` needs)."""
        return len(self.decoder)

    def get_vocab(self) -> dict[str, int]:
        """A copy of the token -> id mapping, added tokens included."""
        return {**self.encoder, **self._added_ids}

    def get_added_vocab(self) -> dict[str, int]:
        """The added tokens (special tokens included) -> id, as transformers' `get_added_vocab`."""
        return dict(sorted(self._added_ids.items(), key=lambda kv: kv[1]))

    @property
    def added_tokens_encoder(self) -> dict[str, int]:
        """Added token -> id."""
        return self.get_added_vocab()

    @property
    def added_tokens_decoder(self) -> dict[int, AddedToken]:
        """Id -> added token (with its `special` flag)."""
        return {self._added_ids[c]: t for c, t in sorted(self._added.items(), key=lambda kv: self._added_ids[kv[0]])}

    def add_tokens(self, new_tokens: Any, special_tokens: bool = False) -> int:
        """Add tokens that are matched verbatim in text before BPE (new ones get the next free ids).

        Args:
            new_tokens: A string, an AddedToken (transformers', `tokenizers`' or ours), or a list of them.
            special_tokens: Mark them special (dropped by `decode(skip_special_tokens=True)`).

        Returns:
            How many of them were not added tokens yet (transformers' count).
        """
        if isinstance(new_tokens, (str, AddedToken)) or not isinstance(new_tokens, (list, tuple, set)):
            new_tokens = [new_tokens]
        added = 0
        for value in new_tokens:
            token = AddedToken.from_value(value, special=special_tokens)
            if special_tokens and not token.special:
                token = AddedToken(token.content, special=True)
            added += self._add_token(token, notify=False)
            if token.special and token.content not in self.all_special_tokens:
                self._extra_special.append(token.content)
        self._on_added_tokens_changed()
        return added

    def add_special_tokens(
        self, special_tokens_dict: Mapping[str, Any], replace_extra_special_tokens: bool = True
    ) -> int:
        """Set special tokens by role, adding those missing from the vocabulary (the new-pad-token recipe).

        Args:
            special_tokens_dict: Roles (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`,
                `mask_token`) -> token, and/or `additional_special_tokens` (or `extra_special_tokens`) -> list.
            replace_extra_special_tokens: Replace the list of extra special tokens rather than extend it.

        Returns:
            The number of tokens that were not added tokens yet; resize the model's embeddings to `len(tokenizer)`.
        """
        before = len(self._added)
        for key, value in special_tokens_dict.items():
            if key in ("additional_special_tokens", "extra_special_tokens"):
                if isinstance(value, (str, AddedToken)):
                    value = [value]
                if replace_extra_special_tokens:
                    self._extra_special = []
                for token in value:
                    self._add_extra_special(token, notify=False)
            elif key in SPECIAL_TOKEN_NAMES:
                self._set_special(key, value, notify=False)
            else:
                raise ValueError(
                    f"Unknown special token role. Received: {key!r}. Use one of {', '.join(SPECIAL_TOKEN_NAMES)} or "
                    "additional_special_tokens."
                )
        self._on_added_tokens_changed()
        return len(self._added) - before

    def _add_extra_special(self, value: Any, notify: bool = True) -> None:
        token = AddedToken.from_value(value, special=True)
        self._add_token(AddedToken(token.content, special=True), notify=notify)
        if token.content not in self._extra_special:
            self._extra_special.append(token.content)

    @property
    def add_prefix_space(self) -> bool:
        """Whether a space is put before text that does not start with one, so a leading word encodes like any other."""
        return self._add_prefix_space

    @add_prefix_space.setter
    def add_prefix_space(self, value: bool) -> None:
        self._add_prefix_space = bool(value)

    @property
    def padding_side(self) -> str:
        """`"right"` or `"left"`: where padding goes (left for batched generation)."""
        return self._padding_side

    @padding_side.setter
    def padding_side(self, value: str) -> None:
        self._padding_side = _check_side(value, "padding_side")

    @property
    def truncation_side(self) -> str:
        """`"right"` or `"left"`: which end truncation removes tokens from."""
        return self._truncation_side

    @truncation_side.setter
    def truncation_side(self, value: str) -> None:
        self._truncation_side = _check_side(value, "truncation_side")

    def _set_special(self, name: str, value: Any, notify: bool = True) -> None:
        # As transformers: a special token missing from the vocabulary is added (so its id is never None).
        token = io.token_content(value, name)
        self._special[name] = token
        if token is not None:
            self._add_token(AddedToken(token, special=True), notify=notify)

    bos_token = _special_token_property("bos_token", "The beginning-of-sequence token (`<|endoftext|>`).")
    eos_token = _special_token_property("eos_token", "The end-of-sequence token (`<|endoftext|>`).")
    unk_token = _special_token_property("unk_token", "The unknown token (`<|endoftext|>`).")
    pad_token = _special_token_property("pad_token", "The padding token; None by default, as GPT-2 has none.")
    sep_token = _special_token_property("sep_token", "The separator token; GPT-2 has none.")
    cls_token = _special_token_property("cls_token", "The classifier token; GPT-2 has none.")
    mask_token = _special_token_property("mask_token", "The mask token; GPT-2 has none.")

    @property
    def additional_special_tokens(self) -> list[str]:
        """Special tokens beyond the roles (transformers v4's name; v5 calls them `extra_special_tokens`)."""
        return list(self._extra_special)

    extra_special_tokens = additional_special_tokens

    def _token_id(self, token: str) -> int | None:
        token_id = self._added_ids.get(token)
        return self.encoder.get(token) if token_id is None else token_id

    def _special_id(self, name: str) -> int | None:
        token = self._special.get(name)
        return None if token is None else self._token_id(token)

    def _set_special_id(self, name: str, value: int | None) -> None:
        if value is None:
            self._set_special(name, None)
            return
        (token,) = self.convert_ids_to_tokens([value])
        self._set_special(name, token)

    bos_token_id = _special_id_property("bos_token")
    eos_token_id = _special_id_property("eos_token")
    unk_token_id = _special_id_property("unk_token")
    pad_token_id = _special_id_property("pad_token")
    sep_token_id = _special_id_property("sep_token")
    cls_token_id = _special_id_property("cls_token")
    mask_token_id = _special_id_property("mask_token")

    @property
    def special_tokens_map(self) -> dict[str, Any]:
        """The special tokens that are set, by role (and `additional_special_tokens` when there are any)."""
        out: dict[str, Any] = {n: self._special[n] for n in SPECIAL_TOKEN_NAMES if self._special.get(n) is not None}
        return out

    @property
    def all_special_tokens(self) -> list[str]:
        """The distinct special token strings: the roles' in role order, then the extra ones."""
        return list(dict.fromkeys([*self.special_tokens_map.values(), *self._extra_special]))

    @property
    def all_special_ids(self) -> list[int]:
        """The ids of `all_special_tokens`."""
        ids = (self._token_id(t) for t in self.all_special_tokens)
        return [i for i in ids if i is not None]

    def convert_tokens_to_ids(self, tokens: str | Sequence[str]) -> int | None | list[int | None]:
        """Map a token string (or a list of them) to ids; unknown tokens map to `unk_token_id`.

        Args:
            tokens: A token string such as `"Ġworld"`, or a list of them.

        Returns:
            An id, or a list of ids.
        """
        if isinstance(tokens, str):
            token_id = self._token_id(tokens)
            return self.unk_token_id if token_id is None else token_id
        return [self.convert_tokens_to_ids(t) for t in tokens]  # type: ignore[misc]

    def convert_ids_to_tokens(self, ids: int | TokenIds, skip_special_tokens: bool = False) -> str | list[str]:
        """Map an id (or a sequence of ids) to token strings.

        Args:
            ids: An int, or a list / NumPy array / tensor of ints.
            skip_special_tokens: Drop special tokens from a list.

        Returns:
            A token string for an int, else a list of token strings.
        """
        if isinstance(ids, (int, np.integer)) and not isinstance(ids, bool):
            return self.decoder[self._as_id_list([ids], name="ids")[0]]
        id_list = self._as_id_list(ids, name="ids")
        if skip_special_tokens:
            special = self._special_id_set()
            id_list = [i for i in id_list if i not in special]
        return [self.decoder[i] for i in id_list]

    def convert_tokens_to_string(self, tokens: Sequence[str]) -> str:
        """Join BPE token strings back into text (undoing the byte-to-unicode mapping).

        Args:
            tokens: Token strings such as `["Hello", "Ġworld"]`.

        Returns:
            The text, with invalid UTF-8 handled according to `errors`.
        """
        data = b"".join(self._bytes_of_token(t) for t in tokens)
        return data.decode("utf-8", errors=self.errors)

    def _special_id_set(self) -> set[int]:
        # All tokens flagged special (the roles, the extras, <|endoftext|>), as `tokenizers` skips them.
        return {self._added_ids[c] for c, t in self._added.items() if t.special} | set(self.all_special_ids)

    # ------------------------------------------------------------------ special-token templates

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        """How many tokens `add_special_tokens=True` adds: `bos_token` before each sequence when `add_bos_token`."""
        return (2 if pair else 1) if self.add_bos_token else 0

    def build_inputs_with_special_tokens(
        self, token_ids_0: list[int], token_ids_1: list[int] | None = None
    ) -> list[int]:
        """`[bos] + ids_0 (+ [bos] + ids_1)` when `add_bos_token`, else the ids joined (transformers' GPT-2 rule)."""
        bos = [self._bos_id_for_template()] if self.add_bos_token else []
        out = bos + list(token_ids_0)
        if token_ids_1 is not None:
            out += bos + list(token_ids_1)
        return out

    def get_special_tokens_mask(
        self,
        token_ids_0: list[int],
        token_ids_1: list[int] | None = None,
        already_has_special_tokens: bool = False,
    ) -> list[int]:
        """1 for the tokens `build_inputs_with_special_tokens` adds, 0 for sequence tokens.

        With `already_has_special_tokens=True`, 1 for every special token id in `token_ids_0`.
        """
        if already_has_special_tokens:
            special = set(self.all_special_ids)
            return [1 if i in special else 0 for i in token_ids_0]
        bos = [1] if self.add_bos_token else []
        out = bos + [0] * len(token_ids_0)
        if token_ids_1 is not None:
            out += bos + [0] * len(token_ids_1)
        return out

    def _bos_id_for_template(self) -> int:
        if self.bos_token_id is None:
            raise ValueError(
                f"add_bos_token=True needs a bos_token. Received: bos_token={self.bos_token!r}. Set "
                "tokenizer.bos_token or pass add_bos_token=False."
            )
        return self.bos_token_id

    # ------------------------------------------------------------------ encoding

    def _encode_texts(
        self, texts: Sequence[str], add_prefix_space: bool, with_offsets: bool
    ) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        """Ids (and character offsets when asked) of each text, added tokens split out first; no template."""
        raise NotImplementedError

    def _encode_words(
        self, examples: Sequence[str], add_prefix_space: bool, with_offsets: bool
    ) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        """`_encode_texts` for pre-split input: each example is a NUL-joined word list (see `_words_as_pairs`)."""
        out = []
        for example in examples:
            words = example.split("\0") if example else []
            ids: list[int] = []
            offsets: list[tuple[int, int]] | None = [] if with_offsets else None
            for word_ids, word_offsets in self._encode_texts(words, add_prefix_space, with_offsets):
                ids.extend(word_ids)
                if offsets is not None:
                    offsets.extend(word_offsets or ())
            out.append((ids, offsets))
        return out

    def _ids(self, text: str, add_prefix_space: bool | None = None) -> list[int]:
        prefix = self._add_prefix_space if add_prefix_space is None else bool(add_prefix_space)
        return self._encode_texts([text], prefix, False)[0][0]

    def tokenize(
        self,
        text: str,
        pair: str | None = None,
        add_special_tokens: bool = False,
        *,
        add_prefix_space: bool | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Split text into BPE token strings (`"Ġworld"` is " world"), as transformers' `tokenize`.

        Args:
            text: The text.
            pair: An optional second text, whose tokens follow.
            add_special_tokens: Include the tokens `add_bos_token` adds.
            add_prefix_space: Override `self.add_prefix_space` for this call.

        Returns:
            The token strings.
        """
        _no_unknown_kwargs(kwargs, "tokenize")
        ids = self._ids(_check_text(text, "text"), add_prefix_space)
        pair_ids = None if pair is None else self._ids(_check_text(pair, "pair"), add_prefix_space)
        if add_special_tokens:
            ids = self.build_inputs_with_special_tokens(ids, pair_ids)
        elif pair_ids is not None:
            ids = ids + pair_ids
        return [self.decoder[i] for i in ids]

    def encode(
        self,
        text: str,
        text_pair: str | None = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Encode one text (or one pair) to token ids: `self(text, text_pair, ...)["input_ids"]`.

        Args:
            text: The text. Special and added tokens inside it (`<|endoftext|>` is 50256) become their ids.
            text_pair: An optional second text, appended (GPT-2 puts nothing between the two).
            add_special_tokens: Prepend `bos_token` when `add_bos_token` is set (GPT-2 adds nothing otherwise).
            padding, truncation, max_length, stride, padding_side: As in `__call__`.
            return_tensors: `None` for a list, or `"np"`, `"pt"`, `"tf"`, `"jax"` for a `(1, T)` array or tensor.
            **kwargs: Any other `__call__` argument, e.g. `add_prefix_space`.

        Returns:
            The ids.
        """
        if isinstance(text_pair, bool):
            raise TypeError(
                f"text_pair must be a string or None. Received: text_pair={text_pair!r}. The second positional "
                "argument of encode is text_pair (as in transformers); pass add_special_tokens= by keyword."
            )
        return self(
            text,
            text_pair,
            add_special_tokens=add_special_tokens,
            padding=padding,
            truncation=truncation,
            max_length=max_length,
            stride=stride,
            padding_side=padding_side,
            return_tensors=return_tensors,
            return_attention_mask=False,
            **kwargs,
        )["input_ids"]

    def encode_plus(self, text: str, text_pair: str | None = None, **kwargs: Any) -> "BatchEncoding":
        """transformers v4's name for `self(text, text_pair, **kwargs)` on one text (or pair)."""
        _check_text(text, "text")
        return self(text, text_pair, **kwargs)

    def batch_encode_plus(self, batch_text_or_text_pairs: Sequence[Any], **kwargs: Any) -> "BatchEncoding":
        """transformers v4's name for `self(batch, **kwargs)`: a list of texts or of `(text, text_pair)` pairs."""
        if not isinstance(batch_text_or_text_pairs, (list, tuple)):
            raise TypeError(
                "batch_encode_plus takes a list of texts or of (text, text_pair) pairs. Received: "
                f"{_short_repr(batch_text_or_text_pairs)} of type {type(batch_text_or_text_pairs).__name__}."
            )
        return self(list(batch_text_or_text_pairs), **kwargs)

    def __call__(
        self,
        text: str | Sequence[Any] | None = None,
        text_pair: str | Sequence[str] | None = None,
        text_target: Any = None,
        text_pair_target: Any = None,
        add_special_tokens: bool = True,
        padding: bool | str = False,
        truncation: bool | str | None = None,
        max_length: int | None = None,
        stride: int = 0,
        is_split_into_words: bool = False,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_tensors: str | None = None,
        return_token_type_ids: bool | None = None,
        return_attention_mask: bool | None = None,
        return_overflowing_tokens: bool = False,
        return_special_tokens_mask: bool = False,
        return_offsets_mapping: bool = False,
        return_length: bool = False,
        verbose: bool = True,
        add_prefix_space: bool | None = None,
        **kwargs: Any,
    ) -> "BatchEncoding":
        """Encode a text, a pair, or a batch of either, to `input_ids` and `attention_mask` (and more on request).

        The arguments are transformers' `__call__`'s, in its order.

        Args:
            text: A string, a list of strings, or a list of `(text, text_pair)` pairs.
            text_pair: A second string (or a list, one per text): appended to the first, `token_type_ids` 1.
            text_target, text_pair_target: Targets (and their pairs), encoded with the same settings: alone they
                are the result; with `text`, their `input_ids` are added as `labels` (transformers' rule).
            add_special_tokens: Prepend `bos_token` to each sequence when `add_bos_token` is set.
            padding: `False`/`"do_not_pad"`; `True`/`"longest"` pads to the longest in the batch; `"max_length"`
                pads to `max_length` (default `model_max_length`). Needs a pad token: GPT-2 has none, so set
                `tokenizer.pad_token = tokenizer.eos_token` (the attention mask hides padding).
            truncation: `True`/`"longest_first"` cuts a sequence (or the longer of a pair, then both) to `max_length`
                (default `model_max_length`); `"only_first"` / `"only_second"` cut one side of a pair;
                `False`/`"do_not_truncate"` keeps them. `None`: truncate only when `max_length` is given and
                `padding` is off, as transformers does.
            max_length: The length for truncation and `padding="max_length"`, special tokens included.
            stride: With `return_overflowing_tokens`, how many tokens consecutive windows share.
            is_split_into_words: `text` (and `text_pair`) are lists of words (a batch: lists of such lists); each
                word is encoded on its own (with `add_prefix_space`, every word gets its space), offsets relative
                to each word, as transformers' fast tokenizer.
            pad_to_multiple_of: Round the padded length up to a multiple of this (useful for XLA and tensor cores).
            padding_side: `"right"` or `"left"` for this call; default `self.padding_side`.
            return_tensors: `None` for lists, or `"np"`, `"pt"`, `"tf"`, `"jax"` for `(B, T)` arrays or tensors (a
                single text gets `B=1`). The sequences must then have equal lengths (use padding).
            return_token_type_ids: Include `token_type_ids` (0 for the first text, 1 for the pair); default off,
                as GPT-2's `model_input_names` has none.
            return_attention_mask: Include `attention_mask` (default `True`).
            return_overflowing_tokens: Return the tokens cut by truncation as extra rows: windows of `max_length`
                that overlap by `stride`, with `overflow_to_sample_mapping` giving each row's text (as transformers'
                fast tokenizers). For a pair, each window of one text is combined with each of the other, in
                `tokenizers`' order.
            return_special_tokens_mask: Include `special_tokens_mask`: 1 where `add_special_tokens` put a token.
            return_offsets_mapping: Include `offset_mapping`: each token's `(start, end)` character span in its
                text (`(0, 0)` for added template tokens and padding), equal to transformers' fast tokenizer.
            return_length: Include `length`, each row's length (after padding, as transformers').
            verbose: Accepted for transformers' signature.
            add_prefix_space: Override `self.add_prefix_space` for this call.

        Returns:
            A BatchEncoding.
        """
        _no_unknown_kwargs(kwargs, "__call__")
        if text_target is not None or text_pair_target is not None:
            # transformers' rule: the targets are encoded with the same settings; alone they are the result,
            # beside `text` their input_ids become `labels` (GPT-2 has no separate target tokenizer).
            if text_target is None:
                raise ValueError(
                    "text_pair_target needs text_target. Received: text_target=None, text_pair_target="
                    f"{_short_repr(text_pair_target)}. Pass the targets as text_target (and their pairs as "
                    "text_pair_target)."
                )
            settings = {
                name: value
                for name, value in locals().items()
                if name not in ("self", "text", "text_pair", "text_target", "text_pair_target", "kwargs")
            }
            target = self(text_target, text_pair_target, **settings)
            if text is None:
                return target
            encoding = self(text, text_pair, **settings)
            encoding["labels"] = target["input_ids"]
            return encoding
        if is_split_into_words:
            # Each word (a batch is a list of word lists) is encoded on its own, as transformers' fast tokenizers.
            text, text_pair = _words_as_pairs(text, text_pair)
        is_batch, texts, pairs = _check_inputs(text, text_pair)
        _check_optional_int(max_length, "max_length", minimum=0)
        _check_optional_int(pad_to_multiple_of, "pad_to_multiple_of", minimum=1)
        _check_optional_int(stride, "stride", minimum=0)
        pad_strategy = _lookup(_PADDING_STRATEGIES, padding, "padding")
        if truncation is None:
            # transformers' rule: a max_length without padding means "truncate to it".
            truncation = max_length is not None and pad_strategy == "do_not_pad"
            if truncation and not self._warned_implicit_truncation:
                self._warned_implicit_truncation = True
                logger.warning(
                    "Truncating to max_length=%d because max_length was given without truncation; pass "
                    "truncation=True to do this without the warning, or truncation=False to keep full sequences.",
                    max_length,
                )
        trunc_strategy = _lookup(_TRUNCATION_STRATEGIES, truncation, "truncation")
        side = self.padding_side if padding_side is None else _check_side(padding_side, "padding_side")
        _check_return_tensors(return_tensors)
        if pad_strategy != "do_not_pad":
            self._check_pad_token(padding)
        prefix = self._add_prefix_space if add_prefix_space is None else bool(add_prefix_space)
        want_offsets = bool(return_offsets_mapping)

        encode = self._encode_words if is_split_into_words else self._encode_texts
        encoded = encode(texts, prefix, want_offsets)
        encoded_pairs = encode(pairs, prefix, want_offsets) if pairs is not None else None
        limit = self.model_max_length if max_length is None else max_length
        rows: list[dict[str, list]] = []
        sample_of_row: list[int] = []
        for index, (a_ids, a_offsets) in enumerate(encoded):
            b = encoded_pairs[index] if encoded_pairs is not None else None
            n_special = self.num_special_tokens_to_add(pair=b is not None) if add_special_tokens else 0
            windows = self._truncate(
                a_ids, a_offsets, b, trunc_strategy, limit - n_special, stride, return_overflowing_tokens
            )
            for window in windows:
                rows.append(self._row(*window, add_special_tokens))
                sample_of_row.append(index)

        if pad_strategy != "do_not_pad":
            if pad_strategy == "longest":
                target = max((len(r["input_ids"]) for r in rows), default=0)
            else:
                target = self.model_max_length if max_length is None else max_length
                if target >= io.VERY_LARGE_INTEGER:
                    raise ValueError(
                        "padding='max_length' needs a length, and this tokenizer has no model_max_length. "
                        "Received: max_length=None. Pass max_length=..."
                    )
            target = _round_up(target, pad_to_multiple_of)
            rows = [self._pad_row(r, target, side) for r in rows]

        keep = {"input_ids"}
        if return_token_type_ids:
            keep.add("token_type_ids")
        if return_attention_mask is None or return_attention_mask:
            keep.add("attention_mask")
        if return_special_tokens_mask:
            keep.add("special_tokens_mask")
        if return_offsets_mapping:
            keep.add("offset_mapping")
        order = ("input_ids", "token_type_ids", "attention_mask", "special_tokens_mask", "offset_mapping")
        data: dict[str, Any] = {k: [r[k] for r in rows] for k in order if k in keep}
        if return_length:
            data["length"] = [len(r["input_ids"]) for r in rows]
        if return_overflowing_tokens:
            data["overflow_to_sample_mapping"] = sample_of_row
        elif not is_batch:
            if return_tensors is None:
                # As transformers: per-token fields lose the batch level, `length` stays a one-item list.
                data = {k: (v if k == "length" else v[0]) for k, v in data.items()}
        if return_tensors is not None:
            return BatchEncoding({k: _to_tensor(v, return_tensors, k) for k, v in data.items()})
        return BatchEncoding(data)

    def _check_pad_token(self, padding: Any) -> None:
        if self.pad_token_id is None:
            raise ValueError(
                "Asking to pad but the tokenizer does not have a padding token. "
                f"Received: padding={padding!r}, pad_token={self.pad_token!r}. GPT-2 has no padding token of its own: "
                "set tokenizer.pad_token = tokenizer.eos_token (the attention mask hides the padding), or pass "
                "pad_token=... to the constructor or from_pretrained."
            )

    def _truncate(
        self,
        a_ids: list[int],
        a_offsets: list | None,
        b: tuple[list[int], list | None] | None,
        strategy: str,
        budget: int,
        stride: int,
        overflow: bool,
    ) -> list[tuple[list[int], list | None, list[int] | None, list | None]]:
        """The (ids, offsets) windows of one example, as `tokenizers`' `truncate_encodings`."""
        b_ids, b_offsets = b if b is not None else (None, None)
        total = len(a_ids) + (len(b_ids) if b_ids is not None else 0)
        if strategy == "do_not_truncate" or total <= budget:
            return [(a_ids, a_offsets, b_ids, b_offsets)]
        if budget < 0 or (budget == 0 and overflow):
            raise ValueError(
                f"max_length is too short for the special tokens. Received: max_length={budget} after "
                f"{self.num_special_tokens_to_add(b is not None)} special tokens. Pass a larger max_length."
            )
        if b_ids is None:
            if strategy == "only_second":
                raise ValueError(
                    "truncation='only_second' needs a text_pair, and there is none. Received: "
                    f"{total} tokens > max_length. Use truncation=True or 'only_first'."
                )
            spans = _windows(len(a_ids), budget, stride if overflow else 0, self.truncation_side)
            if not overflow:
                spans = spans[:1]
            return [(a_ids[s:e], a_offsets[s:e] if a_offsets is not None else None, None, None) for s, e in spans]
        n1, n2 = len(a_ids), len(b_ids)
        if strategy == "longest_first":
            swap = n1 > n2
            if swap:
                n1, n2 = n2, n1
            n2 = n1 if n1 > budget else max(n1, budget - n1)
            if n1 + n2 > budget:
                n1 = budget // 2
                n2 = n1 + budget % 2
            if swap:
                n1, n2 = n2, n1
        elif strategy == "only_first":
            n1 = budget - n2
        else:
            n2 = budget - n1
        if n1 < 0 or n2 < 0:
            raise ValueError(
                f"Truncation: the sequence to truncate is too short to respect max_length. Received: "
                f"truncation={strategy!r}, lengths ({len(a_ids)}, {len(b_ids)}), max_length={budget} without special "
                "tokens. Use truncation='longest_first'."
            )
        step = stride if overflow else 0
        a_spans = _windows(len(a_ids), n1, step, self.truncation_side) if n1 < len(a_ids) else [(0, len(a_ids))]
        b_spans = _windows(len(b_ids), n2, step, self.truncation_side) if n2 < len(b_ids) else [(0, len(b_ids))]
        if not overflow:
            pairs = [(a_spans[0], b_spans[0])]
        else:
            # `tokenizers`' Encoding.merge_with order: the first windows together, each later window of the text
            # with the pair's first and then its later windows, last the text's first window with the pair's later.
            pairs = [(a_spans[0], b_spans[0])]
            for a_span in a_spans[1:]:
                pairs += [(a_span, b_span) for b_span in b_spans]
            pairs += [(a_spans[0], b_span) for b_span in b_spans[1:]]
        return [
            (
                a_ids[slice(*a_span)],
                a_offsets[slice(*a_span)] if a_offsets is not None else None,
                b_ids[slice(*b_span)],
                b_offsets[slice(*b_span)] if b_offsets is not None else None,
            )
            for a_span, b_span in pairs
        ]

    def _row(
        self,
        a_ids: list[int],
        a_offsets: list | None,
        b_ids: list[int] | None,
        b_offsets: list | None,
        add_special_tokens: bool,
    ) -> dict[str, list]:
        k = 1 if add_special_tokens and self.add_bos_token else 0
        bos = [self._bos_id_for_template()] if k else []
        ids = bos + list(a_ids)
        type_ids = [0] * len(ids)
        mask = [1] * k + [0] * len(a_ids)
        offsets = [(0, 0)] * k + list(a_offsets or ())
        if b_ids is not None:
            ids += bos + list(b_ids)
            type_ids += [1] * (k + len(b_ids))
            mask += [1] * k + [0] * len(b_ids)
            offsets += [(0, 0)] * k + list(b_offsets or ())
        return {
            "input_ids": ids,
            "token_type_ids": type_ids,
            "attention_mask": [1] * len(ids),
            "special_tokens_mask": mask,
            "offset_mapping": offsets,
        }

    def _pad_row(self, row: Mapping[str, list], target: int, side: str) -> dict[str, list]:
        n = target - len(row["input_ids"])
        if n <= 0:
            return dict(row)
        out = {}
        for key, values in row.items():
            fill = self.pad_token_id if key == "input_ids" else _PAD_VALUES.get(key)
            if fill is None:
                out[key] = values
            else:
                out[key] = list(values) + [fill] * n if side == "right" else [fill] * n + list(values)
        return out

    def pad(
        self,
        encoded_inputs: Any,
        padding: bool | str = True,
        max_length: int | None = None,
        pad_to_multiple_of: int | None = None,
        padding_side: str | None = None,
        return_attention_mask: bool | None = None,
        return_tensors: str | None = None,
        verbose: bool = True,
    ) -> "BatchEncoding":
        """Pad already-encoded inputs, as data collators call it (transformers' `pad`).

        Pads `input_ids` (with `pad_token_id`), `attention_mask` (0; made if missing), `token_type_ids` (0) and
        `special_tokens_mask` (1); other fields (e.g. `labels`) are left as they are.

        Args:
            encoded_inputs: A list of feature dicts (one per example), a dict / BatchEncoding of lists (a batch),
                or one example's dict. Values may be lists, NumPy arrays or tensors.
            padding: `True`/`"longest"` (default), `"max_length"` (to `max_length`), `False` (convert only).
            max_length: The length for `padding="max_length"`.
            pad_to_multiple_of: Round the padded length up to a multiple of this.
            padding_side: `"right"` or `"left"`; default `self.padding_side`.
            return_attention_mask: Include `attention_mask` (default `True`).
            return_tensors: `None`, `"np"`, `"pt"`, `"tf"` or `"jax"`; default: the kind of tensors given, if any.

        Returns:
            A BatchEncoding.
        """
        if isinstance(encoded_inputs, (list, tuple)) and encoded_inputs and isinstance(encoded_inputs[0], Mapping):
            keys = list(encoded_inputs[0].keys())
            encoded_inputs = {k: [example[k] for example in encoded_inputs] for k in keys}
        if not isinstance(encoded_inputs, Mapping) or "input_ids" not in encoded_inputs:
            raise ValueError(
                "pad takes a list of feature dicts or a dict of lists with 'input_ids'. Received: "
                f"{_short_repr(encoded_inputs)}. Pass e.g. [{{'input_ids': [1, 2]}}, {{'input_ids': [3]}}]."
            )
        if return_tensors is None:
            return_tensors = _tensor_kind(encoded_inputs["input_ids"])
        _check_return_tensors(return_tensors)
        _check_optional_int(max_length, "max_length", minimum=0)
        _check_optional_int(pad_to_multiple_of, "pad_to_multiple_of", minimum=1)
        side = self.padding_side if padding_side is None else _check_side(padding_side, "padding_side")
        pad_strategy = _lookup(_PADDING_STRATEGIES, padding, "padding")
        data = {k: _to_lists(v) for k, v in encoded_inputs.items()}
        single = bool(data["input_ids"]) and not isinstance(data["input_ids"][0], list)
        if single:
            data = {k: [v] for k, v in data.items()}
        rows = data["input_ids"]
        if return_attention_mask is None or return_attention_mask:
            data.setdefault("attention_mask", [[1] * len(r) for r in rows])
        elif "attention_mask" in data:
            del data["attention_mask"]
        if pad_strategy != "do_not_pad":
            self._check_pad_token(padding)
            if pad_strategy == "longest":
                target = max((len(r) for r in rows), default=0)
            else:
                target = self.model_max_length if max_length is None else max_length
            target = _round_up(target, pad_to_multiple_of)
            padded = [
                self._pad_row({k: data[k][i] for k in data if k in _PAD_VALUES or k == "input_ids"}, target, side)
                for i in range(len(rows))
            ]
            for key in padded[0] if padded else ():
                data[key] = [p[key] for p in padded]
        if single and return_tensors is None:
            data = {k: v[0] for k, v in data.items()}
        if return_tensors is not None:
            return BatchEncoding({k: _to_tensor(v, return_tensors, k) for k, v in data.items()})
        return BatchEncoding(data)

    # ------------------------------------------------------------------ decoding

    def _as_id_list(self, ids: Any, name: str = "token_ids") -> list[int]:
        if isinstance(ids, (list, tuple)):
            for position, i in enumerate(ids):
                if not isinstance(i, (int, np.integer)) or isinstance(i, (bool, np.bool_)):
                    raise TypeError(
                        f"{name} must be a 1-D sequence of ints (use batch_decode for a batch). "
                        f"Received: {name}[{position}]={i!r} of type {type(i).__name__}."
                    )
            id_list = [int(i) for i in ids]
        else:
            if hasattr(ids, "cpu") and callable(ids.cpu):
                ids = ids.cpu()  # a torch tensor on an accelerator
            array = np.asarray(ids)
            if array.ndim > 1:
                raise ValueError(
                    f"{name} must be 1-D; use batch_decode for a batch. Received: {name}.shape={array.shape}."
                )
            if array.size and array.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integers. Received: {name}.dtype={array.dtype}.")
            id_list = [int(i) for i in array.reshape(-1).tolist()]
        decoder = self.decoder
        for i in id_list:
            if i not in decoder:
                raise ValueError(
                    f"Token id {i} is out of range for this vocabulary (vocab_size={len(self)}, valid ids "
                    f"0..{len(self) - 1}). Received: {name} containing {i}. Check that the ids come from a "
                    "GPT-2 model and tokenizer."
                )
        return id_list

    def decode(
        self,
        token_ids: int | TokenIds,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> str:
        """Turn token ids back into text.

        Args:
            token_ids: An int, or a 1-D list / NumPy array / torch, TF or JAX tensor of ints.
            skip_special_tokens: Drop special tokens such as `<|endoftext|>`.
            clean_up_tokenization_spaces: Remove spaces before punctuation and contractions (" ." -> "."), as
                transformers v4 did. Off by default: it changes text that GPT-2 round-trips exactly.

        Returns:
            The text; byte sequences that are not valid UTF-8 are handled according to `errors`.
        """
        id_list = self._as_id_list(token_ids)
        if skip_special_tokens:
            special = self._special_id_set()
            id_list = [i for i in id_list if i not in special]
        token_bytes = self._token_bytes
        text = b"".join([token_bytes[i] for i in id_list]).decode("utf-8", errors=self.errors)
        if clean_up_tokenization_spaces:
            text = _clean_up_tokenization(text)
        return text

    def batch_decode(
        self,
        sequences: Sequence[TokenIds] | np.ndarray | Any,
        skip_special_tokens: bool = False,
        clean_up_tokenization_spaces: bool = False,
    ) -> list[str]:
        """Decode a batch of id sequences (a list of lists, or a 2-D array or tensor).

        Args:
            sequences: The batch.
            skip_special_tokens: Drop special tokens such as `<|endoftext|>`.
            clean_up_tokenization_spaces: See `decode`.

        Returns:
            One string per sequence.
        """
        if not isinstance(sequences, (list, tuple)):
            if hasattr(sequences, "cpu") and callable(sequences.cpu):
                sequences = sequences.cpu()
            array = np.asarray(sequences)
            if array.ndim != 2:
                raise ValueError(f"batch_decode expects a 2-D batch of ids. Received: sequences.shape={array.shape}.")
            sequences = list(array)
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name_or_path={self.name_or_path!r}, vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, padding_side={self.padding_side!r}, "
            f"add_prefix_space={self.add_prefix_space}, special_tokens={self.special_tokens_map}, "
            f"added_tokens={len(self) - self.vocab_size})"
        )


class GPT2Tokenizer(_GPT2TokenizerBase):
    """GPT-2's byte-level BPE tokenizer in pure Python (stdlib + `regex`), a drop-in for transformers' GPT2Tokenizer.

    Text is split at added and special tokens (longest first), then with OpenAI's pattern (its character classes
    pinned to Unicode 16.0, as in tiktoken and `tokenizers`); each piece's UTF-8 bytes are mapped to base tokens and
    merged by BPE rank; results are cached per piece, so repeated words cost one dict lookup. `<|endoftext|>` in
    text becomes the special token 50256. A vocabulary without some of the 256 byte tokens works too: bytes without
    a token become `unk_token`.

    Args:
        vocab_file: Path to `vocab.json` (token -> id). With `merges_file` left out too, the shipped GPT-2
            vocabulary is used.
        merges_file: Path to `merges.txt` (one merge per line, in rank order, after a `#version` header).
        errors: How `decode` treats bytes that are not valid UTF-8 (a `bytes.decode` error handler).
        unk_token: The unknown token.
        bos_token: The beginning-of-sequence token (prepended only when `add_bos_token=True`).
        eos_token: The end-of-sequence token.
        pad_token: The padding token; GPT-2 has none, so padding needs e.g. `pad_token="<|endoftext|>"`. A special
            token missing from the vocabulary is added (as transformers does), e.g. `pad_token="[PAD]"`.
        add_prefix_space: Put a space before text that does not start with one, so the first word encodes
            like the others (GPT-2 was not trained this way).
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
        self._core = BytePairEncoder(self.encoder, self.merges)
        self._pattern = self._core.pattern
        self._added_pattern: regex.Pattern | None = None

    def _on_added_tokens_changed(self) -> None:
        # Longest first, so the regex takes the longest added token at a position (leftmost-longest, as
        # `tokenizers`' AddedVocabulary).
        tokens = sorted(self._added, key=len, reverse=True)
        self._added_pattern = regex.compile("|".join(regex.escape(t) for t in tokens)) if tokens else None

    def _encode_texts(
        self, texts: Sequence[str], add_prefix_space: bool, with_offsets: bool
    ) -> list[tuple[list[int], list[tuple[int, int]] | None]]:
        return [self._encode_one(t, add_prefix_space, with_offsets) for t in texts]

    def _encode_one(
        self, text: str, add_prefix_space: bool, with_offsets: bool
    ) -> tuple[list[int], list[tuple[int, int]] | None]:
        # Added tokens split the text first; like `tokenizers`' ByteLevel pre-tokenizer, add_prefix_space then
        # applies to every non-empty segment between them that does not start with a space.
        ids: list[int] = []
        offsets: list[tuple[int, int]] | None = [] if with_offsets else None
        unk_id = None if self._core.has_all_bytes else self.unk_token_id
        position = 0
        matches = self._added_pattern.finditer(text) if self._added_pattern is not None else ()
        for match in (*matches, None):
            end = len(text) if match is None else match.start()
            segment = text[position:end]
            if segment:
                prefix = add_prefix_space and not segment.startswith(" ")
                if prefix:
                    segment = " " + segment
                if offsets is None:
                    ids.extend(self._core.encode(segment, unk_id))
                else:
                    seg_ids, seg_offsets = self._core.encode_with_offsets(segment, unk_id, position, prefix)
                    ids.extend(seg_ids)
                    offsets.extend(seg_offsets)
            if match is not None:
                ids.append(self._added_ids[match.group()])
                if offsets is not None:
                    offsets.append(match.span())
                position = match.end()
        return ids, offsets

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """BPE-merge one pre-token (see `BytePairEncoder.bpe`)."""
        return self._core.bpe(piece)
