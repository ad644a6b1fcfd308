"""Pruning: ratio specs, magnitude weight masks, and physical filter removal that follows routes and reorg.

Hand-written on purpose. The best-known structural pruner, Torch-Pruning 1.6.1, crashes on YOLOv2's
passthrough with its default settings and, with the passthrough conv excluded, leaves the concatenated
branch unpruned; no library knows darknet's reorg, which turns each group of s² consecutive channels
into s² whole output channels. Here the architecture is data, so the graph is small enough to walk:
every channel of every layer is labelled with the (conv, filter) it comes from, and a consumer keeps
exactly the input channels whose label survives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from yolov2.errors import InputError
from yolov2.model import Architecture, Conv, MaxPool, Reorg, Route, YOLOv2

Scope = Literal["layer", "global"]
Criterion = Literal["l1", "l2", "bn"]
# (conv number, filter) a channel comes from; conv number -1 is the input image.
_Label = tuple[int, int]
_IMAGE = -1


# --- ratio specs ---------------------------------------------------------------------------------


def prunable_convs(arch: Architecture) -> list[int]:
    """Conv numbers (positions in `arch.conv_indices`) that pruning may touch: all but the head."""
    return list(range(len(arch.conv_indices) - 1))


def stages(arch: Architecture) -> list[list[int]]:
    """Prunable convs grouped by the stride of their output, shallowest first.

    yolov2-voc gives 6 stages; the passthrough conv joins stride 16 and the post-concat conv stride 32.
    """
    strides = _output_strides(arch)
    by_stride: dict[int, list[int]] = {}
    for number in prunable_convs(arch):
        by_stride.setdefault(strides[arch.conv_indices[number]], []).append(number)
    return [by_stride[stride] for stride in sorted(by_stride)]


def expand_ratios(
    arch: Architecture, ratio: float | None = None, ratios: Sequence[float] | None = None
) -> list[float]:
    """One pruning ratio per prunable conv, from one value (uniform), one per stage or one per layer.

    Each ratio is the fraction to remove, in [0, 1); positions in messages count from 0.
    """
    if (ratio is None) == (ratios is None):
        raise InputError("give either one pruning ratio or a list of ratios")
    given = [ratio] if ratio is not None else list(ratios or [])
    for position, value in enumerate(given):
        if not 0.0 <= float(value) < 1.0:  # NaN fails every comparison
            raise InputError(f"ratio {float(value):g} at position {position} is outside [0, 1)")
    layers, groups = prunable_convs(arch), stages(arch)
    if len(given) == 1:
        return [float(given[0])] * len(layers)
    if len(given) == len(layers):
        return [float(value) for value in given]
    if len(given) == len(groups):
        per_layer = [0.0] * len(layers)
        for stage, value in zip(groups, given, strict=True):
            for number in stage:
                per_layer[number] = float(value)
        return per_layer
    raise InputError(
        f"expected 1, {len(groups)} (per stage) or {len(layers)} (per layer) ratios "
        f"for this architecture, got {len(given)}"
    )


# --- weight pruning ------------------------------------------------------------------------------


@dataclass
class WeightMasks:
    """Which weights of each prunable conv survive (True = kept), by conv number."""

    masks: dict[int, Tensor]

    @classmethod
    def from_model(cls, model: YOLOv2) -> WeightMasks:
        """Masks of the exact zeros, so a reloaded weight-pruned checkpoint keeps its sparsity."""
        blocks = model.conv_blocks()
        return cls({n: blocks[n].conv.weight.detach() != 0 for n in prunable_convs(model.arch)})

    def apply(self, model: YOLOv2) -> None:
        """Re-zero the pruned weights; call after every optimizer step (momentum, weight decay)."""
        blocks = model.conv_blocks()
        with torch.no_grad():
            for number, mask in self.masks.items():
                weight = blocks[number].conv.weight
                weight.masked_fill_(~mask.to(weight.device), 0.0)

    @property
    def sparsity(self) -> float:
        """Fraction of the masked weights that are pruned."""
        total = sum(mask.numel() for mask in self.masks.values())
        kept = sum(int(mask.sum()) for mask in self.masks.values())
        return 1.0 - kept / total if total else 0.0


def prune_weights(model: YOLOv2, ratios: Sequence[float], scope: Scope = "layer") -> WeightMasks:
    """Zero, in place, the smallest-|w| weights of every prunable conv; the head is never pruned.

    `ratios` is anything `expand_ratios` takes (1, per stage or per layer). scope "layer" removes
    exactly round(ratio · numel) weights of each conv; scope "global" ranks all prunable weights
    together and removes round(mean ratio · total) of them — give one ratio for plain global pruning.
    Ties are broken by position, so the counts are exact even when many weights are equal.
    """
    per_layer = expand_ratios(model.arch, ratios=ratios)
    blocks = model.conv_blocks()
    weights = [blocks[n].conv.weight for n in prunable_convs(model.arch)]
    with torch.no_grad():
        if scope == "layer":
            for weight, ratio in zip(weights, per_layer, strict=True):
                pruned = _smallest(weight.abs().flatten(), round(ratio * weight.numel()))
                weight.masked_fill_(pruned.view_as(weight), 0.0)
        elif scope == "global":
            magnitudes = torch.cat([weight.abs().flatten() for weight in weights])
            fraction = sum(per_layer) / len(per_layer)
            pruned = _smallest(magnitudes, round(fraction * magnitudes.numel()))
            for weight, part in zip(
                weights, pruned.split([w.numel() for w in weights]), strict=True
            ):
                weight.masked_fill_(part.view_as(weight), 0.0)
        else:
            raise InputError(f"weight pruning scope must be 'layer' or 'global', got {scope!r}")
    return WeightMasks.from_model(model)


def _smallest(values: Tensor, k: int) -> Tensor:
    """Bool mask of exactly k smallest entries of a 1-D tensor (ties: the first ones by position)."""
    mask = torch.zeros_like(values, dtype=torch.bool)
    if k <= 0:
        return mask
    threshold = values.kthvalue(k).values
    mask = values < threshold
    ties = (values == threshold).nonzero().squeeze(1)
    mask[ties[: k - int(mask.sum())]] = True
    return mask


# --- filter pruning ------------------------------------------------------------------------------


def prune_filters(
    model: YOLOv2,
    ratios: Sequence[float],
    criterion: Criterion = "l1",
    min_channels: int = 8,
    round_to: int = 8,
) -> YOLOv2:
    """A new, thinner model: each prunable conv keeps its best filters, every consumer is sliced to match.

    `ratios` is anything `expand_ratios` takes. Filters are ranked by the L1 or L2 norm of their
    weights or by |BN γ| (network slimming); kept counts follow `pruned_widths`. The head is kept whole.
    """
    keep = select_filters(model, ratios, criterion, min_channels, round_to)
    return remove_filters(model, keep)


def pruned_widths(
    arch: Architecture, ratios: Sequence[float], min_channels: int = 8, round_to: int = 8
) -> list[int]:
    """Filters each conv keeps (the head included, unchanged), without touching any weights.

    Kept = max(min_channels, (1 - ratio) · filters rounded to a multiple of round_to), capped at the
    filters there are; a conv that feeds a reorg of stride s also keeps a multiple of s². Ratio 0
    keeps everything, so an already-pruned odd width survives unchanged.
    """
    if min_channels < 1 or round_to < 1:
        raise InputError(f"min_channels and round_to must be >= 1, got {min_channels}, {round_to}")
    per_layer = expand_ratios(arch, ratios=ratios)
    groups = _group_sizes(arch)
    widths = list(arch.widths)
    for number, ratio in enumerate(per_layer):
        filters, group = widths[number], groups[number]
        if ratio == 0:
            continue
        unit = math.lcm(round_to, group)
        rounded = math.floor((1.0 - ratio) * filters / unit + 0.5) * unit
        floor = math.ceil(min_channels / group) * group
        widths[number] = min(filters, max(floor, rounded))
    return widths


def filter_scores(model: YOLOv2, criterion: Criterion = "l1") -> list[Tensor]:
    """Importance of every filter of every prunable conv (higher is kept first)."""
    scores = []
    for number, block in enumerate(model.conv_blocks()[:-1]):
        weight = block.conv.weight.detach().flatten(1)
        if criterion == "l1":
            scores.append(weight.abs().sum(1))
        elif criterion == "l2":
            scores.append(weight.norm(dim=1))
        elif criterion == "bn":
            if block.bn is None:
                raise InputError(f"criterion 'bn' needs batch norm, conv {number} has none")
            scores.append(block.bn.weight.detach().abs())
        else:
            raise InputError(f"filter criterion must be 'l1', 'l2' or 'bn', got {criterion!r}")
    return scores


def select_filters(
    model: YOLOv2,
    ratios: Sequence[float],
    criterion: Criterion = "l1",
    min_channels: int = 8,
    round_to: int = 8,
) -> list[Tensor]:
    """Sorted indices of the filters each conv keeps (the head: all); reorg feeders keep whole groups."""
    arch = model.arch
    widths = pruned_widths(arch, ratios, min_channels, round_to)
    groups = _group_sizes(arch)
    keep = []
    for number, score in enumerate(filter_scores(model, criterion)):
        group = groups[number]
        group_scores = score.view(-1, group).sum(1)  # reorg moves s² consecutive filters together
        best = group_scores.topk(widths[number] // group).indices.sort().values
        keep.append((best[:, None] * group + torch.arange(group, device=best.device)).flatten())
    keep.append(torch.arange(arch.widths[-1]))
    return [indices.cpu() for indices in keep]


def remove_filters(model: YOLOv2, keep: Sequence[Tensor]) -> YOLOv2:
    """A new model with only the `keep[n]` filters of conv n and the matching input channels downstream.

    BN statistics, biases and the train/eval mode are carried over; `model` is left as it is.
    """
    arch = model.arch
    _check_keep(arch, keep)
    kept = [set(indices.tolist()) for indices in keep]
    new_arch = arch.with_widths([len(indices) for indices in keep])
    sources = _channel_sources(arch)
    parameter = next(model.parameters())
    with torch.device("meta"):
        pruned = YOLOv2(new_arch)  # no init: every tensor is copied below
    pruned = pruned.to_empty(device=parameter.device).to(parameter.dtype)
    conv_blocks = zip(model.conv_blocks(), pruned.conv_blocks(), strict=True)
    for number, (old, new) in enumerate(conv_blocks):
        layer = arch.conv_indices[number]
        inputs = sources[layer - 1] if layer else _image_labels(arch)
        in_index = [i for i, (c, f) in enumerate(inputs) if c == _IMAGE or f in kept[c]]
        out_index = keep[number].to(parameter.device)
        in_tensor = torch.tensor(in_index, device=parameter.device)
        state = {}
        for name, tensor in old.state_dict().items():
            if name == "conv.weight":
                state[name] = tensor[out_index][:, in_tensor]
            elif tensor.dim() == 1:  # conv bias, BN γ, β, running mean and variance
                state[name] = tensor[out_index]
            else:  # BN's num_batches_tracked
                state[name] = tensor
        new.load_state_dict(state)
    return pruned.train(model.training)


def reorg_groups(channels: int, stride: int = 2) -> list[int]:
    """For each output channel of `yolov2.model.reorg`, the group of s² input channels it comes from.

    reorg permutes to (s, s, C/s², H, W) and reads that as (s²C, H/s, W/s): each (sy, sx, g) block of
    H·W values fills s² whole output channels, so output channels k·C + s²g + r (k, r < s²) hold
    exactly the values of input channels s²g .. s²g + s² - 1 (mixed pixel-wise when H/s is odd).
    """
    return [(o % channels) // stride**2 for o in range(channels * stride**2)]


def _check_keep(arch: Architecture, keep: Sequence[Tensor]) -> None:
    widths, groups = arch.widths, _group_sizes(arch)
    if len(keep) != len(widths):
        raise InputError(f"expected kept filters for {len(widths)} convs, got {len(keep)}")
    if keep[-1].tolist() != list(range(widths[-1])):
        raise InputError("the head conv's filters are the detections and cannot be pruned")
    for number, indices in enumerate(keep[:-1]):
        values = indices.tolist()
        if (
            not values
            or values != sorted(set(values))
            or values[0] < 0
            or values[-1] >= widths[number]
        ):
            raise InputError(f"conv {number}: kept filters must be sorted, unique and in range")
        group = groups[number]
        if len({v // group for v in values}) * group != len(values):
            raise InputError(f"conv {number} feeds a reorg and must keep whole groups of {group}")


def _output_strides(arch: Architecture) -> list[int]:
    strides: list[int] = []
    for layer in arch.layers:
        previous = strides[-1] if strides else 1
        if isinstance(layer, Conv | MaxPool | Reorg):
            strides.append(previous * layer.stride)
        else:
            strides.append(strides[layer.layers[0]])
    return strides


def _image_labels(arch: Architecture) -> list[_Label]:
    return [(_IMAGE, channel) for channel in range(arch.channels)]


def _channel_sources(arch: Architecture) -> list[list[_Label]]:
    """For every layer, the (conv, filter) each output channel comes from, through routes and reorg.

    A reorg output channel is labelled with the first filter of its input group: the feeding conv
    keeps or drops whole groups, so that filter stands for the group.
    """
    conv_numbers = {layer: number for number, layer in enumerate(arch.conv_indices)}
    sources: list[list[_Label]] = []
    for index, layer in enumerate(arch.layers):
        previous = sources[-1] if sources else _image_labels(arch)
        if isinstance(layer, Conv):
            sources.append([(conv_numbers[index], f) for f in range(layer.filters)])
        elif isinstance(layer, MaxPool):
            sources.append(previous)
        elif isinstance(layer, Route):
            sources.append([label for i in layer.layers for label in sources[i]])
        else:
            group = layer.stride**2
            groups = reorg_groups(len(previous), layer.stride)
            sources.append([previous[group * g] for g in groups])
    return sources


def _group_sizes(arch: Architecture) -> list[int]:
    """Per conv: how many consecutive filters must be pruned together (s² when it feeds a reorg)."""
    groups = [1] * len(arch.conv_indices)
    sources = _channel_sources(arch)
    for index, layer in enumerate(arch.layers):
        if not isinstance(layer, Reorg):
            continue
        inputs = sources[index - 1] if index else _image_labels(arch)
        number = inputs[0][0]
        if number == _IMAGE or inputs != [(number, f) for f in range(arch.widths[number])]:
            raise InputError(
                f"layer {index}: filter pruning needs a reorg to read one convolution's whole output"
            )
        groups[number] = math.lcm(groups[number], layer.stride**2)
    return groups
