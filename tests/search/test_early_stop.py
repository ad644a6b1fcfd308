"""Early stopping that respects the front, on the smoke search (real Ray, a real SQLite study): a
trial whose map, at its cost, a completed trial beat at the same finetune epoch is stopped there,
PRUNED in the study, never on the front; the rule itself on hand-made points."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pandas as pd
import pytest

from search.early_stop import dominated_at
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import search

EPOCHS = 4
MARGIN = 0.02
# The same pruning (0.28-0.3 uniform: one size) with a working finetune lr or one too small to
# learn anything: run one at a time in the random sampler's order (seed 0), the third trial
# finetunes with 1e-7 after the second finished with 0.002, and is stopped after its first epoch.
OVERRIDES = [
    "search.space={prune.ratios: {groups: uniform, low: 0.28, high: 0.3}, "
    "finetune.lr: {choices: [0.002, 1.0e-7]}}",
    "search.known_points=[0.3]",
    "search.sampler=random",
    "search.seed=0",
    "search.max_concurrent=1",
    f"finetune.epochs={EPOCHS}",
    f"search.early_stop={{every: 1, margin: {MARGIN}, min_completed: 1}}",
]


@pytest.mark.parametrize(
    ("map_", "cost", "stopped"),
    [
        (0.50, 10.0, True),  # a rival of equal cost, 0.10 better
        (0.59, 10.0, False),  # within the margin
        (0.50, 4.0, False),  # cheaper than every rival that beats it
        (0.30, 6.0, True),  # the cheap rival beats it
    ],
)
def test_a_trial_is_dominated_only_by_a_rival_of_no_more_cost_beyond_the_margin(
    map_: float, cost: float, stopped: bool
) -> None:
    rivals = [(0.60, 10.0), (0.40, 5.0)]
    assert dominated_at(map_, cost, rivals, margin=0.05) == stopped
    assert not dominated_at(map_, cost, [], margin=0.05)


def test_a_dominated_trial_stops_early_and_is_pruned_not_on_the_front(
    smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, *OVERRIDES)
    code, _out, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--num-samples", "4",
         *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    directory = tmp_path / "smoke"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states
    assert "RUNNING" not in states
    assert all(t.values is None for t in study.trials if t.state.name == "PRUNED")
    table = pd.read_csv(directory / "trials.csv")
    stopped = table[table["state"] == "PRUNED"]
    assert len(stopped) == states.count("PRUNED")
    assert not stopped["pareto"].any()
    assert "stopped early" in err
    # Each stopped trial ended before its last epoch, beaten at its stop epoch by a completed
    # trial of no more cost, by more than the margin.
    curves = {
        d.name.removeprefix("trial_"): [
            json.loads(line) for line in (d / "result.json").read_text().splitlines()
        ]
        for d in directory.glob("ray/trial_*")
    }
    completed = table[table["state"] == "COMPLETE"]["trial_id"]
    for trial_id in stopped["trial_id"]:
        last = curves[trial_id][-1]
        assert last["epoch"] < EPOCHS
        rivals = [
            (row["map"], row["size_mb"])
            for done in completed
            for row in curves[done]
            if row.get("epoch") == last["epoch"] and not row["finished"]
        ]
        assert dominated_at(last["map"], last["size_mb"], rivals, MARGIN)
