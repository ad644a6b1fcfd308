"""Filter pruning's real speedup: yolov2-voc at 416, uniform ratio 0.5, one CPU thread, batch 1.

Target: measured latency speedup >= 0.8 x the FLOPs reduction, parameters <= 35% of dense.
Dense and pruned forwards are timed interleaved, so load on the machine hits both alike.

    python bench/bench_prune_latency.py [--size 416] [--ratio 0.5] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Mapping

import torch

from yolov2.measure import count_params, gflops
from yolov2.model import build_model, yolov2_voc
from yolov2.prune import prune_filters


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=416)
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dense = build_model(yolov2_voc(input_size=(args.size, args.size))).eval()
    pruned = prune_filters(dense, [args.ratio]).eval()
    size = (args.size, args.size)
    flops = gflops(dense, size), gflops(pruned, size)
    params = count_params(dense)[0], count_params(pruned)[0]
    latency = interleaved_ms(
        {"dense": dense, "pruned": pruned}, torch.rand(1, 3, *size), args.repeats
    )
    flops_reduction = flops[0] / flops[1]
    speedup = latency["dense"] / latency["pruned"]
    print(
        f"yolov2-voc {args.size}x{args.size}, filter pruning uniform {args.ratio}, 1 thread, batch 1"
    )
    print(f"params   dense {params[0]:,}  pruned {params[1]:,}  ratio {params[1] / params[0]:.3f}")
    print(f"GFLOPs   dense {flops[0]:.2f}  pruned {flops[1]:.2f}  reduction {flops_reduction:.2f}x")
    print(
        f"latency  dense {latency['dense']:.0f} ms  pruned {latency['pruned']:.0f} ms  speedup {speedup:.2f}x"
    )
    raise SystemExit(
        check(
            [
                Target("params pruned / dense", params[1] / params[0], "<=", 0.35),
                Target("speedup / FLOPs reduction", speedup / flops_reduction, ">=", 0.8),
            ]
        )
    )


def interleaved_ms(
    models: Mapping[str, torch.nn.Module], x: torch.Tensor, repeats: int
) -> dict[str, float]:
    """The median forward time of each model on `x`, in ms, the models timed in turn within each
    repeat so that load on the machine hits them alike (one warm-up forward each first)."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)
        for _ in range(repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


if __name__ == "__main__":
    main()
