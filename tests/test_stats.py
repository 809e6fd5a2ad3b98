"""facestudy.stats: estimates, intervals and p-values against scipy and known answers."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from facestudy import report, stats
from facestudy.errors import ParameterError


def test_t_interval_matches_scipy_and_covers_the_mean():
    d = np.array([0.3, 1.1, -0.2, 0.8, 0.5])
    e = stats.mean_ci(d, unit="seeds")
    ci = sps.ttest_1samp(d, 0).confidence_interval(0.95)
    assert e.n == 5 and e.unit == "seeds" and e.estimate == pytest.approx(d.mean())
    assert (e.low, e.high) == pytest.approx((ci.low, ci.high))
    assert e.p == pytest.approx(sps.ttest_1samp(d, 0, alternative="greater").pvalue)


def test_signflip_is_exact_and_needs_six_units():
    d = np.array([0.5, 0.4, 0.9, 0.2, 0.7, 0.3])  # all positive: p = 2^-6
    e = stats.mean_ci(d, method="signflip")
    assert e.p == pytest.approx(1 / 64)
    assert report.effect(e, what="x").verdict == "reproduced"
    five = stats.mean_ci(d[:5], method="signflip")
    v = report.effect(five, what="x")
    assert v.verdict == "untestable here" and ">= 6" in v.needs


@pytest.mark.parametrize("rule,n", [("t", 2), ("signflip", 5), ("welch", 1), ("noninferior", 2),
                                    ("equivalent", 2), ("spearman", 3)])
def test_below_minimum_n_is_untestable_never_reproduced(rule, n):
    huge = np.full(n, 100.0) + np.arange(n) * 1e-3
    if rule in ("t", "signflip"):
        v = report.effect(stats.mean_ci(huge, method=rule), what="x")
    elif rule == "welch":
        v = report.effect(stats.seeds(huge, -huge, paired=False), what="x")
    elif rule == "noninferior":
        v = report.noninferior(stats.mean_ci(huge), delta=1.0, what="x")
    elif rule == "equivalent":
        v = report.equivalent(stats.mean_ci(huge * 0), delta=1.0, what="x")
    else:
        v = report.correlation(stats.spearman(np.arange(n), np.arange(n)), sign=1, what="x")
    assert v.verdict == "untestable here"
    assert stats.simulate(rule, n, effect=5.0, reps=200) == 0.0


def test_seeds_two_stage_averages_folds_first():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 0.1, (4, 10))
    b = rng.normal(0.0, 0.1, (4, 10))
    e = stats.seeds(a, b)
    assert e.n == 4 and e.unit == "seeds"
    direct = stats.mean_ci(a.mean(1) - b.mean(1))
    assert (e.low, e.high) == pytest.approx((direct.low, direct.high))
    w = stats.seeds(a, b, paired=False)
    assert w.method == "welch" and w.low > 0.5
    with pytest.raises(ParameterError, match="same seeds"):
        stats.seeds(a[:3], b)


def test_spearman_rho_interval_and_p_match_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    y = -0.8 * x + rng.normal(scale=0.5, size=30)
    e = stats.spearman(x, y, unit="attributes")
    assert e.estimate == pytest.approx(sps.spearmanr(x, y).statistic)
    assert e.low <= e.estimate <= e.high and e.high < 0
    assert e.extra["p_less"] < 0.01 and e.p > 0.5
    assert report.correlation(e, sign=-1, what="rho").verdict == "reproduced"
    assert report.correlation(e, sign=1, what="rho").verdict == "not reproduced"
    ref = sps.permutation_test((y,), lambda v: sps.spearmanr(x, v).statistic, permutation_type="pairings",
                               alternative="less", n_resamples=1999, random_state=0)
    assert abs(ref.pvalue - e.extra["p_less"]) < 0.01


def test_holm_and_proportion():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    p = stats.proportion(9, 10)
    ci = sps.binomtest(9, 10).proportion_ci(0.95, method="exact")
    assert (p.low, p.high) == pytest.approx((ci.low, ci.high))


def test_power_and_seeds_needed():
    e = stats.mean_ci([0.5, 1.5, 1.0, 0.0, 2.0], unit="seeds")
    assert e.mde > 0
    need = stats.seeds_needed(e, 0.5)
    assert need is not None and need > 5
    v = report.effect(stats.mean_ci([0.5, -0.4, 0.3]), what="gain", smallest=0.05)
    assert v.verdict == "untestable here" and "seeds" not in v.why and "power" in v.why


def test_nan_input_is_refused():
    with pytest.raises(ParameterError, match="NaN"):
        stats.mean_ci([1.0, float("nan"), 2.0])


def test_identical_quantised_units_never_decide_and_resolution_floors_the_spread():
    # three seeds that each lose exactly one LFW pair of 200 (-0.5 points): the t interval would collapse to
    # the point and call a one-pair difference a contradiction (chapter 3's K1b in a fresh build)
    d = [-0.5, -0.5, -0.5]
    e = stats.mean_ci(d)
    assert e.extra.get("degenerate") and not np.isfinite(e.low) and e.p == 1.0
    v = report.effect(e, what="x")
    assert v.verdict == "untestable here" and "same value" in v.why
    assert report.noninferior(e, delta=1.0, what="x").verdict == "untestable here"
    f = stats.seeds(np.zeros(3), np.full(3, 0.5), resolution=0.5)  # floored at one step: spans 0
    assert f.low < 0 < f.high and report.effect(f, what="x").verdict == "inconclusive"
    # a spread above the resolution is untouched (equals scipy's t interval)
    g, h = stats.mean_ci([1.0, 2.0, 4.0], resolution=0.5), stats.mean_ci([1.0, 2.0, 4.0])
    assert (g.low, g.high, g.p) == (h.low, h.high, h.p)
    # the exact sign-flip test still decides identical values (p = 2^-n)
    s = stats.mean_ci([0.3] * 6, method="signflip")
    assert s.p == pytest.approx(2.0 ** -6) and report.effect(s, what="x").verdict == "reproduced"
    with pytest.raises(ParameterError):
        stats.mean_ci(d, resolution=-1.0)
