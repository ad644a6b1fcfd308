"""VOC data: the VOCdevkit reader, the detection dataset, darknet's augmentation, a synthetic VOC set.

XML is read with the standard library's ``xml.etree.ElementTree``: VOC annotations are small, flat and
trusted, so a faster or hardened parser would buy nothing (16k files parse in about a second).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F
from tqdm import tqdm

from yolov2.errors import InputError

log = logging.getLogger(__name__)

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip

# A class is decided by outline alone; colours are drawn from one pool shared by every class.
SYNTHETIC_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent",
)  # fmt: skip

Target = dict[str, Any]


# ---------------------------------------------------------------------------------------------------
# VOCdevkit reader
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    """One image of a VOCdevkit tree with its objects, boxes exactly as in the XML."""

    image_id: str
    image_path: Path
    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32 xmin, ymin, xmax, ymax: VOC 1-based inclusive pixels
    labels: np.ndarray  # (N,) int64 index into the classes
    difficult: np.ndarray  # (N,) bool


class VOCObjects(NamedTuple):
    """What one annotation XML holds: the image size and its objects."""

    width: int
    height: int
    boxes: np.ndarray  # (N, 4) float32, VOC 1-based inclusive
    labels: np.ndarray  # (N,) int64
    difficult: np.ndarray  # (N,) bool


def _child_text(elem: ET.Element, tag: str, path: Path, where: str) -> str:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        raise InputError(f"{path}: {where} has no <{tag}>")
    return text.strip()


def _child_number(elem: ET.Element, tag: str, path: Path, where: str) -> float:
    text = _child_text(elem, tag, path, where)
    try:
        return float(text)
    except ValueError:
        raise InputError(f"{path}: {where} <{tag}> is {text!r}, not a number") from None


def _parse_size(root: ET.Element, path: Path) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        raise InputError(f"{path}: no <size>")
    width = int(_child_number(size, "width", path, "<size>"))
    height = int(_child_number(size, "height", path, "<size>"))
    if width <= 0 or height <= 0:
        raise InputError(f"{path}: size is {width}x{height}, not a positive width and height")
    return width, height


def _parse_box(obj: ET.Element, path: Path, where: str, width: int, height: int) -> list[float]:
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise InputError(f"{path}: {where} has no <bndbox>")
    x1, y1, x2, y2 = (
        _child_number(bndbox, t, path, where) for t in ("xmin", "ymin", "xmax", "ymax")
    )
    if x2 < x1 or y2 < y1:
        axis = "x" if x2 < x1 else "y"
        lo, hi = (x1, x2) if axis == "x" else (y1, y2)
        raise InputError(f"{path}: {where} has {axis}max {hi:g} < {axis}min {lo:g}")
    # VOC pixels are 1-based and inclusive, so a box may touch 1 and width but not 0 or width + 1.
    if x1 < 1 or y1 < 1 or x2 > width or y2 > height:
        raise InputError(
            f"{path}: {where} box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) is outside the image "
            f"1..{width} x 1..{height}"
        )
    return [x1, y1, x2, y2]


def parse_voc_xml(path: Path, classes: Sequence[str]) -> VOCObjects:
    """Read one VOC annotation; every problem is an InputError naming the file and the object."""
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found") from None
    except ET.ParseError as err:
        raise InputError(f"{path}:{err.position[0]}: malformed XML: {err}") from None
    width, height = _parse_size(root, path)
    class_index = {name: i for i, name in enumerate(classes)}
    boxes, labels, difficult = [], [], []
    for i, obj in enumerate(root.iter("object"), start=1):
        name = _child_text(obj, "name", path, f"object {i}")
        where = f"object {i} ({name})"
        if name not in class_index:
            raise InputError(f"{path}: {where} has unknown class {name!r}")
        boxes.append(_parse_box(obj, path, where, width, height))
        labels.append(class_index[name])
        # VOC2012 leaves <difficult> out of some objects; the devkit reads that as 0.
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    return VOCObjects(
        width,
        height,
        np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        np.asarray(labels, dtype=np.int64),
        np.asarray(difficult, dtype=bool),
    )


def _read_image_set(year_dir: Path, image_set: str) -> list[str]:
    set_file = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
    if not set_file.is_file():
        raise InputError(f"{set_file}: image set file not found")
    # Class-specific set files carry a second column (1, 0, -1); the id is always the first.
    return [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]


def read_voc(
    root: Path, splits: Sequence[tuple[str, str]], classes: Sequence[str] = VOC_CLASSES
) -> list[Annotation]:
    """Read the union of (year, image_set) splits of a VOCdevkit folder, e.g. 07+12 trainval."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: VOCdevkit folder not found")
    annotations: list[Annotation] = []
    seen: set[Path] = set()
    for year, image_set in splits:
        year_dir = root / f"VOC{year}"
        if not year_dir.is_dir():
            raise InputError(f"{year_dir}: VOC{year} folder not found in {root}")
        for image_id in _read_image_set(year_dir, image_set):
            image_path = year_dir / "JPEGImages" / f"{image_id}.jpg"
            if image_path in seen:  # the same image in two of the requested splits counts once
                continue
            seen.add(image_path)
            annotations.append(_read_annotation(year_dir, image_id, image_path, classes))
    return annotations


