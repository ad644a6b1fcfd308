"""VOC mAP: the vectorised `yolov2.evaluate` against a plain transcription of the devkit's loop.

    python bench/bench_voc_eval.py [--images 5000] [--classes 20] [--dets-per-image 100]

Both sides match once and score both metrics (VOC07 11-point and VOC2010+ all-point); every class's
AP must agree to 1e-12. The reference loop and the synthetic data live here, and the tests of
`yolov2.evaluate` import them from this file, so the devkit transcription exists once.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from yolov2.evaluate import METRICS, Detections, GroundTruth, Metric, mean_ap, precision_recall

TOLERANCE = 1e-12
# What the devkit's `t=0:0.1:1` holds in MATLAB, written out rather than computed: 3*0.1 for 0.3
# (first half of the colon), 1-4*0.1 and 1-3*0.1 for 0.6 and 0.7 (second half), which are exact.
DEVKIT_RECALLS = (0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Truth:
    """One image's objects, shaped like `yolov2.data.Annotation`."""

    image_id: str
    boxes: npt.NDArray[np.float32]  # (N, 4) VOC pixels xmin, ymin, xmax, ymax, 1-based inclusive
    labels: npt.NDArray[np.int64]  # (N,)
    difficult: npt.NDArray[np.bool_]  # (N,)


def synthetic_voc(
    num_images: int,
    num_classes: int,
    dets_per_image: int,
    *,
    seed: int,
    extent: int = 500,
    max_objects: int = 6,
    inverted: float = 0.0,
) -> tuple[list[Truth], Detections]:
    """Integer-pixel objects (some difficult, some annotated twice, some images empty) and, per image,
    detections: jittered copies of the objects (matches, duplicates, overlaps near 0.5, wrong classes)
    and random boxes, scored on a 1/1000 grid so that ties are common. A small `extent` crowds the
    objects together. A fraction `inverted` of the detections then get inverted boxes, as real
    results files hold them (drawn from a generator of their own, so the rest stays the same)."""
    rng = np.random.default_rng(seed)
    truths, parts = [], []
    for i in range(num_images):
        image_id = f"{i:06d}"
        n = int(rng.integers(0, max_objects + 1))
        xy = rng.integers(1, max(2, int(extent * 0.6)), size=(n, 2))
        wh = rng.integers(0, max(1, int(extent * 0.4)), size=(n, 2))
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        labels = rng.integers(num_classes, size=n)
        if n >= 2 and rng.random() < 0.3:  # a doubly annotated object: equal overlaps, argmax ties
            boxes[-1], wh[-1], labels[-1] = boxes[0], wh[0], labels[0]
        truths.append(Truth(image_id, boxes, labels, rng.random(n) < 0.2))

        near = min(dets_per_image, 3 * n)
        src = rng.integers(n, size=near) if n else np.zeros(0, dtype=np.int64)
        size = np.tile(wh[src] + 1, 2)
        moved = boxes[src] + np.round(rng.normal(0.0, 0.2, size=(near, 4)) * size)
        near_labels = np.where(
            rng.random(near) < 0.1, rng.integers(num_classes, size=near), labels[src]
        )
        far = dets_per_image - near
        xy = rng.integers(1, max(2, int(extent * 0.6)), size=(far, 2))
        wh_far = rng.integers(0, max(1, int(extent * 0.4)), size=(far, 2))
        det = np.concatenate([moved, np.concatenate([xy, xy + wh_far], axis=1)])
        det = np.concatenate(
            [np.minimum(det[:, :2], det[:, 2:]), np.maximum(det[:, :2], det[:, 2:])], 1
        )
        parts.append(
            Detections(
                np.full(dets_per_image, image_id),
                np.concatenate([near_labels, rng.integers(num_classes, size=far)]),
                rng.integers(0, 1000, size=dets_per_image) / 1000,
                det,
            )
        )
    detections = Detections.concatenate(parts)
    if inverted:
        detections.boxes = invert_some(detections.boxes, inverted, np.random.default_rng([seed, 1]))
    return truths, detections


def invert_some(
    boxes: npt.NDArray[np.float64], fraction: float, rng: np.random.Generator
) -> npt.NDArray[np.float64]:
    """Boxes with a `fraction` of them inverted: x corners swapped, y corners swapped, both, or xmax
    put half a pixel below xmin (a box that, counting pixels inclusively, still covers half a one)."""
    boxes = boxes.copy()
    rows = np.flatnonzero(rng.random(len(boxes)) < fraction)
    kinds = rng.integers(4, size=len(rows))
    for row, kind in zip(rows.tolist(), kinds.tolist(), strict=True):
        x0, y0, x1, y1 = boxes[row]
        if kind == 3:
            boxes[row, 2] = x0 - 0.5
            continue
        if kind in (0, 2):
            boxes[row, [0, 2]] = x1 + 1, x0
        if kind in (1, 2):
            boxes[row, [1, 3]] = y1 + 1, y0
    return boxes


