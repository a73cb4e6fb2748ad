"""The log interval's one-op read of a classification interval (engine/interval.py) gives what
the general read gives: the same loss sum, correct count, weight and gradient norm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainlab.engine.interval import LogInterval


def _filled(steps: int, seed: int = 0, carried: bool = False) -> LogInterval:
    torch.manual_seed(seed)
    interval = LogInterval(4, torch.device("cpu"), keeps_outputs=True)
    if carried:  # a Ctrl-C's carried steps first, as a resumed run puts them back
        interval.resume({"losses": [0.75, 1.5], "weights": [8.0, 8.0],
                         "host_weights": [8, 8], "correct": 5.0})
    model = torch.nn.Linear(6, 5)
    for i in range(steps):
        n = 8 if i % 3 else 7  # a shorter batch among them
        x, y = torch.randn(n, 6), torch.randint(0, 5, (n,))
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        interval.add(loss, out, y, n)
    return interval


@pytest.mark.parametrize("steps", [1, 4, 9])
@pytest.mark.parametrize("with_norm", [False, True])
@pytest.mark.parametrize("carried", [False, True])
def test_one_op_read_equals_the_general_read(monkeypatch: pytest.MonkeyPatch, steps: int,
                                             with_norm: bool, carried: bool) -> None:
    norm = torch.tensor(2.718281828, dtype=torch.float32) if with_norm else None
    fast = _filled(steps, carried=carried)
    assert fast._scalars(fast._correct(), norm) is not None  # the one-op path applies
    got = fast.read(norm)
    monkeypatch.setattr(LogInterval, "_scalars", lambda self, correct, norm: None)
    general = _filled(steps, carried=carried).read(norm)
    assert got == general
    assert len(fast) == 0  # emptied


def test_other_dtypes_take_the_general_read() -> None:
    interval = _filled(3)
    interval.step_losses[1] = interval.step_losses[1].double()  # e.g. a user's float64 loss
    assert interval._scalars(interval._correct(), None) is None
    double_norm = torch.tensor(1.0, dtype=torch.float64)
    assert _filled(2)._scalars(_filled(2)._correct(), double_norm) is None
    # A language model's interval (losses in a device buffer) has no one-op read.
    lm = LogInterval(4, torch.device("cpu"), keeps_outputs=False)
    lm.add(torch.tensor(1.0), torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), 2)
    assert lm._scalars(None, None) is None
    assert lm.read(None)[0] == 2.0
