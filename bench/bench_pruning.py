"""Pruning on the default synthetic task: does a much cheaper model keep the dense model's mAP?

Runs the default experiment's pipeline three ways on one machine, sharing one cached dense model:
no pruning (the dense baseline), filter pruning, and weight pruning, and prints their metrics side
by side. Targets: a filter-pruned model with >= 50% fewer FLOPs within 1 mAP point of the
dense model; weight pruning at 80% sparsity with size_mb <= 0.3 x dense.

    python bench/bench_pruning.py [--filter-ratio 0.34] [--weight-ratio 0.8] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from yolov2.config import load_config
from yolov2.pipeline import run

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filter-ratio", type=float, help="default: the experiment's prune.ratio")
    parser.add_argument("--weight-ratio", type=float, default=0.8)
    parser.add_argument(
        "--set", action="append", default=[], help="override, e.g. finetune.epochs=5"
    )
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.filter_ratio is None:
        args.filter_ratio = load_config(DEFAULT, args.set).prune.ratio
    variants = {
        "dense": ["prune.method=none"],
        f"filter {args.filter_ratio}": ["prune.method=filter", f"prune.ratio={args.filter_ratio}"],
        f"weight {args.weight_ratio}": ["prune.method=weight", f"prune.ratio={args.weight_ratio}"],
    }
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        for name, overrides in variants.items():
            config = load_config(DEFAULT, [*args.set, *overrides])
            results[name] = run(config, root / name.replace(" ", "_")).metrics
    keys = ("map", "map_voc12", "gflops", "params", "nonzero_params", "size_mb", "latency_ms")
    print(f"\n{'model':<12}" + "".join(f"{k:>15}" for k in keys))
    for name, metrics in results.items():
        print(f"{name:<12}" + "".join(f"{metrics[k]:>15.4g}" for k in keys))
    dense, filtered, weighted = results.values()
    print(
        f"weight: sparsity {weighted['sparsity']:.0%}, "
        f"map {100 * (weighted['map'] - dense['map']):+.1f} points vs dense"
    )
    fewer_flops = 100 * (1 - filtered["gflops"] / dense["gflops"])
    map_change = 100 * (filtered["map"] - dense["map"])
    size_ratio = weighted["size_mb"] / dense["size_mb"]
    raise SystemExit(
        check(
            [
                Target("filter: fewer FLOPs", fewer_flops, ">=", 50, "%"),
                Target("filter: map vs dense", map_change, ">=", -1, " points"),
                Target("weight: size / dense", size_ratio, "<=", 0.3),
            ]
        )
    )


if __name__ == "__main__":
    main()