def reference_voc_eval(
    ground_truth: Sequence[GroundTruth],
    detections: Detections,
    classes: list[str],
    iou_threshold: float = 0.5,
) -> dict[Metric, dict[str, float]]:
    """The devkit's VOCevaldet (as py-faster-rcnn's voc_eval transcribes it), one detection at a
    time; AP NaN for a class without non-difficult objects. As in VOCevaldet.m, an overlap counts
    only with objects the box intersects (iw > 0 and ih > 0), which decides inverted boxes."""
    aps: dict[Metric, dict[str, float]] = {m: {} for m in METRICS}
    for c, name in enumerate(classes):
        records: dict[str, dict[str, Any]] = {}
        npos = 0
        for gt in ground_truth:
            keep = np.asarray(gt.labels) == c
            difficult = np.asarray(gt.difficult, dtype=bool)[keep]
            npos += int(np.sum(~difficult))
            records[gt.image_id] = {
                "bbox": np.asarray(gt.boxes, dtype=np.float64)[keep],
                "difficult": difficult,
                "det": [False] * int(np.sum(keep)),
            }
        rows = np.flatnonzero(detections.labels == c)
        ranked = rows[
            np.argsort(-detections.scores[rows], kind="stable")
        ]  # MATLAB's sort is stable
        tp = np.zeros(len(ranked))
        fp = np.zeros(len(ranked))
        for d, row in enumerate(ranked):
            record = records[str(detections.image_ids[row])]
            bb = detections.boxes[row]
            bbgt = record["bbox"]
            ovmax = -np.inf
            if bbgt.size > 0:
                ixmin = np.maximum(bbgt[:, 0], bb[0])
                iymin = np.maximum(bbgt[:, 1], bb[1])
                ixmax = np.minimum(bbgt[:, 2], bb[2])
                iymax = np.minimum(bbgt[:, 3], bb[3])
                iw = ixmax - ixmin + 1.0
                ih = iymax - iymin + 1.0
                inters = iw * ih
                uni = (
                    (bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                    + (bbgt[:, 2] - bbgt[:, 0] + 1.0) * (bbgt[:, 3] - bbgt[:, 1] + 1.0)
                    - inters
                )
                with np.errstate(invalid="ignore", divide="ignore"):
                    overlaps = np.where((iw > 0) & (ih > 0), inters / uni, -np.inf)
                ovmax = np.max(overlaps)
                jmax = np.argmax(overlaps)
            if ovmax > iou_threshold:
                if not record["difficult"][jmax]:
                    if not record["det"][jmax]:
                        tp[d] = 1.0
                        record["det"][jmax] = True
                    else:
                        fp[d] = 1.0
            else:
                fp[d] = 1.0
        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        for metric in METRICS:
            if npos == 0:
                aps[metric][name] = math.nan
                continue
            rec = tp / float(npos)
            prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
            aps[metric][name] = reference_ap(rec, prec, metric)
    return aps


def reference_ap(
    rec: npt.NDArray[np.float64], prec: npt.NDArray[np.float64], metric: Metric
) -> float:
    """The devkit's VOCap / 11-point loop, element by element, at MATLAB's thresholds."""
    if metric == "voc07":
        ap = 0.0
        for t in DEVKIT_RECALLS:
            p = prec[rec >= t]
            ap += (float(np.max(p)) if p.size else 0.0) / 11.0
        return ap
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def same_aps(a: dict[str, float], b: dict[str, float]) -> bool:
    return a.keys() == b.keys() and all(
        (math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= TOLERANCE for k in a
    )


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--dets-per-image", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inverted", type=float, default=0.0,
                        help="fraction of detections with inverted boxes (xmax < xmin, ...)")  # fmt: skip
    args = parser.parse_args()

    classes = [f"class{c}" for c in range(args.classes)]
    truths, detections = synthetic_voc(
        args.images, args.classes, args.dets_per_image, seed=args.seed, inverted=args.inverted
    )
    objects = sum(len(t.labels) for t in truths)
    print(
        f"{args.images} images, {args.classes} classes, {objects} objects, {len(detections)} dets"
    )

    vectorised_s = math.inf
    for _ in range(3):  # best of three; the loop runs once
        start = time.perf_counter()
        curves = precision_recall(truths, detections, classes)
        results = {m: mean_ap(curves, m) for m in METRICS}
        vectorised_s = min(vectorised_s, time.perf_counter() - start)
    start = time.perf_counter()
    reference = reference_voc_eval(truths, detections, classes)
    loop_s = time.perf_counter() - start

    identical = all(same_aps(results[m].ap, reference[m]) for m in METRICS)
    print(f"map (voc07) {results['voc07'].map:.6f}, map_voc12 {results['voc12'].map:.6f}")
    print(
        f"vectorised {vectorised_s:.3f} s, loop {loop_s:.2f} s, "
        f"speedup {loop_s / vectorised_s:.0f}×, identical: {identical}"
    )
    raise SystemExit(
        check(
            [
                Target("APs that differ from the devkit loop's", 0 if identical else 1, "<=", 0),
                Target("vectorised evaluation", vectorised_s, "<=", 1.0, " s"),
            ]
        )
    )


if __name__ == "__main__":
    main()
