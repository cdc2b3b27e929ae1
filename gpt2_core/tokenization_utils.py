"""Helpers of GPT-2's tokenizers: `BatchEncoding`, input checks, truncation windows and tensor conversion.

Framework-neutral (stdlib + numpy + `regex`); torch, TensorFlow and JAX are imported only to build their tensors.

References:
    - huggingface/transformers `tokenization_utils_base.py` (v5): `BatchEncoding`, `clean_up_tokenization`.
    - huggingface/tokenizers `utils/truncation.rs`: the stride windows.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import regex

_TENSOR_TYPES = ("np", "pt", "tf", "jax")


class BatchEncoding(dict):
    """The output of a tokenizer call: a dict (`input_ids`, `attention_mask`) that also allows attribute access.

    Args:
        data: The fields, e.g. `{"input_ids": ..., "attention_mask": ...}`.
    """

    def __init__(self, data: Mapping[str, Any] | None = None) -> None:
        super().__init__(data or {})

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"BatchEncoding has no field {name!r}. Fields: {sorted(self)}.") from None

    @property
    def data(self) -> dict[str, Any]:
        """The fields as a plain dict."""
        return dict(self)

    def to(self, device: Any) -> "BatchEncoding":
        """Move PyTorch tensors to `device`; other values (lists, NumPy, TF, JAX arrays) are left as they are.

        Args:
            device: Anything `torch.Tensor.to` accepts, e.g. `"cuda"` or a `torch.device`.

        Returns:
            This BatchEncoding, updated in place.
        """
        torch = sys.modules.get("torch")  # a torch tensor can only exist if torch is already imported
        if torch is not None:
            for key, value in self.items():
                if isinstance(value, torch.Tensor):
                    self[key] = value.to(device)
        return self



# ---------------------------------------------------------------------- helpers


def _check_side(value: Any, name: str) -> str:
    if value not in ("left", "right"):
        raise ValueError(f"{name} must be 'left' or 'right'. Received: {name}={value!r}.")
    return value


def _check_optional_int(value: Any, name: str, minimum: int) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum} or None. Received: {name}={value!r}.")


def _check_return_tensors(value: Any) -> None:
    if value is not None and value not in _TENSOR_TYPES:
        raise ValueError(f"return_tensors must be None, 'np', 'pt', 'tf' or 'jax'. Received: return_tensors={value!r}.")


def _no_unknown_kwargs(kwargs: Mapping[str, Any], where: str) -> None:
    if kwargs:
        raise TypeError(
            f"{where}() got unexpected keyword arguments. Received: {', '.join(sorted(kwargs))}. See the docstring "
            "for the supported ones."
        )


def _lookup(table: dict, value: Any, name: str) -> str:
    if isinstance(value, enum.Enum):
        value = value.value  # transformers' PaddingStrategy / TruncationStrategy
    # A plain `table[value]` would accept 1 and 0 as True and False, so the types must match too.
    for key, strategy in table.items():
        if type(key) is type(value) and key == value:
            return strategy
    allowed = ", ".join(repr(k) for k in table if k is not None)
    raise ValueError(f"Unknown {name} strategy. Received: {name}={value!r}. Use one of {allowed}.")


_SURROGATE = regex.compile(r"[\ud800-\udfff]")


def _check_text(text: Any, name: str) -> str:
    if not isinstance(text, str):
        raise TypeError(
            f"{name} must be a string. Received: {name}={_short_repr(text)} of type {type(text).__name__}. "
            "To decode ids use decode(); pass a list of strings to __call__ for a batch."
        )
    if not text.isascii():
        surrogate = _SURROGATE.search(text)
        if surrogate is not None:
            # UTF-8 cannot encode a lone surrogate (left over from broken UTF-16), so it has no byte-level tokens.
            raise ValueError(
                f"{name} contains a lone surrogate, which UTF-8 cannot encode. Received: "
                f"{name}[{surrogate.start()}]={surrogate.group()!r}. Repair the text first, e.g. "
                "text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace')."
            )
    return text


def _check_inputs(text: Any, text_pair: Any) -> tuple[bool, list[str], list[str] | None]:
    """(is_batch, texts, pairs or None) from `__call__`'s text and text_pair; a list of 2-tuples is a batch of
    pairs."""
    if isinstance(text, str):
        if text_pair is not None and not isinstance(text_pair, str):
            raise TypeError(
                "With one text, text_pair must be one string. Received: "
                f"text_pair={_short_repr(text_pair)} of type {type(text_pair).__name__}."
            )
        return False, [_check_text(text, "text")], None if text_pair is None else [_check_text(text_pair, "text_pair")]
    if not isinstance(text, (list, tuple)):
        raise TypeError(
            "text must be a string, a list of strings or a list of (text, text_pair) pairs. "
            f"Received: text={_short_repr(text)} of type {type(text).__name__}."
        )
    if text and all(isinstance(t, (list, tuple)) and len(t) == 2 for t in text) and text_pair is None:
        texts = [_check_text(t[0], f"text[{i}][0]") for i, t in enumerate(text)]
        return True, texts, [_check_text(t[1], f"text[{i}][1]") for i, t in enumerate(text)]
    texts = [_check_text(t, f"text[{i}]") for i, t in enumerate(text)]
    if text_pair is None:
        return True, texts, None
    if not isinstance(text_pair, (list, tuple)) or len(text_pair) != len(texts):
        raise ValueError(
            "With a batch of texts, text_pair must be a list of as many strings. Received: "
            f"len(text)={len(texts)}, text_pair={_short_repr(text_pair)}."
        )
    return True, texts, [_check_text(t, f"text_pair[{i}]") for i, t in enumerate(text_pair)]


def _words_as_pairs(text: Any, text_pair: Any) -> tuple[Any, Any]:
    """Pre-split input as `_check_inputs` takes it: each word list joined with NUL (a word cannot hold one)."""

    def join(words: Any, name: str) -> str:
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise TypeError(
                f"With is_split_into_words=True, {name} must be a list of words (strings), or a list of such lists. "
                f"Received: {name}={_short_repr(words)}."
            )
        if any("\0" in w for w in words):
            raise ValueError(f"A word contains a NUL character. Received: {name}={_short_repr(words)}.")
        return "\0".join(words)

    def convert(value: Any, name: str) -> Any:
        if value is None:
            return None
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
            return [join(v, f"{name}[{i}]") for i, v in enumerate(value)]
        return join(value, name)

    return convert(text, "text"), convert(text_pair, "text_pair")


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _round_up(target: int, multiple: int | None) -> int:
    if multiple is not None and target % multiple:
        target += multiple - target % multiple
    return target


def _windows(n: int, size: int, stride: int, side: str) -> list[tuple[int, int]]:
    """`tokenizers`' truncation windows over n tokens: `size` long, each sharing `stride` with the previous one."""
    if n <= size:
        return [(0, n)]
    if stride >= size:
        raise ValueError(
            f"stride must be smaller than the room left for tokens. Received: stride={stride}, max_length without "
            f"special tokens={size}. Pass a smaller stride or a larger max_length."
        )
    step = size - stride
    spans = []
    if side == "right":
        for start in range(0, n, step):
            stop = min(start + size, n)
            spans.append((start, stop))
            if stop == n:
                break
    else:
        for stop in range(n, 0, -step):
            start = max(stop - size, 0)
            spans.append((start, stop))
            if start == 0:
                break
    return spans


