"""The smoke search end to end on real Ray (loopback), a real SQLite study and real event files:
the trials table and its front, the study, TensorBoard, `pareto`, `best` + `eval`, a trial that
diverges, and each bad input that must fail in one line before a search waits on it."""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import pytest

from search.pareto import METRICS, Ledger
from tests.console import run_captured
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides

NUM_SAMPLES = 5
SPACE = "search.space={prune.ratios: {groups: stage, low: 0.0, high: 0.6}, finetune.lr: {low: 0.001, high: 0.004, log: true}}"


search = run_captured  # the other search tests import it from here


@pytest.fixture(scope="module")
def searched(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    storage = tmp_path_factory.mktemp("storage")
    overrides = smoke_overrides(smoke_cache, SPACE, "search.max_concurrent=2")
    code, out, err = search(
        ["run", str(SMOKE), "--storage", str(storage), "--name", "smoke-search",
         "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides)]
    )  # fmt: skip
    return {
        "code": code,
        "out": out,
        "err": err,
        "dir": storage / "smoke-search",
        "cache": smoke_cache,
    }


def test_the_search_finishes_and_prints_the_front_and_where_to_look(
    searched: dict[str, Any],
) -> None:
    assert searched["code"] == 0, searched["err"]
    out, directory = searched["out"], searched["dir"]
    assert f"{NUM_SAMPLES} trials ({NUM_SAMPLES} complete)" in out
    assert "<- knee" in out
    assert f"tensorboard --logdir {directory}" in out
    assert f"optuna-dashboard sqlite:///{directory / 'study.db'}" in out
    assert f"prune-search best {directory}" in out
    assert "done, 0 failed" in searched["err"]  # the progress line of each finished trial


def _table(directory: Path) -> pd.DataFrame:
    return pd.read_csv(directory / "trials.csv")


def _front_by_hand(table: pd.DataFrame, cost: str) -> list[bool]:
    """Which rows no other row dominates (map at least as high and cost at most as high, one
    of them strictly)."""
    return [
        not any(
            (o["map"] >= r["map"] and o[cost] <= r[cost])
            and (o["map"] > r["map"] or o[cost] < r[cost])
            for _, o in table.iterrows()
        )
        for _, r in table.iterrows()
    ]


def _final_reports(directory: Path) -> dict[str, dict[str, Any]]:
    """Each trial's last report to Ray (its result.json's last line), by trial id."""
    return {
        trial.name.removeprefix("trial_"): json.loads(
            (trial / "result.json").read_text().splitlines()[-1]
        )
        for trial in directory.glob("ray/trial_*")
    }


def test_the_trials_csv_has_every_column_and_the_front_computed_by_hand(
    searched: dict[str, Any],
) -> None:
    table = _table(searched["dir"])
    ratios = [f"ratio.stage{i}" for i in range(1, 7)] + [
        f"ratio.layer{i:02d}" for i in range(1, 23)
    ]
    assert list(table.columns) == [
        "trial_id", "state", "finetune.lr", *ratios, *METRICS, "node", "device", "gpu_ids", "map_split",
        "error", "checkpoint", "dense", "pareto",
    ]  # fmt: skip
    assert len(table) == NUM_SAMPLES
    assert set(table["state"]) == {"COMPLETE"}
    assert table["trial_id"].is_unique
    # Each row holds what its trial reported last, exactly: the finished report's metrics.
    reports = _final_reports(searched["dir"])
    assert sorted(reports) == sorted(table["trial_id"])
    for _, row in table.iterrows():
        final = reports[row["trial_id"]]
        assert final["finished"]
        for metric in ("map", "size_mb", "gflops", "sparsity"):
            assert row[metric] == pytest.approx(final[metric], rel=1e-12, abs=1e-15), metric
    # distinct, real maps: a front where every map is 0 would test nothing
    assert table["map"].nunique() >= 4
    assert table["map"].max() > 0.5
    assert table["pareto"].tolist() == _front_by_hand(table, "size_mb")
    # the known points come first: the dense model (ratios 0) and a uniform 0.3
    dense = table[table["dense"]]
    assert len(dense) == 1
    assert (dense[[f"ratio.layer{i:02d}" for i in range(1, 23)]] == 0).all(axis=None)
    assert dense["sparsity"].abs().max() < 1e-3
    assert (table["sparsity"][~table["dense"]] > 0).all()
    assert (table["dense_map"] == dense["map"].iloc[0]).all()
    # One local Ray node ran every trial: this host and the node's id, on no GPU.
    (node,) = set(table["node"])
    assert re.fullmatch(rf"{re.escape(socket.gethostname())}:[0-9a-f]{{8}}", node), node
    assert set(table["device"]) == {"cpu"}
    assert table["gpu_ids"].isna().all()  # an empty field: Ray gave the trials no GPU


def test_the_study_in_sqlite_holds_every_trial_once_with_the_reported_values(
    searched: dict[str, Any],
) -> None:
    directory = searched["dir"]
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * NUM_SAMPLES
    table = _table(directory).set_index("trial_id")
    for trial in trials:
        row = table.loc[trial.user_attrs["ray_trial_id"]]
        assert trial.values == [pytest.approx(row["map"]), pytest.approx(row["size_mb"])]
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["map", "size_mb"]  # as optuna-dashboard names the objectives


def _events(path: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def test_tensorboard_shows_hparams_with_equal_columns_the_front_and_the_hypervolume(
    searched: dict[str, Any],
) -> None:
    from tensorboard.plugins.hparams import plugin_data_pb2

    views = searched["dir"] / "tensorboard"
    front = _events(views / "front")
    volume = front.Scalars("pareto/hypervolume")
    steps = [e.step for e in volume]  # at most one a search.sync_every_s, and one at the end
    assert steps[0] == 1
    assert steps[-1] == NUM_SAMPLES
    assert steps == sorted(set(steps))
    # The last one is the whole front's by hand: the area it dominates up to the dense model's
    # size (the reference), each point's map times the cost up to the next point.
    table = _table(searched["dir"])
    points = table[_front_by_hand(table, "size_mb")].sort_values("size_mb")
    reference = float(table.loc[table["dense"], "size_mb"].iloc[0])
    ends = [*points["size_mb"].iloc[1:], reference]
    area = sum(
        (end - c) * m for c, m, end in zip(points["size_mb"], points["map"], ends, strict=True)
    )
    assert area > 0
    assert volume[-1].value == pytest.approx(area, rel=1e-6)  # a float32 scalar
    assert all(b.value >= a.value - 1e-12 for a, b in itertools.pairwise(volume))  # never shrinks
    assert len(front.Images("pareto/front")) == len(steps)
    assert len(list((views / "front").glob("events.*"))) == 1  # one writer kept open
    columns = []
    for run in sorted((views / "trials").iterdir()):
        events = _events(run)
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
        columns.append(sorted(start.hparams))
        assert math.isfinite(events.Scalars("trial/map")[0].value)
    assert len(columns) == NUM_SAMPLES
    assert all(c == columns[0] for c in columns)
    assert "finetune.lr" in columns[0]
    assert "ratio.layer22" in columns[0]
    # One run per trial: its curves by epoch beside its hparams, none of Ray's own keys, and
    # nothing in Ray's trial folders.
    table = _table(searched["dir"]).set_index("trial_id")
    for run in (views / "trials").iterdir():
        events = _events(run)
        tags = set(events.Tags()["scalars"])
        dense = bool(table.loc[run.name, "dense"])  # the dense point is measured, not finetuned
        assert ("progress/loss/total" in tags) is not dense
        assert "progress/map" in tags
        assert not {t for t in tags if "done" in t or "time" in t or "finished" in t}
        maps = events.Scalars("progress/map")
        steps = [e.step for e in maps]  # by finetune epoch (2), the final report at the last one
        assert len(set(steps)) == 1 if dense else sorted(set(steps)) == [1, 2]
        assert maps[-1].value == pytest.approx(table.loc[run.name, "map"], rel=1e-6)
    assert len(list((views / "trials").iterdir())) == NUM_SAMPLES
    assert not list(searched["dir"].glob("ray/trial_*/events.out.tfevents.*"))


def test_pareto_writes_the_csv_and_the_plot(searched: dict[str, Any], tmp_path: Path) -> None:
    code, out, _ = search(
        ["pareto", str(searched["dir"]), "--csv", str(tmp_path / "t.csv"),
         "--plot", str(tmp_path / "f.png"), "--cost", "gflops"]
    )  # fmt: skip
    assert code == 0
    assert "Pareto front of map on test against gflops" in out  # no validation split
    table = pd.read_csv(tmp_path / "t.csv")
    assert sorted(table["trial_id"]) == sorted(_table(searched["dir"])["trial_id"])
    assert table["pareto"].tolist() == _front_by_hand(table, "gflops")  # the --cost given
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pick", ["best-map", "smallest", "knee"])
def test_best_gives_a_checkpoint_whose_eval_reproduces_its_trial(
    searched: dict[str, Any], tmp_path: Path, pick: str
) -> None:
    out_path = tmp_path / "best.safetensors"
    code, out, err = search(["best", str(searched["dir"]), "--pick", pick, "--out", str(out_path)])
    assert code == 0, err
    trial_id = out.split(":")[0]
    row = _table(searched["dir"]).set_index("trial_id").loc[trial_id]
    assert row["pareto"]
    front = _table(searched["dir"])
    front = front[front["pareto"]]
    if pick == "best-map":
        assert row["map"] == front["map"].max()
    if pick == "smallest":
        assert row["size_mb"] == front["size_mb"].min()
    code, out, err = search(["eval", str(out_path), "--json"])
    assert code == 0, err
    assert json.loads(out)["map"] == row["map"]  # exactly


def test_a_budget_nobody_meets_names_the_nearest_trial(
    searched: dict[str, Any], tmp_path: Path
) -> None:
    code, _, err = search(
        ["best", str(searched["dir"]), "--max-size-mb", "0.001", "--out", str(tmp_path / "x.safetensors")]
    )  # fmt: skip
    assert code == 2
    assert "error: no trial meets size_mb <= 0.001; the nearest is " in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


def test_another_search_into_the_same_folder_is_refused(searched: dict[str, Any]) -> None:
    directory = searched["dir"]
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(directory.parent), "--name", directory.name,
         *set_arguments(smoke_overrides(searched["cache"]))]
    )  # fmt: skip
    assert code == 2
    assert f"{directory}: holds another search (its experiment.yaml differs)" in err
    assert f"prune-search resume {directory}" in err


def test_the_same_search_again_says_it_has_finished(searched: dict[str, Any]) -> None:
    directory = searched["dir"]
    overrides = smoke_overrides(searched["cache"], SPACE, "search.max_concurrent=2")
    code, out, err = search(
        ["run", str(SMOKE), "--storage", str(directory.parent), "--name", directory.name,
         "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    assert "holds this search already: resuming it" in err
    assert f"{NUM_SAMPLES} trials ({NUM_SAMPLES} complete)" in out


def test_resuming_a_finished_search_says_so_and_prints_the_front(searched: dict[str, Any]) -> None:
    code, out, err = search(["resume", str(searched["dir"])])
    assert code == 0, err
    assert "the search has finished" in err
    assert "<- knee" in out
    assert len(_table(searched["dir"])) == NUM_SAMPLES


def test_a_trial_whose_loss_diverges_fails_alone(smoke_cache: Path, tmp_path: Path) -> None:
    space = (
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.5}, "
        "finetune_loss.noobject_scale: {low: 1.0e+200, high: 1.0e+300, log: true}}"
    )
    overrides = smoke_overrides(smoke_cache, space, "search.known_points=[0.0, 0.3]")
    code, out, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--num-samples", "2", *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    table = _table(tmp_path / "smoke").set_index("trial_id")
    assert sorted(table["state"]) == ["COMPLETE", "FAIL"]
    failed = table[table["state"] == "FAIL"].iloc[0]
    assert failed["error"].startswith("TrainingDivergedError: finetune 1/1")
    assert "loss is inf at epoch 1, step 1" in failed["error"]
    assert not failed["pareto"]
    assert "TrainingDivergedError" in out  # shown beside the table
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{tmp_path / 'smoke' / 'study.db'}"
    )
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE", "FAIL"]


def test_known_at_tries_the_known_points_at_each_lr(smoke_cache: Path, tmp_path: Path) -> None:
    space = (
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.5}, "
        "finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"
    )
    overrides = smoke_overrides(
        smoke_cache, space, "search.known_points=[0.0, 0.3]", "search.known_at={finetune.lr: [0.002, 0.0005]}"
    )  # fmt: skip
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--num-samples", "3", *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    table = _table(tmp_path / "smoke")
    assert (table["state"] == "COMPLETE").all()
    pruned = table[~table["dense"].astype(bool)].sort_values("finetune.lr")
    assert pruned["ratio"].tolist() == pytest.approx([0.3, 0.3])
    assert pruned["finetune.lr"].tolist() == pytest.approx([0.0005, 0.002])
    assert pruned["map"].nunique() == 2  # two finetunes, not one reported twice
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{tmp_path / 'smoke' / 'study.db'}"
    )
    assert [t.params["finetune.lr"] for t in study.trials[1:]] == pytest.approx([0.002, 0.0005])


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("search.gpus_per_trial=1", "search.gpus_per_trial is 1, but no node of this Ray cluster has a GPU"),
        ("search.cpus_per_trial=64", "search.cpus_per_trial is 64, but the largest node of this Ray cluster has"),
    ],
)  # fmt: skip
def test_resources_no_node_has_are_one_line_not_a_search_that_waits(
    smoke_cache: Path, tmp_path: Path, override: str, problem: str
) -> None:
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), *set_arguments(smoke_overrides(smoke_cache, override))]
    )  # fmt: skip
    assert code == 2
    last = err.strip().splitlines()[-1]  # Ray may log before it; the error is one line, the last
    assert last.startswith("prune-search run: error: ")
    assert problem in last
    assert not (tmp_path / "smoke").exists()  # nothing half-written


