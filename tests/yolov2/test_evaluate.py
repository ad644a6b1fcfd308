"""VOC AP, matching and results files, against hand-computed values and the devkit's loop."""

from __future__ import annotations

import importlib.util
import logging
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import pytest

from yolov2.errors import InputError
from yolov2.evaluate import (
    Detections,
    GroundTruth,
    VOCEvaluator,
    evaluate_detections,
    matlab_colon,
    mean_ap,
    precision_recall,
    read_results,
    results_path,
    voc_ap,
    write_results,
)


def _load_bench() -> ModuleType:
    # The devkit transcription lives once, in the benchmark; load it by path so that this works
    # whatever pytest's import mode and without making bench/ a package.
    path = Path(__file__).resolve().parents[2] / "bench" / "bench_voc_eval.py"
    spec = importlib.util.spec_from_file_location("bench_voc_eval", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
CLASSES = ["cat", "dog"]
CAT, DOG = 0, 1
A = [10, 10, 50, 50]  # disjoint boxes in VOC pixels
B = [100, 100, 150, 150]
C = [200, 10, 260, 80]


def truth(image_id: str, *objects: tuple[Sequence[float], int, bool]) -> GroundTruth:
    boxes = np.array([o[0] for o in objects], dtype=np.float32).reshape(-1, 4)
    labels = np.array([o[1] for o in objects], dtype=np.int64)
    difficult = np.array([o[2] for o in objects], dtype=bool)
    ground_truth: GroundTruth = bench.Truth(image_id, boxes, labels, difficult)
    return ground_truth


def dets(*rows: tuple[str, int, float, Sequence[float]]) -> Detections:
    """Rows of (image id, label, score, box), in the order given."""
    return Detections(
        np.array([r[0] for r in rows], dtype=np.str_),
        np.array([r[1] for r in rows], dtype=np.int64),
        np.array([r[2] for r in rows], dtype=np.float64),
        np.array([r[3] for r in rows], dtype=np.float64).reshape(-1, 4),
    )


# -- voc_ap -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tp", "fp", "npos", "voc07", "voc12"),
    [
        # TP FP TP of 2: rec .5 .5 1, prec 1 .5 2/3. VOC07: 6 thresholds <= .5 see 1, 5 see 2/3.
        ([1, 0, 1], [0, 1, 0], 2, (6 + 5 * 2 / 3) / 11, 0.5 * 1 + 0.5 * 2 / 3),
        # FP TP of 1: rec 0 1, prec 0 .5; every threshold sees .5.
        ([0, 1], [1, 0], 1, 0.5, 0.5),
        # TP FP FP TP TP of 4: rec .25 .25 .25 .5 .75, prec 1 .5 1/3 .5 .6.
        ([1, 0, 0, 1, 1], [0, 1, 1, 0, 0], 4, (3 * 1 + 5 * 0.6) / 11, 0.25 + 0.25 * 0.6 * 2),
        # Three TPs of 10: recall reaches exactly 0.3, short of the devkit's t(4) =
        # 0.30000000000000004, so only t = 0, 0.1, 0.2 see precision 1.
        ([1, 1, 1], [0, 0, 0], 10, 3 / 11, 0.3),
        # No detections.
        ([], [], 3, 0.0, 0.0),
        # Only FPs.
        ([0, 0], [1, 1], 3, 0.0, 0.0),
    ],
)
def test_voc_ap_hand_computed(
    tp: list[int], fp: list[int], npos: int, voc07: float, voc12: float
) -> None:
    tp_cum = np.cumsum(np.array(tp, dtype=np.float64))
    fp_cum = np.cumsum(np.array(fp, dtype=np.float64))
    recall = tp_cum / npos
    precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
    assert voc_ap(recall, precision, "voc07") == pytest.approx(voc07, abs=1e-15)
    assert voc_ap(recall, precision, "voc12") == pytest.approx(voc12, abs=1e-15)


