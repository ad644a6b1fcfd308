"""Fixtures of the data tests: a small VOCdevkit tree on disk, and targets as the dataset makes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import tv_tensors

from tests.yolov2.conftest import WriteVocTree
from yolov2.data.voc import VOC_CLASSES

DOG, CAT, PERSON = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")


@pytest.fixture
def devkit(tmp_path: Path, write_voc_tree: WriteVocTree) -> Path:
    """VOC2007 trainval (2 images, one difficult object) and VOC2012 trainval (1 image)."""
    root = tmp_path / "VOCdevkit"
    write_voc_tree(root, "2007", "trainval", [
        {"id": "000005", "objects": [("dog", 1, 1, 10, 20), ("cat", 30, 5, 64, 48, True)]},
        {"id": "000007", "width": 50, "height": 40, "objects": [("person", 2, 3, 50, 40)]},
    ])  # fmt: skip
    write_voc_tree(root, "2012", "trainval", [
        {"id": "2008_000001", "objects": [("cat", 5, 6, 7, 8)]},
    ])  # fmt: skip
    return root


def make_target(
    boxes: list[list[float]], canvas: tuple[int, int], labels: list[int], difficult: list[bool]
) -> dict[str, Any]:
    return {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=canvas),
        "labels": torch.tensor(labels),
        "difficult": torch.tensor(difficult),
        "image_id": "x",
        "orig_size": canvas,
    }  # fmt: skip
