"""Input checks shared by every backend, so a bad input gets the same clear error in torch, tf and flax.

Each check takes plain shapes and (where the values are known, i.e. outside a compiled graph) NumPy arrays.
"""

from __future__ import annotations

from typing import Sequence

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
    past_length: int,
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
        past_length: Number of cached positions.
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
    if past_length + T > config.n_positions:
        where = f" (past_key_values hold {past_length} positions)" if past_length else ""
        raise ValueError(
            f"Sequence length {past_length + T} exceeds n_positions={config.n_positions}{where}. "
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
    if attention_mask_shape is not None and tuple(attention_mask_shape) != (B, past_length + T):
        raise ValueError(
            f"attention_mask must have shape (batch, past_length + sequence) = ({B}, {past_length + T}). "
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


def check_past_key_values(config: GPT2Config, past_key_values, batch_size: int) -> int:
    """Validate a cache's structure and return its length (number of cached positions)."""
    if past_key_values is None:
        return 0
    if len(past_key_values) != config.n_layer:
        raise ValueError(
            f"past_key_values must hold one (key, value) pair per layer. Received: {len(past_key_values)} entries "
            f"for n_layer={config.n_layer}. Pass the past_key_values returned by this model."
        )
    k = past_key_values[0][0]
    shape = tuple(int(d) for d in k.shape)
    expected = (batch_size, config.n_head, shape[2] if len(shape) == 4 else -1, config.head_dim)
    if len(shape) != 4 or shape[0] != batch_size or shape[1] != config.n_head or shape[3] != config.head_dim:
        raise ValueError(
            f"past_key_values tensors must have shape (batch, n_head, past_length, head_dim) = {expected}. "
            f"Received: shape={shape}."
        )
    return shape[2]