def test_the_devkit_thresholds_are_matlabs_0_to_1_by_tenths() -> None:
    thresholds = matlab_colon(0.0, 0.1, 1.0)
    assert thresholds.tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8,
                                   0.9, 1.0]  # fmt: skip
    assert thresholds[3] == 0.30000000000000004  # 3 * 0.1, counted up from 0
    assert thresholds[3] > 3 / 10  # so a recall of exactly 3/10 does not reach it
    assert (thresholds[6], thresholds[7]) == (0.6, 0.7)  # 1 - 4 * 0.1, 1 - 3 * 0.1: exact
    arange = np.arange(0.0, 1.1, 0.1)  # py-faster-rcnn's voc_eval.py
    assert np.flatnonzero(thresholds != arange).tolist() == [6, 7]
    assert (arange[6], arange[7]) == (0.6000000000000001, 0.7000000000000001)
    assert np.flatnonzero(thresholds != np.arange(11) / 10).tolist() == [3]  # exact tenths


def test_matlab_colon_as_mathworks_documents_it() -> None:
    """The two examples of MathWorks' COLONOP: the nine doubles nearest 1 + (-4:4)*eps/4, and
    -1:0.01:1, symmetric about an exact 0 though 0.01 is not a double."""
    eps = float(np.finfo(np.float64).eps)
    near_one = matlab_colon(1 - eps, eps / 4, 1 + eps)
    assert near_one.tolist() == [1 - eps, 1 - eps, 1 - eps / 2, 1, 1, 1, 1, 1 + eps, 1 + eps]
    hundredths = matlab_colon(-1.0, 0.01, 1.0)
    assert len(hundredths) == 201
    assert hundredths[100] == 0.0
    assert np.array_equal(hundredths, -hundredths[::-1])
    assert matlab_colon(1.0, 3.0, 10.0).tolist() == [1.0, 4.0, 7.0, 10.0]
    assert matlab_colon(1.0, -0.5, 0.0).tolist() == [1.0, 0.5, 0.0]
    assert matlab_colon(5.0, 1.0, 1.0).size == 0  # counting up towards a smaller end: empty


def _eleven_point(
    recall: npt.NDArray[np.float64], precision: npt.NDArray[np.float64], thresholds: Sequence[float]
) -> float:
    """The 11-point mean at other thresholds: what exact tenths or np.arange would give."""
    return sum(float(precision[recall >= t].max(initial=0.0)) for t in thresholds) / 11


PR_AT_A_TENTH = {  # name: (TP/FP ranking, npos, devkit AP, exact tenths' AP, np.arange's AP)
    # recall .1 .2 .3 .3 .3 .4, precision 1 1 1 .75 .6 2/3: the step lies at recall exactly 0.3.
    # The devkit's t = 0.30000000000000004 sees only recall .4 (2/3); exact tenths see 1.
    "recall 0.3, npos 10": ("TTTFFT", 10, (3 + 2 * 2 / 3) / 11, (4 + 2 / 3) / 11, (3 + 2 * 2 / 3) / 11),
    # VOC 2007 test's pottedplant has npos 480: 144 TPs reach 144/480 = 0.3 exactly, 16 FPs,
    # then 48 TPs reach 0.4 at precision 192/208 = 12/13.
    "recall 0.3, npos 480": ("T" * 144 + "F" * 16 + "T" * 48, 480, (3 + 2 * 12 / 13) / 11,
                             (4 + 12 / 13) / 11, (3 + 2 * 12 / 13) / 11),
    # recall .6 at precision 1, then .7 at 7/8, then .8 at 8/11. The devkit's 0.6 and 0.7 are
    # exact and see 1 and 7/8; np.arange's 0.6000000000000001 and 0.7000000000000001 see 7/8, 8/11.
    "recall 0.6 and 0.7, npos 10": ("TTTTTTFTFFT", 10, (7 + 7 / 8 + 8 / 11) / 11,
                                    (7 + 7 / 8 + 8 / 11) / 11, (6 + 7 / 8 + 2 * 8 / 11) / 11),
}  # fmt: skip


