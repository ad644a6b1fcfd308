"""One trial: the experiment with the trial's sample applied, run by `yolov2.pipeline.run`.

Every finetune epoch goes to Ray Tune through the pipeline's report callback, with both objectives
(`map` as last evaluated, and the pruned model's costs); every `search.checkpoint_every`-th epoch
and the finetune's last carry a checkpoint of its training state (a full model's, with its
optimizer's moments, is hundreds of megabytes to upload); the last report holds every metric and
the pruned checkpoint, and says `finished`.

Restored from a checkpoint (a node lost mid-trial, or a driver lost: Ray starts the trial again,
on any node), a trial carries on where its checkpoint was: a training state goes back into the
finetune's folder and the pipeline resumes from it (the same result as without the fault; the
epochs since that state are trained and reported again); a checkpoint that says `finished` (the
driver died after the trial ended but before its snapshot) is reported again at once instead of
training again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from search import dense
from search.devices import ray_placement
from search.latency import trial_latency
from search.space import Space
from search.storage import Storage
from yolov2.config import ExperimentConfig
from yolov2.engine import STATE_FILE
from yolov2.pipeline import CHECKPOINT_FILE, METRICS_FILE, run

# The trial ran its pipeline to the end (its final report). Not "done": Ray sets that on the last
# result of every ended trial, one a scheduler stopped included.
FINISHED = "finished"
REPLAYED = "replayed"  # a finished trial's result reported again from its checkpoint
RAY_DIR = "ray"  # Ray Tune's experiment, inside the search's storage
KEEP_STATES = 2  # finetune training states kept per trial: the newest epochs' (_trim_states)


def trial_resources(cpus: float) -> tuple[int, int]:
    """(torch threads, loader workers) that fit in the trial's CPUs, so trials side by side do not
    oversubscribe the machine; one CPU loads in the training process itself."""
    whole = max(1, int(cpus))
    workers = 0 if whole < 2 else whole // 4 + 1
    return max(1, whole - workers), workers


def run_trial(
    params: dict[str, Any],
    *,
    experiment: dict[str, Any],
    space: Space,
    storage: str,
    driver_cache: str,
) -> None:
    """The Ray Tune function trainable (bound to the experiment with `tune.with_parameters`):
    `storage` is the search's (`<storage>/<name>`), `driver_cache` the driver's default cache."""
    from ray import tune

    context = tune.get_context()
    trial_id = context.get_trial_id()
    shared = Storage(storage)
    # A snapshot older than the trial's end knows an earlier checkpoint, or none: the final one
    # in the storage wins.
    restored = _final_checkpoint(shared, trial_id) or tune.get_checkpoint()
    out = Path.cwd() / "pipeline"  # the trial's working folder, which Ray does not sync
    if restored is not None:
        with restored.as_directory() as directory:
            finished = _finished(Path(directory))
            state = Path(directory) / STATE_FILE
            if finished is None and state.is_file():  # carry on from the last finetune epoch
                _restore_state(state, out, json.loads((Path(directory) / METRICS_FILE).read_text()))
        if finished is not None:  # finished before a lost driver's last snapshot: no rerun
            tune.report({**finished, REPLAYED: True}, checkpoint=restored)
            return
    cpus = context.get_trial_resources().required_resources.get("CPU", 1.0)
    threads, workers = trial_resources(cpus)
    torch.set_num_threads(threads)
    config = space.apply(ExperimentConfig.model_validate(experiment), params)
    config = config.model_copy(update={"data": config.data.model_copy(update={"workers": workers})})
    early_stop = config.search.early_stop
    if early_stop is not None:  # evaluate where the stopper compares (a run-time knob)
        finetune = config.finetune.model_copy(update={"eval_every": early_stop.every})
        config = config.model_copy(update={"finetune": finetune})
    local = dense.for_trial(config, shared, driver_cache, trial_id)
    placement = {**ray_placement(), "trial_id": trial_id}
    finetune_dir = out / f"finetune_{config.prune.iterations}"

    def report(metrics: dict[str, Any]) -> None:
        scalars = {**_scalars(metrics), **placement, FINISHED: False}
        epoch = int(metrics["epoch"])
        if epoch % config.search.checkpoint_every and epoch < config.finetune.epochs:
            tune.report(scalars)  # no checkpoint: a restored trial carries on from the last state
            return
        with tempfile.TemporaryDirectory() as staging:
            shutil.copy2(finetune_dir / STATE_FILE, Path(staging) / STATE_FILE)
            state = {**scalars, "finetune_dir": finetune_dir.name}
            (Path(staging) / METRICS_FILE).write_text(json.dumps(state, indent=2))
            tune.report(scalars, checkpoint=tune.Checkpoint.from_directory(staging))
        _trim_states(shared, trial_id, keep=KEEP_STATES)

    # latency_ms: the search's one figure for the architecture, timed (once) in this trial's slot
    # test=False: the search never sees the test split; the front's test maps come at its end
    result = run(local, out, report, trial_latency(config.name, shared, cpus), test=False)
    final = final_metrics(result.metrics, placement)
    with tempfile.TemporaryDirectory() as staging:
        shutil.copy2(result.checkpoint, Path(staging) / CHECKPOINT_FILE)
        (Path(staging) / METRICS_FILE).write_text(json.dumps(final, indent=2))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(staging))
    _trim_states(shared, trial_id, keep=0)
    shutil.rmtree(out, ignore_errors=True)  # all of it is in the checkpoint and the reports


def final_metrics(metrics: dict[str, Any], placement: dict[str, Any]) -> dict[str, Any]:
    """A trial's last report: every metric as measured and `finished`. A map that is not finite
    stays so: the searcher tells the study FAIL and the ledger records it failed, where a map
    made 0 would be a COMPLETE trial at the front's cheap end. A model that scores 0 is 0."""
    return {**_scalars(metrics), **placement, FINISHED: True}


