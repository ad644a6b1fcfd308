"""The screen of a search: hundreds of pruned candidates scored cheaply before any finetune, and
the best of them, spread along the cost axis, finetuned first.

With `search.screen`, once the dense stage is made, `plan` draws `screen.candidates` allocations of
the searched ratios evenly over the cost range (yolov2/screen.py), scores them in Ray tasks with a
trial's resources (on a cluster, spread over its nodes), and chooses `screen.finetune` of them: the
cost range cut into that many equal slices, the best-scored candidate of each. Those are enqueued
after the known and warm-start points, at the experiment's own values (or `search.known_at`'s) of
the other searched keys; the sampler takes over for what `search.num_samples` leaves.

Every candidate is in `screen.csv` (its ratios, GFLOPs, nonzero parameters, both scores, whether it
was chosen, the node that scored it) and `screen.png` (its score against its GFLOPs). When the search ends, `conclude` puts
the finetuned maps of the screened trials over that figure (in the folder and in TensorBoard) and
says how well the screen's score ranked them: the Spearman correlation of score and finetuned map.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from search import dense, tasks
from search.devices import ray_placement
from search.pareto import Ledger
from search.space import Space
from search.storage import Storage
from search.trainable import trial_resources
from yolov2.config import ExperimentConfig, default_cache
from yolov2.files import atomic_path
from yolov2.pipeline import dense_architecture
from yolov2.screen import Candidate, Scored, cost_fraction, draw, score

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

log = logging.getLogger("prune-search")

SCREEN_CSV = "screen.csv"
SCREEN_PNG = "screen.png"
SCREEN_VIEWS = "tensorboard/screen"
CHUNKS_PER_SLOT = 4  # tasks per concurrent slot: progress to report, and a cluster's nodes to fill


@dataclass(frozen=True)
class Screen:
    """The scored candidates and the points chosen from them, named as the space's ratios."""

    scored: tuple[Scored, ...]
    points: tuple[dict[str, float], ...]
    by: str = "bn_map"  # the score that ranks (screen.score)
    nodes: tuple[str, ...] = ()  # where each of `scored` was scored (devices.ray_placement)

    def write(self, directory: Path, names: Sequence[str]) -> tuple[Path, ...]:
        """screen.csv and screen.png in the experiment folder (nothing without a screen)."""
        if not self.scored:
            return ()
        by = self.by
        table = screen_table(self.scored, names, self.points, self.nodes)
        csv, png = directory / SCREEN_CSV, directory / SCREEN_PNG
        with atomic_path(csv) as temporary:
            table.to_csv(temporary, index=False)
        with atomic_path(png) as temporary:
            screen_figure(table, by).savefig(temporary, format="png")
        return csv, png


NO_SCREEN = Screen((), ())


def plan(config: ExperimentConfig, space: Space, storage: Storage) -> Screen:
    """The screen of a new search, after its dense stage is published in `storage`; Ray runs."""
    screen = config.search.screen
    if screen is None or space.ratios is None:
        return NO_SCREEN
    low, high = space.ratios.low or 0.0, space.ratios.high or 0.0
    arch = dense_architecture(config, len(config.data.class_names()))
    cost = cost_fraction(arch, config.prune, config.data.input_size)
    names = space.ratio_names
    candidates = draw(screen.candidates, len(names), low, high, cost, seed=config.search.seed)
    log.info(
        "screen: %d candidates of %s in [%g, %g], from %.0f%% to %.0f%% of the dense GFLOPs, "
        "scored on %d %s images",
        len(candidates), "/".join(names), low, high, 100 * candidates[0].target,
        100 * candidates[-1].target, screen.images, "val" if config.data.has_validation else "test",
    )  # fmt: skip
    slots = config.search.max_concurrent
    size = max(1, math.ceil(len(candidates) / (slots * CHUNKS_PER_SLOT)))
    chunks = [candidates[i : i + size] for i in range(0, len(candidates), size)]
    task = tasks.trial_task(config.search, score_chunk)
    driver_cache = str(default_cache())
    scored: list[tuple[Scored, str]] = []
    for _, (node, rows) in tasks.as_ready(
        chunks, lambda chunk: task.remote(config, chunk, storage.root, driver_cache), slots
    ):
        scored += [(row, node) for row in rows]
        log.info("screen: %d of %d candidates scored", len(scored), len(candidates))
    scored.sort(key=lambda pair: pair[0].candidate.index)
    rows = [row for row, _ in scored]
    chosen = choose(rows, screen.finetune, screen.score, screen.spread)
    points = tuple(dict(zip(names, row.candidate.ratios, strict=True)) for row in chosen)
    for row in chosen:
        log.info("screen: chose %s: %.1f%% of the dense GFLOPs, %s %.4f", _ratios(row),
                 100 * row.candidate.target, screen.score, getattr(row, screen.score))  # fmt: skip
    return Screen(tuple(rows), points, screen.score, tuple(node for _, node in scored))


