"""Dimension clusters: YOLOv2's anchors by k-means over the training boxes, with 1 - IoU as distance.

YOLOv2 (Redmon & Farhadi 2017, "Dimension Clusters") chooses its priors by k-means on the (w, h) of
the training boxes with d(box, centroid) = 1 - IoU(box, centroid), both centred at one point, so that
large boxes do not outweigh small ones as they would under Euclidean distance; darknet's `detector
calc_anchors` does the same with the mean as the update. scikit-learn's KMeans is Euclidean only, so
the few lines are written here. Anchors are (w, h) in grid cells of the network input (32 pixels), the
unit darknet's region layer and `region_loss` use.

darknet's VOC anchors are clusters of VOC boxes on a 13 x 13 grid; at another input size or on other
data they can miss most boxes: on the default synthetic set at 160 (a 5 x 5 grid) 96% of the boxes
pick the smallest VOC anchor and three anchors are never used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from yolov2.boxes import shape_iou
from yolov2.data import Annotation
from yolov2.errors import InputError

STRIDE = 32  # YOLOv2's output stride: one grid cell is 32 input pixels


def box_sizes(
    annotations: Sequence[Annotation],
    input_size: int,
    *,
    letterbox: bool = False,
    keep_difficult: bool = False,
) -> np.ndarray:
    """(N, 2) float64 (w, h) of every box in grid cells, as the network sees it at `input_size`.

    Without letterbox the image is stretched to a square, so w and h scale by their own sides; with
    letterbox both scale by the longer side. Difficult boxes are left out, as in training.
    """
    grid = input_size / STRIDE
    sizes = []
    for ann in annotations:
        boxes = ann.boxes if keep_difficult else ann.boxes[~ann.difficult]
        if not len(boxes):
            continue
        wh = np.stack((boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1), axis=1)
        sides = (max(ann.width, ann.height),) * 2 if letterbox else (ann.width, ann.height)
        sizes.append(wh.astype(np.float64) / np.asarray(sides, dtype=np.float64) * grid)
    return np.concatenate(sizes) if sizes else np.zeros((0, 2))


def _shape_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """`boxes.shape_iou`, the loss's anchor-matching IoU, on float64 arrays."""
    return shape_iou(torch.from_numpy(sizes), torch.from_numpy(anchors)).numpy()


def mean_best_iou(sizes: np.ndarray, anchors: np.ndarray | Sequence[Sequence[float]]) -> float:
    """The average, over boxes, of the IoU with the anchor closest in shape: the paper's Avg IOU."""
    return float(_shape_iou(sizes, np.asarray(anchors, dtype=np.float64)).max(axis=1).mean())


def kmeans_anchors(
    sizes: np.ndarray, k: int = 5, *, seed: int = 0, restarts: int = 10, iterations: int = 300
) -> np.ndarray:
    """(k, 2) anchors clustering `sizes` under 1 - IoU, sorted by area, deterministic for a seed.

    Each of `restarts` runs seeds by k-means++ (each next centre drawn with probability proportional
    to its 1 - IoU distance from the nearest chosen one), then alternates assignment and mean until
    nothing moves; the run with the highest mean best IoU wins, as one run can settle in a local
    minimum that merges two shapes.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if len(sizes) < k:
        raise InputError(f"k-means needs at least {k} boxes to place {k} anchors, got {len(sizes)}")
    rng = np.random.default_rng(seed)
    runs = [_kmeans_once(sizes, k, rng, iterations) for _ in range(max(1, restarts))]
    best = max(runs, key=lambda centres: mean_best_iou(sizes, centres))
    return best[np.argsort(best.prod(axis=1), kind="stable")]


def _kmeans_once(
    sizes: np.ndarray, k: int, rng: np.random.Generator, iterations: int
) -> np.ndarray:
    """One k-means++ seeding and Lloyd run; a cluster left empty takes the worst-served box."""
    centres = sizes[[rng.integers(len(sizes))]]
    while len(centres) < k:
        distance = 1 - _shape_iou(sizes, centres).max(axis=1)
        total = distance.sum()
        if total <= 0:  # fewer distinct shapes than anchors: repeat one
            centres = np.concatenate((centres, centres[:1]))
            continue
        centres = np.concatenate((centres, sizes[[rng.choice(len(sizes), p=distance / total)]]))
    assignment = np.full(len(sizes), -1)
    for _ in range(iterations):
        iou = _shape_iou(sizes, centres)
        new = iou.argmax(axis=1)
        if np.array_equal(new, assignment):
            break
        assignment = new
        for cluster in range(k):
            members = sizes[assignment == cluster]
            centres[cluster] = members.mean(axis=0) if len(members) else sizes[iou.max(1).argmin()]
    return centres
