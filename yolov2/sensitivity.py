"""Sensitivity analysis: the map of a model with one group of layers (a stage, or one prunable
layer) pruned alone at each ratio, without finetuning; and the greedy choice of per-group ratios
that removes a share of the GFLOPs at the least map lost.

Each group and ratio is one evaluation, pruned as the experiment's prune section prunes (method,
criterion, round_to, min_channels); every drop is measured from the unpruned model, the baseline.
Free of Ray: `prune-search sensitivity` and the search's warm start both call `analyse`.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tqdm import tqdm

from yolov2.config import ExperimentConfig, PruneConfig, shaping_digest
from yolov2.engine import Splits
from yolov2.errors import InputError
from yolov2.files import atomic_path, write_text_atomic
from yolov2.measure import architecture_gflops
from yolov2.model import Architecture, YOLOv2
from yolov2.pipeline import prune, selection_evaluator
from yolov2.prune import prunable_convs, pruned_widths, stages

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

Groups = Literal["stage", "layer"]
GROUPS: tuple[Groups, ...] = ("stage", "layer")
BASELINE = "unpruned"  # the group of the baseline row
COLUMNS = ("group", "ratio", "map", "map_drop", "gflops", "gflops_saved")
CSV_FILE = "sensitivity.csv"
PNG_FILE = "sensitivity.png"
CACHE_DIR = "sensitivity"  # cached_analyse's tables, in the dense model's cache folder
MAP_LABEL = "map (VOC07 11-point, IoU 0.5)"


@dataclass(frozen=True)
class Point:
    """One evaluation: `group` pruned alone at `ratio`; the baseline is the unpruned model."""

    group: str
    ratio: float
    map: float  # VOC07 11-point at IoU 0.5, without finetuning
    map_drop: float  # the baseline's map minus this map
    gflops: float  # at the experiment's input size
    gflops_saved: float  # the baseline's GFLOPs minus these


@dataclass(frozen=True)
class Sensitivity:
    """Every group pruned alone at every ratio, and the unpruned baseline."""

    groups: Groups
    names: tuple[str, ...]  # the groups in order: stage1..stage6, or layer01..layer22
    method: str  # the pruning method measured
    baseline: Point
    points: tuple[Point, ...]  # group by group, ratios ascending

    def curve(self, name: str) -> list[Point]:
        """The points of group `name` from ratio 0 (the baseline, unless measured) upwards."""
        points = sorted((p for p in self.points if p.group == name), key=lambda p: p.ratio)
        if not points or points[0].ratio > 0:
            points.insert(0, Point(name, 0.0, self.baseline.map, 0.0, self.baseline.gflops, 0.0))
        return points

    def rows(self) -> list[Point]:
        """The CSV's rows: the baseline, then every group's points."""
        return [self.baseline, *self.points]


def group_names(arch: Architecture, groups: Groups) -> list[str]:
    """stage1..stageN (`prune.stages`) or layer01..layerN (`prune.prunable_convs`)."""
    if groups == "stage":
        return [f"stage{index + 1}" for index in range(len(stages(arch)))]
    return [f"layer{index + 1:02d}" for index in range(len(prunable_convs(arch)))]


def checked_groups(groups: str) -> Groups:
    for known in GROUPS:
        if groups == known:
            return known
    raise InputError(f"groups {groups!r}: expected one of {', '.join(GROUPS)}")


def checked_ratios(ratios: Sequence[float]) -> list[float]:
    """The ratios sorted, each once, every one in [0, 1)."""
    if not ratios:
        raise InputError("ratios: give at least one pruning ratio")
    for value in ratios:
        if not 0.0 <= float(value) < 1.0:  # NaN fails every comparison
            raise InputError(f"ratio {float(value):g} is outside [0, 1)")
    return sorted({float(value) for value in ratios})


def group_ratios(count: int, index: int, ratio: float) -> list[float]:
    """`ratio` at group `index` and 0 at the others: a `prune.ratios` of one ratio per group."""
    values = [0.0] * count
    values[index] = ratio
    return values


def _measured_prune(config: PruneConfig) -> PruneConfig:
    if config.method == "none":
        raise InputError(
            "prune.method is none: say which pruning to measure, e.g. --set prune.method=filter"
        )
    if config.method == "weight" and config.scope == "global":
        # One global threshold would prune every layer; a group alone is pruned layer by layer.
        log.info("weight pruning measured with scope layer: a group alone has its own threshold")
        return config.model_copy(update={"scope": "layer"})
    return config


def analyse(
    model: YOLOv2,
    config: ExperimentConfig,
    splits: Splits,
    groups: str,
    ratios: Sequence[float],
) -> Sensitivity:
    """`model` with each group alone pruned at each ratio (no finetuning), evaluated on the
    config's selection split (its val sets, else its test sets) and measured in GFLOPs at its input size; the unpruned model is the baseline.
    Pruning follows the config's prune section, its ratios aside."""
    kind = checked_groups(groups)
    grid = checked_ratios(ratios)
    measured = _measured_prune(config.prune)
    size = (config.data.input_size, config.data.input_size)
    names = group_names(model.arch, kind)
    evaluated = selection_evaluator(config, splits)
    dense_map = float(evaluated(model)["map"])
    dense_gflops = architecture_gflops(model.arch, size)
    baseline = Point(BASELINE, 0.0, dense_map, 0.0, dense_gflops, 0.0)
    # Filter pruning at two ratios that round to the same widths keeps the same filters (the
    # criterion ranks the unpruned model's weights): one evaluation serves both, and the baseline
    # serves a ratio that removes nothing.
    measured_at: dict[tuple[object, ...], float] = {}
    if measured.method == "filter":
        measured_at[("widths", *model.arch.widths)] = dense_map
    points = []
    progress = tqdm(total=len(names) * len(grid), desc="sensitivity", leave=False, disable=None)
    with progress:
        for index, name in enumerate(names):
            for ratio in grid:
                ratios_here = group_ratios(len(names), index, ratio)
                pruning = measured.model_copy(update={"ratio": None, "ratios": ratios_here})
                pruned, _ = prune(copy.deepcopy(model), pruning, model.arch)
                filters = measured.method == "filter"
                key = ("widths", *pruned.arch.widths) if filters else ("ratios", *ratios_here)
                if key not in measured_at:
                    measured_at[key] = float(evaluated(pruned)["map"])
                value, cost = measured_at[key], architecture_gflops(pruned.arch, size)
                points.append(
                    Point(name, ratio, value, dense_map - value, cost, dense_gflops - cost)
                )
                progress.update()
    return Sensitivity(kind, tuple(names), measured.method, baseline, tuple(points))


