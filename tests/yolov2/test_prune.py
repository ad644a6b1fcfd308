"""Pruning: ratio specs, exact magnitude masks, and filter removal that is exact through routes and reorg.

Filter removal is checked by its one exact property: a filter whose BN γ and β are zero outputs
leaky(0) = 0 in eval mode, so removing it (and the input channels it feeds) must not change the output.
"""

import math
import re
from pathlib import Path

import pytest
import torch
from torch import Tensor

from yolov2.checkpoint import load_checkpoint, save_checkpoint
from yolov2.errors import InputError
from yolov2.measure import count_params, gflops
from yolov2.model import (
    Architecture,
    Conv,
    YOLOv2,
    build_model,
    reorg,
    yolov2_tiny_voc,
    yolov2_voc,
)
from yolov2.prune import (
    WeightMasks,
    expand_ratios,
    prunable_convs,
    prune_filters,
    prune_weights,
    pruned_widths,
    remove_filters,
    reorg_groups,
    select_filters,
    stages,
)

SIZE = (96, 96)  # the passthrough reorg then sees 6 x 6, which mixes channels pixel-wise
VOC = yolov2_voc(width=0.25, input_size=SIZE)
TINY = yolov2_tiny_voc(width=0.25, input_size=SIZE)
PASSTHROUGH = 20  # conv number of the 1x1 conv feeding reorg (layer 26)


def _model(arch: Architecture, seed: int = 0) -> YOLOv2:
    """A model in eval mode whose BN statistics fit its activations and whose γ, β are random."""
    torch.manual_seed(seed)
    model = build_model(arch)
    for block in model.conv_blocks():
        if block.bn is not None:
            block.bn.momentum = 1.0  # one batch sets the running statistics
    with torch.no_grad():
        model.train()(torch.rand(2, 3, *arch.input_size))
        for block in model.conv_blocks():
            if block.bn is not None:
                block.bn.weight.uniform_(0.5, 1.5)
                block.bn.bias.normal_(0.0, 0.1)
    return model.eval()


def _input(arch: Architecture) -> Tensor:
    return torch.rand(2, 3, *arch.input_size, generator=torch.Generator().manual_seed(1))


def _arch_params(arch: Architecture) -> int:
    """Parameters of a built model, from the architecture alone (BN γ β count, running stats not)."""
    ins, total = arch.in_channels(), 0
    for index in arch.conv_indices:
        conv = arch.layers[index]
        assert isinstance(conv, Conv)
        total += ins[index] * conv.filters * conv.size**2
        total += (2 if conv.batch_norm else 1) * conv.filters
    return total


# --- ratio specs ---------------------------------------------------------------------------------


def test_stages_follow_strides() -> None:
    assert stages(VOC) == [
        [0],
        [1],
        [2, 3, 4],
        [5, 6, 7],
        [8, 9, 10, 11, 12, PASSTHROUGH],
        [13, 14, 15, 16, 17, 18, 19, 21],
    ]
    assert stages(TINY) == [[0], [1], [2], [3], [4], [5, 6, 7]]  # the stride-1 pool adds no stage
    assert prunable_convs(VOC) == list(range(22))
    assert prunable_convs(TINY) == list(range(8))


PER_STAGE = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]
PER_STAGE_EXPANDED = [0.0, 0.1] + [0.2] * 3 + [0.3] * 3 + [0.4] * 5 + [0.5] * 7 + [0.4, 0.5]
PER_LAYER = [i / 44 for i in range(22)]


