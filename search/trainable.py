"""One trial: the experiment with the trial's sample applied, run by `yolov2.pipeline.run`.

Every finetune epoch goes to Ray Tune through the pipeline's report callback, with both objectives
(`map` as last evaluated, and the pruned model's costs); the last report holds every metric and the
pruned checkpoint, and says `done`. A trial restored from a checkpoint that says `done` (Ray starts
finished trials again when the driver died after they ended but before its snapshot) reports the
same result at once instead of training again.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from search.space import Space, is_finite
from yolov2.config import ExperimentConfig
from yolov2.pipeline import METRICS_FILE, run

CHECKPOINT_FILE = "model.safetensors"
DONE = "done"
REPLAYED = "replayed"  # a finished trial's result reported again from its checkpoint


def trial_resources(cpus: float) -> tuple[int, int]:
    """(torch threads, loader workers) that fit in the trial's CPUs, so trials side by side do not
    oversubscribe the machine; one CPU loads in the training process itself."""
    whole = max(1, int(cpus))
    workers = 0 if whole < 2 else whole // 4 + 1
    return max(1, whole - workers), workers


def run_trial(
    params: dict[str, Any], *, experiment: dict[str, Any], space: Space, ray_dir: str | None = None
) -> None:
    """The Ray Tune function trainable (bound to the experiment with `tune.with_parameters`)."""
    from ray import tune

    context = tune.get_context()
    restored = tune.get_checkpoint()
    if restored is None and ray_dir:  # a snapshot older than the trial's end knows no checkpoint
        restored = _final_checkpoint(Path(ray_dir) / f"trial_{context.get_trial_id()}")
    if restored is not None:
        with restored.as_directory() as directory:
            finished = _finished(Path(directory))
        if finished is not None:  # finished before a lost driver's last snapshot: no rerun
            tune.report({**finished, REPLAYED: True}, checkpoint=restored)
            return
    cpus = context.get_trial_resources().required_resources.get("CPU", 1.0)
    threads, workers = trial_resources(cpus)
    torch.set_num_threads(threads)
    base = ExperimentConfig.model_validate(experiment)
    config = space.apply(base, params)
    config = config.model_copy(update={"data": config.data.model_copy(update={"workers": workers})})
    # The pipeline's files stay in the trial's working folder, which Ray does not copy to the
    # storage; what a trial leaves is its reports and its checkpoint.
    out = Path.cwd() / "pipeline"
    trial_id = context.get_trial_id()

    def report(metrics: dict[str, Any]) -> None:
        tune.report({**_scalars(metrics), "trial_id": trial_id, DONE: False})

    result = run(config, out, report)
    final = {**_scalars(result.metrics), "trial_id": trial_id, DONE: True}
    if not is_finite(final["map"]):
        final["map"] = 0.0  # a collapsed model scores nothing; NaN would leave the study RUNNING
    with tempfile.TemporaryDirectory() as staging:
        shutil.copy2(result.checkpoint, Path(staging) / CHECKPOINT_FILE)
        (Path(staging) / METRICS_FILE).write_text(json.dumps(final, indent=2))
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(staging))
    shutil.rmtree(out, ignore_errors=True)  # all of it is in the checkpoint and the reports


def _final_checkpoint(trial_dir: Path) -> Any:
    """The checkpoint a trial's final report left in the storage, if it got that far."""
    from ray import tune

    for candidate in sorted(trial_dir.glob("checkpoint_*"), reverse=True):
        if _finished(candidate) is not None and (candidate / CHECKPOINT_FILE).is_file():
            return tune.Checkpoint.from_directory(str(candidate))
    return None


def _finished(directory: Path) -> dict[str, Any] | None:
    path = directory / METRICS_FILE
    if not path.exists():
        return None
    metrics: dict[str, Any] = json.loads(path.read_text())
    return metrics if metrics.get(DONE) else None


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """What Ray records of a report: numbers and short strings (no per-class AP dictionaries)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
