"""One latency figure per architecture in a search: the registry keeps the first timing of a key and
copies it into the storage; in a real smoke search the trials of one architecture report it alike,
in every report."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from search.latency import LatencyRegistry
from search.pareto import Ledger
from search.storage import Storage
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import search
from yolov2.latency import LATENCY_FILE, Method, time_architecture
from yolov2.model import Architecture, Conv

TINY = Architecture(
    layers=(Conv(4), Conv(6, 1, batch_norm=False, activation="linear")),
    num_classes=1,
    anchors=((1.0, 1.0),),
    input_size=(32, 32),
)


@pytest.mark.parametrize("uri", [False, True])
def test_the_registry_keeps_the_first_timing_and_a_new_one_reads_it_from_the_storage(
    tmp_path: Path, uri: bool
) -> None:
    storage = f"file://{tmp_path}" if uri else str(tmp_path)
    first = time_architecture(TINY, torch.device("cpu"), 1, Method(1, 2, 2))
    later = dataclasses.replace(first, latency_ms=first.latency_ms * 2)
    registry = LatencyRegistry(storage)
    assert registry.get("k") is None
    assert registry.put("k", first) == first
    assert registry.put("k", later) == first
    stored = json.loads((tmp_path / LATENCY_FILE).read_text())["timings"]
    assert stored["k"]["latency_ms"] == first.latency_ms
    assert LatencyRegistry(storage).get("k") == first  # a resumed search's new driver
    assert Storage(storage).exists(LATENCY_FILE)


def test_trials_of_one_architecture_report_one_latency_in_every_report(
    smoke_cache: Path, tmp_path: Path
) -> None:
    """The uniform 0.3 at two finetune lrs: two trials of one architecture (maybe timed at once),
    one figure, in their every epoch's report, in the ledger and after `refine`; the dense trial
    has its own."""
    space = (
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.5}, "
        "finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"
    )
    overrides = smoke_overrides(
        smoke_cache, space, "search.known_points=[0.0, 0.3]",
        "search.known_at={finetune.lr: [0.002, 0.0005]}", "finetune.eval_every=1",
    )  # fmt: skip
    code, _, err = search(
        ["run", str(SMOKE), "--storage", str(tmp_path), "--num-samples", "3", *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err
    directory = tmp_path / "smoke"
    table = pd.read_csv(directory / "trials.csv")
    assert (table["state"] == "COMPLETE").all()
    pruned = table[~table["dense"].astype(bool)]
    assert len(pruned) == 2
    assert pruned["params"].nunique() == 1  # one architecture
    assert pruned["latency_ms"].nunique() == 1
    figure = float(pruned["latency_ms"].iloc[0])
    dense = float(table[table["dense"].astype(bool)]["latency_ms"].iloc[0])
    assert figure > 0
    assert dense > 0
    ledger = Ledger.load(directory)
    assert sorted(r.metrics["latency_ms"] for r in ledger.records.values()) == sorted(
        [figure, figure, dense]
    )
    # The registry's copy in the storage: one timing per architecture, the figures reported.
    timings = json.loads((directory / LATENCY_FILE).read_text())["timings"]
    assert sorted(t["latency_ms"] for t in timings.values()) == sorted([figure, dense])
    assert {t["threads"] for t in timings.values()} == {1}
    # Every epoch's report of a pruned trial carries the final figure, not an earlier timing.
    for trial_id in pruned["trial_id"]:
        result = directory / "ray" / f"trial_{trial_id}" / "result.json"
        reports = [json.loads(line) for line in result.read_text().splitlines()]
        assert len(reports) >= 3  # two finetune epochs and the final report
        assert {r["latency_ms"] for r in reports} == {figure}
    # Refined longer, a front point keeps its architecture, and so its figure.
    code, _, err = search(["refine", str(directory), "--epochs", "3"])
    assert code == 0, err
    refined = pd.read_csv(directory / "refined.csv").set_index("trial_id")
    searched = table.set_index("trial_id").loc[refined.index]
    assert len(refined) >= 2
    assert refined["latency_ms"].tolist() == searched["latency_ms"].tolist()
