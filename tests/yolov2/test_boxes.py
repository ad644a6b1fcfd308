"""Region decode, thresholds and per-class NMS, and the VOC pixel convention, on hand-built heads."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from yolov2.boxes import decode, postprocess, to_voc_pixels

# Two anchors, three classes, a 2 x 3 grid: channel a*(5+3) + [tx, ty, tw, th, to, c0, c1, c2].
ANCHORS = [(1.0, 1.0), (1.5, 0.5)]
NUM_CLASSES = 3


def _head(h: int, w: int, anchors: int = 2, classes: int = NUM_CLASSES) -> Tensor:
    """A raw head whose every anchor has objectness logit -20 (score ~ 2e-9: below any threshold)."""
    out = torch.zeros(1, anchors, 5 + classes, h, w)
    out[:, :, 4] = -20.0
    return out


def _set(out: Tensor, anchor: int, y: int, x: int, values: list[float]) -> None:
    out[0, anchor, :, y, x] = torch.tensor(values)


def _flat(out: Tensor) -> Tensor:
    b, a, k, h, w = out.shape
    return out.reshape(b, a * k, h, w)


def test_decode_one_anchor_by_hand() -> None:
    out = _head(2, 3)
    # sigmoid(0) = 1/2, sigmoid(ln 3) = 3/4, exp(ln 2) = 2; softmax(0, ln 3, 0) = (1/5, 3/5, 1/5).
    _set(out, 1, 1, 2, [0.0, math.log(3), math.log(2), 0.0, 0.0, 0.0, math.log(3), 0.0])
    boxes, scores = decode(_flat(out), ANCHORS)
    assert boxes.shape == (1, 2 * 2 * 3, 4)
    assert scores.shape == (1, 2 * 2 * 3, NUM_CLASSES)
    index = 1 * 6 + 1 * 3 + 2  # anchor-major, then row, then column
    # centre ((2 + 1/2) / 3, (1 + 3/4) / 2); size (2 * 1.5 / 3, 1 * 0.5 / 2)
    cx, cy, bw, bh = 2.5 / 3, 1.75 / 2, 1.0, 0.25
    expected_box = [cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2]
    assert boxes[0, index].tolist() == pytest.approx(expected_box, abs=1e-6)
    assert scores[0, index].tolist() == pytest.approx([0.1, 0.3, 0.1], abs=1e-6)


def test_decode_default_anchor_is_its_cell() -> None:
    out = _head(2, 2, anchors=1)
    boxes, scores = decode(_flat(out), [(1.0, 1.0)])
    # tx = ty = tw = th = 0: each box is its own cell's square, centred in it.
    assert boxes[0].tolist() == [
        [0.0, 0.0, 0.5, 0.5],
        [0.5, 0.0, 1.0, 0.5],
        [0.0, 0.5, 0.5, 1.0],
        [0.5, 0.5, 1.0, 1.0],
    ]
    assert scores.max() < 1e-8


def test_decode_clamps_wild_sizes() -> None:
    out = _head(1, 1, anchors=1)
    _set(out, 0, 0, 0, [0.0, 0.0, 1000.0, 1000.0, 0.0, 0.0, 0.0, 0.0])
    boxes, _ = decode(_flat(out), [(1.0, 1.0)])
    assert torch.isfinite(boxes).all()
    assert boxes[0, 0, 2] - boxes[0, 0, 0] == pytest.approx(math.exp(7.0), rel=1e-5)


def _two_boxes(second_class: int, second_offset: float = 0.0) -> Tensor:
    """One 1 x 1 cell (32 x 32 input), two same-shape anchors, both confident."""
    out = _head(1, 1)
    logits = [10.0, -10.0, -10.0]
    _set(out, 0, 0, 0, [0.0, 0.0, 0.0, 0.0, 2.0, *logits])
    second = [-10.0, -10.0, -10.0]
    second[second_class] = 10.0
    _set(out, 1, 0, 0, [second_offset, 0.0, 0.0, 0.0, 1.0, *second])
    return _flat(out)


ANCHORS_SAME = [(0.5, 0.5), (0.5, 0.5)]
SCORE_0 = 1 / (1 + math.exp(-2.0)) * 1 / (1 + 2 * math.exp(-20.0))  # sigmoid(2) x softmax
SCORE_1 = 1 / (1 + math.exp(-1.0)) * 1 / (1 + 2 * math.exp(-20.0))


@pytest.mark.parametrize(
    ("second_class", "expected_labels", "expected_scores"),
    [(0, [0], [SCORE_0]), (1, [0, 1], [SCORE_0, SCORE_1]), (2, [0, 2], [SCORE_0, SCORE_1])],
    ids=["same-class-suppressed", "other-class-kept", "third-class-kept"],
)
def test_nms_is_per_class(
    second_class: int, expected_labels: list[int], expected_scores: list[float]
) -> None:
    (result,) = postprocess(_two_boxes(second_class), ANCHORS_SAME, conf_thresh=0.01)
    assert result.labels.tolist() == expected_labels
    assert result.scores.tolist() == pytest.approx(expected_scores, rel=1e-6)
    # A 0.5-cell anchor centred in the single 32-pixel cell: (8, 8, 24, 24) in input pixels.
    assert result.boxes.tolist() == [[8.0, 8.0, 24.0, 24.0]] * len(expected_labels)


def test_nms_keeps_same_class_boxes_that_barely_overlap() -> None:
    # The second box moves by sigmoid(tx) - 1/2 of a cell: far enough for IoU < 0.45.
    (result,) = postprocess(_two_boxes(0, second_offset=3.0), ANCHORS_SAME, conf_thresh=0.01)
    assert result.labels.tolist() == [0, 0]
    shift = 32 * (1 / (1 + math.exp(-3.0)) - 0.5)
    assert result.boxes[1].tolist() == pytest.approx([8 + shift, 8.0, 24 + shift, 24.0], abs=1e-4)


@pytest.mark.parametrize(
    ("conf_thresh", "expected_count"),
    [(0.9, 0), (0.8, 1), (0.5, 2), (0.005, 2), (1e-12, 2 * 3 * 2 * 3)],
)
def test_conf_thresh(conf_thresh: float, expected_count: int) -> None:
    # Scores: anchor 0 of cell (0, 0) ~0.881 (class 0), anchor 1 of cell (1, 2) ~0.731 (class 1);
    # every other anchor ~2e-9 on each class. Disjoint boxes, so NMS removes none of the two.
    out = _head(2, 3)
    _set(out, 0, 0, 0, [0.0, 0.0, 0.0, 0.0, 2.0, 10.0, -10.0, -10.0])
    _set(out, 1, 1, 2, [0.0, 0.0, 0.0, 0.0, 1.0, -10.0, 10.0, -10.0])
    (result,) = postprocess(_flat(out), ANCHORS, conf_thresh=conf_thresh, nms_thresh=1.0)
    assert len(result.scores) == expected_count
    assert (result.scores > conf_thresh).all()
    if expected_count:
        assert result.scores[0].item() == pytest.approx(SCORE_0, rel=1e-6)


def test_max_detections_keeps_the_best() -> None:
    out = _head(2, 3)
    out[0, :, 4] = torch.arange(12.0).view(2, 2, 3) - 6  # distinct objectness, disjoint cells
    (result,) = postprocess(_flat(out), ANCHORS, conf_thresh=0.0, nms_thresh=1.0, max_detections=4)
    assert len(result.scores) == 4
    assert result.scores.tolist() == sorted(result.scores.tolist(), reverse=True)
    best = 1 / (1 + math.exp(-5.0)) / 3  # objectness logit 5, uniform over 3 classes
    assert result.scores[0].item() == pytest.approx(best, rel=1e-6)


def test_postprocess_is_per_image() -> None:
    first, second = _two_boxes(1), _two_boxes(0)
    results = postprocess(torch.cat([first, second]), ANCHORS_SAME, conf_thresh=0.01)
    assert [r.labels.tolist() for r in results] == [[0, 1], [0]]


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ([0.0, 0.0, 10.0, 20.0], [1.0, 1.0, 10.0, 20.0]),  # a box at the corner: +1 on the minimum
        ([4.5, 9.0, 30.5, 40.0], [5.5, 10.0, 30.5, 40.0]),
        ([-5.0, -3.0, 10.5, 20.0], [1.0, 1.0, 10.5, 20.0]),  # clamped at 1
        ([3.0, 4.0, 100.0, 200.0], [4.0, 5.0, 60.0, 50.0]),  # clamped at width 60, height 50
        ([70.0, 60.0, 80.0, 90.0], [60.0, 50.0, 60.0, 50.0]),  # wholly outside
    ],
)
def test_to_voc_pixels(box: list[float], expected: list[float]) -> None:
    assert to_voc_pixels(torch.tensor([box]), height=50, width=60).tolist() == [expected]


def test_to_voc_pixels_leaves_its_input_alone() -> None:
    boxes = torch.tensor([[-5.0, 0.0, 100.0, 20.0]])
    to_voc_pixels(boxes, 50, 60)
    assert boxes.tolist() == [[-5.0, 0.0, 100.0, 20.0]]
