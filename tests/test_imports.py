"""The one-direction layout of design.md: `yolov2` (and the CLI's import) never pull in Ray or Optuna."""

from __future__ import annotations

import subprocess
import sys

import pytest

YOLOV2_MODULES = (
    "yolov2, yolov2.checkpoint, yolov2.engine, yolov2.darknet, yolov2.data, yolov2.evaluate, "
    "yolov2.sensitivity"
)


@pytest.mark.parametrize(
    "modules",
    [
        YOLOV2_MODULES,
        "search.cli",  # Ray is imported only by the commands that search, not by the parser
    ],
    ids=["yolov2", "search-cli"],
)
def test_no_ray_or_optuna_on_import(modules: str) -> None:
    code = (
        f"import sys, {modules}; "
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna')); "
        "assert not leaked, leaked"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
