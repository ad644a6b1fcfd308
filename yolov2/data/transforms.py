"""Transforms of an image and its target: darknet's training augmentation and the eval resize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

Target = dict[str, Any]


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


def to_float(image: Tensor) -> Tensor:
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
    size x size, flipped left-right half of the time, and distorted in HSV. With `letterbox` the
    jittered window is letterboxed instead, as EvalTransform letterboxes a whole image: resized to
    fit with its aspect kept, then (after the flip and the colour, so the padding stays the grey the
    model sees at evaluation) centred on 0.5 grey. Every draw comes from the `seed` the caller
    passes (the batch sampler's `sample_seed`), so a sample is augmented the same way whichever
    worker draws it; without one, from torch's global generator.

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
        letterbox: bool = False,
    ) -> None:
        if not 0 <= jitter < 0.5:
            raise ValueError(f"jitter must be in [0, 0.5), got {jitter}")
        self.size = size
        self.jitter, self.hue, self.flip = jitter, hue, flip
        self.saturation, self.exposure = saturation, exposure
        self.letterbox = letterbox

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
        scaled = letterbox_size((height, width), side) if self.letterbox else [side, side]
        pixels = F.resize(crop_replicate(pixels, top, left, height, width), scaled)
        boxes = F.resize(F.crop(target["boxes"], top, left, height, width), scaled)
        if self.flip and torch.rand((), generator=rng).item() < 0.5:
            pixels, boxes = F.horizontal_flip(pixels), F.horizontal_flip(boxes)
        dhue = self.hue * (2 * torch.rand((), generator=rng).item() - 1)
        colour = _rand_scale(self.saturation, rng), _rand_scale(self.exposure, rng)
        image = distort_hsv(to_float(pixels), dhue, *colour)
        if self.letterbox:
            pad = letterbox_padding(scaled, side)
            image, boxes = F.pad(image, pad, fill=0.5), F.pad(boxes, pad)
        return image, _sanitize({**target, "boxes": boxes})

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
        image = to_float(F.resize(_plain(image), scaled))
        boxes = F.resize(target["boxes"], scaled)
        if self.letterbox:
            pad = letterbox_padding(scaled, side)
            image, boxes = F.pad(image, pad, fill=0.5), F.pad(boxes, pad)
        # No sanitizing: evaluation targets must stay one to one with the annotation's objects.
        return image, {**target, "boxes": boxes}

    def to_original(
        self, boxes: Tensor, orig_size: tuple[int, int], size: int | None = None
    ) -> Tensor:
        """Map (N, 4) XYXY boxes in network-input pixels back to the original image's pixels."""
        side = size or self.size
        scaled_h, scaled_w = self._scaled_size(orig_size, side)
        left, top = letterbox_padding([scaled_h, scaled_w], side)[:2] if self.letterbox else (0, 0)
        offset = boxes.new_tensor([left, top, left, top])
        scale = boxes.new_tensor([orig_size[1] / scaled_w, orig_size[0] / scaled_h] * 2)
        return (boxes - offset) * scale

    def _scaled_size(self, hw: Sequence[int], side: int) -> list[int]:
        return letterbox_size(hw, side) if self.letterbox else [side, side]


def letterbox_size(hw: Sequence[int], side: int) -> list[int]:
    """[height, width] of an image of size `hw` fitted into side x side with its aspect kept."""
    scale = side / max(hw)
    return [max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))]


def letterbox_padding(scaled: Sequence[int], side: int) -> list[int]:
    """[left, top, right, bottom] padding that centres a [height, width] image in side x side."""
    left, top = (side - scaled[1]) // 2, (side - scaled[0]) // 2
    return [left, top, side - scaled[1] - left, side - scaled[0] - top]
