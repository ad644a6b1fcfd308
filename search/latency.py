"""One latency figure per architecture for the whole search, wherever its trials run.

A trial asks the search's registry (`LatencyRegistry`, a named Ray actor) for its architecture's
figure (yolov2.latency: the key is the architecture with its input size, the device kind and the
thread count) and times it only when the registry has none; the first figure put for a key is the
one every trial of that architecture reports, in every epoch's report and in its final one.

Where a trial times: in its own slot, the CPUs (and GPU) Ray reserved for it, at T torch threads,
T its whole CPUs, before its finetune starts, so nothing else Ray schedules uses those CPUs while it
times. Not in a task of its own: Tune runs a trial's tasks inside the trial's placement group, which
holds the trial's resources and nothing more (Tune refuses the task), and a task outside the group
waits for CPUs that no trial holds, which a search that fills its cluster never frees.

Where the figures live: in the registry, which the driver starts on its own node (the search ends
with its driver anyway, while a worker node may leave mid-search), and which copies them into the
search's storage (`latency.json` there) after every new one, so that a resumed search, its driver
new, reads them back and reports the same figures. Not in the storage alone: a shared filesystem or
an object store offers no create-if-absent through pyarrow, so two trials timing one architecture
at once would each keep their own figure; the registry answers one caller at a time and keeps the
first. Not in each node's cache: two nodes would give one architecture two figures.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.actors import on_driver_node
from search.storage import Storage
from yolov2.latency import (
    LATENCY_FILE,
    MeasureLatency,
    Timing,
    cached_latency,
    latency_threads,
    timings_from_json,
    timings_to_json,
)


class LatencyRegistry:
    """The search's timings by key (run as a Ray actor, one call at a time): the first put for a
    key stays, and every new one is copied into the storage at once."""

    def __init__(self, storage_root: str) -> None:
        self.storage = Storage(storage_root)
        self.timings = self._load()

    def get(self, key: str) -> Timing | None:
        return self.timings.get(key)

    def put(self, key: str, timing: Timing) -> Timing:
        if key not in self.timings:
            self.timings[key] = timing
            self._save()
        return self.timings[key]

    def _load(self) -> dict[str, Timing]:
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / LATENCY_FILE
            if not self.storage.download(LATENCY_FILE, local):
                return {}
            return timings_from_json(local.read_text(), self.storage.uri(LATENCY_FILE))

    def _save(self) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(scratch) / LATENCY_FILE
            local.write_text(timings_to_json(self.timings))
            self.storage.upload(local, LATENCY_FILE)


def registry_name(experiment: str, storage: Storage) -> str:
    where = hashlib.sha256(storage.root.encode()).hexdigest()[:8]
    return f"prune-search-latency-{experiment}-{where}"


def registry(experiment: str, storage: Storage) -> Any:
    """The search's registry: the one running, or a new one on this node (the driver's, when
    `fit` starts it; its handle keeps it alive while the trials run)."""
    return on_driver_node(LatencyRegistry, registry_name(experiment, storage), storage.root)


@dataclass(frozen=True)
class _RegistryClient:
    """A yolov2.latency.TimingStore over the registry's actor."""

    actor: Any

    def get(self, key: str) -> Timing | None:
        import ray

        found: Timing | None = ray.get(self.actor.get.remote(key))
        return found

    def put(self, key: str, timing: Timing) -> Timing:
        import ray

        stored: Timing = ray.get(self.actor.put.remote(key, timing))
        return stored


def trial_latency(experiment: str, storage: Storage, cpus: float) -> MeasureLatency:
    """A trial's latency: the registry's figure, timed in the trial's slot at its whole CPUs'
    threads when the registry has none."""
    return cached_latency(_RegistryClient(registry(experiment, storage)), latency_threads(cpus))