@pytest.mark.parametrize(
    ("ranking", "npos", "devkit", "tenths", "arange"), PR_AT_A_TENTH.values(), ids=PR_AT_A_TENTH
)
def test_voc07_ap_at_a_recall_of_exactly_a_tenth_is_the_devkits(
    ranking: str, npos: int, devkit: float, tenths: float, arange: float
) -> None:
    tp = np.cumsum([c == "T" for c in ranking], dtype=np.float64)
    fp = np.cumsum([c == "F" for c in ranking], dtype=np.float64)
    recall, precision = tp / npos, tp / (tp + fp)
    assert voc_ap(recall, precision, "voc07") == pytest.approx(devkit, abs=1e-15)
    assert _eleven_point(recall, precision, bench.DEVKIT_RECALLS) == pytest.approx(
        devkit, abs=1e-15
    )
    # The same curve at the thresholds others use: not the devkit's number.
    assert _eleven_point(recall, precision, np.arange(11) / 10) == pytest.approx(tenths, abs=1e-15)
    assert _eleven_point(recall, precision, np.arange(0.0, 1.1, 0.1)) == pytest.approx(
        arange, abs=1e-15
    )


def test_voc_ap_rejects_unknown_metric() -> None:
    with pytest.raises(ValueError, match="unknown metric 'coco'"):
        voc_ap(np.zeros(1), np.zeros(1), "coco")  # type: ignore[arg-type]


# -- matching -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ground_truth", "detections", "expected_ap", "expected_npos"),
    [
        pytest.param(
            [truth("a", (A, CAT, False), (B, CAT, True))],
            dets(("a", CAT, 0.9, B), ("a", CAT, 0.8, A)),
            {"voc07": 1.0, "voc12": 1.0},
            1,
            id="a detection on a difficult object is neither TP nor FP",
        ),
        pytest.param(
            [truth("a", (A, CAT, False), (C, CAT, False))],
            dets(("a", CAT, 0.9, A), ("a", CAT, 0.8, A), ("a", CAT, 0.7, C)),
            {"voc07": (6 + 5 * 2 / 3) / 11, "voc12": 0.5 + 0.5 * 2 / 3},
            2,
            id="a second detection of a matched object is an FP",
        ),
        pytest.param(
            [truth("empty"), truth("a", (A, CAT, False))],
            dets(("empty", CAT, 0.9, A), ("a", CAT, 0.8, A)),
            {"voc07": 0.5, "voc12": 0.5},
            1,
            id="detections in an image without objects are FPs",
        ),
        pytest.param(
            # The devkit compares with the argmax object even when it is taken and an identical one
            # is free: the second detection is a duplicate, not a match of the second object.
            [truth("a", (A, CAT, False), (A, CAT, False))],
            dets(("a", CAT, 0.9, A), ("a", CAT, 0.8, A)),
            {"voc07": 6 / 11, "voc12": 0.5},
            2,
            id="equal overlaps pick the first object, taken or not",
        ),
        pytest.param(
            [truth("a", (A, CAT, True), (A, CAT, False))],
            dets(("a", CAT, 0.9, A)),
            {"voc07": 0.0, "voc12": 0.0},
            1,
            id="equal overlaps pick the first object, difficult or not",
        ),
        pytest.param(
            # The most overlapped object is difficult; a lesser overlap (still > 0.5) is not used.
            [truth("a", ([10, 10, 50, 50], CAT, False), ([10, 10, 50, 45], CAT, True))],
            dets(("a", CAT, 0.9, [10, 10, 50, 46])),
            {"voc07": 0.0, "voc12": 0.0},
            1,
            id="the best overlap decides, even when it is a difficult object",
        ),
        pytest.param(
            # Read as corners, the inverted box at 0.8 would be a duplicate of A, and the one at
            # 0.75 a match of C; inverted, neither covers a pixel: both are FPs at their scores.
            [truth("a", (A, CAT, False), (C, CAT, False))],
            dets(
                ("a", CAT, 0.9, A),
                ("a", CAT, 0.8, [50, 10, 10, 50]),
                ("a", CAT, 0.75, [200, 80, 260, 10]),
                ("a", CAT, 0.7, C),
            ),
            {"voc07": (6 + 5 * 2 / 4) / 11, "voc12": 0.5 + 0.5 * 2 / 4},
            2,
            id="a detection with an inverted box overlaps nothing: an FP at its score",
        ),
        pytest.param(
            # Counting pixels inclusively, xmax half a pixel below xmin still covers half a pixel
            # wide: the devkit computes its overlap like any other, here 0.5 x 1 of a 1 x 1 object.
            [truth("a", ([5, 5, 5, 5], CAT, False))],
            dets(("a", CAT, 0.9, [5, 5, 4.5, 5])),
            {"voc07": 0.0, "voc12": 0.0},
            1,
            id="an inverted box still covering part of a pixel overlaps as the devkit computes",
        ),
        pytest.param(
            [truth("a", ([5, 5, 5, 5], CAT, False))],
            dets(("a", CAT, 0.9, [5, 5, 4.8, 5])),  # IoU 0.8
            {"voc07": 1.0, "voc12": 1.0},
            1,
            id="an inverted box over part of a one-pixel object can even match it",
        ),
    ],
)
def test_matching_rules(
    ground_truth: list[GroundTruth],
    detections: Detections,
    expected_ap: dict[str, float],
    expected_npos: int,
) -> None:
    for metric in ("voc07", "voc12"):
        result = evaluate_detections(ground_truth, detections, ["cat"], metric)
        assert result.ap["cat"] == pytest.approx(expected_ap[metric], abs=1e-15)
        assert result.npos == {"cat": expected_npos}


