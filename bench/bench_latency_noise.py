"""Latency noise: one architecture (the default experiment's model) timed again and again while a
finetune runs beside it, the search's way and the old way side by side in one run.

The search's way (yolov2.latency.time_architecture): after 5 warm-up forwards, 10 blocks of 10
batch-1 forwards, the quietest block's median, at T = --cpus torch threads, on a slot of its own:
the finetune beside it runs at the machine's other CPUs' worth of threads (cores - T), as Ray's
accounting gives two trials side by side. Timed in turn with it on the same slot, under the same
load: a plain median of 30 forwards (what the quietest block adds). The old way
(yolov2.measure.latency_ms, as each trial called it): the median of 20 forwards after 3, at torch's
default threads (every core), beside a finetune at its default threads too. The loads alternate in
rounds, each started afresh, so the machine's other work hits every way.

Target: the spread of the search's way's figures, their interquartile range / their median, <= 5%
(the quartiles, so that one burst of work outside the bench does not decide it; (max - min) /
median is printed too). The other ways' spreads and their ratios to it are printed beside it, and
so is the floor: the search's way on the idle machine (no finetune beside it), in the same rounds.
Where that floor is above the target, no way of timing in the process can meet it on that machine.

    python bench/bench_latency_noise.py [--measurements 24] [--rounds 4] [--cpus 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from yolov2.latency import Method, device_name, time_architecture
from yolov2.model import Architecture

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"
PLAIN = Method(warmup=5, blocks=1, per_block=30)  # one block: a plain median of 30 forwards
# Other splits of the same 100 timed forwards, timed beside the search's way so that a change of
# the method rests on figures of one run: (blocks, per block).
SPLITS = [(10, 10), (20, 5), (100, 1)]
IDLE = "idle"  # no finetune beside: how much the machine itself moves the figure
# A finetune of the default model on random batches (batch 16 at 160, AdamW), until killed.
LOAD = """
import sys, torch
from yolov2.config import load_config
from yolov2.model import build_model
from yolov2.pipeline import architecture
torch.set_num_threads(int(sys.argv[1])) if sys.argv[1] != "default" else None
config = load_config(sys.argv[2])
size = config.data.input_size
model = build_model(architecture(config.model, len(config.data.classes), size)).train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.rand(16, 3, size, size)
print("ready", flush=True)
while True:
    optimizer.zero_grad()
    model(x).square().mean().backward()
    optimizer.step()
"""


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    from yolov2.config import load_config
    from yolov2.measure import latency_ms
    from yolov2.model import build_model
    from yolov2.pipeline import architecture

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measurements", type=int, default=24, help="per way, over all rounds")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--cpus", type=int, default=1, help="the trial's CPUs: T")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    config = load_config(DEFAULT)
    size = config.data.input_size
    arch = architecture(config.model, len(config.data.classes), size)
    cpu = torch.device("cpu")
    default_threads = torch.get_num_threads()
    model = build_model(arch).eval()

    slot = max(1, cores - args.cpus)  # the finetune beside the search's way: the other CPUs
    search_name = f"search: quietest block, {args.cpus} thr"
    plain_name = f"same slot: median of 30, {args.cpus} thr"
    old_name = f"old: median of 20, {default_threads} thr"
    idle_name = f"idle: quietest block, {args.cpus} thr"
    # Each load's ways, timed in turn (so the load's changes hit them alike), with its threads.
    loads: dict[str, dict[str, Callable[[], float]]] = {
        str(slot): {
            search_name: timer(arch, args.cpus, Method()),
            plain_name: timer(arch, args.cpus, PLAIN),
            **{
                f"lowest of {blocks} x {per}, {args.cpus} thr": timer(
                    arch, args.cpus, Method(5, blocks, per)
                )
                for blocks, per in SPLITS
                if Method(5, blocks, per) != Method()
            },
        },
        "default": {old_name: lambda: latency_ms(model, (size, size))},
        # the machine's own floor: the search's way with nothing beside it
        IDLE: {idle_name: timer(arch, args.cpus, Method())},
    }
    figures: dict[str, list[float]] = {name: [] for ways in loads.values() for name in ways}
    per_round = max(1, args.measurements // args.rounds)
    before = os.getloadavg()[0]  # work outside this bench shares the cores too
    for _ in range(args.rounds):
        for load_threads, ways in loads.items():
            with finetune_beside(load_threads):
                for _ in range(per_round):
                    for name, measure in ways.items():
                        figures[name].append(measure())
    print(
        f"{time.strftime('%Y-%m-%d')}, {device_name(cpu)}, {cores} cores; default model "
        f"(width {config.model.width}) at {size}x{size}, batch 1; beside a finetune at "
        f"{slot} thread(s) (search, same slot), {default_threads} (old) or none (idle); load "
        f"average before {before:.1f}, after {os.getloadavg()[0]:.1f} (1 min)"
    )
    spreads = print_table(figures)
    search = spreads[search_name]
    rounds = [
        figures[search_name][i : i + per_round]
        for i in range(0, len(figures[search_name]), per_round)
    ]
    print(
        "search's way by round (a new finetune beside it each): median (IQR/median) "
        + ", ".join(f"{statistics.median(r):.2f} ms ({iqr(r):.1%})" for r in rounds)
    )
    print(
        f"IQR/median old / search: {spreads[old_name] / search:.1f}x, same slot's plain median / "
        f"search: {spreads[plain_name] / search:.1f}x, search / idle machine: "
        f"{search / spreads[idle_name]:.1f}x ({per_round * args.rounds} figures each)"
    )
    target = Target("IQR/median of the search's way", search * 100, "<=", 5.0, "%")
    raise SystemExit(check([target]))


def timer(arch: Architecture, cpus: int, method: Method) -> Callable[[], float]:
    """One timing of `arch` by `method` on the CPU, as the search times it."""
    return lambda: time_architecture(arch, torch.device("cpu"), cpus, method).latency_ms


def print_table(figures: dict[str, list[float]]) -> dict[str, float]:
    """Each way's median, extremes and spreads; returns the IQR / median of each."""
    spreads: dict[str, float] = {}
    print(
        f"{'way':<32} {'median ms':>9} {'min':>7} {'max':>7} {'(max-min)/med':>14} {'IQR/med':>8}"
    )
    for name, values in figures.items():
        median = statistics.median(values)
        spreads[name] = iqr(values)
        print(
            f"{name:<32} {median:>9.2f} {min(values):>7.2f} {max(values):>7.2f} "
            f"{(max(values) - min(values)) / median:>13.1%} {spreads[name]:>8.1%}"
        )
    return spreads


def iqr(values: list[float]) -> float:
    """The interquartile range / the median."""
    q1, median, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / median


@contextmanager
def finetune_beside(threads: str) -> Iterator[None]:
    """A finetune in another process at `threads` torch threads ('default': torch's own choice),
    running from before the first timing to after the last; none at all for IDLE."""
    if threads == IDLE:
        yield
        return
    process = subprocess.Popen(
        [sys.executable, "-c", LOAD, threads, str(DEFAULT)],
        stdout=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"},
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()  # "ready": the model is built and the loop starts
        time.sleep(2.0)  # a few steps in
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
