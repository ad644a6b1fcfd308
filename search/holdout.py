"""The test maps of the models a search chose, measured after it chose them.

A search selects on its validation split: every trial's `map` (the objective the sampler sees and
the front is computed on) is measured there, and no trial is evaluated on the test sets. When the
last trial has ended, each point of the front and the dense trial (the reference) are evaluated on
the test sets, each by a Ray task with a trial's resources on the trial's own checkpoint in the
storage, and their `test_map` and `test_map_voc12` are added to the ledger: the figures to report,
free of the selection's optimism (the best of N noisy maps reads high on the data it was chosen
on). Where an experiment has no validation split, every trial's `map` is on the test sets already
and is its `test_map`; the search says once that it selects on the test set.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from search import dense, tasks
from search.pareto import COMPLETE, Ledger, TrialRecord, pareto_front, trials_table
from search.space import Space, is_finite
from search.storage import Storage
from search.trainable import trial_resources
from yolov2.checkpoint import load_checkpoint
from yolov2.config import ExperimentConfig, default_cache
from yolov2.engine import load_splits
from yolov2.errors import InputError
from yolov2.pipeline import CHECKPOINT_FILE, TEST_METRICS, maps_on_test

log = logging.getLogger("prune-search")


def warn_without_validation(config: ExperimentConfig, source: str) -> None:
    """Say, once per search, that an experiment without a validation split selects on test."""
    if not config.data.has_validation:
        log.warning(
            "%s: no validation split (data.val_sets or data.val_fraction): the search selects on "
            "the test sets, so the maps of the models it chooses read high",
            source,
        )


def chosen(ledger: Ledger, space: Space, cost: str) -> list[TrialRecord]:
    """The front's points and the dense trials, without a test map yet."""
    front = pareto_front(trials_table(ledger, space.columns), cost)
    ids = [*front.points["trial_id"], *(r.trial_id for r in ledger.completed() if r.is_dense)]
    records = [ledger.records[trial_id] for trial_id in dict.fromkeys(ids)]
    return [
        r
        for r in records
        if r.state == COMPLETE and r.checkpoint and not is_finite(r.metrics.get("test_map"))
    ]


def measure(
    storage: Storage, config: ExperimentConfig, space: Space, ledger: Ledger
) -> list[TrialRecord]:
    """The test maps of the chosen trials (`chosen`), each recorded in `ledger` as it comes;
    returns their records. Needs a Ray session (the search's)."""
    records = chosen(ledger, space, config.search.cost)
    if not records:
        return []
    log.info("test split: measuring the test map of %d chosen models", len(records))
    task = tasks.trial_task(config.search, evaluate_on_test)
    driver_cache = str(default_cache())

    def submit(record: TrialRecord) -> Any:
        trial = space.apply(config, record.params)
        return task.remote(trial, storage.root, record.checkpoint, driver_cache)

    measured = []
    for record, maps in tasks.as_ready(records, submit, config.search.max_concurrent):
        measured.append(replace(record, metrics={**record.metrics, **maps}))
        ledger.record(measured[-1])
        log.info("trial %s: map %.4f on val, %.4f on test", record.trial_id,
                 record.metrics["map"], maps["test_map"])  # fmt: skip
    return measured


def evaluate_on_test(
    trial: ExperimentConfig, storage_root: str, checkpoint: str, driver_cache: str
) -> dict[str, float]:
    """TEST_METRICS of one trial's checkpoint (`<checkpoint>/model.safetensors` in the storage),
    as a Ray task with a trial's resources, on the data as this node keeps it."""
    torch.set_num_threads(trial_resources(trial.search.cpus_per_trial)[0])
    local = dense.on_this_node(trial, driver_cache)
    splits = load_splits(local.data, local.cache_dir)
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / CHECKPOINT_FILE
        relative = f"{checkpoint}/{CHECKPOINT_FILE}"
        if not Storage(storage_root).download(relative, path):
            where = Storage(storage_root).uri(relative)
            raise InputError(f"{where}: the trial's checkpoint is missing")
        model = load_checkpoint(path)
    maps = maps_on_test(model, local, splits)
    return {name: maps[name] for name in TEST_METRICS}
