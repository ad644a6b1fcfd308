"""A trial's resources and its restart: threads and workers fit the CPUs; a finished trial found
in the storage reports its result again instead of training again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from search.storage import Storage
from search.trainable import _final_checkpoint, trial_resources
from yolov2.pipeline import CHECKPOINT_FILE, METRICS_FILE


@pytest.mark.parametrize(
    ("cpus", "expected"), [(0.5, (1, 0)), (1, (1, 0)), (2, (1, 1)), (4, (2, 2)), (8, (5, 3))]
)
def test_threads_and_loader_workers_fit_inside_the_trial_cpus(
    cpus: float, expected: tuple[int, int]
) -> None:
    threads, workers = trial_resources(cpus)
    assert (threads, workers) == expected
    assert threads + workers <= max(1, int(cpus))


@pytest.mark.parametrize("uri", [False, True])
def test_the_final_checkpoint_is_found_in_the_storage_and_only_when_done(
    tmp_path: Path, uri: bool
) -> None:
    storage = Storage(f"file://{tmp_path}" if uri else str(tmp_path))
    trial = tmp_path / "ray" / "trial_abc"
    assert _final_checkpoint(storage, "abc") is None
    epoch = trial / "checkpoint_000000"
    epoch.mkdir(parents=True)
    (epoch / METRICS_FILE).write_text(json.dumps({"map": 0.5, "finished": False}))
    (epoch / CHECKPOINT_FILE).write_bytes(b"x")
    assert _final_checkpoint(storage, "abc") is None
    final = trial / "checkpoint_000001"
    final.mkdir()
    (final / METRICS_FILE).write_text(json.dumps({"map": 0.6, "finished": True}))
    assert (
        _final_checkpoint(storage, "abc") is None
    )  # no model file: not a finished trial's checkpoint
    (final / CHECKPOINT_FILE).write_bytes(b"x")
    found = _final_checkpoint(storage, "abc")
    assert found is not None
    assert Path(found.path) == final
