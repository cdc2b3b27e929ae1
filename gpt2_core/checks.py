"""Input checks shared by every backend, so a bad input gets the same clear error in torch, tf and flax.

Each check takes plain shapes and (where the values are known, i.e. outside a compiled graph) NumPy arrays.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from gpt2_core.config import GPT2Config


def check_model_inputs(
    config: GPT2Config,
    *,
    input_ids: np.ndarray | None,
    input_shape: Sequence[int] | None,
    inputs_embeds_shape: Sequence[int] | None,
    attention_mask_shape: Sequence[int] | None,
    position_ids: np.ndarray | None,
    position_ids_shape: Sequence[int] | None,
    token_type_ids_shape: Sequence[int] | None,
    past_length: int | None,
    cache_max_length: int | None = None,
) -> None:
    """Raise `ValueError` for inputs no GPT-2 can take.

    Args:
        config: The model config.
        input_ids: The token ids as NumPy when known (eager), else None (range is then not checked).
        input_shape: Shape of `input_ids`, or None.
        inputs_embeds_shape: Shape of `inputs_embeds`, or None.
        attention_mask_shape: Shape of the padding mask, or None.
        position_ids: Position ids as NumPy when known, else None.
        position_ids_shape: Shape of `position_ids`, or None.
        token_type_ids_shape: Shape of `token_type_ids`, or None.
        past_length: Number of cached positions (None: unknown, a traced KVCache length).
        cache_max_length: With a preallocated KVCache, its buffer size S_max: the mask may then cover the whole
            buffer, (B, S_max), as compiled decoding passes it.
    """
    if input_shape is not None and inputs_embeds_shape is not None:
        raise ValueError("You cannot specify both input_ids and inputs_embeds at the same time. Pass only one.")
    if input_shape is None and inputs_embeds_shape is None:
        raise ValueError("You have to specify either input_ids or inputs_embeds. Received: neither.")
    if input_shape is not None:
        if len(input_shape) != 2:
            raise ValueError(
                f"input_ids must have shape (batch, sequence). Received: input_ids.shape={tuple(input_shape)}."
                + (" Add a batch dimension (e.g. ids[None])." if len(input_shape) == 1 else "")
            )
        B, T = input_shape
        name, shape = "input_ids", tuple(input_shape)
    else:
        if len(inputs_embeds_shape) != 3 or inputs_embeds_shape[-1] != config.n_embd:
            raise ValueError(
                f"inputs_embeds must have shape (batch, sequence, n_embd={config.n_embd}). "
                f"Received: inputs_embeds.shape={tuple(inputs_embeds_shape)}."
            )
        B, T = inputs_embeds_shape[:2]
        name, shape = "inputs_embeds", tuple(inputs_embeds_shape)
    if T == 0:
        raise ValueError(f"The sequence is empty. Received: {name}.shape={shape}. Pass at least one token.")
    P = past_length if past_length is not None else 0
    if P + T > config.n_positions:
        where = f" (past_key_values hold {P} positions)" if P else ""
        raise ValueError(
            f"Sequence length {P + T} exceeds n_positions={config.n_positions}{where}. "
            f"Received: {name}.shape={shape}. Crop the prompt or use a model with more positions."
        )
    if input_ids is not None and input_ids.size:
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= config.vocab_size:
            bad = lo if lo < 0 else hi
            raise ValueError(
                f"Token id {bad} is out of range for vocab_size={config.vocab_size}. "
                f"Received: input_ids min={lo}, max={hi}. Use ids in [0, {config.vocab_size - 1}] "
                "(the tokenizer of this model)."
            )
    if attention_mask_shape is not None:
        allowed = set()
        if past_length is not None:
            allowed.add((B, P + T))
        if cache_max_length is not None:
            allowed.add((B, cache_max_length))
        if allowed and tuple(int(d) for d in attention_mask_shape) not in allowed:
            buffer = f" or the whole KVCache buffer ({B}, {cache_max_length})" if cache_max_length is not None else ""
            raise ValueError(
                f"attention_mask must have shape (batch, past_length + sequence) = ({B}, {P + T}){buffer}. "
                f"Received: attention_mask.shape={tuple(attention_mask_shape)}, {name}.shape={shape}, "
                f"past_length={past_length}. With a cache, the mask covers the cached tokens too."
            )
    if position_ids_shape is not None and tuple(position_ids_shape) not in ((B, T), (1, T)):
        raise ValueError(
            f"position_ids must have shape ({B}, {T}) or (1, {T}). Received: position_ids.shape="
            f"{tuple(position_ids_shape)}, {name}.shape={shape}."
        )
    if position_ids is not None and position_ids.size:
        lo, hi = int(position_ids.min()), int(position_ids.max())
        if lo < 0 or hi >= config.n_positions:
            raise ValueError(
                f"position_ids must be in [0, {config.n_positions - 1}]. Received: min={lo}, max={hi}."
            )
    if token_type_ids_shape is not None and tuple(token_type_ids_shape) != (B, T):
        raise ValueError(
            f"token_type_ids must have the shape of the input ({B}, {T}). "
            f"Received: token_type_ids.shape={tuple(token_type_ids_shape)}."
        )


def check_cache(
    config: GPT2Config,
    layer_shapes: Sequence[tuple[Sequence[int], Sequence[int]]],
    batch_size: int,
    query_length: int,
    *,
    length: int | None = None,
    preallocated: bool = False,
) -> int | None:
    """The one cache check of every backend: a legacy `past_key_values` tuple or a preallocated `KVCache`.

    Args:
        config: The model config.
        layer_shapes: Per layer, the (key shape, value shape).
        batch_size: Batch of the new tokens.
        query_length: Number of new tokens.
        length: The KVCache's filled length when known (eager), None when traced or for a legacy tuple.
        preallocated: A `KVCache` (buffers of S_max slots, `length` filled), else a legacy tuple (all slots filled).

    Returns:
        The number of cached positions: the key length of a legacy tuple, `length` of a KVCache (None if traced).
    """
    kind = "KVCache" if preallocated else "past_key_values"
    if len(layer_shapes) != config.n_layer:
        raise ValueError(
            f"{kind} must hold one (key, value) pair per layer. Received: {len(layer_shapes)} layers for "
            f"n_layer={config.n_layer}. Pass the cache returned by this model (or KVCache.init(config, ...))."
        )
    first = tuple(int(d) for d in layer_shapes[0][0])
    S = first[2] if len(first) == 4 else -1
    expected = (batch_size, config.n_head, S, config.head_dim)
    for i, (k_shape, v_shape) in enumerate(layer_shapes):
        for name, shape in (("key", k_shape), ("value", v_shape)):
            shape = tuple(int(d) for d in shape)
            if shape != expected:
                raise ValueError(
                    f"{kind} tensors must have shape (batch, n_head, cache_length, head_dim) = {expected}, the same "
                    f"in every layer. Received: layer {i} {name}.shape={shape}. Pass the cache returned by this "
                    "model for this batch."
                )
    if not preallocated:
        return S
    if length is not None:
        if length < 0 or length + query_length > S:
            raise ValueError(
                f"The KVCache is full. Received: length={length} + {query_length} new tokens > max_length={S}. "
                "Make a larger cache with KVCache.init(config, batch_size, max_length)."
            )
    return length


def check_past_key_values(config: GPT2Config, past_key_values, batch_size: int, query_length: int = 1) -> int:
    """Validate a legacy `past_key_values` tuple (every layer) and return its length."""
    if past_key_values is None:
        return 0
    shapes = [(tuple(k.shape), tuple(v.shape)) for k, v in past_key_values]
    return check_cache(config, shapes, batch_size, query_length)


# -- the heads' errors: one text for every backend ----------------------------------------------------------------


def no_cross_attention_error() -> ValueError:
    """`encoder_hidden_states` given to a model built without cross-attention."""
    return ValueError(
        "encoder_hidden_states were passed but the model has no cross-attention. "
        "Received: config.add_cross_attention=False. Build the model with add_cross_attention=True."
    )


def no_pad_token_error(batch_size: int) -> ValueError:
    """The sequence classifier cannot find each row's last token of a batch without `pad_token_id`."""
    return ValueError(
        f"Cannot pick each row's last token without a padding token. Received: batch size {batch_size}, "
        "config.pad_token_id=None. Set config.pad_token_id (e.g. to the tokenizer's pad/eos id)."
    )


