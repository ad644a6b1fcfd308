"""VOCdevkit reading, the detection dataset, transforms and the synthetic generator, on real files."""

from __future__ import annotations

import colorsys
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from yolov2.data import (
    SYNTHETIC_CLASSES,
    VOC_CLASSES,
    DarknetAugment,
    EvalTransform,
    VOCDetection,
    collate_detections,
    crop_replicate,
    distort_hsv,
    load_image,
    make_synthetic_voc,
    parse_voc_xml,
    read_voc,
)
from yolov2.errors import InputError

DOG, CAT, PERSON = VOC_CLASSES.index("dog"), VOC_CLASSES.index("cat"), VOC_CLASSES.index("person")
SMALL = {"num_trainval": 6, "num_test": 2, "workers": 1}
WriteVocTree = Callable[..., Path]  # the conftest fixture


@pytest.fixture
def devkit(tmp_path: Path, write_voc_tree: WriteVocTree) -> Path:
    """VOC2007 trainval (2 images, one difficult object) and VOC2012 trainval (1 image)."""
    root = tmp_path / "VOCdevkit"
    write_voc_tree(root, "2007", "trainval", [
        {"id": "000005", "objects": [("dog", 1, 1, 10, 20), ("cat", 30, 5, 64, 48, True)]},
        {"id": "000007", "width": 50, "height": 40, "objects": [("person", 2, 3, 50, 40)]},
    ])  # fmt: skip
    write_voc_tree(root, "2012", "trainval", [
        {"id": "2008_000001", "objects": [("cat", 5, 6, 7, 8)]},
    ])  # fmt: skip
    return root


# ---------------------------------------------------------------------------------------------------
# Reader
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("splits", "ids"),
    [
        ([("2007", "trainval")], ["000005", "000007"]),
        ([("2012", "trainval")], ["2008_000001"]),
        ([("2007", "trainval"), ("2012", "trainval")], ["000005", "000007", "2008_000001"]),
        ([("2012", "trainval"), ("2007", "trainval"), ("2012", "trainval")],
         ["2008_000001", "000005", "000007"]),
    ],
)  # fmt: skip
def test_read_voc_splits_and_union(
    devkit: Path, splits: list[tuple[str, str]], ids: list[str]
) -> None:
    annotations = read_voc(devkit, splits, VOC_CLASSES)
    assert [a.image_id for a in annotations] == ids
    for a in annotations:
        year = "2012" if a.image_id.startswith("2008") else "2007"
        assert a.image_path == devkit / f"VOC{year}" / "JPEGImages" / f"{a.image_id}.jpg"


def test_read_voc_keeps_xml_boxes_labels_and_difficult(devkit: Path) -> None:
    first, second = read_voc(devkit, [("2007", "trainval")], VOC_CLASSES)
    assert (first.width, first.height, second.width, second.height) == (64, 48, 50, 40)
    assert first.boxes.dtype == np.float32
    np.testing.assert_array_equal(first.boxes, [[1, 1, 10, 20], [30, 5, 64, 48]])
    np.testing.assert_array_equal(first.labels, [DOG, CAT])
    np.testing.assert_array_equal(first.difficult, [False, True])
    np.testing.assert_array_equal(second.labels, [PERSON])


def test_classes_are_configurable(devkit: Path) -> None:
    parsed = parse_voc_xml(devkit / "VOC2007" / "Annotations" / "000005.xml", ["cat", "dog"])
    np.testing.assert_array_equal(parsed.labels, [1, 0])
    assert parsed.labels.dtype == np.int64
    with pytest.raises(InputError, match=r"000007\.xml: object 1 \(person\) has unknown class"):
        read_voc(devkit, [("2007", "trainval")], ["cat", "dog"])


