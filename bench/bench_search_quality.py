"""Is the search worth running? Its fronts against sweeps of the pruning ratios, at equal wall time.

Every method searches the same experiment (the default one, or `--experiment` with `--set`'s
overrides) from the same cached dense model, on each seed (the sampler's and the finetune's),
selecting on the experiment's validation split and reported on its test split: the models on each
front (chosen by their validation map) are measured on the test split when the search ends, and
every figure below is of those test maps. The methods:
- `sweep`: one uniform ratio for every layer, evenly spaced over the searched range, at the
  experiment's own finetune lr and loss scales;
- `screen-stage`, `screen-layer`: a ratio per stage (or per prunable layer),
  the finetune lr and two finetune loss scales, with the screen (search.screen): `--candidates`
  allocations drawn evenly over the cost range, each pruned and scored without finetuning, the
  best of each cost slice finetuned first, TPE after them. The screen's time is counted against
  its trials: it gets `--screen-trials` trials fewer than the others, so that its wall time
  matches theirs (the table prints each run's minutes over the sweep's, to check it);
- `tpe-stage`, `nsga2-stage`, `random-stage`, `tpe-layer`: the same spaces without the screen,
  with Optuna's TPE, NSGA-II and random sampling; `tpe-stage-warm`: `tpe-stage` started from the
  dense model's sensitivity (`search.warm_start: sensitivity`, its 3 default budgets);
- `sensitivity-stage`, `sensitivity-layer`: a sweep along the sensitivity's allocations instead
  of uniform ratios (a ratio per stage, or per layer, alone), the warm start's budgets at the
  sweep's own costs (the share of the GFLOPs each uniform ratio removes), at the experiment's own
  finetune;
- `sweep-lr`, `sensitivity-layer-lr`, `sensitivity-stage-lr`: the same at two finetune lrs, the
  default file's 2e-3 and 5e-4 (`search.known_at`), at half as many costs.
Every search starts from the dense model (ratio 0). Before any run is timed the dense model is
made (or read from the cache), and so is the sensitivity table the sensitivity methods start
from: the sweeps get their analysis for free, the screen pays for its own.

For each run, on the test split: (a) the mean map at equal GFLOPs over 20-80% fewer GFLOPs than
the dense model (at each cost, the test map of the front's model a user picks there: the one of
no more cost with the best validation map; 0 where the front has none), and its gain over the
sweeps on the same seed; (b) the fewest GFLOPs among the front's models within 1 test map point of
the dense model; (c) the hypervolume of the front's (test map, GFLOPs), with the reference (map 0,
the dense model's GFLOPs), over the dense model's own box; (d) for a screened run, the Spearman
correlation of each screen score (bn_map, pruned_map) with the finetuned validation map. Side by
side per method: the mean over seeds and the spread. Targets: the best screened method's mean map
gain at least +1.0 point over the best sensitivity sweep's, at least 1.8x fewer GFLOPs at dense - 1
than the better uniform sweep, and a Spearman of its screen score of at least 0.8. Each run is a
real `prune-search run` into `--out/<method>-s<seed>`; a run finished there is read back, not run
again, so an interrupted benchmark carries on.

    python bench/bench_search_quality.py [--trials 12] [--epochs 2] [--seeds 0 1 2]
        [--methods sweep sweep-lr sensitivity-layer sensitivity-layer-lr screen-stage]
        [--candidates 48] [--screen-trials 4] [--experiment experiments/default.yaml]
        [--set KEY=VALUE ...] [--out runs/bench-quality] [--results bench/results]
        [--finished-only]
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from searches import (  # bench/searches.py, beside this
    DEFAULT,
    ROOT,
    box_hypervolume,
    default_experiment,
    finished_variant,
    run_variant,
    write_results,
)

SWEEP = "sweep"
SENSITIVITY = "sensitivity"  # sensitivity-stage, sensitivity-layer
SCREEN = "screen"  # screen-stage, screen-layer
METHODS = (
    "sweep", "sweep-lr", "sensitivity-layer", "sensitivity-layer-lr", "screen-stage",
    "screen-layer", "tpe-stage", "random-stage", "nsga2-stage", "tpe-layer", "tpe-stage-warm",
    "sensitivity-stage", "sensitivity-stage-lr",
)  # fmt: skip
DEFAULT_METHODS = list(METHODS[:5])  # about 70 minutes on 2 cores at the defaults, 3 seeds
AT_LRS = "-lr"  # the methods tried at each of LRS
LRS = [2e-3, 5e-4]  # the default experiment's finetune lr, and the one light pruning needs
WITHIN = 0.01  # "within 1 map point of the dense model"
SAVINGS = (0.2, 0.8)  # the range of fewer GFLOPs the mean map is taken over
GRID = 601  # costs the mean map is averaged at


@dataclass(frozen=True)
class Run:
    """One method on one seed: its completed trials in the order they finished, with their
    validation maps (what the search selected on) and test maps (nan off the front)."""

    method: str
    seed: int
    maps: tuple[float, ...]  # on the selection split
    gflops: tuple[float, ...]
    test_maps: tuple[float, ...]
    dense_map: float
    dense_test_map: float
    dense_gflops: float
    minutes: float
    spearman: dict[str, float] = field(default_factory=dict)  # by screen score

    def front(self) -> list[tuple[float, float, float]]:
        """The front the search chose, (GFLOPs, selection map, test map), cheapest first: the
        models whose test map was measured, the non-dominated ones by their selection map."""
        from search.pareto import dominated

        measured = [
            (c, m, t)
            for c, m, t in zip(self.gflops, self.maps, self.test_maps, strict=True)
            if math.isfinite(t)
        ]
        if not measured:
            return []
        keep = ~dominated([m for _, m, _ in measured], [c for c, _, _ in measured])
        return sorted(p for p, k in zip(measured, keep, strict=True) if k)

    def test_map_at(self, gflops: float) -> float:
        """The test map of the model a user picks at `gflops`: the front's model of no more cost
        with the best selection map (0 where none is that cheap)."""
        affordable = [(m, t) for c, m, t in self.front() if c <= gflops + 1e-12]
        return max(affordable)[1] if affordable else 0.0

    def mean_map(self) -> float:
        """The mean test map at equal GFLOPs over SAVINGS of the dense model's GFLOPs."""
        low, high = (self.dense_gflops * (1 - s) for s in reversed(SAVINGS))
        return float(np.mean([self.test_map_at(c) for c in np.linspace(low, high, GRID)]))

    def hypervolume(self) -> float:
        """The front's (test map, GFLOPs) hypervolume over the dense model's box."""
        points = self.front()
        return box_hypervolume(
            [t for _, _, t in points], [c for c, _, _ in points], self.dense_test_map,
            self.dense_gflops,
        )  # fmt: skip

    def selection_hypervolume(self, first: int | None = None) -> float:
        """The hypervolume of the first `first` trials' (selection map, GFLOPs): how fast the
        search found its front."""
        return box_hypervolume(
            self.maps[:first], self.gflops[:first], self.dense_map, self.dense_gflops
        )

    def fewest_gflops(self) -> float:
        """The fewest GFLOPs among the front's models within `WITHIN` test map of the dense model."""
        close = [c for c, _, t in self.front() if t >= self.dense_test_map - WITHIN]
        return min(close, default=self.dense_gflops)


