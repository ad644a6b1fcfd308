"""Dimension clusters: k-means under 1 - IoU, box sizes in grid cells, on real VOCdevkit trees."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.yolov2.conftest import WriteVocTree
from yolov2.anchors import box_sizes, kmeans_anchors, mean_best_iou
from yolov2.boxes import shape_iou
from yolov2.data import read_voc
from yolov2.errors import InputError
from yolov2.model import VOC_ANCHORS


def test_shape_iou_of_centred_boxes() -> None:
    sizes = torch.tensor([[2.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    anchors = torch.tensor([[1.0, 1.0], [2.0, 1.0]], dtype=torch.float64)
    np.testing.assert_allclose(shape_iou(sizes, anchors), [[0.25, 0.5], [0.5, 1 / 3]])


def _clusters(rng: np.random.Generator, centres: np.ndarray, per: int = 200) -> np.ndarray:
    return np.concatenate([c * rng.uniform(0.95, 1.05, (per, 2)) for c in centres])


def test_kmeans_finds_planted_shapes_sorted_by_area() -> None:
    planted = np.array([[0.5, 0.6], [1.0, 3.0], [3.0, 1.0], [4.0, 4.0], [8.0, 6.0]])
    sizes = _clusters(np.random.default_rng(1), planted)
    anchors = kmeans_anchors(sizes, 5, seed=0)
    order = np.argsort(planted.prod(axis=1), kind="stable")
    np.testing.assert_allclose(anchors, planted[order], rtol=0.03)
    assert mean_best_iou(sizes, anchors) > 0.93


def test_kmeans_is_deterministic_and_beats_foreign_anchors() -> None:
    rng = np.random.default_rng(2)
    sizes = rng.uniform(0.5, 2.5, (500, 2))
    first, second = kmeans_anchors(sizes, 5, seed=3), kmeans_anchors(sizes, 5, seed=3)
    np.testing.assert_array_equal(first, second)
    assert mean_best_iou(sizes, first) > mean_best_iou(sizes, VOC_ANCHORS) + 0.1


def test_kmeans_with_fewer_distinct_shapes_than_anchors() -> None:
    sizes = np.array([[1.0, 1.0]] * 4 + [[2.0, 2.0]] * 4)
    anchors = kmeans_anchors(sizes, 3, seed=0)
    assert anchors.shape == (3, 2)
    assert mean_best_iou(sizes, anchors) == pytest.approx(1.0)


def test_kmeans_needs_as_many_boxes_as_anchors() -> None:
    with pytest.raises(InputError, match="at least 5 boxes"):
        kmeans_anchors(np.ones((3, 2)), 5)


def test_box_sizes_in_grid_cells(tmp_path: Path, write_voc_tree: WriteVocTree) -> None:
    # A 320 x 160 image with a 64 x 32 box and a difficult one; at input 160 the grid is 5 x 5.
    objects = [("circle", 1, 1, 64, 32), ("square", 10, 10, 20, 20, 1)]
    root = write_voc_tree(
        tmp_path, "2007", "trainval", [{"id": "a", "width": 320, "height": 160, "objects": objects}]
    )
    annotations = read_voc(root, [("2007", "trainval")], ["circle", "square"])
    np.testing.assert_allclose(box_sizes(annotations, 160), [[1.0, 1.0]])
    np.testing.assert_allclose(box_sizes(annotations, 160, letterbox=True), [[1.0, 0.5]])
    assert len(box_sizes(annotations, 160, keep_difficult=True)) == 2
    assert box_sizes([], 160).shape == (0, 2)
