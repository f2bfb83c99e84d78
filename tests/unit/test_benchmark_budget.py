"""The quality benchmarks' CPU budgets (benchmarks/budget.py): --budget-cpu parsing, the calibration's cost
line and step count, and a rerun reusing the calibration instead of paying for it again."""

from __future__ import annotations

import pytest

from benchmarks import budget


def test_budget_cpu_default_and_per_set_overrides():
    names = ["kermany", "busi", "pocus"]
    assert budget.parse_budgets([], names) == {"kermany": 300.0, "busi": 300.0, "pocus": 300.0}
    assert budget.parse_budgets(["120", "kermany=600"], names) == {"kermany": 600.0, "busi": 120.0, "pocus": 120.0}
    assert budget.parse_budgets(["kermany=600", "120"], names)["kermany"] == 600.0  # order does not matter
    for bad, words in (("nope=10", "unknown data set 'nope'"), ("ten", "SECONDS or NAME=SECONDS"), ("0", "positive")):
        with pytest.raises(SystemExit, match=words):
            budget.parse_budgets([bad], names)


def test_calibration_fits_the_cost_line_and_the_budget(tmp_path):
    cost = {2: 13.0, 12: 38.0}  # 2.5 CPU s a step, 8 CPU s fixed
    made = []

    def run(steps, out):
        out.mkdir(parents=True)
        made.append(out)
        return cost[steps]

    cal = budget.calibrate(run, tmp_path, 100.0)
    assert cal.per_step == pytest.approx(2.5) and cal.startup == pytest.approx(8.0)
    assert cal.steps == 36  # 8 + 2.5 * 36 = 98 <= 100 < 8 + 2.5 * 37
    assert cal.predicted() <= 100.0 < cal.predicted(cal.steps + 1)
    assert [p.name for p in made] == ["calibration-2", "calibration-12"] and not any(p.exists() for p in made)

    def must_not_run(steps, out):
        raise AssertionError("a rerun must reuse the calibration")

    assert budget.calibrate(must_not_run, tmp_path, 100.0) == cal  # resumed: same steps, nothing rerun
    assert budget.calibrate(must_not_run, tmp_path, 200.0).steps == 76  # new budget: same cost line
    with pytest.raises(SystemExit, match=r"leaves 4 pretraining steps.*give at least 33 CPU s"):
        budget.calibrate(must_not_run, tmp_path, 20.0)


def test_a_longer_calibration_run_that_cost_less_cpu_is_refused():
    """Contention can make the 12-step run cost less CPU than the 2-step one: refuse, never extrapolate."""
    with pytest.raises(SystemExit, match="Calibration failed: 12 steps cost 19.3 CPU s"):
        budget.fit([(2, 19.8), (12, 19.3)], 250.0)


def test_a_run_well_over_its_budget_is_marked_in_the_tables():
    assert budget.over_budget(396.0, 250.0) == " (58% over budget)"
    assert budget.over_budget(270.0, 250.0) == ""  # within 10 %: calibration noise
    assert budget.over_budget(200.0, 250.0) == ""
