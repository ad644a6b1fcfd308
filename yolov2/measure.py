"""What a compressed model costs: parameters, non-zeros, GFLOPs, checkpoint size and latency."""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from yolov2.model import Architecture, Conv, MaxPool, Reorg, Route, YOLOv2


@dataclass(frozen=True)
class Profile:
    params: int
    nonzero_params: int
    sparsity: float  # fraction of parameters that are exactly zero
    gflops: float  # forward pass at `input_size`, batch 1 (2 FLOPs per multiply-add, as darknet)
    size_mb: float  # bytes of the checkpoint file / 1e6
    latency_ms: float  # median batch-1 forward on `device`, or the architecture's (yolov2.latency)
    input_size: tuple[int, int]
    device: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_params(model: YOLOv2) -> tuple[int, int]:
    """(parameters, non-zero parameters); BN running statistics are buffers and not counted."""
    total = nonzero = 0
    for parameter in model.parameters():
        total += parameter.numel()
        nonzero += int(torch.count_nonzero(parameter))
    return total, nonzero


def gflops(model: YOLOv2, input_size: tuple[int, int]) -> float:
    """Dense GFLOPs of one forward pass: weight pruning leaves these unchanged, filter pruning not."""
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, model.arch.channels, *input_size, device=device))
    return float(counter.get_total_flops()) / 1e9


def architecture_gflops(arch: Architecture, input_size: tuple[int, int]) -> float:
    """`gflops` of any model of `arch`, counted from its layer list as darknet counts BFLOPs
    (2 x k² x in x out x output area per convolution; pools, routes and reorgs are free), in
    microseconds where tracing a model costs tens of milliseconds: the screen's bisections and the
    warm start's greedy walk count thousands of candidate widths. Tests hold it to `gflops`."""
    sizes: list[tuple[int, int]] = []  # every layer's output (height, width)
    size, flops = input_size, 0
    for layer, channels in zip(arch.layers, arch.in_channels(), strict=True):
        if isinstance(layer, Conv):
            pad = layer.size // 2
            size = (
                (size[0] + 2 * pad - layer.size) // layer.stride + 1,
                (size[1] + 2 * pad - layer.size) // layer.stride + 1,
            )
            flops += 2 * layer.size**2 * channels * layer.filters * size[0] * size[1]
        elif isinstance(layer, MaxPool) and layer.stride > 1:
            size = (
                (size[0] - layer.size) // layer.stride + 1,
                (size[1] - layer.size) // layer.stride + 1,
            )
        elif isinstance(layer, Route):
            size = sizes[layer.layers[0]]
        elif isinstance(layer, Reorg):
            size = (size[0] // layer.stride, size[1] // layer.stride)
        sizes.append(size)
    return flops / 1e9


def forward_times_ms(
    model: YOLOv2, input_size: tuple[int, int], *, warmup: int, repeats: int
) -> list[float]:
    """The wall time (ms) of each of `repeats` batch-1 forward passes after `warmup` untimed
    ones, synchronising on CUDA."""
    device = next(model.parameters()).device
    x = torch.rand(1, model.arch.channels, *input_size, device=device)
    times = []
    with torch.inference_mode():
        for step in range(warmup + repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                times.append((time.perf_counter() - start) * 1e3)
    return times


def latency_ms(
    model: YOLOv2, input_size: tuple[int, int], *, warmup: int = 3, repeats: int = 20
) -> float:
    """Median wall time of a batch-1 forward pass, synchronising on CUDA."""
    return statistics.median(forward_times_ms(model, input_size, warmup=warmup, repeats=repeats))


def profile(
    model: YOLOv2,
    checkpoint: str | os.PathLike[str],
    input_size: tuple[int, int] | None = None,
    *,
    repeats: int = 20,
    latency: float | None = None,
) -> Profile:
    """Every cost metric of design.md for `model`, whose checkpoint file is `checkpoint`; its
    latency timed here and now unless `latency` (ms) is given (the pipeline's, yolov2.latency)."""
    model = model.eval()
    size = input_size or model.arch.input_size
    params, nonzero = count_params(model)
    return Profile(
        params=params,
        nonzero_params=nonzero,
        sparsity=1.0 - nonzero / params,
        gflops=gflops(model, size),
        size_mb=os.path.getsize(checkpoint) / 1e6,
        latency_ms=latency_ms(model, size, repeats=repeats) if latency is None else latency,
        input_size=size,
        device=str(next(model.parameters()).device),
    )
