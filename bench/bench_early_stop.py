"""Early stopping at equal wall time: none, Ray's ASHA on map alone, and the front stopper.

On the default task (its cached dense model and its space, TPE; known points the dense model and
uniform ratios 0.3 and 0.5; without its warm start, so that every trial after the known points is
the sampler's), each rule runs the same number of trials on each seed (the sampler's and the
finetune's), with the default finetune budget, so that stopping has epochs to save:
- `none`: every trial finetunes to the end (one evaluation, at the end);
- `asha`: `search.early_stop: {rule: asha, every: E}`: Ray's ASHA on map alone;
- `front`: `search.early_stop: {every: E}`: a trial stops when a completed trial of no more GFLOPs
  had a map at least 0.02 higher at the same epoch.
A run's clock starts when its first trial starts. At every `--unit` minutes up to the end of the
shortest run of the seed (equal wall time), and at each run's end: the hypervolume of the front of
the trials completed by then, (map, GFLOPs) with the reference (map 0, the dense model's GFLOPs),
over the dense model's box; and how many trials completed and stopped. Targets, on the mean over
seeds at the seed's common end: the front stopper's hypervolume minus no stopping's, and minus
ASHA's, each >= 0.
Each run is a real `prune-search run` into `--out/<rule>-s<seed>`; a finished run is read back.

    python bench/bench_early_stop.py [--trials 12] [--epochs 5] [--every 2] [--seeds 0 1]
        [--unit 5] [--out runs/bench-early-stop] [--results bench/results]
"""

from __future__ import annotations

import argparse
import json
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
    run_variant,
    write_results,
)

RULES = ("none", "asha", "front")
MARGIN = 0.02
KNOWN = [0.0, 0.3, 0.5]  # the known points: the dense model, uniform 0.3 and 0.5


@dataclass(frozen=True)
class Timeline:
    """One rule on one seed: each trial's end (seconds after the first trial started), state,
    map and GFLOPs."""

    rule: str
    seed: int
    ends: tuple[float, ...]
    states: tuple[str, ...]
    maps: tuple[float, ...]
    gflops: tuple[float, ...]
    dense_map: float
    dense_gflops: float

    @property
    def duration(self) -> float:
        return max(self.ends, default=0.0)

    def hypervolume_at(self, seconds: float) -> float:
        """The hypervolume of the trials completed by `seconds`, over the dense model's box."""
        done = [
            (m, c)
            for end, state, m, c in zip(self.ends, self.states, self.maps, self.gflops, strict=True)
            if state == "COMPLETE" and end <= seconds
        ]
        maps, costs = [m for m, _ in done], [c for _, c in done]
        return box_hypervolume(maps, costs, self.dense_map, self.dense_gflops)

    def count(self, state: str, seconds: float = float("inf")) -> int:
        return sum(
            1
            for end, s in zip(self.ends, self.states, strict=True)
            if s == state and end <= seconds
        )


def experiment(rule: str, seed: int, trials: int, epochs: int, every: int) -> dict[str, Any]:
    """The default experiment with `rule`'s early stopping on `seed`, as the YAML's raw mapping."""
    raw = default_experiment(f"{rule}-s{seed}")
    raw["finetune"].update(epochs=epochs, seed=seed)
    raw["search"].update(num_samples=trials, seed=seed, known_points=KNOWN)
    # the sampler's trials after the known points: no warm start, no screen
    for key in ("warm_start", "warm_start_budgets", "screen"):
        raw["search"].pop(key, None)
    if rule != "none":
        raw["search"]["early_stop"] = {"rule": rule, "every": every, "margin": MARGIN}
    return raw


def read_timeline(directory: Path, rule: str, seed: int) -> Timeline:
    """Each trial's state and values (trials.csv) and its end on the clock (Ray's result.json:
    each report's timestamp, and the trial's own seconds at its first report)."""
    import pandas as pd

    table = pd.read_csv(directory / "trials.csv")
    starts, ends = {}, {}
    for trial_id in table["trial_id"]:
        rows = [
            json.loads(line)
            for line in (directory / "ray" / f"trial_{trial_id}" / "result.json")
            .read_text()
            .splitlines()
        ]
        starts[trial_id] = rows[0]["timestamp"] - rows[0]["time_total_s"]
        ends[trial_id] = rows[-1]["timestamp"]
    origin = min(starts.values())
    dense = table[table["dense"].astype(bool)].iloc[0]
    return Timeline(
        rule,
        seed,
        tuple(float(ends[t] - origin) for t in table["trial_id"]),
        tuple(str(s) for s in table["state"]),
        tuple(float(m) for m in table["map"]),
        tuple(float(c) for c in table["gflops"]),
        float(dense["dense_map"]),
        float(dense["gflops"]),
    )