def score_chunk(
    config: ExperimentConfig, chunk: list[Candidate], storage_root: str, driver_cache: str
) -> tuple[str, list[Scored]]:
    """Candidates scored as a Ray task with a trial's resources, on the dense stage the search
    published (copied into this node's cache, as a trial does); and the node it ran on."""
    screen = config.search.screen
    assert screen is not None  # plan runs it only then
    torch.set_num_threads(trial_resources(config.search.cpus_per_trial)[0])
    local, splits, stage = dense.on_node(config, Storage(storage_root), driver_cache)
    rows = score(
        stage.model, local, splits, chunk, images=screen.images, bn_batches=screen.bn_batches
    )
    return ray_placement()["node"], rows


def choose(scored: Sequence[Scored], count: int, by: str, spread: str = "slices") -> list[Scored]:
    """`count` candidates spread along the cost axis, cheapest first. `slices`: the GFLOPs range
    cut into `count` equal slices, the best by `by` in each (a slice without a candidate gives its
    turn to the best left anywhere). `front`: the candidates no other beats by `by` at no more
    GFLOPs, the one nearest each of `count` costs evenly spaced over them (the rest by `by` when
    the front has fewer)."""
    if not scored:
        return []
    if spread == "front":
        chosen = _along_the_front(scored, count, by)
    else:
        costs = [row.gflops for row in scored]
        low, high = min(costs), max(costs)
        width = (high - low) / count or 1.0
        slices: dict[int, list[Scored]] = {}
        for row in scored:
            slices.setdefault(min(count - 1, int((row.gflops - low) / width)), []).append(row)
        chosen = [max(rows, key=lambda r: getattr(r, by)) for rows in slices.values()]
    rest = sorted((r for r in scored if r not in chosen), key=lambda r: -getattr(r, by))
    chosen += rest[: count - len(chosen)]
    return sorted(chosen, key=lambda r: r.gflops)


def _along_the_front(scored: Sequence[Scored], count: int, by: str) -> list[Scored]:
    front: list[Scored] = []
    for row in sorted(scored, key=lambda r: (r.gflops, -getattr(r, by))):
        if not front or getattr(row, by) > getattr(front[-1], by):
            front.append(row)
    low, high = front[0].gflops, front[-1].gflops
    chosen: list[Scored] = []
    for k in range(min(count, len(front))):
        target = low + (high - low) * k / max(count - 1, 1)
        left = [r for r in front if r not in chosen]
        chosen.append(min(left, key=lambda r: abs(r.gflops - target)))
    return chosen


