"""The GPU path in one command: is training on CUDA right, how fast is it, and what limits it.

Six parts, measured side by side in one run, each within its own time budget (all of them in at
most 8 minutes on one H200), into one JSON file and one printed table, the card, torch and CUDA
versions and the date first:

- correctness: a checkpoint's raw head output and map on the same images on the CPU in float32,
  on the device in float32 and in bfloat16 autocast (differences over the output's range); and a
  few hundred bfloat16 training steps of full YOLOv2 at 416 (engine.train_one_epoch) whose loss
  must stay finite and fall;
- train speed: full YOLOv2 at 416, batch 64: images/s and peak memory in float32 and bfloat16,
  channels-last on and off, torch.compile on and off (with its compile time), and the same for
  filter-pruned models at ratios 0.25, 0.5 and 0.75 (a trial's finetune);
- loader: the voc2007 input pipeline (JPEG decode, darknet's augmentation, multi-scale) on
  VOC-sized JPEGs written here, at 4, 8 and 15 workers, against the training step's rate;
- pruned inference: batch 1 and 64 in bfloat16, eager and CUDA-graphed: the speedup as a fraction
  of the FLOPs reduction, as bench/bench_pruned_speed.py measures it on the CPU;
- latency_ms as the search measures it (yolov2.latency.time_architecture), repeated: its spread;
- two trials on one GPU: two processes finetuning side by side (search.gpus_per_trial 0.5), each
  one's images/s against one alone.

On the GPU machine, from the repository root (its python3 has torch but not pydantic: the wheels
in .whl/ are pydantic and its dependencies, for CPython 3.12 on x86_64):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && PYTHONUNBUFFERED=1 python3 bench/bench_gpu.py --out $OUT/gpu.json

On the CPU, every part on tiny sizes, in seconds (tests/test_bench_gpu.py runs this; a part that
needs CUDA says so in its row instead of a figure):

    python bench/bench_gpu.py --device cpu --quick [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from yolov2.checkpoint import load_checkpoint, save_checkpoint
from yolov2.config import DataConfig, TrainConfig, load_config
from yolov2.data import SYNTHETIC_CLASSES, TargetBatch, make_synthetic_voc
from yolov2.engine import (
    TrainState,
    compiled,
    eval_loader,
    evaluate,
    load_splits,
    make_optimizer,
    memory_format,
    train_loader,
    train_one_epoch,
)
from yolov2.latency import Method, device_name, time_architecture
from yolov2.loss import LossConfig
from yolov2.measure import gflops
from yolov2.model import Architecture, YOLOv2, build_model
from yolov2.pipeline import architecture
from yolov2.prune import prune_filters

REPO = Path(__file__).resolve().parents[1]
VOC2007 = REPO / "experiments" / "voc2007.yaml"
RESULTS = REPO / "bench" / "results"
RATIOS = (0.25, 0.5, 0.75)
Batch = tuple[Tensor, TargetBatch]


@dataclass(frozen=True)
class Sizes:
    """How big each part runs: the real voc2007 model, or tiny ones for --quick."""

    width: float = 1.0
    input_size: int = 416
    batch: int = 64
    train_steps: int = 300  # correctness: bf16 steps of the full model
    train_batch: int = 16
    images: int = 64  # synthetic training and evaluation images
    compare_images: int = 32
    warmup_steps: int = 3
    timed_steps: int = 10
    loader_workers: tuple[int, ...] = (4, 8, 15)
    loader_images: int = 640
    loader_batches: int = 8
    latency_repeats: int = 5
    latency_threads: int = 4  # the voc2007 search's cpus_per_trial
    inference_repeats: int = 20
    trial_steps: int = 15
    compile: bool = True
    seconds: float = 480.0  # the whole run's budget


QUICK = Sizes(
    width=0.125, input_size=64, batch=4, train_steps=24, train_batch=4, images=8,
    compare_images=4, warmup_steps=1, timed_steps=2, loader_workers=(1, 2), loader_images=16,
    loader_batches=2, latency_repeats=2, latency_threads=1, inference_repeats=2, trial_steps=2,
    compile=False, seconds=600.0,
)  # fmt: skip
# Each part's share of the whole run's budget; a part that runs out leaves its remaining rows
# with the reason instead of a figure.
SHARES = {
    "correctness": 0.17,
    "train_speed": 0.38,
    "loader": 0.12,
    "pruned_inference": 0.12,
    "latency": 0.06,
    "two_trials": 0.15,
}


def na(reason: str) -> dict[str, str]:
    """A row's figure that this run cannot give, and why."""
    return {"n/a": reason}


