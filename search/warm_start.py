"""The warm start of a search: known points chosen from the dense model's sensitivity.

With `search.warm_start: sensitivity`, before any trial starts, the dense model is pruned one group
of the space's `prune.ratios` at a time (each stage, or each layer) at ratios across the searched
range, without finetuning (yolov2.sensitivity; the table is kept in the dense model's cache folder,
so a later search on the same dense model reads it back). For each of `search.warm_start_budgets` (a fraction
of the dense model's GFLOPs to remove) the greedy allocation picks the per-group ratios that remove
at least that share while losing the least map the table shows; those points are enqueued after
the known points. The table stays in the experiment folder (sensitivity.csv and .png), so a user
sees why those points were tried. Only `tuner.run` plans it: a resumed search never enqueues again.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from search import dense
from search.space import Space
from search.storage import Storage
from yolov2.config import ExperimentConfig, default_cache
from yolov2.pipeline import dense_architecture, dense_folder
from yolov2.sensitivity import (
    Allocation,
    Sensitivity,
    allocate_each,
    cached_analyse,
    checked_groups,
    pruned_gflops,
    write,
)

log = logging.getLogger("prune-search")

STEP = 0.1  # the widest gap between two measured ratios of the searched range


@dataclass(frozen=True)
class WarmStart:
    """The sensitivity table (None: no warm start) and the points it chose, named as the space's
    ratios (`Space.ratio_names`), in the order of the budgets."""

    table: Sensitivity | None
    points: tuple[dict[str, float], ...]

    def write(self, directory: Path) -> tuple[Path, ...]:
        """sensitivity.csv and sensitivity.png in the experiment folder, when there is a table."""
        if self.table is None:
            return ()
        return write(self.table, directory, title="the dense model, each group pruned alone")


def ratio_grid(low: float, high: float, step: float = STEP) -> list[float]:
    """Ratios from `low` to `high`, evenly spaced, at most `step` apart; 0 is left out (the
    unpruned baseline is measured anyway)."""
    count = max(1, math.ceil((high - low) / step - 1e-9))
    grid = [round(low + (high - low) * k / count, 6) for k in range(count + 1)]
    return [ratio for ratio in grid if ratio > 0]


def measure(
    config: ExperimentConfig, groups: str, ratios: list[float], storage: str, driver_cache: str
) -> Sensitivity:
    """The sensitivity of the experiment's dense model, on this node: the driver (whose cache has
    the dense stage) or a cluster's node (which copies it from the search's storage first)."""
    local, splits, stage = dense.on_node(config, Storage(storage), driver_cache)
    return cached_analyse(stage.model, local, splits, groups, ratios, folder=dense_folder(local))


def plan(
    config: ExperimentConfig, space: Space, storage: Storage, on_cluster: bool = False
) -> WarmStart:
    """The warm start of a new search, after its dense stage is made (locally here; on a cluster
    by a Ray task with a trial's resources). build_space has checked that it can be made."""
    search = config.search
    if search.warm_start == "none" or space.ratios is None:
        return WarmStart(None, ())
    groups = checked_groups(space.ratios.groups or "")
    low, high = space.ratios.low or 0.0, space.ratios.high or 0.0
    grid = ratio_grid(low, high)
    log.info(
        "warm start: the dense model with each %s pruned alone at %s, without finetuning",
        groups, ", ".join(f"{r:g}" for r in grid),
    )  # fmt: skip
    arguments = (config, groups, grid, storage.root, str(default_cache()))
    if on_cluster:
        import ray

        task = ray.remote(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)(measure)
        table: Sensitivity = ray.get(task.remote(*arguments))
    else:
        table = measure(*arguments)
    return WarmStart(table, tuple(known_points(table, config, space.ratio_names, low, high)))


def known_points(
    table: Sensitivity,
    config: ExperimentConfig,
    names: tuple[str, ...],
    low: float,
    high: float,
) -> list[dict[str, float]]:
    """One point per budget (a point two budgets share, once), its ratios in [low, high] named
    `names` (the space's), the GFLOPs they remove counted exactly from the widths they give (the
    tuner sets the other searched keys to the experiment's own values, as for the known points)."""
    arch = dense_architecture(config, len(config.data.class_names()))
    size = config.data.input_size
    gflops_of = partial(pruned_gflops, arch, config.prune, input_size=size)
    points: list[dict[str, float]] = []
    for chosen in allocate_each(table, config.search.warm_start_budgets, low, high, gflops_of):
        _log_allocation(chosen, high)
        point = dict(zip(names, chosen.ratios, strict=True))
        if point not in points:
            points.append(point)
    return points


def _log_allocation(chosen: Allocation, high: float) -> None:
    ratios = ", ".join(f"{r:g}" for r in chosen.ratios)
    if chosen.met:
        log.info(
            "warm start: %.0f%% fewer GFLOPs: ratios %s remove %.1f%% (map drop %.4f by the "
            "table, before finetuning)",
            100 * chosen.budget, ratios, 100 * chosen.removed, chosen.map_drop,
        )  # fmt: skip
    else:
        log.warning(
            "warm start: %.0f%% fewer GFLOPs is more than ratios up to %g remove; ratios %s "
            "remove %.1f%%",
            100 * chosen.budget, high, ratios, 100 * chosen.removed,
        )  # fmt: skip
