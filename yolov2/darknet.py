"""darknet's .cfg and .weights files, read and written for the YOLOv2 family.

Hand-written because no maintained Python reader of these formats exists (OpenCV 5 dropped its
importer, and darknet itself is C). The rules follow darknet's src/parser.c: layer indices in a
.cfg count every section after [net], routes may be relative, and a .weights file is a small header
followed by each convolution's floats in layer order. The [region] section is not a model layer
here: it must come last, and its loss options travel beside the `Architecture` as plain values.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from yolov2.errors import InputError
from yolov2.files import atomic_path, write_text_atomic
from yolov2.model import (
    BN_EPS,
    Architecture,
    Conv,
    ConvBlock,
    Layer,
    MaxPool,
    Reorg,
    Route,
    YOLOv2,
    build_model,
)

logger = logging.getLogger(__name__)

CfgValue = int | float | str
PathLike = str | os.PathLike[str]
_T = TypeVar("_T")

# [net] and [region] of darknet's cfg/yolov2-voc.cfg; width, height, channels, anchors, classes,
# num and coords come from the Architecture.
DEFAULT_NET: dict[str, CfgValue] = {
    "batch": 1,
    "subdivisions": 1,
    "momentum": 0.9,
    "decay": 0.0005,
    "angle": 0,
    "saturation": 1.5,
    "exposure": 1.5,
    "hue": 0.1,
    "learning_rate": 0.001,
    "burn_in": 1000,
    "max_batches": 80200,
    "policy": "steps",
    "steps": "40000,60000",
    "scales": ".1,.1",
}
DEFAULT_REGION: dict[str, CfgValue] = {
    "bias_match": 1,
    "softmax": 1,
    "jitter": 0.3,
    "rescore": 1,
    "object_scale": 5,
    "noobject_scale": 1,
    "class_scale": 1,
    "coord_scale": 1,
    "absolute": 1,
    "thresh": 0.6,
    "random": 1,
}
_NET_FROM_ARCH = ("width", "height", "channels")
_REGION_FROM_ARCH = ("anchors", "classes", "num", "coords")
_SECTION_NAMES = {
    "net": "net",
    "network": "net",
    "convolutional": "convolutional",
    "conv": "convolutional",
    "maxpool": "maxpool",
    "max": "maxpool",
    "route": "route",
    "reorg": "reorg",
    "region": "region",
}
# Options darknet reads that would change the computation; only their neutral value is accepted.
_NEUTRAL_CONV = {"groups": 1, "binary": 0, "xnor": 0, "flipped": 0, "dilation": 1}
_NEUTRAL_REORG = {"reverse": 0, "flatten": 0, "extra": 0}
_MAX_VERSION = 1000  # darknet reads major or minor above this as "transposed" (other networks)


# --------------------------------------------------------------------------------------------------
# .cfg


@dataclass
class _Section:
    """One [section] of a .cfg: its options with their line numbers, and which ones were read."""

    path: Path
    name: str
    line: int
    index: int  # darknet's layer index: sections after [net] count from 0; [net] is -1
    options: dict[str, tuple[str, int]] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)

    def label(self, key: str | None = None) -> str:
        """Where the section is, as '<file>:<line>: layer <i> [<name>]' (the line of `key`)."""
        line = self.options[key][1] if key in self.options else self.line
        layer = f"layer {self.index} " if self.index >= 0 else ""
        return f"{self.path}:{line}: {layer}[{self.name}]"

    def error(self, problem: str, key: str | None = None) -> InputError:
        return InputError(f"{self.label(key)}: {problem}")

    def get(self, key: str, convert: Callable[[str], _T], default: _T | None = None) -> _T:
        self.read.add(key)
        if key not in self.options:
            if default is None:
                raise self.error(f"missing option '{key}'")
            return default
        text = self.options[key][0]
        try:
            return convert(text)
        except ValueError:
            raise self.error(f"option {key}={text} is not a valid value", key) from None

    def neutral(self, defaults: Mapping[str, int]) -> None:
        for key, neutral in defaults.items():
            if self.get(key, int, neutral) != neutral:
                raise self.error(f"option {key}={self.options[key][0]} is not supported", key)

    def unread(self) -> dict[str, CfgValue]:
        return {k: _value(v) for k, (v, _) in self.options.items() if k not in self.read}

    def refuse_unread(self) -> None:
        for key in self.options:
            if key not in self.read:
                raise self.error(f"unknown option '{key}'", key)


def _value(text: str) -> CfgValue:
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(item) for item in text.split(",") if item)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item)


def _read_sections(path: Path) -> list[_Section]:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise InputError(f"{path}: cannot read darknet cfg ({error.strerror})") from None
    sections: list[_Section] = []
    for number, raw in enumerate(lines, start=1):
        line = "".join(re.split(r"[#;]", raw, maxsplit=1)[0].split())  # darknet drops all spaces
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise InputError(f"{path}:{number}: malformed section header {raw.strip()!r}")
            sections.append(_Section(path, line[1:-1].lower(), number, len(sections) - 1))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            if not key or not value:
                raise InputError(f"{path}:{number}: expected key=value, got {raw.strip()!r}")
            sections[-1].options.setdefault(key.lower(), (value, number))  # darknet: first wins
        else:
            raise InputError(
                f"{path}:{number}: expected [section] or key=value, got {raw.strip()!r}"
            )
    if not sections or _SECTION_NAMES.get(sections[0].name) != "net":
        raise InputError(f"{path}: the first section must be [net]")
    return sections


def _parse_conv(section: _Section) -> Conv:
    filters = section.get("filters", int)
    size = section.get("size", int, 1)
    stride = section.get("stride", int, 1)
    padding = section.get("padding", int, 0)
    if section.get("pad", int, 0):  # darknet: pad=1 overrides padding with size/2
        padding = size // 2
    batch_norm = bool(section.get("batch_normalize", int, 0))
    activation = section.get("activation", str, "logistic")
    section.neutral(_NEUTRAL_CONV)
    if filters < 1 or size < 1 or stride < 1:
        raise section.error(f"filters={filters} size={size} stride={stride} must be positive")
    if padding != size // 2:
        raise section.error(f"padding {padding} is not supported (only size/2 = {size // 2})")
    if activation not in ("leaky", "linear"):
        raise section.error(
            f"activation '{activation}' is not supported (leaky or linear)", "activation"
        )
    return Conv(filters, size, stride, batch_norm, "leaky" if activation == "leaky" else "linear")


def _parse_maxpool(section: _Section) -> MaxPool:
    stride = section.get("stride", int, 1)
    size = section.get("size", int, stride)
    padding = section.get("padding", int, size - 1)
    # darknet offsets the window by -padding/2: only size 2 (or 1) keeps it where torch puts it.
    if (size, stride) not in ((2, 2), (2, 1), (1, 1)) or padding != size - 1:
        raise section.error(
            f"maxpool size={size} stride={stride} padding={padding} is not supported "
            "(YOLOv2 uses size=2 with stride 2 or 1)"
        )
    return MaxPool(size, stride)


def _parse_route(section: _Section, index: int) -> Route:
    relative = section.get("layers", _ints)
    layers = tuple(i + index if i < 0 else i for i in relative)
    if not layers or any(not 0 <= i < index for i in layers):
        raise section.error(f"route layers={section.options['layers'][0]} must name earlier layers")
    return Route(layers)


def _parse_reorg(section: _Section) -> Reorg:
    stride = section.get("stride", int, 1)
    section.neutral(_NEUTRAL_REORG)
    if stride < 1:
        raise section.error(f"reorg stride={stride} must be positive")
    return Reorg(stride)


def parse_cfg(path: PathLike) -> tuple[Architecture, dict[str, dict[str, CfgValue]]]:
    """Read a YOLOv2-family darknet .cfg.

    Returns the architecture and {"net": ..., "region": ...}: the [net] options other than width,
    height and channels, and the [region] options other than anchors, classes, num and coords
    (loss scales, thresh, jitter, ...), with numbers as int or float and anything else as text.
    """
    path = Path(path)
    net, *sections = _read_sections(path)
    regions = [s for s in sections if _SECTION_NAMES.get(s.name) == "region"]
    if not regions:
        raise InputError(f"{path}: no [region] section (YOLOv2 family only)")
    if regions[0] is not sections[-1]:
        raise regions[0].error("must be the last section (layers after it are not supported)")
    *layer_sections, region = sections
    layers: list[Layer] = []
    for index, section in enumerate(layer_sections):
        layers.append(_parse_layer(section, index))
        section.refuse_unread()
    width, height = net.get("width", int, 0), net.get("height", int, 0)
    channels = net.get("channels", int, 3)
    if width <= 0 or height <= 0:
        raise net.error(f"needs positive width and height, got {width}x{height}")
    anchors, classes = _parse_region(region, layers)
    try:
        arch = Architecture(tuple(layers), classes, anchors, (height, width), channels)
    except InputError as error:
        raise InputError(f"{path}: {error}") from None
    return arch, {"net": net.unread(), "region": region.unread()}


def _parse_layer(section: _Section, index: int) -> Layer:
    kind = _SECTION_NAMES.get(section.name)
    if kind == "convolutional":
        return _parse_conv(section)
    if kind == "maxpool":
        return _parse_maxpool(section)
    if kind == "route":
        return _parse_route(section, index)
    if kind == "reorg":
        return _parse_reorg(section)
    raise InputError(f"{section.label()} is not supported (YOLOv2 family only)")


def _parse_region(
    region: _Section, layers: list[Layer]
) -> tuple[tuple[tuple[float, float], ...], int]:
    classes = region.get("classes", int, 20)
    num = region.get("num", int, 1)
    coords = region.get("coords", int, 4)
    values = region.get("anchors", _floats)
    if classes < 1 or num < 1 or len(values) != 2 * num:
        raise region.error(f"needs classes >= 1 and 2*num = {2 * num} anchors, got {len(values)}")
    if coords != 4:
        raise region.error(f"coords={coords} is not supported (YOLOv2 predicts 4)", "coords")
    head = layers[-1] if layers else None
    if not isinstance(head, Conv):
        raise region.error("must follow a [convolutional] layer (the head)")
    expected = num * (5 + classes)
    if head.filters != expected:
        raise region.error(
            f"the head (layer {len(layers) - 1}) has filters={head.filters}, "
            f"but num*(5+classes) = {num}*(5+{classes}) = {expected}"
        )
    if head.batch_norm or head.activation != "linear":
        raise region.error(f"the head (layer {len(layers) - 1}) must be linear, without BN")
    anchors = tuple((values[i], values[i + 1]) for i in range(0, len(values), 2))
    return anchors, classes


def _format(value: object) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return ",".join(_format(item) for item in value)
    text = str(value)
    if not text or any(c in text for c in "\n[]=#;"):
        raise InputError(f"cfg value {text!r} cannot be written to a darknet cfg")
    return text


def _options_text(options: Mapping[str, object], fixed: tuple[str, ...], section: str) -> str:
    lines = []
    for key, value in options.items():
        if key in fixed:
            raise InputError(
                f"[{section}] option '{key}' comes from the architecture, not from options"
            )
        lines.append(f"{key}={_format(value)}\n")
    return "".join(lines)


def cfg_text(
    arch: Architecture,
    region: Mapping[str, object] | None = None,
    net: Mapping[str, object] | None = None,
) -> str:
    """The .cfg of `arch`: [net] and [region] from yolov2-voc.cfg's defaults, updated by the args."""
    height, width = arch.input_size
    parts = [
        f"[net]\nwidth={width}\nheight={height}\nchannels={arch.channels}\n"
        + _options_text({**DEFAULT_NET, **(net or {})}, _NET_FROM_ARCH, "net")
    ]
    for index, layer in enumerate(arch.layers):
        parts.append(_layer_text(layer, index))
    anchors = ",  ".join(f"{_format(w)},{_format(h)}" for w, h in arch.anchors)
    parts.append(
        f"[region]\nanchors={anchors}\nclasses={arch.num_classes}\nnum={arch.num_anchors}\n"
        "coords=4\n"
        + _options_text({**DEFAULT_REGION, **(region or {})}, _REGION_FROM_ARCH, "region")
    )
    return "\n".join(parts)


