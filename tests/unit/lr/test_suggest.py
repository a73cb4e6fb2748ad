"""The pure functions that read a range test's curve: each on curves written by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainlab.lr.suggest import (
    assess,
    candidates,
    ema,
    fall_range,
    minimum_tenth,
    noise_level,
    smooth_zero_lag,
    steepest,
    suggest,
    valley,
)


def _sigmoid_fall(lrs: np.ndarray, centre: float, width: float = 0.3, top: float = 2.3,
                  bottom: float = 0.3) -> np.ndarray:
    """A loss that falls from ``top`` to ``bottom`` around ``centre`` (in decades of LR)."""
    u = (np.log10(lrs) - math.log10(centre)) / width
    return bottom + (top - bottom) / (1 + np.exp(u))


def _typical(n: int = 100, noise: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Flat, a fall centred on 1e-3, a bowl, then a blow-up past 1e-1 (exponential ramp)."""
    lrs = np.geomspace(1e-7, 1.0, n)
    loss = _sigmoid_fall(lrs, 1e-3) + 50 * np.clip(np.log10(lrs) + 1, 0, None) ** 2
    rng = np.random.default_rng(seed)
    return lrs, loss + noise * rng.standard_normal(n)


# --- steepest ----------------------------------------------------------------------------------


def test_steepest_is_measured_per_decade_not_per_index() -> None:
    # A linear ramp packs many points into the last decade: per index, the curve looks
    # steepest where the points are sparse (low LR); per decade the fall is centred on 0.1.
    lrs = np.linspace(0.001, 1.0, 400)
    loss = _sigmoid_fall(lrs, 0.1, width=0.25)
    found = steepest(lrs, loss)
    assert found is not None and found == pytest.approx(0.1, rel=0.03)
    per_index = lrs[int(np.argmin(np.gradient(loss)))]
    assert abs(math.log10(per_index / 0.1)) > 0.3  # the naive answer is far off


def test_steepest_ignores_the_blow_up_after_the_minimum() -> None:
    lrs, loss = _typical()
    found = steepest(lrs, loss)
    assert found is not None and found == pytest.approx(1e-3, rel=0.25)


@pytest.mark.parametrize("loss", [[1.0, 1.0], [1.0, 2.0, 3.0, 4.0], [2.0, 1.0]])
def test_steepest_is_none_without_a_fall(loss: list[float]) -> None:
    assert steepest(np.geomspace(1e-3, 1, len(loss)), loss) is None


# --- valley ------------------------------------------------------------------------------------


def test_valley_is_the_middle_of_the_fall() -> None:
    lrs, loss = _typical()
    span = fall_range(lrs, loss)
    assert span is not None
    found = valley(lrs, loss)
    assert found is not None and lrs[span[0]] < found < lrs[span[1]]


def test_valley_survives_a_blip_in_the_fall_and_prefers_the_longer_fall() -> None:
    lrs = np.geomspace(1e-6, 1.0, 60)
    loss = np.concatenate([np.full(10, 3.0), np.linspace(3.0, 2.5, 5),  # a short fall
                           np.full(10, 2.5), np.linspace(2.5, 0.5, 30),  # the long one
                           np.linspace(0.6, 5.0, 5)])
    loss[40] += 0.3  # a noisy bump inside the long fall
    found = valley(lrs, loss)
    assert found is not None and lrs[25] < found < lrs[55]


def test_valley_of_a_clean_monotone_start_is_not_at_the_first_point() -> None:
    # The loss creeps down from the first point; the valley still sits in the real fall.
    lrs = np.geomspace(1e-7, 1.0, 100)
    loss = _sigmoid_fall(lrs, 1e-2, width=0.4)
    found = valley(lrs, loss)
    assert found is not None and 1e-3 < found < 1e-1


# --- minimum / 10, fall range, candidates -------------------------------------------------------


def test_minimum_tenth() -> None:
    lrs = np.array([1e-4, 1e-3, 1e-2, 1e-1])
    assert minimum_tenth(lrs, [3.0, 2.0, 1.0, 9.0]) == pytest.approx(1e-3)
    assert minimum_tenth([], []) is None


def test_fall_range_is_the_ten_to_ninety_percent_fall() -> None:
    lrs = np.geomspace(1e-5, 1, 11)
    loss = np.array([10.0, 10.0, 9.5, 8.9, 6.0, 3.0, 1.5, 1.0, 0.99, 0.98, 5.0])
    # drop = 10 - 0.98 = 9.02: starts at the first point <= 9.098, ends at the first <= 1.882
    assert fall_range(lrs, loss) == (3, 6)