@pytest.mark.parametrize(
    ("ratio", "ratios", "expected"),
    [
        (0.3, None, [0.3] * 22),
        (None, [0.3], [0.3] * 22),
        (0.0, None, [0.0] * 22),
        (None, PER_STAGE, PER_STAGE_EXPANDED),
        (None, PER_LAYER, PER_LAYER),
    ],
)
def test_expand_ratios(
    ratio: float | None, ratios: list[float] | None, expected: list[float]
) -> None:
    assert expand_ratios(VOC, ratio, ratios) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("ratio", "ratios", "message"),
    [
        (
            None,
            [0.1] * 5,
            "expected 1, 6 (per stage) or 22 (per layer) ratios for this architecture, got 5",
        ),
        (None, [0.1] * 23, "got 23"),
        (None, [], "got 0"),
        (None, [0.1, -0.1], "ratio -0.1 at position 1 is outside [0, 1)"),
        (None, [1.0], "ratio 1 at position 0 is outside [0, 1)"),
        (1.2, None, "ratio 1.2 at position 0 is outside [0, 1)"),
        (math.nan, None, "ratio nan at position 0 is outside [0, 1)"),
        (None, None, "either one pruning ratio or a list"),
        (0.1, [0.1], "either one pruning ratio or a list"),
    ],
)
def test_expand_ratios_refuses(
    ratio: float | None, ratios: list[float] | None, message: str
) -> None:
    with pytest.raises(InputError, match=re.escape(message)):
        expand_ratios(VOC, ratio, ratios)


def test_expand_ratios_tiny_counts() -> None:
    assert len(expand_ratios(TINY, ratios=[0.5] * 6)) == 8
    with pytest.raises(InputError, match=re.escape("expected 1, 6 (per stage) or 8 (per layer)")):
        expand_ratios(TINY, ratios=[0.5] * 7)


# --- weight pruning ------------------------------------------------------------------------------


def _zeros(model: YOLOv2) -> list[int]:
    return [int((block.conv.weight == 0).sum()) for block in model.conv_blocks()]


def test_weight_pruning_per_layer_counts_are_exact() -> None:
    model = build_model(VOC)
    head = model.conv_blocks()[-1].conv.weight.detach().clone()
    masks = prune_weights(model, PER_STAGE, scope="layer")
    weights = [block.conv.weight for block in model.conv_blocks()]
    expected = [round(r * w.numel()) for r, w in zip(PER_STAGE_EXPANDED, weights, strict=False)]
    assert _zeros(model) == [*expected, 0]
    assert torch.equal(model.conv_blocks()[-1].conv.weight, head)
    assert sorted(masks.masks) == list(range(22))
    total = sum(w.numel() for w in weights[:-1])
    assert masks.sparsity == pytest.approx(sum(expected) / total)


def test_weight_pruning_global_uses_one_threshold() -> None:
    model = build_model(VOC)
    before = [block.conv.weight.detach().abs().clone() for block in model.conv_blocks()]
    masks = prune_weights(model, [0.5], scope="global")
    total = sum(w.numel() for w in before[:-1])
    assert sum(_zeros(model)[:-1]) == round(0.5 * total)
    assert _zeros(model)[-1] == 0
    pruned = torch.cat([b[~masks.masks[n]] for n, b in enumerate(before[:-1])])
    kept = torch.cat([b[masks.masks[n]] for n, b in enumerate(before[:-1])])
    assert pruned.max() <= kept.min()
    per_layer = [z / w.numel() for z, w in zip(_zeros(model)[:-1], before, strict=False)]
    assert max(per_layer) - min(per_layer) > 0.1  # global: layers end up unequally sparse
    assert masks.sparsity == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_weight_pruning_ties_prune_exact_count(scope: str) -> None:
    model = build_model(TINY)
    with torch.no_grad():
        for block in model.conv_blocks():
            block.conv.weight.fill_(0.5)  # every weight ties
    prune_weights(model, [0.3], scope=scope)  # type: ignore[arg-type]
    numels = [block.conv.weight.numel() for block in model.conv_blocks()[:-1]]
    if scope == "layer":
        assert _zeros(model)[:-1] == [round(0.3 * n) for n in numels]
    else:
        assert sum(_zeros(model)[:-1]) == round(0.3 * sum(numels))


