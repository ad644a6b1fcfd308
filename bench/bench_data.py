"""Data pipeline against the training step: does the loader keep up with the model it feeds?

    python bench/bench_data.py [--batches 30] [--rounds 3] [--config FILE] [--set key.sub=value ...]

Measured side by side in one run, on the same cores, for an experiment (experiments/default.yaml
unless told): (a) the real `yolov2.engine.train_loader` (decode, darknet augmentation, collate, with
the config's workers) in images/s once its workers run; (b) the config's model doing forward,
region loss, backward and an SGD step on batches loaded beforehand, in images/s. The two alternate
for `--rounds` rounds and the best round of each counts, so a burst of load from elsewhere on the
machine skews neither. Target: the loader at least 3× the training step, so that it takes at most a
third of the cores from training. The synthetic data set is generated on first use (about 15 s).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from yolov2.config import ExperimentConfig, load_config
from yolov2.engine import load_splits, make_optimizer, memory_format, resolve_device, train_loader
from yolov2.loss import region_loss
from yolov2.model import YOLOv2, build_model
from yolov2.pipeline import architecture

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"
TARGET = 3.0
Batch = tuple[Tensor, list[dict[str, Any]]]


def endless(loader: torch.utils.data.DataLoader[Any]) -> Iterator[Batch]:
    """Batches across epochs; persistent workers carry on from one epoch to the next."""
    while True:
        yield from loader


def loader_images_per_s(batches: Iterator[Batch], count: int, prefetched: int) -> float:
    for _ in range(prefetched):  # drawn while the other side ran: not this round's work
        next(batches)
    images = 0
    start = time.perf_counter()
    for _ in range(count):
        images += len(next(batches)[0])
    return images / (time.perf_counter() - start)


def per_image_ms(dataset: Any, size: int, count: int) -> float:
    """One loader process's cost of an image (decode and augment), on one thread as in a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        for index in range(count):
            dataset[(index % len(dataset), size)]
        return (time.perf_counter() - start) / count * 1000
    finally:
        torch.set_num_threads(threads)


class TrainStep:
    """One step of `engine.train_one_epoch`, less the loader: forward, loss, backward, SGD."""

    def __init__(self, config: ExperimentConfig, num_classes: int, device: torch.device) -> None:
        arch = architecture(config.model, num_classes, config.data.input_size)
        self.model: YOLOv2 = build_model(arch).to(device).train()
        self.memory_format = memory_format(config.train)
        self.model = self.model.to(memory_format=self.memory_format)
        self.optimizer = make_optimizer(self.model, config.train)
        self.config, self.device = config, device

    def __call__(self, batch: Batch) -> int:
        inputs = batch[0].to(self.device).contiguous(memory_format=self.memory_format)
        targets = [
            {"boxes": t["boxes"].to(self.device), "labels": t["labels"].to(self.device)}
            for t in batch[1]
        ]
        use_amp = self.config.train.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_amp):
            output = self.model(inputs)
        # Past the prior warm-up: the state most of a run trains in.
        seen = self.config.loss.prior_warmup_images
        loss = region_loss(
            output, targets, self.model.arch.anchors, self.config.loss, seen=seen
        ).total
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.train.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.train.clip_grad_norm)
        self.optimizer.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return len(inputs)

    def images_per_s(self, batches: list[Batch], count: int) -> float:
        for batch in batches[:2]:  # warm-up: allocator, first-call dispatch
            self(batch)
        images = 0
        start = time.perf_counter()
        for i in range(count):
            images += self(batches[i % len(batches)])
        return images / (time.perf_counter() - start)


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--batches", type=int, default=30, help="timed batches per side per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    data, train = config.data, config.train
    splits = load_splits(data)
    device = resolve_device(train.device)
    print(
        f"{config.name}: {config.model.family} width {config.model.width} at {data.input_size}, "
        f"batch {train.batch_size}, {data.workers} workers, {len(splits.train)} training images, "
        f"{torch.get_num_threads()} threads, train step on {device}"
    )

    loader = train_loader(splits.train, data, train)
    ms = per_image_ms(loader.dataset, data.input_size, count=8 * train.batch_size)
    print(f"one loader process: {ms:.2f} ms an image (decode + augment), {1000 / ms:.0f} images/s")
    batches = endless(loader)
    step = TrainStep(config, len(splits.classes), device)
    preloaded = [next(batches) for _ in range(max(4, 2 * data.workers))]  # also starts the workers
    prefetched = data.workers * (loader.prefetch_factor or 0)

    loads, trains = [], []
    for _ in range(args.rounds):
        loads.append(loader_images_per_s(batches, args.batches, prefetched))
        trains.append(step.images_per_s(preloaded, args.batches))
    load, train_rate = max(loads), max(trains)
    print(f"loader:     {load:6.0f} images/s  (rounds {' '.join(f'{v:.0f}' for v in loads)})")
    print(
        f"train step: {train_rate:6.0f} images/s  (rounds {' '.join(f'{v:.0f}' for v in trains)})"
    )
    raise SystemExit(check([Target("loader / train step", load / train_rate, ">=", TARGET, "x")]))


if __name__ == "__main__":
    main()
