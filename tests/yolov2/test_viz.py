"""Visualisations: boxes drawn where they belong, PNGs that round-trip, and compare()'s three figures."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolov2.boxes import ImageDetections
from yolov2.errors import InputError
from yolov2.model import YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc
from yolov2.prune import prune_filters, prune_weights
from yolov2.viz import class_color, compare, draw_detections, save_png

CLASSES = ("cat", "dog", "person")


def _grey(height: int = 64, width: int = 80) -> torch.Tensor:
    return torch.full((3, height, width), 128, dtype=torch.uint8)


def _detections(boxes: list[list[float]], labels: list[int]) -> ImageDetections:
    return ImageDetections(
        torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
        torch.full((len(labels),), 0.87),
        torch.tensor(labels, dtype=torch.int64),
    )


def test_draw_detections_outlines_box_in_class_colour_and_leaves_the_rest() -> None:
    image = _grey()
    drawn = draw_detections(image, _detections([[10, 12, 50, 40]], [1]), CLASSES)
    assert drawn.dtype == torch.uint8
    assert drawn.shape == image.shape
    assert tuple(drawn[:, 30, 10].tolist()) == class_color(1)  # left edge, below the label
    assert tuple(drawn[:, 40, 30].tolist()) == class_color(1)  # bottom edge
    assert drawn[:, 30, 30].tolist() == [128, 128, 128]  # inside: outline only, no fill
    assert drawn[:, 60, 75].tolist() == [128, 128, 128]  # far away
    label_area = drawn[:, 13:22, 12:48]
    assert (label_area != 128).any()  # the "dog 0.87" label
    assert image.eq(128).all()  # the input is not drawn on


def test_draw_detections_width_grows_with_the_image() -> None:
    small = draw_detections(_grey(64, 80), _detections([[10, 12, 50, 40]], [0]), CLASSES)
    big = draw_detections(_grey(640, 800), _detections([[100, 120, 500, 400]], [0]), CLASSES)
    small_width = int((small[:, 30, :] != 128).any(0)[:20].sum())
    big_width = int((big[:, 300, :] != 128).any(0)[:200].sum())
    assert small_width == 1
    assert big_width >= 4


def test_draw_detections_without_boxes_returns_a_copy() -> None:
    image = _grey()
    drawn = draw_detections(image, _detections([], []), CLASSES)
    assert torch.equal(drawn, image)
    assert drawn.data_ptr() != image.data_ptr()


def test_class_colours_are_stable_and_distinct() -> None:
    # Golden-ratio hues at saturation 0.85, value 0.95, worked out by hand: hue 0 is pure red,
    # hue 0.618 (sector 3: p, q, v) and hue 0.236 (sector 1: q, v, p). The same in every process.
    assert class_color(0) == (242, 36, 36)  # v = 0.95 * 255, p = 0.95 * 0.15 * 255
    assert class_color(1) == (36, 96, 242)
    assert class_color(2) == (157, 242, 36)
    colours = [class_color(label) for label in range(20)]
    assert len(set(colours)) == 20


def test_unknown_label_is_drawn_by_number() -> None:
    drawn = draw_detections(_grey(), _detections([[5, 5, 70, 60]], [7]), CLASSES)
    assert tuple(drawn[:, 30, 5].tolist()) == class_color(7)


def test_save_png_round_trip(tmp_path: Path) -> None:
    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    path = save_png(image, tmp_path / "sub" / "out.png")
    assert path == tmp_path / "sub" / "out.png"
    with Image.open(path) as png:
        assert png.format == "PNG"
        read = torch.from_numpy(np.array(png.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(read, image)
    assert [p.name for p in path.parent.iterdir()] == ["out.png"]  # no temporary left behind


# --- compare -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense() -> YOLOv2:
    torch.manual_seed(0)
    return build_model(yolov2_voc(num_classes=3, width=0.125, input_size=(64, 64))).eval()


@pytest.fixture
def images(tmp_path: Path) -> list[Path]:
    paths = []
    for number, (height, width) in enumerate([(120, 160), (48, 64), (150, 100)]):
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        picture = torch.stack([xx * 255 // width, yy * 255 // height, (xx * yy) % 256])
        path = tmp_path / "images" / f"{number:06d}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(picture.permute(1, 2, 0).to(torch.uint8).numpy()).save(path, "JPEG")
        paths.append(path)
    return paths


def _numel(model: YOLOv2, number: int) -> int:
    return model.conv_blocks()[number].conv.weight.numel()


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as png:
        png.load()  # decodes the whole file: a truncated PNG fails here
        return png.size


def test_compare_filter_pruned_writes_three_figures(
    dense: YOLOv2, images: list[Path], tmp_path: Path
) -> None:
    pruned = prune_filters(dense, [0.5])
    files = compare(dense, pruned, images, tmp_path / "out", CLASSES, conf_thresh=0.01)
    removed = [1 - _numel(pruned, n) / _numel(dense, n) for n in range(22)]
    most = [n for n in range(22) if removed[n] > max(removed) - 0.005]
    assert len(most) > 1  # uniform ratios tie: the largest of the tied convs is shown
    biggest = max(most, key=lambda n: _numel(dense, n))
    assert [f.name for f in files] == ["boxes.png", f"weights_{biggest}.png", "layers.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f.name for f in files)
    for path in files:
        width, height = _png_size(path)
        assert width > 600, path.name
        assert height > 300, path.name
        assert path.stat().st_size > 20_000, path.name
    assert _png_size(files[0])[1] > 1000  # three image rows


def test_compare_weight_pruned_and_chosen_layer(
    dense: YOLOv2, images: list[Path], tmp_path: Path
) -> None:
    pruned = copy.deepcopy(dense)
    prune_weights(pruned, [0.6])
    files = compare(dense, pruned, images, tmp_path, CLASSES, layer=3)
    assert [f.name for f in files] == ["boxes.png", "weights_3.png", "layers.png"]
    for path in files:
        assert _png_size(path)[0] > 600
        assert path.stat().st_size > 20_000


@pytest.mark.parametrize("layer", [22, -1])
def test_compare_refuses_a_layer_that_is_not_prunable(
    dense: YOLOv2, images: list[Path], tmp_path: Path, layer: int
) -> None:
    with pytest.raises(InputError, match=r"prunable convolutions are 0\.\.21"):
        compare(dense, dense, images, tmp_path, CLASSES, layer=layer)
    assert not any(tmp_path.glob("*.png"))


def test_compare_refuses_no_images_too_many_images_and_unrelated_models(
    dense: YOLOv2, images: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="compare draws 1 to 5 images, got 0"):
        compare(dense, dense, [], tmp_path, CLASSES)
    with pytest.raises(InputError, match="compare draws 1 to 5 images, got 6"):
        compare(dense, dense, images * 2, tmp_path, CLASSES)  # not the first 5 of them, silently
    assert not any(tmp_path.glob("*.png"))
    tiny = build_model(yolov2_tiny_voc(num_classes=3, width=0.125, input_size=(64, 64)))
    with pytest.raises(InputError, match="not a pruned copy"):
        compare(dense, tiny, images, tmp_path, CLASSES)