def cached_analyse(
    model: YOLOv2,
    config: ExperimentConfig,
    splits: Splits,
    groups: str,
    ratios: Sequence[float],
    *,
    folder: Path,
) -> Sensitivity:
    """`analyse`, kept in `folder` (the dense model's cache folder) under a key of what decides
    the table: the prune section (its ratios aside), the groups and the ratios. The dense folder's
    own key holds the model and the test data. A cached table that cannot be read is measured
    again."""
    kind, grid = checked_groups(groups), checked_ratios(ratios)
    measured = _measured_prune(config.prune).model_copy(update={"ratio": None, "ratios": None})
    key = json.dumps([shaping_digest(measured), kind, grid])
    path = folder / CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
    if path.is_file():
        try:
            table = from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as error:
            log.warning("%s: not a sensitivity table (%s); measuring it again", path, error)
        else:
            log.info("the sensitivity from the cache: %s", path)
            return table
    table = analyse(model, config, splits, kind, grid)
    write_text_atomic(path, to_json(table))
    return table


def to_json(table: Sensitivity) -> str:
    return json.dumps(asdict(table), indent=1)


def from_json(text: str) -> Sensitivity:
    raw = json.loads(text)
    return Sensitivity(
        checked_groups(raw["groups"]),
        tuple(str(name) for name in raw["names"]),
        str(raw["method"]),
        Point(**raw["baseline"]),
        tuple(Point(**point) for point in raw["points"]),
    )


def pruned_gflops(
    arch: Architecture, config: PruneConfig, ratios: Sequence[float], input_size: int
) -> float:
    """The GFLOPs of `arch` filter-pruned at `ratios` (one per group), from the widths alone."""
    widths = pruned_widths(arch, ratios, config.min_channels, config.round_to)
    return architecture_gflops(arch.with_widths(widths), (input_size, input_size))


# --- the greedy allocation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Allocation:
    """Per-group ratios for one budget, chosen from a sensitivity table."""

    budget: float  # the fraction of the unpruned GFLOPs to remove
    ratios: tuple[float, ...]  # one per group, in the table's order
    removed: float  # the fraction of the unpruned GFLOPs these ratios remove
    map_drop: float  # the table's drops of the chosen ratios added up: an estimate
    met: bool  # `removed` reaches `budget`


def allocate(
    table: Sensitivity,
    budget: float,
    low: float,
    high: float,
    gflops_of: Callable[[Sequence[float]], float] | None = None,
) -> Allocation:
    """Every group starts at its lowest measured ratio in [low, high] (0: the baseline); while less
    than `budget` of the unpruned GFLOPs is removed, the group whose next measured ratio loses the
    least map per GFLOP it saves (ties: the first group) moves to it, up to `high`.

    `gflops_of(ratios)` gives the GFLOPs of the model pruned at per-group ratios; without it, the
    table's savings are added up, an estimate (pruning two neighbours saves less than the sum).
    """
    return allocate_each(table, [budget], low, high, gflops_of)[0]


