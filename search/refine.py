"""Refine the front: finetune the searched front's points longer, as practitioners do with the
winners of a short search, and keep the refined front beside the searched one.

Each front point is run again through `yolov2.pipeline.run` with its trial's experiment and a
longer finetune (`--epochs`, three times the search's by default): the same dense model from the
cache, the same pruning, a longer schedule. Its result goes into `refined.json` (a ledger like
`trials.json`) and `refined/<trial>/`; the refined front is computed from it the way the searched
one is, and shown as `refined.csv`, `refined.png` and TensorBoard under `tensorboard/refined`.
A point already refined with as many epochs is kept, so an interrupted refine resumes; the dense
point is kept as it is (it has no finetune): the reference of both fronts.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from search.pareto import COMPLETE, Front, Ledger, TrialRecord, pareto_front, trials_table
from search.reporting import VIEWS_DIR, write_front, write_views
from search.trainable import FINISHED
from yolov2.latency import LATENCY_FILE, LatencyCache, cached_latency, latency_threads
from yolov2.pipeline import run

log = logging.getLogger("prune-search")

REFINED_LEDGER = "refined.json"
REFINED_DIR = "refined"
REFINED_CSV = "refined.csv"
REFINED_PNG = "refined.png"
REFINED_VIEWS = f"{VIEWS_DIR}/refined"
EPOCHS = "refine_epochs"  # the finetune epochs a refined point got


def refine(directory: Path, epochs: int | None = None) -> tuple[Front, Front]:
    """(the searched front, the refined front) of the search in `directory`."""
    from search.tuner import load_experiment, locate

    config, space = load_experiment(directory)
    # The search's latency figures (a refined point keeps its trial's architecture, and its figure)
    storage = locate(str(directory))[1]
    if storage.remote:
        storage.download(LATENCY_FILE, directory / LATENCY_FILE)
    latency = cached_latency(
        LatencyCache(directory / LATENCY_FILE), latency_threads(config.search.cpus_per_trial)
    )
    cost = config.search.cost
    ledger = Ledger.load(directory)
    searched = pareto_front(trials_table(ledger, space.columns), cost)
    epochs = epochs or 3 * config.finetune.epochs
    refined = Ledger.load(directory, REFINED_LEDGER)
    points = list(searched.points["trial_id"])
    for number, trial_id in enumerate(points, 1):
        record = ledger.records[trial_id]
        done = refined.records.get(trial_id)
        if done is not None and (record.is_dense or done.metrics.get(EPOCHS) == epochs):
            continue
        if record.is_dense:
            refined.record(replace(record, order=0))
            continue
        log.info(
            "refining %s (%d of %d): %d finetune epochs", trial_id, number, len(points), epochs
        )
        trial = space.apply(config, record.params)
        trial = trial.model_copy(
            update={"finetune": trial.finetune.model_copy(update={"epochs": epochs})}
        )
        out = directory / REFINED_DIR / trial_id
        result = run(trial, out, latency=latency)
        metrics = {**result.metrics, EPOCHS: epochs, FINISHED: True}
        refined.record(
            TrialRecord(
                trial_id=trial_id,
                state=COMPLETE,
                params=record.params,
                row=record.row,
                metrics=metrics,  # node and device: where it was refined
                checkpoint=str(out.relative_to(directory)),
            )
        )
        front = pareto_front(trials_table(refined, space.columns), cost)
        write_views(directory, front, space.columns, refined.records[trial_id], REFINED_VIEWS)
    front = pareto_front(trials_table(refined, space.columns), cost)
    write_front(front, directory / REFINED_CSV, directory / REFINED_PNG)
    return searched, front