def test_fall_range_ends_where_the_floor_is_reached_not_at_its_noisy_lowest_point() -> None:
    lrs = np.geomspace(1e-6, 1, 100)
    loss = _sigmoid_fall(lrs, 1e-4, width=0.2, bottom=0.1)
    rng = np.random.default_rng(0)
    loss[60:] = 0.1 + 0.001 * rng.standard_normal(40)  # a floor: its lowest point is noise
    span = fall_range(lrs, loss)
    assert span is not None and span[1] < 60 <= int(np.argmin(loss))


def test_candidates_are_log_uniform_between_the_ends_of_the_fall() -> None:
    lrs, loss = _typical()
    span = fall_range(lrs, loss)
    assert span is not None
    found = candidates(lrs, loss, n=4)
    assert found is not None and len(found) == 4
    assert found[0] == pytest.approx(lrs[span[0]]) and found[-1] == pytest.approx(lrs[span[1]])
    ratios = np.diff(np.log(found))
    assert np.allclose(ratios, ratios[0])
    one = candidates(lrs, loss, n=1)
    assert one == [pytest.approx(math.sqrt(lrs[span[0]] * lrs[span[1]]))]


@pytest.mark.parametrize("loss", [[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0]])
def test_no_candidates_without_a_fall(loss: list[float]) -> None:
    lrs = np.geomspace(1e-3, 1, len(loss))
    assert candidates(lrs, loss) is None and fall_range(lrs, loss) is None


def test_candidates_reject_a_bad_count() -> None:
    with pytest.raises(ValueError, match="n must be"):
        candidates([1e-3, 1e-2], [1.0, 0.5], n=0)


# --- smoothing and noise ----------------------------------------------------------------------


def test_zero_lag_smoothing_does_not_shift_the_curve_but_a_causal_ema_does() -> None:
    x = np.concatenate([np.ones(50), np.zeros(50)])  # a step down at index 50
    causal = ema(x, 0.9)
    both = smooth_zero_lag(x, 0.9)
    half_causal = int(np.argmax(causal < 0.5))
    half_both = int(np.argmax(both < 0.5))
    assert half_causal >= 55  # the causal average crosses late
    assert abs(half_both - 49.5) <= 1.0  # the zero-lag one crosses at the step
    trend = np.linspace(0.0, 10.0, 200)
    assert np.allclose(smooth_zero_lag(trend, 0.8)[40:-40], trend[40:-40], atol=1e-3)
    assert not np.allclose(ema(trend, 0.8)[40:-40], trend[40:-40], atol=0.1)
    assert np.array_equal(smooth_zero_lag(x, 0.0), x)


def test_ema_is_bias_corrected() -> None:
    assert np.allclose(ema([5.0, 5.0, 5.0], 0.98), 5.0)


def test_noise_level_measures_noise_not_trend() -> None:
    rng = np.random.default_rng(1)
    trend = np.linspace(5.0, 1.0, 400)
    assert noise_level(trend) == pytest.approx(0.0, abs=1e-9)
    noisy = trend + 0.2 * rng.standard_normal(400)
    assert noise_level(noisy) == pytest.approx(0.2, rel=0.15)


# --- trust -------------------------------------------------------------------------------------


def _codes(lrs: np.ndarray, loss: np.ndarray, stopped: str = "diverged") -> list[str]:
    return [f.code for f in suggest(lrs, loss, beta=0.9, stopped=stopped)[0].assessment.flags]


def test_a_clean_curve_is_trusted() -> None:
    lrs, loss = _typical(noise=0.02)
    found, smoothed = suggest(lrs, loss, beta=0.9, stopped="diverged")
    assert found.assessment.trusted and found.assessment.flags == []
    assert len(smoothed) == len(loss)


def test_a_cliff_with_few_points_is_flagged() -> None:
    lrs = np.geomspace(1e-5, 1, 20)
    loss = np.concatenate([np.full(15, 2.3), [1.5, 0.4, 0.3], [5.0, 50.0]])
    found = suggest(lrs, loss, beta=0.0, stopped="diverged")[0]
    assert [f.code for f in found.assessment.flags] == ["few-points"]
    assert "only" in found.assessment.flags[0].message


def test_noise_larger_than_the_drop_is_flagged() -> None:
    rng = np.random.default_rng(2)
    lrs = np.geomspace(1e-5, 1, 100)
    loss = 2.3 - 0.02 * (np.log10(lrs) + 5) / 5 + 0.1 * rng.standard_normal(100)
    assert "noisy" in _codes(lrs, loss)


