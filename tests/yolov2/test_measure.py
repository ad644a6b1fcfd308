"""Cost metrics: parameter and non-zero counts, darknet's FLOP convention, latency and the profile."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from yolov2.checkpoint import save_checkpoint
from yolov2.config import load_config
from yolov2.measure import architecture_gflops, count_params, gflops, latency_ms, profile
from yolov2.model import (
    Architecture,
    Conv,
    MaxPool,
    YOLOv2,
    build_model,
    yolov2_tiny_voc,
    yolov2_voc,
)
from yolov2.pipeline import architecture
from yolov2.prune import pruned_widths

# conv 3x3 3->8, maxpool, conv 3x3 8->16, head 1x1 16->6 (1 anchor, 1 class).
SMALL = Architecture(
    layers=(Conv(8), MaxPool(), Conv(16), Conv(6, 1, batch_norm=False, activation="linear")),
    num_classes=1,
    anchors=((1.0, 1.0),),
    input_size=(64, 96),
)
SMALL_PARAMS = (3 * 8 * 9 + 2 * 8) + (8 * 16 * 9 + 2 * 16) + (16 * 6 + 6)  # 1518


def _ones(arch: Architecture) -> YOLOv2:
    model = build_model(arch).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(1.0)
    return model


@pytest.mark.parametrize(
    ("zeroed", "expected_nonzero"),
    [
        ({}, SMALL_PARAMS),
        ({"layers.0.conv.weight": 100}, SMALL_PARAMS - 100),
        ({"layers.2.conv.weight": 1152, "layers.3.conv.bias": 6}, SMALL_PARAMS - 1158),
        ({"layers.0.bn.weight": 8, "layers.0.bn.bias": 8}, SMALL_PARAMS - 16),
    ],
)
def test_count_params_after_zeroing(zeroed: dict[str, int], expected_nonzero: int) -> None:
    model = _ones(SMALL)
    parameters = dict(model.named_parameters())
    with torch.no_grad():
        for name, count in zeroed.items():
            parameters[name].view(-1)[:count] = 0.0
    assert count_params(model) == (1518, expected_nonzero)


def test_count_params_ignores_bn_buffers() -> None:
    model = _ones(SMALL)
    bn = model.conv_blocks()[0].bn
    assert bn is not None
    assert bn.running_mean is not None
    with torch.no_grad():
        bn.running_mean.zero_()
    assert count_params(model) == (SMALL_PARAMS, SMALL_PARAMS)


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        # 2 FLOPs per multiply-add, convolutions only (darknet's BFLOPs): 64x96, then 32x48.
        ((64, 96), 2 * (3 * 8 * 9 * 64 * 96 + 8 * 16 * 9 * 32 * 48 + 16 * 6 * 32 * 48) / 1e9),
        ((32, 32), 2 * (3 * 8 * 9 * 32 * 32 + 8 * 16 * 9 * 16 * 16 + 16 * 6 * 16 * 16) / 1e9),
    ],
)
def test_gflops_by_hand(size: tuple[int, int], expected: float) -> None:
    assert gflops(_ones(SMALL), size) == pytest.approx(expected, rel=1e-12)


def test_gflops_ignore_weight_sparsity_and_scale_with_area() -> None:
    with torch.device("meta"):
        model = build_model(yolov2_voc()).eval()
    at_416 = gflops(model, (416, 416))
    assert at_416 == pytest.approx(29.36, abs=0.01)
    assert gflops(model, (608, 608)) == pytest.approx(at_416 * (19 / 13) ** 2, rel=1e-9)
    small = _ones(SMALL)
    dense = gflops(small, (64, 64))
    with torch.no_grad():
        small.conv_blocks()[1].conv.weight.zero_()
    assert gflops(small, (64, 64)) == dense


@pytest.mark.parametrize("family", ["voc", "tiny", "default"])
def test_the_count_from_the_layer_list_is_the_traced_count_for_any_widths(family: str) -> None:
    """Routes, the reorg, tiny's stride-1 pool and odd input sides (608 x 320: 19 x 10 cells)
    give the same GFLOPs as FlopCounterMode tracing the model, at random pruned widths."""
    config = load_config(Path(__file__).resolve().parents[2] / "experiments" / "default.yaml")
    arch = {
        "voc": yolov2_voc(),
        "tiny": yolov2_tiny_voc(),
        "default": architecture(config.model, 5, config.data.input_size),
    }[family]
    generator = torch.Generator().manual_seed(0)
    prunable = len(arch.widths) - 1
    for size in [(416, 416), (608, 320), (160, 160)]:
        for _ in range(3):
            ratios = (torch.rand(prunable, generator=generator) * 0.7).tolist()
            pruned = arch.with_widths(pruned_widths(arch, ratios, 1, 1))
            with torch.device("meta"):
                model = build_model(pruned).eval()
            assert architecture_gflops(pruned, size) == pytest.approx(
                gflops(model, size), rel=1e-12
            )


def test_latency_is_the_median_of_the_timed_forwards_in_ms() -> None:
    """Forwards made to last known times: the warm-up ones are left out, one slow forward does
    not move the median, and the unit is the millisecond."""
    model = _ones(SMALL)
    sleeps_s = iter([0.15, 0.15, 0.02, 0.02, 0.3, 0.02, 0.02])  # 2 warm-up, then 5 timed
    model.register_forward_hook(lambda *_: time.sleep(next(sleeps_s)))
    value = latency_ms(model, (64, 64), warmup=2, repeats=5)
    # 20 ms plus the tiny forward itself; the mean would be 76 ms, a warm-up 150, seconds 0.02
    assert 20 <= value < 60
    assert next(sleeps_s, None) is None  # exactly warmup + repeats forwards


def test_profile_fields(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(SMALL)
    with torch.no_grad():
        model.conv_blocks()[1].conv.weight.view(-1)[:576] = 0.0  # half of conv 1
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    result = profile(model, path, repeats=3)
    assert result.params == SMALL_PARAMS
    # Zeros: the 576 above, BN's beta (8 + 16, initialised to 0) and the head's biases but the
    # objectness one (5 of 6).
    assert result.nonzero_params == SMALL_PARAMS - 576 - 24 - 5 == 913
    assert result.sparsity == pytest.approx(1 - 913 / 1518)
    assert (
        result.gflops == 2 * (3 * 8 * 9 * 64 * 96 + 8 * 16 * 9 * 32 * 48 + 16 * 6 * 32 * 48) / 1e9
    )
    assert result.size_mb == path.stat().st_size / 1e6
    assert result.latency_ms > 0
    assert result.input_size == (64, 96)
    assert result.device == "cpu"
    assert not model.training
    assert set(result.as_dict()) == {
        "params",
        "nonzero_params",
        "sparsity",
        "gflops",
        "size_mb",
        "latency_ms",
        "input_size",
        "device",
    }


def test_profile_at_another_size(tmp_path: Path) -> None:
    model = _ones(SMALL)
    path = save_checkpoint(model, tmp_path / "m.safetensors")
    result = profile(model, path, (32, 32), repeats=2)
    assert result.input_size == (32, 32)
    assert result.gflops == pytest.approx(
        2 * (3 * 8 * 9 * 32 * 32 + 8 * 16 * 9 * 16 * 16 + 16 * 6 * 16 * 16) / 1e9
    )
    assert result.sparsity == 0.0


# --- the numbers the docs and the benchmarks quote, exactly --------------------------------------


def _cost(arch: Architecture) -> tuple[int, int]:
    """(FLOPs, parameters) of one forward pass at the architecture's input size, on no memory."""
    with torch.device("meta"):
        model = build_model(arch).eval()
    return round(gflops(model, arch.input_size) * 1e9), sum(p.numel() for p in model.parameters())


