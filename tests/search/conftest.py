"""The smoke search: the smoke experiment made to learn in seconds (it is evaluated on its own
training images), so that trials get distinct non-zero maps; each search test starts real Ray on
loopback and a real SQLite study in a temporary folder."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"
# A task the tiny model learns in seconds, and a finetune short enough that pruning shows in map.
LEARNS = [
    "data.synthetic={num_trainval: 16, num_test: 8, seed: 0, objects_per_image: [1, 2], "
    "object_size: [0.3, 0.6], clutter: 0, noise: 2}",
    "data.test_sets=[[2007, trainval]]",
    "data.augment={jitter: 0, hue: 0, saturation: 1, exposure: 1, flip: false}",
    "data.input_size=96",
    "model.width=0.25",
    "train.epochs=40",
    "train.optimizer=adamw",
    "train.lr=0.004",
    "train.weight_decay=0.01",
    "train.burn_in=5",
    "train.schedule=constant",
    "train.eval_every=0",
    "finetune.epochs=2",
    "finetune.optimizer=adamw",
    "finetune.lr=0.002",
    "finetune.schedule=constant",
    "prune.round_to=4",
    "prune.min_channels=4",
    "search.known_points=[0.0, 0.3]",
]


@pytest.fixture(autouse=True, scope="session")
def _loopback_ray() -> Iterator[None]:
    """Every Ray listener on 127.0.0.1, as the tests of design.md ask."""
    saved = os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    yield
    if saved is None:
        os.environ.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    else:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = saved


def smoke_overrides(cache: Path, *extra: str) -> list[str]:
    """The smoke experiment that learns, its data and dense stage in `cache` (`smoke_cache`, of
    tests/conftest.py: one for the session)."""
    return [f"cache_dir={cache}/cache", f"data.root={cache}/data/VOCdevkit", *LEARNS, *extra]


def set_arguments(overrides: list[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", override)]
