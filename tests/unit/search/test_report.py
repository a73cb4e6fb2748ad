"""The search report's evidence: the chosen trial, and with seeds whether its lead is noise."""

from __future__ import annotations

from trainlab.analysis.search import SearchView, TrialRow, chosen_notes


def _view(best: list[float], second: list[float]) -> SearchView:
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return SearchView("valid/accuracy", "maximize", ["optimizer.lr"], [
        TrialRow("all", 1, {"optimizer.lr": 0.1}, "complete", mean(second), second),
        TrialRow("all", 2, {"optimizer.lr": 0.03}, "complete", mean(best), best),
        TrialRow("all", 3, {"optimizer.lr": 1e-4}, "pruned", None, [0.1])])


def test_the_chosen_trial_and_whether_its_lead_is_beyond_the_seed_noise() -> None:
    clear = chosen_notes(_view([0.95, 0.96, 0.95], [0.80, 0.81, 0.79]))[0]
    assert "chosen optimizer.lr=0.03" in clear and "trial 2 of 3" in clear
    assert "1 pruned" in clear and "beyond the seed noise" in clear
    noisy = chosen_notes(_view([0.90, 0.80, 0.95], [0.86, 0.85, 0.87]))[0]
    assert "within the seed noise" in noisy
    single = chosen_notes(_view([0.9], [0.8]))[0]
    assert "add seeds:" in single