class Budget:
    """A part's deadline: `left()` seconds remain."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def full_arch(sizes: Sizes, num_classes: int = 20) -> Architecture:
    """The voc2007 experiment's dense model (its model section) at the run's width and size."""
    model = load_config(VOC2007).model.model_copy(update={"width": sizes.width, "darknet": None})
    return architecture(model, num_classes, sizes.input_size)


def pruned_models(dense: YOLOv2) -> dict[str, YOLOv2]:
    return {"dense": dense, **{f"{r:g}": prune_filters(dense, [r]) for r in RATIOS}}


def random_batch(sizes: Sizes, batch: int, pin: bool, seed: int = 0) -> Batch:
    """Images in [0, 1] and 1-6 random boxes each, as the loader would give them."""
    generator = torch.Generator().manual_seed(seed)
    side = sizes.input_size
    images = torch.rand(batch, 3, side, side, generator=generator)
    targets = []
    for _ in range(batch):
        count = int(torch.randint(1, 7, (1,), generator=generator))
        corner = torch.rand(count, 2, generator=generator) * side * 0.6
        extent = (torch.rand(count, 2, generator=generator) * 0.4 + 0.05) * side
        boxes = torch.cat([corner, corner + extent], 1)
        labels = torch.randint(0, 20, (count,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return (images.pin_memory() if pin else images), TargetBatch(targets)


# --- 1. correctness -------------------------------------------------------------------------------


def synthetic_data(root: Path, sizes: Sizes) -> DataConfig:
    """A small synthetic VOC set written under `root`, trained and evaluated on (as smoke.yaml):
    the same images on every device, a model that learns them within the run."""
    side = max(sizes.input_size, 64)
    make_synthetic_voc(
        root, num_trainval=sizes.images, num_test=4, image_size=(side, side * 3 // 2),
        classes=SYNTHETIC_CLASSES[:5], objects_per_image=(1, 2), object_size=(0.3, 0.6),
        clutter=0, noise=0.0, workers=4,
    )  # fmt: skip
    return DataConfig.model_validate(
        {
            "root": root,
            "classes": list(SYNTHETIC_CLASSES[:5]),
            "train_sets": [("2007", "trainval")],
            "test_sets": [("2007", "trainval")],
            "input_size": sizes.input_size,
            "workers": 0,
            "augment": {"jitter": 0, "hue": 0, "saturation": 1, "exposure": 1, "flip": False},
        }
    )


def correctness(
    device: torch.device, sizes: Sizes, scratch: Path, budget: Budget
) -> dict[str, Any]:
    data = synthetic_data(scratch / "synthetic" / "VOCdevkit", sizes)
    splits = load_splits(data)
    arch = full_arch(sizes, len(splits.classes))
    torch.manual_seed(0)
    model = build_model(arch).to(device)
    training = train_bf16(
        model, annotations=splits.train, data=data, device=device, sizes=sizes, budget=budget
    )
    checkpoint = save_checkpoint(model.cpu(), scratch / "trained.safetensors")
    images = splits.train[: sizes.compare_images]
    runs = {"cpu fp32": (torch.device("cpu"), False)}
    if device.type == "cuda":
        runs["cuda fp32"] = (device, False)
    runs[f"{device.type} bf16"] = (device, True)
    dataset = eval_loader(images, data, 1).dataset
    batch = torch.stack([dataset[i][0] for i in range(len(images))])
    outputs, maps = {}, {}
    for name, (where, bf16) in runs.items():
        loaded = load_checkpoint(checkpoint, where).eval()
        with torch.no_grad(), autocast(where, bf16):
            outputs[name] = loaded(batch.to(where)).float().cpu()
        with autocast(where, bf16):
            found = evaluate(loaded, eval_loader(images, data, 8), images, splits.classes, where)
        maps[name] = found["map"]
    reference = outputs["cpu fp32"]
    spread = float(reference.max() - reference.min())
    compare: dict[str, Any] = {}
    for name in ("cuda fp32", f"{device.type} bf16"):
        if name not in outputs:
            compare[name] = na("no CUDA device: the CPU's float32 run is the reference itself")
            continue
        difference = (outputs[name] - reference).abs()
        compare[name] = {
            "max_abs": float(difference.max()),
            "max_over_range": float(difference.max()) / spread,
            "mean_over_range": float(difference.mean()) / spread,
            "map": maps[name],
            "map_difference": maps[name] - maps["cpu fp32"],
        }
    return {
        "output_range": spread,
        "map_cpu_fp32": maps["cpu fp32"],
        "compare": compare,
        "training": training,
    }


def train_bf16(
    model: YOLOv2,
    *,
    annotations: list[Any],
    data: DataConfig,
    device: torch.device,
    sizes: Sizes,
    budget: Budget,
) -> dict[str, Any]:
    """`sizes.train_steps` steps of the real loop (bf16 autocast on CUDA; the CPU trains in
    float32) on the synthetic images, the loss read every 10 steps."""
    train = TrainConfig(
        batch_size=sizes.train_batch, optimizer="adamw", lr=1e-3, weight_decay=0.01, burn_in=20,
        schedule="constant", amp=True, channels_last=True, device=device.type,
    )  # fmt: skip
    loader = train_loader(annotations, data, train)
    batches = list(loader)
    model.to(memory_format=memory_format(train))
    optimizer = make_optimizer(model, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = TrainState(seen=LossConfig().prior_warmup_images)  # past the prior warm-up
    losses: list[float] = []
    per_call = max(1, min(10, sizes.train_steps // 6))  # steps between loss readings
    while state.step < sizes.train_steps and budget.left() > 0:
        chunk = [batches[(state.step + i) % len(batches)] for i in range(per_call)]
        metrics = train_one_epoch(
            model, chunk,  # type: ignore[arg-type]
            optimizer=optimizer, scheduler=scheduler, loss_config=LossConfig(), device=device,
            state=state, train=train, desc="correctness",
        )  # fmt: skip
        losses.append(metrics["loss/total"])
    model.to(memory_format=torch.contiguous_format)
    quarter = max(1, len(losses) // 4)
    first, last = statistics.mean(losses[:quarter]), statistics.mean(losses[-quarter:])
    return {
        "precision": "bf16 autocast" if device.type == "cuda" else "fp32 (the loop's CPU form)",
        "steps": state.step,
        "batch": sizes.train_batch,
        "steps_per_loss": per_call,
        "losses": losses,
        "finite": all(math.isfinite(v) for v in losses),
        "first_quarter": first,
        "last_quarter": last,
        "last_over_first": last / first,
    }


# --- 2. train speed -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    model: str  # dense or a filter-pruning ratio
    bf16: bool
    channels_last: bool
    compile: bool


def train_settings() -> list[Setting]:
    dense = [
        Setting("dense", bf16, layout, False) for bf16 in (False, True) for layout in (True, False)
    ]
    compiled_rows = [Setting("dense", True, True, True), Setting("dense", False, True, True)]
    pruned = [Setting(f"{r:g}", True, True, c) for c in (False, True) for r in RATIOS]
    return [*dense, *pruned[:3], compiled_rows[0], *pruned[3:], compiled_rows[1]]


def train_speed(device: torch.device, sizes: Sizes, budget: Budget) -> dict[str, Any]:
    torch.manual_seed(0)
    models = pruned_models(build_model(full_arch(sizes)))
    batch = random_batch(sizes, sizes.batch, pin=device.type == "cuda")
    rows = []
    for setting in train_settings():
        row: dict[str, Any] = asdict(setting)
        if setting.compile and not sizes.compile:
            row.update(na("not in --quick: compiling takes longer than the whole quick run"))
        elif budget.left() < (60 if setting.compile else 10):
            row.update(na("over this part's time budget"))
        else:
            row.update(time_steps(models[setting.model], batch, setting, device, sizes))
        rows.append(row)
        del row
    return {"batch": sizes.batch, "input_size": sizes.input_size, "rows": rows}


def time_steps(
    model: YOLOv2, batch: Batch, setting: Setting, device: torch.device, sizes: Sizes
) -> dict[str, Any]:
    """images/s of engine.train_one_epoch on one batch over and over (loader left out), peak
    memory, and for a compiled model the first call's extra time (the compile)."""
    model = _copy(model).to(device)
    train = TrainConfig(
        batch_size=sizes.batch, amp=setting.bf16, channels_last=setting.channels_last,
        compile=setting.compile, device=device.type,
    )  # fmt: skip
    model.to(memory_format=memory_format(train))
    optimizer = make_optimizer(model, train)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    forward = compiled(model) if setting.compile else None
    state = TrainState(seen=LossConfig().prior_warmup_images)

    def run(steps: int) -> tuple[float, float]:
        sync(device)
        start = time.perf_counter()
        metrics = train_one_epoch(
            model, [batch] * steps,  # type: ignore[arg-type]
            optimizer=optimizer, scheduler=scheduler, loss_config=LossConfig(), device=device,
            state=state, train=train, desc="speed", forward=forward,
        )  # fmt: skip
        sync(device)
        return time.perf_counter() - start, metrics["loss/total"]

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    first_s, _ = run(sizes.warmup_steps)
    timed_s, loss = run(sizes.timed_steps)
    step_s = timed_s / sizes.timed_steps
    result: dict[str, Any] = {
        "images_per_s": sizes.batch / step_s,
        "step_ms": step_s * 1e3,
        "loss": loss,
        "peak_memory_gb": (
            torch.cuda.max_memory_allocated(device) / 2**30
            if device.type == "cuda"
            else na("the CPU allocator keeps no peak")
        ),
    }
    if setting.compile:
        result["compile_s"] = first_s - sizes.warmup_steps * step_s
    return result


