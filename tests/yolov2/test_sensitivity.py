"""Sensitivity: a smoke dense model trained here, each stage pruned alone through
`prune-search sensitivity` (real CSV and PNG files), one-line errors for bad input, and the greedy
budget allocation on a table written by hand."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.console import run_captured
from tests.search.conftest import SMOKE, smoke_overrides
from yolov2.config import load_config
from yolov2.engine import load_splits
from yolov2.model import yolov2_voc
from yolov2.pipeline import cached_dense
from yolov2.prune import stages
from yolov2.sensitivity import (
    BASELINE,
    COLUMNS,
    Point,
    Sensitivity,
    allocate,
    allocate_each,
    group_names,
    pruned_gflops,
)

RATIOS = [0.0, 0.3, 0.6, 0.9]
STAGES = [f"stage{i}" for i in range(1, 7)]


command = run_captured


@pytest.fixture(scope="module")
def analysed(smoke_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The smoke search's dense model (it learns its 16 images in seconds; trained here unless a
    search test of the session has) and its stage sensitivity."""
    root = tmp_path_factory.mktemp("sensitivity")
    config = load_config(SMOKE, smoke_overrides(smoke_cache))
    stage = cached_dense(config, load_splits(config.data))
    ratios = [str(r) for r in RATIOS]
    code, out, err = command(
        ["sensitivity", str(stage.checkpoint), "--ratios", *ratios, "--out", str(root / "out")]
    )
    assert code == 0, err
    with (root / "out" / "sensitivity.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return {"root": root, "config": config, "stage": stage, "rows": rows, "out": out}


def _curve(rows: list[dict[str, str]], group: str, column: str) -> list[float]:
    """`column` of `group` by ascending ratio."""
    chosen = sorted((r for r in rows if r["group"] == group), key=lambda r: float(r["ratio"]))
    assert [float(r["ratio"]) for r in chosen] == RATIOS
    return [float(r[column]) for r in chosen]


def test_the_csv_has_the_baseline_then_every_stage_at_every_ratio(
    analysed: dict[str, Any],
) -> None:
    rows = analysed["rows"]
    assert tuple(rows[0]) == COLUMNS
    assert len(rows) == 1 + len(STAGES) * len(RATIOS)
    baseline = rows[0]
    assert (baseline["group"], float(baseline["ratio"])) == (BASELINE, 0.0)
    assert float(baseline["map"]) == analysed["stage"].map  # the dense stage's own evaluation
    assert [r["group"] for r in rows[1:]] == [g for g in STAGES for _ in RATIOS]
    for row in rows[1:]:
        assert float(row["map_drop"]) == pytest.approx(float(baseline["map"]) - float(row["map"]))
        assert float(row["gflops_saved"]) == pytest.approx(
            float(baseline["gflops"]) - float(row["gflops"])
        )


def test_ratio_zero_is_the_unpruned_model_exactly(analysed: dict[str, Any]) -> None:
    baseline = analysed["rows"][0]
    for group in STAGES:
        assert _curve(analysed["rows"], group, "map")[0] == float(baseline["map"])
        assert _curve(analysed["rows"], group, "gflops")[0] == float(baseline["gflops"])


def test_stages_differ_and_map_drops_with_the_ratio(analysed: dict[str, Any]) -> None:
    rows = analysed["rows"]
    assert float(rows[0]["map"]) > 0.9  # a model that learned: its drops mean something
    at = {group: _curve(rows, group, "map") for group in STAGES}
    assert len({maps[2] for maps in at.values()}) > 1  # at 0.6, not all stages alike
    falling = [
        group
        for group, maps in at.items()
        if all(b <= a for a, b in itertools.pairwise(maps)) and maps[-1] < maps[0] - 0.2
    ]
    assert falling


def test_gflops_fall_with_the_ratio_as_the_widths_predict(analysed: dict[str, Any]) -> None:
    config, rows = analysed["config"], analysed["rows"]
    arch = analysed["stage"].model.arch
    for index, group in enumerate(STAGES):
        measured = _curve(rows, group, "gflops")
        assert all(b <= a for a, b in itertools.pairwise(measured))
        assert measured[-1] < measured[0]
        for ratio, value in zip(RATIOS, measured, strict=True):
            ratios = [ratio if i == index else 0.0 for i in range(len(STAGES))]
            # from the widths alone, on the meta device: the measured model's count exactly
            assert pruned_gflops(arch, config.prune, ratios, config.data.input_size) == value


@pytest.fixture
def evaluations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """One entry per evaluation that yolov2.sensitivity makes (the real one, counted)."""
    from yolov2 import sensitivity

    calls: list[int] = []
    real = sensitivity.selection_evaluator

    def counting(*args: Any) -> Any:
        evaluated = real(*args)

        def counted(model: Any) -> Any:
            calls.append(1)
            return evaluated(model)

        return counted

    monkeypatch.setattr(sensitivity, "selection_evaluator", counting)
    return calls


def test_ratios_that_keep_the_same_filters_share_one_evaluation_exactly(
    analysed: dict[str, Any], evaluations: list[int]
) -> None:
    """Ratios that round to the same widths (or to none removed) are evaluated once, and the
    shared map is the map of that pruned model evaluated on its own."""
    import copy

    from yolov2 import pipeline, sensitivity
    from yolov2.prune import pruned_widths

    config, stage = analysed["config"], analysed["stage"]
    splits = load_splits(config.data)
    grid = [0.01, 0.3, 0.31, 0.6]
    arch = stage.model.arch
    widths = {
        tuple(pruned_widths(arch, [r if i == g else 0.0 for i in range(len(STAGES))],
                            config.prune.min_channels, config.prune.round_to))
        for g in range(len(STAGES)) for r in [0.0, *grid]
    }  # fmt: skip
    assert len(widths) < 1 + len(STAGES) * len(grid)  # the grid has ratios to share
    table = sensitivity.analyse(copy.deepcopy(stage.model), config, splits, "stage", grid)
    assert len(evaluations) == len(widths)  # one evaluation per distinct pruned model
    for point in table.rows()[1:]:
        index = STAGES.index(point.group)
        ratios = [point.ratio if i == index else 0.0 for i in range(len(STAGES))]
        pruning = config.prune.model_copy(update={"ratio": None, "ratios": ratios})
        pruned, _ = pipeline.prune(copy.deepcopy(stage.model), pruning, arch)
        assert point.map == float(pipeline.evaluate_model(pruned, config, splits)["map"])


def test_a_table_is_measured_once_per_dense_model_and_read_back_from_its_folder(
    analysed: dict[str, Any], tmp_path: Path, evaluations: list[int], caplog: Any
) -> None:
    import copy

    from yolov2 import sensitivity

    config, stage = analysed["config"], analysed["stage"]
    splits = load_splits(config.data)
    calls = evaluations

    def table(ratios: list[float], groups: str = "stage") -> Sensitivity:
        model = copy.deepcopy(stage.model)
        return sensitivity.cached_analyse(model, config, splits, groups, ratios, folder=tmp_path)

    first = table([0.3, 0.6])
    measured = len(calls)
    assert measured > 1
    assert table([0.6, 0.3]) == first  # the same grid, in any order: read back, not measured
    assert len(calls) == measured
    (path,) = (tmp_path / sensitivity.CACHE_DIR).iterdir()
    assert table([0.3]) != first  # another grid is another table
    assert len(calls) > measured
    assert len(list((tmp_path / sensitivity.CACHE_DIR).iterdir())) == 2
    path.write_text('{"groups": "stage", "names": [')  # truncated
    calls.clear()
    with caplog.at_level("WARNING"):
        assert table([0.3, 0.6]) == first  # measured again, the same numbers
    assert calls
    assert "not a sensitivity table" in caplog.text
    assert str(path) in caplog.text
    assert sensitivity.from_json(path.read_text()) == first


def test_the_plot_and_the_printed_table(analysed: dict[str, Any]) -> None:
    assert (analysed["root"] / "out" / "sensitivity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = analysed["out"].splitlines()
    assert lines[0].startswith("each stage pruned alone (filter pruning, no finetuning)")
    assert len(lines) == 2 + 1 + len(STAGES) * len(RATIOS)
    assert lines[3].split()[:2] == ["stage1", "0.000"]


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--ratios", "0.2", "1.0"], "ratio 1 is outside [0, 1)"),
        (["--ratios", "-0.1"], "ratio -0.1 is outside [0, 1)"),
        # the parser's own refusal, after its usage lines
        (
            ["--groups", "block"],
            "argument --groups: invalid choice: 'block' (choose from 'stage', 'layer')",
        ),
    ],
)
def test_a_bad_value_is_one_line(tmp_path: Path, argv: list[str], problem: str) -> None:
    checkpoint = tmp_path / "model.safetensors"
    code, _, err = command(["sensitivity", str(checkpoint), *argv, "--out", str(tmp_path / "o")])
    assert code == 2
    assert err.strip().splitlines()[-1] == f"prune-search sensitivity: error: {problem}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("broken", ["missing", "truncated"])