def test_a_storage_that_cannot_be_written_is_one_line(smoke_cache: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(blocker), *set_arguments(smoke_overrides(smoke_cache))]
    )  # fmt: skip
    assert code == 2
    assert f"{blocker / 'smoke'}: cannot write the experiment folder" in err


@pytest.mark.parametrize("remote", [False, True])
def test_a_search_whose_tuner_fails_to_build_leaves_nothing_and_runs_again_anew(
    smoke_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote: bool
) -> None:
    """Optuna's own NSGA-II (it holds a lock Ray cannot pickle into tuner.pkl) fails the Tuner
    after experiment.yaml, the study and the warm start are written: all of it goes again, so
    the same command afterwards is a new search, not a resume of one that cannot be resumed."""
    from search import tuner

    monkeypatch.chdir(tmp_path)  # a URI's driver folder is runs/<name> here
    storage = f"file://{tmp_path / 'store'}" if remote else str(tmp_path / "store")
    driver = tmp_path / ("runs" if remote else "store") / "smoke"
    argv = ["run", str(SMOKE), "--storage", storage, "--num-samples", "2",
            *set_arguments(smoke_overrides(smoke_cache))]  # fmt: skip
    stock = tuner.make_sampler
    monkeypatch.setattr(tuner, "make_sampler", lambda *_: optuna.samplers.NSGAIISampler(seed=0))
    with pytest.raises(TypeError, match="pickle"):
        search(argv)
    # Only the published dense stage stays (it is whole, and the next run takes it).
    assert {path.name for path in (tmp_path / "store" / "smoke").iterdir()} == {"dense"}
    assert not remote or not driver.exists()
    monkeypatch.setattr(tuner, "make_sampler", stock)
    code, _, err = search(argv)
    assert code == 0, err
    assert "resuming" not in err
    assert len(pd.read_csv(driver / "trials.csv")) == 2


