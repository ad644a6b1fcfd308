"""The Pareto front, hypervolume, knee and budgets, against values worked out by hand."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from search.pareto import (
    COMPLETE,
    FAILED,
    STOPPED,
    Ledger,
    LiveFront,
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


def test_the_ledger_is_appended_a_line_per_finished_trial(tmp_path: Path) -> None:
    ledger = Ledger.load(tmp_path)
    path = tmp_path / "trials.jsonl"
    written: list[bytes] = []
    for number, trial_id in enumerate(["a", "b", "c", "a"], 1):  # "a" again: after a resume
        metrics = {"map": 0.1 * number, "size_mb": 1.0}
        ledger.record(TrialRecord(trial_id, COMPLETE, {}, {"ratio.layer01": 0.5}, metrics))
        data = path.read_bytes()
        assert data.count(b"\n") == number
        assert all(data.startswith(before) for before in written)  # earlier bytes untouched
        written.append(data)
    reloaded = Ledger.load(tmp_path)
    assert [(r.trial_id, r.order) for r in reloaded.ordered()] == [("a", 1), ("b", 2), ("c", 3)]
    assert reloaded.records["a"].metrics["map"] == pytest.approx(0.4)  # the later line wins


def test_a_line_a_killed_driver_left_incomplete_is_dropped(tmp_path: Path) -> None:
    _ledger(tmp_path, [("a", COMPLETE, 0.5, 2.0, False), ("b", COMPLETE, 0.6, 3.0, False)])
    path = tmp_path / "trials.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + b'{"trial_id": "c", "sta')
    ledger = Ledger.load(tmp_path)
    assert list(ledger.records) == ["a", "b"]
    ledger.record(TrialRecord("d", COMPLETE, {}, {}, {"map": 0.7}))
    assert path.read_bytes().startswith(whole)
    assert [json.loads(line)["trial_id"] for line in path.read_text().splitlines()] == [
        "a", "b", "d"
    ]  # fmt: skip


def test_a_ledger_of_the_one_document_format_is_read_and_replaced_at_its_first_write(
    tmp_path: Path,
) -> None:
    old = [
        {"trial_id": "a", "state": COMPLETE, "params": {}, "row": {}, "metrics": {"map": 0.5},
         "error": "", "checkpoint": "", "order": 1},
        {"trial_id": "b", "state": FAILED, "params": {}, "row": {}, "metrics": {},
         "error": "boom", "checkpoint": "", "order": 2},
    ]  # fmt: skip
    (tmp_path / "trials.json").write_text(json.dumps({"trials": old}, indent=1))
    ledger = Ledger.load(tmp_path)
    assert [(r.trial_id, r.state, r.error) for r in ledger.ordered()] == [
        ("a", COMPLETE, ""), ("b", FAILED, "boom")
    ]  # fmt: skip
    ledger.record(TrialRecord("c", COMPLETE, {}, {}, {"map": 0.6}))
    assert not (tmp_path / "trials.json").exists()
    assert [r.trial_id for r in Ledger.load(tmp_path).ordered()] == ["a", "b", "c"]
    assert len((tmp_path / "trials.jsonl").read_text().splitlines()) == 3


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("trials.json", "{not json", "trials.json: not a trial ledger"),
        ("trials.jsonl", '{"trial_id": "a"}\n', "trials.jsonl: line 1: not a trial ledger line"),
        ("trials.jsonl", "[1, 2]\n", "trials.jsonl: line 1: not a trial ledger line"),
    ],
)
def test_a_broken_ledger_is_one_clear_error(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=problem):
        Ledger.load(tmp_path)


@pytest.mark.parametrize("seed", range(6))
def test_the_live_front_is_the_whole_ledgers_front(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    ledger = Ledger(tmp_path)
    live = LiveFront(ledger, ["ratio.layer01"], "size_mb")
    ids = [f"t{i}" for i in range(60)]
    for number, trial_id in enumerate(ids):
        again = number > 5 and rng.random() < 0.1  # a trial that finishes again (a resume)
        state = rng.choice([COMPLETE] * 6 + [FAILED, STOPPED])
        metrics = {"map": round(rng.random(), 2), "size_mb": rng.choice([1.0, 2.0, 3.0, 9.0])}
        if state == FAILED and rng.random() < 0.5:
            metrics = {}
        dense = rng.random() < 0.05
        record = TrialRecord(
            rng.choice(ids[:number]) if again else trial_id,
            state, {}, {"ratio.layer01": 0.0 if dense else 0.5}, metrics,
        )  # fmt: skip
        ledger.record(record)
        kept = live.add(record)
        whole = pareto_front(trials_table(ledger, ["ratio.layer01"]), "size_mb")
        assert sorted(kept.points["trial_id"]) == sorted(whole.points["trial_id"])
        assert kept.reference_cost == whole.reference_cost
        assert kept.hypervolume == pytest.approx(whole.hypervolume)
        assert kept.normalised_hypervolume == pytest.approx(whole.normalised_hypervolume)
        assert dict(live.counts) == whole.table["state"].value_counts().to_dict()
    fresh = TrialRecord("fresh", COMPLETE, {}, {"ratio.layer01": 0.5}, {"map": 0.5, "size_mb": 2.0})
    ledger.record(fresh)
    assert len(live.add(fresh).table) < len(ledger.records) // 2  # a few points, not every trial


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