def _copy(model: YOLOv2) -> YOLOv2:
    fresh = build_model(model.arch)
    fresh.load_state_dict(model.state_dict())
    return fresh


# --- 3. loader ------------------------------------------------------------------------------------


def loader_part(
    device: torch.device, sizes: Sizes, scratch: Path, step_rate: float | None, budget: Budget
) -> dict[str, Any]:
    """The voc2007 train loader (its augmentation, multi-scale sizes, batch, pinned for CUDA) on
    synthetic JPEGs of VOC's sizes (about 500 x 375), at each worker count."""
    config = load_config(VOC2007)
    root = scratch / "voc-sized" / "VOCdevkit"
    start = time.perf_counter()
    make_synthetic_voc(
        root, num_trainval=sizes.loader_images, num_test=4, image_size=(333, 500),
        classes=SYNTHETIC_CLASSES, workers=min(8, os.cpu_count() or 1),
    )  # fmt: skip
    written_s = time.perf_counter() - start
    data = config.data.model_copy(
        update={
            "root": root,
            "classes": list(SYNTHETIC_CLASSES),
            "train_sets": [("2007", "trainval")],
            "val_sets": [],  # every image trains: the loader alone is timed
            "test_sets": [("2007", "test")],
        }
    )
    splits = load_splits(data)
    train = config.train.model_copy(update={"batch_size": sizes.batch, "device": device.type})
    rows = []
    for workers in sizes.loader_workers:
        row: dict[str, Any] = {"workers": workers}
        if budget.left() < 5:
            row.update(na("over this part's time budget"))
        else:
            row["images_per_s"] = loader_rate(splits.train, data, train, workers, sizes)
            if step_rate is not None:
                row["over_step"] = row["images_per_s"] / step_rate
        rows.append(row)
    return {
        "images_written": sizes.loader_images,
        "write_s": written_s,
        "batch": sizes.batch,
        "multiscale": train.multiscale,
        "step_images_per_s": step_rate if step_rate is not None else na("no train step timed"),
        "rows": rows,
    }


