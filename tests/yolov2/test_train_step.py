"""A training step's traffic with the device: truths padded in one go, the loss read on the host
once per logging interval, divergence still named by its step, pinned loaders for CUDA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor
from torchvision import tv_tensors

from yolov2 import engine
from yolov2.config import ExperimentConfig, TrainConfig, load_config
from yolov2.engine import (
    TrainState,
    eval_loader,
    lr_factor,
    make_optimizer,
    train_loader,
    train_one_epoch,
)
from yolov2.errors import TrainingDivergedError
from yolov2.loss import _pad_truths
from yolov2.pipeline import initial_model

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


def _per_image_padding(
    targets: list[dict[str, Tensor]], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """The padding as it was written before, one image at a time: the reference."""
    counts = [int(t["labels"].shape[0]) for t in targets]
    n_max = max(counts, default=0)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0], device=device).repeat(len(targets), n_max, 1)
    labels = torch.zeros(len(targets), n_max, dtype=torch.int64, device=device)
    for k, (target, n) in enumerate(zip(targets, counts, strict=True)):
        boxes[k, :n] = target["boxes"].to(device=device, dtype=torch.float32) / 32
        labels[k, :n] = target["labels"].to(device)
    valid = torch.arange(n_max, device=device) < torch.tensor(counts, device=device)[:, None]
    return boxes, labels, valid


def _target(boxes: list[list[float]], labels: list[int]) -> dict[str, Tensor]:
    return {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            format="XYXY",
            canvas_size=(96, 128),
        ),
        "labels": torch.tensor(labels, dtype=torch.int64),
    }


BATCHES = {
    "empty images among full ones": [
        _target([], []),
        _target([[1.5, 2.0, 40.0, 50.0], [0.0, 0.0, 95.0, 127.0], [10, 11, 12, 13]], [3, 0, 4]),
        _target([], []),
        _target([[5.0, 6.0, 70.0, 80.0]], [1]),
    ],
    "every image empty": [_target([], []), _target([], [])],
    "one image": [_target([[3.0, 4.0, 33.0, 44.0], [8.0, 8.0, 9.0, 9.0]], [2, 2])],
    "no images": [],
}


@pytest.mark.parametrize("name", sorted(BATCHES))
def test_truths_are_padded_as_one_image_at_a_time_did(name: str) -> None:
    targets = BATCHES[name]
    cpu = torch.device("cpu")
    padded = _pad_truths(targets, num_classes=5, device=cpu)
    for got, expected in zip(padded, _per_image_padding(targets, cpu), strict=True):
        assert got.dtype == expected.dtype
        assert torch.equal(got, expected)


def test_a_label_outside_the_classes_names_its_image() -> None:
    targets = [_target([], []), _target([[1.0, 1.0, 9.0, 9.0]], [0]), _target([[2, 2, 8, 8]], [5])]
    with pytest.raises(ValueError, match=r"target 2 has a label outside 0\.\.4"):
        _pad_truths(targets, num_classes=5, device=torch.device("cpu"))


def _smoke(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        SMOKE, [f"cache_dir={tmp_path}", f"data.root={tmp_path}/VOCdevkit", *overrides]
    )


def _epoch(config: ExperimentConfig, before: Any = None) -> dict[str, float]:
    """One epoch of the smoke model on the smoke data, as fit runs it, on batches loaded first;
    `before` is called once they are."""
    splits = engine.load_splits(config.data)
    model = initial_model(config, len(splits.classes))
    batches = list(train_loader(splits.train, config.data, config.train))
    optimizer = make_optimizer(model, config.train)
    schedule = lr_factor(config.train, len(batches))
    if before is not None:
        before()
    return train_one_epoch(
        model,
        batches,  # type: ignore[arg-type]
        optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        loss_config=config.loss,
        device=torch.device("cpu"),
        state=TrainState(),
        train=config.train,
    )


def test_a_loss_that_turns_non_finite_mid_interval_is_named_by_its_step(tmp_path: Path) -> None:
    config = _smoke(tmp_path, "train.batch_size=2")  # 8 steps, below one logging interval
    calls = iter(range(100))
    model_of: dict[str, Any] = {}

    def third_step_overflows(inputs: Tensor) -> Tensor:
        output: Tensor = model_of["model"](inputs)
        return output * torch.inf if next(calls) == 2 else output

    splits = engine.load_splits(config.data)
    model_of["model"] = initial_model(config, len(splits.classes))
    loader = train_loader(splits.train, config.data, config.train)
    optimizer = make_optimizer(model_of["model"], config.train)
    with pytest.raises(TrainingDivergedError, match=r"^tag: loss is (nan|inf) at epoch 1, step 3$"):
        train_one_epoch(
            model_of["model"],
            loader,
            optimizer=optimizer,
            scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0),
            loss_config=config.loss,
            device=torch.device("cpu"),
            state=TrainState(),
            train=config.train,
            desc="tag",
            forward=third_step_overflows,
        )


def _count_host_reads(monkeypatch: pytest.MonkeyPatch, reads: list[str]) -> None:
    """From now on, note every read of a floating-point tensor's value on the host (item, float,
    tolist): on CUDA each waits for the device to finish all the work queued before it."""
    for name in ("item", "__float__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self: Tensor, *args: Any, _name: str = name, _original: Any = original) -> Any:
            if self.is_floating_point():
                reads.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)


def test_the_loss_is_read_on_the_host_once_per_logging_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SGD: AdamW reads its step counters (CPU tensors) with item() on every step.
    config = _smoke(tmp_path, "train.batch_size=2", "train.optimizer=sgd")
    monkeypatch.setattr(engine, "LOG_EVERY", 3, raising=False)  # raising: also on older trees
    reads: list[str] = []
    metrics = _epoch(config, before=lambda: _count_host_reads(monkeypatch, reads))
    # 8 steps: reads after steps 3 and 6, of the last 2 at the end, and the epoch's sums.
    assert reads == ["tolist"] * 4
    assert metrics["loss/total"] > 0
    total = sum(metrics[f"loss/{name}"] for name in ("coord", "object", "noobject", "class"))
    assert metrics["loss/total"] == pytest.approx(total, rel=1e-6)


@pytest.mark.parametrize(("device", "pinned"), [("cpu", False), ("cuda", True)])
def test_loaders_that_feed_cuda_pin_their_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str, pinned: bool
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # built, never iterated here
    config = _smoke(tmp_path, f"train.device={device}")
    splits = engine.load_splits(config.data)
    assert train_loader(splits.train, config.data, config.train).pin_memory is pinned
    loader = eval_loader(splits.test, config.data, 4, torch.device(device))
    assert loader.pin_memory is pinned


def test_compile_is_off_unless_an_experiment_turns_it_on() -> None:
    assert TrainConfig().compile is False
    assert TrainConfig(compile=True).compile is True
