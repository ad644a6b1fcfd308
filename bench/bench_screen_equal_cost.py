"""Can a screen find a better allocation than the sensitivity's at the same cost?

The screened searches ranked their finetuned models almost perfectly (Spearman 0.90-1.00), but
those models spread over the cost range, where cost alone ranks them. A screen improves on the
per-layer sensitivity sweep only if its score ranks models of one cost, and if some allocation of
that cost finetunes better than the sensitivity's. On the default task (its cached dense model
and sensitivity table), for each budget (a share of the dense model's GFLOPs to remove):
- `sensitivity`: the warm start's allocation (what the default search finetunes there);
- `near`: `--near` allocations around it, each group's place in the searched range scaled by a
  random factor (e to a normal of deviation `--spread`), held to its cost;
- `random`: `--random` allocations of random shape (the screen's own draw), held to its cost.
Every candidate is scored as the screen scores it (its map on the first `--images` val images as
pruned, and after adaptive batch norm on `--bn-batches` training batches), finetuned as a trial
is (`prune-search pipeline`, `--epochs` epochs, two at a time on one CPU each) and measured on the
val and test splits. Printed per budget: each score's Spearman correlation with the finetuned val
map, and the finetuned maps of the candidate each score ranks first against the sensitivity
allocation's. A finetuned candidate found in `--out` is read back, so an interrupted run carries
on. Results: `--results/screen-equal-cost.{json,png}`.

    python bench/bench_screen_equal_cost.py [--budgets 0.3 0.5 0.7] [--near 4] [--random 4]
        [--epochs 2] [--images 200] [--bn-batches 20] [--spread 0.5] [--seed 0]
        [--experiment experiments/default.yaml] [--set KEY=VALUE ...]
        [--out runs/bench-equal-cost] [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from searches import ROOT, default_experiment, write_results  # bench/searches.py, beside this

DEFAULT = ROOT / "experiments" / "default.yaml"
KINDS = ("sensitivity", "near", "random")
SCORES = ("bn_map", "pruned_map")


@dataclass(frozen=True)
class Row:
    """One candidate: its budget, kind, ratios, cost, screen scores and finetuned maps."""

    budget: float
    kind: str
    ratios: tuple[float, ...]
    gflops: float
    pruned_map: float
    bn_map: float
    val_map: float  # finetuned, on the val split: what a search selects on
    test_map: float  # finetuned, on the test split


def allocations(
    sensitivity: Sequence[float],
    *,
    near: int,
    drawn: int,
    low: float,
    high: float,
    fraction: Callable[[Sequence[float]], float],
    rng: random.Random,
    spread: float = 0.5,
) -> list[tuple[str, tuple[float, ...]]]:
    """The sensitivity's allocation, `near` allocations around it and `drawn` of random shape, each
    of the others held to the sensitivity's cost (`fraction`, of the dense model's) from below."""
    from yolov2.screen import meeting

    target = fraction(sensitivity)
    place = [max((r - low) / (high - low), 0.02) for r in sensitivity]  # 0 would pin a group
    chosen: list[tuple[str, tuple[float, ...]]] = [("sensitivity", tuple(sensitivity))]
    for _ in range(near):
        shape = [u * math.exp(rng.gauss(0.0, spread)) for u in place]
        chosen.append(("near", meeting(target, shape, low, high, fraction)))
    for _ in range(drawn):
        shape = [rng.random() for _ in sensitivity]
        chosen.append(("random", meeting(target, shape, low, high, fraction)))
    return chosen


def judge(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per budget: each score's Spearman correlation with the finetuned val map, and the val and
    test maps of the candidate each score ranks first, the best val map's, against the
    sensitivity allocation's."""
    from search.screening import spearman

    verdicts = []
    for budget in sorted({row.budget for row in rows}):
        here = pd.DataFrame([asdict(r) for r in rows if r.budget == budget])
        base = here[here["kind"] == "sensitivity"].iloc[0]
        verdict: dict[str, Any] = {
            "budget": budget,
            "candidates": len(here),
            "gflops": float(base["gflops"]),
            "spearman": spearman(here.assign(finetuned_map=here["val_map"])),
            "sensitivity": {"val_map": float(base["val_map"]), "test_map": float(base["test_map"])},
            "sensitivity_rank": int((here["val_map"] > base["val_map"]).sum()) + 1,
        }
        for by in (*SCORES, "val_map"):
            first = here.loc[here[by].idxmax()]
            verdict[f"first_by_{by}"] = {
                "kind": str(first["kind"]),
                "val_map": float(first["val_map"]),
                "test_map": float(first["test_map"]),
                "test_gain": float(first["test_map"] - base["test_map"]),
            }
        verdicts.append(verdict)
    return verdicts


