"""YOLOv2 built from data: a list of darknet layers whose convolution widths pruning may change.

The architecture is a plain, JSON-serialisable value (`Architecture`): darknet's layer list (conv,
maxpool, route, reorg) plus classes and anchors. Building, pruning, checkpoints and darknet export all
read it, so a pruned network is just an architecture with other widths.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from yolov2.errors import InputError

# Anchors of darknet's cfg/yolov2-voc.cfg and cfg/yolov2-tiny-voc.cfg, (w, h) in grid cells at stride 32.
VOC_ANCHORS: tuple[tuple[float, float], ...] = (
    (1.3221, 1.73145),
    (3.19275, 4.00944),
    (5.05587, 8.09892),
    (9.47112, 4.84053),
    (11.2364, 10.0071),
)
TINY_VOC_ANCHORS: tuple[tuple[float, float], ...] = (
    (1.08, 1.19),
    (3.42, 4.41),
    (6.63, 11.38),
    (9.42, 5.11),
    (16.62, 10.52),
)
LEAKY_SLOPE = 0.1
# Darknet normalises by sqrt(var) + 1e-6; OpenCV's importer uses sqrt(var + 1e-6). The latter is what
# BatchNorm2d computes, and the two agree to float precision for any variance a trained network has.
BN_EPS = 1e-6


@dataclass(frozen=True)
class Conv:
    filters: int
    size: int = 3
    stride: int = 1
    batch_norm: bool = True
    activation: Literal["leaky", "linear"] = "leaky"


@dataclass(frozen=True)
class MaxPool:
    size: int = 2
    stride: int = 2


@dataclass(frozen=True)
class Route:
    layers: tuple[int, ...]  # absolute indices of earlier layers, concatenated along channels


@dataclass(frozen=True)
class Reorg:
    stride: int = 2


Layer = Conv | MaxPool | Route | Reorg
_LAYER_TYPES: dict[str, type[Layer]] = {
    "conv": Conv,
    "maxpool": MaxPool,
    "route": Route,
    "reorg": Reorg,
}


@dataclass(frozen=True)
class Architecture:
    """Darknet's layer list of a YOLOv2-family detector; the last layer is the linear head conv."""

    layers: tuple[Layer, ...]
    num_classes: int
    anchors: tuple[tuple[float, float], ...]
    input_size: tuple[int, int] = (416, 416)  # (height, width) the network is meant to run at
    channels: int = 3

    def __post_init__(self) -> None:
        validate(self)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors)

    @property
    def head_filters(self) -> int:
        return self.num_anchors * (5 + self.num_classes)

    @property
    def conv_indices(self) -> list[int]:
        return [i for i, layer in enumerate(self.layers) if isinstance(layer, Conv)]

    @property
    def widths(self) -> list[int]:
        """Every convolution's number of filters, in order; the last one is the head."""
        return [layer.filters for layer in self.layers if isinstance(layer, Conv)]

    def with_widths(self, widths: Sequence[int]) -> Architecture:
        """The same graph with other convolution widths (the head's must stay as it is)."""
        convs = self.conv_indices
        if len(widths) != len(convs):
            raise InputError(f"expected {len(convs)} convolution widths, got {len(widths)}")
        layers = list(self.layers)
        for index, filters in zip(convs, widths, strict=True):
            conv = layers[index]
            assert isinstance(conv, Conv)
            layers[index] = dataclasses.replace(conv, filters=int(filters))
        return dataclasses.replace(self, layers=tuple(layers))

    def out_channels(self) -> list[int]:
        """Channels of every layer's output, following routes and reorgs."""
        channels: list[int] = []
        for layer in self.layers:
            channels = _channels_step(channels, layer, self.channels)
        return channels

    def in_channels(self) -> list[int]:
        """Channels entering every layer (for a route: the channels it concatenates)."""
        out = self.out_channels()
        return [self.channels, *out[:-1]]

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for layer in self.layers:
            kind = next(k for k, t in _LAYER_TYPES.items() if isinstance(layer, t))
            layers.append({"type": kind, **dataclasses.asdict(layer)})
        return {
            "layers": layers,
            "num_classes": self.num_classes,
            "anchors": [list(a) for a in self.anchors],
            "input_size": list(self.input_size),
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        try:
            layers: list[Layer] = []
            for item in data["layers"]:
                fields = {k: v for k, v in item.items() if k != "type"}
                if item["type"] == "route":
                    fields["layers"] = tuple(fields["layers"])
                layers.append(_LAYER_TYPES[item["type"]](**fields))
            return cls(
                layers=tuple(layers),
                num_classes=int(data["num_classes"]),
                anchors=tuple((float(w), float(h)) for w, h in data["anchors"]),
                input_size=(int(data["input_size"][0]), int(data["input_size"][1])),
                channels=int(data.get("channels", 3)),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"malformed architecture description: {error!r}") from None


def validate(arch: Architecture) -> None:
    """Refuse graphs that cannot run: bad routes, reorg widths, or a head that does not fit."""
    if not arch.layers or not isinstance(arch.layers[-1], Conv):
        raise InputError("the last layer must be the head convolution")
    if arch.num_classes < 1 or not arch.anchors:
        raise InputError("an architecture needs at least one class and one anchor")
    head = arch.layers[-1]
    if head.filters != arch.head_filters or head.batch_norm or head.activation != "linear":
        raise InputError(
            f"the head must be a linear conv with {arch.num_anchors}*(5+{arch.num_classes})="
            f"{arch.head_filters} filters and a bias, got {head}"
        )
    channels: list[int] = []
    for index, layer in enumerate(arch.layers):
        if isinstance(layer, Conv) and (layer.filters < 1 or layer.size < 1 or layer.stride < 1):
            raise InputError(f"layer {index}: convolution needs positive filters, size, stride")
        if isinstance(layer, Route) and (
            not layer.layers or any(not 0 <= i < index for i in layer.layers)
        ):
            raise InputError(f"layer {index}: route {list(layer.layers)} must name earlier layers")
        previous = channels[-1] if channels else arch.channels
        if isinstance(layer, Reorg) and previous % layer.stride**2:
            raise InputError(
                f"layer {index}: reorg of {previous} channels needs a multiple of {layer.stride**2}"
            )
        channels = _channels_step(channels, layer, arch.channels)
    for h_or_w in arch.input_size:
        if h_or_w <= 0 or h_or_w % 32:
            raise InputError(f"input size {arch.input_size} must be positive multiples of 32")


def _channels_step(channels: list[int], layer: Layer, input_channels: int) -> list[int]:
    previous = channels[-1] if channels else input_channels
    if isinstance(layer, Conv):
        return [*channels, layer.filters]
    if isinstance(layer, MaxPool):
        return [*channels, previous]
    if isinstance(layer, Route):
        return [*channels, sum(channels[i] for i in layer.layers)]
    return [*channels, previous * layer.stride**2]


def _scaled(filters: int, width: float) -> int:
    """Width-multiplied filter count, a multiple of 8 and at least 8 (channel-friendly for SIMD)."""
    return max(8, round(filters * width / 8) * 8)


def yolov2_voc(
    num_classes: int = 20,
    anchors: Sequence[tuple[float, float]] = VOC_ANCHORS,
    width: float = 1.0,
    input_size: tuple[int, int] = (416, 416),
) -> Architecture:
    """darknet's cfg/yolov2-voc.cfg: 23 convolutions, passthrough via route -9, conv 1x1, reorg 2."""
    f = [_scaled(n, width) for n in (32, 64, 128, 64, 128, 256, 128, 256, 512, 256, 512, 256, 512)]
    g = [_scaled(n, width) for n in (1024, 512, 1024, 512, 1024, 1024, 1024, 64, 1024)]
    layers: list[Layer] = [
        Conv(f[0]), MaxPool(),
        Conv(f[1]), MaxPool(),
        Conv(f[2]), Conv(f[3], 1), Conv(f[4]), MaxPool(),
        Conv(f[5]), Conv(f[6], 1), Conv(f[7]), MaxPool(),
        Conv(f[8]), Conv(f[9], 1), Conv(f[10]), Conv(f[11], 1), Conv(f[12]), MaxPool(),  # 12..17
        Conv(g[0]), Conv(g[1], 1), Conv(g[2]), Conv(g[3], 1), Conv(g[4]),  # 18..22
        Conv(g[5]), Conv(g[6]),  # 23, 24
        Route((16,)), Conv(g[7], 1), Reorg(2), Route((27, 24)),  # 25..28: the passthrough
        Conv(g[8]),
        Conv(len(anchors) * (5 + num_classes), 1, batch_norm=False, activation="linear"),
    ]  # fmt: skip
    return Architecture(tuple(layers), num_classes, tuple(anchors), input_size)


def yolov2_tiny_voc(
    num_classes: int = 20,
    anchors: Sequence[tuple[float, float]] = TINY_VOC_ANCHORS,
    width: float = 1.0,
    input_size: tuple[int, int] = (416, 416),
) -> Architecture:
    """darknet's cfg/yolov2-tiny-voc.cfg: 9 convolutions, the sixth pool has stride 1."""
    f = [_scaled(n, width) for n in (16, 32, 64, 128, 256, 512, 1024, 1024)]
    layers: list[Layer] = [
        Conv(f[0]), MaxPool(), Conv(f[1]), MaxPool(), Conv(f[2]), MaxPool(),
        Conv(f[3]), MaxPool(), Conv(f[4]), MaxPool(), Conv(f[5]), MaxPool(2, 1),
        Conv(f[6]), Conv(f[7]),
        Conv(len(anchors) * (5 + num_classes), 1, batch_norm=False, activation="linear"),
    ]  # fmt: skip
    return Architecture(tuple(layers), num_classes, tuple(anchors), input_size)


def reorg(x: Tensor, stride: int = 2) -> Tensor:
    """darknet's reorg layer, (B, C, H, W) -> (B, C*s*s, H/s, W/s).

    Darknet reads its input buffer as if it were (C/s², H*s, W*s) and gathers s×s blocks from that
    view, so it is not `pixel_unshuffle`: released weights give wrong detections with the latter.
    Input channels s²g .. s²g+s²-1 (a group) end up, mixed across pixels, in the s⁴ output channels
    k·C + s²g + r (k, r < s²), and no other input channel reaches those: filter pruning removes a
    passthrough conv's filters a whole group at a time.
    """
    b, c, h, w = x.shape
    s = stride
    x = x.reshape(b, c // (s * s), h, s, w, s)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(b, c * s * s, h // s, w // s)


class ConvBlock(nn.Module):
    """darknet's [convolutional]: conv (no bias when batch-normalised), BN, leaky 0.1 or linear."""

    def __init__(self, in_channels: int, spec: Conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            spec.filters,
            spec.size,
            spec.stride,
            spec.size // 2,
            bias=not spec.batch_norm,
        )
        self.bn = nn.BatchNorm2d(spec.filters, eps=BN_EPS) if spec.batch_norm else None
        self.leaky = spec.activation == "leaky"

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return F.leaky_relu(x, LEAKY_SLOPE, inplace=True) if self.leaky else x


class MaxPoolBlock(nn.Module):
    """darknet's [maxpool]: a stride-1 pool pads right and bottom so the size is kept (tiny's)."""

    def __init__(self, spec: MaxPool) -> None:
        super().__init__()
        self.size, self.stride = spec.size, spec.stride

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 1 and self.size > 1:
            # Replicating the edge is the same as darknet's skipped out-of-bounds cells for a max.
            x = F.pad(x, (0, self.size - 1, 0, self.size - 1), mode="replicate")
        return F.max_pool2d(x, self.size, self.stride)


class YOLOv2(nn.Module):
    """The detector. forward(images in [0, 1], (B, 3, H, W)) -> raw head (B, A*(5+C), H/32, W/32)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        in_channels = arch.in_channels()
        blocks: list[nn.Module] = []
        for layer, channels in zip(arch.layers, in_channels, strict=True):
            if isinstance(layer, Conv):
                blocks.append(ConvBlock(channels, layer))
            elif isinstance(layer, MaxPool):
                blocks.append(MaxPoolBlock(layer))
            else:
                blocks.append(nn.Identity())  # routes and reorg are wiring, done in forward
        self.layers = nn.ModuleList(blocks)
        self._kept = {i for layer in arch.layers if isinstance(layer, Route) for i in layer.layers}

    def forward(self, x: Tensor) -> Tensor:
        saved: dict[int, Tensor] = {}
        for index, (layer, block) in enumerate(zip(self.arch.layers, self.layers, strict=True)):
            if isinstance(layer, Route):
                parts = [saved[i] for i in layer.layers]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif isinstance(layer, Reorg):
                x = reorg(x, layer.stride)
            else:
                x = block(x)
            if index in self._kept:
                saved[index] = x
        return x

    def conv_blocks(self) -> list[ConvBlock]:
        """The convolution blocks in darknet order (the order of `.weights` and of `arch.widths`)."""
        return [b for b in self.layers if isinstance(b, ConvBlock)]


def build_model(arch: Architecture) -> YOLOv2:
    """A freshly initialised detector; the head's objectness bias starts low, as detectors train best."""
    model = YOLOv2(arch)
    for block in model.conv_blocks():
        nn.init.kaiming_normal_(block.conv.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
    head = model.conv_blocks()[-1].conv
    nn.init.normal_(head.weight, std=0.01)
    assert head.bias is not None
    bias = head.bias.detach().view(arch.num_anchors, 5 + arch.num_classes)
    bias.zero_()
    bias[:, 4] = -math.log((1 - 0.01) / 0.01)
    return model
