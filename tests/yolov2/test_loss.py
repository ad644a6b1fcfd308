"""Region loss: darknet's assignment, ignore, scales and warm-up, checked against values worked by hand.

Every case uses a 4 x 4 grid (a 128 x 128 input, 32 pixels a cell) and two classes. With a head of
zeros sigmoid gives 0.5, so a no-object anchor costs 0.5 * 0.5**2 = 0.125 and its gradient on the raw
objectness is 0.5 * 0.5 * (1 - 0.5) = 0.125.
"""

import math
from typing import Any

import pydantic
import pytest
import torch
from torch import Tensor

from yolov2.loss import LossConfig, region_loss

C = 2
GRID = 4
NO_WARMUP = LossConfig(prior_warmup_images=0)


def _head(a: int, b: int = 1, **channels: float) -> Tensor:
    """A (B, A*(5+C), 4, 4) head, zero except named channels (tx, ty, tw, th, to) set everywhere."""
    out = torch.zeros(b, a, 5 + C, GRID, GRID)
    for name, value in channels.items():
        out[:, :, ["tx", "ty", "tw", "th", "to"].index(name)] = value
    return out.view(b, a * (5 + C), GRID, GRID).requires_grad_()


def _truth(cx: float, cy: float, w: float, h: float, label: int = 0) -> tuple[list[float], int]:
    """A truth given by centre and size in grid cells, as an XYXY pixel box."""
    return [32 * (cx - w / 2), 32 * (cy - h / 2), 32 * (cx + w / 2), 32 * (cy + h / 2)], label


def _targets(*truths: tuple[list[float], int]) -> list[dict[str, Tensor]]:
    boxes = torch.tensor([box for box, _ in truths], dtype=torch.float32).view(-1, 4)
    return [{"boxes": boxes, "labels": torch.tensor([label for _, label in truths])}]


def _grad(out: Tensor, a: int) -> Tensor:
    """The gradient of the head as (A, 5+C, H, W) for image 0."""
    assert out.grad is not None
    return out.grad[0].view(a, 5 + C, GRID, GRID)


# ------------------------------------------------------------------------------------------------
# Config


def test_config_defaults_are_darknet_yolov2_voc() -> None:
    cfg = LossConfig()
    assert (cfg.coord_scale, cfg.object_scale, cfg.noobject_scale, cfg.class_scale) == (1, 5, 1, 1)
    assert (cfg.thresh, cfg.rescore, cfg.prior_warmup_images) == (0.6, True, 12800)
    assert LossConfig.model_fields["thresh"].description  # the docstring reaches the schema


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("coord_scale", -1.0),
        ("object_scale", math.inf),
        ("noobject_scale", math.nan),
        ("class_scale", -0.5),
        ("thresh", 1.5),
        ("prior_warmup_images", -1),
        ("prior_warmup_images", 1.5),
        ("coord_scael", 1.0),
    ],
)
def test_config_rejects_bad_value_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(pydantic.ValidationError, match=field):
        LossConfig.model_validate({field: value})


def test_config_is_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        LossConfig().thresh = 0.5  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------
# Assignment


@pytest.mark.parametrize(
    ("truth", "n", "j", "i"),
    [
        (_truth(1.25, 2.75, 1.5, 1.5), 0, 2, 1),  # shape IoU 0.44 with (1, 1), 0.28 with (4, 2)
        (_truth(3.9, 0.1, 3.0, 2.5), 1, 0, 3),  # 0.13 with (1, 1), 0.63 with (4, 2)
        (_truth(4.0, 0.5, 1.0, 1.0), 0, 0, 3),  # centre on the right edge: clamped into column 3
    ],
)
def test_truth_trains_only_its_cell_and_best_shape_anchor(
    truth: tuple[list[float], int], n: int, j: int, i: int
) -> None:
    out = _head(a=2)
    region_loss(out, _targets(truth), [(1.0, 1.0), (4.0, 2.0)], NO_WARMUP).total.backward()
    grad = _grad(out, a=2)
    expected = torch.zeros(2, GRID, GRID, dtype=torch.bool)
    expected[n, j, i] = True
    assert torch.equal(grad[:, :4].abs().sum(1) > 0, expected)  # box channels
    assert torch.equal(grad[:, 5:].abs().sum(1) > 0, expected)  # class channels


