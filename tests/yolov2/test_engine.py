"""The train and eval loops on real synthetic VOC files: overfitting, resume, divergence, schedules."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from yolov2 import engine
from yolov2.config import ExperimentConfig, TrainConfig, load_config
from yolov2.data import sample_seed
from yolov2.engine import (
    FitResult,
    HeldBatches,
    MultiScaleBatchSampler,
    Splits,
    fit,
    held_eval_loader,
    load_splits,
    lr_factor,
)
from yolov2.errors import InputError, TrainingDivergedError
from yolov2.pipeline import evaluate_model, initial_model, selection_evaluator
from yolov2.prune import WeightMasks, prune_weights

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


def smoke_config(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        SMOKE, [f"cache_dir={tmp_path}", f"data.root={tmp_path}/VOCdevkit", *overrides]
    )


def _trained(config: ExperimentConfig, splits: Splits, out: Path) -> FitResult:
    """The experiment's dense training from its initial weights, into `out`."""
    model = initial_model(config, len(splits.classes))
    return fit(model, splits, data=config.data, train=config.train, loss=config.loss, out_dir=out)


def test_a_small_model_overfits_a_handful_of_images(tmp_path: Path) -> None:
    # The smoke experiment is this test: 16 easy images, no augmentation, evaluated on themselves.
    config = smoke_config(tmp_path)
    assert config.data.test_sets == config.data.train_sets
    assert config.data.augment.jitter == 0
    assert not config.data.augment.flip
    splits = load_splits(config.data)
    assert len(splits.train) == 16
    result = _trained(config, splits, tmp_path / "run")
    assert result.final["map"] >= 0.9
    assert result.history[-1]["loss/total"] < result.history[0]["loss/total"] / 5