def test_missing_difficult_tag_and_two_column_set_file(tmp_path: Path) -> None:
    # VOC2012 omits <difficult> on some objects; class set files carry a second column.
    year = tmp_path / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True)
    xml = (
        "<annotation><size><width>30</width><height>20</height></size><object><name>cat</name>"
        "<bndbox><xmin>1.5</xmin><ymin>2</ymin><xmax>30</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>"
    )
    (year / "Annotations" / "a.xml").write_text(xml)
    (year / "JPEGImages" / "a.jpg").write_bytes(b"")
    (year / "ImageSets" / "Main" / "cat_val.txt").write_text("a  1\n\n")
    (annotation,) = read_voc(tmp_path, [("2012", "cat_val")], VOC_CLASSES)
    np.testing.assert_array_equal(annotation.boxes, [[1.5, 2, 30, 20]])
    np.testing.assert_array_equal(annotation.difficult, [False])


def _broken(xml: str) -> dict[str, Any]:
    return {"id": "000001", "xml": xml}


def _box(x1: int, y1: int, x2: int, y2: int, name: str = "dog") -> dict[str, Any]:
    return {"id": "000001", "objects": [("cat", 1, 1, 5, 5), (name, x1, y1, x2, y2)]}


BAD_INPUTS = {
    "missing xml": ({"id": "000001", "no_xml": True}, r"000001\.xml: annotation file not found"),
    "malformed xml": (_broken("<annotation>\n<size>\n</annotation>"), r"000001\.xml:3: malformed XML"),
    "missing size": (_broken("<annotation></annotation>"), r"000001\.xml: no <size>"),
    "missing width": (_broken("<annotation><size><height>4</height></size></annotation>"),
                      r"000001\.xml: <size> has no <width>"),
    "bad number": (_broken("<annotation><size><width>a</width></size></annotation>"),
                   r"000001\.xml: <size> <width> is 'a', not a number"),
    "xmin 0": (_box(0, 1, 10, 10), r"000001\.xml: object 2 \(dog\) box \(0, 1, 10, 10\) is outside"),
    "ymin 0": (_box(1, 0, 10, 10), r"000001\.xml: object 2 \(dog\) box .* is outside"),
    "xmax > width": (_box(1, 1, 65, 10), r"000001\.xml: object 2 \(dog\) box .* is outside the image 1\.\.64"),
    "ymax > height": (_box(1, 1, 10, 49), r"000001\.xml: object 2 \(dog\) box .* is outside"),
    "xmax < xmin": (_box(40, 1, 12, 10), r"000001\.xml: object 2 \(dog\) has xmax 12 < xmin 40"),
    "ymax < ymin": (_box(1, 9, 12, 3), r"000001\.xml: object 2 \(dog\) has ymax 3 < ymin 9"),
    "unknown class": (_box(1, 1, 5, 5, "dragon"), r"000001\.xml: object 2 \(dragon\) has unknown class 'dragon'"),
    "missing jpeg": ({"id": "000001", "no_jpeg": True}, r"000001\.jpg: image not found"),
}  # fmt: skip


