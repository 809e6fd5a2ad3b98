"""Calibration: every verdict rule the book uses, at the sample sizes the chapters use (stats.DESIGNS, read
from profiles.TABLE), says "reproduced" at most 2.5 % of the time when there is no effect (plus Monte-Carlo
error), with normal and heavy-tailed noise. The same table, with power, is shown in chapter 0."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facestudy import profiles, stats

TOL_SE = 3.0  # Monte-Carlo allowance, in standard errors


def _designs():
    return [(d, prof) for d in stats.DESIGNS for prof in ("default", "gpu")]


def test_every_design_resolves_from_the_profile_table():
    assert stats.DESIGNS, "no claim designs registered"
    for d in stats.DESIGNS:
        assert d.chapter in profiles.TABLE, d
        assert d.rule in stats.RULES, d
        for prof in ("smoke", "default", "gpu"):
            assert stats.design_n(d, prof) >= 1, (d, prof)


@pytest.mark.parametrize("design,profile", _designs(), ids=lambda x: getattr(x, "claims", x))
def test_false_positive_rate_at_the_sizes_used(design, profile):
    n = stats.design_n(design, profile)
    reps = 4000 if design.rule != "spearman" else 1000
    se = math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / reps)
    for noise in ("normal", "t3"):
        fpr = stats.simulate(design.rule, n, reps=reps, seed=11, noise=noise)
        assert fpr <= stats.ALPHA + TOL_SE * se, (design, profile, noise, fpr)


def _legacy_percentile_rule_fpr(n: int, reps: int = 4000, n_boot: int = 2000, seed: int = 0) -> float:
    """The rule the book used before: a paired percentile bootstrap whose 2.5 % quantile is above 0."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((reps, n))
    idx = rng.integers(0, n, size=(n_boot, n))
    boots = d[:, idx].mean(axis=2)  # (reps, n_boot)
    return float((np.quantile(boots, 0.025, axis=1) > 0).mean())


def test_the_calibration_check_fails_the_old_percentile_rule():
    """What this file would say of the old rule: at n = 3 it reproduces ~12 % of null effects."""
    se = math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / 4000)
    fpr3 = _legacy_percentile_rule_fpr(3)
    assert fpr3 > stats.ALPHA + TOL_SE * se and 0.08 < fpr3 < 0.16
    # the t rule at the same n holds its level
    assert stats.simulate("t", 3, reps=4000) <= stats.ALPHA + TOL_SE * se


def test_power_grows_with_effect_and_n():
    assert stats.simulate("t", 3, effect=2.0) < stats.simulate("t", 10, effect=2.0)
    assert stats.simulate("t", 10, effect=0.5) < stats.simulate("t", 10, effect=2.0)
    assert stats.simulate("t", 10, effect=2.0) > 0.9


def test_chapters_use_only_calibrated_rules():
    """Every `report.<name>(` a chapter calls is a calibrated rule, a combinator or a page helper: the old
    point comparisons and the percentile bootstrap are gone for good."""
    import re
    from pathlib import Path

    from facestudy import report

    allowed = {"effect", "noninferior", "equivalent", "correlation", "exact", "gate", "requires", "untestable",
               "all_of", "claim", "claims", "claims_table", "glue", "fmt", "style", "image_grid", "records_dir"}
    root = Path(__file__).resolve().parents[1]
    used = set()
    for nb in sorted((root / "notebooks").glob("*.ipynb")):
        used |= set(re.findall(r"report\.([a-z_]+)\(", nb.read_text()))
    assert used, "no report calls found in the notebooks"
    assert used <= allowed, f"uncalibrated or unknown report helpers in notebooks: {sorted(used - allowed)}"
    for old in ("greater", "at_least", "at_most", "ci_excludes_zero", "bootstrap_diff_ci"):
        assert not hasattr(report, old), old


@pytest.mark.parametrize("discordant", [0.3, 1.0, 3.0, 10.0])
def test_seed_rule_on_quantised_accuracies_stays_calibrated(discordant):
    """Chapter 3's accuracies move in steps of one pair (0.5 points on 200 pairs). With no effect, each seed's
    difference is (pairs only A gets right - pairs only B gets right) x step, both Poisson: at n = 3 seeds the
    t rule with the resolution floor says "reproduced" at most 2.5 % of the time, and never on identical seeds."""
    rng = np.random.default_rng(5)
    reps, step = 4000, 0.5
    d = (rng.poisson(discordant, (reps, 3)) - rng.poisson(discordant, (reps, 3))) * step
    hits = sum(stats.mean_ci(row, resolution=step).low > 0 for row in d)
    se = math.sqrt(stats.ALPHA * (1 - stats.ALPHA) / reps)
    assert hits / reps <= stats.ALPHA + TOL_SE * se
    same = d[(d == d[:, :1]).all(1) & (d[:, 0] != 0)]
    assert len(same) or discordant > 1  # the case the floor exists for does occur
    assert all(not stats.mean_ci(row).low > 0 for row in same)  # no floor given: degenerate, never decided