def _read_annotation(
    year_dir: Path, image_id: str, image_path: Path, classes: Sequence[str]
) -> Annotation:
    objects = parse_voc_xml(year_dir / "Annotations" / f"{image_id}.xml", classes)
    # Only existence is checked here; decoding every JPEG up front would cost minutes on VOC.
    if not image_path.is_file():
        raise InputError(f"{image_path}: image not found")
    return Annotation(image_id, image_path, *objects)


def load_image(path: Path) -> Tensor:
    """Decode an image to a (3, H, W) uint8 RGB tensor; a corrupt file is an InputError naming it.

    PIL rather than torchvision.io, whose decoders are deprecated since torchvision 0.29. The tensor
    is a view of PIL's (H, W, 3) pixels, channels-last in memory: torch's uint8 resize is fastest
    on that layout, and a planar copy would cost about what the resize costs.
    """
    try:
        with Image.open(path) as image:
            rgb = np.array(image.convert("RGB"))  # convert() decodes, so truncation shows here
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: cannot decode image: not a JPEG or other known format") from None
    except OSError as err:
        raise InputError(f"{path}: cannot decode image: {err}") from None
    return torch.from_numpy(rgb).permute(2, 0, 1)


# ---------------------------------------------------------------------------------------------------
# Dataset
# ---------------------------------------------------------------------------------------------------


class DetectionTransform(Protocol):
    """A transform of (uint8 image, target) to (float image, target); `size` is the output side."""

    size: int

    def __call__(
        self,
        image: tv_tensors.Image,
        target: Target,
        size: int | None = None,
        seed: int | None = None,
    ) -> tuple[Tensor, Target]: ...


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
            return _to_float(image), target
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


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------


def _sanitize(target: Target) -> Target:
    """Drop the boxes cropped or squeezed below a pixel, with their labels and difficult flags."""
    # Resizing and flipping leave edges a rounding error outside the canvas (96.00001), which
    # sanitizing would take for a box out of the image and drop: clamp first.
    boxes, keep = F.sanitize_bounding_boxes(F.clamp_bounding_boxes(target["boxes"]), min_size=1.0)
    return {
        **target,
        "boxes": boxes,
        "labels": target["labels"][keep],
        "difficult": target["difficult"][keep],
    }


def _plain(image: Tensor) -> Tensor:
    return image.as_subclass(Tensor)


def _to_float(image: Tensor) -> Tensor:
    # Planar memory for the float image: the colour arithmetic and the model read it plane by plane.
    converted: Tensor = F.to_dtype(image.contiguous(), torch.float32, scale=True)
    return converted


# The hexcone: at hue h (in sixths of a turn, [0, 6)) channel c lies `chroma * profile_c(h)` below
# the maximum, with profile_c(h) = clamp(sign_c * |h - centre_c| + offset_c, 0, 1) for R, G, B.
_HUE_CENTRE = torch.tensor([3.0, 2.0, 4.0]).view(3, 1, 1)
_HUE_SIGN = torch.tensor([-1.0, 1.0, 1.0]).view(3, 1, 1)
_HUE_OFFSET = torch.tensor([2.0, -1.0, -1.0]).view(3, 1, 1)


def distort_hsv(image: Tensor, hue: float, saturation: float, exposure: float) -> Tensor:
    """Darknet's colour distortion of a float RGB (3, H, W) image: shift H by hue, scale S and V, clamp.

    In closed form on RGB, as darknet's rgb_to_hsv, channel scaling and hsv_to_rgb compute it: V is
    the maximum channel, so scaling V scales every channel; S * V is the chroma (max - min), and every
    channel lies a fraction of it below the maximum, so scaling S scales those distances (S may pass 1
    before the final clamp, as in darknet); a hue shift keeps V and S and moves each channel along
    the hexcone's profile. About 7 times cheaper than an HSV round trip.
    """
    top = image.amax(dim=-3, keepdim=True)  # V
    below = top - image if hue == 0 else _hue_shifted_depths(image, top, hue)
    return below.mul_(-saturation).add_(top).mul_(exposure).clamp_(0, 1)


