"""The content hash of a VOCdevkit tree on real files: what changes it, what does not, its cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.yolov2.conftest import WriteVocTree
from yolov2.data.fingerprint import FINGERPRINT_CACHE, voc_fingerprint
from yolov2.data.voc import VOC_CLASSES, read_voc
from yolov2.errors import InputError

SETS = [("2007", "trainval"), ("2012", "trainval")]
HOUR_NS = 3600 * 10**9


def _age(root: Path) -> None:
    """Date every file of the tree an hour back, as a data set downloaded long ago is."""
    for path in root.rglob("*"):
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns - HOUR_NS, stat.st_mtime_ns - HOUR_NS))


def _annotation(devkit: Path) -> Path:
    return devkit / "VOC2007" / "Annotations" / "000005.xml"


def test_the_same_content_anywhere_is_the_same_fingerprint(devkit: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(devkit, tmp_path / "elsewhere" / "VOCdevkit")
    key = voc_fingerprint(devkit, SETS)
    assert len(key) == 16
    int(key, 16)
    assert voc_fingerprint(copy, SETS) == key
    assert voc_fingerprint(copy, SETS, tmp_path / "cache") == key  # cold cache, then warm
    assert voc_fingerprint(copy, SETS, tmp_path / "cache") == key


@pytest.mark.parametrize(
    "edit",
    [
        "an object's box",
        "an image's size",
        "an image set's list",
        "an image set's order",
        "the sets used",
    ],
)
def test_what_the_data_is_changes_the_fingerprint(devkit: Path, tmp_path: Path, edit: str) -> None:
    cache = tmp_path / "cache"
    before = voc_fingerprint(devkit, SETS, cache)
    sets = SETS
    trainval = devkit / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    if edit == "an object's box":
        xml = _annotation(devkit)
        xml.write_text(xml.read_text().replace("<xmax>10</xmax>", "<xmax>11</xmax>"))
    elif edit == "an image's size":
        image = devkit / "VOC2007" / "JPEGImages" / "000007.jpg"
        image.write_bytes(image.read_bytes() + b"\0")
    elif edit == "an image set's list":
        trainval.write_text("000005\n")
    elif edit == "an image set's order":
        trainval.write_text("000007\n000005\n")
    else:
        sets = SETS[:1]
    assert voc_fingerprint(devkit, sets, cache) != before
    assert voc_fingerprint(devkit, sets) == voc_fingerprint(devkit, sets, cache)


def test_an_unchanged_tree_is_not_read_again(devkit: Path, tmp_path: Path) -> None:
    """The second call takes every annotation's digest from the cache while its size and mtime
    are those recorded: an edit that keeps both (here forced back by hand) is not seen there,
    and is seen without the cache."""
    cache = tmp_path / "cache"
    _age(devkit)
    before = voc_fingerprint(devkit, SETS, cache)
    (store,) = (cache / FINGERPRINT_CACHE).iterdir()
    assert [p.name for p in store.parent.iterdir()] == [store.name]  # no temporary file left
    xml = _annotation(devkit)
    stat = xml.stat()
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>cat</name>"))
    os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert xml.stat().st_size == stat.st_size
    assert voc_fingerprint(devkit, SETS, cache) == before  # from the cache
    assert voc_fingerprint(devkit, SETS) != before  # read


def test_a_file_changed_just_before_a_scan_is_read_again(devkit: Path, tmp_path: Path) -> None:
    """A file written moments ago may be written again within the same mtime tick, at the same
    size: its digest is not kept, so an edit then is seen at once."""
    cache = tmp_path / "cache"
    _age(devkit)
    xml = _annotation(devkit)
    xml.write_text(xml.read_text().replace("<name>dog</name>", "<name>cow</name>"))
    first = voc_fingerprint(devkit, SETS, cache)
    stat = xml.stat()
    xml.write_text(xml.read_text().replace("<name>cow</name>", "<name>cat</name>"))
    os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the same tick, the same size
    assert voc_fingerprint(devkit, SETS, cache) != first


def test_an_unreadable_cache_is_measured_again(devkit: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _age(devkit)
    key = voc_fingerprint(devkit, SETS, cache)
    (store,) = (cache / FINGERPRINT_CACHE).iterdir()
    store.write_text("{not json")
    assert voc_fingerprint(devkit, SETS, cache) == key
    assert voc_fingerprint(devkit, SETS, cache) == key  # rewritten whole
    assert store.read_text().startswith('{"root":')


BAD_TREES: dict[str, tuple[dict[str, Any], str]] = {
    "missing xml": ({"id": "000001", "no_xml": True}, r"000001\.xml: annotation file not found"),
    "unreadable xml": ({"id": "000001", "no_xml": True, "xml_folder": True},
                       r"000001\.xml: cannot read the annotation file \(Is a directory\)"),
    "missing jpeg": ({"id": "000001", "no_jpeg": True}, r"000001\.jpg: image not found"),
}  # fmt: skip


@pytest.mark.parametrize(("image", "message"), BAD_TREES.values(), ids=BAD_TREES.keys())
def test_a_bad_tree_is_the_loaders_error(
    tmp_path: Path, write_voc_tree: WriteVocTree, image: dict[str, Any], message: str
) -> None:
    root = write_voc_tree(tmp_path / "VOCdevkit", "2007", "trainval", [image])
    if image.get("xml_folder"):
        (root / "VOC2007" / "Annotations" / "000001.xml").mkdir()
    for read in (
        lambda: voc_fingerprint(root, [("2007", "trainval")], tmp_path / "cache"),
        lambda: read_voc(root, [("2007", "trainval")], VOC_CLASSES),
    ):
        with pytest.raises(InputError, match=message) as raised:
            read()
        assert str(root) in str(raised.value)
        assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("folder", "sets", "message"),
    [
        ("nowhere", SETS, r"nowhere: VOCdevkit folder not found"),
        ("VOCdevkit", [("2010", "trainval")], r"VOC2010: VOC2010 folder not found"),
        ("VOCdevkit", [("2007", "test")], r"VOC2007/ImageSets/Main/test\.txt: image set file not"),
    ],
)
def test_a_missing_folder_or_list_is_the_loaders_error(
    devkit: Path, folder: str, sets: list[tuple[str, str]], message: str
) -> None:
    for read in (voc_fingerprint, read_voc):
        with pytest.raises(InputError, match=message):
            read(devkit.parent / folder, sets)
