"""Refine the front: finetune the searched front's points longer, as practitioners do with the
winners of a short search, and keep the refined front beside the searched one.

Each front point is run again through `yolov2.pipeline.run` with its trial's experiment and a
longer finetune (`--epochs`, three times the search's by default): the same dense model, the
same pruning, a longer schedule. A point runs as a Ray task with a trial's resources, on
whichever node has them (a local Ray on loopback, or the cluster at `--address`), up to
`search.max_concurrent` at once; the task takes the search's published dense stage
(`<storage>/dense/<key>/`) into its node's cache as a trial does, and never trains one: a dense
stage missing from the storage is one clear error. The task finetunes in a scratch folder of its
own (a new `--epochs` starts afresh, never from another schedule's training state) and puts the
refined checkpoint into the storage, `refined/<trial>/`, where `best --front refined` finds it.
The driver records each result in `refined.jsonl` (a ledger like `trials.jsonl`); the refined
front is computed from it the way the searched one is, and shown as `refined.csv`,
`refined.png` and TensorBoard under `tensorboard/refined`. A point already refined with as many
epochs is kept, so an interrupted refine resumes; the dense point is kept as it is (it has no
finetune): the reference of both fronts.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from search import dense
from search.devices import ray_placement
from search.pareto import COMPLETE, Front, Ledger, TrialRecord, pareto_front, trials_table
from search.reporting import VIEWS_DIR, FrontViews, write_front
from search.space import Space
from search.storage import Storage, push
from search.trainable import FINISHED, trial_resources
from yolov2.config import ExperimentConfig, default_cache
from yolov2.errors import InputError
from yolov2.latency import (
    LATENCY_FILE,
    LatencyCache,
    cached_latency,
    latency_threads,
    timings_from_json,
)
from yolov2.pipeline import CHECKPOINT_FILE, METRICS_FILE, run

log = logging.getLogger("prune-search")

REFINED_LEDGER = "refined.jsonl"  # read from refined.json too (pareto.Ledger)
REFINED_DIR = "refined"
REFINED_CSV = "refined.csv"
REFINED_PNG = "refined.png"
REFINED_VIEWS = f"{VIEWS_DIR}/refined"
EPOCHS = "refine_epochs"  # the finetune epochs a refined point got
RESULT_FILES = (CHECKPOINT_FILE, METRICS_FILE, "config.yaml")  # what a task puts in the storage


def refine(
    directory: Path, epochs: int | None = None, address: str | None = None
) -> tuple[Front, Front]:
    """(the searched front, the refined front) of the search in `directory`, its points refined
    on the cluster at `address` (default: a local Ray on loopback)."""
    from search.tuner import load_experiment, locate

    config, space = load_experiment(directory)
    # The search's latency figures (a refined point keeps its trial's architecture, and its figure)
    storage = locate(str(directory))[1]
    if storage.remote:
        storage.download(LATENCY_FILE, directory / LATENCY_FILE)
    timings = LatencyCache(directory / LATENCY_FILE)
    cost = config.search.cost
    ledger = Ledger.load(directory)
    searched = pareto_front(trials_table(ledger, space.columns), cost)
    epochs = epochs or 3 * config.finetune.epochs
    refined = refined_ledger(directory, storage)
    pending: list[TrialRecord] = []
    for trial_id in searched.points["trial_id"]:
        record = ledger.records[trial_id]
        done = refined.records.get(trial_id)
        if done is not None and (record.is_dense or done.metrics.get(EPOCHS) == epochs):
            continue
        if record.is_dense:
            refined.record(replace(record, order=0))
        else:
            pending.append(record)
            if storage.remote:  # an older refine's copy here would shadow the storage's
                shutil.rmtree(directory / REFINED_DIR / trial_id, ignore_errors=True)
    with (
        contextlib.closing(FrontViews(directory, space.columns, REFINED_VIEWS)) as views,
        _pushed_at_the_end(directory, storage),
    ):
        for record, metrics in _refined(
            config, space, storage, pending, epochs=epochs, timings=timings, address=address
        ):
            refined.record(
                TrialRecord(
                    trial_id=record.trial_id,
                    state=COMPLETE,
                    params=record.params,
                    row=record.row,
                    metrics={**metrics, EPOCHS: epochs, FINISHED: True},  # node: where refined
                    checkpoint=f"{REFINED_DIR}/{record.trial_id}",  # in the storage
                )
            )
            views.trial(refined.records[record.trial_id])
            views.front(pareto_front(trials_table(refined, space.columns), cost))
    front = pareto_front(trials_table(refined, space.columns), cost)
    write_front(front, directory / REFINED_CSV, directory / REFINED_PNG)
    return searched, front


def refined_ledger(directory: Path, storage: Storage) -> Ledger:
    """The refined points of the search in `directory`: from its remote storage when this driver's
    folder has none (a refine run by another driver, or this one's folder new)."""
    if storage.remote and not (directory / REFINED_LEDGER).is_file():
        storage.download(REFINED_LEDGER, directory / REFINED_LEDGER)
    return Ledger.load(directory, REFINED_LEDGER)


@contextlib.contextmanager
def _pushed_at_the_end(directory: Path, storage: Storage) -> Iterator[None]:
    """refined.jsonl into a remote storage when refine ends, however it ends (an interrupted
    refine keeps the points it finished): `pareto` and `best` read it from there."""
    try:
        yield
    finally:
        push(directory, storage, (REFINED_LEDGER,))


def _refined(
    config: ExperimentConfig,
    space: Space,
    storage: Storage,
    records: list[TrialRecord],
    *,
    epochs: int,
    timings: LatencyCache,
    address: str | None,
) -> Iterator[tuple[TrialRecord, dict[str, Any]]]:
    """Each of `records` refined by a Ray task, up to `search.max_concurrent` at once: (its
    record, its metrics) as each task ends. Timings a task made go into `timings`."""
    if not records:
        return
    import ray

    from search.cluster import check_resources
    from search.tuner import ray_session

    search = config.search
    task = ray.remote(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)(refine_point)
    driver_cache = str(default_cache())
    waiting = list(records)
    with ray_session(address):
        check_resources(search)
        running: dict[Any, TrialRecord] = {}
        while waiting or running:
            while waiting and len(running) < search.max_concurrent:
                record = waiting.pop(0)
                log.info("refining %s: %d finetune epochs", record.trial_id, epochs)
                trial = space.apply(config, record.params)
                finetune = trial.finetune.model_copy(update={"epochs": epochs})
                trial = trial.model_copy(update={"finetune": finetune})
                known = timings.path.read_text() if timings.path.is_file() else ""
                ref = task.remote(trial, storage.root, driver_cache, record.trial_id, known)
                running[ref] = record
            (ready,), _ = ray.wait(list(running), num_returns=1)
            record = running.pop(ready)
            metrics, made = _result(ready)
            for key, timing in timings_from_json(made, "a refine task's timings").items():
                timings.put(key, timing)  # the first figure of a key stays
            yield record, metrics


def _result(ref: Any) -> tuple[dict[str, Any], str]:
    """A task's result; a user's mistake it raised is raised here as itself (one line)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        result: tuple[dict[str, Any], str] = ray.get(ref)
    except RayTaskError as error:
        if isinstance(error.cause, InputError):
            raise error.cause from None
        raise
    return result


def refine_point(
    trial: ExperimentConfig, storage_root: str, driver_cache: str, trial_id: str, timings: str
) -> tuple[dict[str, Any], str]:
    """One front point's longer finetune, as a Ray task with a trial's resources: the search's
    dense stage copied from the storage into this node's cache (never trained here), the
    pipeline run in a scratch folder, its checkpoint, metrics and config put into the storage's
    `refined/<trial>/`. Returns its metrics with where it ran, and the latency timings
    (`timings`, the search's, and any this task made), as JSON."""
    storage = Storage(storage_root)
    cpus = trial.search.cpus_per_trial
    threads, workers = trial_resources(cpus)
    torch.set_num_threads(threads)
    trial = trial.model_copy(update={"data": trial.data.model_copy(update={"workers": workers})})
    local = dense.on_this_node(trial, driver_cache)
    key = dense.store_key(local)
    if not dense.fetch(storage, key, local):
        raise InputError(
            f"{storage.uri(f'{dense.STORE}/{key}')}: the search's dense stage is not in its "
            f"storage; refine finetunes the searched dense model and never trains another"
        )
    with tempfile.TemporaryDirectory() as scratch:
        known = Path(scratch) / LATENCY_FILE
        known.write_text(timings or '{"timings": {}}')
        out = Path(scratch) / trial_id
        result = run(local, out, latency=cached_latency(LatencyCache(known), latency_threads(cpus)))
        storage.delete_folder(f"{REFINED_DIR}/{trial_id}")  # an earlier refine's, whatever it held
        for name in RESULT_FILES:
            storage.upload(out / name, f"{REFINED_DIR}/{trial_id}/{name}")
        return {**result.metrics, **ray_placement(), "trial_id": trial_id}, known.read_text()