def _hue_shifted_depths(image: Tensor, top: Tensor, hue: float) -> Tensor:
    """How far below the maximum each channel lies once the hue is shifted by `hue` turns."""
    r, g, b = image.unbind(-3)
    top = top.squeeze(-3)
    chroma = top - image.amin(dim=-3)
    # Exclusive masks of the maximum channel, red first then green, as darknet's if-chain decides.
    is_r = torch.sign(r - top).add_(1)
    is_g = torch.sign(g - top).add_(1).mul_(1 - is_r)
    is_b = 1 - is_r - is_g
    h = (g - b).mul_(is_r)
    h.addcmul_(is_g, (b - r).add_(chroma, alpha=2)).addcmul_(is_b, (r - g).add_(chroma, alpha=4))
    h.div_(chroma.clamp_min(1e-12)).add_(6 * hue)  # grey pixels (chroma 0) get hue 0, as in darknet
    h.sub_(torch.floor(h * (1 / 6)).mul_(6))  # wrap into [0, 6)
    profile = (h.unsqueeze(-3) - _HUE_CENTRE).abs_().mul_(_HUE_SIGN).add_(_HUE_OFFSET).clamp_(0, 1)
    return profile.mul_(chroma.unsqueeze(-3))


def crop_replicate(image: Tensor, top: int, left: int, height: int, width: int) -> Tensor:
    """darknet's crop_image: a window of a (3, H, W) image, edge pixels repeated where it reaches out.

    A view when the window is inside the image; otherwise a copy of the window alone, built from its
    inside part and repeated edge rows and columns (padding the whole image first cost 7 times
    more), in channels-last memory, the layout that uint8 resizing is fastest on.
    """
    img_h, img_w = image.shape[-2:]
    x0, x1 = max(0, left), min(img_w, left + width)
    y0, y1 = max(0, top), min(img_h, top + height)
    window = F.crop(image, y0, x0, y1 - y0, x1 - x0).permute(1, 2, 0)  # (h, w, 3), a view
    window = _repeat_edges(window, 1, x0 - left, left + width - x1)
    window = _repeat_edges(window, 0, y0 - top, top + height - y1)
    return window.permute(2, 0, 1)


