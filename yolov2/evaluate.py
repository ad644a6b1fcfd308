"""The PASCAL VOC detection metric (per-class AP and mAP) and VOC results files (comp4_det_*.txt).

Hand-written because the VOC metric's exact conventions are not what pycocotools or torchmetrics
compute: box areas and overlaps count pixels inclusively (+1), a detection matched to a `difficult`
object is neither a true nor a false positive, and AP is either the VOC2007 11-point mean or the
VOC2010+ area under the precision envelope. The matching is the devkit's (VOCevaldet.m) greedy
algorithm, vectorised over all detections at once; `bench/bench_voc_eval.py` checks it against a
plain transcription of the devkit loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from yolov2.errors import InputError
from yolov2.files import write_text_atomic

log = logging.getLogger(__name__)

Metric = Literal["voc07", "voc12"]
METRICS: tuple[Metric, ...] = ("voc07", "voc12")


def matlab_colon(a: float, d: float, b: float) -> npt.NDArray[np.float64]:
    """`a:d:b` exactly as MATLAB builds it, bit for bit (MathWorks' COLONOP algorithm).

    MATLAB does not add `d` repeatedly, nor compute every element as `a + k*d`. It takes the
    number of intervals n = round((b - a) / d), one less when a + n*d overshoots b by more than
    tol = 2*eps*max(|a|, |b|) (for an integer `a` and an integer `d` it counts them exactly), and
    the right end c = a + n*d, snapped to b when within tol of it. Then, for k = 0 .. floor(n/2),
    element k is a + k*d and element n - k is c - k*d: the first half counts up from a, the second
    half down from the end (element j is b - (n - j)*d when c is b), so that the range is
    symmetric about its middle; when n is even the middle element is (a + c) / 2.

    For the VOC devkit's `0:0.1:1` this gives 0.30000000000000004 for 0.3 (3 * 0.1, first half),
    but 0.6 and 0.7 exact (1 - 4*0.1 and 1 - 3*0.1, second half), where np.arange(0, 1.1, 0.1)
    gives 0.6000000000000001 and 0.7000000000000001. Empty when `d` points away from `b`.
    """
    if not all(math.isfinite(v) for v in (a, d, b)):
        raise ValueError(f"matlab_colon: {a}:{d}:{b} is not finite")
    if d == 0 or (a < b and d < 0) or (b < a and d > 0):
        return np.empty(0)
    tol = 2.0 * np.finfo(np.float64).eps * max(abs(a), abs(b))
    sign = math.copysign(1.0, d)
    if a == math.floor(a) and d == 1:
        n = math.floor(b) - int(a)
    elif a == math.floor(a) and d == math.floor(d):
        q = math.floor(a / d)
        n = math.floor((b - (a - q * d)) / d) - q
    else:
        n = round((b - a) / d)
        if sign * (a + n * d - b) > tol:
            n -= 1
    c = a + n * d
    if sign * (c - b) > -tol:
        c = b
    out = np.empty(n + 1)
    for k in range(n // 2 + 1):
        out[k] = a + k * d
        out[n - k] = c - k * d
    if n % 2 == 0:
        out[n // 2] = (a + c) / 2
    return out


# The devkit's `for t=0:0.1:1` (VOCevaldet.m), as MATLAB evaluates it: t(4) is 0.30000000000000004,
# so a recall of exactly 0.3 (npos a multiple of 10) falls short of "rec >= t" there, while t(7) and
# t(8) are exactly 0.6 and 0.7. Exact tenths would differ from it at 0.3; py-faster-rcnn's
# np.arange(0, 1.1, 0.1) at 0.6 and 0.7 (0.6000000000000001, 0.7000000000000001).
_VOC07_RECALLS = matlab_colon(0.0, 0.1, 1.0)


class GroundTruth(Protocol):
    """One image's annotated objects; `yolov2.data.Annotation` is one.

    boxes (N, 4) VOC pixel xmin, ymin, xmax, ymax (1-based, inclusive), labels (N,) class indices,
    difficult (N,) bool. An image without objects (N = 0) still counts: its detections are FPs.
    """

    @property
    def image_id(self) -> str: ...
    @property
    def boxes(self) -> npt.NDArray[Any]: ...
    @property
    def labels(self) -> npt.NDArray[Any]: ...
    @property
    def difficult(self) -> npt.NDArray[Any]: ...


@dataclass
class Detections:
    """Scored boxes of many images and classes, one row per detection, in VOC pixel coordinates.

    image_ids (K,) str, labels (K,) int64 class indices, scores (K,) float64, boxes (K, 4) float64
    xmin, ymin, xmax, ymax (1-based, inclusive, as in the annotations). Within a class, rows with
    equal scores are ranked in row order. The model's postprocess (through `VOCEvaluator.process`)
    and `read_results` both produce this.
    """

    image_ids: npt.NDArray[np.str_]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64]
    boxes: npt.NDArray[np.float64]

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=np.str_).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        sizes = {len(self.image_ids), len(self.labels), len(self.scores), len(self.boxes)}
        if len(sizes) != 1:
            raise ValueError(
                f"Detections: image_ids, labels, scores and boxes differ in length: {sorted(sizes)}"
            )

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.empty(0, np.str_), np.empty(0, np.int64), np.empty(0), np.empty((0, 4)))

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.boxes for p in parts]),
        )

    @classmethod
    def from_images(
        cls,
        image_ids: Sequence[str],
        boxes: Sequence[npt.ArrayLike],
        scores: Sequence[npt.ArrayLike],
        labels: Sequence[npt.ArrayLike],
    ) -> Detections:
        """Gather per-image outputs: boxes[i] (k_i, 4), scores[i] (k_i,), labels[i] (k_i,)."""
        if not len(image_ids) == len(boxes) == len(scores) == len(labels):
            raise ValueError("from_images: one entry of boxes, scores and labels per image id")
        parts = []
        for image_id, b, s, lab in zip(image_ids, boxes, scores, labels, strict=True):
            image_scores = np.asarray(s, dtype=np.float64).reshape(-1)
            ids = np.full(len(image_scores), image_id, dtype=f"<U{max(1, len(image_id))}")
            parts.append(cls(ids, np.asarray(lab), image_scores, np.asarray(b, dtype=np.float64)))
        return cls.concatenate(parts)


@dataclass(frozen=True)
class PrecisionRecall:
    """One class's ranked detections as cumulative recall and precision, and its npos."""

    recall: npt.NDArray[np.float64]  # (K,) nondecreasing; NaN when npos == 0
    precision: npt.NDArray[np.float64]  # (K,)
    npos: int


@dataclass(frozen=True)
class EvalResult:
    """mAP under one metric, AP per class (NaN for a class without non-difficult objects)."""

    metric: Metric
    map: float  # mean AP over the classes with npos > 0
    ap: dict[str, float]
    npos: dict[str, int]
    iou_threshold: float = 0.5


def voc_ap(
    recall: npt.NDArray[np.float64], precision: npt.NDArray[np.float64], metric: Metric
) -> float:
    """AP of one class from its cumulative recall and precision, in ranked order.

    voc07: the mean over the devkit's t = 0:0.1:1 (MATLAB's colon operator: `matlab_colon`) of the
    best precision at recall >= t (0 where none).
    voc12 (VOC2010 and later): the area under the precision envelope (precision made monotone from
    the right), with the devkit's sentinels (recall 0 and 1, precision 0) at both ends.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.ndim != 1 or recall.shape != precision.shape:
        raise ValueError(
            f"voc_ap: recall {recall.shape} and precision {precision.shape} must be equal 1-D"
        )
    if metric == "voc07":
        best = [precision[recall >= t].max(initial=0.0) for t in _VOC07_RECALLS]
        return float(np.sum(best) / len(_VOC07_RECALLS))
    if metric == "voc12":
        mrec = np.concatenate(([0.0], recall, [1.0]))
        mpre = np.concatenate(([0.0], precision, [0.0]))
        mpre = np.maximum.accumulate(mpre[::-1])[::-1]
        steps = np.flatnonzero(mrec[1:] != mrec[:-1])
        return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))
    raise ValueError(f"voc_ap: unknown metric {metric!r}; expected one of {METRICS}")


def evaluate_detections(
    ground_truth: Sequence[GroundTruth],
    detections: Detections,
    classes: Sequence[str],
    metric: Metric = "voc07",
    iou_threshold: float = 0.5,
) -> EvalResult:
    """VOC AP of every class and their mean, exactly as the VOC devkit's VOCevaldet computes them.

    A class without non-difficult objects (npos = 0) has AP NaN (its recall is 0/0, as in the
    devkit) and is left out of the mean. A class with objects but no detections has AP 0.
    """
    curves = precision_recall(ground_truth, detections, classes, iou_threshold)
    return mean_ap(curves, metric, iou_threshold)


def mean_ap(
    curves: dict[str, PrecisionRecall], metric: Metric, iou_threshold: float = 0.5
) -> EvalResult:
    """Per-class AP and mAP under `metric` from PR curves: match once, score twice."""
    ap = {
        name: voc_ap(c.recall, c.precision, metric) if c.npos > 0 else math.nan
        for name, c in curves.items()
    }
    scored = [value for name, value in ap.items() if curves[name].npos > 0]
    if not scored:
        raise InputError(
            "VOC evaluation: the ground truth has no non-difficult object of any class"
        )
    npos = {name: c.npos for name, c in curves.items()}
    return EvalResult(metric, float(np.mean(scored)), ap, npos, iou_threshold)


def precision_recall(
    ground_truth: Sequence[GroundTruth],
    detections: Detections,
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> dict[str, PrecisionRecall]:
    """Match every class's detections to the ground truth as the devkit does; return PR curves.

    Per class, detections are ranked by score (descending, stable) and each is compared with the
    object of its image and class that it overlaps most (IoU with the +1 pixel convention). Overlap
    > iou_threshold with a difficult object: ignored (neither TP nor FP); with an object not yet
    matched: TP; with one already matched: FP (duplicate). Otherwise FP.

    The devkit does this one detection at a time, but the object a detection is compared with is its
    argmax over the image's objects, which does not depend on earlier matches. So an object's TP is
    simply the first detection in rank order that picks it with enough overlap; every later one is a
    duplicate. That is one `np.unique(return_index=True)` over the ranked detections.
    """
    if len(set(classes)) != len(classes):
        raise ValueError(f"precision_recall: duplicate class names in {list(classes)}")
    truth = _Truth.stack(ground_truth, len(classes))
    image = truth.image_indices(detections.image_ids)
    _check_labels(detections, len(classes), "precision_recall")

    # Rank within each class: class ascending, then score descending, ties in row order.
    order = np.lexsort((-detections.scores, detections.labels))
    labels = detections.labels[order]
    overlap, obj = truth.best_overlap(labels, image[order], detections.boxes[order])

    hit = overlap > iou_threshold
    ignored = np.zeros(len(order), dtype=bool)
    ignored[hit] = truth.difficult[obj[hit]]
    candidates = np.flatnonzero(hit & ~ignored)
    _, first = np.unique(obj[candidates], return_index=True)
    tp = np.zeros(len(order), dtype=bool)
    tp[candidates[first]] = True
    fp = ~tp & ~ignored

    npos = np.bincount(truth.labels[~truth.difficult], minlength=len(classes))
    bounds = np.searchsorted(labels, np.arange(len(classes) + 1))
    curves = {}
    for c, name in enumerate(classes):
        tp_cum = np.cumsum(tp[bounds[c] : bounds[c + 1]]).astype(np.float64)
        fp_cum = np.cumsum(fp[bounds[c] : bounds[c + 1]]).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = tp_cum / float(npos[c])
        precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        curves[name] = PrecisionRecall(recall, precision, int(npos[c]))
    return curves


def _check_labels(detections: Detections, num_classes: int, caller: str) -> None:
    labels = detections.labels
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise ValueError(f"{caller}: detection labels outside 0..{num_classes - 1}")


@dataclass(frozen=True)
class _Truth:
    """All images' objects in one set of arrays (G objects), in image then annotation order."""

    image_ids: dict[str, int]
    boxes: npt.NDArray[np.float64]  # (G, 4)
    labels: npt.NDArray[np.int64]  # (G,)
    difficult: npt.NDArray[np.bool_]  # (G,)
    image: npt.NDArray[np.int64]  # (G,) index into image_ids

    @classmethod
    def stack(cls, ground_truth: Sequence[GroundTruth], num_classes: int) -> _Truth:
        image_ids: dict[str, int] = {}
        boxes, labels, difficult, counts = [], [], [], []
        for gt in ground_truth:
            if gt.image_id in image_ids:
                raise InputError(f"ground truth: image {gt.image_id!r} appears twice")
            image_ids[gt.image_id] = len(image_ids)
            b = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)
            lab = np.asarray(gt.labels, dtype=np.int64).reshape(-1)
            dif = np.asarray(gt.difficult, dtype=bool).reshape(-1)
            if not len(b) == len(lab) == len(dif):
                raise ValueError(
                    f"ground truth of {gt.image_id!r}: boxes, labels, difficult differ"
                )
            if len(lab) and not 0 <= lab.min() <= lab.max() < num_classes:
                raise InputError(
                    f"ground truth of {gt.image_id!r}: label outside the {num_classes} classes"
                )
            boxes.append(b)
            labels.append(lab)
            difficult.append(dif)
            counts.append(len(b))
        return cls(
            image_ids,
            np.concatenate(boxes) if boxes else np.empty((0, 4)),
            np.concatenate(labels) if labels else np.empty(0, np.int64),
            np.concatenate(difficult) if difficult else np.empty(0, bool),
            np.repeat(np.arange(len(counts), dtype=np.int64), counts),
        )

    def image_indices(self, image_ids: npt.NDArray[np.str_]) -> npt.NDArray[np.int64]:
        index = self.image_ids
        found = np.fromiter(
            (index.get(i, -1) for i in image_ids.tolist()), dtype=np.int64, count=len(image_ids)
        )
        if len(found) and found.min() < 0:
            unknown = str(image_ids[np.argmin(found)])
            raise InputError(
                f"detections name image {unknown!r}, which is not among the "
                f"{len(index)} ground-truth images (results of another image set?)"
            )
        return found

    def best_overlap(
        self,
        labels: npt.NDArray[np.int64],
        image: npt.NDArray[np.int64],
        boxes: npt.NDArray[np.float64],
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Per detection: max IoU with the objects of its image and class, and which object (the
        first of equals, like argmax); -inf and any object when its image has none of its class."""
        group = self.labels * len(self.image_ids) + self.image
        by_group = np.argsort(group, kind="stable")  # keeps annotation order inside a group
        wanted = labels * len(self.image_ids) + image
        start = np.searchsorted(group[by_group], wanted, side="left")
        count = np.searchsorted(group[by_group], wanted, side="right") - start

        best = np.full(len(labels), -np.inf)
        best_obj = np.zeros(len(labels), dtype=np.int64)
        for m in range(int(count.max(initial=0))):  # the m-th object of each detection's group
            rows = np.flatnonzero(count > m)
            obj = by_group[start[rows] + m]
            iou = _iou_plus_one(boxes[rows], self.boxes[obj])
            better = iou > best[rows]
            best[rows[better]] = iou[better]
            best_obj[rows[better]] = obj[better]
        return best, best_obj


def _iou_plus_one(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Row-wise IoU of (n, 4) boxes counting pixels inclusively, in the devkit's operation order.

    An inverted box that covers no pixel (xmax < xmin - 1 under the +1 convention) intersects
    nothing: its IoU is 0, -0 or NaN (0 / 0), never above a threshold, so it is a false positive,
    as in the devkit, which skips every object with no positive intersection.
    """
    iw = np.maximum(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + 1.0, 0.0)
    ih = np.maximum(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + 1.0, 0.0)
    inters = iw * ih
    union = (
        (a[:, 2] - a[:, 0] + 1.0) * (a[:, 3] - a[:, 1] + 1.0)
        + (b[:, 2] - b[:, 0] + 1.0) * (b[:, 3] - b[:, 1] + 1.0)
        - inters
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        result: npt.NDArray[np.float64] = inters / union
    return result


class VOCEvaluator:
    """Collects a model's detections batch by batch, then scores them (detectron2's evaluator).

    `process` takes boxes already in VOC pixel coordinates of the original image (1-based,
    inclusive).
    For both metrics from one matching: `mean_ap(precision_recall(gt, ev.detections, classes), m)`.
    """

    def __init__(
        self, classes: Sequence[str], metric: Metric = "voc07", iou_threshold: float = 0.5
    ) -> None:
        if metric not in METRICS:
            raise ValueError(f"VOCEvaluator: unknown metric {metric!r}; expected one of {METRICS}")
        self.classes = list(classes)
        self.metric: Metric = metric
        self.iou_threshold = iou_threshold
        self._parts: list[Detections] = []

    def reset(self) -> None:
        self._parts = []

    def process(
        self,
        image_ids: Sequence[str],
        boxes: Sequence[npt.ArrayLike],
        scores: Sequence[npt.ArrayLike],
        labels: Sequence[npt.ArrayLike],
    ) -> None:
        """Add a batch: per image, boxes (k, 4), scores (k,), labels (k,); numpy or CPU tensors."""
        self._parts.append(Detections.from_images(image_ids, boxes, scores, labels))

    @property
    def detections(self) -> Detections:
        """Everything processed since the last reset, e.g. for `write_results`."""
        return Detections.concatenate(self._parts)

    def evaluate(self, ground_truth: Sequence[GroundTruth]) -> EvalResult:
        return evaluate_detections(
            ground_truth, self.detections, self.classes, self.metric, self.iou_threshold
        )


_RESULTS_LINE = "<image id> <score> <xmin> <ymin> <xmax> <ymax>"


def results_path(directory: Path, image_set: str, class_name: str) -> Path:
    return Path(directory) / f"comp4_det_{image_set}_{class_name}.txt"


def write_results(
    directory: Path, image_set: str, classes: Sequence[str], detections: Detections
) -> list[Path]:
    """Write one VOC results file per class (empty when the class has no detections), atomically.

    Lines are `<image id> <score> <xmin> <ymin> <xmax> <ymax>` printed with `%f`, as darknet's
    `validate` writes them; the boxes are VOC pixel coordinates (1-based, inclusive). Rows keep
    their order, so rereading ranks score ties the same way.
    """
    _check_labels(detections, len(classes), "write_results")
    bad = [i for i in np.unique(detections.image_ids).tolist() if not i or len(i.split()) != 1]
    if bad:
        raise ValueError(f"write_results: image id {bad[0]!r} is empty or contains whitespace")
    paths = []
    for c, name in enumerate(classes):
        rows = np.flatnonzero(detections.labels == c)
        lines = [
            f"{image_id} {score:f} {x0:f} {y0:f} {x1:f} {y1:f}\n"
            for image_id, score, (x0, y0, x1, y1) in zip(
                detections.image_ids[rows].tolist(),
                detections.scores[rows].tolist(),
                detections.boxes[rows].tolist(),
                strict=True,
            )
        ]
        path = results_path(directory, image_set, name)
        write_text_atomic(path, "".join(lines))
        paths.append(path)
    return paths


def read_results(directory: Path, image_set: str, classes: Sequence[str]) -> Detections:
    """Read the VOC results file of every class, as `write_results` or darknet writes them.

    Every class's file must exist (an empty file means no detections), as the devkit requires: a
    missing one is far more often a wrong directory, image set or class list than a class with no
    detections, and scoring it AP 0 would hide that. Inverted boxes (xmax < xmin or ymax < ymin)
    are kept and scored as the devkit scores them: one that covers no pixel overlaps nothing and
    is a false positive at its score.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: results directory does not exist")
    parts = []
    for c, name in enumerate(classes):
        path = results_path(directory, image_set, name)
        image_ids, values = _read_results_file(path)
        parts.append(
            Detections(
                np.array(image_ids, dtype=np.str_),
                np.full(len(values), c),
                values[:, 0],
                values[:, 1:],
            )
        )
    detections = Detections.concatenate(parts)
    inverted = int(np.count_nonzero(_inverted(detections.boxes)))
    if inverted:
        log.info(
            "%s: %d of %d detections have an inverted box (xmax < xmin or ymax < ymin), scored "
            "as the devkit does", directory, inverted, len(detections),
        )  # fmt: skip
    return detections


def _inverted(boxes: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    inverted: npt.NDArray[np.bool_] = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    return inverted


def _read_results_file(path: Path) -> tuple[list[str], npt.NDArray[np.float64]]:
    image_ids: list[str] = []
    rows: list[list[float]] = []
    try:
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                fields = line.split()
                if fields:
                    rows.append(_parse_results_line(fields, f"{path}:{number}"))
                    image_ids.append(fields[0])
    except FileNotFoundError:
        raise InputError(
            f"{path}: results file missing (every class needs one; empty means no detections)"
        ) from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text results file") from None
    except OSError as error:
        raise InputError(f"{path}: cannot read results file ({error.strerror})") from None
    return image_ids, np.array(rows, dtype=np.float64).reshape(-1, 5)


def _parse_results_line(fields: list[str], where: str) -> list[float]:
    if len(fields) != 6:
        raise InputError(f"{where}: expected 6 fields {_RESULTS_LINE}, found {len(fields)}")
    values = []
    for field in fields[1:]:
        try:
            value = float(field)
        except ValueError:
            raise InputError(f"{where}: {field!r} is not a number ({_RESULTS_LINE})") from None
        if not math.isfinite(value):
            raise InputError(f"{where}: {field!r} is not a finite number")
        values.append(value)
    # A box with xmax < xmin or ymax < ymin is no reason to refuse the file: detectors write them
    # (a tiny box after rounding or clipping), and the devkit scores them like any other.
    return values