def _layer_text(layer: Layer, index: int) -> str:
    if isinstance(layer, Conv):
        bn = "batch_normalize=1\n" if layer.batch_norm else ""
        return (
            f"[convolutional]\n{bn}filters={layer.filters}\nsize={layer.size}\n"
            f"stride={layer.stride}\npad=1\nactivation={layer.activation}\n"
        )
    if isinstance(layer, MaxPool):
        return f"[maxpool]\nsize={layer.size}\nstride={layer.stride}\n"
    if isinstance(layer, Route):
        return "[route]\nlayers=" + ",".join(str(i - index) for i in layer.layers) + "\n"
    return f"[reorg]\nstride={layer.stride}\n"


def write_cfg(
    arch: Architecture,
    path: PathLike,
    region: Mapping[str, object] | None = None,
    net: Mapping[str, object] | None = None,
) -> None:
    """Write `arch` as a .cfg that darknet and OpenCV read; routes relative, as darknet's files."""
    write_text_atomic(path, cfg_text(arch, region, net))


# --------------------------------------------------------------------------------------------------
# .weights


@dataclass(frozen=True)
class WeightsInfo:
    """What a .weights file held: its header and how many convolutions it had weights for."""

    version: tuple[int, int, int]  # major, minor, revision
    seen: int  # images darknet had trained on
    convs_loaded: int
    convs_total: int

    @property
    def complete(self) -> bool:
        return self.convs_loaded == self.convs_total