def _repeat_edges(pixels: Tensor, dim: int, before: int, after: int) -> Tensor:
    if before <= 0 and after <= 0:
        return pixels
    parts = [pixels]
    if before > 0:
        parts.insert(0, pixels.narrow(dim, 0, 1).expand_as(pixels.narrow(dim, 0, before)))
    if after > 0:
        edge = pixels.narrow(dim, pixels.shape[dim] - 1, 1)
        parts.append(edge.expand_as(pixels.narrow(dim, 0, after)))
    return torch.cat(parts, dim)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation draws: a function of the experiment's seed, the epoch and
    the sample's index alone, so the weights do not depend on how many loader workers (or threads, or
    nodes) draw the samples, nor in which order they do."""
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1  # 62 bits: manual_seed takes below 2**63


def _rand_scale(s: float, generator: torch.Generator | None) -> float:
    # darknet's rand_scale: a factor in [1, s], inverted half of the time.
    scale = 1 + (s - 1) * torch.rand((), generator=generator).item()
    return scale if torch.rand((), generator=generator).item() < 0.5 else 1 / scale


class DarknetAugment:
    """darknet's YOLOv2 training augmentation (load_data_region), with boxes following the image.

    Each side of the image moves in or out by up to `jitter` of its length (edges replicated where
    it moves out), which translates, crops and changes the aspect ratio; the result is resized to
    size x size, flipped left-right half of the time, and distorted in HSV. Every draw comes from the
    `seed` the caller passes (the batch sampler's `sample_seed`), so a sample is augmented the same
    way whichever worker draws it; without one, from torch's global generator.

    The geometry runs on uint8 pixels, the colour on the small float output: about 1 ms an image
    besides decoding, on one core, for 160..320-pixel images to 160.
    """

    def __init__(
        self,
        size: int,
        *,
        jitter: float = 0.2,
        hue: float = 0.1,
        saturation: float = 1.5,
        exposure: float = 1.5,
        flip: bool = True,
    ) -> None:
        if not 0 <= jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), got {jitter}")
        self.size = size
        self.jitter, self.hue, self.flip = jitter, hue, flip
        self.saturation, self.exposure = saturation, exposure

    def __call__(
        self,
        image: tv_tensors.Image,
        target: Target,
        size: int | None = None,
        seed: int | None = None,
    ) -> tuple[Tensor, Target]:
        side = size or self.size
        rng = None if seed is None else torch.Generator().manual_seed(seed)
        pixels = _plain(image)  # a tv_tensor would route every op through __torch_function__
        height, width = pixels.shape[-2:]
        top, left, height, width = self._jitter_window(height, width, rng)
        pixels = F.resize(crop_replicate(pixels, top, left, height, width), [side, side])
        boxes = F.resize(F.crop(target["boxes"], top, left, height, width), [side, side])
        if self.flip and torch.rand((), generator=rng).item() < 0.5:
            pixels, boxes = F.horizontal_flip(pixels), F.horizontal_flip(boxes)
        dhue = self.hue * (2 * torch.rand((), generator=rng).item() - 1)
        colour = _rand_scale(self.saturation, rng), _rand_scale(self.exposure, rng)
        return distort_hsv(_to_float(pixels), dhue, *colour), _sanitize({**target, "boxes": boxes})

    def _jitter_window(
        self, height: int, width: int, rng: torch.Generator | None
    ) -> tuple[int, int, int, int]:
        """(top, left, height, width) of the jittered window, in the image's pixels."""
        dw, dh = int(width * self.jitter), int(height * self.jitter)
        left, right = (int(v) for v in torch.randint(-dw, dw + 1, (2,), generator=rng))
        top, bottom = (int(v) for v in torch.randint(-dh, dh + 1, (2,), generator=rng))
        return top, left, height - top - bottom, width - left - right


class EvalTransform:
    """Resize to size x size as darknet v2 does, or letterbox with 0.5 grey padding."""

    def __init__(self, size: int, letterbox: bool = False) -> None:
        self.size = size
        self.letterbox = letterbox

    def __call__(
        self,
        image: tv_tensors.Image,
        target: Target,
        size: int | None = None,
        seed: int
        | None = None,  # nothing is random here; taken so that every transform fits one call
    ) -> tuple[Tensor, Target]:
        side = size or self.size
        scaled = self._scaled_size(image.shape[-2:], side)
        image = _to_float(F.resize(_plain(image), list(scaled)))
        boxes = F.resize(target["boxes"], list(scaled))
        if self.letterbox:
            pad = self._padding(scaled, side)
            image, boxes = F.pad(image, pad, fill=0.5), F.pad(boxes, pad)
        # No sanitizing: evaluation targets must stay one to one with the annotation's objects.
        return image, {**target, "boxes": boxes}

    def to_original(
        self, boxes: Tensor, orig_size: tuple[int, int], size: int | None = None
    ) -> Tensor:
        """Map (N, 4) XYXY boxes in network-input pixels back to the original image's pixels."""
        side = size or self.size
        scaled_h, scaled_w = self._scaled_size(orig_size, side)
        left, top = self._padding((scaled_h, scaled_w), side)[:2] if self.letterbox else (0, 0)
        offset = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([orig_size[1] / scaled_w, orig_size[0] / scaled_h] * 2)
        return (boxes - offset) * scale

    def _scaled_size(self, hw: Sequence[int], side: int) -> tuple[int, int]:
        if not self.letterbox:
            return side, side
        scale = side / max(hw)
        return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))

    @staticmethod
    def _padding(scaled: tuple[int, int], side: int) -> list[int]:
        left, top = (side - scaled[1]) // 2, (side - scaled[0]) // 2
        return [left, top, side - scaled[1] - left, side - scaled[0] - top]


# ---------------------------------------------------------------------------------------------------
# Synthetic VOC-format data set
# ---------------------------------------------------------------------------------------------------