def test_later_truth_on_the_same_anchor_wins() -> None:
    out = _head(a=1)
    first = _truth(1.25, 2.75, 1.0, 1.0, label=0)
    second = _truth(1.75, 2.25, 1.2, 1.2, label=1)
    terms = region_loss(out, _targets(first, second), [(1.0, 1.0)], NO_WARMUP)
    terms.total.backward()
    grad = _grad(out, a=1)[0, :, 2, 1]
    factor = 2 - (1.2 / 4) ** 2
    assert grad[0].item() == pytest.approx(factor * (0.5 - 0.75) * 0.25)  # tx target of `second`
    assert grad[5:].tolist() == pytest.approx([0.5, -0.5])  # softmax - onehot(label 1)
    assert terms.num_truths == 2


# ------------------------------------------------------------------------------------------------
# No-object term and its ignore threshold


@pytest.mark.parametrize(
    ("thresh", "grad_to"),
    [
        (0.30, 0.0),  # the neighbour's IoU 1/3 is above: ignored
        (0.34, 0.125),  # just below: a no-object gradient
        (0.60, 0.125),
    ],
)
def test_ignore_threshold(thresh: float, grad_to: float) -> None:
    # Truth 2x2 centred in cell (1, 1); anchor (2, 2); the prediction of cell (1, 2) is the same box
    # shifted one cell right: intersection 1*2, union 4+4-2, IoU 1/3.
    out = _head(a=1)
    cfg = LossConfig(thresh=thresh, prior_warmup_images=0)
    region_loss(out, _targets(_truth(1.5, 1.5, 2.0, 2.0)), [(2.0, 2.0)], cfg).total.backward()
    assert _grad(out, a=1)[0, 4, 1, 2].item() == pytest.approx(grad_to)


def test_empty_targets_give_only_the_noobject_term() -> None:
    out = _head(a=2, b=2)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    terms = region_loss(out, [empty, empty], [(1.0, 1.0), (4.0, 2.0)], LossConfig())
    assert terms.noobject.item() == pytest.approx(0.125 * 2 * GRID * GRID)  # per image
    assert [terms.coord.item(), terms.object.item(), terms.class_.item()] == [0.0, 0.0, 0.0]
    assert terms.total.item() == pytest.approx(4.0)
    assert (terms.num_truths, terms.avg_iou.item(), terms.recall50.item()) == (0, 0.0, 0.0)


# ------------------------------------------------------------------------------------------------
# Box and objectness terms


@pytest.mark.parametrize(
    ("w", "h", "factor"),
    [
        (2.0, 1.0, 2 - 0.5 * 0.25),
        (4.0, 4.0, 1.0),
        (1.0, 1.0, 2 - 0.25 * 0.25),
    ],
)
def test_box_term_is_weighted_by_two_minus_truth_area(w: float, h: float, factor: float) -> None:
    # Centre (1.25, 2.75) in cell (2, 1): targets tx 0.25, ty 0.75 against sigmoid(0) = 0.5, and
    # tw = log(w / 1), th = log(h / 1) against raw 0, squared in log space.
    out = _head(a=1)
    terms = region_loss(out, _targets(_truth(1.25, 2.75, w, h)), [(1.0, 1.0)], NO_WARMUP)
    terms.total.backward()
    expected = 0.5 * factor * (0.25**2 + 0.25**2 + math.log(w) ** 2 + math.log(h) ** 2)
    assert terms.coord.item() == pytest.approx(expected)
    assert _grad(out, a=1)[0, 2, 2, 1].item() == pytest.approx(factor * (0 - math.log(w)))