def compare(timelines: Sequence[Timeline], unit_s: float) -> dict[str, Any]:
    """Per seed, the hypervolume of each rule at each unit up to the seed's shortest run, and at
    that common end; over seeds, the mean at the common end per rule."""
    seeds: dict[int, dict[str, Any]] = {}
    for seed in sorted({t.seed for t in timelines}):
        runs = [t for t in timelines if t.seed == seed]
        end = min(t.duration for t in runs)
        marks = [*np.arange(unit_s, end, unit_s).tolist(), end]
        seeds[seed] = {
            "common_end_s": end,
            "marks_s": marks,
            "hypervolume": {t.rule: [t.hypervolume_at(m) for m in marks] for t in runs},
            "at_end": {
                t.rule: {
                    "duration_s": t.duration,
                    "hypervolume": t.hypervolume_at(t.duration),
                    "completed": t.count("COMPLETE"),
                    "stopped": t.count("PRUNED"),
                    "completed_by_common_end": t.count("COMPLETE", end),
                }
                for t in runs
            },
        }
    rules = list(dict.fromkeys(t.rule for t in timelines))
    mean = {
        rule: float(
            np.mean(
                [s["hypervolume"][rule][-1] for s in seeds.values() if rule in s["hypervolume"]]
            )
        )
        for rule in rules
    }
    return {"seeds": seeds, "mean_at_common_end": mean}


def plot(timelines: Sequence[Timeline]) -> Any:
    """The hypervolume against wall time, a panel per seed, the rules overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({t.seed for t in timelines})
    figure, axes = plt.subplots(1, len(seeds), figsize=(5.5 * len(seeds), 4.2), squeeze=False)
    for axis, seed in zip(axes[0], seeds, strict=True):
        lowest = 1.0
        for index, line in enumerate(t for t in timelines if t.seed == seed):
            clock = np.array(sorted({0.0, *line.ends, line.duration}))
            label = f"{line.rule} ({line.count('COMPLETE')} done, {line.count('PRUNED')} stopped)"
            values = [line.hypervolume_at(s) for s in clock]
            axis.step(clock / 60, values, where="post", color=f"C{index}", label=label)
            lowest = min([lowest, *(v for v in values if v > 0)])
        # from just below the first front of two points: the rules differ above it, not at 0
        axis.set_ylim(bottom=lowest - 0.02)
        axis.set(title=f"seed {seed}", xlabel="wall time (min)", ylabel="hypervolume / dense box")
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def report(timelines: Sequence[Timeline], unit_s: float, results: Path) -> int:
    comparison = compare(timelines, unit_s)
    for seed, rows in comparison["seeds"].items():
        print(
            f"\nseed {seed}: hypervolume / dense box every {unit_s / 60:g} min, to the shortest "
            f"run's end ({rows['common_end_s'] / 60:.1f} min)"
        )
        print("  minutes " + " ".join(f"{m / 60:7.1f}" for m in rows["marks_s"]))
        for rule, values in rows["hypervolume"].items():
            end = rows["at_end"][rule]
            print(
                f"  {rule:>7} " + " ".join(f"{v:7.4f}" for v in values)
                + f"   | own end {end['duration_s'] / 60:.1f} min: {end['hypervolume']:.4f}, "
                f"{end['completed']} completed, {end['stopped']} stopped"
            )  # fmt: skip
    mean = comparison["mean_at_common_end"]
    print("\nmean at the common end: " + ", ".join(f"{r} {v:.4f}" for r, v in mean.items()))
    payload = {"timelines": [asdict(t) for t in timelines], **comparison}
    write_results(payload, plot(timelines), results / "early-stop")
    print(f"written: {results / 'early-stop.json'}, {results / 'early-stop.png'}")

    from targets import Target, check  # bench/targets.py, beside this script

    if not {"none", "asha", "front"} <= set(mean):
        print("the comparison needs all three rules: no targets to check")
        return 1
    over_none, over_asha = mean["front"] - mean["none"], mean["front"] - mean["asha"]
    return check(
        [
            Target("hypervolume at equal wall time, front stopper - none", over_none, ">=", 0.0),
            Target("hypervolume at equal wall time, front stopper - ASHA", over_asha, ">=", 0.0),
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12, help="trials per run (default 12)")
    parser.add_argument("--epochs", type=int, default=5, help="finetune epochs per trial")
    parser.add_argument("--every", type=int, default=2, help="epochs between evaluations")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--rules", nargs="+", choices=RULES, default=list(RULES))
    parser.add_argument("--unit", type=float, default=5.0, help="minutes between comparisons")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-early-stop")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    start = time.perf_counter()
    timelines = []
    for seed in args.seeds:
        for rule in args.rules:
            raw = experiment(rule, seed, args.trials, args.epochs, args.every)
            directory, _minutes = run_variant(raw, args.out)
            timelines.append(read_timeline(directory, rule, seed))
    print(f"the benchmark took {(time.perf_counter() - start) / 60:.1f} min")
    return report(timelines, args.unit * 60, args.results)


if __name__ == "__main__":
    sys.exit(main())