# Bump when the drawing changes, so a cached data set of the old generator is not taken as current.
GENERATOR_VERSION = 1
MARKER = ".complete"


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that decides the bytes of a synthetic data set; stored in its marker file."""

    num_trainval: int
    num_test: int
    image_size: tuple[int, int]  # side range in pixels, width and height drawn independently
    seed: int
    classes: tuple[str, ...]
    objects_per_image: tuple[int, int]
    object_size: tuple[float, float]  # object side as a fraction of the image's shorter side
    max_aspect: float  # width / height drawn log-uniformly in [1 / max_aspect, max_aspect]
    max_rotation_deg: float
    clutter: int  # mean number of distractor strokes and blobs per image
    noise: float  # std of per-pixel Gaussian noise, in grey levels
    empty_fraction: float  # fraction of images drawn without objects
    min_visible: float  # objects with less of their area visible are left unannotated
    difficult_visible: float  # objects with less visible are marked difficult
    difficult_min_px: int  # objects whose visible box is smaller than this are difficult
    min_contrast: float  # least mean RGB distance, in grey levels, between object and background
    jpeg_quality: int
    version: int = GENERATOR_VERSION


def make_synthetic_voc(
    root: Path,
    *,
    num_trainval: int = 1600,
    num_test: int = 400,
    image_size: int | tuple[int, int] = (160, 320),
    seed: int = 0,
    classes: Sequence[str] = SYNTHETIC_CLASSES,
    objects_per_image: tuple[int, int] = (1, 6),
    object_size: tuple[float, float] = (0.08, 0.6),
    max_aspect: float = 1.6,
    max_rotation_deg: float = 20.0,
    clutter: int = 10,
    noise: float = 8.0,
    empty_fraction: float = 0.02,
    min_visible: float = 0.3,
    difficult_visible: float = 0.55,
    difficult_min_px: int = 12,
    min_contrast: float = 40.0,
    jpeg_quality: int = 90,
    workers: int = 2,
) -> Path:
    """Write (or reuse) a synthetic VOCdevkit at `root` holding VOC2007 trainval/train/val/test.

    `root` is the VOCdevkit folder itself: `read_voc(root, [("2007", "trainval")], classes)` reads
    it. The set is drawn into a temporary sibling folder and renamed into place at the end, so an
    interrupted run leaves nothing at `root`. A finished set holds a `.complete` marker with its
    parameters: asking again with the same parameters returns it at once (a cache, safe for
    concurrent callers); asking with other parameters is an InputError, because silently
    regenerating would change data a finished experiment was measured on. The same seed gives the
    same bytes however many workers draw it.
    """
    sides = (image_size, image_size) if isinstance(image_size, int) else image_size
    spec = SyntheticSpec(
        num_trainval, num_test, (int(sides[0]), int(sides[1])), seed, tuple(classes),
        (int(objects_per_image[0]), int(objects_per_image[1])),
        (float(object_size[0]), float(object_size[1])), max_aspect, max_rotation_deg, clutter,
        noise, empty_fraction, min_visible, difficult_visible, difficult_min_px, min_contrast,
        jpeg_quality,
    )  # fmt: skip
    _check_spec(spec)
    root = Path(root)
    if _cached(root, spec):
        return root
    tmp = root.parent / f".{root.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _write_synthetic(tmp, spec, workers)
        try:
            tmp.rename(root)
        except OSError:
            if not _cached(root, spec):  # a concurrent caller finished first with the same set
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def _check_spec(spec: SyntheticSpec) -> None:
    unknown = [c for c in spec.classes if c not in SYNTHETIC_CLASSES]
    if unknown or not spec.classes:
        raise InputError(f"synthetic classes {unknown or '[]'} are not among {SYNTHETIC_CLASSES}")
    lo, hi = spec.image_size
    if not 32 <= lo <= hi:
        raise InputError(f"synthetic image_size {spec.image_size} must be 32 <= min <= max")
    if not 0 < spec.object_size[0] <= spec.object_size[1] <= 1:
        raise InputError(f"synthetic object_size {spec.object_size} must be 0 < min <= max <= 1")
    if not 0 <= spec.objects_per_image[0] <= spec.objects_per_image[1]:
        raise InputError(f"synthetic objects_per_image {spec.objects_per_image} is not a range")


def _cached(root: Path, spec: SyntheticSpec) -> bool:
    marker = root / MARKER
    if not root.exists():
        return False
    if not marker.is_file():
        raise InputError(f"{root}: exists but is not a finished synthetic data set (no {MARKER})")
    stored = json.loads(marker.read_text())
    wanted = json.loads(json.dumps(asdict(spec)))
    if stored != wanted:
        changed = sorted(k for k in wanted if stored.get(k) != wanted[k])
        raise InputError(
            f"{marker}: data set was generated with other parameters ({', '.join(changed)}); "
            "delete it or choose another folder"
        )
    return True


def _write_synthetic(tmp: Path, spec: SyntheticSpec, workers: int) -> None:
    year_dir = tmp / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year_dir / sub).mkdir(parents=True)
    total = spec.num_trainval + spec.num_test
    start = time.perf_counter()
    # Threads, not processes: numpy, PIL's drawing and its JPEG encoder release the GIL for much of
    # the work, and threads need no torch import per worker nor a picklable __main__ (Ray, stdin).
    pool = ThreadPoolExecutor(max(1, workers))
    try:
        drawn = pool.map(lambda i: _draw_and_write(year_dir, spec, i), range(total))
        counts = list(tqdm(drawn, total=total, desc="synthetic VOC", unit="img", disable=None))
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, draw no more into a doomed folder
    _write_image_sets(year_dir, spec)
    (tmp / MARKER).write_text(json.dumps(asdict(spec), indent=1) + "\n")
    num_objects = sum(n for n, _ in counts)
    log.info(
        "synthetic VOC: %d images, %d objects (%d difficult) in %.1f s",
        total, num_objects, sum(d for _, d in counts), time.perf_counter() - start,
    )  # fmt: skip


def _write_image_sets(year_dir: Path, spec: SyntheticSpec) -> None:
    ids = [_image_id(i) for i in range(spec.num_trainval + spec.num_test)]
    trainval, test = ids[: spec.num_trainval], ids[spec.num_trainval :]
    sets = {"trainval": trainval, "train": trainval[0::2], "val": trainval[1::2], "test": test}
    for name, members in sets.items():
        text = "".join(f"{m}\n" for m in members)
        (year_dir / "ImageSets" / "Main" / f"{name}.txt").write_text(text)


def _image_id(index: int) -> str:
    return f"{index + 1:06d}"  # VOC2007 numbering: 000001, 000002, ...


def _draw_and_write(year_dir: Path, spec: SyntheticSpec, index: int) -> tuple[int, int]:
    """Draw image `index` from its own seed, write its JPEG and XML; return (objects, difficult)."""
    rng = np.random.default_rng([spec.seed, index])
    image, objects = draw_synthetic_image(rng, spec)
    image_id = _image_id(index)
    image.save(year_dir / "JPEGImages" / f"{image_id}.jpg", quality=spec.jpeg_quality)
    xml = _voc_xml(image_id, image.size, objects)
    (year_dir / "Annotations" / f"{image_id}.xml").write_text(xml)
    return len(objects), sum(o.difficult for o in objects)


@dataclass(frozen=True)
class SyntheticObject:
    name: str
    box: tuple[int, int, int, int]  # VOC 1-based inclusive xmin, ymin, xmax, ymax
    truncated: bool
    difficult: bool


def _voc_xml(image_id: str, size: tuple[int, int], objects: Sequence[SyntheticObject]) -> str:
    parts = [
        "<annotation>\n\t<folder>VOC2007</folder>\n",
        f"\t<filename>{image_id}.jpg</filename>\n",
        "\t<source>\n\t\t<database>prune-search synthetic</database>\n\t</source>\n",
        f"\t<size>\n\t\t<width>{size[0]}</width>\n\t\t<height>{size[1]}</height>\n",
        "\t\t<depth>3</depth>\n\t</size>\n\t<segmented>0</segmented>\n",
    ]
    for obj in objects:
        x1, y1, x2, y2 = obj.box
        parts.append(
            f"\t<object>\n\t\t<name>{obj.name}</name>\n\t\t<pose>Unspecified</pose>\n"
            f"\t\t<truncated>{int(obj.truncated)}</truncated>\n"
            f"\t\t<difficult>{int(obj.difficult)}</difficult>\n"
            f"\t\t<bndbox>\n\t\t\t<xmin>{x1}</xmin>\n\t\t\t<ymin>{y1}</ymin>\n"
            f"\t\t\t<xmax>{x2}</xmax>\n\t\t\t<ymax>{y2}</ymax>\n\t\t</bndbox>\n\t</object>\n"
        )
    parts.append("</annotation>\n")
    return "".join(parts)


def draw_synthetic_image(
    rng: np.random.Generator, spec: SyntheticSpec
) -> tuple[Image.Image, list[SyntheticObject]]:
    """One cluttered image and its annotations, drawn from `rng` alone."""
    width, height = (int(rng.integers(spec.image_size[0], spec.image_size[1] + 1)) for _ in "wh")
    canvas = _background(rng, width, height)
    _draw_clutter(rng, canvas, spec.clutter)
    pixels = np.array(canvas)
    owner = np.zeros((height, width), np.int16)  # which object shows at each pixel, 0 = none
    placed: list[tuple[str, int, int]] = []  # (class, mask area in pixels, of it in the frame)
    count = (
        0
        if rng.random() < spec.empty_fraction
        else int(rng.integers(*spec.objects_per_image, endpoint=True))
    )
    for k in range(1, count + 1):
        name = spec.classes[int(rng.integers(len(spec.classes)))]
        placed.append((name, *_paste_object(rng, spec, name, pixels, owner, k=k)))
    noisy = rng.standard_normal(pixels.shape, dtype=np.float32) * spec.noise + pixels
    image = Image.fromarray(np.clip(noisy, 0, 255, out=noisy).astype(np.uint8))
    return image, _annotate(spec, owner, placed)


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    # A smooth random colour field (a few control points upsampled) with an optional stripe texture.
    grid = rng.integers(
        0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8
    )
    field = np.asarray(
        Image.fromarray(grid).resize((width, height), Image.Resampling.BICUBIC), np.float32
    )
    if rng.random() < 0.5:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 24)
        yy, xx = np.mgrid[0:height, 0:width]
        stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        field += rng.uniform(10, 40) * stripes[..., None]
    return Image.fromarray(np.clip(field, 0, 255).astype(np.uint8))


def _random_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(0, 256, 3))
    return r, g, b


def _draw_clutter(rng: np.random.Generator, canvas: Image.Image, mean_count: int) -> None:
    """Distractors that belong to no class: lines, scribbles, arcs, irregular blobs and specks."""
    draw = ImageDraw.Draw(canvas)
    width, height = canvas.size
    for _ in range(int(rng.poisson(mean_count))):
        kind = rng.integers(5)
        colour = _random_colour(rng)
        x, y = float(rng.uniform(0, width)), float(rng.uniform(0, height))
        reach = float(rng.uniform(0.05, 0.3)) * min(width, height)
        if kind == 0:  # straight line
            end = (x + rng.normal(0, 2 * reach), y + rng.normal(0, 2 * reach))
            draw.line([(x, y), end], fill=colour, width=int(rng.integers(1, 4)))
        elif kind == 1:  # scribble
            pts = [
                (x + rng.normal(0, reach), y + rng.normal(0, reach))
                for _ in range(int(rng.integers(3, 8)))
            ]
            draw.line(pts, fill=colour, width=int(rng.integers(1, 4)), joint="curve")
        elif kind == 2:  # arc: a piece of a ring or crescent outline, too thin to be either
            start = float(rng.uniform(0, 360))
            bbox = (x - reach, y - reach * rng.uniform(0.6, 1.4), x + reach, y + reach)
            draw.arc(
                bbox,
                start,
                start + float(rng.uniform(40, 220)),
                fill=colour,
                width=int(rng.integers(1, 3)),
            )
        elif kind == 3:  # irregular blob with many uneven vertices, neither polygon nor circle
            # Evenly spread angles: random gaps would leave long straight edges, i.e. polygons.
            n = int(rng.integers(9, 16))
            angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * 2 * np.pi / n
            radii = 0.7 * reach * rng.uniform(0.35, 1.0, n)
            draw.polygon(
                list(zip(x + radii * np.cos(angles), y + radii * np.sin(angles), strict=True)),
                fill=colour,
            )
        else:  # specks far below the smallest object
            for _ in range(int(rng.integers(3, 10))):
                sx, sy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.5, 2.5)
                draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=_random_colour(rng))


def _unit_circle(
    n: int, radius: float = 1.0, phase: float = 0.0, centre: tuple[float, float] = (0, 0)
) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([centre[0] + radius * np.cos(t), centre[1] + radius * np.sin(t)], axis=1)


def _shape_polygons(rng: np.random.Generator, name: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Outline of a class in the unit square [-1, 1]^2, and the holes cut out of it."""
    up = -np.pi / 2  # image y points down, so -90 degrees is the top
    if name == "circle":
        return _unit_circle(64), []
    if name == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float), []
    if name == "triangle":
        return np.array([[0, -1], [1, 1], [-1, 1]], float), []
    if name == "hexagon":
        return _unit_circle(6, phase=float(rng.choice([0, np.pi / 6]))), []
    if name == "star":
        inner = float(rng.uniform(0.38, 0.5))
        outer, pts = _unit_circle(5, phase=up), _unit_circle(5, inner, phase=up + np.pi / 5)
        return np.stack([outer, pts], axis=1).reshape(-1, 2), []
    if name == "cross":
        t = float(rng.uniform(0.25, 0.4))
        arm = [
            [-t, -1],
            [t, -1],
            [t, -t],
            [1, -t],
            [1, t],
            [t, t],
            [t, 1],
            [-t, 1],
            [-t, t],
            [-1, t],
            [-1, -t],
            [-t, -t],
        ]
        return np.array(arm, float), []
    if name == "ring":
        return _unit_circle(64), [_unit_circle(64, float(rng.uniform(0.45, 0.7)))]
    if name == "crescent":
        angle = rng.uniform(0, 2 * np.pi)
        shift = float(rng.uniform(0.35, 0.6))
        cut = (shift * np.cos(angle), shift * np.sin(angle))
        return _unit_circle(64), [_unit_circle(64, float(rng.uniform(0.8, 1.0)), centre=cut)]
    raise InputError(f"no drawing for synthetic class {name!r}")