@pytest.mark.parametrize("seed", range(8))
def test_a_drop_within_the_noise_is_untrusted_and_says_what_to_change(seed: int) -> None:
    """The CS5260 study's SGD curve: the smoothed loss went 2.306 -> 2.291, less than its
    step-to-step noise, then blew up; none of its candidates learned.  Here a drift of 0.008
    under noise of std 0.012 (step-to-step changes of std ~0.017), then divergence, on the
    default ramp (1e-7 to 10).  Seed 6 is that curve: a smoothed drop (0.013) a little over
    the noise's std, which the old rule (noise > drop) trusted, steepest at the first point."""
    rng = np.random.default_rng(seed)
    lrs = np.geomspace(1e-7, 10, 100)[:90]
    loss = 2.306 - 0.008 * np.arange(85) / 84 + 0.012 * rng.standard_normal(85)
    loss = np.concatenate([loss, 2.3 * np.geomspace(1.5, 20, 5)])
    found = suggest(lrs, loss, beta=0.9, stopped="diverged")[0]
    verdict = found.assessment
    assert not verdict.trusted
    noisy = [f for f in verdict.flags if f.code == "noisy"]
    assert noisy, verdict.flags
    assert "longer ramp" in noisy[0].message and "another range" in noisy[0].message
    assert verdict.drop is not None and verdict.noise is not None
    assert verdict.drop < 3 * verdict.noise


def test_a_real_fall_under_the_same_noise_is_still_trusted() -> None:
    lrs, loss = _typical(noise=0.03)
    assert _codes(lrs, loss) == []


def test_a_curve_that_never_falls_is_flagged() -> None:
    lrs = np.geomspace(1e-3, 1, 30)
    assert _codes(lrs, np.linspace(1.0, 30.0, 30)) == ["no-descent"]


def test_a_curve_still_falling_at_the_end_is_flagged() -> None:
    lrs = np.geomspace(1e-7, 1e-3, 100)
    assert "no-divergence" in _codes(lrs, _sigmoid_fall(lrs, 1e-4, width=1.0), "end")


def test_a_curve_that_diverged_at_once_suggests_nothing() -> None:
    lrs = np.geomspace(1.0, 10.0, 3)
    found = suggest(lrs, [2.3, math.inf, math.nan], beta=0.9, stopped="not-finite")[0]
    assert [f.code for f in found.assessment.flags] == ["not-finite"]
    assert found.steepest is found.valley is found.minimum is found.candidates is None
    assert "diverged at once" in found.assessment.flags[0].message


def test_the_exploding_tail_does_not_move_the_minimum() -> None:
    lrs, loss = _typical()
    low = int(np.argmin(loss))
    tame, wild = loss.copy(), loss.copy()
    tame[low + 1:] = loss[0]
    wild[low + 1:] = 1e20
    a = suggest(lrs, tame, beta=0.9, stopped="diverged")[0]
    b = suggest(lrs, wild, beta=0.9, stopped="diverged")[0]
    assert a.min_loss_lr == b.min_loss_lr and a.candidates == b.candidates


def test_assess_reports_its_measures() -> None:
    lrs, loss = _typical(noise=0.01)
    smoothed = suggest(lrs, loss, beta=0.9, stopped="diverged")[1]
    verdict = assess(lrs, loss, smoothed, stopped="diverged")
    assert verdict.drop is not None and verdict.drop > 1.5
    assert verdict.noise is not None and verdict.noise < 0.05
    assert verdict.fall_points is not None and verdict.fall_points >= 10
    assert verdict.to_dict()["trusted"] is True


def test_get_rejects_an_unknown_method() -> None:
    lrs, loss = _typical()
    found = suggest(lrs, loss, beta=0.9, stopped="diverged")[0]
    assert found.get("valley") == found.valley
    with pytest.raises(ValueError, match="valid: valley, steepest, minimum"):
        found.get("fastest")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=3, max_size=60),
       st.integers(min_value=1, max_value=6))
def test_suggestions_stay_inside_the_range_tested(losses: list[float], n: int) -> None:
    lrs = np.geomspace(1e-6, 10.0, len(losses))
    found = suggest(lrs, losses, beta=0.5, stopped="diverged", n_candidates=n)[0]
    for value in (found.steepest, found.valley, found.min_loss_lr):
        assert value is None or lrs[0] <= value <= lrs[-1]
    assert found.minimum is None or lrs[0] / 10 <= found.minimum <= lrs[-1] / 10
    if found.candidates is not None:
        assert len(found.candidates) == n and found.candidates == sorted(found.candidates)
        assert lrs[0] * (1 - 1e-9) <= found.candidates[0]
        assert found.candidates[-1] <= lrs[-1] * (1 + 1e-9)


def test_config_accepts_exactly_the_methods_suggest_implements() -> None:
    # The config keeps its own copy of the names (it must not import trainlab.lr): they agree.
    from trainlab.config.schema import SUGGEST_METHODS
    from trainlab.lr.suggest import METHODS

    assert SUGGEST_METHODS == METHODS
    lrs = [1e-5 * 1.2**i for i in range(60)]
    losses = [2.0 - 0.02 * i if i < 40 else 1.2 + 0.3 * (i - 40) for i in range(60)]
    found, _ = suggest(lrs, losses, beta=0.0, stopped="end")
    for method in SUGGEST_METHODS:
        assert found.get(method) is not None, method
