"""Screening: many pruned candidates scored cheaply, so that only the promising ones are finetuned.

A candidate is one pruning ratio per group of the search's `prune.ratios`, filter-pruned. Candidates are drawn
stratified by cost, so that the whole cost range is covered by design: cost targets spread evenly
from the most to the least pruned model the range allows, and for each target a random allocation
(a random shape `u` over the groups, each group's ratio `low + (high - low) * min(1, s * u)`) is
scaled by `s` until its cost meets the target (the cost falls as `s` grows, so a bisection finds
it). EagleEye (Li et al., ECCV 2020) draws its candidates the same way: random per-layer ratios
held to a FLOPs target.

A candidate's score is its map on (a subset of) the selection split without any finetuning, either
as pruned (`pruned_map`) or after adaptive batch normalisation (`bn_map`, EagleEye's proxy): the
batch-norm statistics recomputed from a few training batches, no gradients, so that the statistics
match the pruned network's activations. Both are measured; `screen.score` says which ranks.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from yolov2.config import ExperimentConfig, PruneConfig
from yolov2.engine import Splits, evaluate, held_eval_loader, resolve_device, train_loader
from yolov2.measure import architecture_gflops, count_params
from yolov2.model import Architecture, YOLOv2
from yolov2.pipeline import prune
from yolov2.sensitivity import pruned_gflops

BISECTION_STEPS = 20  # s to within 2^-20 of its range: far below a width's rounding


@dataclass(frozen=True)
class Candidate:
    """One allocation to screen: its ratios (one per group) and the cost it was drawn for."""

    index: int
    ratios: tuple[float, ...]
    target: float  # the cost fraction of the dense model it was drawn to meet


@dataclass(frozen=True)
class Scored:
    """A candidate as pruned and scored."""

    candidate: Candidate
    gflops: float
    params: int  # nonzero parameters: a weight-pruned model's cost, as its sparse checkpoint's
    pruned_map: float  # on the screen's images, as pruned
    bn_map: float  # on the same images, after adaptive batch normalisation


def draw(
    count: int,
    groups: int,
    low: float,
    high: float,
    cost: Callable[[Sequence[float]], float],
    *,
    seed: int,
) -> list[Candidate]:
    """`count` allocations of `groups` ratios in [low, high], whose costs (`cost`, a fraction of
    the dense model's) are spread evenly over the range the ratios reach."""
    rng = random.Random(seed)
    most, least = cost([low] * groups), cost([high] * groups)
    candidates = []
    for index in range(count):
        target = most + (least - most) * (index + 0.5) / count
        shape = [rng.random() for _ in range(groups)]
        candidates.append(Candidate(index, meeting(target, shape, low, high, cost), target))
    return candidates


def meeting(
    target: float,
    shape: list[float],
    low: float,
    high: float,
    cost: Callable[[Sequence[float]], float],
) -> tuple[float, ...]:
    """The ratios along `shape` whose cost is nearest `target` from below."""

    def ratios(scale: float) -> tuple[float, ...]:
        return tuple(round(low + (high - low) * min(1.0, scale * u), 6) for u in shape)

    below, above = 0.0, 1.0 / max(min(shape), 1e-6)  # cost(ratios(above)) is the least
    for _ in range(BISECTION_STEPS):
        middle = (below + above) / 2
        if cost(ratios(middle)) > target:
            below = middle
        else:
            above = middle
    return ratios(above)


def score(
    dense: YOLOv2,
    config: ExperimentConfig,
    splits: Splits,
    candidates: Sequence[Candidate],
    *,
    images: int,
    bn_batches: int,
) -> list[Scored]:
    """Each candidate pruned from `dense` as the experiment's prune section prunes (its ratios
    aside), scored on the first `images` images of the selection split as pruned and after
    adaptive batch normalisation on `bn_batches` training batches."""
    device = resolve_device(config.train.device)
    subset = splits.selection[:images]
    loader = held_eval_loader(subset, config.data, config.train.batch_size)
    size = (config.data.input_size, config.data.input_size)
    scored = []
    for candidate in candidates:
        pruning = config.prune.model_copy(update={"ratio": None, "ratios": list(candidate.ratios)})
        model, _ = prune(copy.deepcopy(dense), pruning, dense.arch)
        model = model.to(device)
        as_pruned = evaluate(model, loader, subset, splits.classes, device)["map"]
        adapt_batch_norm(model, config, splits, bn_batches, device)
        adapted = evaluate(model, loader, subset, splits.classes, device)["map"]
        nonzero = count_params(model)[1]
        scored.append(
            Scored(
                candidate,
                architecture_gflops(model.arch, size),
                nonzero,
                float(as_pruned),
                float(adapted),
            )
        )
    return scored


@torch.no_grad()
def adapt_batch_norm(
    model: YOLOv2, config: ExperimentConfig, splits: Splits, batches: int, device: torch.device
) -> None:
    """Recompute every batch norm's running mean and variance from `batches` training batches
    (the finetune's loader: its augmentation, its batch size), as a plain average over them; the
    weights stay as they are."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches seen
    model.train()
    loader = train_loader(splits.train, config.data, config.finetune)
    for index, (inputs, _) in enumerate(loader):
        if index == batches:
            break
        model(inputs.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.eval()


def cost_fraction(
    arch: Architecture, prune_config: PruneConfig, input_size: int
) -> Callable[[Sequence[float]], float]:
    """A candidate's GFLOPs as a fraction of the dense model's, from the widths its ratios give
    (filter pruning): the cost the candidates are spread over, whatever the search's cost, since
    a filter-pruned model's size and latency fall with its GFLOPs."""
    whole = pruned_gflops(arch, prune_config, [0.0], input_size)
    return lambda ratios: pruned_gflops(arch, prune_config, ratios, input_size) / whole
