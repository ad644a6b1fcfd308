"""bench/bench_gpu.py on the CPU with --quick, as a user runs it: every part present in its JSON,
with real, finite figures, or with the reason a CUDA-only figure cannot be given here."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = ["correctness", "train_speed", "loader", "pruned_inference", "latency", "two_trials"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench-gpu") / "gpu.json"
    command = [
        sys.executable,
        "bench/bench_gpu.py",
        "--device",
        "cpu",
        "--quick",
        "--out",
        str(out),
    ]
    environment = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert out.is_file(), done.stderr[-3000:]
    return done.returncode, json.loads(out.read_text()), done.stdout


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_the_machine_comes_first_and_every_part_ran(
    quick_run: tuple[int, dict[str, Any], str],
) -> None:
    code, result, stdout = quick_run
    machine = result["machine"]
    assert machine["device_kind"] == "cpu"
    assert machine["torch"]
    assert machine["cuda"]
    assert machine["date"]
    first = stdout.splitlines()[0]
    assert first.startswith(f"{machine['device']} (cpu), torch {machine['torch']}, CUDA ")
    assert list(result["parts"]) == PARTS
    for name, part in result["parts"].items():
        assert "error" not in part, (name, part["error"])
        assert _finite(part["seconds"])
    for name in PARTS:  # the table has a row for every part
        assert any(line.startswith(name) for line in stdout.splitlines()), name
    missed = [t["name"] for t in result["targets"] if not t["met"]]
    assert code == (1 if missed else 0)


def test_correctness_compares_outputs_and_maps_and_training_falls(
    quick_run: tuple[int, dict[str, Any], str],
) -> None:
    part = quick_run[1]["parts"]["correctness"]
    assert part["output_range"] > 0
    assert 0 <= part["map_cpu_fp32"] <= 1
    assert "n/a" in part["compare"]["cuda fp32"]  # no CUDA here: said, not skipped
    bf16 = part["compare"]["cpu bf16"]  # autocast's CPU form
    assert 0 < bf16["max_over_range"] < 0.1
    assert bf16["mean_over_range"] <= bf16["max_over_range"]
    assert _finite(bf16["map_difference"])
    training = part["training"]
    assert training["steps"] == quick_run[1]["sizes"]["train_steps"]
    assert training["finite"]
    assert all(_finite(v) for v in training["losses"])
    assert training["last_quarter"] < training["first_quarter"]


def test_train_speed_has_every_setting_with_a_figure_or_a_reason(
    quick_run: tuple[int, dict[str, Any], str],
) -> None:
    rows = quick_run[1]["parts"]["train_speed"]["rows"]
    settings = {(r["model"], r["bf16"], r["channels_last"], r["compile"]) for r in rows}
    assert {
        (m, True, True, c) for m in ("dense", "0.25", "0.5", "0.75") for c in (False, True)
    } <= settings
    assert {
        ("dense", bf16, cl, False) for bf16 in (False, True) for cl in (False, True)
    } <= settings
    for row in rows:
        if row["compile"]:
            assert "--quick" in row["n/a"]
        else:
            assert row["images_per_s"] > 0
            assert "n/a" in row["peak_memory_gb"]


def test_loader_pruned_speed_latency_and_two_trials_give_figures(
    quick_run: tuple[int, dict[str, Any], str],
) -> None:
    parts = quick_run[1]["parts"]
    loader = parts["loader"]
    assert [r["workers"] for r in loader["rows"]] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["over_step"] > 0 for r in loader["rows"])
    inference = parts["pruned_inference"]["rows"]
    assert {(r["batch"], r["model"]) for r in inference} == {
        (b, m) for b in (1, 4) for m in ("dense", "0.25", "0.5", "0.75")
    }
    for row in inference:
        assert row["eager"]["ms"] > 0
        assert _finite(row["eager"]["fraction"])
        assert "CUDA" in row["graphed"]["n/a"]
        assert row["flops_reduction"] >= 1
    for row in parts["latency"]["rows"]:
        assert len(row["latency_ms"]) == 2
        assert row["median_ms"] > 0
        assert row["spread"] >= 0
    trials = parts["two_trials"]
    assert trials["alone_images_per_s"] > 0
    assert len(trials["each_over_alone"]) == 2
    assert all(r > 0 for r in trials["each_over_alone"])
