"""The default search, measured: its wall time, its orchestration overhead and what its front means.

Runs `prune-search run` on the default experiment into a temporary folder, with the dense stage
made first and the warm start's sensitivity table measured (each timed apart, each then in the
cache, as a second `make run` finds them), then prints side by side:
- the search's wall time and the ideal, the sum of the trials' own times (Ray's `time_total_s`)
  divided by the concurrency: their ratio is the orchestration overhead (target <= 1.10);
- the front: its points, the span of its GFLOPs (target >= 3x), and the cheapest pruned point within
  3 map points of the dense model (target >= 40% fewer GFLOPs);
- the wall time with the dense stage cached (target <= 15 minutes) and with it and the
  sensitivity (<= 25 minutes from a cold cache).
Exits non-zero when a target is missed.

    python bench/bench_search.py [--set key=value ...] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--set", action="append", default=[], help="override, e.g. search.num_samples=4"
    )
    parser.add_argument(
        "--keep", type=Path, help="write the experiment here (default: a temporary folder)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from search import tuner, warm_start
    from search.space import build_space
    from search.storage import Storage
    from search.trainable import RAY_DIR
    from yolov2.config import load_config
    from yolov2.engine import load_splits
    from yolov2.pipeline import CHECKPOINT_FILE, cached_dense, dense_folder

    config = load_config(DEFAULT, args.set)
    cold = not (dense_folder(config) / CHECKPOINT_FILE).is_file()
    start = time.perf_counter()
    splits = load_splits(config.data)  # generated on first use: part of a cold start
    cached_dense(config, splits)  # the dense stage into the cache, timed apart
    dense_s = time.perf_counter() - start if cold else 0.0
    with tempfile.TemporaryDirectory() as scratch:
        # the warm start's sensitivity table into the dense model's cache folder, timed apart
        start = time.perf_counter()
        space = build_space(config, str(DEFAULT))
        measured = warm_start.plan(config, space, Storage(str(Path(scratch) / "sensitivity")))
        sensitivity_s = time.perf_counter() - start if measured.table else 0.0
        storage = args.keep or Path(scratch)
        directory = (storage / config.name).resolve()
        start = time.perf_counter()
        outcome = tuner.run(config, str(DEFAULT), Storage(str(directory)), None)
        search_s = time.perf_counter() - start
        trial_s = _trial_seconds(directory / RAY_DIR)
        before = Before(dense_s, sensitivity_s)
        return report(outcome, config.search.max_concurrent, before, search_s, trial_s)


@dataclass(frozen=True)
class Before:
    """What the search reuses from the cache, timed apart: the dense stage (0: it was cached)
    and the warm start's sensitivity table (a second or two when cached, 0 without a warm start)."""

    dense_s: float
    sensitivity_s: float


def _trial_seconds(ray_dir: Path) -> list[float]:
    seconds = []
    for results in sorted(ray_dir.glob("trial_*/result.json")):
        last = json.loads(results.read_text().splitlines()[-1])
        seconds.append(float(last["time_total_s"]))
    return seconds


def report(
    outcome: object, concurrency: int, before: Before, search_s: float, trial_s: list[float]
) -> int:
    front = outcome.front  # type: ignore[attr-defined]
    table = front.table
    done = table[table["state"] == "COMPLETE"]
    dense = done[done["dense"].astype(bool)]
    points = front.points
    ideal = sum(trial_s) / concurrency
    overhead = search_s / ideal if ideal else float("inf")
    span = points["gflops"].max() / points["gflops"].min() if len(points) else 0.0
    dense_map = float(dense["map"].iloc[0]) if len(dense) else float("nan")
    dense_gflops = float(dense["gflops"].iloc[0]) if len(dense) else float("nan")
    close = done[(~done["dense"].astype(bool)) & (done["map"] >= dense_map - 0.03)]
    cheapest = close.sort_values("gflops").iloc[0] if len(close) else None
    saving = 1 - float(cheapest["gflops"]) / dense_gflops if cheapest is not None else 0.0

    print(f"\ndefault search: {len(table)} trials, {len(done)} completed, {concurrency} at a time")
    dense_s = before.dense_s
    cold_s = search_s + dense_s + before.sensitivity_s
    print(f"  data + dense stage:           {dense_s / 60:6.2f} min (0: it was cached)")
    print(f"  warm start's sensitivity:     {before.sensitivity_s / 60:6.2f} min")
    print(f"  search (dense cached):        {search_s / 60:6.2f} min   target <= 15")
    if dense_s > 0:
        print(
            f"  search + dense + sensitivity: {cold_s / 60:6.2f} min   "
            "target <= 25 from a cold cache"
        )
    else:
        print("  search + dense stage:         not measured (the dense stage was cached)")
    print(f"  ideal (sum of trials / {concurrency}):    {ideal / 60:6.2f} min")
    print(f"  orchestration overhead:       {overhead:6.3f}x    target <= 1.10")
    print(f"  front: {len(points)} points, GFLOPs span {span:.2f}x   targets >= 4 points, >= 3x")
    print(f"  dense: map {dense_map:.4f} at {dense_gflops:.4f} GFLOPs")
    if cheapest is not None:
        print(
            f"  cheapest within 3 map points: {cheapest['trial_id']} map {cheapest['map']:.4f} at "
            f"{cheapest['gflops']:.4f} GFLOPs ({saving:.0%} fewer)   target >= 40% fewer"
        )
    print(
        front.points[["trial_id", "map", "map_voc12", "gflops", "size_mb", "latency_ms"]].to_string(
            index=False
        )
    )
    from targets import Target, check  # bench/targets.py, beside this script

    targets = [
        Target("trials completed", len(done), ">=", 12),
        Target("search with the dense stage cached", search_s / 60, "<=", 15, " min"),
        Target("orchestration overhead", overhead, "<=", 1.10, "x"),
        Target("front points", len(points), ">=", 4),
        Target("front GFLOPs span", span, ">=", 3, "x"),
        Target("fewer GFLOPs within 3 map points of dense", 100 * saving, ">=", 40, "%"),
    ]
    if dense_s > 0:  # from a cold cache only
        targets.append(Target("search + dense stage", cold_s / 60, "<=", 25, " min"))
    return check(targets)


if __name__ == "__main__":
    sys.exit(main())
