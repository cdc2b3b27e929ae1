"""`Linear`: `nn.Linear` whose CPU float32 inference runs on oneDNN's matmul instead of MKL's.

torch's `F.linear` on the CPU is MKL's `sgemm`. At the few rows of a decode step it is far from the memory-bandwidth
limit on some CPUs: on an AMD EPYC (AVX2) the 124M model's weights stream at ~13 GB/s through MKL at one row and ~5
GB/s at eight rows, against ~19 GB/s and ~12 GB/s through oneDNN (`bench/bench_torch_linear.py` measures both on
the machine it runs on). oneDNN ships inside every x86 torch build (`torch.backends.mkldnn`) and is what
`torch.compile`'s freezing pass itself lowers CPU linears to (`torch.ops.mkldnn._linear_pointwise`).

The oneDNN path is taken only where it is a pure speed choice with the same numbers (fp32 rounding order only, a
relative difference ~1e-7):

* the input and weight are float32, strided, on the CPU, plain tensors (no DTensor, fake or other subclass);
* autograd is off (`torch.no_grad()` / `torch.inference_mode()`, as in `generate`): the op has no backward, so
  training keeps `F.linear`;
* not under `torch.autocast("cpu")` (the autocast dtype applies, as to `F.linear`);
* not while `torch.compile` traces (inductor makes its own choice);
* oneDNN is available and enabled: `torch.backends.mkldnn.enabled = False` (torch's own switch) turns the path
  off, as does `gpt2_torch.linear.set_cpu_kernel("aten")`.

The weights are used in place (no packed copy), so memory does not grow.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CPU_KERNELS = ("onednn", "aten")
_state = {"kernel": "onednn"}
_HAS_ONEDNN = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()
_PLAIN = (torch.Tensor, nn.Parameter)


def set_cpu_kernel(kernel: str) -> None:
    """Choose the CPU float32 inference matmul of every `Linear`: `"onednn"` (default) or `"aten"` (`F.linear`)."""
    if kernel not in CPU_KERNELS:
        raise ValueError(f"Unknown CPU linear kernel. Received: kernel={kernel!r}. Use one of {CPU_KERNELS}.")
    _state["kernel"] = kernel


def get_cpu_kernel() -> str:
    """The CPU float32 inference matmul `Linear` uses: `"onednn"` or `"aten"`."""
    return _state["kernel"]


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `Linear` runs `x @ weight.T` on oneDNN (see the module docstring for the rule)."""
    return (
        _HAS_ONEDNN
        and _state["kernel"] == "onednn"
        and not torch.is_grad_enabled()
        and x.device.type == "cpu"
        and not torch.is_autocast_enabled("cpu")
        and x.dtype == torch.float32
        and weight.dtype == torch.float32
        and type(x) is torch.Tensor
        and type(weight) in _PLAIN
        and x.layout == torch.strided
        and weight.layout == torch.strided
        and weight.is_contiguous()
        and torch.backends.mkldnn.enabled
        and not torch.compiler.is_compiling()
    )


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, on oneDNN where `uses_onednn` says so."""
    if uses_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state dict and initialisation) whose forward is `linear` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
