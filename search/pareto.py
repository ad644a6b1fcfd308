"""The trials of a search and their Pareto front of map against a cost, computed once, here.

The ledger (`trials.json` in the experiment folder) holds every finished trial: its state, its
sampled parameters, its final metrics, its error, its checkpoint. The table, the front, the
hypervolume and the knee are computed from it, and every view (the `pareto` table and CSV, the plot,
TensorBoard, `best`) reads them from here.

The front is the set of completed trials that no other completed trial dominates: at least the map
at no more cost, better in one. Equal points are both on it. Failed and stopped trials never are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.storage import LEDGER_FILE
from yolov2.errors import InputError
from yolov2.files import write_text_atomic
from yolov2.pipeline import METRIC_NAMES

if TYPE_CHECKING:
    import pandas as pd

COSTS = ("size_mb", "gflops", "latency_ms")
COST_UNITS = {"size_mb": "MB", "gflops": "GFLOPs", "latency_ms": "ms"}
METRICS = METRIC_NAMES  # what every trial reports last, in the order tables show them
PLACEMENT = ("node", "device", "gpu_ids")  # where a trial ran: host:Ray node, torch device, GPUs
COMPLETE, FAILED, STOPPED = "COMPLETE", "FAIL", "PRUNED"


@dataclass
class TrialRecord:
    """One finished trial, as the ledger keeps it."""

    trial_id: str
    state: str  # COMPLETE, FAIL or PRUNED (stopped early), as the Optuna study has it
    params: dict[str, Any]  # the sampled values, by Optuna name
    row: dict[str, Any]  # the parameter columns (search.space.Space.row)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    checkpoint: str = ""  # the pruned checkpoint, relative to the experiment folder
    order: int = 0  # the how-manieth trial to finish

    @property
    def is_dense(self) -> bool:
        """Whether the trial measured the dense model itself (no layer pruned)."""
        ratios = [v for k, v in self.row.items() if k.startswith("ratio.layer")]
        return bool(ratios) and not any(ratios)


class Ledger:
    """The finished trials of one experiment folder, saved whole after every change."""

    def __init__(
        self,
        directory: Path,
        records: dict[str, TrialRecord] | None = None,
        name: str = LEDGER_FILE,
    ) -> None:
        self.directory = directory
        self.records: dict[str, TrialRecord] = records or {}
        self.name = name  # trials.json, or refined.json for the refined front

    @classmethod
    def load(cls, directory: Path, name: str = LEDGER_FILE) -> Ledger:
        path = directory / name
        if not path.exists():
            return cls(directory, name=name)
        try:
            raw = json.loads(path.read_text())
            records = {r["trial_id"]: TrialRecord(**r) for r in raw["trials"]}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(f"{path}: not a trial ledger of prune-search ({error})") from None
        return cls(directory, records, name)

    def record(self, record: TrialRecord) -> None:
        """Add or replace (a trial that finished again after a resume keeps its first place)."""
        previous = self.records.get(record.trial_id)
        record.order = previous.order if previous else len(self.records) + 1
        self.records[record.trial_id] = record
        self._save()

    def keep_only(self, trial_ids: set[str]) -> set[str]:
        """Remove every record but those of `trial_ids`, number the rest again in their order and
        save; returns the ids removed."""
        removed = set(self.records) - trial_ids
        if removed:
            kept = sorted((r for r in self.records.values() if r.trial_id in trial_ids),
                          key=lambda r: r.order)  # fmt: skip
            self.records = {}
            for record in kept:
                record.order = len(self.records) + 1
                self.records[record.trial_id] = record
            self._save()
        return removed

    def _save(self) -> None:
        trials = [asdict(r) for r in sorted(self.records.values(), key=lambda r: r.order)]
        write_text_atomic(self.directory / self.name, json.dumps({"trials": trials}, indent=1))

    def completed(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.state == COMPLETE]


def dominated(maps: Sequence[float], costs: Sequence[float]) -> np.ndarray:
    """For each point, whether another point has at least its map at no more cost, and is better in
    one of the two."""
    m, c = np.asarray(maps, float), np.asarray(costs, float)
    no_worse = (m[None, :] >= m[:, None]) & (c[None, :] <= c[:, None])
    better = (m[None, :] > m[:, None]) | (c[None, :] < c[:, None])
    return np.asarray((no_worse & better).any(axis=1))


def hypervolume(maps: Sequence[float], costs: Sequence[float], reference_cost: float) -> float:
    """The area of (cost, map) space that the points dominate, bounded by the reference point
    (map 0, `reference_cost`): larger is better, and the points above the reference cost add
    nothing."""
    points = sorted(
        (c, m) for m, c in zip(maps, costs, strict=True) if c < reference_cost and m > 0
    )
    area, best = 0.0, 0.0
    for index, (cost, value) in enumerate(points):
        best = max(best, value)
        upper = points[index + 1][0] if index + 1 < len(points) else reference_cost
        area += (upper - cost) * best
    return area


def knee(maps: Sequence[float], costs: Sequence[float]) -> int:
    """The index of the front point farthest from the line through its two ends, with map and cost
    scaled to [0, 1]: where giving up more map stops buying much less cost."""
    m, c = np.asarray(maps, float), np.asarray(costs, float)
    if len(m) <= 2:
        return int(np.argmax(m))
    m_span, c_span = np.ptp(m) or 1.0, np.ptp(c) or 1.0
    x, y = (c - c.min()) / c_span, (m - m.min()) / m_span
    ends = np.argmin(x), np.argmax(x)
    (x0, y0), (x1, y1) = (x[ends[0]], y[ends[0]]), (x[ends[1]], y[ends[1]])
    distance = np.abs((y1 - y0) * x - (x1 - x0) * y + x1 * y0 - y1 * x0)
    return int(np.argmax(distance))


@dataclass(frozen=True)
class Front:
    """The front of one table by one cost, and what the views show of it."""

    table: pd.DataFrame  # every trial, with a boolean `pareto` column, in finishing order
    cost: str
    reference_cost: float  # the dense model's cost (the largest completed cost without one)
    hypervolume: float

    @property
    def points(self) -> pd.DataFrame:
        """The front's trials, cheapest first."""
        return self.table[self.table["pareto"]].sort_values([self.cost, "map"])

    @property
    def normalised_hypervolume(self) -> float:
        """The hypervolume over the dense point's own (dense map x dense cost)."""
        dense = dense_rows(self.table)
        dense_map = float(dense["map"].max()) if len(dense) else float(self.table["map"].max())
        scale = dense_map * self.reference_cost
        return self.hypervolume / scale if scale > 0 else 0.0


