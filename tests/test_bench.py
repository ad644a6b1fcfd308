"""The benchmarks' verdicts: a missed target prints MISSED and makes the exit status non-zero.

The benchmarks themselves take minutes and are never run by the tests; each ends with
`raise SystemExit(check([...]))` (or returns `check(...)` to `sys.exit`), so what is checked here
is what decides their exit status.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


targets = _load("targets")


@pytest.mark.parametrize(
    ("value", "op", "bound", "met"),
    [
        (3.2, ">=", 3.0, True),
        (3.0, ">=", 3.0, True),  # the bound itself meets it
        (2.9, ">=", 3.0, False),
        (0.2, "<=", 0.3, True),
        (0.31, "<=", 0.3, False),
        (-1.0, ">=", -1.0, True),
        (math.nan, ">=", 0.0, False),  # a failed measurement is never a met target
        (math.nan, "<=", 1.0, False),
        (math.inf, "<=", 1.0, False),
    ],
)
def test_a_target_is_met_only_on_the_right_side_of_its_bound(
    value: float, op: str, bound: float, met: bool
) -> None:
    assert targets.Target("x", value, op, bound).met is met


def test_check_prints_every_target_and_fails_when_one_is_missed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = targets.Target("loader / train step", 7.5, ">=", 3.0, "x")
    bad = targets.Target("default training time", 11.2, "<=", 10, " min")
    assert targets.check([good]) == 0
    assert capsys.readouterr().out == "target loader / train step: 7.5x (target >= 3x): met\n"
    assert targets.check([good, bad]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "target loader / train step: 7.5x (target >= 3x): met",
        "target default training time: 11.2 min (target <= 10 min): MISSED",
        "missed 1 of 2 targets: default training time",
    ]


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_benchmark_exits_with_the_verdict_of_its_targets(script: str) -> None:
    source = (BENCH / script).read_text()
    assert "from targets import Target, check" in source
    # main raises SystemExit(check(...)), or returns it to sys.exit
    assert re.search(r"raise SystemExit\(\s*check\(|return check\(", source), script
    assert len(re.findall(r"Target\(\s*\"", source)) >= 1
