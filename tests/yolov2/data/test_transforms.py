"""darknet's augmentation and the eval transform, against darknet's arithmetic and plain references."""

from __future__ import annotations

import colorsys
from typing import Any

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from tests.yolov2.data.conftest import make_target
from yolov2.data.transforms import (
    DarknetAugment,
    EvalTransform,
    crop_replicate,
    distort_hsv,
    letterbox_padding,
    letterbox_size,
)


def _white_box_image(height: int, width: int, box: tuple[int, int, int, int]) -> tv_tensors.Image:
    """Dark uint8 image with the 0-based continuous box [x1, x2) x [y1, y2) white."""
    image = torch.full((3, height, width), 20, dtype=torch.uint8)
    x1, y1, x2, y2 = box
    image[:, y1:y2, x1:x2] = 255
    return tv_tensors.Image(image)


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
            _white_box_image(64, 64, box), make_target([list(box)], (64, 64), [3], [False])
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
        out, target = transform(image, make_target(boxes, (80, 120), [7, 3], [False, True]))
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
        target = make_target(boxes, (100, 150), [1, 2, 3, 4], [False, True, False, False])
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


def test_eval_letterbox_pads_grey_and_maps_boxes_back() -> None:
    transform = EvalTransform(32, letterbox=True)
    target = make_target([[8.0, 4.0, 40.0, 28.0]], (32, 64), [1], [False])
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
        make_target([[16.0, 12.0, 64.0, 48.0]], (48, 64), [1], [True]),
    )
    assert out["boxes"].tolist() == [[8.0, 8.0, 32.0, 32.0]]
    torch.testing.assert_close(
        transform.to_original(out["boxes"], (48, 64)), torch.tensor([[16.0, 12.0, 64.0, 48.0]])
    )


# --- letterbox: one transform for training, evaluation and prediction ---------------------------

IDENTITY = {"jitter": 0.0, "hue": 0.0, "saturation": 1.0, "exposure": 1.0, "flip": False}


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 40), (50, 50)])
def test_letterboxed_training_without_jitter_is_the_eval_letterbox(height: int, width: int) -> None:
    image = _photo(height, width, seed=2)
    target = make_target([[3.0, 5.0, 30.0, 40.0]], (height, width), [1], [False])
    trained, trained_target = DarknetAugment(32, letterbox=True, **IDENTITY)(image, target, seed=1)
    evaluated, eval_target = EvalTransform(32, letterbox=True)(image, target)
    assert trained.shape == evaluated.shape == (3, 32, 32)
    torch.testing.assert_close(trained, evaluated, atol=1e-6, rtol=0)  # HSV identity: float error
    assert torch.equal(trained_target["boxes"], eval_target["boxes"])
    pad_left, pad_top, *_ = letterbox_padding(letterbox_size((height, width), 32), 32)
    assert torch.all(trained[:, :pad_top] == 0.5)
    assert torch.all(trained[:, :, :pad_left] == 0.5)


def test_letterboxed_training_keeps_the_aspect_of_the_jittered_window() -> None:
    # A square object stays square however the window's aspect jitters, and the padding stays grey
    # through the colour distortion; without letterbox the same draws stretch it.
    box = (50, 30, 80, 60)
    settings = {"jitter": 0.3, "hue": 0.2, "saturation": 1.5, "exposure": 1.5}
    boxed, stretched = (
        DarknetAugment(96, letterbox=True, **settings),
        DarknetAugment(96, **settings),
    )
    aspects: list[float] = []
    for seed in range(12):
        image = _white_box_image(80, 120, box)
        target = make_target([list(box)], (80, 120), [3], [False])
        out, out_target = boxed(image, target, seed=seed)
        assert out.shape == (3, 96, 96)
        (x1, y1, x2, y2) = out_target["boxes"][0].tolist()
        assert x2 - x1 == pytest.approx(y2 - y1, abs=1.0)
        grey = (out == 0.5).all(dim=0)
        rows, cols = grey.all(dim=1), grey.all(dim=0)
        assert rows.any() or cols.any()  # letterboxed: a band of pure grey on two sides
        _, plain_target = stretched(image, target, seed=seed)
        (x1, y1, x2, y2) = plain_target["boxes"][0].tolist()
        aspects.append((x2 - x1) / (y2 - y1))
    assert max(abs(a - 1) for a in aspects) > 0.1  # the plain path does stretch it


def test_letterbox_is_off_unless_asked() -> None:
    assert DarknetAugment(32).letterbox is False
    assert EvalTransform(32).letterbox is False
