"""Latency as a property of the architecture: timed once per architecture, device kind and thread
count, and kept in a small JSON cache that every later run of that architecture reads.

`latency_ms` is a median wall time of batch-1 forward passes at the experiment's input size, at T
torch threads on a device of kind D (`cpu` or `cuda`, synchronised), of a model built from the
architecture: after 5 untimed forwards, 10 blocks of 10 timed ones, and the figure is the median
of the quietest block (the lowest block median). A node's other work (a finetune beside it, the
host's) slows whole stretches of forwards, not single ones, so a plain median of consecutive
forwards follows it; the quietest block's median does much less (bench/bench_latency_noise.py
measured both: docs/benchmarks.md). T is the trial's CPUs (`search.cpus_per_trial` rounded down,
at least 1), in a search and in `prune-search pipeline` alike. The weights are fresh ones: a dense
kernel's time does not depend on the values, so a weight-pruned model (its zeros keep the dense
shapes) times as the dense architecture does, which is what it costs on dense kernels.

The first figure stored for a key (the architecture with its input size, D, T and the method) is
the one every later run of that key reports: finetuning does not change it, so a finetune's every
epoch reports the final figure, and two trials of one architecture report the same number. Where
it was timed (node, CPU model or GPU name) is kept beside it. `prune-search pipeline` keeps its
figures in `<cache_dir>/latency/latency.json`; a search keeps one set for all its trials
(`search.latency`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import platform
import socket
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from yolov2.errors import InputError
from yolov2.files import write_text_atomic
from yolov2.measure import forward_times_ms
from yolov2.model import Architecture, YOLOv2, build_model

LATENCY_FILE = "latency.json"  # a cache of timings by key
LATENCY_CACHE = "latency"  # the cache_dir folder of `prune-search pipeline`'s LATENCY_FILE
VERSION = 1  # bump when the way of timing changes: older figures then no longer match a key

# What the pipeline asks for a model's latency: its architecture (at the input size it is timed at)
# and the device it runs on; the answer in ms.
MeasureLatency = Callable[[Architecture, torch.device], float]


@dataclass(frozen=True)
class Method:
    """How an architecture is timed: `warmup` untimed forwards, then `blocks` blocks of `per_block`
    timed ones; the figure is the lowest block median."""

    warmup: int = 5  # allocator, kernel selection, caches
    blocks: int = 10
    per_block: int = 10


@dataclass(frozen=True)
class Timing:
    """One architecture's latency, and how and where it was timed."""

    latency_ms: float  # the quietest block's median forward (Method)
    threads: int  # torch intra-op threads
    device: str  # the device kind: cpu or cuda
    device_name: str  # the CPU model or GPU name
    node: str  # the host it was timed on
    warmup: int
    blocks: int
    per_block: int
    input_size: tuple[int, int]
    widths: tuple[int, ...]  # every convolution's filters, as Architecture.widths
    torch: str
    measured_at: str  # UTC, ISO 8601

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Timing:
        return cls(
            **{
                **raw,
                "input_size": tuple(raw["input_size"]),
                "widths": tuple(raw["widths"]),
            }
        )


def latency_threads(cpus: float) -> int:
    """T: the torch threads latency is timed at, the trial's whole CPUs (at least one)."""
    return max(1, int(cpus))


def latency_key(
    arch: Architecture, device_kind: str, threads: int, method: Method = Method()
) -> str:
    """The cache key of a timing: a hash of the architecture (every layer, its input size), the
    device kind, the thread count and the method."""
    recipe = {
        "method": [VERSION, method.warmup, method.blocks, method.per_block],
        "architecture": arch.to_dict(),
        "device": device_kind,
        "threads": threads,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


def time_architecture(
    arch: Architecture, device: torch.device, threads: int, method: Method = Method()
) -> Timing:
    """Time a model of `arch` at `arch.input_size` on `device` with `threads` torch threads; the
    caller's random state and thread count are left as they were."""
    forks = [device] if device.type == "cuda" else []
    with _threads(threads), torch.random.fork_rng(devices=forks):
        model = build_model(arch).to(device).eval()
        figure = min(block_medians(model, arch.input_size, method))
    return Timing(
        latency_ms=figure,
        threads=threads,
        device=device.type,
        device_name=device_name(device),
        node=socket.gethostname(),
        warmup=method.warmup,
        blocks=method.blocks,
        per_block=method.per_block,
        input_size=arch.input_size,
        widths=tuple(arch.widths),
        torch=torch.__version__,
        measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )


def block_medians(model: YOLOv2, input_size: tuple[int, int], method: Method) -> list[float]:
    """The median wall time (ms) of each block of batch-1 forwards, synchronising on CUDA."""
    repeats = method.blocks * method.per_block
    times = forward_times_ms(model, input_size, warmup=method.warmup, repeats=repeats)
    blocks = [times[i : i + method.per_block] for i in range(0, len(times), method.per_block)]
    return [statistics.median(block) for block in blocks]


@contextlib.contextmanager
def _threads(count: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model as /proc/cpuinfo gives it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


class TimingStore(Protocol):
    """Where timings are kept: the first one put for a key is the one every `get` returns."""

    def get(self, key: str) -> Timing | None: ...

    def put(self, key: str, timing: Timing) -> Timing:
        """Store `timing` unless the key has one already; return the key's stored timing."""
        ...


def cached_latency(store: TimingStore, threads: int, method: Method = Method()) -> MeasureLatency:
    """The pipeline's latency: the stored figure of the architecture's key, timed here first (at
    `threads` threads) when the store has none."""

    def latency(arch: Architecture, device: torch.device) -> float:
        key = latency_key(arch, device.type, threads, method)
        stored = store.get(key)
        if stored is None:
            stored = store.put(key, time_architecture(arch, device, threads, method))
        return stored.latency_ms

    return latency


def local_latency(cache_dir: Path, cpus: float) -> MeasureLatency:
    """`prune-search pipeline`'s latency: timed here at `latency_threads(cpus)` threads, cached in
    `cache_dir/latency/latency.json`."""
    path = Path(cache_dir) / LATENCY_CACHE / LATENCY_FILE
    return cached_latency(LatencyCache(path), latency_threads(cpus))


def timings_from_json(text: str, where: str) -> dict[str, Timing]:
    try:
        raw = json.loads(text)
        return {key: Timing.from_dict(value) for key, value in raw["timings"].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(
            f"{where}: not a latency cache of prune-search ({error}); remove it to time again"
        ) from None


def timings_to_json(timings: dict[str, Timing]) -> str:
    return json.dumps({"timings": {k: asdict(v) for k, v in sorted(timings.items())}}, indent=1)


class LatencyCache:
    """A JSON file of timings by key, for the runs of one machine: writers take a lock beside it,
    and every write replaces the file whole."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def get(self, key: str) -> Timing | None:
        return self._read().get(key)

    def put(self, key: str, timing: Timing) -> Timing:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            timings = self._read()
            if key not in timings:
                timings[key] = timing
                write_text_atomic(self.path, timings_to_json(timings))
            return timings[key]

    def _read(self) -> dict[str, Timing]:
        if not self.path.is_file():
            return {}
        return timings_from_json(self.path.read_text(), str(self.path))


def at_input_size(arch: Architecture, size: tuple[int, int]) -> Architecture:
    """`arch` as it is timed at `size`: the input size is part of what a timing is of."""
    return arch if arch.input_size == size else dataclasses.replace(arch, input_size=size)
