"""Screening on real models and real synthetic VOC files: candidates spread by cost, adaptive batch
norm's statistics, and the two scores."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from yolov2.config import ExperimentConfig, load_config
from yolov2.engine import load_splits, train_loader
from yolov2.model import build_model
from yolov2.pipeline import dense_architecture, evaluate_model, initial_model, prune
from yolov2.screen import Candidate, adapt_batch_norm, cost_fraction, draw, score

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


def smoke_config(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        SMOKE, [f"cache_dir={tmp_path}", f"data.root={tmp_path}/VOCdevkit", *overrides]
    )


@pytest.mark.parametrize(("groups", "count"), [("stage", 1), ("stage", 6), ("layer", 5)])
def test_candidates_meet_cost_targets_spread_over_the_range(
    tmp_path: Path, groups: str, count: int
) -> None:
    config = smoke_config(tmp_path, "model.width=0.25", "prune.round_to=1", "prune.min_channels=1")
    arch = dense_architecture(config, 5)
    cost = cost_fraction(arch, config.prune, config.data.input_size)
    names = 6 if groups == "stage" else 22
    candidates = draw(12, names, 0.0, 0.6, cost, seed=count)
    assert [c.index for c in candidates] == list(range(12))
    most, least = cost([0.0] * names), cost([0.6] * names)
    targets = [c.target for c in candidates]
    assert targets == sorted(targets, reverse=True)
    assert targets[0] == pytest.approx(most + (least - most) / 24)
    assert targets[-1] == pytest.approx(least - (least - most) / 24)
    for candidate in candidates:
        assert all(0.0 <= r <= 0.6 for r in candidate.ratios)
        # Met from below, to within a width's rounding (one filter of the widest layer).
        assert candidate.target - 0.02 <= cost(candidate.ratios) <= candidate.target + 1e-9
    assert draw(12, names, 0.0, 0.6, cost, seed=count) == candidates  # seeded
    assert draw(12, names, 0.0, 0.6, cost, seed=count + 1) != candidates
    shapes = {tuple(round(r / max(c.ratios), 3) for r in c.ratios) for c in candidates[4:]}
    assert len(shapes) == 8  # each drawn with a random allocation, not one shape scaled


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_adaptive_batch_norm_averages_the_training_batches_statistics(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "finetune.batch_size=4")
    splits = load_splits(config.data)
    model = build_model(dense_architecture(config, len(splits.classes)))
    weights = copy.deepcopy(model.state_dict())
    first = _norms(model)[0]
    seen: list[torch.Tensor] = []
    first.register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0].detach()))
    images: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _m, inputs: images.append(inputs[0]))
    adapt_batch_norm(model, config, splits, batches=3, device=torch.device("cpu"))
    assert len(seen) == 3
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in seen]).mean(0)
    torch.testing.assert_close(first.running_mean, expected, rtol=1e-4, atol=1e-6)
    assert first.momentum == 0.1  # put back
    assert not model.training
    for name, tensor in model.state_dict().items():  # only the statistics changed
        if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(tensor, weights[name])
    batches = [inputs for inputs, _ in train_loader(splits.train, config.data, config.finetune)]
    assert torch.equal(images[0], batches[0])  # the finetune's own first batch, as it draws it


def test_scores_are_the_pruned_model_s_maps_as_pruned_and_adapted(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "train.epochs=12")
    splits = load_splits(config.data)
    from yolov2.engine import fit

    dense = fit(
        initial_model(config, len(splits.classes)),
        splits,
        data=config.data,
        train=config.train,
        loss=config.loss,
        out_dir=tmp_path / "dense",
    ).model
    candidates = [Candidate(0, (0.0,), 1.0), Candidate(1, (0.5,), 0.3)]
    kept, pruned_half = score(dense, config, splits, candidates, images=10, bn_batches=2)
    subset = dataclasses.replace(splits, val=[], test=splits.selection[:10])
    assert kept.pruned_map == pytest.approx(evaluate_model(dense, config, subset)["map"])
    half = config.prune.model_copy(update={"ratio": None, "ratios": [0.5]})
    by_hand, _ = prune(copy.deepcopy(dense), half, dense.arch)
    assert pruned_half.pruned_map == pytest.approx(evaluate_model(by_hand, config, subset)["map"])
    assert pruned_half.gflops < kept.gflops
    assert pruned_half.params < kept.params
    assert 0.0 <= pruned_half.bn_map <= 1.0
    assert pruned_half.bn_map != pruned_half.pruned_map  # the statistics changed the outputs
