"""Move parameters between a gpt2_torch model and the canonical dict, through gpt2_core.naming only.

Canonical arrays keep the parameters' dtype; bfloat16 is `ml_dtypes.bfloat16` (the bits unchanged), the rule of
every reader in `weights_convert`. `load_canonical` casts whatever it is given to each parameter's dtype.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from gpt2_core import naming
from weights_convert.formats.base import row_blocks


def _params(model) -> dict[str, torch.nn.Parameter]:
    # named_parameters drops the duplicate of a tied weight: the tied lm_head appears as transformer.wte.weight only.
    return dict(model.named_parameters())


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as NumPy in its own dtype; bfloat16 keeps its bits as `ml_dtypes.bfloat16`."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        import ml_dtypes

        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def from_numpy(value: np.ndarray, *, share: bool = False) -> torch.Tensor:
    """A NumPy array (`ml_dtypes.bfloat16` included) as a CPU tensor of the same dtype.

    By default the tensor owns contiguous, writable memory. With `share=True` it is a view of `value`'s memory
    whatever its strides or writability (a read-only memory map of a checkpoint included): only to copy from.
    """
    if value.dtype.name == "bfloat16":
        return from_numpy(value.view(np.int16), share=share).view(torch.bfloat16)
    if not share:
        value = np.ascontiguousarray(value)
        if not value.flags.writeable:  # torch.from_numpy shares memory and wants it writable
            value = value.copy()
        return torch.from_numpy(value)
    with warnings.catch_warnings():  # "The given NumPy array is not writable": it is only read
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(value)


def canonical_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as canonical NumPy arrays in their own dtype (bfloat16 as ml_dtypes.bfloat16)."""
    params = {path: to_numpy(p) for path, p in _params(model).items()}
    return naming.from_backend(params, "torch", model.config, model.head)


def load_canonical(model, canonical: dict[str, np.ndarray]) -> None:
    """Copy a canonical dict into the model. Strict: every parameter set, every shape checked."""
    naming.check_canonical(canonical, model.config, model.head, f"canonical dict for {type(model).__name__}")
    params = _params(model)
    keys = naming.backend_keys(canonical, "torch", model.config, model.head)
    if keys != set(params):
        raise RuntimeError(f"naming table and torch model disagree: {sorted(keys ^ set(params))[:10]}")
    # One tensor at a time (naming.iter_backend): peak memory is the model plus one tensor (a lazy mapping, as
    # load_pretrained gives for safetensors) or plus the canonical dict. Transposed matrices come as views: copy_
    # transposes, casts and moves in one pass (a contiguous transposed copy first took about twice as long). Each
    # tensor is copied in row blocks (`row_blocks`): the file's pages of a block leave the process before the next
    # is read, so a contiguous tensor (wte, the largest) is not resident twice (as in TF and Flax).
    with torch.no_grad():
        for path, value in naming.iter_backend(canonical, "torch", model.config, model.head, contiguous=False):
            p = params[path]
            for rows, block in row_blocks(value):
                p[rows].copy_(from_numpy(block, share=True))
