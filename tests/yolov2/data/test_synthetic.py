"""The synthetic generator: a valid VOC tree, the same bytes by seed, and nothing left by a failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from yolov2.data.synthetic import SYNTHETIC_CLASSES, make_synthetic_voc
from yolov2.data.voc import load_image, read_voc
from yolov2.errors import InputError

SMALL = {"num_trainval": 6, "num_test": 2, "workers": 1}


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
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parents[3])
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


def test_num_val_holds_out_the_last_trainval_images_as_val(tmp_path: Path) -> None:
    root = make_synthetic_voc(
        tmp_path / "synthetic", num_trainval=12, num_val=4, num_test=2, workers=1
    )
    train, val, trainval, test = (
        [a.image_id for a in read_voc(root, [("2007", s)], SYNTHETIC_CLASSES)]
        for s in ("train", "val", "trainval", "test")
    )
    assert train == [f"{i:06d}" for i in range(1, 9)]
    assert val == [f"{i:06d}" for i in range(9, 13)]
    assert trainval == train + val
    assert test == ["000013", "000014"]
    # The images are drawn from their index: those of train are a smaller set's trainval.
    smaller = make_synthetic_voc(tmp_path / "smaller", num_trainval=8, num_test=2, workers=1)
    for image_id in train:
        jpeg = Path("VOC2007", "JPEGImages", f"{image_id}.jpg")
        assert (root / jpeg).read_bytes() == (smaller / jpeg).read_bytes()


def test_num_val_leaves_some_train_images(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="num_val 4 must be in"):
        make_synthetic_voc(tmp_path / "s", num_trainval=4, num_val=4, num_test=1, workers=1)