def screen_table(
    scored: Sequence[Scored],
    names: Sequence[str],
    points: Sequence[dict[str, float]],
    nodes: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per candidate: its ratios (named `names`), cost target, costs and scores, whether
    it is one of `points`, and the node that scored it (`nodes`, where given)."""
    import pandas as pd

    chosen = {tuple(point[n] for n in names) for point in points}
    rows = []
    for index, row in enumerate(scored):
        fields = asdict(row)
        candidate = fields.pop("candidate")
        rows.append(
            {
                "candidate": candidate["index"],
                **dict(zip(names, candidate["ratios"], strict=True)),
                "target": candidate["target"],
                **fields,
                "chosen": tuple(candidate["ratios"]) in chosen,
                **({"node": nodes[index]} if nodes else {}),
            }
        )
    return pd.DataFrame(rows)


def conclude(directory: Path, config: ExperimentConfig, space: Space) -> float | None:
    """The screen against the finetunes, when the search screened: each screened trial's
    finetuned map beside its candidate's score, the Spearman correlation of the two (logged, and
    returned; None where fewer than 3 screened trials completed), screen.png redrawn with the
    finetuned points over it, and both in TensorBoard."""
    screen = config.search.screen
    if screen is None or not (directory / SCREEN_CSV).is_file():
        return None
    table = finetuned_table(directory, space.ratio_names)
    rhos = spearman(table)
    rho = rhos.get(screen.score)
    if rho is not None:
        other = "pruned_map" if screen.score == "bn_map" else "bn_map"
        log.info(
            "screen: Spearman of %s and the finetuned map over %d screened trials: %.3f "
            "(of %s: %.3f)", screen.score, int(table["finetuned_map"].notna().sum()), rho,
            other, rhos[other],
        )  # fmt: skip
    figure = screen_figure(table, screen.score, rho)
    with atomic_path(directory / SCREEN_PNG) as temporary:
        figure.savefig(temporary, format="png")
    _to_tensorboard(directory, figure, rho)
    return rho


def finetuned_table(directory: Path, names: Sequence[str]) -> pd.DataFrame:
    """screen.csv of the search in `directory`, with the finetuned map (on the selection split)
    of each candidate a completed trial finetuned (nan for the others)."""
    import pandas as pd

    table = pd.read_csv(directory / SCREEN_CSV)
    finetuned = _finetuned(Ledger.load(directory), names)
    keys = [tuple(round(float(v), 6) for v in values) for values in table[list(names)].to_numpy()]
    table["finetuned_map"] = [finetuned.get(key, math.nan) for key in keys]
    return table


def spearman(table: pd.DataFrame) -> dict[str, float]:
    """The Spearman correlation of each score (bn_map, pruned_map) with the finetuned map, over
    the candidates of `finetuned_table` that were finetuned; empty under 3 of them."""
    paired = table[table["finetuned_map"].notna()]
    if len(paired) < 3:
        return {}
    return {
        by: float(paired[by].corr(paired["finetuned_map"], method="spearman"))
        for by in ("bn_map", "pruned_map")
    }


def _finetuned(ledger: Ledger, names: Sequence[str]) -> dict[tuple[float, ...], float]:
    """The finetuned map of each completed trial, by its ratios."""
    return {
        tuple(round(float(r.params[n]), 6) for n in names): float(r.metrics["map"])
        for r in ledger.completed()
        if all(n in r.params for n in names)
    }


def _to_tensorboard(directory: Path, figure: Figure, rho: float | None) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(directory / SCREEN_VIEWS)) as writer:
        writer.add_figure("screen/scores", figure, close=False)
        if rho is not None:
            writer.add_scalar("screen/spearman", rho)


def screen_figure(table: pd.DataFrame, by: str, rho: float | None = None) -> Figure:
    """Every candidate's score against its GFLOPs, the chosen ones marked, and the finetuned map
    of each screened trial over it."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axes = figure.subplots()
    axes.scatter(table["gflops"], table[by], s=10, color="0.6", label=f"candidates ({by})")
    chosen = table[table["chosen"]]
    axes.scatter(chosen["gflops"], chosen[by], s=30, color="tab:orange", label="chosen")
    if "finetuned_map" in table:
        tuned = table[table["finetuned_map"].notna()]
        axes.scatter(tuned["gflops"], tuned["finetuned_map"], s=30, marker="D",
                     color="tab:blue", label="finetuned map")  # fmt: skip
    title = f"{len(table)} candidates, {len(chosen)} chosen"
    if rho is not None:
        title += f"; Spearman of {by} and finetuned map {rho:.2f}"
    axes.set_title(title)
    axes.set_xlabel("gflops (GFLOPs)")
    axes.set_ylabel("map (VOC07 11-point, IoU 0.5)")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def _ratios(row: Scored) -> str:
    return ", ".join(f"{r:g}" for r in row.candidate.ratios)
