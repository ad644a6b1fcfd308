"""Select on validation, report on test: a smoke search with a validation split, on real Ray and a
real SQLite study. Every trial's map is on the val images; only the front's models (and the dense
one) are evaluated on the test images, after the last trial, and every view names which is which."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from search.pareto import Ledger
from tests.console import run_captured
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from yolov2.checkpoint import load_checkpoint
from yolov2.config import load_config
from yolov2.engine import load_splits
from yolov2.pipeline import evaluate_model

# The smoke task with 4 of its 16 trainval images held out as val and 8 unseen test images.
VALIDATION = [
    "data.synthetic.num_val=4",
    "data.train_sets=[[2007, train]]",
    "data.val_sets=[[2007, val]]",
    "data.test_sets=[[2007, test]]",
]
SPACE = "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.6}}"
NUM_SAMPLES = 4


@pytest.fixture(scope="module")
def searched(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    storage = tmp_path_factory.mktemp("storage")
    # Its own data folder: the session's smoke data set has no val images of its own.
    held_out = f"data.root={smoke_cache}/data-val/VOCdevkit"
    known = "search.known_points=[0, 0.3, 0.6]"
    overrides = smoke_overrides(smoke_cache, *VALIDATION, held_out, SPACE, known)
    code, out, err = run_captured(
        ["run", str(SMOKE), "--storage", str(storage), "--name", "held-out",
         "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    directory = storage / "held-out"
    return {"out": out, "err": err, "dir": directory, "overrides": overrides}


def _by_hand(directory: Path, overrides: list[str], checkpoint: str) -> tuple[float, float]:
    """(map on val, map on test) of a trial's checkpoint, evaluated here."""
    config = load_config(SMOKE, overrides)
    splits = load_splits(config.data)
    model = load_checkpoint(directory / checkpoint / "model.safetensors")
    val = evaluate_model(model, config, splits)["map"]
    return float(val), float(evaluate_model(model, config, splits, on_test=True)["map"])


def test_trials_select_on_val_and_only_the_chosen_are_tested(searched: dict[str, Any]) -> None:
    ledger = Ledger.load(searched["dir"])
    records = list(ledger.records.values())
    assert len(records) == NUM_SAMPLES
    assert {r.metrics["map_split"] for r in records} == {"val"}
    table = pd.read_csv(searched["dir"] / "trials.csv")
    chosen = set(table.loc[table["pareto"] | table["dense"], "trial_id"])
    tested = {r.trial_id for r in records if math.isfinite(r.metrics.get("test_map", math.nan))}
    assert tested == chosen
    assert tested != {r.trial_id for r in records}  # a dominated trial is never tested
    for record in records:
        val, test = _by_hand(searched["dir"], searched["overrides"], record.checkpoint)
        assert record.metrics["map"] == pytest.approx(val, abs=1e-6)
        if record.trial_id in tested:
            assert record.metrics["test_map"] == pytest.approx(test, abs=1e-6)
    # On unseen images apart from the val ones, the two maps are not one number twice.
    assert any(
        abs(r.metrics["map"] - r.metrics["test_map"]) > 1e-3
        for r in records
        if r.trial_id in tested
    )


def test_every_view_names_the_split_of_each_map(searched: dict[str, Any]) -> None:
    out = searched["out"]
    assert "Pareto front of map on val against" in out
    assert "val map" in out
    assert "test map" in out
    assert "no validation split" not in searched["err"]
    table = pd.read_csv(searched["dir"] / "trials.csv")
    assert {"map", "test_map", "test_map_voc12", "map_split"} <= set(table.columns)


def test_the_front_s_test_maps_reach_tensorboard(searched: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ledger = Ledger.load(searched["dir"])
    for record in ledger.records.values():
        run = EventAccumulator(str(searched["dir"] / "tensorboard" / "trials" / record.trial_id))
        run.Reload()
        values = [e.value for e in run.Scalars("trial/test_map")]
        expected = record.metrics.get("test_map", math.nan)
        assert values[-1] == pytest.approx(expected, abs=1e-6, nan_ok=True)


def test_best_reports_the_map_it_chose_by_and_the_test_map(
    searched: dict[str, Any], tmp_path: Path
) -> None:
    code, out, err = run_captured(
        ["best", str(searched["dir"]), "--pick", "best-map", "--out", str(tmp_path / "b.safetensors")]
    )  # fmt: skip
    assert code == 0, err
    assert " on val, " in out
    assert " on test (VOC07)" in out


def test_a_resumed_search_measures_test_maps_it_had_not(searched: dict[str, Any]) -> None:
    # The driver was lost after the last trial and before the test maps: the ledger has none.
    directory = searched["dir"]
    ledger = Ledger.load(directory)
    measured = {
        t: r.metrics["test_map"] for t, r in ledger.records.items() if "test_map" in r.metrics
    }
    for record in list(ledger.records.values()):
        metrics = {k: v for k, v in record.metrics.items() if not k.startswith("test_map")}
        ledger.record(dataclasses.replace(record, metrics=metrics))
    code, _, err = run_captured(["resume", str(directory)])
    assert code == 0, err
    again = Ledger.load(directory).records
    assert {t: again[t].metrics["test_map"] for t in measured} == pytest.approx(measured)


def test_a_search_without_a_validation_split_says_it_selects_on_test(
    smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, SPACE, "search.known_points=[0]")
    code, out, err = run_captured(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--name", "on-test", "--num-samples", "1",
         *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    assert err.count("no validation split") == 1
    record = next(iter(Ledger.load(tmp_path / "on-test").records.values()))
    assert record.metrics["test_map"] == record.metrics["map"]  # one evaluation, on test
    assert record.metrics["map_split"] == "test"
    assert "Pareto front of map on test against" in out
