"""Early stopping that respects the front: a trial stops when, at its cost, the completed trials
had a clearly better map at the same finetune epoch.

Ray's own schedulers rank trials on one scalar; on a front of (map, cost) a cheap trial with a low
map can be worth finishing while a costly one with the same map is not. `FrontStopper` keeps each
trial's map at every evaluated epoch and its cost, and stops a running trial at an evaluated epoch
when a completed trial of no more cost had a map at least `margin` higher at that same epoch. Ray
then ends the trial with its last (not `done`) report, which `FrontSearch` tells Optuna as PRUNED
and the ledger records as stopped: never on the front, and its slot goes to the next trial.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.trainable import FINISHED
from yolov2.config import EarlyStopConfig, ExperimentConfig

if TYPE_CHECKING:
    from ray.tune.experiment import Trial

log = logging.getLogger("prune-search")


def make_scheduler(config: ExperimentConfig) -> TrialScheduler | None:
    """The experiment's early stopping: ours (`rule: front`), Ray's ASHA on map alone (`asha`), or
    none. ASHA's rungs lie at `every` x 2^k epochs, where the trials evaluate; its `max_t` lies past
    the last epoch, so that ASHA never stops a trial that is about to report its finished result."""
    settings = config.search.early_stop
    if settings is None:
        return None
    if settings.rule == "asha":
        return ASHAScheduler(
            time_attr="epoch",
            metric="map",
            mode="max",
            max_t=config.finetune.epochs + 1,
            grace_period=min(settings.every, config.finetune.epochs),
            reduction_factor=2,
        )
    return FrontStopper(config.search.cost, settings)


def dominated_at(
    map_: float, cost: float, rivals: Iterable[tuple[float, float]], margin: float
) -> bool:
    """Whether a rival (map at the same epoch, cost) of no more cost beat `map_` by `margin`."""
    return any(
        rival_cost <= cost and rival_map >= map_ + margin for rival_map, rival_cost in rivals
    )


class FrontStopper(FIFOScheduler):
    """Runs trials in order (FIFO) and stops the ones the completed trials dominate (above)."""

    def __init__(self, cost: str, settings: EarlyStopConfig) -> None:
        super().__init__()
        self.cost = cost
        self.settings = settings
        self._maps: dict[str, dict[int, float]] = {}  # trial -> evaluated epoch -> map
        self._costs: dict[str, float] = {}
        self._completed: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        epoch, map_, cost = result.get("epoch"), result.get("map"), result.get(self.cost)
        if result.get(FINISHED) or epoch is None or map_ is None or cost is None:
            return TrialScheduler.CONTINUE
        if int(epoch) % self.settings.every:  # not evaluated at this epoch: map is an older one
            return TrialScheduler.CONTINUE
        self._maps.setdefault(trial.trial_id, {})[int(epoch)] = float(map_)
        self._costs[trial.trial_id] = float(cost)
        rivals = [
            (self._maps[done][int(epoch)], self._costs[done])
            for done in self._completed
            if int(epoch) in self._maps.get(done, {})
        ]
        if len(rivals) < self.settings.min_completed:
            return TrialScheduler.CONTINUE
        if dominated_at(float(map_), float(cost), rivals, self.settings.margin):
            log.info(
                "trial %s stopped at finetune epoch %d: map %.4f at %.4g %s is dominated by a "
                "completed trial at that epoch",
                trial.trial_id, int(epoch), float(map_), float(cost), self.cost,
            )  # fmt: skip
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        if result.get(FINISHED):
            self._completed.add(trial.trial_id)
