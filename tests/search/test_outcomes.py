"""What a trial's final report makes of it, through real Ray Tune, a real SQLite study and the
ledger: a map that is not finite is FAIL everywhere (never a COMPLETE 0 at the front's cheap
end), while a model that really scores 0 stays COMPLETE at 0."""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import optuna
import pytest

from search.pareto import Ledger, pareto_front, trials_table
from search.reporting import SearchViews
from search.space import build_space, sample
from search.trainable import FINISHED, final_metrics
from search.tuner import FrontSearch, study_storage
from tests.search.conftest import SMOKE
from yolov2.config import load_config

# ratio -> (map, size_mb): the dense model, a pruned model that scores nothing, and one whose
# evaluation gave NaN; the NaN trial is the cheapest, so as a 0 it would join the front.
OUTCOMES = {0.0: (0.6, 10.0), 0.3: (0.0, 7.0), 0.5: (math.nan, 5.0)}


def reporting_trial(params: dict[str, Any]) -> None:
    from ray import tune

    map_, size_mb = OUTCOMES[round(float(params["ratio"]), 1)]
    metrics = {"map": map_, "map_voc12": map_, "size_mb": size_mb, "gflops": size_mb / 10}
    tune.report(final_metrics(metrics, {"trial_id": tune.get_context().get_trial_id()}))


def test_a_final_report_keeps_a_map_that_is_not_finite() -> None:
    final = final_metrics({"map": math.nan, "size_mb": 1.0, "per_class": {}}, {"node": "n"})
    assert math.isnan(final["map"])
    assert final[FINISHED] is True
    assert final["node"] == "n"
    assert "per_class" not in final


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import ray
    from ray import tune

    root = tmp_path_factory.mktemp("outcomes")
    path = root / "experiment.yaml"
    path.write_text(SMOKE.read_text())
    overrides = [
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.6}}",
        "search.known_points=[0.0, 0.3, 0.5]",
        "search.cost=size_mb",
    ]
    config = load_config(path, overrides)
    space = build_space(config, str(path))
    directory = root / "search"
    directory.mkdir()
    searcher = FrontSearch(
        space=partial(sample, space),
        metric=["map", "size_mb"],
        mode=["max", "min"],
        points_to_evaluate=space.first_points(config),
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=config.name,
        storage=study_storage(directory),
        search_storage=str(directory),
    )
    ray.init(address="local", num_cpus=2, object_store_memory=256 * 2**20, include_dashboard=False)
    try:
        tune.Tuner(
            reporting_trial,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=3, max_concurrent_trials=1
            ),
            run_config=tune.RunConfig(
                name="ray",
                storage_path=str(directory),
                callbacks=[SearchViews(config, space, str(directory))],
                verbose=0,
            ),
        ).fit()
    finally:
        ray.shutdown()
    study = optuna.load_study(study_name=config.name, storage=study_storage(directory))
    ledger = Ledger.load(directory)
    front = pareto_front(trials_table(ledger, space.columns), "size_mb")
    return {"study": study, "ledger": ledger, "front": front}


def _by_ratio(records: Any) -> dict[float, Any]:
    return {round(float(r.params["ratio"]), 1): r for r in records}


def test_a_map_that_is_not_finite_is_fail_in_the_study(outcomes: dict[str, Any]) -> None:
    trials = {round(t.params["ratio"], 1): t for t in outcomes["study"].trials}
    assert {r: t.state.name for r, t in trials.items()} == {
        0.0: "COMPLETE", 0.3: "COMPLETE", 0.5: "FAIL"
    }  # fmt: skip
    assert trials[0.3].values == [0.0, 7.0]
    assert trials[0.5].values is None


def test_a_map_that_is_not_finite_is_fail_in_the_ledger(outcomes: dict[str, Any]) -> None:
    records = _by_ratio(outcomes["ledger"].records.values())
    assert records[0.5].state == "FAIL"
    assert records[0.5].error == "its last report has no finite objective (map nan)"
    assert (records[0.3].state, records[0.3].metrics["map"]) == ("COMPLETE", 0.0)


def test_the_front_and_the_smallest_pick_leave_the_failed_trial_out(
    outcomes: dict[str, Any],
) -> None:
    front = outcomes["front"]
    table = front.table.set_index(front.table["trial_id"])
    states = dict(zip(table["size_mb"], table["state"], strict=True))
    assert states == {10.0: "COMPLETE", 7.0: "COMPLETE", 5.0: "FAIL"}
    # `best --pick smallest` picks the cheapest point of the front: the model that scores 0
    assert list(front.points["size_mb"]) == [7.0, 10.0]
    assert list(front.points["map"]) == [0.0, 0.6]
