"""One set of books: after a resume, Ray's experiment state, the Optuna study and the ledger name the
same trials, each once, exactly the budget; and a `run` never resumes another storage's search.

The race of a lost driver (a trial created and finished after Ray's last snapshot) is made
deterministic by taking that trial out of Ray's saved state, as the snapshot before it had it."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from ray import cloudpickle

from search.books import ray_trials, reconcile, study_storage
from search.pareto import Ledger, TrialRecord
from search.space import build_space
from search.storage import Storage
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import SPACE, search
from yolov2.config import load_config

NUM_SAMPLES = 3


def _books(directory: Path, storage: Storage) -> dict[str, Any]:
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    ledger = [asdict(r) for r in Ledger.load(directory).ordered()]
    return {
        "ray": list(ray_trials(storage)),
        "study": [t.user_attrs.get("ray_trial_id") for t in study.trials],
        "study_states": [t.state.name for t in study.trials],
        "ledger": [r["trial_id"] for r in ledger],
        "ledger_states": [r["state"] for r in ledger],
        "folders": storage.folders("ray", prefix="trial_"),
    }


def _forget_last_trial(ray_dir: Path) -> str:
    """Ray's newest snapshot as it was before its last trial was made: the trial left out of
    the experiment state, and the search generator's count one lower. Returns the trial's id."""
    state_path = max(ray_dir.glob("experiment_state-*.json"))
    state = json.loads(state_path.read_text())
    last = json.loads(state["trial_data"][-1][0])["trial_id"]
    state["trial_data"] = state["trial_data"][:-1]
    state_path.write_text(json.dumps(state))
    generator_path = max(ray_dir.glob("search_gen_state-*.json"))
    generator = cloudpickle.loads(generator_path.read_bytes())
    generator.update(counter=generator["counter"] - 1, finished=False)
    generator_path.write_bytes(cloudpickle.dumps(generator))
    return str(last)


def test_a_trial_ray_never_knew_leaves_the_books_and_the_budget_is_run_in_full(
    smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, SPACE, "search.max_concurrent=1")
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--name", "smoke",
         "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    directory = tmp_path / "smoke"
    storage = Storage(str(directory))
    before = _books(directory, storage)
    assert sorted(before["ray"]) == sorted(before["ledger"]) == sorted(before["study"])

    lost = _forget_last_trial(directory / "ray")
    code, _, err = search(["resume", str(directory)])
    assert code == 0, err[-3000:]
    assert f"trial {lost}: made by the lost driver after Ray's last snapshot" in err
    after = _books(directory, storage)
    assert lost not in after["ray"] + after["study"] + after["ledger"]
    assert f"trial_{lost}" not in after["folders"]
    # the same trials, each once, exactly the budget, in every book
    assert len(after["ray"]) == len(set(after["ray"])) == NUM_SAMPLES
    assert sorted(after["study"]) == sorted(after["ledger"]) == sorted(after["ray"])
    assert sorted(after["folders"]) == sorted(f"trial_{t}" for t in after["ray"])
    assert after["study_states"] == after["ledger_states"] == ["COMPLETE"] * NUM_SAMPLES
    kept = [t for t in before["ledger"] if t != lost]
    assert after["ledger"][: len(kept)] == kept  # the trials Ray knew keep their place


def test_a_run_never_resumes_another_storages_search(
    smoke_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a URI search's driver folder is runs/<name> here
    first = f"file://{tmp_path / 'store-a'}"
    overrides = smoke_overrides(smoke_cache, "search.known_points=[0.0]")
    arguments = ["--name", "smoke", "--num-samples", "1", *set_arguments(overrides)]
    code, _, err = search(["run", str(SMOKE), "--storage", first, *arguments])
    assert code == 0, err[-3000:]
    code, out, _ = search(["run", str(SMOKE), "--storage", first, *arguments])
    assert code == 0  # the same search again: resumed, and it has finished
    assert "1 trials (1 complete)" in out

    driver = tmp_path / "runs" / "smoke"
    others = {  # --storage: the search's storage it names
        f"file://{tmp_path / 'store-b'}": f"file://{tmp_path / 'store-b'}/smoke",
        str(tmp_path / "runs"): str(driver),  # a local search whose folder is that driver's
    }
    for other, root in others.items():
        code, _, err = search(["run", str(SMOKE), "--storage", other, *arguments])
        assert code == 2
        assert err.strip().splitlines()[-1] == (
            f"prune-search run: error: {driver}: holds the search stored at {first}/smoke, not "
            f"at {root}; `prune-search resume {first}/smoke` finishes that one, or give this "
            "one another --name"
        )
    assert not (tmp_path / "store-b").exists()


def _entry(state: str, ray_id: str | None, **attrs: Any) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        state=optuna.trial.TrialState[state],
        params={"x": 0.5},
        distributions={"x": FloatDistribution(0.0, 1.0)},
        values=[0.5, 1.0] if state == "COMPLETE" else None,
        user_attrs={**({"ray_trial_id": ray_id} if ray_id else {}), **attrs},
    )


def test_reconcile_puts_each_study_entry_in_the_state_ray_has_its_trial(tmp_path: Path) -> None:
    """The study of a driver interrupted (Ctrl-C: its running trials settled FAIL) or lost
    (SIGKILL: left RUNNING), against Ray's snapshot."""
    study = optuna.create_study(
        study_name="smoke", storage=study_storage(tmp_path), directions=["maximize", "minimize"]
    )
    for entry in (
        _entry("COMPLETE", "done"),  # finished, in Ray's snapshot as ended
        _entry("FAIL", "again", interrupted=True),  # Ctrl-C'd, Ray runs it again
        _entry("RUNNING", "killed"),  # SIGKILL'd, Ray runs it again
        _entry("RUNNING", "ended"),  # Ray has it ended, the study was never told
        _entry("FAIL", "twice", interrupted=True),  # an older resume told it anew:
        _entry("COMPLETE", "twice", resumed=True),  # one entry is kept, the newest
        _entry("COMPLETE", "unknown"),  # made after Ray's last snapshot
        _entry("RUNNING", None),  # asked by the lost driver before Ray named it
        _entry("WAITING", None),  # an enqueued point not tried yet
    ):
        study.add_trial(entry)
    config = load_config(SMOKE)
    ledger = Ledger(tmp_path)
    for trial_id in ("done", "unknown", "twice"):
        ledger.record(TrialRecord(trial_id=trial_id, state="COMPLETE", params={}, row={}))
    (tmp_path / "ray" / "trial_unknown").mkdir(parents=True)
    (tmp_path / "ray" / "trial_done").mkdir()
    ray = {"done": "TERMINATED", "again": "PENDING", "killed": "RUNNING", "ended": "ERROR",
           "twice": "TERMINATED"}  # fmt: skip

    removed = reconcile(
        tmp_path, Storage(str(tmp_path)), config, build_space(config, str(SMOKE)), ray
    )

    assert removed == ["unknown"]
    study = optuna.load_study(study_name="smoke", storage=study_storage(tmp_path))
    states = [(t.user_attrs.get("ray_trial_id"), t.state.name) for t in study.trials]
    assert states == [
        ("done", "COMPLETE"), ("again", "RUNNING"), ("killed", "RUNNING"), ("ended", "FAIL"),
        ("twice", "COMPLETE"), (None, "WAITING"),
    ]  # fmt: skip
    assert study.trials[1].user_attrs["interrupted"] is False
    assert study.trials[3].user_attrs["interrupted"] is True
    study.tell(study.trials[1].number, [0.7, 2.0])  # a reopened entry takes its trial's result
    # "ended" is in the ledger too: from its folder, which holds nothing (FAIL)
    ledger = Ledger.load(tmp_path)
    assert [(r.trial_id, r.state, r.order) for r in ledger.ordered()] == [
        ("done", "COMPLETE", 1), ("twice", "COMPLETE", 2), ("ended", "FAIL", 3)
    ]  # fmt: skip
    assert ledger.records["ended"].error == "failed without an error message"
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["trial_done"]


