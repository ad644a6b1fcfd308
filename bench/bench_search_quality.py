"""Is the search worth running? Its fronts against a sweep of uniform ratios, at equal budgets.

On the default task (its cached dense model), every method gets the same number of trials and the
same finetune budget per trial, on each seed (the sampler's and the finetune's):
- `sweep`: one uniform ratio for every layer, evenly spaced over the searched range, at the
  experiment's own finetune lr and loss scales;
- `tpe-stage`, `nsga2-stage`, `random-stage`: the default search's space (a ratio per stage, the
  finetune lr and two finetune loss scales) with Optuna's TPE, NSGA-II and random sampling;
- `tpe-layer`: TPE over a ratio per prunable layer (and the same three keys);
- `tpe-stage-warm`: `tpe-stage` started from the dense model's sensitivity
  (`search.warm_start: sensitivity`, its 3 default budgets);
- `sensitivity-stage`: a sweep along the sensitivity's allocations instead of uniform ratios: a
  ratio per stage alone, the warm start's budgets at the sweep's own costs (the share of the
  GFLOPs each uniform ratio removes), so that each allocation is compared with a uniform ratio of
  the same GFLOPs (TPE fills the trials that duplicate allocations leave), at the experiment's own
  finetune; `sensitivity-layer`: the same with a ratio per prunable layer (a finer table);
- `sweep-lr`, `sensitivity-layer-lr`, `sensitivity-stage-lr`: the same at two finetune lrs, the
  file's 2e-3 and 5e-4 (`search.known_at`; the README's lr table: light pruning finetunes best at
  the lower one, heavy at the higher), at half as many costs, so that the budget stays equal (TPE,
  or random for the sweep, fills the trial the dense model's single point leaves).
Every search starts from the dense model (ratio 0), as the sweep does. For each run: the
hypervolume of its (map, GFLOPs) front with the reference (map 0, the dense model's GFLOPs),
normalised by the dense model's own box (its map times its GFLOPs), after each trial and at the
end; and the fewest GFLOPs it reaches within 1 map point of the dense model. Side by side, per
method: the mean and the spread over seeds, and the ratios to the sweep (and to `sweep-lr`, when it
ran). Targets: the best searched method's mean hypervolume >= 1.05 x the sweep's, and >= 1.3 x
fewer GFLOPs than the sweep at dense - 1 point, each against the stronger of the two sweeps. Each
run is a real `prune-search run` into `--out/<method>-s<seed>`; a run already finished there is
read back, not run again, so an interrupted benchmark carries on.

    python bench/bench_search_quality.py [--trials 16] [--epochs 2] [--seeds 0 1]
        [--methods sweep tpe-stage ...] [--out runs/bench-quality] [--results bench/results]
        [--finished-only]
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from searches import (  # bench/searches.py, beside this
    ROOT,
    box_hypervolume,
    default_experiment,
    finished_variant,
    run_variant,
    write_results,
)

SWEEP = "sweep"
SENSITIVITY = "sensitivity"  # sensitivity-stage, sensitivity-layer
METHODS = (
    "sweep", "tpe-stage", "random-stage", "nsga2-stage", "tpe-layer", "tpe-stage-warm",
    "sensitivity-stage", "sensitivity-layer", "sweep-lr", "sensitivity-stage-lr",
    "sensitivity-layer-lr",
)  # fmt: skip
# What a plain run runs (about two hours on 2 cores); sensitivity-stage-lr, the weakest of the
# three at two lrs (README, Results), only when named.
DEFAULT_METHODS = [m for m in METHODS if m != "sensitivity-stage-lr"]
AT_LRS = "-lr"  # the methods tried at each of LRS
LRS = [2e-3, 5e-4]  # the default experiment's finetune lr, and the one light pruning needs
WITHIN = 0.01  # "within 1 map point of the dense model"


@dataclass(frozen=True)
class Run:
    """One method on one seed: its completed trials in the order the study started them."""

    method: str
    seed: int
    maps: tuple[float, ...]
    gflops: tuple[float, ...]
    dense_map: float
    dense_gflops: float
    minutes: float

    def hypervolume(self, first: int | None = None) -> float:
        """The front's hypervolume over the dense model's box, from the first `first` trials."""
        return box_hypervolume(
            self.maps[:first], self.gflops[:first], self.dense_map, self.dense_gflops
        )

    def fewest_gflops(self) -> float:
        """The fewest GFLOPs among the trials within `WITHIN` map of the dense model."""
        close = [
            c for m, c in zip(self.maps, self.gflops, strict=True) if m >= self.dense_map - WITHIN
        ]
        return min(close, default=self.dense_gflops)


@dataclass(frozen=True)
class Summary:
    """A method over its seeds."""

    method: str
    seeds: int
    hypervolume: float  # mean over seeds
    hypervolume_low: float
    hypervolume_high: float
    fewest_gflops: float  # mean over seeds, within 1 map point of the dense model
    fewest_gflops_low: float
    fewest_gflops_high: float
    hypervolume_vs_sweep: float  # mean / the sweep's mean
    fewer_gflops_vs_sweep: float  # the sweep's mean fewest GFLOPs / this one's
    minutes: float  # summed over seeds


def summarise(runs: Sequence[Run], reference: str = SWEEP) -> list[Summary]:
    """Per method, in the order of `runs`, against the means of the sweep `reference` (`sweep` or
    `sweep-lr`; nan without it)."""
    methods = list(dict.fromkeys(run.method for run in runs))
    by_method = {m: [run for run in runs if run.method == m] for m in methods}
    sweep = by_method.get(reference, [])
    sweep_hv = float(np.mean([r.hypervolume() for r in sweep])) if sweep else float("nan")
    sweep_gf = float(np.mean([r.fewest_gflops() for r in sweep])) if sweep else float("nan")
    summaries = []
    for method, group in by_method.items():
        hv = [r.hypervolume() for r in group]
        gf = [r.fewest_gflops() for r in group]
        summaries.append(
            Summary(
                method,
                len(group),
                float(np.mean(hv)),
                min(hv),
                max(hv),
                float(np.mean(gf)),
                min(gf),
                max(gf),
                float(np.mean(hv)) / sweep_hv,
                sweep_gf / float(np.mean(gf)),
                sum(r.minutes for r in group),
            )
        )
    return summaries


def is_sweep(method: str) -> bool:
    """`sweep` or `sweep-lr`: uniform ratios, the baselines."""
    return method.removesuffix(AT_LRS) == SWEEP


def best_searched(summaries: Sequence[Summary]) -> tuple[Summary, Summary]:
    """The searched methods with the highest mean hypervolume and the fewest mean GFLOPs."""
    searched = [s for s in summaries if not is_sweep(s.method)]
    return (
        max(searched, key=lambda s: s.hypervolume),
        min(searched, key=lambda s: s.fewest_gflops),
    )


def experiment(method: str, seed: int, trials: int, epochs: int) -> dict[str, Any]:
    """The default experiment as `method` searches it on `seed`, as the YAML's raw mapping."""
    raw = default_experiment(f"{method}-s{seed}")
    search = raw["search"]
    low, high = search["space"]["prune.ratios"]["low"], search["space"]["prune.ratios"]["high"]
    raw["finetune"].update(epochs=epochs, seed=seed)
    search.update(num_samples=trials, seed=seed, known_points=[0.0])
    for key in ("warm_start", "warm_start_budgets"):  # a warm start only where a method names one
        search.pop(key, None)
    at_lrs = method.endswith(AT_LRS)
    # Each cost at each lr, the dense model once: as many trials as the sweep's, or one fewer.
    grid = np.linspace(low, high, 1 + (trials - 1) // len(LRS) if at_lrs else trials)
    lr_space = {"finetune.lr": search["space"]["finetune.lr"]} if at_lrs else {}
    if at_lrs:
        search["known_at"] = {"finetune.lr": LRS}
    if is_sweep(method):
        search.update(
            sampler="random",
            known_points=[round(float(r), 4) for r in grid],
            space={"prune.ratios": {"groups": "uniform", "low": low, "high": high}, **lr_space},
        )
        return raw
    if method.startswith(SENSITIVITY):  # a sweep along the sensitivity's allocations, of ratios
        groups = method.split("-")[1]  # alone
        search.update(
            sampler="tpe",
            space={"prune.ratios": {"groups": groups, "low": low, "high": high}, **lr_space},
            warm_start="sensitivity",
            warm_start_budgets=[round(b, 4) for b in uniform_savings(raw, grid[1:].tolist())],
        )
        return raw
    sampler, groups, *warm = method.split("-")
    search["sampler"] = sampler
    search["space"]["prune.ratios"]["groups"] = groups
    if warm:  # at SearchConfig's default budgets
        search["warm_start"] = "sensitivity"
    return raw


def uniform_savings(raw: dict[str, Any], ratios: Sequence[float]) -> list[float]:
    """The share of the dense model's GFLOPs that each uniform ratio removes, in the experiment
    `raw` (counted from the widths it gives)."""
    from yolov2.config import ExperimentConfig
    from yolov2.pipeline import dense_architecture
    from yolov2.sensitivity import pruned_gflops

    config = ExperimentConfig.model_validate(raw)
    arch = dense_architecture(config, len(config.data.class_names()))
    size = config.data.input_size
    dense = pruned_gflops(arch, config.prune, [0.0], size)
    return [1.0 - pruned_gflops(arch, config.prune, [float(r)], size) / dense for r in ratios]


def run_one(method: str, seed: int, trials: int, epochs: int, out: Path) -> Run:
    """The run of `method` on `seed` in `out`: made, resumed or read back when finished."""
    directory, minutes = run_variant(experiment(method, seed, trials, epochs), out)
    return read_run(directory, method, seed, minutes)


def read_run(directory: Path, method: str, seed: int, minutes: float) -> Run:
    """The completed trials of the study in `directory`, in the order it started them."""
    import optuna
    import pandas as pd

    from search.tuner import study_storage

    study = optuna.load_study(study_name=directory.name, storage=study_storage(directory))
    done = [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]
    done.sort(key=lambda t: t.number)
    table = pd.read_csv(directory / "trials.csv")
    dense = table[table["dense"].astype(bool)].iloc[0]
    return Run(
        method,
        seed,
        tuple(float(t.values[0]) for t in done),
        tuple(float(t.values[1]) for t in done),
        float(dense["dense_map"]),
        float(dense["gflops"]),
        minutes,
    )


def plot(runs: Sequence[Run]) -> Any:
    """Each seed's fronts, the methods overlaid, and the mean hypervolume after each trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from search.pareto import dominated

    seeds = sorted({run.seed for run in runs})
    methods = list(dict.fromkeys(run.method for run in runs))
    figure, axes = plt.subplots(1, len(seeds) + 1, figsize=(5.5 * (len(seeds) + 1), 4.5))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for axis, seed in zip(axes, seeds, strict=False):
        for run in (r for r in runs if r.seed == seed):
            keep = ~dominated(run.maps, run.gflops)
            points = sorted(
                zip(np.asarray(run.gflops)[keep], np.asarray(run.maps)[keep], strict=True)
            )
            axis.scatter(run.gflops, run.maps, s=10, alpha=0.35, color=colours[run.method])
            axis.step(
                *zip(*points, strict=True),
                where="post",
                color=colours[run.method],
                label=run.method,
            )
        dense = next(r for r in runs if r.seed == seed)
        axis.axhline(
            dense.dense_map - WITHIN, color="grey", lw=0.8, ls=":", label="dense - 1 point"
        )
        axis.set(title=f"fronts, seed {seed}", xlabel="GFLOPs per image", ylabel="map (VOC07)")
        axis.legend(fontsize=7)
    curve = axes[-1]
    for method in methods:
        group = [r for r in runs if r.method == method]
        length = min(len(r.maps) for r in group)
        mean = [np.mean([r.hypervolume(k) for r in group]) for k in range(1, length + 1)]
        curve.plot(range(1, length + 1), mean, color=colours[method], label=method, marker=".")
    curve.set(
        title="hypervolume after each trial (mean over seeds)",
        xlabel="completed trials",
        ylabel="hypervolume / dense box",
    )
    curve.legend(fontsize=7)
    figure.tight_layout()
    return figure


def report(runs: Sequence[Run], results: Path, warm_first: int) -> int:
    """The table against each sweep run (`sweep`, `sweep-lr`), the JSON and the plot, and the
    targets against the stronger sweep: a search beats the sweeps only if it beats both."""
    sweeps = [m for m in (SWEEP, SWEEP + AT_LRS) if any(r.method == m for r in runs)]
    tables = {reference: summarise(runs, reference) for reference in sweeps or [SWEEP]}
    first = next(iter(tables.values()))  # against the plain sweep where it ran
    print(f"\n{len(runs)} runs, {sum(r.minutes for r in runs):.1f} min of search in all")
    for reference, summaries in tables.items():
        print(
            f"{'method':>20} {'seeds':>5} {'hypervolume (low-high)':>26} {'vs ' + reference:>11}"
            f" {'fewest GFLOPs @dense-1pt (low-high)':>36} {reference + '/this':>14} {'min':>6}"
        )
        for s in summaries:
            print(
                f"{s.method:>20} {s.seeds:>5} {s.hypervolume:10.4f} ({s.hypervolume_low:.4f}-"
                f"{s.hypervolume_high:.4f}) {s.hypervolume_vs_sweep:10.3f}x {s.fewest_gflops:14.4f} "
                f"({s.fewest_gflops_low:.4f}-{s.fewest_gflops_high:.4f}) "
                f"{s.fewer_gflops_vs_sweep:13.3f}x {s.minutes:6.1f}"
            )
    warm = _warm_start_rows(runs, warm_first)
    for line in warm:
        print(line)
    payload = {
        "runs": [
            {**asdict(r), "hypervolume": r.hypervolume(), "fewest_gflops": r.fewest_gflops()}
            for r in runs
        ],
        "summaries": [asdict(s) for s in first],
        "against": {reference: [asdict(s) for s in table] for reference, table in tables.items()},
        "warm_start": warm,
    }
    write_results(payload, plot(runs), results / "search-quality")
    print(f"written: {results / 'search-quality.json'}, {results / 'search-quality.png'}")

    from targets import Target, check  # bench/targets.py, beside this script

    if not sweeps or all(is_sweep(s.method) for s in first):
        print("no sweep, or nothing searched beside it: no targets to check")
        return 1
    hv, gflops = float("inf"), float("inf")
    for reference, summaries in tables.items():
        by_hv, by_gflops = best_searched(summaries)
        print(f"against {reference}: best search by hypervolume {by_hv.method}, "
              f"by GFLOPs at dense - 1 {by_gflops.method}")  # fmt: skip
        hv = min(hv, by_hv.hypervolume_vs_sweep)
        gflops = min(gflops, by_gflops.fewer_gflops_vs_sweep)
    print(f"the targets against the stronger of: {', '.join(sweeps)}")
    return check(
        [
            Target("hypervolume, the best search / the stronger sweep", hv, ">=", 1.05, "x"),
            Target(
                "fewer GFLOPs at dense - 1 point, best search vs the stronger sweep",
                gflops,
                ">=",
                1.3,
                "x",
            ),
        ]
    )


def _warm_start_rows(runs: Sequence[Run], first: int) -> list[str]:
    """The warm start's front after the first `first` trials against the same search's without."""
    lines = []
    for run in (r for r in runs if r.method.endswith("-warm")):
        cold = [r for r in runs if r.method == run.method[: -len("-warm")] and r.seed == run.seed]
        if cold:
            lines.append(
                f"warm start, seed {run.seed}: hypervolume after {first} trials "
                f"{run.hypervolume(first):.4f} with, {cold[0].hypervolume(first):.4f} without; "
                f"after all: {run.hypervolume():.4f} with, {cold[0].hypervolume():.4f} without"
            )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16, help="trials per run (default 16)")
    parser.add_argument("--epochs", type=int, default=2, help="finetune epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULT_METHODS,
                        metavar="METHOD", help=f"of {', '.join(METHODS)} (default: all but "
                        "sensitivity-stage-lr)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--warm-first", type=int, default=4,
                        help="the warm start is compared after this many trials")  # fmt: skip
    parser.add_argument("--finished-only", action="store_true",
                        help="run nothing: report the runs that finished in --out")  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            if args.finished_only:
                name = experiment(method, seed, args.trials, args.epochs)["name"]
                finished = finished_variant(name, args.out)
                if finished is None:
                    print(f"{args.out / name}: not finished, left out")
                    continue
                directory, minutes = finished
                run = read_run(directory, method, seed, minutes)
            else:
                run = run_one(method, seed, args.trials, args.epochs, args.out)
            runs.append(run)
            logging.info("%s-s%d done: hypervolume %.4f", method, seed, run.hypervolume())
    print(f"the benchmark took {(time.perf_counter() - start) / 60:.1f} min")
    if not runs:
        print(f"{args.out}: no finished run of these methods and seeds to report")
        return 1
    return report(runs, args.results, args.warm_first)


if __name__ == "__main__":
    sys.exit(main())
