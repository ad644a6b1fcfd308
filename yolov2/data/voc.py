"""The VOCdevkit reader: image sets, annotation XML and images, every problem named by its file.

XML is read with the standard library's ``xml.etree.ElementTree``: VOC annotations are small, flat and
trusted, so a faster or hardened parser would buy nothing (16k files parse in about a second).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from yolov2.errors import InputError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


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
    except OSError as err:  # a folder of that name, no permission: fingerprint.py says the same
        raise InputError(f"{path}: cannot read the annotation file ({err.strerror})") from None
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


def _devkit_folder(root: Path) -> Path:
    """`root`, or an InputError when it is not a folder."""
    if not root.is_dir():
        raise InputError(f"{root}: VOCdevkit folder not found")
    return root


def _year_folder(root: Path, year: str) -> Path:
    """`root`/VOC<year>, or an InputError naming it when it is missing."""
    year_dir = root / f"VOC{year}"
    if not year_dir.is_dir():
        raise InputError(f"{year_dir}: VOC{year} folder not found in {root}")
    return year_dir


def _read_image_set(year_dir: Path, image_set: str) -> list[str]:
    """The image ids of ImageSets/Main/<image_set>.txt, in the file's order."""
    set_file = year_dir / "ImageSets" / "Main" / f"{image_set}.txt"
    if not set_file.is_file():
        raise InputError(f"{set_file}: image set file not found")
    # Class-specific set files carry a second column (1, 0, -1); the id is always the first.
    return [line.split()[0] for line in set_file.read_text().splitlines() if line.strip()]


def read_voc(
    root: Path, splits: Sequence[tuple[str, str]], classes: Sequence[str] = VOC_CLASSES
) -> list[Annotation]:
    """Read the union of (year, image_set) splits of a VOCdevkit folder, e.g. 07+12 trainval."""
    root = _devkit_folder(Path(root))
    annotations: list[Annotation] = []
    seen: set[Path] = set()
    for year, image_set in splits:
        year_dir = _year_folder(root, year)
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