@pytest.mark.parametrize(
    ("gt_box", "det_box", "tp"),
    [
        ([1, 1, 4, 4], [1, 2, 4, 5], True),  # +1 pixels: 12/20 = 0.6; without: 6/12 = 0.5
        ([1, 1, 10, 10], [1, 1, 10, 5], False),  # +1 pixels: exactly 50/100, and 0.5 is not > 0.5
        ([1, 1, 10, 10], [1, 1, 10, 6], True),  # 60/100
        ([1, 1, 10, 10], [11, 1, 20, 10], False),  # touching, no shared pixel
    ],
)
def test_iou_counts_pixels_inclusively(gt_box: list[float], det_box: list[float], tp: bool) -> None:
    result = evaluate_detections(
        [truth("a", (gt_box, CAT, False))], dets(("a", CAT, 1.0, det_box)), ["cat"]
    )
    assert result.ap["cat"] == (1.0 if tp else 0.0)


@pytest.mark.parametrize(("threshold", "tp"), [(0.5, True), (0.59, True), (0.6, False)])
def test_iou_threshold(threshold: float, tp: bool) -> None:
    result = evaluate_detections(
        [truth("a", ([1, 1, 10, 10], CAT, False))],
        dets(("a", CAT, 1.0, [1, 1, 10, 6])),  # IoU 0.6
        ["cat"],
        iou_threshold=threshold,
    )
    assert result.ap["cat"] == (1.0 if tp else 0.0)


@pytest.mark.parametrize(("first", "expected"), [("miss", 0.5), ("hit", 1.0)])
def test_equal_scores_rank_in_row_order(first: str, expected: float) -> None:
    miss = ("a", CAT, 0.5, B)
    hit = ("a", CAT, 0.5, A)
    other_class = ("a", DOG, 0.5, A)  # same score, another class: must not disturb the order
    rows = [miss, other_class, hit] if first == "miss" else [hit, other_class, miss]
    result = evaluate_detections([truth("a", (A, CAT, False))], dets(*rows), CLASSES)
    assert result.ap["cat"] == expected


def test_class_without_detections_scores_zero_and_counts_in_map() -> None:
    ground_truth = [truth("a", (A, CAT, False), (B, DOG, False))]
    result = evaluate_detections(ground_truth, dets(("a", CAT, 0.9, A)), CLASSES)
    assert result.ap == {"cat": 1.0, "dog": 0.0}
    assert result.map == 0.5


def test_class_without_ground_truth_is_nan_and_left_out_of_map() -> None:
    ground_truth = [truth("a", (A, CAT, False), (B, DOG, True))]  # dog: difficult only, npos 0
    detections = dets(("a", CAT, 0.9, A), ("a", DOG, 0.8, C))
    result = evaluate_detections(ground_truth, detections, CLASSES, "voc12")
    assert result.ap["cat"] == 1.0
    assert math.isnan(result.ap["dog"])
    assert result.npos == {"cat": 1, "dog": 0}
    assert (result.metric, result.map) == ("voc12", 1.0)


