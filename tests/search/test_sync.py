"""What a search writes as it goes, and how often: the driver's copies of its study, ledger and
experiment into a remote storage and its TensorBoard views at most every `search.sync_every_s`
(always at the end), one long-lived writer for the front; a trial's training state in its
checkpoints every `search.checkpoint_every` finetune epochs and at the last."""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
from ray.tune.experiment import Trial

from search.books import study_storage
from search.reporting import SearchViews
from search.space import build_space
from search.storage import DRIVER_FILES, WHOLE_COPY_BYTES, Storage
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import search
from yolov2.config import load_config
from yolov2.engine import STATE_FILE


class Uploads:
    """Every file copied whole into a storage, counted by name, and its bytes; every append."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.bytes: Counter[str] = Counter()
        self.appends: Counter[str] = Counter()
        self.appended: Counter[str] = Counter()  # bytes


@pytest.fixture
def uploads(monkeypatch: pytest.MonkeyPatch) -> Uploads:
    counted = Uploads()
    upload, append = Storage.upload, Storage.append

    def counting(self: Storage, local: Path, relative: str) -> None:
        counted.count[relative] += 1
        counted.bytes[relative] += local.stat().st_size
        upload(self, local, relative)

    def counting_appends(self: Storage, local: Path, relative: str, offset: int) -> int | None:
        appended = append(self, local, relative, offset)
        if appended is not None:
            counted.appends[relative] += 1
            counted.appended[relative] += appended
        return appended

    monkeypatch.setattr(Storage, "upload", counting)
    monkeypatch.setattr(Storage, "append", counting_appends)
    return counted


def _events(folder: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _finished(rng: random.Random, space: Any, number: int) -> Trial:
    ratio = rng.uniform(0.0, 0.6)
    params = dict.fromkeys(space.ratio_names, ratio)
    trial = Trial("run_trial", config=params, trial_id=f"t{number:03d}", stub=True)
    size = 10.0 * (1 - ratio)
    trial.update_last_result(
        {"map": rng.uniform(0.5, 0.9), "size_mb": size, "gflops": size / 40, "finished": True}
    )
    return trial


def _driver(tmp_path: Path, every_s: float) -> tuple[SearchViews, Path, list[float]]:
    """A URI search's driver objects (its study, its experiment) with a clock of the test's."""
    config = load_config(SMOKE, [f"search.sync_every_s={every_s}"])
    space = build_space(config, str(SMOKE))
    storage = Storage(f"file://{tmp_path / 'store'}/smoke")
    directory = storage.driver_folder()
    directory.mkdir(parents=True)
    (directory / "experiment.yaml").write_text(config.to_yaml())
    optuna.create_study(study_name="smoke", storage=study_storage(directory))
    now = [0.0]
    return SearchViews(config, space, storage.root, clock=lambda: now[0]), directory, now


def test_the_views_and_the_storages_copy_come_at_most_every_sync_period_and_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uploads: Uploads
) -> None:
    monkeypatch.chdir(tmp_path)  # a URI search's driver folder is runs/<name> here
    views, directory, now = _driver(tmp_path, 60)
    rng, trials = random.Random(0), []
    study = optuna.load_study(study_name="smoke", storage=study_storage(directory))
    for number in range(12):  # a trial starts every 10 s and ends 5 s later; a Ray step at 9 s
        now[0] = 10.0 * number
        trials.append(_finished(rng, views.space, number))
        asked = study.ask()  # the searcher's entry of the trial, as it changes the study
        views.on_trial_start(number, trials, trials[-1])
        now[0] += 5
        study.tell(asked, 0.5)
        views.on_trial_complete(number, trials, trials[-1])
        now[0] += 4
        views.on_step_end(number, trials)
    # copies at 0 s (no ledger yet) and 60 s: the experiment unchanged, not again; the study
    # (over 64 KiB, copied whole) not before 60 s for each 64 KiB of it; the front's views at
    # 5 s (1 trial) and 65 s (7)
    assert (directory / "study.db").stat().st_size > WHOLE_COPY_BYTES
    assert uploads.count == {"experiment.yaml": 1, "study.db": 1, "trials.jsonl": 1}
    front = directory / "tensorboard" / "front"
    assert [e.step for e in _events(front).Scalars("pareto/hypervolume")] == [1, 7]
    views.on_experiment_end(trials)  # the fit ends: the views of all 12
    events = _events(front)
    assert [e.step for e in events.Scalars("pareto/hypervolume")] == [1, 7, 12]
    assert len(events.Images("pareto/front")) == 3  # three figures, not twelve
    assert len(list(front.glob("events.*"))) == 1  # one writer for the whole fit
    assert len(list((directory / "tensorboard" / "trials").iterdir())) == 12  # every hparams
    now[0] += 60
    views.on_step_end(12, trials)  # what lagged goes once its period has passed
    assert uploads.count == {"experiment.yaml": 1, "study.db": 2, "trials.jsonl": 1}
    assert uploads.appends == {"trials.jsonl": 1}  # the ledger's new lines alone
    views.on_step_end(13, trials)
    assert uploads.count["study.db"] == 2  # nothing new: nothing copied
    assert views.pushed_bytes == uploads.bytes.total() + uploads.appended.total()
    stored = tmp_path / "store" / "smoke" / "trials.jsonl"
    assert stored.read_bytes() == (directory / "trials.jsonl").read_bytes()
    assert len(stored.read_text().splitlines()) == 12


def test_with_a_sync_period_of_0_every_event_is_copied_and_viewed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uploads: Uploads
) -> None:
    monkeypatch.chdir(tmp_path)
    views, directory, _ = _driver(tmp_path, 0)
    rng, trials = random.Random(0), []
    for number in range(3):
        trials.append(_finished(rng, views.space, number))
        views.on_trial_start(number, trials, trials[-1])
        views.on_trial_complete(number, trials, trials[-1])
    study = directory / "study.db"
    assert uploads.count["study.db"] == 1  # unchanged since its first copy (no searcher here)
    assert uploads.count["trials.jsonl"] == 1  # at the first end, then its new lines at each end
    assert uploads.appends["trials.jsonl"] == 2
    study.write_bytes(study.read_bytes())  # the study changes: copied at the next event
    trials.append(_finished(rng, views.space, 3))
    views.on_trial_start(3, trials, trials[-1])
    assert uploads.count["study.db"] == 2
    views.on_experiment_end(trials)
    assert len(_events(directory / "tensorboard" / "front").Images("pareto/front")) == 3


def _checkpoint_epochs(trial_dir: Path) -> list[Any]:
    """The epoch of each checkpoint a trial left, "final" for its last report's."""
    epochs = []
    for folder in sorted(trial_dir.glob("checkpoint_*")):
        metrics = json.loads((folder / "metrics.json").read_text())
        epochs.append("final" if metrics["finished"] else metrics["epoch"])
    return epochs