def test_weight_pruning_refuses_unknown_scope() -> None:
    with pytest.raises(InputError, match="scope must be 'layer' or 'global', got 'net'"):
        prune_weights(build_model(TINY), [0.3], scope="net")  # type: ignore[arg-type]


def test_masks_keep_zeros_through_sgd_momentum_and_weight_decay() -> None:
    model = build_model(TINY).train()
    masks = prune_weights(model, [0.6])
    zeros = _zeros(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = _input(TINY)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        assert _zeros(model) != zeros  # the step alone revives pruned weights
        masks.apply(model)
        assert _zeros(model) == zeros
    again = WeightMasks.from_model(model)
    assert all(torch.equal(again.masks[n], masks.masks[n]) for n in masks.masks)


# --- filter pruning ------------------------------------------------------------------------------


def test_reorg_groups_match_darknet_reorg() -> None:
    channels = 16
    groups = reorg_groups(channels, 2)
    for height in (4, 6):  # 6: an odd H/2, where output channels mix two input channels pixel-wise
        for g in range(channels // 4):
            x = torch.zeros(1, channels, height, height)
            x[:, 4 * g : 4 * g + 4] = torch.rand(1, 4, height, height) + 0.1
            nonzero = (reorg(x).abs().sum((0, 2, 3)) > 0).nonzero().flatten().tolist()
            assert nonzero == [o for o, group in enumerate(groups) if group == g]
            assert nonzero == sorted(k * channels + 4 * g + r for k in range(4) for r in range(4))


# Kept filters at width 0.25, worked by hand: (1 - ratio) * filters to the nearest multiple of 8,
# at least 8 (the passthrough conv, 16 filters, also a multiple of its reorg group of 4).
WIDTHS = {
    ("voc", 0.0): [8, 16, 32, 16, 32, 64, 32, 64, 128, 64, 128, 64, 128, 256, 128, 256, 128, 256, 256, 256, 16, 256, 125],
    ("voc", 0.3): [8, 8, 24, 8, 24, 48, 24, 48, 88, 48, 88, 48, 88, 176, 88, 176, 88, 176, 176, 176, 8, 176, 125],
    ("voc", 0.5): [8, 8, 16, 8, 16, 32, 16, 32, 64, 32, 64, 32, 64, 128, 64, 128, 64, 128, 128, 128, 8, 128, 125],
    ("voc", 0.75): [8, 8, 8, 8, 8, 16, 8, 16, 32, 16, 32, 16, 32, 64, 32, 64, 32, 64, 64, 64, 8, 64, 125],
    ("tiny", 0.0): [8, 8, 16, 32, 64, 128, 256, 256, 125],
    ("tiny", 0.3): [8, 8, 8, 24, 48, 88, 176, 176, 125],
    ("tiny", 0.5): [8, 8, 8, 16, 32, 64, 128, 128, 125],
    ("tiny", 0.75): [8, 8, 8, 8, 16, 32, 64, 64, 125],
}  # fmt: skip


@pytest.mark.parametrize("arch", [VOC, TINY], ids=["voc", "tiny"])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.5, 0.75])
def test_filter_pruning_shapes(arch: Architecture, ratio: float) -> None:
    model = _model(arch)
    pruned = prune_filters(model, [ratio])
    new = pruned.arch
    expected = WIDTHS["voc" if arch is VOC else "tiny", ratio]
    assert new.widths == expected
    assert pruned_widths(arch, [ratio]) == expected  # the widths alone, without the weights
    ins = new.in_channels()
    for layer, block, width in zip(new.conv_indices, pruned.conv_blocks(), new.widths, strict=True):
        assert (block.conv.in_channels, block.conv.out_channels) == (ins[layer], width)
        assert block.conv.weight.shape[1] == ins[layer]
        assert block.bn is None or block.bn.num_features == width
    for width, original in zip(new.widths[:-1], arch.widths, strict=False):
        assert width % 8 == 0
        assert 8 <= width <= original
    if arch is VOC:
        assert new.widths[PASSTHROUGH] % 8 == 0
        assert new.widths[PASSTHROUGH] % 4 == 0
    assert new.widths[-1] == 125
    assert pruned(_input(arch)).shape == (2, 125, 3, 3)
    assert not pruned.training