def _conv_tensors(block: ConvBlock) -> list[torch.Tensor]:
    """A convolution's tensors in .weights order: bias (BN β), [γ, mean, var], weights."""
    if block.bn is None:
        assert block.conv.bias is not None
        return [block.conv.bias, block.conv.weight]
    bn = block.bn
    assert bn.running_mean is not None
    assert bn.running_var is not None
    return [bn.bias, bn.weight, bn.running_mean, bn.running_var, block.conv.weight]


def _read_header(data: np.ndarray, path: Path) -> tuple[tuple[int, int, int], int, int]:
    if data.size < 16:
        raise InputError(f"{path}: {data.size} bytes is too short for a darknet .weights header")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", 3))
    if not all(0 <= v < _MAX_VERSION for v in (major, minor, revision)):
        raise InputError(
            f"{path}: not a darknet .weights file for YOLOv2 (header version {major}.{minor}.{revision})"
        )
    if major * 10 + minor >= 2:
        if data.size < 20:
            raise InputError(
                f"{path}: {data.size} bytes is too short for a darknet .weights header"
            )
        return (major, minor, revision), int(np.frombuffer(data, "<u8", 1, 12)[0]), 20
    return (major, minor, revision), int(np.frombuffer(data, "<i4", 1, 12)[0]), 16