@pytest.mark.parametrize(("rescore", "object_term"), [(True, 0.5 * 5 * 0.25**2), (False, 0.625)])
def test_rescore_sets_objectness_target_to_the_iou(rescore: bool, object_term: float) -> None:
    # The prediction of cell (1, 1) is the 2x2 anchor centred on the 1x1 truth: IoU 1/4. With
    # rescore the target is 0.25 against sigmoid(0) = 0.5, else 1.
    out = _head(a=1)
    cfg = LossConfig(rescore=rescore, prior_warmup_images=0)
    terms = region_loss(out, _targets(_truth(1.5, 1.5, 1.0, 1.0)), [(2.0, 2.0)], cfg)
    assert terms.object.item() == pytest.approx(object_term)
    assert (terms.avg_iou.item(), terms.recall50.item(), terms.num_truths) == (0.25, 0.0, 1)


@pytest.mark.parametrize(
    ("scale", "term"),
    [
        ("coord_scale", "coord"),
        ("object_scale", "object"),
        ("noobject_scale", "noobject"),
        ("class_scale", "class_"),
    ],
)
def test_each_scale_changes_only_its_own_term(scale: str, term: str) -> None:
    # One 1x1 truth centred in cell (1, 1), anchor (2, 2): coord has only tw = th = log(1/2);
    # object as in the rescore case; 15 no-object anchors; cross-entropy of uniform logits log 2.
    expected = {
        "coord": 0.5 * (2 - 1 / 16) * 2 * math.log(0.5) ** 2,
        "object": 0.5 * 5 * 0.25**2,
        "noobject": 0.125 * 15,
        "class_": math.log(2),
    }
    expected[term] *= 2
    cfg = NO_WARMUP.model_copy(update={scale: 2 * getattr(NO_WARMUP, scale)})
    terms = region_loss(_head(a=1), _targets(_truth(1.5, 1.5, 1.0, 1.0)), [(2.0, 2.0)], cfg)
    got = {name: getattr(terms, name).item() for name in expected}
    assert got == pytest.approx(expected)
    assert terms.total.item() == pytest.approx(sum(expected.values()))


# ------------------------------------------------------------------------------------------------
# Prior-matching warm-up


@pytest.mark.parametrize(
    ("seen", "warmup_images", "coord"),
    [
        (0, 12800, 0.8),
        (12799, 12800, 0.8),
        (12800, 12800, 0.0),
        (0, 0, 0.0),
    ],
)
def test_warmup_pulls_every_anchor_to_its_prior(
    seen: int, warmup_images: int, coord: float
) -> None:
    # tw = 1, th = -2 everywhere against targets 0: 0.5 * 0.01 * (1 + 4) on each of 2*4*4 anchors.
    cfg = LossConfig(prior_warmup_images=warmup_images)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    terms = region_loss(_head(a=2, tw=1.0, th=-2.0), [empty], [(1.0, 1.0), (4.0, 2.0)], cfg, seen)
    assert terms.coord.item() == pytest.approx(coord)
    assert terms.noobject.item() == pytest.approx(0.125 * 32)


def test_warmup_leaves_the_assigned_anchor_to_its_truth() -> None:
    # Darknet overwrites the assigned anchor's prior delta with the truth's: tw = 1 there is pulled
    # to log 2 only; the 15 other anchors each add 0.5 * 0.01 * 1**2.
    out = _head(a=1, tw=1.0)
    terms = region_loss(out, _targets(_truth(1.25, 2.75, 2.0, 1.0)), [(1.0, 1.0)], LossConfig())
    terms.total.backward()
    factor = 2 - 0.5 * 0.25
    truth_term = 0.5 * factor * (0.25**2 + 0.25**2 + (1 - math.log(2)) ** 2)
    assert terms.coord.item() == pytest.approx(truth_term + 15 * 0.005)
    assert _grad(out, a=1)[0, 2, 2, 1].item() == pytest.approx(factor * (1 - math.log(2)))
    assert _grad(out, a=1)[0, 2, 0, 0].item() == pytest.approx(0.01)