def test_yolov2_voc_at_416_filter_pruned_at_half() -> None:
    dense = yolov2_voc()
    half = dense.with_widths(pruned_widths(dense, [0.5]))  # the widths prune_filters gives
    assert _cost(dense) == (29_360_334_848, 50_655_389)  # darknet: 29.36 BFLOPs, 50.66 M
    assert _cost(half) == (7_425_659_904, 12_701_325)  # 7.43 GFLOPs, params 25.1% of dense
    assert round(12_701_325 / 50_655_389, 3) == 0.251


def test_the_default_experiment_at_its_ratio_034() -> None:
    config = load_config(Path(__file__).resolve().parents[2] / "experiments" / "default.yaml")
    dense = architecture(config.model, len(config.data.class_names()), config.data.input_size)
    prune = config.prune
    assert (prune.method, prune.ratio, prune.min_channels, prune.round_to) == ("filter", 0.34, 8, 4)
    widths = pruned_widths(dense, [prune.ratio], prune.min_channels, prune.round_to)
    assert widths == [8, 12, 20, 12, 20, 44, 20, 44, 84, 44, 84, 44, 84, 168, 84, 168, 84, 168,
                      168, 168, 12, 168, 50]  # fmt: skip
    assert _cost(dense) == (279_987_200, 3_174_842)  # 0.280 GFLOPs at 160
    assert _cost(dense.with_widths(widths)) == (134_338_400, 1_386_290)  # 0.134: 52% fewer
    assert round(1 - 134_338_400 / 279_987_200, 3) == 0.520