def candidates_of(config: Any, space: Any, args: argparse.Namespace) -> tuple[Any, list[Row]]:
    """The dense stage and every candidate of every budget, scored, not yet finetuned."""
    from search.warm_start import ratio_grid
    from yolov2.engine import load_splits
    from yolov2.pipeline import cached_dense, dense_folder
    from yolov2.screen import Candidate, cost_fraction, score
    from yolov2.sensitivity import allocate, cached_analyse, checked_groups, pruned_gflops

    splits = load_splits(config.data, config.cache_dir)
    stage = cached_dense(config, splits)
    low, high = space.ratios.low or 0.0, space.ratios.high or 0.0
    groups = checked_groups(space.ratios.groups or "")
    folder = dense_folder(config)
    table = cached_analyse(
        stage.model, config, splits, groups, ratio_grid(low, high), folder=folder
    )
    arch, size = stage.model.arch, config.data.input_size
    fraction = cost_fraction(arch, config.prune, size)
    rng = random.Random(args.seed)
    drawn: list[tuple[float, str, Candidate]] = []
    for budget in args.budgets:
        chosen = allocate(
            table, budget, low, high, lambda r: pruned_gflops(arch, config.prune, r, size)
        )
        found = allocations(
            chosen.ratios, near=args.near, drawn=args.random, low=low, high=high,
            fraction=fraction, rng=rng, spread=args.spread,
        )  # fmt: skip
        for kind, ratios in found:
            drawn.append((budget, kind, Candidate(len(drawn), ratios, fraction(chosen.ratios))))
    scored = score(
        stage.model,
        config,
        splits,
        [c for _, _, c in drawn],
        images=args.images,
        bn_batches=args.bn_batches,
    )
    rows = [
        Row(budget, kind, s.candidate.ratios, s.gflops, s.pruned_map, s.bn_map, math.nan, math.nan)
        for (budget, kind, _), s in zip(drawn, scored, strict=True)
    ]
    return stage, rows


def finetune(raw: dict[str, Any], rows: Sequence[Row], out: Path) -> list[Row]:
    """Each candidate pruned and finetuned by `prune-search pipeline` into `out/<index>`, two at a
    time on one thread each, with its val and test maps; one finished before is read back."""
    import yaml

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = Path(sys.executable).parent / "prune-search"

    def one(index: int, row: Row) -> Row:
        folder = out / f"{index:03d}-{row.kind}"
        metrics = folder / "metrics.json"
        if not metrics.is_file():
            folder.mkdir(parents=True, exist_ok=True)
            experiment = {**raw, "name": f"candidate-{index:03d}"}
            experiment["prune"] = {**raw["prune"], "ratio": None, "ratios": list(row.ratios)}
            source = folder / "experiment.yaml"
            source.write_text(yaml.safe_dump(experiment, sort_keys=False))
            with (folder / "pipeline.log").open("w") as log:
                done = subprocess.run(
                    [str(cli), "pipeline", str(source), "--out", str(folder)],
                    stdout=log, stderr=subprocess.STDOUT, env=env, check=False,
                )  # fmt: skip
            if done.returncode != 0:
                raise SystemExit(f"{folder / 'pipeline.log'}: the finetune failed")
        measured = json.loads(metrics.read_text())
        return Row(**{**asdict(row), "val_map": measured["map"], "test_map": measured["test_map"]})

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(one, range(len(rows)), rows))