def test_a_search_copies_its_files_once_a_period_and_checkpoints_states_every_k_epochs(
    smoke_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, uploads: Counter[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    overrides = smoke_overrides(
        smoke_cache,
        "search.known_points=[0.3, 0.5]",
        "search.max_concurrent=2",
        "finetune.epochs=5",
        "search.checkpoint_every=2",
        "search.sync_every_s=3600",
    )
    root = f"file://{tmp_path / 'store'}"
    code, out, err = search(
        ["run", str(SMOKE), "--storage", root, "--name", "synced", "--num-samples", "3",
         *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    assert "3 trials (3 complete)" in out
    # The study and the experiment at the first trial's start and at the end, the ledger at the
    # end: a copy per period, not two per trial (seven of each for three trials before).
    driver = {name: uploads.count[name] for name in DRIVER_FILES}
    assert driver == {"experiment.yaml": 2, "study.db": 2, "trials.jsonl": 1, "trials.json": 0}
    stored = tmp_path / "store" / "synced"
    final = sum((stored / name).stat().st_size for name in DRIVER_FILES[:3])
    assert sum(uploads.bytes[name] for name in DRIVER_FILES) <= 2 * final
    # Every finetune epoch is reported; a training state is checkpointed at epochs 2, 4 and the
    # last (5), then the final report's checkpoint; the states are removed once a trial ends.
    trial_dirs = sorted((tmp_path / "store" / "synced" / "ray").glob("trial_*"))
    assert len(trial_dirs) == 3
    for trial_dir in trial_dirs:
        rows = [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]
        assert [r["epoch"] for r in rows if not r["finished"]] == [1, 2, 3, 4, 5]
        assert _checkpoint_epochs(trial_dir) == [2, 4, 5, "final"]
        assert not list(trial_dir.glob(f"checkpoint_*/{STATE_FILE}"))
        assert math.isfinite(rows[-1]["map"])