def _object_mask(
    rng: np.random.Generator, spec: SyntheticSpec, name: str, side: float
) -> tuple[Image.Image, np.ndarray]:
    """The object's mask at its size and rotation, and its top-left offset from its centre."""
    aspect = math.exp(rng.uniform(-1, 1) * math.log(spec.max_aspect))
    half = np.array([side * math.sqrt(aspect), side / math.sqrt(aspect)]) / 2
    theta = math.radians(rng.uniform(-spec.max_rotation_deg, spec.max_rotation_deg))
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    outline, holes = _shape_polygons(rng, name)
    polys = [(p * half) @ rot.T for p in [outline, *holes]]
    low, high = np.floor(polys[0].min(0)), np.ceil(polys[0].max(0))
    mask = Image.new("L", (int(high[0] - low[0]) + 1, int(high[1] - low[1]) + 1), 0)
    draw = ImageDraw.Draw(mask)
    for i, poly in enumerate(polys):
        draw.polygon([tuple(v) for v in (poly - low).tolist()], fill=0 if i else 255)
    return mask, low


def _paste_object(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    name: str,
    pixels: np.ndarray,
    owner: np.ndarray,
    *,
    k: int,
) -> tuple[int, int]:
    """Draw object k over `pixels` and `owner`; return its mask's area, and how much is in frame."""
    height, width = owner.shape
    short = min(width, height)
    lo, hi = spec.object_size
    side = short * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    mask_img, low = _object_mask(rng, spec, name, side)
    mask = np.asarray(mask_img) > 127
    # The centre may sit up to a quarter of the object outside the frame: truncated objects.
    cx = rng.uniform(-0.25 * side, width + 0.25 * side)
    cy = rng.uniform(-0.25 * side, height + 0.25 * side)
    x0, y0 = round(cx + low[0]), round(cy + low[1])
    ys, xs = (
        slice(max(0, y0), min(height, y0 + mask.shape[0])),
        slice(max(0, x0), min(width, x0 + mask.shape[1])),
    )
    area = int(mask.sum())
    if ys.start >= ys.stop or xs.start >= xs.stop:
        return area, 0
    inside = mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    region = pixels[ys, xs]
    colour = _contrasting_colour(rng, region[inside], spec.min_contrast)
    shade = _shading(rng, inside.shape)
    region[inside] = np.clip(colour + shade[inside], 0, 255).astype(np.uint8)
    owner[ys, xs][inside] = k
    return area, int(inside.sum())


