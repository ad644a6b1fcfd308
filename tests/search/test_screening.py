"""The screen of a search, on real Ray and a real SQLite study: a smoke search screens candidates
drawn over the cost range in Ray tasks, finetunes the best of each cost slice right after the known
points, and ends by saying how well the screen ranked them. The smoke model scores well only on
the images it learned (any held-out split reads near 0 for every candidate, which would test
nothing), so this search selects on those; test_holdout covers the validation split."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from search import screening
from search.pareto import Ledger
from search.tuner import study_storage
from tests.console import run_captured
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides

SCREEN = "search.screen={candidates: 12, finetune: 3, images: 4, bn_batches: 2}"
STAGES = "search.space={prune.ratios: {groups: stage, low: 0.0, high: 0.6}}"
KNOWN = "search.known_points=[0, 0.3]"
NUM_SAMPLES = 6  # the 2 known points, the 3 screened, 1 of the sampler's


@pytest.fixture(scope="module")
def screened(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    storage = tmp_path_factory.mktemp("storage")
    overrides = smoke_overrides(smoke_cache, STAGES, KNOWN, SCREEN)
    code, out, err = run_captured(
        ["run", str(SMOKE), "--storage", str(storage), "--name", "screened",
         "--num-samples", str(NUM_SAMPLES), *set_arguments(overrides)]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    return {"out": out, "err": err, "dir": storage / "screened"}


def _ratios(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.startswith("ratio.")]


def test_candidates_cover_the_cost_range_and_the_best_of_each_slice_is_chosen(
    screened: dict[str, Any],
) -> None:
    table = pd.read_csv(screened["dir"] / screening.SCREEN_CSV)
    assert len(table) == 12
    assert len(_ratios(table)) == 6  # one ratio per stage
    assert table[_ratios(table)].to_numpy().min() >= 0.0
    assert table[_ratios(table)].to_numpy().max() <= 0.6
    # cost targets drawn evenly over the range, and the allocations held to them
    steps = np.diff(table["target"].to_numpy())
    assert np.allclose(steps, steps[0])
    assert steps[0] != 0
    targets = table["target"].to_numpy()
    dense_gflops = table["gflops"].to_numpy() / targets
    assert np.allclose(dense_gflops, dense_gflops[0], rtol=0.05)
    assert table[["pruned_map", "bn_map"]].notna().all().all()
    assert table["bn_map"].nunique() >= 6  # scores that tell candidates apart
    assert table["node"].notna().all()
    # the chosen: the best bn_map in each third of the GFLOPs range
    chosen = table[table["chosen"]]
    assert len(chosen) == 3
    low, high = table["gflops"].min(), table["gflops"].max()
    slices = np.minimum(2, ((table["gflops"] - low) / ((high - low) / 3)).astype(int))
    for index in range(3):
        in_slice = table[slices == index]
        if len(in_slice):
            assert in_slice["bn_map"].idxmax() in chosen.index


def test_the_chosen_are_finetuned_right_after_the_known_points(screened: dict[str, Any]) -> None:
    directory = screened["dir"]
    table = pd.read_csv(directory / screening.SCREEN_CSV)
    names = _ratios(table)
    cheapest_first = table[table["chosen"]].sort_values("gflops")
    chosen = [tuple(float(v) for v in row) for row in cheapest_first[names].to_numpy().round(6)]
    study = optuna.load_study(study_name="smoke", storage=study_storage(directory))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    assert len(trials) == NUM_SAMPLES
    # trial 0 and 1: the known points (uniform 0 and 0.3); 2-4: the screen's, cheapest first
    assert [t.params[names[0]] for t in trials[:2]] == [0.0, 0.3]
    enqueued = [tuple(round(t.params[n], 6) for n in names) for t in trials[2:5]]
    assert enqueued == chosen
    ledger = Ledger.load(directory)
    assert len(ledger.completed()) == NUM_SAMPLES
    assert all(r.metrics["map_split"] == "test" for r in ledger.completed())


def test_the_search_ends_with_the_screens_rank_correlation(screened: dict[str, Any]) -> None:
    directory = screened["dir"]
    table = screening.finetuned_table(directory, _ratios(pd.read_csv(directory / "screen.csv")))
    paired = table[table["finetuned_map"].notna()]
    assert len(paired) == 3  # the chosen three, finetuned
    # Spearman by hand: Pearson of the ranks (average ranks for ties)
    ranks = paired[["bn_map", "finetuned_map"]].rank().to_numpy()
    by_hand = float(np.corrcoef(ranks[:, 0], ranks[:, 1])[0, 1])
    assert math.isfinite(by_hand)  # scores and maps that differ
    logged = "screen: Spearman of bn_map and the finetuned map over 3 screened trials: "
    line = next(line for line in screened["err"].splitlines() if logged in line)
    assert f"{logged}{by_hand:.3f}" in line
    assert screening.spearman(table)["bn_map"] == pytest.approx(by_hand)
    # in the folder and in TensorBoard
    assert (directory / screening.SCREEN_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (events,) = (directory / screening.SCREEN_VIEWS).glob("events.out.tfevents.*")
    views = EventAccumulator(str(events), size_guidance={"images": 0, "scalars": 0})
    views.Reload()
    assert "screen/scores" in views.Tags()["images"]
    (point,) = views.Scalars("screen/spearman")
    assert point.value == pytest.approx(by_hand, abs=1e-6)


def test_a_screen_without_ratios_to_search_is_refused_before_ray_starts(
    smoke_cache: Path, tmp_path: Path
) -> None:
    space = "search.space={finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"
    overrides = smoke_overrides(smoke_cache, space, SCREEN)
    code, _, err = run_captured(
        ["run", str(SMOKE), "--storage", str(tmp_path), *set_arguments(overrides)]
    )
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("screening draws prune.ratios; search it in search.space")
    )
    assert not list(tmp_path.iterdir())


def _scored(points: list[tuple[float, float]]) -> list[Any]:
    from yolov2.screen import Candidate, Scored

    return [
        Scored(Candidate(i, (0.0,), gflops), gflops, 0, pruned_map=m / 2, bn_map=m)
        for i, (gflops, m) in enumerate(points)
    ]


# (GFLOPs, bn_map): the best of each cost slice is its dearest candidate; the screen's front
# reaches the cheapest one.
CANDIDATES = [(0.20, 0.10), (0.29, 0.40), (0.31, 0.20), (0.45, 0.50), (0.50, 0.55), (0.58, 0.60),
              (0.62, 0.58), (0.79, 0.70), (0.80, 0.65), (1.00, 0.80)]  # fmt: skip


def test_slices_choose_the_best_of_each_cost_slice() -> None:
    chosen = screening.choose(_scored(CANDIDATES), 4, "bn_map", "slices")
    assert [r.gflops for r in chosen] == [0.29, 0.58, 0.79, 1.00]


def test_the_front_spread_chooses_front_points_nearest_evenly_spaced_costs() -> None:
    chosen = screening.choose(_scored(CANDIDATES), 4, "bn_map", "front")
    # front: 0.20, 0.29, 0.45, 0.50, 0.58, 0.79, 1.00; targets 0.20, 0.467, 0.733, 1.00
    assert [r.gflops for r in chosen] == [0.20, 0.45, 0.79, 1.00]
    # a front of fewer points than asked for: the rest by score
    two = _scored([(0.2, 0.1), (0.5, 0.6), (0.4, 0.05), (0.9, 0.5)])
    assert [r.gflops for r in screening.choose(two, 3, "bn_map", "front")] == [0.2, 0.5, 0.9]
