"""Move parameters between a gpt2_torch model and the canonical dict, through gpt2_core.naming only."""

from __future__ import annotations

import numpy as np
import torch

from gpt2_core import naming


def _params(model) -> dict[str, torch.nn.Parameter]:
    # named_parameters drops the duplicate of a tied weight: the tied lm_head appears as transformer.wte.weight only.
    return dict(model.named_parameters())


def canonical_state_dict(model) -> dict[str, np.ndarray]:
    """The model's parameters as canonical float32 (or their own float dtype) NumPy arrays."""
    params = {}
    for path, p in _params(model).items():
        t = p.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        params[path] = t.numpy()
    return naming.from_backend(params, "torch", model.config, model.head)


def load_canonical(model, canonical: dict[str, np.ndarray]) -> None:
    """Copy a canonical dict into the model. Strict: every parameter set, every shape checked."""
    naming.check_canonical(canonical, model.config, model.head, type(model).__name__)
    params = _params(model)
    backend = naming.to_backend(canonical, "torch", model.config, model.head)
    if set(backend) != set(params):
        raise RuntimeError(f"naming table and torch model disagree: {sorted(set(backend) ^ set(params))[:10]}")
    with torch.no_grad():
        for path, value in backend.items():
            p = params[path]
            p.copy_(torch.from_numpy(np.ascontiguousarray(value)).to(dtype=p.dtype, device=p.device))
