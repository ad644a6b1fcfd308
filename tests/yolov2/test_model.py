"""The architecture as data, yolov2-voc's published sizes, forward shapes, reorg and the stride-1 pool."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from yolov2.errors import InputError
from yolov2.measure import gflops
from yolov2.model import (
    VOC_ANCHORS,
    Architecture,
    Conv,
    MaxPool,
    MaxPoolBlock,
    Reorg,
    Route,
    build_model,
    reorg,
    yolov2_tiny_voc,
    yolov2_voc,
)

HEAD_1x1 = Conv(6, 1, batch_norm=False, activation="linear")  # 1 anchor, 1 class: 1*(5+1)

# yolov2-voc.cfg's convolutions as darknet prints them: (in channels, filters, size, batch_norm).
YOLOV2_VOC_CONVS = [
    (3, 32, 3, True), (32, 64, 3, True),
    (64, 128, 3, True), (128, 64, 1, True), (64, 128, 3, True),
    (128, 256, 3, True), (256, 128, 1, True), (128, 256, 3, True),
    (256, 512, 3, True), (512, 256, 1, True), (256, 512, 3, True), (512, 256, 1, True),
    (256, 512, 3, True),
    (512, 1024, 3, True), (1024, 512, 1, True), (512, 1024, 3, True), (1024, 512, 1, True),
    (512, 1024, 3, True), (1024, 1024, 3, True), (1024, 1024, 3, True),
    (512, 64, 1, True),  # the passthrough conv after route -9 (layer 16)
    (1280, 1024, 3, True),  # after route [reorg (256), layer 24 (1024)]
    (1024, 125, 1, False),
]  # fmt: skip


def _tiny_arch(**changes: Any) -> dict[str, Any]:
    """Keyword arguments of a small valid Architecture; `changes` replace some of them."""
    arch: dict[str, Any] = {
        "layers": (Conv(8), MaxPool(), Conv(8), HEAD_1x1),
        "num_classes": 1,
        "anchors": ((1.0, 1.0),),
        "input_size": (64, 64),
    }
    return {**arch, **changes}


def _seeded(shape: tuple[int, ...], seed: int = 0) -> Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --- the architecture as data ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch",
    [
        yolov2_voc(),
        yolov2_voc(num_classes=3, width=0.25, input_size=(96, 160)),
        yolov2_tiny_voc(),
        yolov2_voc().with_widths([8] * 22 + [125]),
    ],
    ids=["voc", "voc-small", "tiny", "pruned"],
)
def test_to_dict_from_dict_round_trip(arch: Architecture) -> None:
    data = arch.to_dict()
    assert Architecture.from_dict(data) == arch
    # The description is plain JSON data: it survives a trip through text.
    assert Architecture.from_dict(json.loads(json.dumps(data))) == arch


def test_with_widths_changes_only_widths() -> None:
    arch = yolov2_voc()
    widths = [w // 2 for w in arch.widths[:-1]] + [125]
    pruned = arch.with_widths(widths)
    assert pruned.widths == widths
    assert [type(layer) for layer in pruned.layers] == [type(layer) for layer in arch.layers]
    assert pruned.layers[25] == Route((16,))
    assert pruned.anchors == arch.anchors
    assert arch.widths[0] == 32  # the original is untouched


def test_out_channels_of_yolov2_voc() -> None:
    out = yolov2_voc().out_channels()
    assert len(out) == 31
    assert out[16] == 512
    assert out[24] == 1024
    assert out[25:29] == [512, 64, 256, 1280]  # route -9, conv 64, reorg 2, route [27, 24]
    assert out[-1] == 125
    assert yolov2_voc().in_channels()[29] == 1280


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"layers": (Conv(8), Route((3,)), HEAD_1x1)}, "route [3] must name earlier layers"),
        ({"layers": (Conv(8), Route((1,)), HEAD_1x1)}, "route [1] must name earlier layers"),
        ({"layers": (Conv(8), Route(()), HEAD_1x1)}, "route [] must name earlier layers"),
        ({"layers": (Conv(6), Reorg(), HEAD_1x1)}, "reorg of 6 channels needs a multiple of 4"),
        ({"layers": (Conv(8), Conv(7, 1, batch_norm=False, activation="linear"))}, "1*(5+1)=6"),
        ({"layers": (Conv(8), Conv(6, 1))}, "head must be a linear conv"),
        ({"layers": (Conv(8), MaxPool())}, "last layer must be the head"),
        ({"layers": (Conv(0), HEAD_1x1)}, "positive filters"),
        ({"anchors": ()}, "at least one class and one anchor"),
        ({"input_size": (64, 48)}, "multiples of 32"),
        ({"input_size": (416, 400)}, "multiples of 32"),
        ({"input_size": (0, 64)}, "multiples of 32"),
    ],
)
def test_invalid_architectures_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as error:
        Architecture(**_tiny_arch(**changes))
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: yolov2_voc(input_size=(416, 400)), "input size (416, 400) must be positive multiples of 32"),
        (lambda: yolov2_voc().with_widths([8] * 22), "expected 23 convolution widths, got 22"),
        (lambda: yolov2_voc().with_widths([8] * 22 + [100]), "head must be a linear conv with 5*(5+20)=125"),
        (lambda: yolov2_voc().with_widths([8] * 20 + [6, 8, 125]), "layer 27: reorg of 6 channels needs a multiple of 4"),
    ],
    ids=["input-size", "too-few-widths", "head-width", "reorg-width"],
)  # fmt: skip
def test_invalid_builders_raise_input_error(call: Any, message: str) -> None:
    with pytest.raises(InputError) as error:
        call()
    assert message in str(error.value)


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"layers": [{"type": "bogus"}], "num_classes": 1, "anchors": [[1, 1]], "input_size": [64, 64]},
        {"layers": [{"type": "conv", "filters": 6, "bad": 1}], "num_classes": 1, "anchors": [[1, 1]],
         "input_size": [64, 64]},
        {"layers": [], "num_classes": 1, "anchors": [[1, 1]]},
    ],
    ids=["empty", "unknown-type", "unknown-field", "no-input-size"],
)  # fmt: skip
def test_malformed_dicts_raise_input_error(data: dict[str, Any]) -> None:
    with pytest.raises(InputError, match="malformed architecture"):
        Architecture.from_dict(data)


# --- published sizes ------------------------------------------------------------------------------


def test_yolov2_voc_matches_darknets_cfg() -> None:
    arch = yolov2_voc()
    assert len(arch.conv_indices) == 23
    ins = arch.in_channels()
    convs = [arch.layers[i] for i in arch.conv_indices]
    table = [
        (ins[i], c.filters, c.size, c.batch_norm)
        for i, c in zip(arch.conv_indices, convs, strict=True)
        if isinstance(c, Conv)
    ]
    assert table == YOLOV2_VOC_CONVS
    assert arch.anchors == VOC_ANCHORS


def test_yolov2_voc_has_50_66_m_parameters() -> None:
    # Counted from darknet's table: weights + (BN γ, β) or (bias); running statistics are buffers.
    expected = sum(i * o * k * k + (2 * o if bn else o) for i, o, k, bn in YOLOV2_VOC_CONVS)
    assert expected == 50_655_389
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_model(yolov2_voc())
    assert sum(p.numel() for p in model.parameters()) == expected


@pytest.mark.parametrize(
    ("arch", "convs", "expected_gflops"),
    [(yolov2_voc(), 23, 29.36), (yolov2_tiny_voc(), 9, 6.97)],
    ids=["yolov2-voc", "yolov2-tiny-voc"],
)
def test_darknet_bflops_at_416(arch: Architecture, convs: int, expected_gflops: float) -> None:
    assert len(arch.widths) == convs
    with torch.device("meta"):
        model = build_model(arch).eval()
    assert gflops(model, (416, 416)) == pytest.approx(expected_gflops, abs=0.01)


@pytest.mark.parametrize("width", [0.05, 0.1, 0.125, 0.3, 0.5, 0.77, 1.0, 1.5])
@pytest.mark.parametrize("family", [yolov2_voc, yolov2_tiny_voc])
def test_width_multiplier_gives_multiples_of_8(family: Any, width: float) -> None:
    arch = family(width=width)
    full = family().widths
    for scaled, original in zip(arch.widths[:-1], full[:-1], strict=True):
        assert scaled % 8 == 0
        # the nearest multiple of 8, or 8 where that would be less
        assert abs(scaled - original * width) <= 4 or (scaled == 8 and original * width < 4)
    assert arch.widths[-1] == 125


def test_width_one_eighth_by_hand() -> None:
    assert yolov2_voc(width=0.125).widths == [
        8, 8, 16, 8, 16, 32, 16, 32, 64, 32, 64, 32, 64, 128, 64, 128, 64, 128, 128, 128, 8, 128, 125
    ]  # fmt: skip
    assert yolov2_tiny_voc(width=0.3).widths == [8, 8, 16, 40, 80, 152, 304, 304, 125]


# --- forward --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(32, 32), (64, 64), (96, 160), (160, 96), (128, 64)])
@pytest.mark.parametrize("family", [yolov2_voc, yolov2_tiny_voc])
def test_forward_shape(family: Any, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = build_model(family(num_classes=3, width=0.125, input_size=(64, 64))).eval()
    with torch.no_grad():
        out = model(_seeded((2, 3, *size)))
    assert out.shape == (2, 5 * (5 + 3), size[0] // 32, size[1] // 32)
    assert torch.isfinite(out).all()


def test_head_bias_starts_with_low_objectness() -> None:
    torch.manual_seed(0)
    model = build_model(yolov2_voc(num_classes=2, width=0.125, input_size=(64, 64)))
    bias = model.conv_blocks()[-1].conv.bias
    assert bias is not None
    per_anchor = bias.detach().view(5, 7)
    assert torch.allclose(per_anchor[:, 4], torch.full((5,), float(np.log(0.01 / 0.99))))
    assert per_anchor[:, [0, 1, 2, 3, 5, 6]].abs().max() == 0


# --- reorg ----------------------------------------------------------------------------------------


def _darknet_reorg(x: np.ndarray, stride: int = 2) -> np.ndarray:
    """darknet's reorg_cpu(input, w, h, c, batch, stride, forward=0, output), transcribed loop by loop."""
    batch, c, h, w = x.shape
    flat_in, out = x.reshape(-1), np.empty(x.size, x.dtype)
    out_c = c // (stride * stride)
    for b in range(batch):
        for k in range(c):
            for j in range(h):
                for i in range(w):
                    in_index = i + w * (j + h * (k + c * b))
                    c2, offset = k % out_c, k // out_c
                    w2 = i * stride + offset % stride
                    h2 = j * stride + offset // stride
                    out_index = w2 + w * stride * (h2 + h * stride * (c2 + out_c * b))
                    out[in_index] = flat_in[out_index]
    return out.reshape(batch, c * stride * stride, h // stride, w // stride)


@pytest.mark.parametrize("shape", [(1, 4, 2, 2), (2, 8, 4, 6), (1, 8, 6, 2), (1, 16, 26, 26)])
def test_reorg_is_darknets_loop_and_the_design_formula(shape: tuple[int, int, int, int]) -> None:
    b, c, h, w = shape
    x = torch.arange(b * c * h * w, dtype=torch.float32).view(shape)
    formula = (
        x.view(b, c // 4, h, 2, w, 2).permute(0, 3, 5, 1, 2, 4).reshape(b, 4 * c, h // 2, w // 2)
    )
    assert torch.equal(reorg(x), formula)
    assert np.array_equal(reorg(x).numpy(), _darknet_reorg(x.numpy()))


def test_reorg_is_not_pixel_unshuffle() -> None:
    x = torch.arange(16.0).view(1, 4, 2, 2)
    # Worked by hand: darknet reads the buffer as (1, 4, 4) and takes (dy, dx) phases of it.
    expected = [0, 2, 8, 10, 1, 3, 9, 11, 4, 6, 12, 14, 5, 7, 13, 15]
    assert reorg(x).flatten().tolist() == expected
    assert F.pixel_unshuffle(x, 2).flatten().tolist() == list(range(16))
    y = torch.rand(1, 8, 6, 6)
    assert not torch.equal(reorg(y), F.pixel_unshuffle(y, 2))


@pytest.mark.parametrize("shape", [(8, 2, 2), (8, 4, 6), (16, 6, 2), (16, 26, 26)])
def test_reorg_moves_whole_channel_groups(shape: tuple[int, int, int]) -> None:
    # Input channels 4g..4g+3 feed exactly the output channels k*C + 4g + r (k, r < 4), whatever
    # H and W: what filter pruning of the passthrough conv relies on.
    c, h, w = shape
    base = torch.rand(1, c, h, w, generator=torch.Generator().manual_seed(0))
    for g in range(c // 4):
        changed_input = base.clone()
        changed_input[:, 4 * g : 4 * g + 4] += 1.0
        diff = (reorg(changed_input) - reorg(base)).abs().flatten(2).sum(-1)[0]
        changed = set(torch.nonzero(diff).flatten().tolist())
        assert changed == {k * c + 4 * g + r for k in range(4) for r in range(4)}


def test_reorg_shape() -> None:
    assert reorg(torch.zeros(3, 64, 26, 20)).shape == (3, 256, 13, 10)


# --- maxpool --------------------------------------------------------------------------------------


def _darknet_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """darknet's forward_maxpool_layer with its default pad = size - 1 (offset 0): out-of-bounds skipped."""
    _, _, h, w = x.shape
    pad = size - 1
    out_h, out_w = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.empty((*x.shape[:2], out_h, out_w), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            window = x[:, :, i * stride : i * stride + size, j * stride : j * stride + size]
            out[:, :, i, j] = window.max(axis=(2, 3))  # slicing drops the out-of-bounds cells
    return out


@pytest.mark.parametrize(
    ("shape", "size", "stride"),
    [((1, 1, 3, 3), 2, 1), ((2, 3, 5, 4), 2, 1), ((1, 2, 13, 13), 2, 1), ((1, 2, 6, 4), 2, 2)],
)
def test_maxpool_matches_darknet(shape: tuple[int, ...], size: int, stride: int) -> None:
    x = (
        torch.randn(shape, generator=torch.Generator().manual_seed(0)) - 5
    )  # negative: padding shows
    out = MaxPoolBlock(MaxPool(size, stride))(x)
    assert np.array_equal(out.numpy(), _darknet_maxpool(x.numpy(), size, stride))
    if stride == 1:
        assert out.shape == x.shape


def test_stride_1_maxpool_by_hand() -> None:
    x = torch.tensor([[[[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0], [-7.0, -8.0, -9.0]]]])
    expected = [[5.0, 5.0, 3.0], [5.0, 5.0, -6.0], [-7.0, -8.0, -9.0]]
    assert MaxPoolBlock(MaxPool(2, 1))(x)[0, 0].tolist() == expected


def test_tiny_keeps_13x13_through_its_stride_1_pool() -> None:
    arch = yolov2_tiny_voc(width=0.125)
    assert arch.layers[11] == MaxPool(2, 1)
    pooled = dataclasses.replace(arch, layers=(*arch.layers[:12], arch.layers[-1]))
    model = build_model(pooled).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 416, 416)).shape == (1, 125, 13, 13)