def loader_rate(
    annotations: list[Any], data: DataConfig, train: TrainConfig, workers: int, sizes: Sizes
) -> float:
    loader = train_loader(annotations, data.model_copy(update={"workers": workers}), train)
    batches = iter(loader)
    next(batches)  # the workers start
    images = 0
    start = time.perf_counter()
    for _ in range(sizes.loader_batches):
        images += len(next(batches)[0])
    rate = images / (time.perf_counter() - start)
    del batches, loader
    return rate


# --- 4. pruned inference --------------------------------------------------------------------------


def pruned_inference(device: torch.device, sizes: Sizes, budget: Budget) -> dict[str, Any]:
    torch.manual_seed(0)
    side = (sizes.input_size, sizes.input_size)
    models = {
        k: m.to(device).eval() for k, m in pruned_models(build_model(full_arch(sizes))).items()
    }
    flops = {name: gflops(model, side) for name, model in models.items()}
    rows = []
    for batch in (1, sizes.batch):
        x = torch.rand(batch, 3, *side, device=device)
        eager = interleaved_ms({k: _bf16_forward(m, x) for k, m in models.items()}, device, sizes)
        graphed: dict[str, float] | dict[str, str]
        if device.type != "cuda":
            graphed = na("CUDA graphs need a CUDA device")
        elif budget.left() < 10:
            graphed = na("over this part's time budget")
        else:
            graphed = interleaved_ms(
                {k: _graphed(_bf16_forward(m, x), device) for k, m in models.items()}, device, sizes
            )
        for name in models:
            reduction = flops["dense"] / flops[name]
            row: dict[str, Any] = {"batch": batch, "model": name, "gflops": flops[name]}
            row["flops_reduction"] = reduction
            for kind, times in (("eager", eager), ("graphed", graphed)):
                if "n/a" in times:
                    row[kind] = times
                    continue
                speedup = times["dense"] / times[name]  # type: ignore[operator]
                row[kind] = {"ms": times[name], "speedup": speedup, "fraction": speedup / reduction}
            rows.append(row)
    return {"precision": "bf16 autocast", "rows": rows}


