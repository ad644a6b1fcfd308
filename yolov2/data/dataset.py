"""The detection dataset of a list of annotations, its collate, and targets packed out of workers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors

from yolov2.data.transforms import DetectionTransform, Target, to_float
from yolov2.data.voc import Annotation, load_image
from yolov2.errors import InputError


class VOCDetection(torch.utils.data.Dataset[tuple[Tensor, Target]]):
    """Images and targets of a list of annotations.

    An index may be an int, an (index, size) pair or an (index, size, seed) triple: a batch sampler
    that yields them picks the output size per batch (darknet's multi-scale training) and the seed of
    each sample's augmentation, and this works in DataLoader workers, where setting `transform.size`
    in the main process would not reach the workers' copies.
    """

    def __init__(
        self,
        annotations: Sequence[Annotation],
        transform: DetectionTransform | None = None,
        keep_difficult: bool = True,
    ) -> None:
        self.annotations = list(annotations)
        self.transform = transform
        self.keep_difficult = keep_difficult

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[Tensor, Target]:
        index, *rest = key if isinstance(key, tuple) else (key,)
        size, seed = (*rest, None, None)[:2]
        ann = self.annotations[index]
        image = load_image(ann.image_path)
        height, width = image.shape[-2:]
        if (width, height) != (ann.width, ann.height):
            raise InputError(
                f"{ann.image_path}: image is {width}x{height} but its XML says "
                f"{ann.width}x{ann.height}"
            )
        target = self._target(ann)
        if self.transform is None:
            return to_float(image), target
        return self.transform(tv_tensors.Image(image), target, size, seed)

    def _target(self, ann: Annotation) -> Target:
        keep = np.ones(len(ann.labels), bool) if self.keep_difficult else ~ann.difficult
        boxes = torch.from_numpy(ann.boxes[keep]).clone()
        boxes[:, :2] -= 1  # VOC pixel i covers [i - 1, i) in 0-based continuous coordinates
        return {
            "boxes": tv_tensors.BoundingBoxes(
                boxes, format="XYXY", canvas_size=(ann.height, ann.width)
            ),
            "labels": torch.from_numpy(ann.labels[keep]),
            "difficult": torch.from_numpy(ann.difficult[keep]),
            "image_id": ann.image_id,
            "orig_size": (ann.height, ann.width),
        }


def collate_detections(batch: Sequence[tuple[Tensor, Target]]) -> tuple[Tensor, TargetBatch]:
    """Stack same-size images to (B, 3, H, W); targets stay a list, one dict per image."""
    images, targets = zip(*batch, strict=True)
    return torch.stack(images), TargetBatch(targets)


class TargetBatch(list[Target]):
    """A batch's targets, one dict per image, which leave a DataLoader worker packed.

    Each tensor a worker sends costs a shared-memory file and a descriptor passed over a socket: with
    boxes, labels and difficult flags per image, that cost the main process more than the images
    did, and the loader nearly a third of its throughput. Packed, the batch sends one tensor per key
    (every image's boxes concatenated, and so on), split again into per-image views on arrival.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return _unpack_targets, (_pack_targets(self),)


_BOX_METADATA = ("format", "canvas_size", "clamping_mode")  # the last since torchvision 0.23


class _Packed(NamedTuple):
    flat: Tensor  # the images' tensors of one key, concatenated along the first dimension
    lengths: list[int]
    boxes: list[dict[str, Any]] | None  # each image's BoundingBoxes metadata, when they are boxes


def _pack_targets(targets: Sequence[Target]) -> dict[str, Any]:
    packed: dict[str, Any] = {}
    for key in targets[0] if targets else ():
        values = [target[key] for target in targets]
        if not _concatenable(values):
            packed[key] = values
            continue
        boxes = None
        if all(isinstance(v, tv_tensors.BoundingBoxes) for v in values):
            boxes = [{k: getattr(v, k) for k in _BOX_METADATA if hasattr(v, k)} for v in values]
        flat = torch.cat([v.as_subclass(Tensor) for v in values])
        packed[key] = _Packed(flat, [len(v) for v in values], boxes)
    return packed


def _concatenable(values: Sequence[Any]) -> bool:
    first = values[0]
    return all(
        isinstance(v, Tensor)
        and v.dim() > 0
        and (v.dtype, v.shape[1:]) == (first.dtype, first.shape[1:])
        for v in values
    )


def _unpack_targets(packed: dict[str, Any]) -> TargetBatch:
    columns: dict[str, list[Any]] = {}
    for key, value in packed.items():
        if not isinstance(value, _Packed):
            columns[key] = value
            continue
        parts = list(value.flat.split(value.lengths))
        if value.boxes is not None:
            parts = [
                tv_tensors.BoundingBoxes(part, **metadata)
                for part, metadata in zip(parts, value.boxes, strict=True)
            ]
        columns[key] = parts
    count = len(next(iter(columns.values()))) if columns else 0
    return TargetBatch({key: column[i] for key, column in columns.items()} for i in range(count))