@pytest.mark.parametrize(("image", "message"), BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_names_the_file(
    tmp_path: Path, write_voc_tree: WriteVocTree, image: dict[str, Any], message: str
) -> None:
    root = write_voc_tree(tmp_path, "2007", "trainval", [image])
    with pytest.raises(InputError, match=message) as raised:
        read_voc(root, [("2007", "trainval")], VOC_CLASSES)
    assert str(tmp_path) in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("folder", "splits", "message"),
    [
        ("nowhere", [("2007", "trainval")], r"nowhere: VOCdevkit folder not found"),
        ("VOCdevkit", [("2010", "trainval")], r"VOC2010: VOC2010 folder not found"),
        ("VOCdevkit", [("2007", "test")], r"VOC2007/ImageSets/Main/test\.txt: image set file not"),
    ],
)
def test_missing_folder_or_set_file(
    devkit: Path, folder: str, splits: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        read_voc(devkit.parent / folder, splits, VOC_CLASSES)


@pytest.mark.parametrize(
    ("jpeg", "message"),
    [
        (b"not a jpeg at all", r"000001\.jpg: cannot decode image: not a JPEG"),
        (None, r"000001\.jpg: cannot decode image: .*[Tt]runcated"),
    ],
)
def test_corrupt_jpeg_is_an_input_error_when_loaded(
    tmp_path: Path, write_voc_tree: WriteVocTree, jpeg: bytes | None, message: str
) -> None:
    root = write_voc_tree(tmp_path, "2007", "test", [{"id": "000001"}])
    path = root / "VOC2007" / "JPEGImages" / "000001.jpg"
    path.write_bytes(jpeg if jpeg is not None else path.read_bytes()[:300])
    dataset = VOCDetection(read_voc(root, [("2007", "test")], VOC_CLASSES))
    with pytest.raises(InputError, match=message):
        dataset[0]


def test_image_size_disagreeing_with_xml_is_an_input_error(
    tmp_path: Path, write_voc_tree: WriteVocTree
) -> None:
    small = io.BytesIO()
    Image.new("RGB", (40, 30)).save(small, "JPEG")
    root = write_voc_tree(tmp_path, "2007", "test", [{"id": "000001", "jpeg": small.getvalue()}])
    dataset = VOCDetection(read_voc(root, [("2007", "test")], VOC_CLASSES))
    with pytest.raises(InputError, match=r"000001\.jpg: image is 40x30 but its XML says 64x48"):
        dataset[0]


# ---------------------------------------------------------------------------------------------------
# Dataset and collate
# ---------------------------------------------------------------------------------------------------


def test_dataset_converts_voc_pixels_to_zero_based(devkit: Path) -> None:
    dataset = VOCDetection(read_voc(devkit, [("2007", "trainval")], VOC_CLASSES))
    image, target = dataset[0]
    assert image.dtype == torch.float32
    assert image.shape == (3, 48, 64)
    assert image.min() >= 0
    assert image.max() <= 1
    decoded = load_image(devkit / "VOC2007" / "JPEGImages" / "000005.jpg")
    torch.testing.assert_close(image, decoded.float() / 255)
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].canvas_size == (48, 64)
    # VOC (1, 1, 10, 20) covers pixels 0..9 x 0..19: continuous [0, 10] x [0, 20].
    assert target["boxes"].tolist() == [[0, 0, 10, 20], [29, 4, 64, 48]]
    assert target["labels"].tolist() == [DOG, CAT]
    assert target["difficult"].tolist() == [False, True]
    assert (target["image_id"], target["orig_size"]) == ("000005", (48, 64))


@pytest.mark.parametrize(("keep", "labels"), [(True, [DOG, CAT]), (False, [DOG])])
def test_training_targets_drop_difficult(devkit: Path, keep: bool, labels: list[int]) -> None:
    annotations = read_voc(devkit, [("2007", "trainval")], VOC_CLASSES)
    _, target = VOCDetection(annotations, keep_difficult=keep)[0]
    assert target["labels"].tolist() == labels
    assert len(target["boxes"]) == len(target["difficult"]) == len(labels)
    assert annotations[0].difficult.tolist() == [False, True]  # the annotation itself keeps it


def test_collate_stacks_images_and_lists_targets(devkit: Path) -> None:
    annotations = read_voc(devkit, [("2007", "trainval"), ("2012", "trainval")], VOC_CLASSES)
    dataset = VOCDetection(annotations, EvalTransform(32))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, collate_fn=collate_detections)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, 32, 32)
    assert images.dtype == torch.float32
    assert [t["image_id"] for t in targets] == ["000005", "000007", "2008_000001"]
    assert [len(t["labels"]) for t in targets] == [2, 1, 1]
    # 64x48 squeezed to 32x32: x halves, y scales by 2/3.
    torch.testing.assert_close(targets[0]["boxes"][0], torch.tensor([0.0, 0.0, 5.0, 40 / 3]))