def _bf16_forward(model: YOLOv2, x: Tensor) -> Callable[[], Tensor]:
    def forward() -> Tensor:
        with torch.inference_mode(), autocast(x.device, True):
            output: Tensor = model(x)
        return output

    return forward


def _graphed(forward: Callable[[], Tensor], device: torch.device) -> Callable[[], Tensor]:
    """`forward` captured once in a CUDA graph and replayed: the same kernels, launched at once."""
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm-up on a side stream, as capture requires
            forward()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        output: Tensor = forward()

    def replay() -> Tensor:
        graph.replay()
        return output

    return replay


def interleaved_ms(
    forwards: dict[str, Callable[[], Tensor]], device: torch.device, sizes: Sizes
) -> dict[str, float]:
    """Median ms of each forward, the models timed in turn within each repeat (as
    bench_prune_latency.interleaved_ms does, synchronising on CUDA)."""
    times: dict[str, list[float]] = {name: [] for name in forwards}
    for forward in forwards.values():
        forward()
    for _ in range(sizes.inference_repeats):
        for name, forward in forwards.items():
            sync(device)
            start = time.perf_counter()
            forward()
            sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


# --- 5. latency_ms --------------------------------------------------------------------------------


def latency(device: torch.device, sizes: Sizes, budget: Budget) -> dict[str, Any]:
    """yolov2.latency.time_architecture (the search's latency_ms) of the dense and the half-pruned
    model, `sizes.latency_repeats` times each, in turn: the spread of the figure."""
    torch.manual_seed(0)
    dense = build_model(full_arch(sizes))
    archs = {"dense": dense.arch, "0.5": prune_filters(dense, [0.5]).arch}
    figures: dict[str, list[float]] = {name: [] for name in archs}
    for _ in range(sizes.latency_repeats):
        if budget.left() < 5:
            break
        for name, arch in archs.items():
            timing = time_architecture(arch, device, sizes.latency_threads, Method())
            figures[name].append(timing.latency_ms)
    rows = []
    for name, values in figures.items():
        median = statistics.median(values) if values else math.nan
        rows.append({
            "model": name,
            "latency_ms": values,
            "median_ms": median,
            "spread": (max(values) - min(values)) / median if values else math.nan,
        })  # fmt: skip
    return {"threads": sizes.latency_threads, "method": asdict(Method()), "rows": rows}


# --- 6. two trials on one GPU ---------------------------------------------------------------------


def two_trials(device: torch.device, sizes: Sizes, quick: bool, budget: Budget) -> dict[str, Any]:
    """Finetune steps of the half-pruned model (bf16, channels-last, batch 64) in one process
    alone, then in two at once, each timing the same steps after a common start."""
    alone = trial_processes(1, device, quick)
    together = trial_processes(2, device, quick) if budget.left() > 20 else []
    result: dict[str, Any] = {"model": "0.5", "alone_images_per_s": alone[0]}
    if not together:
        result["together"] = na("over this part's time budget")
        return result
    result["together_images_per_s"] = together
    result["each_over_alone"] = [rate / alone[0] for rate in together]
    result["sum_over_alone"] = sum(together) / alone[0]
    return result