def check_sequence_classification_batch(config: GPT2Config, batch_size: int) -> None:
    """transformers' rule: without `pad_token_id` only a batch of one row can be pooled."""
    if config.pad_token_id is None and batch_size != 1:
        raise no_pad_token_error(batch_size)


# -- labels and index inputs of the heads (eager only: the values must be known) -----------------------------------


def check_labels(labels: np.ndarray | None, num_classes: int, name: str = "labels", ignore_index: int = -100) -> None:
    """Raise `ValueError` for class labels a cross-entropy loss cannot take (torch's `Target ... is out of bounds`).

    Args:
        labels: The labels the loss reads (after any shift), as NumPy when known (eager), else None (not checked).
        num_classes: Number of classes (vocab_size, num_labels, the number of choices).
        name: The argument's name, for the message.
        ignore_index: The label that masks a position out of the loss (transformers' -100).
    """
    if labels is None:
        return
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        return  # float labels belong to a regression / multi-label loss, not to this check
    used = labels[labels != ignore_index]
    if used.size == 0:
        return
    lo, hi = int(used.min()), int(used.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise ValueError(
            f"Label {bad} is out of range for {num_classes} classes. Received: {name} min={lo}, max={hi} "
            f"(ignoring {ignore_index}). Use labels in [0, {num_classes - 1}], or {ignore_index} to leave a "
            "position out of the loss."
        )


def check_index_range(values: np.ndarray | None, size: int, name: str, size_name: str) -> None:
    """Raise `ValueError` for indices outside [0, size) (torch's `index out of range`; JAX would wrap or give NaN).

    Args:
        values: The indices as NumPy when known (eager), else None (not checked).
        size: The size of the axis they index.
        name: The argument's name, for the message.
        size_name: What `size` is (e.g. "vocab_size", "sequence length"), for the message.
    """
    if values is None:
        return
    values = np.asarray(values)
    if values.size == 0:
        return
    lo, hi = int(values.min()), int(values.max())
    if lo < 0 or hi >= size:
        raise ValueError(
            f"{name} must be in [0, {size - 1}] ({size_name}={size}). Received: {name} min={lo}, max={hi}. "
            f"Pass indices in that range."
        )


def check_integer_ids(dtype: np.dtype | type | str, name: str = "input_ids") -> None:
    """Raise `ValueError` for ids that are not integers (a float id would be truncated, 1.7 -> 1; torch refuses).

    Args:
        dtype: The ids' dtype, as NumPy understands it (`np.float32`, `"int64"`, a framework dtype's NumPy type).
        name: The argument's name, for the message.
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "iu":
        raise ValueError(
            f"{name} must hold integer token ids. Received: {name}.dtype={dtype.name}. Cast them to an integer "
            "type (e.g. int32), or pass vectors as inputs_embeds."
        )


def _positive_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def resize_row_count(new_num_tokens: int | None, pad_to_multiple_of: int | None, current: int) -> int | None:
    """The row count `resize_token_embeddings(new_num_tokens, pad_to_multiple_of)` resizes to (transformers' rule:
    round up to the multiple; `new_num_tokens=None` with a multiple rounds the current size), or None: keep.

    Args:
        new_num_tokens: Rows asked for, e.g. `len(tokenizer)`; None keeps the size (unless rounding).
        pad_to_multiple_of: Round up to a multiple of this, or None.
        current: The embedding's current row count.

    Raises:
        ValueError: Either argument is not a positive integer.
    """
    if pad_to_multiple_of is not None:
        if not _positive_int(pad_to_multiple_of):
            raise ValueError(
                "pad_to_multiple_of must be a positive integer. "
                f"Received: pad_to_multiple_of={pad_to_multiple_of!r}. Pass e.g. 64, or None."
            )
        if new_num_tokens is None:
            new_num_tokens = current
        if _positive_int(new_num_tokens):
            new_num_tokens = -(-int(new_num_tokens) // int(pad_to_multiple_of)) * int(pad_to_multiple_of)
    if new_num_tokens is None:
        return None
    if not _positive_int(new_num_tokens):
        raise ValueError(
            f"new_num_tokens must be a positive integer. Received: new_num_tokens={new_num_tokens!r}. "
            "Pass the tokenizer's length, len(tokenizer)."
        )
    return int(new_num_tokens)
