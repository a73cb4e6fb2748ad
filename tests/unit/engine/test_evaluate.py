"""The evaluation pass (engine/evaluate.py) reads the same values as the formulation it
replaced: every part cast with ``.float()`` and the example count appended on the device."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from trainlab.engine.evaluate import evaluation_result, evaluation_sums, read_sums
from trainlab.engine.tasks import IGNORE_INDEX, TASKS, TaskKind


def _old(task: TaskKind, batches: list[tuple[Tensor, Tensor]], forward, classes: int
         ) -> tuple[dict[str, float], int]:
    """The loop's evaluation before engine/evaluate.py, verbatim but for the split walk."""
    sums: Tensor | None = None
    count: float | Tensor = 0
    n = 0
    with torch.inference_mode():
        for x, y in batches:
            batch_loss, batch_metric = task.eval_sums(forward(x), y, classes)
            part = torch.cat([batch_loss.float().view(1), batch_metric.float().view(-1)])
            sums = part if sums is None else sums.add_(part)
            count = count + task.weight(y)
            n += 1
        if sums is None:
            sums = torch.zeros(1 + (classes * classes if classes else 1))
        sums = torch.cat([sums, torch.as_tensor(count, dtype=torch.float32).view(1)])
    host = sums.tolist()
    loss_total, weight = host[0], host[-1]
    if not classes:
        return task.finalize(loss_total, host[1], weight), n
    confusion = [host[1 + r * classes: 1 + (r + 1) * classes] for r in range(classes)]
    correct = math.fsum(confusion[c][c] for c in range(classes))
    return task.finalize(loss_total, correct, weight, confusion), n


def _new(task: TaskKind, batches: list[tuple[Tensor, Tensor]], forward, classes: int,
         host_count: bool = True) -> tuple[dict[str, float], int]:
    with torch.inference_mode():
        sums, count, n = evaluation_sums(task, batches, forward, classes, torch.device("cpu"),
                                         host_count=host_count)
    return evaluation_result(task, read_sums(sums, count), classes), n


def _split(sizes: list[int], features: int, targets) -> list[tuple[Tensor, Tensor]]:
    return [(torch.randn(size, features), targets(size)) for size in sizes]


@pytest.mark.parametrize("sizes", [[270], [256, 256, 37], [5]])
@pytest.mark.parametrize("host_count", [True, False])
def test_classification_values_are_the_old_ones(sizes: list[int], host_count: bool) -> None:
    torch.manual_seed(0)
    classes = 10
    model = torch.nn.Linear(16, classes)
    batches = _split(sizes, 16, lambda n: torch.randint(0, classes, (n,)))
    old, old_n = _old(TASKS["classification"], batches, model, classes)
    new, new_n = _new(TASKS["classification"], batches, model, classes, host_count)
    assert new == old and new_n == old_n == len(sizes)
    assert set(new) == {"loss", "accuracy", "f1", "mcc"}


def test_classification_without_confusion_and_regression_are_the_old_ones() -> None:
    torch.manual_seed(1)
    model = torch.nn.Linear(8, 3)
    batches = _split([64, 64, 9], 8, lambda n: torch.randint(0, 3, (n,)))
    assert _new(TASKS["classification"], batches, model, 0) == \
        _old(TASKS["classification"], batches, model, 0)
    targets = _split([40, 7], 8, lambda n: torch.randn(n, 3))
    assert _new(TASKS["regression"], targets, model, 0) == \
        _old(TASKS["regression"], targets, model, 0)


def test_language_model_token_count_stays_on_the_device() -> None:
    torch.manual_seed(2)
    vocab = 11
    model = torch.nn.Linear(4, vocab)

    def targets(n: int) -> Tensor:
        y = torch.randint(0, vocab, (n, 6))
        y[:, -2:] = IGNORE_INDEX  # ignored positions: the weight is a device tensor
        return y

    batches = [(torch.randn(n, 6, 4), targets(n)) for n in (3, 5)]
    with torch.inference_mode():
        sums, count, _ = evaluation_sums(TASKS["lm"], batches, model, 0, torch.device("cpu"))
    assert count is None and sums.numel() == 3  # loss, metric, tokens
    assert _new(TASKS["lm"], batches, model, 0) == _old(TASKS["lm"], batches, model, 0)


def test_an_empty_share_reads_zeros() -> None:
    model = torch.nn.Linear(4, 3)
    assert _new(TASKS["classification"], [], model, 3) == \
        _old(TASKS["classification"], [], model, 3)


# --- F1 and MCC from shared sums, the confusion index built in place: the same values ---------

def _old_f1(confusion: list[list[float]]) -> float:
    """tasks.f1_score before f1_and_mcc, verbatim."""
    k = len(confusion)
    scores = []
    predicted = [sum(col) for col in zip(*confusion)]
    for c in range(k):
        tp = confusion[c][c]
        actual = sum(confusion[c])
        scores.append(2 * tp / (predicted[c] + actual) if predicted[c] + actual else 0.0)
    if k == 2:
        return scores[1]
    return sum(scores) / k if k else 0.0


def _old_mcc(confusion: list[list[float]]) -> float:
    """tasks.matthews_corrcoef before f1_and_mcc, verbatim."""
    k = len(confusion)
    n = sum(sum(row) for row in confusion)
    correct = sum(confusion[c][c] for c in range(k))
    predicted = [sum(col) for col in zip(*confusion)]
    actual = [sum(row) for row in confusion]
    cov = correct * n - sum(p * t for p, t in zip(predicted, actual))
    denom = math.sqrt((n * n - sum(p * p for p in predicted))
                      * (n * n - sum(t * t for t in actual)))
    return cov / denom if denom else 0.0


@pytest.mark.parametrize("classes", [1, 2, 3, 10, 37])
def test_f1_and_mcc_are_the_old_floats(classes: int) -> None:
    from trainlab.engine.tasks import f1_and_mcc, f1_score, matthews_corrcoef
    gen = torch.Generator().manual_seed(classes)
    for trial in range(200):
        high = 1 if trial % 7 == 0 else 1000  # some all-zero matrices (undefined scores)
        counts = torch.randint(0, high, (classes, classes), generator=gen)
        if trial % 5 == 1:  # a column never predicted, a row never present
            counts[:, 0] = 0
            counts[-1, :] = 0
        confusion = [[float(v) for v in row] for row in counts.float().tolist()]
        want = (_old_f1(confusion), _old_mcc(confusion))
        assert f1_and_mcc(confusion) == want
        assert (f1_score(confusion), matthews_corrcoef(confusion)) == want
    assert f1_and_mcc([]) == (_old_f1([]), _old_mcc([]))


def test_eval_sums_confusion_is_the_old_one() -> None:
    from trainlab.engine.tasks import confusion_matrix
    torch.manual_seed(1)
    for classes, size in [(2, 7), (10, 360), (10, 1), (37, 500)]:
        out = torch.randn(size, classes)
        y = torch.randint(0, classes, (size,))
        loss, flat = TASKS["classification"].eval_sums(out, y, classes)
        old = confusion_matrix(y, out.argmax(-1), classes).flatten()
        assert flat.dtype == old.dtype and torch.equal(flat, old)
        assert loss.item() == torch.nn.functional.cross_entropy(out, y, reduction="sum").item()