@dataclass(frozen=True)
class Summary:
    """A method over its seeds, against a reference method's runs on the same seeds."""

    method: str
    seeds: int
    mean_map: float  # mean over seeds
    gain: float  # mean over seeds of (this - the reference's) mean map, in map points
    gain_low: float
    gain_high: float
    fewest_gflops: float  # mean over seeds, within 1 test map point of the dense model
    fewest_gflops_low: float
    fewest_gflops_high: float
    fewer_gflops: float  # the reference's mean fewest GFLOPs / this one's
    hypervolume: float  # mean over seeds
    spearman: dict[str, float]  # mean over seeds, by screen score
    minutes: float  # summed over seeds
    minutes_vs: float  # this method's minutes / the reference's, on the same seeds


def summarise(runs: Sequence[Run], reference: str = SWEEP) -> list[Summary]:
    """Per method, in the order of `runs`, against `reference` on the same seeds (nan where it
    did not run)."""
    methods = list(dict.fromkeys(run.method for run in runs))
    by_method = {m: [run for run in runs if run.method == m] for m in methods}
    base = {run.seed: run for run in by_method.get(reference, [])}
    nan = float("nan")
    summaries = []
    for method, group in by_method.items():
        gains = [100 * (r.mean_map() - base[r.seed].mean_map()) if r.seed in base else nan
                 for r in group]  # fmt: skip
        gf = [r.fewest_gflops() for r in group]
        base_gf = [base[r.seed].fewest_gflops() for r in group if r.seed in base]
        base_minutes = sum(base[r.seed].minutes for r in group if r.seed in base)
        scores = {score for r in group for score in r.spearman}
        summaries.append(
            Summary(
                method,
                len(group),
                float(np.mean([r.mean_map() for r in group])),
                float(np.mean(gains)),
                min(gains),
                max(gains),
                float(np.mean(gf)),
                min(gf),
                max(gf),
                float(np.mean(base_gf)) / float(np.mean(gf)) if base_gf else nan,
                float(np.mean([r.hypervolume() for r in group])),
                {
                    s: float(np.mean([r.spearman[s] for r in group if s in r.spearman]))
                    for s in sorted(scores)
                },
                sum(r.minutes for r in group),
                sum(r.minutes for r in group) / base_minutes if base_minutes else nan,
            )
        )
    return summaries


