"""The detection dataset and its collate: targets in 0-based pixels, sizes per item, worker batches."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from tests.yolov2.conftest import WriteVocTree
from tests.yolov2.data.conftest import CAT, DOG, make_target
from yolov2.data.dataset import VOCDetection, collate_detections
from yolov2.data.transforms import DarknetAugment, EvalTransform
from yolov2.data.voc import VOC_CLASSES, load_image, read_voc
from yolov2.errors import InputError


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
        target = make_target(boxes, canvas, list(range(n)), [i % 2 == 1 for i in range(n)])
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