def test_ratio_zero_is_identity() -> None:
    model = _model(VOC)
    pruned = prune_filters(model, [0.0])
    assert pruned.arch == model.arch
    assert torch.equal(pruned(_input(VOC)), model(_input(VOC)))


@pytest.mark.parametrize(
    ("layer", "ratio"),
    [
        (4, 0.5),  # conv 2: an ordinary conv feeding the next conv
        (16, 0.25),  # conv 12: feeds the maxpool and, through route -9, the passthrough conv
        (24, 0.5),  # conv 19: second part of the concatenation [reorg, layer 24]
        (26, 0.5),  # conv 20, the passthrough: feeds reorg, so whole groups of 4 go
    ],
)
def test_removing_silent_filters_is_exact(layer: int, ratio: float) -> None:
    model = _model(VOC)
    number = VOC.conv_indices.index(layer)
    ratios = [0.0] * 22
    ratios[number] = ratio
    filters = VOC.widths[number]
    keep = pruned_widths(VOC, ratios)[number]
    if layer == 26:
        silent = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])  # groups 1 and 3
    else:
        silent = torch.randperm(filters, generator=torch.Generator().manual_seed(2))[
            : filters - keep
        ]
    bn = model.conv_blocks()[number].bn
    assert bn is not None
    with torch.no_grad():
        bn.weight[silent] = 0.0
        bn.bias[silent] = 0.0
    x = _input(VOC)
    expected = model(x)
    chosen = select_filters(model, ratios, criterion="bn")[number]
    assert set(chosen.tolist()) == set(range(filters)) - set(silent.tolist())
    pruned = prune_filters(model, ratios, criterion="bn")
    assert pruned.arch.widths[number] == keep < filters
    torch.testing.assert_close(pruned(x), expected, atol=1e-5, rtol=1e-5)


def test_removing_live_passthrough_group_changes_output() -> None:
    """The exactness above has power: dropping groups that do carry signal moves the output."""
    model = _model(VOC)
    keep = select_filters(model, [0.0])
    keep[PASSTHROUGH] = torch.tensor([4, 5, 6, 7, 12, 13, 14, 15])
    x = _input(VOC)
    assert not torch.allclose(remove_filters(model, keep)(x), model(x), atol=1e-3)


def test_remove_filters_refuses_split_reorg_group() -> None:
    model = _model(VOC)
    keep = select_filters(model, [0.0])
    keep[PASSTHROUGH] = torch.tensor([0, 1, 2, 3, 4, 5, 6, 8])
    with pytest.raises(InputError, match="conv 20 feeds a reorg and must keep whole groups of 4"):
        remove_filters(model, keep)


def _handmade_scores_model() -> YOLOv2:
    """Conv 1 (16 filters of 8x3x3 = 72 weights): filters 0-7 one spike of 5 (L1 5, L2 5), filters
    8-15 flat 0.2 (L1 14.4, L2 1.7); BN γ 1 on even filters, 0.1 on odd ones."""
    model = _model(VOC)
    block = model.conv_blocks()[1]
    assert block.bn is not None
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[:8, 0, 1, 1] = 5.0
        block.conv.weight[8:] = 0.2
        block.bn.weight.copy_(torch.tensor([1.0, 0.1] * 8))
    return model