def trial_processes(count: int, device: torch.device, quick: bool) -> list[float]:
    """`count` trial processes, started together once each has warmed up: their images/s."""
    command = [sys.executable, __file__, "--trial-worker", "--device", device.type]
    if quick:
        command.append("--quick")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"} if device.type == "cpu" else None
    processes = [
        subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=environment
        )
        for _ in range(count)
    ]
    try:
        for process in processes:  # each says when it has warmed up
            assert process.stdout is not None
            if process.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a trial process exited with {process.wait()}")
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        rates = []
        for process in processes:
            out, _ = process.communicate(timeout=300)
            if process.returncode:
                raise RuntimeError(f"a trial process exited with {process.returncode}")
            rates.append(float(json.loads(out.strip().splitlines()[-1])["images_per_s"]))
        return rates
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def trial_worker(device: torch.device, sizes: Sizes) -> None:
    """One side of `two_trials`: warm up, say so, wait for the word, time the steps."""
    torch.manual_seed(0)
    model = prune_filters(build_model(full_arch(sizes)), [0.5])
    batch = random_batch(sizes, sizes.batch, pin=device.type == "cuda")
    setting = Setting("0.5", bf16=True, channels_last=True, compile=False)
    time_steps(model, batch, setting, device, replace(sizes, timed_steps=1))
    print("ready", flush=True)
    sys.stdin.readline()
    measured = time_steps(
        model, batch, setting, device, replace(sizes, timed_steps=sizes.trial_steps)
    )
    print(json.dumps({"images_per_s": measured["images_per_s"]}), flush=True)


# --- the run --------------------------------------------------------------------------------------


