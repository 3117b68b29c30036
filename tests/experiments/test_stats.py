"""Statistics over seeds: no spread from one seed, and paired differences checked against hand values."""
from __future__ import annotations

import math

import pytest

from pipeline.experiments.report import Group, markdown, paired, plus_minus, summarize
from pipeline.experiments.runs import RunResult
from pipeline.experiments.stats import mean_std, paired_difference


def test_one_seed_has_no_spread():
    mean, std, n = mean_std([0.7624])
    assert (mean, n) == (0.7624, 1) and math.isnan(std)
    assert plus_minus(mean, std) == "76.24"  # not "76.24 ± 0.00"
    assert plus_minus(*mean_std([0.5, 0.7])[:2]) == "60.00 ± 14.14"


def test_paired_difference_golden():
    """d = (0.02, 0.01, 0.03): mean 0.02, s = 0.01, se = 0.01/sqrt(3), t(0.975, 2) = 4.302652729911275."""
    a = {0: 0.80, 1: 0.71, 2: 0.93, 5: 0.5}
    b = {0: 0.78, 1: 0.70, 2: 0.90, 7: 0.1}  # seeds 5 and 7 have no partner
    d = paired_difference(a, b)
    half = 4.302652729911275 * 0.01 / math.sqrt(3)
    assert d.n == 3
    assert d.mean == pytest.approx(0.02)
    assert (d.ci_low, d.ci_high) == (pytest.approx(0.02 - half), pytest.approx(0.02 + half))
    # t = 0.02 / (0.01 / sqrt 3) = 3.4641; two-sided p with 2 dof = 1 - t / sqrt(t^2 + 2) (closed form for 2 dof)
    t = 0.02 / (0.01 / math.sqrt(3))
    assert d.p_value == pytest.approx(1 - t / math.sqrt(t * t + 2))
    assert not d.significant  # the half-width 0.0248 exceeds the mean: the CI [-0.0048, 0.0448] holds 0


def test_paired_difference_edge_cases():
    assert paired_difference({0: 0.5}, {1: 0.4}).n == 0
    one = paired_difference({0: 0.5}, {0: 0.4})
    assert one.n == 1 and math.isnan(one.ci_low) and not one.significant
    same = paired_difference({0: 0.5, 1: 0.6}, {0: 0.4, 1: 0.5})  # identical differences: zero spread
    assert same.significant and same.p_value == 0.0


def _run(name: str, seed: int, acc: float, objective: str) -> RunResult:
    return RunResult(name, None, {"test_acc": acc}, {"run": {"seed": seed}, "objective": {"name": objective}}, [])


def test_report_rows_show_seeds_and_pairs():
    groups = [Group("kd", [_run("a", s, x, "kd") for s, x in enumerate([0.70, 0.72, 0.71])]),
              Group("adaptconf", [_run("b", s, x, "adaptconf") for s, x in enumerate([0.73, 0.74, 0.75])]),
              Group("single", [_run("c", 0, 0.6, "augconf")])]
    rows = summarize(groups)
    assert [r["seeds"] for r in rows] == [3, 3, 1]
    assert "| single | 1 | 60.00 |" in markdown(rows)
    pairs = paired(groups)
    assert len(pairs) == 1  # the one-seed group pairs with nothing
    assert pairs[0]["a"] == "kd" and pairs[0]["diff_mean"] == pytest.approx(-0.03)


def test_holm_adjusts_step_down_in_the_input_order():
    """Holm on m = 4 tested values: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04, then
    the running maximum makes the last 0.06; NaN (no test) is left out of m and stays NaN."""
    from pipeline.experiments.stats import holm

    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(adjusted[3])
    assert adjusted[4] == pytest.approx(0.02)
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([]) == []


def test_t_interval_golden():
    """Mean 2, s = 1 over 3 values: half-width t(0.975, 2) x 1 / sqrt 3 = 4.303 / 1.732 = 2.484."""
    from pipeline.experiments.stats import t_interval

    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 2.4841, 2 + 2.4841), abs=1e-4)
    assert all(math.isnan(x) for x in t_interval([1.0]))
