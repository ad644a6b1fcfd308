"""From the raw head to boxes: darknet's region decode, per-class NMS (torchvision.ops), rescaling."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou


@dataclass(frozen=True)
class ImageDetections:
    """One image's detections: boxes (K, 4) XYXY in the pixels they were scaled to, scores, labels."""

    boxes: Tensor
    scores: Tensor
    labels: Tensor


def decode(output: Tensor, anchors: Sequence[tuple[float, float]]) -> tuple[Tensor, Tensor]:
    """Raw head (B, A*(5+C), H, W) -> boxes (B, A*H*W, 4) XYXY in [0, 1] and class scores (B, A*H*W, C).

    A class score is objectness × class probability, as darknet's region layer reports it.
    """
    b, _, h, w = output.shape
    a = len(anchors)
    out = output.float().view(b, a, -1, h, w)  # (B, A, 5+C, H, W)
    grid_y, grid_x = torch.meshgrid(
        torch.arange(h, device=out.device), torch.arange(w, device=out.device), indexing="ij"
    )
    anchor = torch.tensor(anchors, dtype=out.dtype, device=out.device).view(1, a, 2, 1, 1)
    cx = (grid_x + out[:, :, 0].sigmoid()) / w
    cy = (grid_y + out[:, :, 1].sigmoid()) / h
    # exp of a wild logit would overflow; no real box is 1000 anchors wide.
    bw = out[:, :, 2].clamp(max=7.0).exp() * anchor[:, :, 0] / w
    bh = out[:, :, 3].clamp(max=7.0).exp() * anchor[:, :, 1] / h
    boxes = torch.stack(
        (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2), dim=-1
    )  # (B, A, H, W, 4)
    scores = out[:, :, 4].sigmoid().unsqueeze(2) * out[:, :, 5:].softmax(dim=2)  # (B, A, C, H, W)
    return boxes.reshape(b, -1, 4), scores.permute(0, 1, 3, 4, 2).reshape(b, a * h * w, -1)


def postprocess(
    output: Tensor,
    anchors: Sequence[tuple[float, float]],
    *,
    conf_thresh: float = 0.005,
    nms_thresh: float = 0.45,
    max_detections: int = 100,
) -> list[ImageDetections]:
    """Detections per image in network-input pixels (0-based XYXY), after per-class NMS.

    conf_thresh 0.005 and NMS 0.45 are darknet's `detector valid` settings, the ones its VOC mAP is
    computed with.
    """
    boxes, scores = decode(output, anchors)
    height, width = output.shape[-2] * 32, output.shape[-1] * 32
    scale = torch.tensor((width, height, width, height), dtype=boxes.dtype, device=boxes.device)
    results = []
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        anchor_index, label = (image_scores > conf_thresh).nonzero(as_tuple=True)
        kept_scores = image_scores[anchor_index, label]
        kept_boxes = image_boxes[anchor_index] * scale
        keep = batched_nms(kept_boxes, kept_scores, label, nms_thresh)[:max_detections]
        results.append(ImageDetections(kept_boxes[keep], kept_scores[keep], label[keep]))
    return results


def shape_iou(sizes: Tensor, anchors: Tensor) -> Tensor:
    """(N, K) IoU of (N, 2) (w, h) sizes against (K, 2) anchor sizes, both centred at one point.

    darknet's bias_match: how the region loss gives a truth its anchor, and the distance YOLOv2's
    k-means clusters anchors by (`yolov2.anchors`).
    """
    iou: Tensor = box_iou(
        torch.cat((-sizes, sizes), -1) / 2, torch.cat((-anchors, anchors), -1) / 2
    )
    return iou


def to_voc_pixels(boxes: Tensor, height: int, width: int) -> Tensor:
    """0-based continuous XYXY -> the devkit's 1-based inclusive pixels, inside the image.

    The data loader maps a VOC box (xmin, ymin, xmax, ymax) to (xmin - 1, ymin - 1, xmax, ymax), the
    area its pixels cover; this is the inverse, so ground truth would round-trip exactly.
    """
    voc = boxes + torch.tensor((1.0, 1.0, 0.0, 0.0), dtype=boxes.dtype, device=boxes.device)
    voc[:, 0::2] = voc[:, 0::2].clamp(1, width)
    voc[:, 1::2] = voc[:, 1::2].clamp(1, height)
    return voc