def allocate_each(
    table: Sensitivity,
    budgets: Sequence[float],
    low: float,
    high: float,
    gflops_of: Callable[[Sequence[float]], float] | None = None,
) -> list[Allocation]:
    """`allocate` at each of `budgets`, in their order, from one greedy walk: its moves do not
    depend on the budget, only where it stops, so each budget's allocation is where the walk first
    removes that much."""
    curves = []
    for name in table.names:
        inside = [p for p in table.curve(name) if low - 1e-9 <= p.ratio <= high + 1e-9]
        if not inside:
            raise InputError(f"the sensitivity of {name} has no ratio in [{low:g}, {high:g}]")
        curves.append(inside)
    at = [0] * len(curves)
    dense = table.baseline.gflops

    def chosen() -> list[Point]:
        return [curve[index] for curve, index in zip(curves, at, strict=True)]

    def removed() -> float:
        if gflops_of is not None:
            return 1.0 - gflops_of([p.ratio for p in chosen()]) / dense
        return sum(p.gflops_saved for p in chosen()) / dense

    found: dict[float, Allocation] = {}
    share = removed()
    for budget in sorted(set(budgets)):
        while share < budget - 1e-12:
            steps = [_next_step(curve, index) for curve, index in zip(curves, at, strict=True)]
            moves = [(cost, group, to) for group, (to, cost) in enumerate(steps) if to is not None]
            if not moves:
                break
            _, group, to = min(moves, key=lambda move: (move[0], move[1]))
            at[group] = to
            share = removed()
        found[budget] = Allocation(
            budget=budget,
            ratios=tuple(p.ratio for p in chosen()),
            removed=share,
            map_drop=sum(p.map_drop for p in chosen()),
            met=share >= budget - 1e-12,
        )
    return [found[budget] for budget in budgets]


def _next_step(curve: list[Point], index: int) -> tuple[int | None, float]:
    """The next point of `curve` that saves more GFLOPs than point `index`, and its map lost per
    GFLOP saved; (None, inf) at the end of the curve."""
    here = curve[index]
    for later in range(index + 1, len(curve)):
        there = curve[later]
        saved = there.gflops_saved - here.gflops_saved
        if saved > 0:
            return later, (there.map_drop - here.map_drop) / saved
    return None, float("inf")


# --- files and views -----------------------------------------------------------------------------


def to_csv(table: Sensitivity) -> str:
    """One row per group and ratio, after the baseline's; floats as Python writes them (exact)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in table.rows():
        writer.writerow([p.group, p.ratio, p.map, p.map_drop, p.gflops, p.gflops_saved])
    return out.getvalue()


def format_table(table: Sensitivity) -> str:
    """The rows as an aligned text table, GFLOPs saved also as a share of the baseline's."""
    base = table.baseline
    lines = [
        f"each {table.groups} pruned alone ({table.method} pruning, no finetuning); "
        f"unpruned: map {base.map:.4f}, {base.gflops:.4g} GFLOPs",
        f"{'group':>9s} {'ratio':>6s} {'map':>7s} {'drop':>8s} {'GFLOPs':>9s} {'saved':>7s}",
    ]
    for p in table.rows():
        share = p.gflops_saved / base.gflops if base.gflops else 0.0
        lines.append(
            f"{p.group:>9s} {p.ratio:6.3f} {p.map:7.4f} {p.map_drop:+8.4f} "
            f"{p.gflops:9.4g} {share:7.1%}"
        )
    return "\n".join(lines)


def figure(table: Sensitivity, title: str = "") -> Figure:
    """map against ratio, one line per group from the baseline at ratio 0, the baseline marked."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    result = Figure(figsize=(8.0, 5.0), dpi=100)
    axes = result.subplots()
    colours = colormaps["viridis" if len(table.names) > 10 else "tab10"]
    for index, name in enumerate(table.names):
        curve = table.curve(name)
        shade = index / max(len(table.names) - 1, 1) if len(table.names) > 10 else index
        axes.plot(
            [p.ratio for p in curve],
            [p.map for p in curve],
            "-o",
            ms=3,
            color=colours(shade),
            label=name,
        )
    base = table.baseline
    axes.axhline(base.map, color="0.4", ls="--", lw=1)
    axes.scatter([0.0], [base.map], marker="*", s=160, color="tab:red", zorder=3,
                 label=f"unpruned ({base.map:.3f})")  # fmt: skip
    removed = "filters" if table.method == "filter" else "weights"
    axes.set_xlabel(f"ratio of the group's {removed} removed (fraction, 0 to 1)")
    axes.set_ylabel(f"{MAP_LABEL}, no finetuning")
    axes.set_title(title or f"each {table.groups} pruned alone ({table.method} pruning)")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small",
                ncol=2 if len(table.names) > 12 else 1)  # fmt: skip
    result.tight_layout()
    return result


def write(table: Sensitivity, directory: Path, title: str = "") -> tuple[Path, Path]:
    """sensitivity.csv and sensitivity.png in `directory`, each written atomically."""
    csv_path, png_path = directory / CSV_FILE, directory / PNG_FILE
    write_text_atomic(csv_path, to_csv(table))
    drawn = figure(table, title)
    with atomic_path(png_path) as temporary:
        drawn.savefig(temporary, format="png")
    return csv_path, png_path
