"""The trials of a search and their Pareto front of map against a cost, computed once, here.

The ledger (`trials.jsonl` in the experiment folder) holds every finished trial: its state, its
sampled parameters, its final metrics, its error, its checkpoint. The table, the front, the
hypervolume and the knee are computed from it, and every view (the `pareto` table and CSV, the plot,
TensorBoard, `best`) reads them from here. While a search runs, `LiveFront` keeps the same front
at the cost of its own points rather than of every trial.

The front is the set of completed trials that no other completed trial dominates: at least the map
at no more cost, better in one. Equal points are both on it. Failed and stopped trials never are.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.storage import LEDGER_FILE
from yolov2.errors import InputError
from yolov2.files import atomic_path
from yolov2.pipeline import METRIC_NAMES

if TYPE_CHECKING:
    import pandas as pd

COSTS = ("size_mb", "gflops", "latency_ms")
COST_UNITS = {"size_mb": "MB", "gflops": "GFLOPs", "latency_ms": "ms"}
METRICS = METRIC_NAMES  # what every trial reports last, in the order tables show them
# Where a trial ran (host:Ray node, torch device, GPUs) and which split its `map` is on: val, or
# test where the experiment has no validation split (then test_map is `map` itself).
PLACEMENT = ("node", "device", "gpu_ids", "map_split")
COMPLETE, FAILED, STOPPED = "COMPLETE", "FAIL", "PRUNED"

log = logging.getLogger("prune-search")


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
    """The finished trials of one experiment folder, one JSON line each, appended as trials finish
    (a later line of a trial replaces its earlier one when read); rewritten whole only by
    `keep_only`, which a resume runs. One writer: the driver."""

    def __init__(
        self,
        directory: Path,
        records: dict[str, TrialRecord] | None = None,
        name: str = LEDGER_FILE,
    ) -> None:
        self.directory = directory
        self.records: dict[str, TrialRecord] = records or {}
        self.name = name  # trials.jsonl, or refined.jsonl for the refined front
        self._end: int | None = None  # bytes of whole lines in the file; None: rewrite it whole

    @property
    def path(self) -> Path:
        return self.directory / self.name

    @property
    def old_path(self) -> Path:
        """The ledger as one JSON document (`trials.json`), as searches before the JSON lines
        kept it: read when there is no JSON-lines ledger, replaced by one at the first write."""
        return self.path.with_suffix(".json")

    @classmethod
    def load(cls, directory: Path, name: str = LEDGER_FILE) -> Ledger:
        ledger = cls(directory, name=name)
        if ledger.path.exists():
            ledger._read_lines()
        elif ledger.old_path.exists():
            ledger._read_document()
        else:
            ledger._end = 0
        return ledger

    def _read_lines(self) -> None:
        data = self.path.read_bytes()
        whole = data[: data.rfind(b"\n") + 1]
        if len(whole) < len(data):  # a driver killed mid-line: the line is dropped
            log.warning("%s: its last line is incomplete; left out", self.path)
        for number, line in enumerate(whole.decode().splitlines(), 1):
            try:
                record = TrialRecord(**json.loads(line))
            except (json.JSONDecodeError, TypeError) as error:
                raise InputError(
                    f"{self.path}: line {number}: not a trial ledger line of prune-search ({error})"
                ) from None
            self.records[record.trial_id] = record
        self._end = len(whole)

    def _read_document(self) -> None:
        try:
            raw = json.loads(self.old_path.read_text())
            self.records = {r["trial_id"]: TrialRecord(**r) for r in raw["trials"]}
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise InputError(
                f"{self.old_path}: not a trial ledger of prune-search ({error})"
            ) from None

    def record(self, record: TrialRecord) -> None:
        """Add or replace (a trial that finished again after a resume keeps its first place):
        one line appended, the file's earlier bytes untouched."""
        previous = self.records.get(record.trial_id)
        record.order = previous.order if previous else len(self.records) + 1
        self.records[record.trial_id] = record
        if self._end is None:
            self._save()
            return
        line = (json.dumps(asdict(record)) + "\n").encode()
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        with open(descriptor, "r+b") as file:
            file.truncate(self._end)  # an incomplete last line, if a killed driver left one
            file.seek(self._end)
            file.write(line)
        self._end += len(line)

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
        """The whole ledger, written at once (and the old one-document ledger removed)."""
        text = "".join(json.dumps(asdict(r)) + "\n" for r in self.ordered())
        with atomic_path(self.path) as temporary:
            temporary.write_text(text)
        self.old_path.unlink(missing_ok=True)
        self._end = len(text.encode())

    def ordered(self) -> list[TrialRecord]:
        """The records in the order their trials first finished."""
        return sorted(self.records.values(), key=lambda r: r.order)

    def completed(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.state == COMPLETE]