def trials_table(ledger: Ledger, columns: Sequence[str]) -> pd.DataFrame:
    """One row per finished trial: trial_id, state, every parameter, every metric, node, device,
    error, checkpoint; the parameter columns are `columns`, the same for every trial."""
    import pandas as pd

    rows = []
    for record in sorted(ledger.records.values(), key=lambda r: r.order):
        row: dict[str, Any] = {"trial_id": record.trial_id, "state": record.state}
        row.update({name: record.row.get(name) for name in columns})
        row.update({name: record.metrics.get(name, math.nan) for name in METRICS})
        row.update({name: record.metrics.get(name, "") for name in PLACEMENT})
        row.update(error=record.error, checkpoint=record.checkpoint, dense=record.is_dense)
        rows.append(row)
    header = ["trial_id", "state", *columns, *METRICS, *PLACEMENT, "error", "checkpoint", "dense"]
    return pd.DataFrame(rows, columns=header)


def pareto_front(table: pd.DataFrame, cost: str) -> Front:
    """The front of `table` by map and `cost`: the one place it is computed."""
    if cost not in COSTS:
        raise InputError(f"--cost {cost!r}: expected one of {', '.join(COSTS)}")
    table = table.copy()
    completed = (table["state"] == COMPLETE) & table["map"].notna() & table[cost].notna()
    mask = np.zeros(len(table), bool)
    if completed.any():
        done = table[completed]
        mask[np.flatnonzero(completed)] = ~dominated(done["map"], done[cost])
    table["pareto"] = mask
    dense = dense_rows(table[completed])
    pool = dense if len(dense) else table[completed]
    reference = float(pool[cost].max()) if len(pool) else 0.0
    on_front = table[table["pareto"]]
    volume = hypervolume(on_front["map"], on_front[cost], reference) if reference else 0.0
    return Front(table, cost, reference, volume)


def dense_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The trials that measured the dense model itself (every pruning ratio 0)."""
    return table[table["dense"].astype(bool)]


def format_table(front: Front, rows: pd.DataFrame | None = None) -> str:
    """The front (or `rows`) as an aligned text table: id, map, the costs, sparsity, the knee."""
    shown = front.points if rows is None else rows
    knee_id = knee_trial(front)
    columns = ["trial_id", "map", "map_voc12", *COSTS, "sparsity", "params"]
    lines = ["  ".join(f"{c:>12s}" for c in columns)]
    for _, row in shown.iterrows():
        cells = [f"{row['trial_id']:>12s}"]
        cells += [f"{row[c]:>12.4f}" for c in ("map", "map_voc12", *COSTS, "sparsity")]
        cells.append(f"{int(row['params']):>12,d}")
        mark = "  <- knee" if row["trial_id"] == knee_id else ""
        lines.append("  ".join(cells) + mark)
    return "\n".join(lines)


def knee_trial(front: Front) -> str | None:
    points = front.points
    if not len(points):
        return None
    return str(points.iloc[knee(points["map"], points[front.cost])]["trial_id"])


def budget_mask(table: pd.DataFrame, budgets: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """(meets every budget, how far past the budgets in relative terms) for each row; a budget on
    `map` is a floor, the others ceilings."""
    meets = np.ones(len(table), bool)
    excess = np.zeros(len(table))
    for name, limit in budgets.items():
        values = table[name].to_numpy(float)
        over = (limit - values) if name == "map" else (values - limit)
        meets &= over <= 0
        excess += np.maximum(over, 0) / max(abs(limit), 1e-12)
    return meets, excess
