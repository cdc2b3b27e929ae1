"""gpt2_torch.linear: the oneDNN CPU inference matmul gives F.linear's numbers and is taken only where it may be."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt2_core import GPT2Config, reference
from gpt2_torch import GPT2LMHeadModel
from gpt2_torch import linear as L


@pytest.fixture
def kernel():
    """Restore the process-wide kernel choice after a test that changes it."""
    before = L.get_cpu_kernel()
    yield
    L.set_cpu_kernel(before)


def _exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> np.ndarray:
    """x @ w.T + b in float64 NumPy: the oracle neither kernel computes."""
    y = x.double().numpy() @ w.double().numpy().T
    return y if b is None else y + b.double().numpy()


@pytest.mark.parametrize("rows", [1, 3, 8, 64])
@pytest.mark.parametrize("bias", [True, False])
def test_onednn_linear_matches_float64(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 48, generator=g)
    b = torch.randn(96, generator=g) if bias else None
    x = torch.randn(2, rows, 48, generator=g)
    with torch.no_grad():
        assert L.uses_onednn(x, w)
        y = L.linear(x, w, b)
        y_aten = F.linear(x, w, b)
    exact = _exact(x, w, b)
    scale = np.abs(exact).max()
    # float32 sums of 48 products: both kernels within ~1e-6 of the exact result, neither bit-equal to the other
    assert np.abs(y.numpy() - exact).max() / scale < 1e-5
    assert np.abs(y_aten.numpy() - exact).max() / scale < 1e-5
    assert y.shape == y_aten.shape


def test_strided_input_and_tied_weight() -> None:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(40, 16, generator=g)
    x = torch.randn(5, 2, 16, generator=g).transpose(0, 1)  # not contiguous
    with torch.no_grad():
        y = L.linear(x, w)
    assert np.abs(y.numpy() - _exact(x, w, None)).max() < 1e-4


def test_rule_keeps_aten_where_onednn_may_not_run(kernel) -> None:
    w = torch.randn(8, 4)
    x = torch.randn(2, 4)
    assert not L.uses_onednn(x, w)  # autograd on: the op has no backward
    with torch.no_grad():
        assert L.uses_onednn(x, w)
        assert not L.uses_onednn(x.bfloat16(), w.bfloat16())
        assert not L.uses_onednn(x, w.t().contiguous().t())  # a transposed view
        torch.backends.mkldnn.enabled = False  # torch's own switch (its `flags()` context also warns about TF32)
        try:
            assert not L.uses_onednn(x, w)
        finally:
            torch.backends.mkldnn.enabled = True
        L.set_cpu_kernel("aten")
        assert not L.uses_onednn(x, w)
        L.set_cpu_kernel("onednn")
        assert L.uses_onednn(x, w)
    with torch.inference_mode():
        assert L.uses_onednn(x, w)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's dtype applies, as to F.linear
            assert not L.uses_onednn(x, w)
            assert L.Linear(4, 8)(x).dtype == torch.bfloat16


def test_unknown_kernel_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="Received: kernel='mkl'"):
        L.set_cpu_kernel("mkl")


def test_training_still_has_gradients() -> None:
    layer = L.Linear(4, 3)
    x = torch.randn(2, 4, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is not None and x.grad is not None


def test_model_logits_and_tokens_equal_under_both_kernels(kernel) -> None:
    config = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4)
    params = reference.random_params(config, "lm", seed=3)
    model = GPT2LMHeadModel.from_config(config, seed=0).eval()
    model.load_canonical(params)
    ids = torch.randint(0, 97, (3, 9), generator=torch.Generator().manual_seed(4))
    expected = reference.lm_logits(params, config, reference.forward(params, config, ids.numpy())["last_hidden_state"])
    logits, tokens = {}, {}
    for name in L.CPU_KERNELS:
        L.set_cpu_kernel(name)
        with torch.no_grad():
            logits[name] = model(ids).logits.double().numpy()
        tokens[name] = model.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=[]).numpy()
    for name in L.CPU_KERNELS:
        assert np.abs(logits[name] - expected).max() < 1e-5, name
    np.testing.assert_array_equal(tokens["onednn"], tokens["aten"])
