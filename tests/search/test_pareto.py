"""The Pareto front, hypervolume, knee and budgets, against values worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from search.pareto import (
    COMPLETE,
    FAILED,
    STOPPED,
    Ledger,
    TrialRecord,
    budget_mask,
    dominated,
    hypervolume,
    knee,
    pareto_front,
    trials_table,
)
from yolov2.errors import InputError


def test_domination_with_ties() -> None:
    maps = [0.8, 0.8, 0.7, 0.9, 0.6, 0.8]
    costs = [5.0, 5.0, 2.0, 9.0, 2.0, 6.0]
    # equal points (0, 1) dominate neither each other; 4 is dominated by 2 (same cost, less map);
    # 5 by 0 (same map, more cost)
    assert dominated(maps, costs).tolist() == [False, False, False, False, True, True]


def test_hypervolume_by_hand() -> None:
    # points (cost, map): (2, 0.5), (4, 0.7), (8, 0.9); reference cost 10
    # area = (4 - 2) * 0.5 + (8 - 4) * 0.7 + (10 - 8) * 0.9 = 1.0 + 2.8 + 1.8
    assert hypervolume([0.5, 0.7, 0.9], [2, 4, 8], 10) == pytest.approx(5.6)
    assert hypervolume([0.9, 0.5], [12, 2], 10) == pytest.approx(8 * 0.5)  # beyond the reference
    assert hypervolume([0.5, 0.4], [2, 3], 10) == pytest.approx(8 * 0.5)  # dominated adds nothing
    assert hypervolume([], [], 10) == 0.0


def test_the_knee_is_the_point_farthest_from_the_line_through_the_ends() -> None:
    maps = [0.2, 0.78, 0.8, 0.82]
    costs = [1.0, 2.0, 6.0, 10.0]
    assert knee(maps, costs) == 1
    assert knee([0.5], [3.0]) == 0


def _ledger(tmp_path: Path, rows: list[tuple[str, str, float, float, bool]]) -> Ledger:
    ledger = Ledger(tmp_path)
    for trial_id, state, value, size, dense in rows:
        metrics = {} if state == FAILED else {"map": value, "size_mb": size, "gflops": size / 10}
        ratio = 0.0 if dense else 0.5
        ledger.record(TrialRecord(trial_id, state, {}, {"ratio.layer01": ratio}, metrics))
    return ledger


def test_the_front_holds_only_completed_non_dominated_trials(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path,
        [
            ("dense", COMPLETE, 0.80, 10.0, True),
            ("a", COMPLETE, 0.78, 4.0, False),
            ("b", COMPLETE, 0.70, 5.0, False),  # dominated by a
            ("c", STOPPED, 0.99, 1.0, False),  # stopped early: truncated values, never on it
            ("d", FAILED, 0.0, 0.0, False),
            ("e", COMPLETE, 0.50, 1.0, False),
        ],
    )
    table = trials_table(ledger, ["ratio.layer01"])
    front = pareto_front(table, "size_mb")
    assert front.table["pareto"].tolist() == [True, True, False, False, False, True]
    assert front.points["trial_id"].tolist() == ["e", "a", "dense"]
    assert front.reference_cost == 10.0
    # (4 - 1) * 0.5 + (10 - 4) * 0.78; the dense point sits on the reference cost
    assert front.hypervolume == pytest.approx(1.5 + 6 * 0.78)
    assert front.normalised_hypervolume == pytest.approx((1.5 + 6 * 0.78) / (0.8 * 10))
    reloaded = Ledger.load(tmp_path)
    assert [r.trial_id for r in reloaded.records.values()] == ["dense", "a", "b", "c", "d", "e"]


def test_a_trial_recorded_again_keeps_its_place(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, [("a", COMPLETE, 0.5, 2.0, False), ("b", COMPLETE, 0.6, 3.0, False)])
    ledger.record(TrialRecord("a", COMPLETE, {}, {"ratio.layer01": 0.5}, {"map": 0.55}))
    assert [(r.trial_id, r.order) for r in Ledger.load(tmp_path).records.values()] == [
        ("a", 1),
        ("b", 2),
    ]


def test_a_broken_ledger_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "trials.json").write_text("{not json")
    with pytest.raises(InputError, match=r"trials.json: not a trial ledger"):
        Ledger.load(tmp_path)


def test_budgets_are_floors_for_map_and_ceilings_for_costs(tmp_path: Path) -> None:
    ledger = _ledger(
        tmp_path,
        [("a", COMPLETE, 0.8, 10.0, True), ("b", COMPLETE, 0.7, 4.0, False), ("c", COMPLETE, 0.5, 1.0, False)],
    )  # fmt: skip
    table = trials_table(ledger, ["ratio.layer01"])
    meets, excess = budget_mask(table, {"map": 0.6, "size_mb": 5.0})
    assert meets.tolist() == [False, True, False]
    assert excess == pytest.approx([1.0, 0.0, (0.6 - 0.5) / 0.6])
    meets, _ = budget_mask(table, {"gflops": 0.05})
    assert meets.tolist() == [False, False, False]
    assert np.all(budget_mask(table, {})[0])


def test_an_unknown_cost_is_refused(tmp_path: Path) -> None:
    table = trials_table(_ledger(tmp_path, [("a", COMPLETE, 0.5, 1.0, False)]), ["ratio.layer01"])
    with pytest.raises(InputError, match="--cost 'params'"):
        pareto_front(table, "params")