# ------------------------------------------------------------------------------------------------
# Batch, precision, extremes


def test_batch_of_two_identical_images_equals_one() -> None:
    targets = _targets(_truth(1.25, 2.75, 2.0, 1.0, label=1), _truth(3.1, 0.6, 3.0, 2.5))
    anchors = [(1.0, 1.0), (4.0, 2.0)]
    one = region_loss(_head(a=2, tw=0.3, to=-1.0), targets, anchors, LossConfig())
    two = region_loss(_head(a=2, b=2, tw=0.3, to=-1.0), targets * 2, anchors, LossConfig())
    for name in ["total", "coord", "object", "noobject", "class_", "avg_iou", "recall50"]:
        assert getattr(two, name).item() == pytest.approx(getattr(one, name).item()), name
    assert (one.num_truths, two.num_truths) == (2, 4)


@pytest.mark.parametrize(
    "channels",
    [
        {"tx": 1e4, "ty": -1e4, "tw": 100.0, "th": -100.0, "to": 1e4},
        {"tx": -1e4, "ty": 1e4, "tw": -1e4, "th": 1e4, "to": -1e4},
    ],
)
@pytest.mark.parametrize("class_logit", [1e4, -1e4])
def test_extreme_predictions_give_finite_loss_and_gradients(
    channels: dict[str, float], class_logit: float
) -> None:
    out = _head(2, 1, **channels)
    with torch.no_grad():
        out.view(2, 5 + C, GRID, GRID)[:, 5] = class_logit  # one class logit extreme, one 0
    targets = _targets(_truth(1.25, 2.75, 2.0, 1.0, label=1), _truth(3.1, 0.6, 3.0, 2.5))
    terms = region_loss(out, targets, [(1.0, 1.0), (4.0, 2.0)], LossConfig())
    terms.total.backward()
    assert torch.isfinite(terms.total)
    assert out.grad is not None
    assert bool(torch.isfinite(out.grad).all())


@pytest.mark.parametrize("gain", [1.0, 1e4])
def test_finite_under_bfloat16_autocast(gain: float) -> None:
    torch.manual_seed(0)
    head = torch.nn.Conv2d(3, 2 * (5 + C), kernel_size=32, stride=32)
    image = torch.rand(2, 3, 32 * GRID, 32 * GRID)
    targets = _targets(_truth(1.25, 2.75, 2.0, 1.0, label=1)) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(image) * gain
        assert out.dtype == torch.bfloat16
        terms = region_loss(out, targets, [(1.0, 1.0), (4.0, 2.0)], LossConfig())
    assert terms.total.dtype == torch.float32
    assert torch.isfinite(terms.total)
    # The loss of a bf16 head is the float32 loss of the same values, not a bf16 computation.
    same = region_loss(out.detach().float(), targets, [(1.0, 1.0), (4.0, 2.0)], LossConfig())
    assert terms.total.item() == pytest.approx(same.total.item(), rel=1e-6)
    terms.total.backward()
    assert head.weight.grad is not None
    assert bool(torch.isfinite(head.weight.grad).all())


# ------------------------------------------------------------------------------------------------
# Contract violations


@pytest.mark.parametrize(
    ("a_channels", "anchors", "targets", "message"),
    [
        (13, [(1.0, 1.0), (4.0, 2.0)], _targets(), "output channels"),
        (14, [(1.0, 1.0), (4.0, 2.0)], _targets() * 2, "2 targets for a batch of 1"),
        (14, [(1.0, 1.0), (4.0, 2.0)], _targets(_truth(1, 1, 1, 1, label=2)), "label outside"),
        (14, [1.0, 1.0, 4.0, 2.0], _targets(), "anchors must be"),
        (14, [(1.0, 1.0), (0.0, 2.0)], _targets(), "anchors must be"),
    ],
)
def test_contract_violations_are_clear_errors(
    a_channels: int, anchors: Any, targets: list[dict[str, Tensor]], message: str
) -> None:
    out = torch.zeros(1, a_channels, GRID, GRID)
    with pytest.raises(ValueError, match=message):
        region_loss(out, targets, anchors, LossConfig())