class LiveFront:
    """The front of a search's ledger, kept as each trial finishes at the cost of a few points,
    not of every trial: the front of all trials is the front of the previous front and the new
    trial. It keeps the trials that can matter (the front, the dense trials, the costliest
    completed trial for the reference, the best map of all) and counts the rest by state;
    `front` is `pareto_front` of those, with the whole table's points, reference and
    hypervolume. A trial that finishes again (after a resume) rebuilds it from the ledger."""

    def __init__(self, ledger: Ledger, columns: Sequence[str], cost: str) -> None:
        self.ledger, self.columns, self.cost = ledger, tuple(columns), cost
        self._rebuild()

    def _rebuild(self) -> None:
        records = self.ledger.ordered()
        self.counts: Counter[str] = Counter(r.state for r in records)
        self._seen = {r.trial_id for r in records}
        self._keep(records)

    def add(self, record: TrialRecord) -> Front:
        """The front with `record`, which the ledger has just recorded."""
        if record.trial_id in self._seen:
            self._rebuild()
        else:
            self.counts[record.state] += 1
            self._seen.add(record.trial_id)
            self._keep([*self._kept.values(), record])
        return self.front

    def _keep(self, records: Iterable[TrialRecord]) -> None:
        """The front of `records`, and of them the ones that can still matter."""
        by_id = {r.trial_id: r for r in records}
        self.front = pareto_front(records_table(by_id.values(), self.columns), self.cost)
        table = self.front.table
        keep = table["pareto"] | table["dense"].astype(bool)
        done = table[(table["state"] == COMPLETE) & table["map"].notna() & table[self.cost].notna()]
        if len(done):
            keep |= table.index == done[self.cost].idxmax()
        if table["map"].notna().any():
            keep |= table.index == table["map"].idxmax()
        self._kept = {t: by_id[t] for t in table.loc[keep, "trial_id"]}


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
    return records_table(ledger.records.values(), columns)


def records_table(records: Iterable[TrialRecord], columns: Sequence[str]) -> pd.DataFrame:
    """`trials_table` of some records, in the order their trials finished."""
    import pandas as pd

    rows = []
    for record in sorted(records, key=lambda r: r.order):
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


def selection_split(table: pd.DataFrame) -> str:
    """The split the trials' `map` is on: val, or test (no validation split, or a search from
    before validation splits, whose trials recorded none)."""
    splits = {value for value in table.get("map_split", []) if value}
    return "val" if splits == {"val"} else "test"


def format_table(front: Front, rows: pd.DataFrame | None = None) -> str:
    """The front (or `rows`) as an aligned text table: id, map (on val, and on test where the
    search selected on val), the costs, sparsity, the knee."""
    shown = front.points if rows is None else rows
    knee_id = knee_trial(front)
    split = selection_split(front.table)
    maps = {f"{split} map": "map", f"{split} voc12": "map_voc12"}
    if split == "val":
        maps["test map"] = "test_map"
    columns = ["trial_id", *maps, *COSTS, "sparsity", "params"]
    lines = ["  ".join(f"{c:>12s}" for c in columns)]
    for _, row in shown.iterrows():
        cells = [f"{row['trial_id']:>12s}"]
        cells += [f"{row[c]:>12.4f}" for c in (*maps.values(), *COSTS, "sparsity")]
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