@pytest.mark.parametrize(
    ("criterion", "expected"),
    [
        ("l1", list(range(8, 16))),
        ("l2", list(range(8))),
        ("bn", list(range(0, 16, 2))),
    ],
)
def test_criteria_rank_differently(criterion: str, expected: list[int]) -> None:
    model = _handmade_scores_model()
    ratios = [0.0] * 22
    ratios[1] = 0.5
    keep = select_filters(model, ratios, criterion=criterion)  # type: ignore[arg-type]
    assert keep[1].tolist() == expected
    pruned = prune_filters(model, ratios, criterion=criterion)  # type: ignore[arg-type]
    assert torch.equal(
        pruned.conv_blocks()[1].conv.weight, model.conv_blocks()[1].conv.weight[expected]
    )


def test_prune_twice() -> None:
    model = _model(VOC)
    once = prune_filters(model, [0.5])
    twice = prune_filters(once, [0.5])
    assert twice.arch.widths == [
        8, 8, 8, 8, 8, 16, 8, 16, 32, 16, 32, 16, 32, 64, 32, 64, 32, 64, 64, 64, 8, 64, 125,
    ]  # fmt: skip
    # On the pruned architecture: drop a silent group of the 8-filter passthrough conv, exactly.
    bn = once.conv_blocks()[PASSTHROUGH].bn
    assert bn is not None
    with torch.no_grad():
        bn.weight[4:8] = 0.0
        bn.bias[4:8] = 0.0
    ratios = [0.0] * 22
    ratios[PASSTHROUGH] = 0.5
    thinner = prune_filters(once, ratios, criterion="bn", min_channels=4, round_to=4)
    assert thinner.arch.widths[PASSTHROUGH] == 4
    x = _input(VOC)
    torch.testing.assert_close(thinner(x), once(x), atol=1e-5, rtol=1e-5)


def test_min_channels_and_round_to() -> None:
    assert pruned_widths(VOC, [0.9], min_channels=16)[:3] == [8, 16, 16]  # capped at 8 filters
    assert pruned_widths(VOC, [0.3], round_to=1)[:3] == [8, 11, 22]
    assert pruned_widths(VOC, [0.9], min_channels=1, round_to=1)[PASSTHROUGH] == 4  # a reorg group
    with pytest.raises(InputError, match="min_channels and round_to must be >= 1"):
        pruned_widths(VOC, [0.5], round_to=0)


def test_full_yolov2_voc_at_half_keeps_a_quarter_of_the_parameters() -> None:
    dense = yolov2_voc()
    assert _arch_params(dense) == 50_655_389  # darknet: 50.66 M
    assert _arch_params(VOC) == count_params(build_model(VOC))[0]  # the count matches a built model
    half = dense.with_widths(pruned_widths(dense, [0.5]))
    assert _arch_params(half) <= 0.35 * _arch_params(dense)


def test_filter_pruning_cuts_flops() -> None:
    model = _model(VOC)
    pruned = prune_filters(model, [0.5])
    assert gflops(pruned, SIZE) <= 0.35 * gflops(model, SIZE)
    assert count_params(pruned)[0] <= 0.35 * count_params(model)[0]


# --- checkpoints ---------------------------------------------------------------------------------


def test_filter_pruned_checkpoint_round_trip(tmp_path: Path) -> None:
    pruned = prune_filters(_model(VOC), PER_STAGE, criterion="l2")
    path = save_checkpoint(pruned, tmp_path / "filters.safetensors")
    loaded = load_checkpoint(path)
    assert loaded.arch == pruned.arch
    assert torch.equal(loaded(_input(VOC)), pruned(_input(VOC)))


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_weight_pruned_checkpoint_round_trip(tmp_path: Path, scope: str) -> None:
    model = _model(VOC)
    masks = prune_weights(model, [0.7], scope=scope)  # type: ignore[arg-type]
    path = save_checkpoint(model, tmp_path / "weights.safetensors")
    loaded = load_checkpoint(path)
    assert torch.equal(loaded(_input(VOC)), model(_input(VOC)))
    reloaded = WeightMasks.from_model(loaded)
    assert all(torch.equal(reloaded.masks[n], masks.masks[n]) for n in masks.masks)
    assert reloaded.sparsity == pytest.approx(0.7, abs=1e-6)