def is_sweep(method: str) -> bool:
    """`sweep` or `sweep-lr`: uniform ratios, the baselines."""
    return method.removesuffix(AT_LRS) == SWEEP


def experiment(
    method: str,
    seed: int,
    trials: int,
    epochs: int,
    *,
    base: Path = DEFAULT,
    overrides: Sequence[str] = (),
    candidates: int = 48,
    screen_trials: int = 4,
) -> dict[str, Any]:
    """The experiment `base` (with `overrides`) as `method` searches it on `seed`, as the YAML's
    raw mapping."""
    raw = default_experiment(f"{method}-s{seed}", base, overrides)
    search = raw.setdefault("search", {})
    space = search.setdefault("space", {})
    ratios = space.get("prune.ratios") or {}
    low, high = ratios.get("low", 0.0), ratios.get("high", 0.6)
    raw.setdefault("finetune", {}).update(epochs=epochs, seed=seed)
    search.update(num_samples=trials, seed=seed, known_points=[0.0])
    screen = search.get("screen") or {}  # its settings, for the screened methods
    for key in ("warm_start", "warm_start_budgets", "screen", "known_at"):
        search.pop(key, None)  # each only where a method names it
    at_lrs = method.endswith(AT_LRS)
    # Each cost at each lr, the dense model once: as many trials as the sweep's, or one fewer.
    grid = np.linspace(low, high, 1 + (trials - 1) // len(LRS) if at_lrs else trials)
    lr_space = {"finetune.lr": space["finetune.lr"]} if at_lrs else {}
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
    space["prune.ratios"] = {"groups": groups, "low": low, "high": high}
    if sampler == SCREEN:
        kept = trials - screen_trials
        search.update(
            sampler="tpe",
            num_samples=kept,
            # the experiment's screen settings (and --set's) but for how many
            screen={
                **screen,
                "candidates": candidates,
                "finetune": max(1, min(6, kept - 2)),
            },
        )
        return raw
    search["sampler"] = sampler
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


def prepare(raws: Sequence[dict[str, Any]], out: Path) -> None:
    """The dense model of the experiments `raws` (one dense model: they differ in their search
    alone), and the sensitivity table of each warm-started one, made before any run is timed."""
    from search import dense, warm_start
    from search.space import build_space
    from search.storage import Storage
    from yolov2.config import default_cache, load_config

    out.mkdir(parents=True, exist_ok=True)
    driver_cache = str(default_cache())
    for raw in raws:
        source = out / f"{raw['name']}.prepare.yaml"
        source.write_text(yaml_text(raw))
        config = load_config(source)
        space = build_space(config, str(source))
        dense.make(config, None, driver_cache)
        if config.search.warm_start != "none" and space.ratios is not None:
            warm_start.plan(config, space, Storage(str(out / "prepare")))
        source.unlink()


def yaml_text(raw: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(raw, sort_keys=False)


def run_one(raw: dict[str, Any], method: str, seed: int, out: Path) -> Run:
    """The run of `raw` in `out`: made, resumed or read back when finished."""
    directory, minutes = run_variant(raw, out)
    return read_run(directory, method, seed, minutes)


def read_run(directory: Path, method: str, seed: int, minutes: float) -> Run:
    """The completed trials of the search in `directory` (its ledger), in the order they
    finished, and its screen's Spearman correlations."""
    from search import screening
    from search.pareto import Ledger
    from search.space import build_space
    from yolov2.config import load_config

    done = sorted(Ledger.load(directory).completed(), key=lambda r: r.order)
    dense = next(r for r in done if r.is_dense)
    spearman: dict[str, float] = {}
    if (directory / screening.SCREEN_CSV).is_file():
        source = directory.parent / f"{directory.name}.yaml"
        space = build_space(load_config(source), str(source))
        spearman = screening.spearman(screening.finetuned_table(directory, space.ratio_names))

    def test_map(metrics: dict[str, Any]) -> float:
        value = metrics.get("test_map")
        return float(value) if value is not None else float("nan")

    return Run(
        method,
        seed,
        tuple(float(r.metrics["map"]) for r in done),
        tuple(float(r.metrics["gflops"]) for r in done),
        tuple(test_map(r.metrics) for r in done),
        float(dense.metrics["map"]),
        test_map(dense.metrics),
        float(dense.metrics["gflops"]),
        minutes,
        spearman,
    )


def plot(runs: Sequence[Run]) -> Any:
    """Each seed's fronts on the test split, the methods overlaid, and the mean hypervolume of
    the selection maps after each trial."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({run.seed for run in runs})
    methods = list(dict.fromkeys(run.method for run in runs))
    figure, axes = plt.subplots(1, len(seeds) + 1, figsize=(5.5 * (len(seeds) + 1), 4.5))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for axis, seed in zip(axes, seeds, strict=False):
        for run in (r for r in runs if r.seed == seed):
            front = run.front()
            costs = np.linspace(0.0, run.dense_gflops, 400)
            axis.scatter([c for c, _, _ in front], [t for _, _, t in front], s=14,
                         color=colours[run.method])  # fmt: skip
            axis.step(costs, [run.test_map_at(c) for c in costs], where="post",
                      color=colours[run.method], label=run.method)  # fmt: skip
        dense = next(r for r in runs if r.seed == seed)
        axis.axhline(
            dense.dense_test_map - WITHIN, color="grey", lw=0.8, ls=":", label="dense - 1 point"
        )
        for saving in SAVINGS:
            axis.axvline(dense.dense_gflops * (1 - saving), color="grey", lw=0.6, ls="--")
        axis.set(title=f"fronts on test, seed {seed}", xlabel="GFLOPs per image",
                 ylabel="test map (VOC07)")  # fmt: skip
        axis.legend(fontsize=7)
    curve = axes[-1]
    for method in methods:
        group = [r for r in runs if r.method == method]
        length = min(len(r.maps) for r in group)
        mean = [np.mean([r.selection_hypervolume(k) for r in group]) for k in range(1, length + 1)]
        curve.plot(range(1, length + 1), mean, color=colours[method], label=method, marker=".")
    curve.set(
        title="hypervolume on val after each trial (mean over seeds)",
        xlabel="completed trials",
        ylabel="hypervolume / dense box",
    )
    curve.legend(fontsize=7)
    figure.tight_layout()
    return figure


def print_table(reference: str, summaries: Sequence[Summary]) -> None:
    print(f"\nagainst {reference} (test split; gain and GFLOPs ratio against it, seed by seed)")
    print(f"{'method':>20} {'seeds':>5} {'mean map':>8} {'gain, points (low..high)':>25} "
          f"{'fewest GFLOPs @dense-1 (low..high)':>35} {'fewer':>7} {'hypervol':>8} "
          f"{'Spearman bn/pruned':>18} {'min':>6} {'time':>6}")  # fmt: skip
    for s in summaries:
        rho = "/".join(f"{s.spearman[k]:.2f}" for k in ("bn_map", "pruned_map") if k in s.spearman)
        print(f"{s.method:>20} {s.seeds:>5} {s.mean_map:8.4f} {s.gain:+8.2f} "
              f"({s.gain_low:+6.2f}..{s.gain_high:+6.2f}) {s.fewest_gflops:15.4f} "
              f"({s.fewest_gflops_low:.4f}..{s.fewest_gflops_high:.4f}) {s.fewer_gflops:6.2f}x "
              f"{s.hypervolume:8.4f} {rho or '-':>18} {s.minutes:6.1f} {s.minutes_vs:5.2f}x")  # fmt: skip


def report(runs: Sequence[Run], results: Path) -> int:
    """The table against each sweep and sensitivity sweep that ran, the JSON and the plot, and
    the targets of the best screened method."""
    from targets import Target, check  # bench/targets.py, beside this script

    references = [m for m in dict.fromkeys(r.method for r in runs) if not m.startswith(SCREEN)
                  and (is_sweep(m) or m.startswith(SENSITIVITY))]  # fmt: skip
    tables = {reference: summarise(runs, reference) for reference in references or [SWEEP]}
    print(f"\n{len(runs)} runs, {sum(r.minutes for r in runs):.1f} min of search in all; "
          f"mean map over {SAVINGS[0]:.0%}-{SAVINGS[1]:.0%} fewer GFLOPs than the dense model")  # fmt: skip
    for reference, summaries in tables.items():
        print_table(reference, summaries)
    payload = {
        "runs": [
            {
                **asdict(r),
                "mean_map": r.mean_map(),
                "hypervolume": r.hypervolume(),
                "fewest_gflops": r.fewest_gflops(),
                "front": r.front(),
            }
            for r in runs
        ],
        "against": {reference: [asdict(s) for s in table] for reference, table in tables.items()},
    }
    write_results(payload, plot(runs), results / "search-quality")
    print(f"written: {results / 'search-quality.json'}, {results / 'search-quality.png'}")
    screened = [m for m in dict.fromkeys(r.method for r in runs) if m.startswith(SCREEN)]
    sweeps = [m for m in references if is_sweep(m)]
    sensitivity = [m for m in references if m.startswith(SENSITIVITY)]
    if not (screened and sweeps and sensitivity):
        print("the targets need a screened method, a sweep and a sensitivity sweep")
        return 1
    # the best screened method by its mean map; each reference's own table has it per seed
    best = max(screened, key=lambda m: _row(tables[sweeps[0]], m).mean_map)
    gain = min(_row(tables[ref], best).gain for ref in sensitivity)
    fewer = min(_row(tables[ref], best).fewer_gflops for ref in sweeps)
    summary = _row(tables[sweeps[0]], best)
    by = "bn_map" if "bn_map" in summary.spearman else next(iter(summary.spearman), "bn_map")
    rho = summary.spearman.get(by, float("nan"))
    print(f"the best screened method: {best}; against the best of {', '.join(sensitivity)} "
          f"and the better of {', '.join(sweeps)}")  # fmt: skip
    return check(
        [
            Target(
                f"mean map gain of {best} over the best sensitivity sweep",
                gain,
                ">=",
                1.0,
                " points",
            ),
            Target(
                f"fewer GFLOPs at dense - 1 point, {best} vs the better sweep",
                fewer,
                ">=",
                1.8,
                "x",
            ),
            Target(f"Spearman of the screen's {by} and the finetuned map", rho, ">=", 0.8),
        ]
    )


def _row(summaries: Sequence[Summary], method: str) -> Summary:
    return next(s for s in summaries if s.method == method)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per run (default 12)")
    parser.add_argument("--epochs", type=int, default=2, help="finetune epochs per trial")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=DEFAULT_METHODS,
                        metavar="METHOD", help=f"of {', '.join(METHODS)} (default: "
                        f"{' '.join(DEFAULT_METHODS)})")  # fmt: skip
    parser.add_argument("--candidates", type=int, default=48,
                        help="the screened methods' candidates (default 48)")  # fmt: skip
    parser.add_argument("--screen-trials", type=int, default=4,
                        help="trials the screen's time costs the screened methods (default 4)")  # fmt: skip
    parser.add_argument("--experiment", type=Path, default=DEFAULT,
                        help="the experiment searched (default: experiments/default.yaml)")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override the experiment, as prune-search run --set")  # fmt: skip
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-quality")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--finished-only", action="store_true",
                        help="run nothing: report the runs that finished in --out")  # fmt: skip
    args = parser.parse_args()
    if not args.experiment.is_file():
        parser.error(f"--experiment {args.experiment}: no such file")
    if args.screen_trials >= args.trials - 1:
        parser.error("--screen-trials: leave the screened methods at least 2 trials")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    plans = [
        (method, seed, experiment(method, seed, args.trials, args.epochs, base=args.experiment,
                                  overrides=args.set, candidates=args.candidates,
                                  screen_trials=args.screen_trials))
        for seed in args.seeds
        for method in args.methods
    ]  # fmt: skip
    if not args.finished_only:
        prepare([raw for method, seed, raw in plans if seed == args.seeds[0]], args.out)
    runs = []
    for method, seed, raw in plans:
        if args.finished_only:
            finished = finished_variant(raw["name"], args.out)
            if finished is None:
                print(f"{args.out / raw['name']}: not finished, left out")
                continue
            runs.append(read_run(*finished[:1], method, seed, finished[1]))
        else:
            runs.append(run_one(raw, method, seed, args.out))
        logging.info("%s-s%d done: mean test map %.4f", method, seed, runs[-1].mean_map())
    print(f"the benchmark took {(time.perf_counter() - start) / 60:.1f} min")
    if not runs:
        print(f"{args.out}: no finished run of these methods and seeds to report")
        return 1
    return report(runs, args.results)


if __name__ == "__main__":
    sys.exit(main())