def test_targets_cross_from_a_worker_intact() -> None:
    # A batch's targets leave a worker packed into one tensor per key: what arrives must be the same
    # dicts, in order, with empty targets, BoundingBoxes metadata and plain values kept.
    def sample(
        n: int, canvas: tuple[int, int], image_id: str
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        boxes = [[i, 2 * i, i + 5.5, 2 * i + 3] for i in range(n)]
        target = _target(boxes, canvas, list(range(n)), [i % 2 == 1 for i in range(n)])
        if n == 0:  # as the dataset makes them: typed even when empty
            target["labels"] = torch.zeros(0, dtype=torch.int64)
            target["difficult"] = torch.zeros(0, dtype=torch.bool)
            target["boxes"] = tv_tensors.BoundingBoxes(
                torch.zeros(0, 4), format="XYXY", canvas_size=canvas
            )
        target["image_id"] = image_id
        return torch.full((3, 4, 4), float(n)), target

    samples = [sample(2, (30, 40), "a"), sample(0, (9, 9), "b"), sample(3, (50, 20), "c")]
    sent = collate_detections(samples)
    loader = torch.utils.data.DataLoader(
        samples, batch_size=3, collate_fn=collate_detections, num_workers=1
    )
    images, targets = next(iter(loader))
    assert torch.equal(images, sent[0])
    assert isinstance(targets, list)
    assert len(targets) == 3
    for got, want in zip(targets, sent[1], strict=True):
        assert list(got) == list(want)
        for key, value in want.items():
            assert type(got[key]) is type(value)
            assert (
                torch.equal(got[key], value)
                if isinstance(value, torch.Tensor)
                else got[key] == value
            )
        assert got["boxes"].canvas_size == want["boxes"].canvas_size
        assert got["boxes"].format == want["boxes"].format
        assert got["labels"].dtype == torch.int64
        assert got["difficult"].dtype == torch.bool


@pytest.mark.parametrize("size", [32, 64, 96])
def test_size_per_item_and_settable_size(devkit: Path, size: int) -> None:
    transform = DarknetAugment(416)
    dataset = VOCDetection(read_voc(devkit, [("2007", "trainval")], VOC_CLASSES), transform)
    image, target = dataset[(1, size)]  # what a multi-scale batch sampler yields
    assert image.shape == (3, size, size)
    assert target["boxes"].canvas_size == (size, size)
    transform.size = size
    assert dataset[0][0].shape == (3, size, size)


# ---------------------------------------------------------------------------------------------------
# Transforms
# ---------------------------------------------------------------------------------------------------


def _white_box_image(height: int, width: int, box: tuple[int, int, int, int]) -> tv_tensors.Image:
    """Dark uint8 image with the 0-based continuous box [x1, x2) x [y1, y2) white."""
    image = torch.full((3, height, width), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return tv_tensors.Image(image)


def _target(
    boxes: list[list[float]], canvas: tuple[int, int], labels: list[int], difficult: list[bool]
) -> dict[str, Any]:
    return {
        "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32), format="XYXY", canvas_size=canvas),
        "labels": torch.tensor(labels),
        "difficult": torch.tensor(difficult),
        "image_id": "x",
        "orig_size": canvas,
    }  # fmt: skip


def _bright_extent(image: torch.Tensor, near: list[float] | None = None) -> list[int]:
    """The 0-based continuous box of the bright pixels, optionally only within 3 px of `near`."""
    x0, y0 = (max(0, int(near[0]) - 3), max(0, int(near[1]) - 3)) if near else (0, 0)
    x1, y1 = (int(near[2]) + 3, int(near[3]) + 3) if near else image.shape[:0:-1]
    ys, xs = torch.nonzero(image[:, y0:y1, x0:x1].mean(0) > 0.6, as_tuple=True)
    return [int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max()) + 1 + x0, int(ys.max()) + 1 + y0]


def test_flip_mirrors_box_exactly() -> None:
    box = (5, 10, 25, 30)
    identity = {"jitter": 0.0, "hue": 0.0, "saturation": 1.0, "exposure": 1.0}
    transform = DarknetAugment(64, **identity)
    seen = set()
    for seed in range(12):
        torch.manual_seed(seed)
        image, target = transform(
            _white_box_image(64, 64, box), _target([list(box)], (64, 64), [3], [False])
        )
        out_box = target["boxes"][0].tolist()
        assert out_box in ([5, 10, 25, 30], [39, 10, 59, 30])  # 64 - 25 = 39, 64 - 5 = 59
        assert _bright_extent(image) == out_box
        seen.add(out_box[0])
    assert seen == {5, 39}


def test_jitter_keeps_boxes_on_the_object_and_labels_aligned() -> None:
    # Object 0 (label 7) hugs the left edge, so a strong jitter often crops it away; object 1
    # (label 3, difficult) stays. Labels and difficult flags must follow their boxes.
    boxes = [[0, 20, 6, 40], [50, 30, 80, 60]]
    transform = DarknetAugment(96, jitter=0.45, hue=0.0, saturation=1.0, exposure=1.0)
    dropped = 0
    for seed in range(20):
        torch.manual_seed(seed)
        image = _white_box_image(80, 120, (50, 30, 80, 60))
        image[:, 20:40, 0:6] = 255
        out, target = transform(image, _target(boxes, (80, 120), [7, 3], [False, True]))
        assert out.shape == (3, 96, 96)
        labels = target["labels"].tolist()
        assert labels in ([7, 3], [3])
        assert target["difficult"].tolist() == [False, True][-len(labels) :]
        big = target["boxes"][-1].tolist()
        assert _bright_extent(out, near=big) == pytest.approx(big, abs=1.5)
        dropped += len(labels) == 1
    assert 0 < dropped < 20


@pytest.mark.parametrize(
    ("hue", "saturation", "exposure"),
    [(0.1, 1.0, 1.0), (-0.25, 1.0, 1.0), (0.0, 1.5, 1.0), (0.0, 0.5, 1.0), (0.0, 1.0, 0.7), (0.05, 1.3, 1.4)],
)  # fmt: skip
def test_distort_hsv_matches_darknet_hsv_arithmetic(
    hue: float, saturation: float, exposure: float
) -> None:
    pixels = [(0.2, 0.4, 0.6), (0.9, 0.1, 0.3), (0.5, 0.5, 0.5), (0.05, 0.8, 0.2)]
    image = torch.tensor(pixels).T.reshape(3, 1, 4)
    out = distort_hsv(image, hue, saturation, exposure).reshape(3, 4).T
    for got, rgb in zip(out.tolist(), pixels, strict=True):
        h, s, v = colorsys.rgb_to_hsv(*rgb)
        want = colorsys.hsv_to_rgb((h + hue) % 1.0, s * saturation, v * exposure)
        assert got == pytest.approx([min(max(c, 0.0), 1.0) for c in want], abs=1e-5)


# The transforms as first written: pad the whole image, crop, resize, then an HSV round trip. Slow
# (the reason they were rewritten) but plainly darknet's steps; the fast ones must agree with them.
_REFERENCE_SANITIZE = v2.SanitizeBoundingBoxes(
    min_size=1.0, labels_getter=lambda sample: (sample[1]["labels"], sample[1]["difficult"])
)


def _reference_distort(
    image: torch.Tensor, hue: float, saturation: float, exposure: float
) -> torch.Tensor:
    image = F.adjust_hue(image, hue) if hue != 0 else image
    top = image.max(dim=-3, keepdim=True).values
    return ((top + saturation * (image - top)) * exposure).clamp(0, 1)


def _reference_augment(
    image: tv_tensors.Image,
    target: dict[str, Any],
    side: int,
    *,
    jitter: float,
    hue: float,
    s: float,
) -> tuple[torch.Tensor, dict[str, Any]]:
    """darknet's load_data_region with the same draws, in the same order, as DarknetAugment."""
    height, width = image.shape[-2:]
    dw, dh = int(width * jitter), int(height * jitter)
    left, right = (int(v) for v in torch.randint(-dw, dw + 1, (2,)))
    top, bottom = (int(v) for v in torch.randint(-dh, dh + 1, (2,)))
    crop_w, crop_h = width - left - right, height - top - bottom
    pad = [max(0, -left), max(0, -top), max(0, -right), max(0, -bottom)]
    padded = F.pad(image, pad, padding_mode="edge")
    image = F.crop(padded, max(0, top), max(0, left), crop_h, crop_w)
    boxes = F.crop(target["boxes"], top, left, crop_h, crop_w)
    image, boxes = F.resize(image, [side, side]), F.resize(boxes, [side, side])
    image = F.to_dtype(image, torch.float32, scale=True)
    if torch.rand(()).item() < 0.5:
        image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
    dhue = hue * (2 * torch.rand(()).item() - 1)
    scales = []
    for _ in range(2):  # darknet's rand_scale for saturation, then exposure
        scale = 1 + (s - 1) * torch.rand(()).item()
        scales.append(scale if torch.rand(()).item() < 0.5 else 1 / scale)
    image = _reference_distort(image, dhue, *scales)
    boxes = F.clamp_bounding_boxes(boxes)
    out: tuple[torch.Tensor, dict[str, Any]] = _REFERENCE_SANITIZE(
        (image, {**target, "boxes": boxes})
    )
    return out


def _photo(height: int, width: int, seed: int, channels_last: bool = True) -> tv_tensors.Image:
    """A uint8 image with gradients, flat patches, greys and noise, laid out as `load_image` does."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([xx / width * 255, yy / height * 255, (xx + yy) % 97 * 2.6], axis=-1)
    pixels += rng.normal(0, 12, pixels.shape)
    pixels[: height // 3, : width // 4] = rng.integers(0, 256, 3)  # a flat colour: equal channels
    pixels[height // 2 :, width // 2 :, :] = pixels[height // 2 :, width // 2 :, :1]  # greys
    hwc = torch.from_numpy(np.clip(pixels, 0, 255).astype(np.uint8))
    return tv_tensors.Image(
        hwc.permute(2, 0, 1) if channels_last else hwc.permute(2, 0, 1).contiguous()
    )


@pytest.mark.parametrize("channels_last", [True, False])
def test_darknet_augment_matches_the_full_pad_reference(channels_last: bool) -> None:
    boxes = [[0, 20, 6, 40], [50, 30, 80, 60], [100, 2, 150, 90], [3, 60, 149, 99]]
    settings = {"jitter": 0.3, "hue": 0.5, "saturation": 1.5, "exposure": 1.5}
    transform = DarknetAugment(96, **settings)
    kept = 0
    for seed in range(24):
        image = _photo(100, 150, seed, channels_last)
        target = _target(boxes, (100, 150), [1, 2, 3, 4], [False, True, False, False])
        torch.manual_seed(seed)
        got, got_target = transform(image, target)
        torch.manual_seed(seed)
        want, want_target = _reference_augment(image, target, 96, jitter=0.3, hue=0.5, s=1.5)
        torch.manual_seed(seed + 1000)  # a seeded call ignores torch's global generator
        seeded, seeded_target = transform(image, target, seed=seed)
        assert torch.equal(seeded, got)
        assert torch.equal(seeded_target["boxes"], got_target["boxes"])
        assert got.shape == (3, 96, 96)
        assert got.is_contiguous()
        assert type(got) is torch.Tensor
        # The same uint8 pixels resized; the closed-form HSV agrees with the round trip to float error.
        torch.testing.assert_close(got, want, atol=2e-5, rtol=0)
        for key in ("boxes", "labels", "difficult"):
            torch.testing.assert_close(got_target[key], want_target[key], atol=0, rtol=0)
        assert isinstance(got_target["boxes"], tv_tensors.BoundingBoxes)
        assert got_target["boxes"].canvas_size == (96, 96)
        kept += len(got_target["labels"])
    assert kept < 4 * 24  # some boxes were cropped away and dropped with their labels


WINDOWS = {
    "inside": (10, 20, 50, 60),
    "whole": (0, 0, 40, 70),
    "out left and top": (-7, -5, 30, 40),
    "out right and bottom": (25, 45, 30, 40),
    "out on all sides": (-9, -11, 60, 95),
    "a column out right": (0, 69, 40, 2),
}  # (top, left, height, width) in a 40 x 70 image


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
def test_crop_replicate_equals_padding_the_whole_image(
    window: tuple[int, int, int, int], channels_last: bool
) -> None:
    top, left, height, width = window
    image = _photo(40, 70, seed=1, channels_last=channels_last).as_subclass(torch.Tensor)
    pad = [max(0, -left), max(0, -top), max(0, left + width - 70), max(0, top + height - 40)]
    padded = F.pad(image, pad, padding_mode="edge")
    want = F.crop(padded, max(0, top), max(0, left), height, width)
    got = crop_replicate(image, top, left, height, width)
    assert torch.equal(got, want)
    # darknet's crop_image reads pixel (clamp(x), clamp(y)) of the original for every window pixel.
    rows = torch.arange(top, top + height).clamp(0, 39)
    cols = torch.arange(left, left + width).clamp(0, 69)
    assert torch.equal(got, image[:, rows][:, :, cols])


def test_distort_hsv_matches_colorsys_on_every_kind_of_pixel() -> None:
    # Random 8-bit pixels plus the awkward ones: greys, ties between the two largest channels,
    # primaries and secondaries, black and white; hue shifts up to half a turn either way.
    rng = np.random.default_rng(0)
    special = [(0, 0, 0), (255, 255, 255), (90, 90, 90), (255, 0, 0), (0, 255, 0), (0, 0, 255),
               (255, 255, 0), (0, 255, 255), (255, 0, 255), (200, 200, 10), (10, 200, 200),
               (200, 10, 200), (1, 0, 0)]  # fmt: skip
    pixels = np.concatenate([np.array(special), rng.integers(0, 256, (200, 3))]) / 255
    image = torch.tensor(pixels.T, dtype=torch.float32).reshape(3, 1, -1)
    for hue, saturation, exposure in [
        (0.5, 1, 1),
        (-0.5, 1, 1),
        (0.31, 1.5, 0.67),
        (-0.07, 0.6, 1.5),
    ]:
        got = distort_hsv(image.clone(), hue, saturation, exposure).reshape(3, -1).T
        for out, rgb in zip(got.tolist(), pixels.tolist(), strict=True):
            h, s, v = colorsys.rgb_to_hsv(*rgb)
            want = colorsys.hsv_to_rgb((h + hue) % 1.0, s * saturation, v * exposure)
            assert out == pytest.approx([min(max(c, 0.0), 1.0) for c in want], abs=2e-6)


def test_load_image_is_a_channels_last_view(devkit: Path) -> None:
    path = devkit / "VOC2007" / "JPEGImages" / "000005.jpg"
    image = load_image(path)
    assert image.shape == (3, 48, 64)
    assert image.dtype == torch.uint8
    assert image.stride() == (1, 64 * 3, 3)
    with Image.open(path) as pil:
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(pil.convert("RGB"))))


def test_eval_letterbox_pads_grey_and_maps_boxes_back() -> None:
    transform = EvalTransform(32, letterbox=True)
    target = _target([[8.0, 4.0, 40.0, 28.0]], (32, 64), [1], [False])
    image, out = transform(_white_box_image(32, 64, (8, 4, 40, 28)), target)
    assert image.shape == (3, 32, 32)
    # 64x32 becomes 32x16 with 8 grey rows above and below.
    assert torch.all(image[:, :8] == 0.5)
    assert torch.all(image[:, 24:] == 0.5)
    assert out["boxes"].tolist() == [[4.0, 10.0, 20.0, 22.0]]
    torch.testing.assert_close(
        transform.to_original(out["boxes"], (32, 64)), torch.tensor([[8.0, 4.0, 40.0, 28.0]])
    )


def test_eval_resize_maps_boxes_back() -> None:
    transform = EvalTransform(32)
    _, out = transform(
        _white_box_image(48, 64, (0, 0, 8, 8)),
        _target([[16.0, 12.0, 64.0, 48.0]], (48, 64), [1], [True]),
    )
    assert out["boxes"].tolist() == [[8.0, 8.0, 32.0, 32.0]]
    torch.testing.assert_close(
        transform.to_original(out["boxes"], (48, 64)), torch.tensor([[16.0, 12.0, 64.0, 48.0]])
    )


# ---------------------------------------------------------------------------------------------------
# Synthetic generator
# ---------------------------------------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_generator_is_deterministic_by_seed(tmp_path: Path) -> None:
    first = _files(make_synthetic_voc(tmp_path / "a", seed=3, **SMALL))
    second = _files(make_synthetic_voc(tmp_path / "b", seed=3, **SMALL))
    other = _files(make_synthetic_voc(tmp_path / "c", seed=4, **SMALL))
    assert len(first) == 8 * 2 + 4 + 1  # xml + jpeg per image, 4 set files, the marker
    assert first == second
    jpegs = [name for name in first if name.endswith(".jpg")]
    assert all(first[name] != other[name] for name in jpegs)


def test_generator_writes_a_valid_voc_tree(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "synthetic", num_trainval=40, num_test=10, workers=1)
    year = root / "VOC2007"
    train, val, trainval, test = (
        read_voc(root, [("2007", s)], SYNTHETIC_CLASSES)
        for s in ("train", "val", "trainval", "test")
    )
    assert (len(train), len(val), len(trainval), len(test)) == (20, 20, 40, 10)
    assert {a.image_id for a in train} | {a.image_id for a in val} == {a.image_id for a in trainval}
    assert [trainval[0].image_id, test[-1].image_id] == ["000001", "000050"]
    annotations = trainval + test
    for a in annotations:
        assert min(a.width, a.height) >= 160
        assert max(a.width, a.height) <= 320
        assert load_image(a.image_path).shape == (3, a.height, a.width)
        assert np.all(a.boxes[:, :2] >= 1)
        assert np.all(a.boxes[:, 2:] <= [a.width, a.height])
        assert np.all(a.boxes[:, 2:] >= a.boxes[:, :2])
    labels = np.concatenate([a.labels for a in annotations])
    difficult = np.concatenate([a.difficult for a in annotations])
    assert set(labels.tolist()) == set(range(len(SYNTHETIC_CLASSES)))
    assert 0 < difficult.mean() < 0.15
    xml = (year / "Annotations" / "000001.xml").read_text()
    for tag in (
        "<folder>VOC2007</folder>",
        "<filename>000001.jpg</filename>",
        "<depth>3</depth>",
        "<pose>",
        "<truncated>",
    ):
        assert tag in xml


def test_generator_reuses_a_finished_set_and_refuses_other_parameters(tmp_path: Path) -> None:
    root = make_synthetic_voc(tmp_path / "cache", **SMALL)
    sentinel = root / "VOC2007" / "JPEGImages" / "000001.jpg"
    stamp = sentinel.stat().st_mtime_ns
    assert make_synthetic_voc(tmp_path / "cache", **SMALL) == root
    assert sentinel.stat().st_mtime_ns == stamp  # returned from the cache, not drawn again
    with pytest.raises(InputError, match=r"cache/\.complete: .*other parameters \(clutter, seed\)"):
        make_synthetic_voc(tmp_path / "cache", seed=1, clutter=2, **SMALL)
    (tmp_path / "plain").mkdir()
    with pytest.raises(InputError, match=r"plain: exists but is not a finished synthetic data set"):
        make_synthetic_voc(tmp_path / "plain", **SMALL)


def test_generator_refuses_unknown_shape(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"synthetic classes \['dog'\] are not among"):
        make_synthetic_voc(tmp_path / "x", classes=["circle", "dog"], **SMALL)


def test_failed_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saves = []
    real_save = Image.Image.save

    def failing_save(self: Image.Image, *args: Any, **kwargs: Any) -> None:
        saves.append(1)
        if len(saves) > 3:
            raise OSError("No space left on device")
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        make_synthetic_voc(tmp_path / "synthetic", **SMALL)
    assert list(tmp_path.iterdir()) == []


def test_killed_generation_leaves_no_data_set(tmp_path: Path) -> None:
    root = tmp_path / "synthetic"
    code = f"from pathlib import Path; from yolov2.data import make_synthetic_voc; make_synthetic_voc(Path({str(root)!r}), workers=1)"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[2])
    try:
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".synthetic.partial-*/VOC2007/JPEGImages/000020.jpg")):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not root.exists()
    assert make_synthetic_voc(root, **SMALL) == root  # a later run is not blocked by the debris


def test_parallel_generation_gives_the_same_bytes(tmp_path: Path) -> None:
    sizes = {"num_trainval": 30, "num_test": 10, "image_size": 64}
    serial = make_synthetic_voc(tmp_path / "serial", workers=1, **sizes)
    parallel = make_synthetic_voc(tmp_path / "parallel", workers=2, **sizes)
    assert _files(serial) == _files(parallel)
