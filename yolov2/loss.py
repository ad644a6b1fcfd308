"""YOLOv2 region loss: darknet's forward_region_layer deltas written as a differentiable loss.

Darknet does not compute a loss and differentiate it; it writes the *delta* (the negative gradient) of
each output by hand. Every term below is the function whose gradient is exactly that delta:

- a squared term on a value ``p`` with target ``t`` and weight ``s`` is ``0.5 * s * (t - p)**2``, so
  autograd gives ``s * (p - t)``, darknet's ``s * (t - p)`` with the sign flipped;
- x, y and objectness go through the logistic, so the same squared term on ``sigmoid(raw)`` gives
  darknet's ``s * (t - sigmoid) * logistic_gradient`` on the raw output;
- darknet's class delta ``s * (onehot - softmax)`` is applied to the raw logits, which is the negative
  gradient of ``s * cross_entropy(logits, label)`` summed over assigned anchors.

Darknet sums the deltas over the batch and divides the learning rate by the batch size; we return the
sum over the batch divided by the batch size so that a plain optimiser step matches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from yolov2.boxes import shape_iou

# exp(±_MAX_LOG_WH) bounds the decoded box size to 1e-3..1e3 anchors: no inf from exp(tw) in the IoUs.
_MAX_LOG_WH = math.log(1e3)
# Darknet's fixed weight of the prior-matching box term during warm-up.
_PRIOR_SCALE = 0.01
# Smallest truth side in grid cells: keeps log(w / anchor_w) finite for a degenerate box.
_MIN_TRUTH_SIZE = 1e-6
_EPS = 1e-9


class LossConfig(BaseModel):
    """The region layer's loss settings (darknet cfg ``[region]``): the ``loss:`` section of a config."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    coord_scale: float = Field(1.0, ge=0, allow_inf_nan=False)
    """Weight of the box term of an anchor assigned to a truth (times 2 - w*h of the truth)."""
    object_scale: float = Field(5.0, ge=0, allow_inf_nan=False)
    """Weight of the objectness term of an anchor assigned to a truth."""
    noobject_scale: float = Field(1.0, ge=0, allow_inf_nan=False)
    """Weight of the objectness-towards-0 term of every other anchor not ignored by ``thresh``."""
    class_scale: float = Field(1.0, ge=0, allow_inf_nan=False)
    """Weight of the softmax cross-entropy of an anchor assigned to a truth."""
    thresh: float = Field(0.6, ge=0, le=1)
    """An anchor whose predicted box has IoU above this with any truth gets no no-object term."""
    rescore: bool = True
    """Objectness target of an assigned anchor: the IoU of its predicted box with the truth, else 1."""
    prior_warmup_images: int = Field(12800, ge=0)
    """While fewer images than this have been seen, pull every unassigned anchor's box toward its cell
    centre and anchor shape with weight 0.01 (darknet's ``seen < 12800``); 0 disables."""


@dataclass(frozen=True)
class LossTerms:
    """The loss of one batch, per term, each the batch sum divided by the batch size."""

    total: Tensor
    """coord + object + noobject + class_; the one to call ``backward()`` on."""
    coord: Tensor
    """Box term of assigned anchors, plus the prior-matching warm-up term while it is on."""
    object: Tensor
    noobject: Tensor
    class_: Tensor
    avg_iou: Tensor
    """Mean IoU of each truth with the prediction of its assigned anchor (detached; 0 without truths)."""
    recall50: Tensor
    """Fraction of truths whose assigned prediction has IoU > 0.5 (detached; 0 without truths)."""
    num_truths: int