def test_a_missing_or_truncated_checkpoint_is_one_line(
    analysed: dict[str, Any], tmp_path: Path, broken: str
) -> None:
    checkpoint = tmp_path / "model.safetensors"
    if broken == "truncated":
        whole = analysed["stage"].checkpoint.read_bytes()
        checkpoint.write_bytes(whole[: len(whole) // 2])
    code, _, err = command(["sensitivity", str(checkpoint), "--out", str(tmp_path / "o")])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"prune-search sensitivity: error: {checkpoint}: ")
    assert not (tmp_path / "o").exists()


def test_the_groups_are_the_stages_or_the_prunable_layers() -> None:
    arch = yolov2_voc()
    assert group_names(arch, "stage") == STAGES
    assert len(stages(arch)) == 6
    assert group_names(arch, "layer") == [f"layer{i:02d}" for i in range(1, 23)]


# --- the greedy allocation, on a table written by hand --------------------------------------------

# 10 GFLOPs unpruned. a: cheap first step, dear second. b: dearer first, cheap second.
# c: 0.25 saves nothing (its widths round back), 0.5 saves 1.
TABLE = {
    "a": [(0.25, 0.01, 1.0), (0.5, 0.10, 2.0)],
    "b": [(0.25, 0.04, 2.0), (0.5, 0.06, 4.0)],
    "c": [(0.25, 0.00, 0.0), (0.5, 0.05, 1.0)],
}


def _table() -> Sensitivity:
    baseline = Point(BASELINE, 0.0, 0.9, 0.0, 10.0, 0.0)
    points = tuple(
        Point(name, ratio, 0.9 - drop, drop, 10.0 - saved, saved)
        for name, rows in TABLE.items()
        for ratio, drop, saved in rows
    )
    return Sensitivity("stage", tuple(TABLE), "filter", baseline, points)


@pytest.mark.parametrize(
    ("budget", "ratios", "removed", "met"),
    [
        (0.1, (0.25, 0.0, 0.0), 0.1, True),  # a first: 0.01 map per GFLOP
        (0.3, (0.25, 0.25, 0.0), 0.3, True),  # then b (0.02) before c (0.05) and a again (0.09)
        (0.5, (0.25, 0.5, 0.0), 0.5, True),  # b's second step is the cheapest of all (0.01)
        (0.6, (0.25, 0.5, 0.5), 0.6, True),  # c skips its 0.25, which saves nothing
        (0.7, (0.5, 0.5, 0.5), 0.7, True),
        (0.9, (0.5, 0.5, 0.5), 0.7, False),  # every group at high: as near as it gets
    ],
)
def test_the_greedy_allocation_takes_the_least_map_per_gflop_first(
    budget: float, ratios: tuple[float, ...], removed: float, met: bool
) -> None:
    chosen = allocate(_table(), budget, 0.0, 0.5)
    assert chosen.ratios == ratios
    assert chosen.removed == pytest.approx(removed)
    assert chosen.met is met
    drops = {name: {0.0: 0.0} | {r: d for r, d, _ in rows} for name, rows in TABLE.items()}
    assert chosen.map_drop == pytest.approx(
        sum(drops[n][r] for n, r in zip(TABLE, ratios, strict=True))
    )


def test_the_allocation_stays_within_the_searched_range() -> None:
    # from low 0.25 every group starts there, which removes 30% already
    assert allocate(_table(), 0.3, 0.25, 0.5).ratios == (0.25, 0.25, 0.25)
    capped = allocate(_table(), 0.5, 0.0, 0.25)
    assert capped.ratios == (0.25, 0.25, 0.0)  # c's only step in range saves nothing
    assert (capped.removed, capped.met) == (pytest.approx(0.3), False)


def test_the_allocation_counts_gflops_by_the_function_given() -> None:
    # Pruning a group also thins its consumer's input, so the table's sum overstates what
    # groups pruned together save; an exact count can need a step more.
    saves = {name: {0.0: 0.0} | {r: s for r, _, s in rows} for name, rows in TABLE.items()}

    def overlapping(ratios: Sequence[float]) -> float:
        saved = sum(saves[name][r] for name, r in zip(TABLE, ratios, strict=True))
        return 10.0 - 0.9 * saved

    chosen = allocate(_table(), 0.3, 0.0, 0.5, overlapping)
    assert chosen.ratios == (0.25, 0.5, 0.0)  # 0.9 x 3 GFLOPs is short of 30%: b goes on
    assert chosen.removed == pytest.approx(0.45)


def test_every_budget_allocated_in_one_walk_is_the_budgets_own_allocation() -> None:
    budgets = [0.7, 0.1, 0.5, 0.1, 0.9, 0.3]  # unsorted, one twice, one beyond reach
    walked = allocate_each(_table(), budgets, 0.0, 0.5)
    assert walked == [allocate(_table(), budget, 0.0, 0.5) for budget in budgets]
    assert [a.budget for a in walked] == budgets
    assert len({a.ratios for a in walked}) == 4  # 0.9 stops where 0.7 did: every group at high
    assert [a.met for a in walked] == [True, True, True, True, False, True]