# ------------------------------------------------------------------------------------------------
# Against darknet's deltas
#
# darknet's src/region_layer.c (pjreddie, the version with coord_scale * (2 - w*h)) does not
# differentiate a loss: forward_region_layer writes each raw output's delta, the negative gradient,
# by hand, and backward_region_layer passes it on (the logistic's gradient applied to x, y and
# objectness, the softmax's taken as the identity, as darknet does). Transcribed below loop for loop
# on float64 numbers, in this project's layout: output[b, n*(5+C) + k, j, i].

BoxXYWH = tuple[float, float, float, float]  # centre and size, as fractions of the image


def _logistic(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _box_iou(a: BoxXYWH, b: BoxXYWH) -> float:
    def overlap(x1: float, w1: float, x2: float, w2: float) -> float:
        return min(x1 + w1 / 2, x2 + w2 / 2) - max(x1 - w1 / 2, x2 - w2 / 2)

    w, h = overlap(a[0], a[2], b[0], b[2]), overlap(a[1], a[3], b[1], b[3])
    inter = 0.0 if w < 0 or h < 0 else w * h
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def darknet_deltas(
    out: Tensor,
    truths: list[list[tuple[BoxXYWH, int]]],
    anchors: list[tuple[float, float]],
    config: LossConfig,
    seen: int,
) -> tuple[Tensor, dict[str, list[int]]]:
    """forward_region_layer's l.delta for a raw head, and the images where each branch was taken."""
    x = out.detach().double()
    batch, channels, h, w = x.shape
    a = len(anchors)
    size = channels // a
    v = x.view(batch, a, size, h, w)
    delta = torch.zeros_like(v)
    taken: dict[str, list[int]] = {"ignored": [], "overwritten": []}

    def region_box(at: tuple[int, int, int, int]) -> BoxXYWH:  # get_region_box, DOABS
        b, n, j, i = at
        return (
            (i + _logistic(float(v[b, n, 0, j, i]))) / w,
            (j + _logistic(float(v[b, n, 1, j, i]))) / h,
            math.exp(float(v[b, n, 2, j, i])) * anchors[n][0] / w,
            math.exp(float(v[b, n, 3, j, i])) * anchors[n][1] / h,
        )

    def delta_region_box(truth: BoxXYWH, at: tuple[int, int, int, int], scale: float) -> float:
        b, n, j, i = at
        iou = _box_iou(region_box(at), truth)
        tx, ty = truth[0] * w - i, truth[1] * h - j
        tw, th = math.log(truth[2] * w / anchors[n][0]), math.log(truth[3] * h / anchors[n][1])
        for k, target in ((0, tx), (1, ty)):
            s = _logistic(float(v[b, n, k, j, i]))
            delta[b, n, k, j, i] = scale * (target - s) * s * (1 - s)
        delta[b, n, 2, j, i] = scale * (tw - float(v[b, n, 2, j, i]))
        delta[b, n, 3, j, i] = scale * (th - float(v[b, n, 3, j, i]))
        return iou

    for b in range(batch):
        for j in range(h):
            for i in range(w):
                for n in range(a):
                    pred = region_box((b, n, j, i))
                    best_iou = 0.0
                    for truth, _ in truths[b]:
                        best_iou = max(best_iou, _box_iou(pred, truth))
                    obj = _logistic(float(v[b, n, 4, j, i]))
                    delta[b, n, 4, j, i] = config.noobject_scale * (0 - obj) * obj * (1 - obj)
                    if best_iou > config.thresh:
                        delta[b, n, 4, j, i] = 0
                        taken["ignored"].append(b)
                    if seen < config.prior_warmup_images:  # darknet: seen < 12800
                        prior = ((i + 0.5) / w, (j + 0.5) / h, anchors[n][0] / w, anchors[n][1] / h)
                        delta_region_box(prior, (b, n, j, i), 0.01)
        used: set[tuple[int, int, int]] = set()
        for truth, class_id in truths[b]:
            i, j = int(truth[0] * w), int(truth[1] * h)
            best_iou, best_n = 0.0, 0
            for n in range(a):  # bias_match: the anchor's shape against the truth's, both at 0, 0
                iou = _box_iou((0, 0, anchors[n][0] / w, anchors[n][1] / h), (0, 0, *truth[2:]))
                if iou > best_iou:
                    best_iou, best_n = iou, n
            if (best_n, j, i) in used:
                taken["overwritten"].append(b)
            used.add((best_n, j, i))
            scale = config.coord_scale * (2 - truth[2] * truth[3])
            iou = delta_region_box(truth, (b, best_n, j, i), scale)
            obj = _logistic(float(v[b, best_n, 4, j, i]))
            target = iou if config.rescore else 1.0
            delta[b, best_n, 4, j, i] = config.object_scale * (target - obj) * obj * (1 - obj)
            probs = torch.softmax(v[b, best_n, 5:, j, i], 0)
            onehot = torch.nn.functional.one_hot(torch.tensor(class_id), size - 5).double()
            delta[b, best_n, 5:, j, i] = config.class_scale * (onehot - probs)
    return delta.view(batch, channels, h, w), taken


# Image 0: random truths; image 1: two truths of one shape in one cell, so they share an anchor and
# the later one's deltas overwrite the earlier one's; image 2: no truths.
SHARED = [((0.31, 0.33, 0.30, 0.36), 2), ((0.36, 0.44, 0.31, 0.34), 0)]


def _random_truths(generator: torch.Generator, count: int) -> list[tuple[BoxXYWH, int]]:
    truths = []
    for _ in range(count):
        cx, cy = (0.02 + 0.96 * torch.rand(2, generator=generator)).tolist()
        bw, bh = (0.05 + 0.8 * torch.rand(2, generator=generator)).tolist()
        truths.append(((cx, cy, bw, bh), int(torch.randint(3, (1,), generator=generator))))
    return truths


@pytest.mark.parametrize("warmup", [True, False])
@pytest.mark.parametrize("rescore", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_are_darknet_s_deltas(warmup: bool, rescore: bool, seed: int) -> None:
    h, w, classes = 4, 5, 3  # a 128 x 160 input
    anchors = [(1.3221, 1.73145), (3.19275, 4.00944), (5.05587, 8.09892), (0.9, 0.7), (2.2, 1.1)]
    scales = {"coord_scale": 1.5, "object_scale": 4.0, "noobject_scale": 0.7, "class_scale": 1.3}
    config = LossConfig(**scales, thresh=0.3, rescore=rescore, prior_warmup_images=12800)
    seen = 0 if warmup else 12800
    generator = torch.Generator().manual_seed(seed)
    truths = [_random_truths(generator, 6), SHARED, []]
    out = torch.randn(3, len(anchors) * (5 + classes), h, w, generator=generator)
    out = out.requires_grad_()

    pixels = torch.tensor([32 * w, 32 * h, 32 * w, 32 * h], dtype=torch.float64)
    targets = []
    for image in truths:
        xywh = torch.tensor([box for box, _ in image], dtype=torch.float64).view(-1, 4)
        xyxy = torch.cat((xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2), 1)
        labels = torch.tensor([label for _, label in image], dtype=torch.int64)
        targets.append({"boxes": xyxy * pixels, "labels": labels})
    region_loss(out, targets, anchors, config, seen=seen).total.backward()
    assert out.grad is not None
    ours = -out.grad.double() * len(truths)  # the loss is the batch sum over the batch size

    theirs, taken = darknet_deltas(out, truths, anchors, config, seen)
    assert taken["ignored"]  # every branch is exercised
    assert 1 in taken["overwritten"]
    assert theirs.abs().max() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