def region_loss(
    output: Tensor,
    targets: Sequence[Mapping[str, Tensor]],
    anchors: Tensor | Sequence[Sequence[float]],
    config: LossConfig,
    seen: int = 0,
) -> LossTerms:
    """Darknet's YOLOv2 region loss of a raw head output, summed over the batch and divided by its size.

    ``output`` is (B, A*(5+C), H, W), anchor-major ``[tx, ty, tw, th, to, class logits]`` per anchor,
    for an input of 32*H x 32*W pixels. ``targets`` holds one ``{"boxes": (N, 4) XYXY pixels,
    "labels": (N,) int64}`` per image; ``anchors`` is (A, 2) anchor (w, h) in grid cells; ``seen`` is
    the number of training images seen before this batch (it decides the prior warm-up).
    """
    b, channels, h, w = output.shape
    anchors_t = _anchor_tensor(anchors, output.device)
    a = anchors_t.shape[0]
    if channels % a or channels // a < 6:
        raise ValueError(f"region_loss: {channels} output channels do not split into {a} x (5 + C)")
    num_classes = channels // a - 5
    if len(targets) != b:
        raise ValueError(f"region_loss: {len(targets)} targets for a batch of {b}")

    # Under autocast the head may be bf16/fp16; the loss is always float32 and never autocast.
    with torch.autocast(device_type=output.device.type, enabled=False):
        # (B, A, H, W, 5+C): one row of [tx, ty, tw, th, to, logits...] per anchor and cell
        p = output.float().reshape(b, a, 5 + num_classes, h, w).permute(0, 1, 3, 4, 2)
        boxes, labels, valid = _pad_truths(targets, num_classes, output.device)
        with torch.no_grad():
            t = _build_targets(p, boxes, valid, anchors_t, config.thresh)
        terms = _loss_terms(p, t, labels, config, warmup=seen < config.prior_warmup_images)

    coord, obj, noobj, cls = (term / b for term in terms)
    n_truths = sum(int(target["labels"].shape[0]) for target in targets)
    iou_valid = t.truth_iou[valid]
    zero = output.new_zeros((), dtype=torch.float32)
    return LossTerms(
        total=coord + obj + noobj + cls,
        coord=coord,
        object=obj,
        noobject=noobj,
        class_=cls,
        avg_iou=iou_valid.mean() if n_truths else zero,
        recall50=(iou_valid > 0.5).float().mean() if n_truths else zero,
        num_truths=n_truths,
    )


@dataclass(frozen=True)
class _Targets:
    """What darknet decides before writing deltas; computed without gradients."""

    ignore: Tensor  # (B, A, H, W) bool: best IoU with a truth > thresh, no no-object term
    assigned: Tensor  # (B, A, H, W) bool: some truth's anchor, object/box/class terms instead
    winner: Tensor  # (B, N) bool: valid truth not overwritten by a later one on the same anchor
    index: tuple[Tensor, Tensor, Tensor, Tensor]  # (B, N) each: image, anchor, row j, column i
    box: Tensor  # (B, N, 4): targets of sigmoid(tx), sigmoid(ty), raw tw, raw th
    box_scale: Tensor  # (B, N): 2 - w*h of the truth, w and h normalised to the image
    truth_iou: Tensor  # (B, N): IoU of the assigned anchor's predicted box with the truth


def _anchor_tensor(anchors: Tensor | Sequence[Sequence[float]], device: torch.device) -> Tensor:
    # Checked before the copy: a check of a CUDA tensor would wait for the device.
    t = torch.as_tensor(anchors, dtype=torch.float32)
    if t.ndim != 2 or t.shape[1] != 2 or t.shape[0] == 0 or not bool((t > 0).all()):
        raise ValueError(
            f"region_loss: anchors must be (A, 2) positive (w, h), got {tuple(t.shape)}"
        )
    return _to_device(t, device)