def figure(rows: Sequence[Row]) -> Any:
    """Per budget: the finetuned val map against each candidate's bn_map, by kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = sorted({row.budget for row in rows})
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 3.8), squeeze=False)
    for ax, budget in zip(axes[0], budgets, strict=True):
        for kind, marker in zip(KINDS, ("*", "o", "x"), strict=True):
            here = [r for r in rows if r.budget == budget and r.kind == kind]
            ax.scatter([r.bn_map for r in here], [r.val_map for r in here], marker=marker,
                       s=120 if kind == "sensitivity" else 36, label=kind)  # fmt: skip
        ax.set_title(f"{budget:.0%} fewer GFLOPs")
        ax.set_xlabel("screen score (bn_map)")
        ax.set_ylabel("finetuned val map")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def print_verdicts(verdicts: Sequence[dict[str, Any]]) -> None:
    print("\nbudget  GFLOPs  n   Spearman bn/pruned  sensitivity val/test (rank)  "
          "first by bn_map: kind val/test (test gain)  best finetuned: kind test gain")  # fmt: skip
    for v in verdicts:
        rho = v["spearman"]
        first, best, base = v["first_by_bn_map"], v["first_by_val_map"], v["sensitivity"]
        print(
            f"{v['budget']:>6.2f}  {v['gflops']:.4f}  {v['candidates']:<2}  "
            f"{rho.get('bn_map', math.nan):+.2f} / {rho.get('pruned_map', math.nan):+.2f}        "
            f"{base['val_map']:.4f} / {base['test_map']:.4f} ({v['sensitivity_rank']})        "
            f"{first['kind']:<11} {first['val_map']:.4f} / {first['test_map']:.4f} "
            f"({100 * first['test_gain']:+.2f})   {best['kind']:<11} {100 * best['test_gain']:+.2f}"
        )
    gains = [v["first_by_bn_map"]["test_gain"] for v in verdicts]
    print(f"mean test gain of the screen's first over the sensitivity's allocation: "
          f"{100 * sum(gains) / len(gains):+.2f} points")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    parser.add_argument("--near", type=int, default=4, help="allocations around the sensitivity's")
    parser.add_argument("--random", type=int, default=4, help="allocations of random shape")
    parser.add_argument("--epochs", type=int, default=2, help="finetune epochs per candidate")
    parser.add_argument("--images", type=int, default=200, help="val images the screen scores on")
    parser.add_argument("--bn-batches", type=int, default=20, help="training batches for bn_map")
    parser.add_argument("--spread", type=float, default=0.5, help="the near allocations' spread")
    parser.add_argument("--seed", type=int, default=0, help="the draws' and the finetunes' seed")
    parser.add_argument("--experiment", type=Path, default=DEFAULT)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a value of the experiment (repeatable)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-equal-cost")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    if not all(0 < b < 1 for b in args.budgets):
        parser.error("--budgets: shares of the dense model's GFLOPs, each in (0, 1)")
    import yaml

    from search.space import build_space
    from yolov2.config import load_config
    from yolov2.errors import InputError

    raw = default_experiment("equal-cost", args.experiment, args.set)
    raw.setdefault("finetune", {}).update(epochs=args.epochs, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    source = args.out / "equal-cost.yaml"
    source.write_text(yaml.safe_dump(raw, sort_keys=False))
    try:
        config = load_config(source)
        space = build_space(config, str(source))
        if space.ratios is None or space.ratios.groups not in ("stage", "layer"):
            raise InputError("search.space needs prune.ratios with groups stage or layer")
    except InputError as error:
        raise SystemExit(f"{args.experiment}: {error}") from None
    _, rows = candidates_of(config, space, args)
    rows = finetune(raw, rows, args.out)
    verdicts = judge(rows)
    print_verdicts(verdicts)
    payload = {"rows": [asdict(r) for r in rows], "verdicts": verdicts, "args": vars(args)}
    payload["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    write_results(payload, figure(rows), args.results / "screen-equal-cost")
    return 0


if __name__ == "__main__":
    sys.exit(main())
