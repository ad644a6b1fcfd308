"""The warm start on the smoke search (real Ray on loopback, a real SQLite study): the dense
model's stage sensitivity kept in the experiment folder, and the points chosen from it enqueued
after the known points, evaluated first, and not again on resume."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from search.warm_start import known_points, ratio_grid
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import search
from yolov2.config import load_config
from yolov2.sensitivity import BASELINE, Point, Sensitivity

BUDGETS = [0.2, 0.3]
HIGH = 0.3  # 3 ratios a stage: 18 evaluations
SPACE = (
    f"search.space={{prune.ratios: {{groups: stage, low: 0.0, high: {HIGH}}}, "
    "finetune.lr: {low: 0.001, high: 0.004, log: true}}"
)
RATIOS = tuple(f"ratio.stage{i}" for i in range(1, 7))


def test_the_grid_spans_the_searched_range_at_most_a_tenth_apart() -> None:
    assert ratio_grid(0.0, 0.6) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]
    assert ratio_grid(0.2, 0.45) == [0.2, 0.283333, 0.366667, 0.45]  # 3 steps of 0.083
    assert ratio_grid(0.0, 0.05) == [0.05]


@pytest.fixture(scope="module")
def warmed(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    storage = tmp_path_factory.mktemp("storage")
    overrides = smoke_overrides(
        smoke_cache,
        SPACE,
        "search.known_points=[0.0]",
        "search.warm_start=sensitivity",
        f"search.warm_start_budgets={BUDGETS}",
        "search.max_concurrent=1",
    )
    argv = ["run", str(SMOKE), "--storage", str(storage), "--name", "warm", "--num-samples", "3",
            *set_arguments(overrides)]  # fmt: skip
    code, out, err = search(argv)
    return {"code": code, "out": out, "err": err, "argv": argv, "dir": storage / "warm"}


def _sensitivity(path: Path) -> Sensitivity:
    with path.open() as handle:
        rows = [
            Point(r["group"], *(float(r[k]) for k in list(r)[1:])) for r in csv.DictReader(handle)
        ]
    names = tuple(dict.fromkeys(p.group for p in rows[1:]))
    return Sensitivity("stage", names, "filter", rows[0], tuple(rows[1:]))


def _study(directory: Path) -> optuna.Study:
    return optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")


def test_the_sensitivity_is_kept_in_the_experiment_folder(warmed: dict[str, Any]) -> None:
    assert warmed["code"] == 0, warmed["err"]
    table = _sensitivity(warmed["dir"] / "sensitivity.csv")
    assert table.baseline.group == BASELINE
    assert table.names == tuple(name.removeprefix("ratio.") for name in RATIOS)
    assert [p.ratio for p in table.points] == ratio_grid(0.0, HIGH) * len(RATIOS)
    assert (warmed["dir"] / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "warm start: 20% fewer GFLOPs: ratios" in warmed["err"]


def test_the_warm_points_follow_the_known_points_in_the_study(warmed: dict[str, Any]) -> None:
    directory = warmed["dir"]
    config = load_config(directory / "experiment.yaml")
    table = _sensitivity(directory / "sensitivity.csv")
    expected = known_points(table, config, RATIOS, 0.0, HIGH)
    assert len(expected) == len(BUDGETS)
    trials = _study(directory).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    sampled = [{name: t.params[name] for name in RATIOS} for t in trials]
    assert sampled == [dict.fromkeys(RATIOS, 0.0), *expected]
    for trial in trials:  # the other searched keys at the experiment's own values, as for the
        assert trial.params["finetune.lr"] == config.finetune.lr  # known points
    # Measured on the trials' own pruned models: each point removes at least its budget.
    table = pd.read_csv(directory / "trials.csv").set_index("trial_id")
    gflops = [table.loc[t.user_attrs["ray_trial_id"], "gflops"] for t in trials]
    for budget, cost in zip(BUDGETS, gflops[1:], strict=True):
        assert 1 - cost / gflops[0] >= budget
    assert all(
        ratio in [0.0, *ratio_grid(0.0, HIGH)] for point in expected for ratio in point.values()
    )


def test_the_same_search_again_enqueues_nothing_more(warmed: dict[str, Any]) -> None:
    code, _, err = search(warmed["argv"])
    assert code == 0, err
    assert "holds this search already: resuming it" in err
    assert "warm start" not in err
    assert len(_study(warmed["dir"]).get_trials()) == 3
