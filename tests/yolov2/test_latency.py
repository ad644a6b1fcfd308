"""Latency as a property of the architecture: one timing per key in a JSON cache, the same figure in
every report of a pipeline run and for every model of one architecture."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from yolov2.config import load_config
from yolov2.errors import InputError
from yolov2.latency import (
    LATENCY_CACHE,
    LATENCY_FILE,
    LatencyCache,
    Method,
    block_medians,
    cached_latency,
    latency_key,
    time_architecture,
)
from yolov2.model import Architecture, Conv, MaxPool
from yolov2.pipeline import run

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"
CPU = torch.device("cpu")
TINY = Architecture(
    layers=(Conv(8), MaxPool(), Conv(16), Conv(6, 1, batch_norm=False, activation="linear")),
    num_classes=1,
    anchors=((1.0, 1.0),),
    input_size=(64, 64),
)
FEW = Method(warmup=1, blocks=2, per_block=3)


def _stored(path: Path) -> dict[str, Any]:
    timings: dict[str, Any] = json.loads(path.read_text())["timings"]
    return timings


def test_the_cache_returns_the_stored_figure_for_the_same_architecture_and_times_another(
    tmp_path: Path,
) -> None:
    path = tmp_path / LATENCY_FILE
    latency = cached_latency(LatencyCache(path), 1, FEW)
    first = latency(TINY, CPU)
    key = latency_key(TINY, "cpu", 1, FEW)
    assert first > 0
    assert list(_stored(path)) == [key]
    assert _stored(path)[key]["latency_ms"] == first
    # A figure planted for the key is what the next run reports, exactly: it is not timed again.
    raw = json.loads(path.read_text())
    raw["timings"][key]["latency_ms"] = 123.0
    path.write_text(json.dumps(raw))
    assert latency(TINY, CPU) == 123.0
    assert cached_latency(LatencyCache(path), 1, FEW)(TINY, CPU) == 123.0
    # Another architecture (narrower) is timed anew, and kept beside the first.
    narrower = TINY.with_widths([4, 8, 6])
    other = latency(narrower, CPU)
    assert other > 0
    assert other != 123.0
    stored = _stored(path)
    assert set(stored) == {key, latency_key(narrower, "cpu", 1, FEW)}
    assert stored[latency_key(narrower, "cpu", 1, FEW)]["widths"] == [4, 8, 6]


@pytest.mark.parametrize(
    "changed",
    [
        {"arch": TINY.with_widths([8, 12, 6])},
        {"arch": dataclasses.replace(TINY, input_size=(96, 96))},
        {"device_kind": "cuda"},
        {"threads": 2},
        {"method": Method(warmup=1, blocks=2, per_block=4)},
    ],
    ids=["widths", "input size", "device kind", "threads", "method"],
)
def test_the_key_changes_with_what_the_figure_depends_on(changed: dict[str, Any]) -> None:
    base: dict[str, Any] = {"arch": TINY, "device_kind": "cpu", "threads": 1, "method": FEW}
    assert latency_key(**{**base, **changed}) != latency_key(**base)
    assert latency_key(**base) == latency_key(**dict(base))


def test_the_figure_is_the_quietest_block_median() -> None:
    from yolov2.model import build_model

    medians = block_medians(build_model(TINY).eval(), TINY.input_size, Method(1, 4, 3))
    assert len(medians) == 4
    assert all(m > 0 for m in medians)
    assert time_architecture(TINY, CPU, 1, Method(1, 1, 1)).latency_ms > 0


def test_the_first_timing_put_for_a_key_stays(tmp_path: Path) -> None:
    cache = LatencyCache(tmp_path / LATENCY_FILE)
    first = time_architecture(TINY, CPU, 1, FEW)
    second = dataclasses.replace(first, latency_ms=first.latency_ms + 1)
    assert cache.put("k", first) == first
    assert cache.put("k", second) == first
    assert LatencyCache(tmp_path / LATENCY_FILE).get("k") == first


def test_timing_leaves_the_callers_threads_and_random_state() -> None:
    threads, state = torch.get_num_threads(), torch.random.get_rng_state()
    timing = time_architecture(TINY, CPU, threads + 1, FEW)
    assert (timing.threads, timing.device, timing.blocks, timing.per_block) == (
        threads + 1, "cpu", 2, 3,
    )  # fmt: skip
    assert timing.input_size == (64, 64)
    assert timing.device_name
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_cache_that_is_not_ours_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / LATENCY_FILE
    path.write_text("[1, 2]")
    with pytest.raises(InputError, match=f"{path}: not a latency cache of prune-search"):
        LatencyCache(path).get("k")


def test_every_report_and_every_model_of_one_architecture_carry_its_one_figure(
    tmp_path: Path,
) -> None:
    """Weight pruning keeps the dense shapes, so its figure is the dense model's: both runs read
    the one timing of the cache, and the finetune's every epoch reports it as the final one does."""

    def smoke(*overrides: str) -> Any:
        return load_config(
            SMOKE,
            [f"cache_dir={tmp_path}/cache", f"data.root={tmp_path}/data/VOCdevkit", *overrides],
        )

    reports: list[dict[str, Any]] = []
    weight = run(
        smoke("prune.method=weight", "prune.ratio=0.5", "finetune.epochs=2", "finetune.eval_every=1"),
        tmp_path / "weight",
        reports.append,
    )  # fmt: skip
    stored = _stored(tmp_path / "cache" / LATENCY_CACHE / LATENCY_FILE)
    assert len(stored) == 1
    (figure,) = (timing["latency_ms"] for timing in stored.values())
    assert weight.metrics["latency_ms"] == figure
    assert len(reports) == 2
    assert [r["latency_ms"] for r in reports] == [figure, figure]
    dense = run(smoke("prune.method=none"), tmp_path / "dense")
    assert dense.metrics["latency_ms"] == figure
    assert len(_stored(tmp_path / "cache" / LATENCY_CACHE / LATENCY_FILE)) == 1


def test_the_cache_folder_lists_and_clears_the_latency_figures(tmp_path: Path) -> None:
    from yolov2.cache import cache_contents, clear_cache

    cached_latency(LatencyCache(tmp_path / LATENCY_CACHE / LATENCY_FILE), 1, FEW)(TINY, CPU)
    (entry,) = cache_contents(tmp_path)
    assert (entry.kind, entry.path) == ("latency", tmp_path / LATENCY_CACHE)
    assert entry.about == "latency of 1 architecture(s)"
    assert clear_cache(tmp_path) == [entry]
    assert not tmp_path.exists()
