"""Does the default experiment reach a real mAP on the CPU, on data hard enough to rank models?

Trains the default dense model and the same recipe at 1/8 of its width, one after the other on the
machine that runs it, and prints the wall time and VOC07 mAP of each. Targets: the default reaches
map >= 0.80 within 10 minutes of training on 2 CPU cores; 1/8 width scores >= 10 points lower.

    python bench/bench_train.py [--set key=value ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from yolov2.config import load_config
from yolov2.engine import load_splits
from yolov2.measure import count_params, gflops
from yolov2.pipeline import train_dense

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="override, e.g. train.epochs=20")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    config = load_config(DEFAULT, args.set)
    narrow = config.model_copy(
        update={"model": config.model.model_copy(update={"width": config.model.width / 8})}
    )
    splits = load_splits(config.data)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        for name, experiment in (("default", config), ("1/8 width", narrow)):
            start = time.perf_counter()
            stage = train_dense(experiment, splits, root / name.replace("/", "_").replace(" ", "_"))
            minutes = (time.perf_counter() - start) / 60
            size = (experiment.data.input_size,) * 2
            rows.append(
                (
                    name,
                    experiment.model.width,
                    count_params(stage.model)[0],
                    gflops(stage.model, size),
                    minutes,
                    stage.map,
                    stage.map_voc12,
                )
            )
    print(
        f"\n{'model':<10} {'width':>7} {'params':>10} {'GFLOPs':>7} {'minutes':>8} {'map':>6} {'map_voc12':>9}"
    )
    for name, width, params, flops, minutes, voc07, voc12 in rows:
        print(
            f"{name:<10} {width:>7.4g} {params:>10,} {flops:>7.3f} {minutes:>8.1f} {voc07:>6.3f} {voc12:>9.3f}"
        )
    gap = (rows[0][5] - rows[1][5]) * 100
    raise SystemExit(
        check(
            [
                Target("default map (VOC07 11-point)", rows[0][5], ">=", 0.80),
                Target("default training time", rows[0][4], "<=", 10, " min"),
                Target("1/8 width below the default", gap, ">=", 10, " map points"),
            ]
        )
    )


if __name__ == "__main__":
    main()