def machine(device: torch.device) -> dict[str, Any]:
    return {
        "device": device_name(device),
        "device_kind": device.type,
        "cpu": device_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "host": platform.node(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none",
        "date": datetime.date.today().isoformat(),
    }


def run_parts(device: torch.device, sizes: Sizes, quick: bool) -> dict[str, Any]:
    parts: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as folder:
        scratch = Path(folder)
        steps: dict[str, Callable[[Budget], dict[str, Any]]] = {
            "correctness": lambda b: correctness(device, sizes, scratch, b),
            "train_speed": lambda b: train_speed(device, sizes, b),
            "loader": lambda b: loader_part(device, sizes, scratch, _step_rate(parts), b),
            "pruned_inference": lambda b: pruned_inference(device, sizes, b),
            "latency": lambda b: latency(device, sizes, b),
            "two_trials": lambda b: two_trials(device, sizes, quick, b),
        }
        for name, step in steps.items():
            start = time.perf_counter()
            print(f"{name} ...", flush=True)
            try:
                parts[name] = step(Budget(SHARES[name] * sizes.seconds))
            except Exception as error:  # one part's failure leaves the others' figures
                traceback.print_exc()
                parts[name] = {"error": f"{type(error).__name__}: {error}"}
            parts[name]["seconds"] = time.perf_counter() - start
    return parts


def _step_rate(parts: dict[str, Any]) -> float | None:
    """The default training step's images/s (dense, bf16, channels-last, eager), if timed."""
    for row in parts.get("train_speed", {}).get("rows", []):
        wanted = (row["model"], row["bf16"], row["channels_last"], row["compile"])
        if wanted == ("dense", True, True, False) and "images_per_s" in row:
            return float(row["images_per_s"])
    return None


def table(result: dict[str, Any]) -> list[str]:
    """The printed table: one line per figure, part and row first."""
    lines = [f"{'part':<17} {'row':<34} figures"]
    for part, values in result["parts"].items():
        for label, figures in _rows(part, values):
            lines.append(f"{part:<17} {label:<34} {figures}")
    return lines


def _rows(part: str, values: dict[str, Any]) -> Iterator[tuple[str, str]]:
    if "error" in values:
        yield "error", values["error"]
        return
    if part == "correctness":
        yield (
            "output range (cpu fp32)",
            f"{values['output_range']:.3f}, map {values['map_cpu_fp32']:.3f}",
        )
        for name, c in values["compare"].items():
            yield (
                f"{name} vs cpu fp32",
                _show(c, ("max_over_range", "mean_over_range", "map_difference")),
            )
        t = values["training"]
        yield (
            f"train {t['steps']} steps {t['precision']}",
            (f"loss {t['first_quarter']:.3f} -> {t['last_quarter']:.3f}, finite {t['finite']}"),
        )
    elif part == "train_speed":
        for r in values["rows"]:
            label = f"{r['model']} {'bf16' if r['bf16'] else 'fp32'} {'NHWC' if r['channels_last'] else 'NCHW'}{' compiled' if r['compile'] else ''}"
            yield label, _show(r, ("images_per_s", "peak_memory_gb", "compile_s"))
    elif part == "loader":
        for r in values["rows"]:
            yield f"{r['workers']} workers", _show(r, ("images_per_s", "over_step"))
    elif part == "pruned_inference":
        for r in values["rows"]:
            yield (
                f"batch {r['batch']} {r['model']} ({r['flops_reduction']:.2f}x fewer FLOPs)",
                (
                    f"eager {_show(r['eager'], ('ms', 'fraction'))}; graphed {_show(r['graphed'], ('ms', 'fraction'))}"
                ),
            )
    elif part == "latency":
        for r in values["rows"]:
            yield (
                f"{r['model']} latency_ms",
                f"median {r['median_ms']:.3f}, spread {r['spread']:.3f}",
            )
    elif part == "two_trials":
        yield "one trial alone", f"images_per_s {values['alone_images_per_s']:.1f}"
        yield (
            "two trials at once",
            _show(values.get("together", values), ("each_over_alone", "sum_over_alone")),
        )


def _show(values: dict[str, Any], keys: tuple[str, ...]) -> str:
    if "n/a" in values:
        return f"n/a: {values['n/a']}"
    shown = []
    for key in keys:
        value = values.get(key)
        if isinstance(value, float):
            shown.append(f"{key} {value:.4g}")
        elif isinstance(value, list):
            shown.append(f"{key} " + " ".join(f"{v:.3g}" for v in value))
        elif isinstance(value, dict):
            shown.append(f"{key} n/a: {value.get('n/a')}")
        elif value is not None:
            shown.append(f"{key} {value}")
    return ", ".join(shown)


def verdicts(result: dict[str, Any]) -> list[Any]:
    from targets import Target  # bench/targets.py, beside this script

    parts = result["parts"]
    failed = sum("error" in p for p in parts.values())
    checks = [Target("parts that failed", failed, "<=", 0)]
    correct = parts.get("correctness", {})
    if "compare" in correct:
        bounds = {"fp32": (0.01, 0.02), "bf16": (0.05, 0.05)}
        for name, c in correct["compare"].items():
            if "n/a" in c:
                continue
            output, map_bound = bounds[name.split()[-1]]
            checks.append(
                Target(f"{name} output difference / range", c["max_over_range"], "<=", output)
            )
            checks.append(
                Target(f"{name} |map difference|", abs(c["map_difference"]), "<=", map_bound)
            )
        training = correct["training"]
        loss = training["last_over_first"] if training["finite"] else math.nan
        checks.append(Target("training loss last / first quarter", loss, "<=", 0.8))
    return checks


def main() -> None:
    from targets import check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, every part, in seconds")
    parser.add_argument(
        "--out", type=Path, help="the JSON (default: bench/results/gpu-<date>.json)"
    )
    parser.add_argument("--trial-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device here; --device cpu --quick runs on the CPU")
    sizes = QUICK if args.quick else Sizes()
    if args.trial_worker:
        trial_worker(device, sizes)
        return
    result: dict[str, Any] = {
        "machine": machine(device),
        "quick": args.quick,
        "sizes": asdict(sizes),
    }
    m = result["machine"]
    print(f"{m['device']} ({m['device_kind']}), torch {m['torch']}, CUDA {m['cuda']}, {m['date']}")
    print(f"host {m['host']}: {m['cpu']}, {m['cpu_count']} CPUs", flush=True)
    result["parts"] = run_parts(device, sizes, args.quick)
    print("\n".join(table(result)))
    checks = verdicts(result)
    result["targets"] = [{**asdict(t), "met": t.met} for t in checks]
    out = args.out or RESULTS / f"gpu-{m['date']}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    raise SystemExit(check(checks))


if __name__ == "__main__":
    main()