def _trim_states(storage: Storage, trial_id: str, keep: int) -> None:
    """Remove the training states of this trial's older checkpoints, all but the newest `keep`.

    Ray keeps every checkpoint folder (a restored experiment snapshot may name an older one than
    the newest, and Ray refuses to restore a trial whose named checkpoint is gone), so that what
    keeps the storage small is this: an old folder keeps its metrics, and a trial restored from
    it trains its finetune again from the start (the same result, deterministically), or replays
    its final checkpoint."""
    trial = f"{RAY_DIR}/trial_{trial_id}"
    states = [
        f"{trial}/{name}/{STATE_FILE}" for name in storage.folders(trial, prefix="checkpoint_")
    ]
    for state in states[: max(0, len(states) - keep)]:
        storage.delete(state)


def _restore_state(state: Path, out: Path, metrics: dict[str, Any]) -> None:
    """Put a checkpoint's training state back where the pipeline's finetune resumes from it."""
    folder = out / str(metrics["finetune_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(state, folder / STATE_FILE)


def _final_checkpoint(storage: Storage, trial_id: str) -> Any:
    """The checkpoint a trial's final report left in the storage, if it got that far: its newest
    one (the final report is a trial's last, and a finished trial only reports it again)."""
    from ray import tune

    trial = f"{RAY_DIR}/trial_{trial_id}"
    names = storage.folders(trial, prefix="checkpoint_")
    if not names:
        return None
    newest = f"{trial}/{names[-1]}"
    with tempfile.TemporaryDirectory() as scratch:
        if not storage.download(f"{newest}/{METRICS_FILE}", Path(scratch) / METRICS_FILE):
            return None
        if _finished(Path(scratch)) and storage.exists(f"{newest}/{CHECKPOINT_FILE}"):
            return tune.Checkpoint(storage.uri(newest))
    return None


def _finished(directory: Path) -> dict[str, Any] | None:
    path = directory / METRICS_FILE
    if not path.exists():
        return None
    metrics: dict[str, Any] = json.loads(path.read_text())
    return metrics if metrics.get(FINISHED) else None


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Ray records of a report: numbers and short strings (no per-class AP dictionaries)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
