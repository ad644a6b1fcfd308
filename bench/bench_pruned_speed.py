"""Pruned speed against its limit: latency against FLOPs for filter pruning at several ratios, at
batch 1 and batch 16, on the CPU (one thread): the measured speedup as a fraction of the FLOPs
reduction (1.0 would be the ideal: every FLOP removed is time saved).

The dense model and every pruned one are timed in turn within each repeat (bench_prune_latency's
`interleaved_ms`), so load on the machine hits them alike. yolov2-voc at 416 by default.

    python bench/bench_pruned_speed.py [--size 416] [--ratios 0.25 0.5 0.75] [--batches 1 16]
"""

from __future__ import annotations

import argparse

import torch

from yolov2.measure import gflops
from yolov2.model import build_model, yolov2_voc
from yolov2.prune import prune_filters


def main() -> None:
    from bench_prune_latency import interleaved_ms  # beside this script
    from targets import Target, check

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = (args.size, args.size)
    dense = build_model(yolov2_voc(input_size=size)).eval()
    models = {"dense": dense, **{f"{r:g}": prune_filters(dense, [r]).eval() for r in args.ratios}}
    flops = {name: gflops(model, size) for name, model in models.items()}
    print(f"yolov2-voc {args.size}x{args.size}, filter pruning (uniform ratios), 1 thread, CPU")
    print(
        f"{'batch':>5} {'ratio':>6} {'GFLOPs':>8} {'ms':>9} {'FLOPs red.':>10} {'speedup':>8} {'fraction':>9}"
    )
    fractions: dict[tuple[int, str], float] = {}
    for batch in args.batches:
        latency = interleaved_ms(models, torch.rand(batch, 3, *size), args.repeats)
        for name in models:
            reduction = flops["dense"] / flops[name]
            speedup = latency["dense"] / latency[name]
            fractions[batch, name] = speedup / reduction
            print(
                f"{batch:>5} {name:>6} {flops[name]:>8.2f} {latency[name]:>9.1f} "
                f"{reduction:>9.2f}x {speedup:>7.2f}x {speedup / reduction:>9.2f}"
            )
    # The bound, at half the filters and batch 1; the other rows are the curve, not targets.
    half = fractions.get((1, "0.5"))
    checked = (
        []
        if half is None
        else [Target("speedup / FLOPs reduction at 0.5, batch 1", half, ">=", 0.8)]
    )
    raise SystemExit(check(checked))


if __name__ == "__main__":
    main()