def _tensor_kind(value: Any) -> str | None:
    """The `return_tensors` name of the tensors in `value` (a tensor or a list of them), or None for lists."""
    first = value[0] if isinstance(value, (list, tuple)) and value else value
    module = type(first).__module__.split(".")[0]
    if isinstance(first, np.ndarray):
        return "np"
    return {"torch": "pt", "tensorflow": "tf", "jax": "jax", "jaxlib": "jax"}.get(module)


def _to_lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_to_lists(v) for v in value]
    if hasattr(value, "cpu") and callable(value.cpu):
        value = value.cpu()
    if hasattr(value, "tolist") or hasattr(value, "numpy"):
        return np.asarray(value).tolist()
    return value


def _to_tensor(rows: list, return_tensors: str, name: str) -> Any:
    if name in ("length", "overflow_to_sample_mapping"):
        array = np.asarray(rows, dtype=np.int64)  # (B,)
    else:
        lengths = sorted({len(r) for r in rows})
        if len(lengths) > 1:
            raise ValueError(
                f"Unable to make one tensor from sequences of different lengths. Received: {name} lengths "
                f"{lengths[0]}..{lengths[-1]}, return_tensors={return_tensors!r}. Pass padding=True (with a "
                "pad_token, e.g. tokenizer.pad_token = tokenizer.eos_token) and/or truncation=True with max_length."
            )
        shape = (len(rows), lengths[0] if lengths else 0)
        if name == "offset_mapping":
            shape += (2,)  # (B, T, 2)
        array = np.asarray(rows, dtype=np.int64).reshape(shape)  # (B, T)
    if return_tensors == "np":
        return array
    if return_tensors == "pt":
        import torch

        return torch.from_numpy(array)
    # TF and JAX get int32, as transformers gives them (JAX has no int64 unless x64 is enabled).
    if return_tensors == "tf":
        import tensorflow as tf

        return tf.constant(array.astype(np.int32))
    import jax.numpy as jnp

    return jnp.asarray(array.astype(np.int32))


def _clean_up_tokenization(text: str) -> str:
    # transformers' PreTrainedTokenizerBase.clean_up_tokenization, unchanged.
    return (
        text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
    )