def test_a_trial_ray_ended_after_the_last_copy_of_the_ledger_is_recorded_from_its_folder(
    tmp_path: Path,
) -> None:
    """A remote search's lost driver copied its study and ledger before two trials ended (it
    copies at most every search.sync_every_s): Ray's snapshot has them ended, the study RUNNING,
    the ledger not at all. Their folders say how they ended."""
    config = load_config(SMOKE)
    space = build_space(config, str(SMOKE))
    params = space.first_points(config)[1]
    study = optuna.create_study(
        study_name="smoke", storage=study_storage(tmp_path), directions=["maximize", "minimize"]
    )
    for ray_id in ("late", "broke"):
        study.add_trial(
            optuna.trial.create_trial(
                state=optuna.trial.TrialState.RUNNING,
                params=params,
                distributions={k: FloatDistribution(0.0, 1.0) for k in params},
                user_attrs={"ray_trial_id": ray_id},
            )
        )
    late, broke = tmp_path / "ray" / "trial_late", tmp_path / "ray" / "trial_broke"
    for folder in (late / "checkpoint_000000", late / "checkpoint_000001", broke):
        folder.mkdir(parents=True)
    for folder in (late, broke):
        (folder / "params.json").write_text(json.dumps(params))
    epoch = {"map": 0.5, "size_mb": 2.0, "finished": False, "config": params}
    final = {**epoch, "map": 0.61, "map_voc12": 0.63, "node": "n1", "finished": True}
    (late / "result.json").write_text(
        "".join(json.dumps(r) + "\n" for r in (epoch, final)) + '{"map": 0.'  # cut short
    )
    (broke / "error.txt").write_text("Traceback (most recent call last):\nValueError: boom\n")

    reconcile(
        tmp_path, Storage(str(tmp_path)), config, space, {"late": "TERMINATED", "broke": "ERROR"}
    )

    records = Ledger.load(tmp_path).records
    assert records["late"].state == "COMPLETE"
    assert records["late"].metrics == {"map": 0.61, "map_voc12": 0.63, "size_mb": 2.0, "node": "n1"}
    assert records["late"].checkpoint == "ray/trial_late/checkpoint_000001"
    assert records["late"].row == space.row(config, params)
    assert (records["broke"].state, records["broke"].error) == ("FAIL", "ValueError: boom")
    study = optuna.load_study(study_name="smoke", storage=study_storage(tmp_path))
    told = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert told["late"].state.name == "COMPLETE"
    assert told["late"].values == [0.61, 2.0]
    assert told["broke"].state.name == "FAIL"
