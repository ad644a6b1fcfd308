"""Early stopping that respects the front, on the smoke search (real Ray, a real SQLite study): a
trial whose map, at its cost, a completed trial beat at the same finetune epoch is stopped there,
PRUNED in the study, never on the front; the rule itself on hand-made points."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from ray.tune.schedulers import ASHAScheduler

from search.early_stop import FrontStopper, dominated_at, make_scheduler
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import search
from yolov2.config import load_config

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
    directory, study, err = _stopping_search(smoke_cache, tmp_path, *OVERRIDES)
    states = [t.state.name for t in study.trials]
    assert "PRUNED" in states
    assert "RUNNING" not in states
    assert all(t.values is None for t in study.trials if t.state.name == "PRUNED")
    table = pd.read_csv(directory / "trials.csv")
    stopped = table[table["state"] == "PRUNED"]
    assert len(stopped) == states.count("PRUNED")
    assert not stopped["pareto"].any()
    assert "stopped early" in err
    curves = _curves(directory)
    # Each stopped trial ended before its last epoch, beaten at its stop epoch by a completed
    # trial of no more cost, by more than the margin.
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


def _stopping_search(
    smoke_cache: Path, tmp_path: Path, *overrides: str
) -> tuple[Path, optuna.Study, str]:
    """The smoke search of 4 trials with `overrides`: its folder, its study and its log."""
    arguments = set_arguments(smoke_overrides(smoke_cache, *overrides))
    code, _out, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--num-samples", "4", *arguments]
    )
    assert code == 0, err[-3000:]
    directory = tmp_path / "smoke"
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    return directory, study, err


def _curves(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """Each trial's reports, from Ray's result.json."""
    return {
        d.name.removeprefix("trial_"): [
            json.loads(line) for line in (d / "result.json").read_text().splitlines()
        ]
        for d in directory.glob("ray/trial_*")
    }


def test_ashas_rungs_lie_where_the_trials_evaluate_and_before_the_finished_report() -> None:
    config = load_config(SMOKE, ["finetune.epochs=7", "search.early_stop={rule: asha, every: 2}"])
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, ASHAScheduler)
    rungs = sorted(milestone for milestone, _ in scheduler._brackets[0]._rungs)
    assert rungs == [2, 4, 8]  # evaluated epochs (8 is never reached)
    # max_t past the last epoch: ASHA never stops a trial between its last epoch and its
    # finished report (it stops any trial whose epoch reaches max_t)
    assert scheduler._max_t == 8
    front = make_scheduler(load_config(SMOKE, ["search.early_stop={every: 2}"]))
    assert isinstance(front, FrontStopper)
    assert make_scheduler(load_config(SMOKE)) is None


def test_asha_stops_a_trial_below_the_median_of_its_rung_whatever_its_cost(
    smoke_cache: Path, tmp_path: Path
) -> None:
    """Ray's ASHA on map alone, the scalar scheduler the front stopper is compared with: the trial
    that finetunes with 1e-7 falls below the maps the earlier trials had at its rung, and stops."""
    rule = f"search.early_stop={{rule: asha, every: 1, margin: {MARGIN}, min_completed: 1}}"
    directory, study, _err = _stopping_search(smoke_cache, tmp_path, *OVERRIDES[:-1], rule)
    trials = sorted(study.trials, key=lambda t: t.number)
    states = [t.state.name for t in trials]
    assert "PRUNED" in states
    assert "RUNNING" not in states
    table = pd.read_csv(directory / "trials.csv").set_index("trial_id")
    assert not table[table["state"] == "PRUNED"]["pareto"].any()
    assert any(t.params["finetune.lr"] < 1e-6 for t in trials if t.state.name == "PRUNED")
    curves = _curves(directory)
    order = [t.user_attrs["ray_trial_id"] for t in trials]  # one at a time, in this order
    for index, trial in enumerate(trials):
        if trial.state.name != "PRUNED":
            continue
        last = curves[order[index]][-1]
        assert last["epoch"] in (1, 2, 4)
        assert last["epoch"] < EPOCHS
        earlier = [
            row["map"] for done in order[:index] for row in curves[done]
            if row.get("epoch") == last["epoch"] and not row["finished"]
        ]  # fmt: skip
        assert last["map"] < np.median(earlier)