def test_no_ground_truth_objects_at_all_is_an_input_error() -> None:
    with pytest.raises(InputError, match="no non-difficult object"):
        evaluate_detections([truth("a")], dets(("a", CAT, 0.9, A)), CLASSES)


def test_detection_of_an_unknown_image_is_an_input_error() -> None:
    with pytest.raises(InputError, match="image '000042', which is not among the 1 ground-truth"):
        evaluate_detections([truth("a", (A, CAT, False))], dets(("000042", CAT, 0.9, A)), CLASSES)


def test_detection_label_outside_classes_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"labels outside 0\.\.1"):
        evaluate_detections([truth("a", (A, CAT, False))], dets(("a", 2, 0.9, A)), CLASSES)


@pytest.mark.parametrize(
    ("seed", "size", "extent", "iou_threshold"),
    [
        # size: (images, classes, detections per image)
        (0, (80, 5, 30), 500, 0.5),
        (1, (80, 5, 30), 40, 0.5),  # crowded: many overlapping objects
        (2, (60, 3, 40), 12, 0.5),  # tiny image: equal overlaps, exact 0.5 overlaps, single pixels
        (3, (6, 8, 10), 100, 0.5),  # few images: classes without objects or detections
        (4, (80, 5, 30), 40, 0.3),
        (5, (80, 5, 30), 40, 0.75),
        (6, (30, 4, 0), 100, 0.5),  # no detections at all
    ],
)
@pytest.mark.parametrize("inverted", [0.0, 0.2], ids=["boxes", "some-inverted"])
def test_vectorised_matches_devkit_loop(
    seed: int, size: tuple[int, int, int], extent: int, iou_threshold: float, inverted: float
) -> None:
    images, classes, dets_per_image = size
    names = [f"class{c}" for c in range(classes)]
    ground_truth, detections = bench.synthetic_voc(
        images, classes, dets_per_image, seed=seed, extent=extent, inverted=inverted
    )
    if inverted and dets_per_image:
        boxes = detections.boxes
        assert np.any(boxes[:, 2] < boxes[:, 0] - 1)  # covering no pixel, in x and in y
        assert np.any(boxes[:, 3] < boxes[:, 1] - 1)
    reference = bench.reference_voc_eval(ground_truth, detections, names, iou_threshold)
    curves = precision_recall(ground_truth, detections, names, iou_threshold)
    for metric in ("voc07", "voc12"):
        ap = mean_ap(curves, metric).ap
        assert bench.same_aps(ap, reference[metric]), (metric, ap, reference[metric])
    if dets_per_image:
        assert any(0 < v < 1 for v in reference["voc07"].values())  # not a vacuous comparison


# -- evaluator ----------------------------------------------------------------------------------


def test_evaluator_accumulates_batches_and_resets() -> None:
    ground_truth = [truth("a", (A, CAT, False), (C, CAT, False)), truth("b", (B, DOG, False))]
    evaluator = VOCEvaluator(CLASSES, metric="voc07")
    evaluator.process(["x"], [np.array([A])], [np.array([1.0])], [np.array([CAT])])
    evaluator.reset()
    evaluator.process(
        ["a", "b"],
        [np.array([A, C], dtype=np.float32), np.zeros((0, 4))],
        [np.array([0.9, 0.1]), np.zeros(0)],
        [np.array([CAT, CAT]), np.zeros(0, dtype=np.int64)],
    )
    evaluator.process(["b"], [np.array([B, A])], [np.array([0.8, 0.7])], [np.array([DOG, DOG])])
    result = evaluator.evaluate(ground_truth)
    assert len(evaluator.detections) == 4
    assert result.ap == {"cat": 1.0, "dog": 1.0}
    assert result.map == 1.0


# -- results files ------------------------------------------------------------------------------


