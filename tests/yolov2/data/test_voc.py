"""The VOCdevkit reader on real XML and JPEG files: splits, boxes, classes, and every bad input named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from tests.yolov2.conftest import WriteVocTree
from tests.yolov2.data.conftest import CAT, DOG, PERSON
from yolov2.data.voc import VOC_CLASSES, load_image, parse_voc_xml, read_voc
from yolov2.errors import InputError


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


def test_load_image_is_a_channels_last_view(devkit: Path) -> None:
    path = devkit / "VOC2007" / "JPEGImages" / "000005.jpg"
    image = load_image(path)
    assert image.shape == (3, 48, 64)
    assert image.dtype == torch.uint8
    assert image.stride() == (1, 64 * 3, 3)
    with Image.open(path) as pil:
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(pil.convert("RGB"))))