@pytest.mark.parametrize("command", ["pareto", "best", "resume"])
def test_a_folder_that_is_not_a_search_is_one_line(tmp_path: Path, command: str) -> None:
    extra = ["--out", str(tmp_path / "x.safetensors")] if command == "best" else []
    code, _, err = search([command, str(tmp_path), *extra])
    assert code == 2
    assert err.strip() == (
        f"prune-search {command}: error: {tmp_path}: not a search folder "
        "(no experiment.yaml and ray/tuner.pkl)"
    )


def test_a_bad_space_is_one_line_before_ray_starts(tmp_path: Path) -> None:
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--set", "search.space={finetune.lrr: {low: 0.1, high: 0.2}}"]
    )  # fmt: skip
    assert code == 2
    assert f"{SMOKE}: search.space.finetune.lrr: finetune.lrr is not a field" in err
    assert not any(tmp_path.iterdir())


def test_refine_finetunes_the_front_longer_beside_it_and_best_picks_from_either(
    searched: dict[str, Any], tmp_path: Path
) -> None:
    directory = tmp_path / "copy"
    shutil.copytree(searched["dir"], directory)  # the module's search stays as it was
    code, out, err = search(["refine", str(directory), "--epochs", "6"])
    assert code == 0, err
    before = _table(directory)
    points = before[before["pareto"]].set_index("trial_id")
    refined = pd.read_csv(directory / "refined.csv").set_index("trial_id")
    assert set(refined.index) == set(points.index)  # the searched front's points, each once
    assert (refined["state"] == "COMPLETE").all()
    pruned = refined[~refined["dense"].astype(bool)]
    assert len(pruned)
    assert (pruned["map"] != points.loc[pruned.index, "map"]).any()  # finetuned further
    assert refined.loc[refined["dense"].astype(bool), "map"].tolist() == (
        points.loc[points["dense"].astype(bool), "map"].tolist()
    )  # the dense point as it was: the reference of both fronts
    ledger = Ledger.load(directory, "refined.jsonl").records.values()
    assert {r.metrics.get("refine_epochs") for r in ledger if r.trial_id in pruned.index} == {6}
    assert (directory / "refined.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((directory / "tensorboard" / "refined" / "front").glob("events.*"))
    assert "map searched -> refined" in out
    assert "--front refined" in out
    # Refining again with as many epochs keeps every point: nothing is trained twice.
    stamp = (directory / "refined.jsonl").stat().st_mtime_ns
    code, _, err = search(["refine", str(directory), "--epochs", "6"])
    assert code == 0, err
    assert (directory / "refined.jsonl").stat().st_mtime_ns == stamp
    # `best --front refined` hands out a refined checkpoint; eval reproduces its map exactly.
    best = tmp_path / "best.safetensors"
    code, out, err = search(
        ["best", str(directory), "--front", "refined", "--pick", "best-map", "--out", str(best)]
    )
    assert code == 0, err
    trial_id = out.split(":")[0]
    assert refined.loc[trial_id, "pareto"]
    code, out, err = search(["eval", str(best), "--json"])
    assert code == 0, err
    assert json.loads(out)["map"] == refined.loc[trial_id, "map"]


def test_best_from_a_front_not_refined_yet_is_one_clear_line(
    searched: dict[str, Any], tmp_path: Path
) -> None:
    code, _, err = search(
        ["best", str(searched["dir"]), "--front", "refined", "--out", str(tmp_path / "x.safetensors")]
    )  # fmt: skip
    assert code == 2
    assert "no refined front yet" in err
    assert len(err.strip().splitlines()) == 1