def _contrasting_colour(
    rng: np.random.Generator, behind: np.ndarray, min_contrast: float
) -> np.ndarray:
    # An object the colour of its background is unlearnable noise, not difficulty: redraw a few times.
    mean = behind.reshape(-1, 3).mean(0) if behind.size else np.full(3, 128.0)
    colour = rng.integers(0, 256, 3).astype(np.float32)
    for _ in range(10):
        if np.abs(colour - mean).mean() >= min_contrast:
            break
        colour = rng.integers(0, 256, 3).astype(np.float32)
    return colour


def _shading(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # A linear light gradient across the object, so fills are not flat.
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (xx * math.cos(angle) + yy * math.sin(angle)) / max(shape)
    shade: np.ndarray = (rng.uniform(-40, 40) * ramp)[..., None]
    return shade


def _annotate(
    spec: SyntheticSpec, owner: np.ndarray, placed: Sequence[tuple[str, int, int]]
) -> list[SyntheticObject]:
    """Boxes of what stays visible; mostly hidden objects are dropped, partly hidden are difficult.

    As in VOC, being cut by the frame (truncated) alone does not make an object difficult: only
    being small or hidden behind other objects does.
    """
    objects = []
    for k, (name, area, in_frame) in enumerate(placed, start=1):
        ys, xs = np.nonzero(owner == k)
        if len(xs) < spec.min_visible * area:
            continue
        box = (int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 1, int(ys.max()) + 1)
        small = min(box[2] - box[0], box[3] - box[1]) + 1 < spec.difficult_min_px
        occluded = len(xs) < spec.difficult_visible * in_frame
        objects.append(SyntheticObject(name, box, in_frame < area, small or occluded))
    return objects
