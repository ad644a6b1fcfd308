"""Fixtures shared by tests/yolov2 and tests/search: the VOCdevkit tree writer lives in tests/yolov2.

The suite runs torch on one thread. It runs on two cores that other work shares, and torch's
intra-op threads spin while they wait for a busy core: measured there, the pipeline tests took 7x
the CPU time with two threads that they take with one.

It keeps HOME and every cache in a temporary folder of its own, made before any test module is
imported and removed at the end: the default cache (`yolov2.config.default_cache`), `~` in
experiment paths, onnxruntime's and matplotlib's caches and the console script's subprocesses
all write there, never into the user's home.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests.yolov2.conftest import write_voc_tree_fixture

torch.set_num_threads(1)

__all__ = ["write_voc_tree_fixture"]

_SANDBOX: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _SANDBOX  # noqa: PLW0603  (one folder for the whole session, made before collection)
    _SANDBOX = Path(tempfile.mkdtemp(prefix="prune-search-tests-"))
    home = _SANDBOX / "home"
    home.mkdir()
    os.environ["HOME"] = str(home)
    os.environ["XDG_CACHE_HOME"] = str(home / ".cache")
    os.environ["PRUNE_SEARCH_CACHE"] = str(home / ".cache" / "prune-search")
    # matplotlib builds its font cache in the new HOME on first import and logs it: do it here,
    # before any test reads a command's stderr line by line.
    import matplotlib.font_manager  # noqa: F401


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SANDBOX is not None:
        shutil.rmtree(_SANDBOX, ignore_errors=True)


@pytest.fixture(scope="session")
def smoke_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One data set and dense cache of the smoke search experiment (tests/search/conftest.py's
    `smoke_overrides`) for the session: the search tests and the sensitivity tests share it."""
    return tmp_path_factory.mktemp("search-cache")