def test_held_batches_evaluate_as_the_loader_does_and_a_split_too_big_stays_a_loader(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sensitivity and the screen evaluate many models on batches decoded once: the same
    maps, per-class APs included, as a loader read again for each model."""
    config = smoke_config(tmp_path, "train.epochs=12", "data.workers=1")
    splits = load_splits(config.data)
    model = _trained(config, splits, tmp_path / "run").model
    streamed = evaluate_model(model, config, splits)
    assert 0.1 < streamed["map"] < 1.0  # a model that finds some objects, not all
    held = held_eval_loader(splits.selection, config.data, config.train.batch_size)
    assert isinstance(held, HeldBatches)
    assert len(held) == 2  # 16 images in batches of 8
    evaluated = selection_evaluator(config, splits)
    assert evaluated(model) == streamed
    assert evaluated(model) == streamed  # the held batches serve every model in turn
    decoded = 16 * 3 * config.data.input_size**2 * 4
    monkeypatch.setattr(engine, "HELD_BYTES", decoded - 1)
    assert isinstance(held_eval_loader(splits.selection, config.data, 8), DataLoader)


def _fit(config: ExperimentConfig, out: Path, report: Any = None) -> dict[str, torch.Tensor]:
    result = _fit_into(out, config, load_splits(config.data), report=report)
    assert len(result.history) == config.train.epochs
    return result.model.state_dict()


def test_resume_continues_the_same_run(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "train.epochs=2", "train.eval_every=0")
    straight = _fit(config, tmp_path / "straight")

    def interrupt(metrics: dict[str, Any]) -> None:
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _fit(config, tmp_path / "resumed", report=interrupt)
    epochs_seen: list[int] = []
    resumed = _fit(config, tmp_path / "resumed", report=lambda m: epochs_seen.append(m["epoch"]))
    assert epochs_seen == [2]
    for name, tensor in straight.items():
        assert torch.equal(tensor, resumed[name]), name


def test_a_non_finite_loss_names_epoch_and_step(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "loss.noobject_scale=1e300")
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 1"):
        _fit(config, tmp_path / "run")


def test_a_data_set_is_parsed_once_per_process_until_its_annotations_change(
    tmp_path: Path,
) -> None:
    config = smoke_config(tmp_path)
    first = load_splits(config.data, config.cache_dir)
    again = load_splits(config.data, config.cache_dir)  # a warm worker's next trial
    assert again.train[0] is first.train[0]  # the same parsed annotations, not read again
    assert again.train is not first.train  # a list of its own, free to reorder
    assert load_splits(config.data).train[0] is not first.train[0]  # no cache: always read
    # An annotation edited in place (its size changes): the data set is read again.
    xml = tmp_path / "VOCdevkit" / "VOC2007" / "Annotations" / f"{first.train[0].image_id}.xml"
    xml.write_text(xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult> "))
    edited = load_splits(config.data, config.cache_dir)
    assert edited.train[0] is not first.train[0]
    assert edited.train[0].difficult.all()


def test_a_missing_data_folder_is_one_clear_error(tmp_path: Path) -> None:
    config = load_config(SMOKE, [f"data.root={tmp_path}/nowhere", "data.synthetic=null"])
    with pytest.raises(InputError, match="nowhere: data folder not found"):
        load_splits(config.data)


@pytest.mark.parametrize(
    ("settings", "step", "expected"),
    [
        ({"burn_in": 10}, 0, (1 / 10) ** 4),
        ({"burn_in": 10}, 4, (5 / 10) ** 4),
        ({"burn_in": 0, "schedule": "constant"}, 50, 1.0),
        ({"burn_in": 0, "schedule": "cosine"}, 50, 0.5),
        ({"burn_in": 0, "schedule": "cosine"}, 100, 0.0),
        ({"burn_in": 0, "schedule": "steps"}, 79, 1.0),
        ({"burn_in": 0, "schedule": "steps"}, 80, 0.1),
        ({"burn_in": 0, "schedule": "steps"}, 95, 0.01),
    ],
)
def test_lr_schedule(settings: dict[str, Any], step: int, expected: float) -> None:
    factor = lr_factor(TrainConfig(**settings), total_steps=100)
    assert factor(step) == pytest.approx(expected, abs=1e-12)


def test_multiscale_batches_change_size_every_ten_batches_and_repeat_per_epoch() -> None:
    sampler = MultiScaleBatchSampler(400, 4, [64, 96, 128, 160, 192], seed=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 100
    sizes = [batch[0][1] for batch in batches]
    assert all(len({size for _, size, _ in batch}) == 1 for batch in batches)
    assert all(len(set(sizes[i : i + 10])) == 1 for i in range(0, 100, 10))
    assert len(set(sizes)) > 1
    assert sorted(i for batch in batches for i, _, _ in batch) == list(range(400))
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches


def test_each_sample_gets_its_own_augmentation_seed_from_seed_epoch_and_index() -> None:
    sampler = MultiScaleBatchSampler(40, 4, [96], seed=3)
    first = {i: seed for batch in sampler for i, _, seed in batch}
    assert first == {i: sample_seed(3, 0, i) for i in range(40)}
    assert len(set(first.values())) == 40
    sampler.set_epoch(1)
    second = {i: seed for batch in sampler for i, _, seed in batch}
    assert all(second[i] != first[i] for i in range(40))
    # Pinned: the seed every dense model of the cache was trained with, in every process.
    assert sample_seed(3, 0, 5) == 695095115207817684
    assert sample_seed(4, 0, 5) != sample_seed(3, 0, 5) != sample_seed(3, 1, 5)
    assert 0 <= sample_seed(2**40, 10**6, 10**7) < 2**63


def test_a_single_leftover_image_is_dropped_but_a_small_data_set_still_trains() -> None:
    assert [len(b) for b in MultiScaleBatchSampler(9, 4, [96], seed=0)] == [4, 4]
    assert [len(b) for b in MultiScaleBatchSampler(3, 8, [96], seed=0)] == [3]


def test_the_synthetic_section_reaches_the_generator(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "data.synthetic.objects_per_image=[0,0]")
    splits = load_splits(config.data)
    assert len(splits.train) == 16
    assert all(len(a.labels) == 0 for a in splits.train + splits.test)
    crowded = smoke_config(tmp_path / "b", "data.synthetic.objects_per_image=[3,3]")
    assert sum(len(a.labels) for a in load_splits(crowded.data).train) > 2 * 16


@pytest.mark.parametrize(("name", "kind"), [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_weight_decay_reaches_only_convolution_weights(name: str, kind: type) -> None:
    from yolov2.engine import make_optimizer
    from yolov2.model import build_model, yolov2_tiny_voc

    model = build_model(yolov2_tiny_voc(width=0.25, input_size=(64, 64)))
    optimizer = make_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.01))
    assert isinstance(optimizer, kind)
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 0.01
    assert plain["weight_decay"] == 0.0
    convs = {id(block.conv.weight) for block in model.conv_blocks()}
    assert {id(p) for p in decayed["params"]} == convs
    assert len(plain["params"]) == len(list(model.parameters())) - len(convs)


@pytest.mark.parametrize("letterbox", [False, True])
def test_training_and_evaluation_letterbox_alike(tmp_path: Path, letterbox: bool) -> None:
    from yolov2.engine import eval_loader, train_loader

    config = smoke_config(tmp_path, f"data.letterbox={str(letterbox).lower()}")
    train = train_loader([], config.data, config.train).dataset.transform
    evaluation = eval_loader([], config.data, 2).dataset.transform
    assert train.letterbox is evaluation.letterbox is letterbox


# --- resume only what the config now describes ---------------------------------------------------


def _one_epoch(tmp_path: Path, *overrides: str) -> tuple[ExperimentConfig, Splits]:
    config = smoke_config(tmp_path, "train.epochs=1", *overrides)
    return config, load_splits(config.data)


def _fit_into(
    out: Path,
    config: ExperimentConfig,
    splits: Splits,
    masks: WeightMasks | None = None,
    report: Any = None,
) -> FitResult:
    model = initial_model(config, len(splits.classes))
    if masks is not None:
        masks.apply(model)
    return fit(
        model,
        splits,
        data=config.data,
        train=config.train,
        loss=config.loss,
        out_dir=out,
        report=report,
        masks=masks,
    )


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("train.lr=0.1", "train.lr 0.004 -> 0.1"),
        ("train.epochs=2", "train.epochs 1 -> 2"),
        ("loss.object_scale=4", "loss.object_scale 5.0 -> 4.0"),
        ("data.augment.flip=true", "data.augment.flip False -> True"),
        ("train.seen=20000", "start.seen 0 -> 20000"),
        ("model.width=0.25", "start.weights"),  # another starting model
    ],
)
def test_a_training_state_of_other_settings_is_refused_not_resumed(
    tmp_path: Path, override: str, named: str
) -> None:
    config, splits = _one_epoch(tmp_path)
    _fit_into(tmp_path / "run", config, splits)
    state = (tmp_path / "run" / "train_state.pt").read_bytes()
    other, _ = _one_epoch(tmp_path, override)
    with pytest.raises(InputError) as error:
        _fit_into(tmp_path / "run", other, splits)
    message = str(error.value)
    assert message.startswith(f"{tmp_path}/run/train_state.pt: a training state of other settings")
    assert named in message
    assert message.endswith(f"to start afresh remove {tmp_path}/run or pick another output folder")
    assert "\n" not in message
    assert (tmp_path / "run" / "train_state.pt").read_bytes() == state


def test_a_run_time_knob_does_not_stop_a_resume(tmp_path: Path) -> None:
    config, splits = _one_epoch(tmp_path)
    first = _fit_into(tmp_path / "run", config, splits)
    other, _ = _one_epoch(tmp_path, "train.eval_every=1", "data.workers=1", "train.device=cpu")
    again = _fit_into(tmp_path / "run", other, splits)
    assert again.history == first.history  # resumed at its end: nothing trained twice
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, again.model.state_dict()[name]), name


def test_other_weight_masks_are_other_settings(tmp_path: Path) -> None:
    config, splits = _one_epoch(tmp_path)
    dense = initial_model(config, len(splits.classes))
    _fit_into(tmp_path / "run", config, splits, prune_weights(copy.deepcopy(dense), [0.5]))
    with pytest.raises(InputError, match=r"\(start\.masks [0-9a-f]+ -> [0-9a-f]+, start\.weights"):
        _fit_into(tmp_path / "run", config, splits, prune_weights(copy.deepcopy(dense), [0.6]))


def test_a_training_state_without_settings_is_refused(tmp_path: Path) -> None:
    config, splits = _one_epoch(tmp_path)
    (tmp_path / "run").mkdir()
    old = {"epoch": 1, "step": 2, "seen": 16, "history": []}  # as fit saved it before digests
    torch.save(old, tmp_path / "run" / "train_state.pt")
    with pytest.raises(InputError, match=r"other settings \(\(no settings recorded\)\)"):
        _fit_into(tmp_path / "run", config, splits)


# --- the validation split -------------------------------------------------------------------------


def _ids(annotations: list[Any]) -> list[str]:
    return [a.image_id for a in annotations]


def test_val_sets_are_held_out_of_training(tmp_path: Path) -> None:
    # val is inside trainval here (VOC's own layout): training on trainval leaves val out.
    config = smoke_config(
        tmp_path, "data.synthetic.num_val=4", "data.val_sets=[[2007, val]]",
        "data.test_sets=[[2007, test]]",
    )  # fmt: skip
    splits = load_splits(config.data)
    assert _ids(splits.val) == [f"{i:06d}" for i in range(13, 17)]
    assert _ids(splits.train) == [f"{i:06d}" for i in range(1, 13)]
    assert splits.selection is splits.val
    assert splits.selection_name == "val"
    assert len(splits.test) == 4
    assert not set(_ids(splits.test)) & set(_ids(splits.val))


def test_val_fraction_carves_the_train_sets_by_image_id(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "data.val_fraction=0.25")
    splits = load_splits(config.data)
    everything = _ids(load_splits(smoke_config(tmp_path).data).train)
    assert 1 <= len(splits.val) <= 8  # about a quarter of 16
    assert sorted(_ids(splits.train) + _ids(splits.val)) == sorted(everything)
    assert not set(_ids(splits.train)) & set(_ids(splits.val))
    # The carve is by each image's own id: the same images again, and a larger share keeps them.
    again = load_splits(smoke_config(tmp_path, "data.val_fraction=0.25").data)
    larger = load_splits(smoke_config(tmp_path, "data.val_fraction=0.6").data)
    assert _ids(again.val) == _ids(splits.val)
    assert set(_ids(splits.val)) < set(_ids(larger.val))


def test_without_a_validation_split_a_run_selects_on_the_test_sets(tmp_path: Path) -> None:
    splits = load_splits(smoke_config(tmp_path).data)
    assert splits.val == []
    assert splits.selection is splits.test
    assert splits.selection_name == "test"


def test_a_validation_split_of_every_training_image_is_refused(tmp_path: Path) -> None:
    config = smoke_config(tmp_path, "data.val_sets=[[2007, trainval]]")
    with pytest.raises(InputError, match="validation split holds every training image"):
        load_splits(config.data)


def test_fit_measures_its_map_on_the_validation_split(tmp_path: Path) -> None:
    # The smoke model memorises its 12 training images; on 4 images it never saw it scores lower.
    config = smoke_config(
        tmp_path, "data.synthetic.num_val=4", "data.val_sets=[[2007, val]]", "train.epochs=12",
    )  # fmt: skip
    splits = load_splits(config.data)
    result = _fit_into(tmp_path / "run", config, splits)
    on_train = Splits(splits.train, splits.train, splits.classes)
    from yolov2.pipeline import evaluate_model

    seen = evaluate_model(result.model, config, on_train)["map"]
    held_out = evaluate_model(result.model, config, splits)["map"]
    assert result.final["map"] == pytest.approx(held_out)
    assert held_out < seen