def _to_device(t: Tensor, device: torch.device) -> Tensor:
    """`t` on `device`; from the host to CUDA through pinned memory, so the copy is queued on the
    stream instead of waiting for the device to finish its work first."""
    if t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _pad_truths(
    targets: Sequence[Mapping[str, Tensor]], num_classes: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Truths padded to (B, Nmax): boxes XYXY in grid cells, labels, and the mask of real ones.

    Padded where the targets are (the training loop passes the loader's, on the CPU) and sent to
    `device` in one copy per tensor: no per-image copy, and no wait for the device."""
    for k, target in enumerate(targets):
        box_k, label_k = target["boxes"], target["labels"]
        if box_k.ndim != 2 or box_k.shape[1] != 4 or label_k.shape != box_k.shape[:1]:
            raise ValueError(f"region_loss: target {k} needs boxes (N, 4) and labels (N,)")
    counts = [int(target["labels"].shape[0]) for target in targets]
    n_max = max(counts, default=0)
    b = len(targets)
    home = targets[0]["boxes"].device if targets else device
    total = sum(counts)
    sizes = _to_device(torch.tensor(counts, dtype=torch.int64), home)
    image = torch.repeat_interleave(torch.arange(b, device=home), sizes, output_size=total)
    # Padding is a unit box, so no IoU below divides by zero; the mask keeps it out of every term.
    boxes = torch.zeros(b, n_max, 4, device=home)
    boxes[..., 2:] = 1.0
    labels = torch.zeros(b, n_max, dtype=torch.int64, device=home)
    if total:
        flat_labels = torch.cat([target["labels"].to(home) for target in targets])
        outside = (flat_labels < 0) | (flat_labels >= num_classes)
        if bool(outside.any()):
            k = int(image[outside][0])
            raise ValueError(f"region_loss: target {k} has a label outside 0..{num_classes - 1}")
        flat_boxes = torch.cat([target["boxes"].to(home, torch.float32) for target in targets])
        slot = torch.arange(total, device=home) - (torch.cumsum(sizes, 0) - sizes)[image]
        boxes[image, slot] = flat_boxes / 32
        labels[image, slot] = flat_labels
    valid = torch.arange(n_max, device=home) < sizes[:, None]
    return _to_device(boxes, device), _to_device(labels, device), _to_device(valid, device)


def _decode(p: Tensor, anchors: Tensor) -> Tensor:
    """Predicted boxes (B, A, H, W, 4) XYXY in grid cells, sizes clamped so nothing is infinite."""
    _, a, h, w, _ = p.shape
    col = torch.arange(w, device=p.device, dtype=p.dtype).view(1, 1, 1, w)
    row = torch.arange(h, device=p.device, dtype=p.dtype).view(1, 1, h, 1)
    cx = col + p[..., 0].sigmoid()
    cy = row + p[..., 1].sigmoid()
    bw = p[..., 2].clamp(-_MAX_LOG_WH, _MAX_LOG_WH).exp() * anchors[:, 0].view(1, a, 1, 1)
    bh = p[..., 3].clamp(-_MAX_LOG_WH, _MAX_LOG_WH).exp() * anchors[:, 1].view(1, a, 1, 1)
    return torch.stack((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), dim=-1)


def _iou(x: Tensor, y: Tensor) -> Tensor:
    """IoU of XYXY boxes, broadcast over the leading dimensions (batched, unlike ops.box_iou)."""
    lt = torch.maximum(x[..., :2], y[..., :2])
    rb = torch.minimum(x[..., 2:], y[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_x = (x[..., 2:] - x[..., :2]).clamp(min=0).prod(-1)
    area_y = (y[..., 2:] - y[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_x + area_y - inter).clamp(min=_EPS)


def _build_targets(
    p: Tensor, boxes: Tensor, valid: Tensor, anchors: Tensor, thresh: float
) -> _Targets:
    b, a, h, w, _ = p.shape
    n_max = boxes.shape[1]
    pred = _decode(p, anchors)  # (B, A, H, W, 4)

    # No-object ignore: best IoU of each prediction with any truth of its image (darknet starts at 0).
    if n_max:
        ious = _iou(pred.view(b, -1, 1, 4), boxes[:, None])  # (B, A*H*W, N)
        best = ious.masked_fill(~valid[:, None], 0).amax(-1)
    else:
        best = pred.new_zeros(b, a * h * w)
    ignore = (best > thresh).view(b, a, h, w)

    # The truth's cell; a centre on the far edge would index past the grid, so clamp it in.
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=_MIN_TRUTH_SIZE)  # (B, N, 2) grid cells
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    i = centre[..., 0].floor().long().clamp(0, w - 1)
    j = centre[..., 1].floor().long().clamp(0, h - 1)
    # Best anchor by shape alone (bias_match=1): both boxes centred at the origin. argmax keeps the
    # first of equal IoUs, as darknet's strict `iou > best_iou` does.
    n = shape_iou(wh.reshape(-1, 2), anchors).view(b, n_max, a).argmax(-1)
    img = torch.arange(b, device=p.device)[:, None].expand(b, n_max)

    # Darknet overwrites the deltas of an anchor in truth order, so a later truth on the same cell
    # and anchor wins; keep only the last one (index_put with duplicates has no defined winner).
    key = (n * h + j) * w + i
    same = (key[:, :, None] == key[:, None, :]) & valid[:, None, :]
    later = torch.ones(n_max, n_max, dtype=torch.bool, device=p.device).triu(1)
    winner = valid & ~(same & later).any(-1)
    assigned = torch.zeros(b, a, h, w, dtype=torch.bool, device=p.device)
    assigned[img[valid], n[valid], j[valid], i[valid]] = True

    grid_size = torch.tensor([w, h], device=p.device, dtype=p.dtype)
    box = torch.cat((centre - torch.stack((i, j), -1), torch.log(wh / anchors[n])), -1)
    return _Targets(
        ignore=ignore,
        assigned=assigned,
        winner=winner,
        index=(img, n, j, i),
        box=box,
        box_scale=2 - (wh / grid_size).prod(-1),
        truth_iou=_iou(pred[img, n, j, i], boxes),
    )


def _loss_terms(
    p: Tensor, t: _Targets, labels: Tensor, config: LossConfig, warmup: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(coord, object, noobject, class) summed over the batch."""
    obj = p[..., 4].sigmoid()  # (B, A, H, W)
    # Darknet sets the no-object delta on every anchor, zeroes it above thresh, and an assigned
    # truth then overwrites it with the object delta.
    noobj_on = ~t.ignore & ~t.assigned
    noobject = 0.5 * config.noobject_scale * obj.square().masked_fill(~noobj_on, 0).sum()

    coord = p.new_zeros(())
    if warmup:
        # Target (0.5, 0.5, 0, 0): the cell centre and exactly the anchor's shape. Assigned anchors
        # are left out because darknet overwrites their box delta with the truth's.
        prior = (p[..., :2].sigmoid() - 0.5).square().sum(-1) + p[..., 2:4].square().sum(-1)
        coord = coord + 0.5 * _PRIOR_SCALE * prior.masked_fill(t.assigned, 0).sum()

    img, n, j, i = (idx[t.winner] for idx in t.index)
    pk = p[img, n, j, i]  # (K, 5+C), one row per winning truth
    box_t = t.box[t.winner]
    box_err = (pk[:, :2].sigmoid() - box_t[:, :2]).square().sum(-1)
    box_err = box_err + (pk[:, 2:4] - box_t[:, 2:]).square().sum(-1)
    coord = coord + 0.5 * config.coord_scale * (t.box_scale[t.winner] * box_err).sum()

    obj_t = t.truth_iou[t.winner] if config.rescore else torch.ones_like(box_err)
    obj_term = 0.5 * config.object_scale * (pk[:, 4].sigmoid() - obj_t).square().sum()
    cls = config.class_scale * F.cross_entropy(pk[:, 5:], labels[t.winner], reduction="sum")
    return coord, obj_term, noobject, cls
