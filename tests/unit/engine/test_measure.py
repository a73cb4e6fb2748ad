"""grad_norm: torch's public get_total_norm where it exists, the same value as before, no sync."""

from __future__ import annotations

import pytest
import torch

from trainlab.engine import measure
from trainlab.engine.measure import grad_norm


def _params(device: str = "cpu", dtype: torch.dtype = torch.float32) -> list[torch.nn.Parameter]:
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(*shape, device=device, dtype=dtype))
              for shape in [(64, 33), (33,), (7, 5, 3), (1,)]]
    for p in params[:-1]:  # the last one has no gradient (a frozen layer)
        p.grad = torch.randn_like(p) * 3
    return params


def _before(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """What trainlab computed before (torch's private foreach norm)."""
    grads = [p.grad for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)


def test_the_value_is_bitwise_what_it_was() -> None:
    params = _params()
    norm = grad_norm(params)
    assert isinstance(norm, torch.Tensor) and norm.shape == () and norm.dtype == torch.float32
    assert torch.equal(norm, _before(params))
    flat = torch.cat([p.grad.flatten() for p in params if p.grad is not None])
    assert float(norm) == pytest.approx(float(flat.double().norm()), rel=1e-6)


def test_the_fallback_for_torch_before_2_6_gives_the_same(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    params = _params()
    new = grad_norm(params)
    monkeypatch.delattr(torch.nn.utils, "get_total_norm", raising=False)
    assert torch.equal(grad_norm(params), new)


def test_the_public_api_is_used_where_it_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(torch.nn.utils, "get_total_norm"):
        pytest.skip("torch < 2.6")
    calls = []
    real = torch.nn.utils.get_total_norm

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.nn.utils, "get_total_norm", spy)
    grad_norm(_params())
    assert calls == [{"error_if_nonfinite": False}]  # no finiteness check: no host sync
    assert measure.grad_norm is grad_norm


def test_no_gradients_is_zero() -> None:
    assert torch.equal(grad_norm([torch.nn.Parameter(torch.ones(2))]), torch.zeros(()))


@pytest.mark.gpu
def test_on_cuda_the_norm_stays_on_the_device_without_a_sync() -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    for dtype in (torch.float32, torch.bfloat16):
        params = _params("cuda", dtype)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            norm = grad_norm(params)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert norm.device.type == "cuda"
        assert torch.equal(norm, _before(params))