def test_results_round_trip(tmp_path: Path) -> None:
    ground_truth, detections = bench.synthetic_voc(20, 3, 15, seed=7)
    names = ["aeroplane", "bicycle", "bird"]
    paths = write_results(tmp_path, "test", names, detections)
    assert paths == [tmp_path / f"comp4_det_test_{n}.txt" for n in names]
    assert sorted(tmp_path.iterdir()) == sorted(paths)  # no temporary file left behind

    back = read_results(tmp_path, "test", names)
    by_class = np.argsort(detections.labels, kind="stable")
    np.testing.assert_array_equal(back.image_ids, detections.image_ids[by_class])
    np.testing.assert_array_equal(back.labels, detections.labels[by_class])
    np.testing.assert_array_equal(back.scores, detections.scores[by_class])
    np.testing.assert_array_equal(back.boxes, detections.boxes[by_class])
    for metric in ("voc07", "voc12"):
        assert evaluate_detections(ground_truth, back, names, metric) == evaluate_detections(
            ground_truth, detections, names, metric
        )


def test_results_file_format_and_empty_class(tmp_path: Path) -> None:
    detections = dets(("000005", DOG, 0.25, [1.0, 2.5, 30.0, 40.0]), ("000007", DOG, 0.125, A))
    write_results(tmp_path, "val", CLASSES, detections)
    assert results_path(tmp_path, "val", "cat").read_text() == ""
    assert results_path(tmp_path, "val", "dog").read_text() == (
        "000005 0.250000 1.000000 2.500000 30.000000 40.000000\n"
        "000007 0.125000 10.000000 10.000000 50.000000 50.000000\n"
    )
    write_results(tmp_path, "val", CLASSES, dets(("000009", CAT, 0.5, B)))  # replaces, atomically
    assert results_path(tmp_path, "val", "dog").read_text() == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "comp4_det_val_cat.txt",
        "comp4_det_val_dog.txt",
    ]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "000001 0.9 1 2 3",
            "expected 6 fields <image id> <score> <xmin> <ymin> <xmax> <ymax>, found 5",
        ),
        ("000001 0.9 1 2 3 4 5", "expected 6 fields"),
        ("000001 high 1 2 3 4", "'high' is not a number"),
        ("000001 0.9 1 2 3 4,", "'4,' is not a number"),
        ("000001 nan 1 2 3 4", "'nan' is not a finite number"),
        ("000001 0.9 1 2 inf 4", "'inf' is not a finite number"),
    ],
)
def test_malformed_results_line_names_file_and_line(
    tmp_path: Path, line: str, problem: str
) -> None:
    write_results(tmp_path, "test", CLASSES, Detections.empty())
    path = results_path(tmp_path, "test", "dog")
    path.write_text(f"000001 0.5 1 1 10 10\n\n{line}\n")
    with pytest.raises(InputError) as error:
        read_results(tmp_path, "test", CLASSES)
    assert str(error.value).startswith(f"{path}:3: {problem}")


def test_inverted_boxes_are_read_and_scored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # As darknet writes a tiny box clipped at the border: xmax < xmin, ymax < ymin, both.
    write_results(tmp_path, "test", CLASSES, Detections.empty())
    results_path(tmp_path, "test", "cat").write_text(
        "a 0.9 10 10 50 50\na 0.8 300.2 5 299.7 9\na 0.7 1 9 4 8.5\na 0.6 9 9 3 3\n"
    )
    with caplog.at_level(logging.INFO, logger="yolov2.evaluate"):
        detections = read_results(tmp_path, "test", CLASSES)
    np.testing.assert_array_equal(detections.boxes[1], [300.2, 5, 299.7, 9])
    assert "3 of 4 detections have an inverted box" in caplog.text
    result = evaluate_detections(
        [truth("a", (A, CAT, False), (B, CAT, False))], detections, ["cat", "dog"]
    )
    assert result.ap["cat"] == pytest.approx(6 / 11)  # one TP, then three FPs: recall stops at 0.5


def test_missing_results_file_is_an_input_error(tmp_path: Path) -> None:
    write_results(tmp_path, "test", ["cat"], Detections.empty())
    with pytest.raises(InputError, match=r"comp4_det_test_dog\.txt: results file missing"):
        read_results(tmp_path, "test", CLASSES)
    with pytest.raises(InputError, match="results directory does not exist"):
        read_results(tmp_path / "nowhere", "test", CLASSES)


def test_write_results_rejects_unwritable_image_ids(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="contains whitespace"):
        write_results(tmp_path, "test", CLASSES, dets(("two words", CAT, 0.5, A)))
