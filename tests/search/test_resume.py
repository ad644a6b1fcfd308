"""A search whose driver is killed with SIGKILL mid-search, then `prune-search resume`: every trial
once, no finished trial run again, no trial left RUNNING in the study, the views complete."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pandas as pd

from search.books import ray_trials
from search.pareto import Ledger
from search.storage import Storage
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import SPACE, _front_by_hand, search

NUM_SAMPLES = 6


def _records(directory: Path) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r.trial_id: asdict(r) for r in Ledger.load(directory).ordered()}


def _group_alive(group: int) -> list[int]:
    listed = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True, check=True)
    return [
        int(p) for p, g in (line.split() for line in listed.stdout.splitlines()) if int(g) == group
    ]


def test_a_search_whose_driver_is_killed_resumes_to_the_end(
    smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, SPACE, "search.max_concurrent=2")
    command = [
        sys.executable, "-m", "search.cli", "run", str(SMOKE), "--storage", str(tmp_path),
        "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides),
    ]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    directory = tmp_path / "smoke"
    try:
        deadline = time.monotonic() + 600
        while len(_records(directory)) < 2 and driver.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.5)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started: all ours
        driver.wait()
        for _ in range(50):
            if not _group_alive(driver.pid):
                break
            time.sleep(0.1)
    assert not _group_alive(driver.pid)
    before = _records(directory)
    assert 2 <= len(before) < NUM_SAMPLES

    code, out, err = search(["resume", str(directory)])
    assert code == 0, err
    after = _records(directory)
    assert len(after) == NUM_SAMPLES
    assert all(r["state"] == "COMPLETE" for r in after.values())
    for trial_id, record in before.items():  # finished before the kill: kept, not run again
        assert after[trial_id]["metrics"] == record["metrics"]
    for trial_dir in directory.glob("ray/trial_*"):  # each pipeline ran to its end exactly once
        results = [
            json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()
        ]
        trained = sum(1 for r in results if r["finished"] and not r.get("replayed"))
        replayed = sum(1 for r in results if r.get("replayed"))
        # the killed driver may not have written its last lines; a replay says it had finished
        assert trained == 1 or (trained == 0 and replayed >= 1), trial_dir
    assert len(list(directory.glob("ray/trial_*"))) == NUM_SAMPLES

    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    # One set of books, whatever the moment of the kill: Ray's trials, the study's and the
    # ledger's are the same, each once, all COMPLETE.
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * NUM_SAMPLES
    told = [t.user_attrs["ray_trial_id"] for t in study.trials]
    assert sorted(told) == sorted(after) == sorted(ray_trials(Storage(str(directory))))
    table = pd.read_csv(directory / "trials.csv")
    assert len(table) == NUM_SAMPLES
    assert list(table["pareto"]) == _front_by_hand(table, "size_mb")
    assert f"{NUM_SAMPLES} trials ({NUM_SAMPLES} complete)" in out