def load_darknet_weights(model: YOLOv2, path: PathLike) -> WeightsInfo:
    """Load a .weights file into `model`, whose architecture must be the file's.

    The file must end after the last convolution, or exactly after an earlier one (a backbone file
    such as darknet19_448.conv.23): then only those are loaded, the rest keep their values, and a
    warning says so. Anything else is refused before `model` is touched.
    """
    path = Path(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise InputError(f"{path}: cannot read darknet weights ({error.strerror})") from None
    version, seen, offset = _read_header(data, path)
    blocks = model.conv_blocks()
    layer_of = model.arch.conv_indices
    sizes = [4 * sum(t.numel() for t in _conv_tensors(b)) for b in blocks]
    ends = np.cumsum([0, *sizes]).tolist()
    available = data.size - offset
    if available > ends[-1]:
        raise InputError(
            f"{path}: {available - ends[-1]} bytes left after the last layer "
            f"(layer {layer_of[-1]}): the weights are not for this cfg"
        )
    loaded = max(k for k, end in enumerate(ends) if end <= available)
    if ends[loaded] != available:
        raise InputError(
            f"{path}: ends inside layer {layer_of[loaded]} (convolution {loaded}): "
            f"{ends[loaded + 1] - available} bytes short"
        )
    if loaded == 0:
        raise InputError(f"{path}: holds a header but no layer weights")
    with torch.no_grad():
        for block, start in zip(blocks[:loaded], ends, strict=False):
            position = offset + start
            for tensor in _conv_tensors(block):
                values = np.frombuffer(data, "<f4", tensor.numel(), position)
                tensor.copy_(torch.from_numpy(values.astype(np.float32)).view_as(tensor))
                position += 4 * tensor.numel()
    if loaded < len(blocks):
        logger.warning(
            "%s: loaded %d of %d convolutions (layers 0..%d); the others keep their initial values",
            path,
            loaded,
            len(blocks),
            layer_of[loaded - 1],
        )
    return WeightsInfo(version, seen, loaded, len(blocks))


def load_darknet(cfg: PathLike, weights: PathLike) -> YOLOv2:
    """The detector that a darknet .cfg/.weights pair describes (see `load_darknet_weights`).

    The model is returned in training mode, as `build_model` gives it; `model.darknet_seen` keeps
    the header's image count so that `save_darknet` writes it back.
    """
    arch, _ = parse_cfg(cfg)
    model = build_model(arch)
    for block in model.conv_blocks():
        if block.bn is not None:
            block.bn.eps = BN_EPS  # the eps darknet's (and OpenCV's) inference uses
    info = load_darknet_weights(model, weights)
    vars(model)["darknet_seen"] = info.seen  # a plain attribute, outside the state_dict
    return model


def save_darknet(
    model: YOLOv2,
    cfg: PathLike,
    weights: PathLike,
    *,
    seen: int | None = None,
    region: Mapping[str, object] | None = None,
    net: Mapping[str, object] | None = None,
) -> None:
    """Write `model` as a darknet .cfg/.weights pair (version 0.2.0), both files or neither.

    `seen` defaults to the count the model was loaded with by `load_darknet`, else 0; `region` and
    `net` override the cfg defaults of yolov2-voc.cfg (see `write_cfg`).
    """
    if seen is None:
        seen = int(getattr(model, "darknet_seen", 0))
    text = cfg_text(model.arch, region, net)
    header = np.array([0, 2, 0], "<i4").tobytes() + np.array([seen], "<u8").tobytes()
    with atomic_path(cfg) as cfg_tmp, atomic_path(weights) as weights_tmp:
        cfg_tmp.write_text(text)
        with weights_tmp.open("wb") as stream:
            stream.write(header)
            for block in model.conv_blocks():
                for tensor in _conv_tensors(block):
                    stream.write(
                        tensor.detach().to("cpu", torch.float32).numpy().astype("<f4").tobytes()
                    )


__all__ = [
    "DEFAULT_NET",
    "DEFAULT_REGION",
    "WeightsInfo",
    "cfg_text",
    "load_darknet",
    "load_darknet_weights",
    "parse_cfg",
    "save_darknet",
    "write_cfg",
]
