"""The search space: every path, range, condition and ratio count checked before Ray; a sample
applied to the experiment; the same columns for every trial; a real Optuna define-by-run study."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import optuna
import pytest

from search.space import build_space, sample
from tests.search.conftest import SMOKE
from yolov2.config import load_config
from yolov2.errors import InputError

SPACE = """
search:
  space:
    prune.ratios: {groups: stage, low: 0.0, high: 0.6}
    prune.method: {choices: [weight, filter]}
    prune.scope: {choices: [layer, global], when: {prune.method: weight}}
    prune.criterion: {choices: [l1, bn], when: {prune.method: filter}}
    finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    finetune.epochs: {low: 1, high: 3, integer: true}
    finetune_loss.coord_scale: {low: 0.5, high: 2.0}
"""


def _config(tmp_path: Path, space: str = SPACE, *overrides: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "experiment.yaml"
    path.write_text(SMOKE.read_text() + space)
    return load_config(path, list(overrides)), str(path)


def test_a_stage_space_samples_one_ratio_per_stage_and_shows_one_per_layer(tmp_path: Path) -> None:
    config, source = _config(tmp_path)
    space = build_space(config, source)
    assert space.ratio_names == tuple(f"ratio.stage{i}" for i in range(1, 7))
    assert space.layers == 22
    assert space.columns[:6] == (
        "prune.method",
        "prune.scope",
        "prune.criterion",
        "finetune.lr",
        "finetune.epochs",
        "finetune_loss.coord_scale",
    )
    assert space.columns[6:12] == space.ratio_names
    assert space.columns[12:] == tuple(f"ratio.layer{i:02d}" for i in range(1, 23))
    assert not space.touches_dense


def test_a_sample_becomes_the_trial_experiment(tmp_path: Path) -> None:
    config, source = _config(tmp_path)
    space = build_space(config, source)
    params = {
        **{f"ratio.stage{i}": 0.1 * i for i in range(1, 7)},
        "prune.method": "filter",
        "prune.criterion": "bn",
        "finetune.lr": 0.003,
        "finetune.epochs": 3,
        "finetune_loss.coord_scale": 1.5,
    }
    trial = space.apply(config, params)
    assert trial.prune.ratio is None
    assert trial.prune.ratios == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert (trial.prune.method, trial.prune.criterion) == ("filter", "bn")
    assert (trial.finetune.lr, trial.finetune.epochs) == (0.003, 3)
    # the finetune loss starts as a copy of `loss`: the dense stage keeps its own
    assert trial.finetune_loss is not None
    assert trial.finetune_loss.coord_scale == 1.5
    assert trial.finetune_loss.object_scale == config.loss.object_scale
    assert trial.loss == config.loss
    assert trial.digest("data", "model", "loss", "train") == config.digest(
        "data", "model", "loss", "train"
    )
    row = space.row(config, params)
    assert row["prune.scope"] is None  # not sampled for filter pruning
    assert row["prune.criterion"] == "bn"
    assert row["ratio.stage3"] == pytest.approx(0.3)
    assert row["ratio.layer01"] == pytest.approx(0.1)
    assert row["ratio.layer22"] == pytest.approx(0.6)
    assert list(row) == list(space.columns)


def test_ratios_all_zero_are_the_dense_model(tmp_path: Path) -> None:
    config, source = _config(tmp_path)
    space = build_space(config, source)
    (dense, point) = space.known_points(config, [0.0, 0.3])
    # The other searched keys at the experiment's own values: filter (so no scope), its criterion,
    # its lr and the loss's coord_scale; its 6 finetune epochs lie outside [1, 3]: sampled.
    own = {
        "prune.method": "filter",
        "prune.criterion": config.prune.criterion,
        "finetune.lr": 0.004,
        "finetune_loss.coord_scale": config.loss.coord_scale,
    }
    assert dense == {**dict.fromkeys(space.ratio_names, 0.0), **own}
    assert point == {**dict.fromkeys(space.ratio_names, 0.3), **own}
    trial = space.apply(config, {**dense, "prune.method": "weight", "prune.scope": "layer"})
    assert trial.prune.method == "none"
    row = space.row(config, {**dense, "prune.method": "weight", "prune.scope": "layer"})
    assert row["prune.method"] == "none"
    assert all(row[f"ratio.layer{i:02d}"] == 0.0 for i in range(1, 23))


def test_optuna_samples_the_space_by_define_by_run(tmp_path: Path) -> None:
    config, source = _config(tmp_path)
    space = build_space(config, source)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0)
    )
    seen_methods = set()
    for _ in range(12):
        trial = study.ask()
        params = partial(sample, space)(trial)
        seen_methods.add(params["prune.method"])
        assert ("prune.scope" in params) == (params["prune.method"] == "weight")
        assert ("prune.criterion" in params) == (params["prune.method"] == "filter")
        assert 1 <= params["finetune.epochs"] <= 3
        assert isinstance(params["finetune.epochs"], int)
        assert 1e-4 <= params["finetune.lr"] <= 1e-2
        assert all(0 <= params[n] <= 0.6 for n in space.ratio_names)
        assert list(space.row(config, params)) == list(space.columns)
        study.tell(trial, [0.5, 1.0])
    assert seen_methods == {"weight", "filter"}


@pytest.mark.parametrize(
    ("space", "problem"),
    [
        (
            "    finetune.lrr: {low: 0.1, high: 0.2}\n",
            r"finetune\.lrr: finetune\.lrr is not a field",
        ),
        ("    finetune: {low: 0.1, high: 0.2}\n", r"finetune is a section"),
        (
            "    finetune.lr: {low: 0.1, high: 2.0}\n",
            r"finetune\.lr: 2\.0 is not a valid finetune\.lr",
        ),
        ("    finetune.epochs: {low: -1, high: 3, integer: true}\n", r"-1 is not a valid"),
        ("    prune.criterion: {choices: [l1, l3]}\n", r"'l3' is not a valid prune\.criterion"),
        ("    loss.thresh: {low: 0.5, high: 1.5}\n", r"1\.5 is not a valid loss\.thresh"),
        ("    prune.ratios: {groups: layer, low: 0.2, high: 1.0}\n", r"lie in \[0, 1\)"),
        (
            "    prune.scope: {choices: [layer], when: {prune.method: weight}}\n",
            r"when prune\.method: not a choice searched above",
        ),
        (
            "    prune.method: {choices: [filter]}\n"
            "    prune.scope: {choices: [layer], when: {prune.method: weight}}\n",
            r"'weight' is not one of \['filter'\]",
        ),
    ],
)
def test_a_space_that_does_not_fit_is_one_line_naming_file_and_key(
    tmp_path: Path, space: str, problem: str
) -> None:
    config, source = _config(tmp_path, "search:\n  space:\n" + space)
    with pytest.raises(InputError, match=problem) as caught:
        build_space(config, source)
    message = str(caught.value)
    assert message.startswith(f"{source}: ")
    assert "\n" not in message


def test_a_ratio_count_that_does_not_fit_the_architecture_is_refused_before_ray(
    tmp_path: Path,
) -> None:
    config, source = _config(
        tmp_path, "search:\n  space:\n    finetune.lr: {low: 0.001, high: 0.01}\n",
        "prune.ratio=null", "prune.ratios=[0.1,0.2,0.3]",
    )  # fmt: skip
    with pytest.raises(InputError, match=r"prune: expected 1, 6 \(per stage\) or 22 \(per layer\)"):
        build_space(config, source)


def test_a_space_over_the_whole_loop_is_marked_as_touching_the_dense_stage(tmp_path: Path) -> None:
    config, source = _config(
        tmp_path, "search:\n  space:\n    loss.coord_scale: {low: 0.5, high: 2}\n"
    )
    space = build_space(config, source)
    assert space.touches_dense
    trial = space.apply(config, {"loss.coord_scale": 1.7})
    assert trial.loss.coord_scale == 1.7
    assert trial.digest("loss") != config.digest("loss")


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_named_sampler_runs_the_space_multi_objective(tmp_path: Path, name: str) -> None:
    from search.tuner import make_sampler

    config, source = _config(tmp_path, SPACE, f"search.sampler={name}", "search.num_samples=8")
    space = build_space(config, source)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(config.search, known=1)
    )
    for number in range(8):
        trial = study.ask()
        params = sample(space, trial)
        ratio = sum(params[n] for n in space.ratio_names) / len(space.ratio_names)
        study.tell(trial, [1 - ratio + 0.01 * number, 1 - ratio])
    assert len(study.best_trials) >= 1
    assert all(t.state.name == "COMPLETE" for t in study.trials)


WARM = "search.warm_start=sensitivity"


@pytest.mark.parametrize(
    ("space", "overrides", "problem"),
    [
        (
            "    finetune.lr: {low: 0.001, high: 0.01}\n",
            (),
            r"search\.warm_start: sensitivity needs prune\.ratios in search\.space",
        ),
        (
            "    prune.ratios: {groups: uniform, low: 0.0, high: 0.5}\n",
            (),
            r"search\.warm_start: sensitivity prunes each stage or layer alone, but prune\.ratios "
            r"has groups uniform",
        ),
        (
            "    prune.ratios: {groups: stage, low: 0.0, high: 0.5}\n",
            ("prune.method=weight",),
            r"search\.warm_start: its budgets are GFLOPs to remove, which filter pruning removes; "
            r"prune\.method is weight",
        ),
        (
            "    prune.ratios: {groups: layer, low: 0.0, high: 0.5}\n"
            "    loss.coord_scale: {low: 0.5, high: 2.0}\n",
            (),
            r"search\.warm_start: sensitivity is measured on the experiment's one dense model, "
            r"but search\.space changes the dense stage \(loss\.coord_scale\)",
        ),
    ],
)
def test_a_warm_start_the_space_cannot_give_is_one_line_before_ray(
    tmp_path: Path, space: str, overrides: tuple[str, ...], problem: str
) -> None:
    config, source = _config(tmp_path, "search:\n  space:\n" + space, WARM, *overrides)
    with pytest.raises(InputError, match=problem) as caught:
        build_space(config, source)
    assert str(caught.value).startswith(f"{source}: ")
    assert "\n" not in str(caught.value)


def test_a_warm_start_over_stages_is_accepted_and_its_budgets_checked(tmp_path: Path) -> None:
    config, source = _config(tmp_path, SPACE, WARM)
    assert config.search.warm_start_budgets == [0.3, 0.5, 0.7]
    assert build_space(config, source).ratio_names == tuple(f"ratio.stage{i}" for i in range(1, 7))
    with pytest.raises(InputError, match=r"search\.warm_start_budgets\.1: Input should be less"):
        _config(tmp_path, SPACE, WARM, "search.warm_start_budgets=[0.5, 1.0]")


@pytest.mark.parametrize("name", ["tpe", "nsga2", "gp", "random"])
def test_every_named_sampler_survives_rays_pickle_and_samples_on(tmp_path: Path, name: str) -> None:
    # Ray Tune pickles the searcher, its sampler inside, into tuner.pkl and into every snapshot
    # of the search; Optuna 5.1's NSGA-II holds a threading.Lock, which does not pickle.
    from ray import cloudpickle

    from search.storage import Storage
    from search.tuner import build_tuner, make_sampler

    config, source = _config(tmp_path, SPACE, f"search.sampler={name}", "search.num_samples=8")
    space = build_space(config, source)
    sampler = make_sampler(config.search, known=1)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(5):
        trial = study.ask()
        ratios = [sample(space, trial)[n] for n in space.ratio_names]
        study.tell(trial, [1 - sum(ratios) / 6, 1 - sum(ratios) / 12])
    copy = cloudpickle.loads(cloudpickle.dumps(sampler))
    assert type(copy) is type(sampler)
    study.sampler = copy
    for _ in range(3):
        trial = study.ask()
        assert set(sample(space, trial)) >= set(space.ratio_names)
        study.tell(trial, [0.5, 0.5])
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 8

    directory = tmp_path / "search"
    directory.mkdir()
    build_tuner(config, space, directory, Storage(str(directory)))  # writes tuner.pkl
    assert (directory / "ray" / "tuner.pkl").is_file()


KNOWN_AT = """
search:
  known_points: [0.0, 0.3]
  known_at: {finetune.lr: [0.002, 0.0005], finetune_loss.coord_scale: [1.0, 2.0]}
  space:
    prune.ratios: {groups: stage, low: 0.0, high: 0.6}
    finetune.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    finetune_loss.coord_scale: {low: 0.5, high: 2.0}
"""


def test_known_at_tries_each_known_and_warm_point_at_every_combination(tmp_path: Path) -> None:
    config, source = _config(tmp_path, KNOWN_AT)
    space = build_space(config, source)
    warm = {name: 0.1 * i for i, name in enumerate(space.ratio_names)}
    first = space.first_points(config, [warm, dict.fromkeys(space.ratio_names, 0.3)])
    ratios = [tuple(point[name] for name in space.ratio_names) for point in first]
    # The dense model once (its finetune settings change nothing); 0.3 and the warm point at the
    # 4 combinations, in turn; the warm point equal to a known one is not tried twice.
    assert ratios == [(0.0,) * 6] + [(0.3,) * 6] * 4 + [tuple(warm.values())] * 4
    assert first[0] == {**dict.fromkeys(space.ratio_names, 0.0), "finetune.lr": 0.004,
                        "finetune_loss.coord_scale": config.loss.coord_scale}  # fmt: skip
    settings = [(point["finetune.lr"], point["finetune_loss.coord_scale"]) for point in first[1:5]]
    assert settings == [(0.002, 1.0), (0.002, 2.0), (0.0005, 1.0), (0.0005, 2.0)]
    assert [p["finetune.lr"] for p in first[5:]] == [0.002, 0.002, 0.0005, 0.0005]
    assert config.search.known_at["finetune_loss.coord_scale"] == [1.0, 2.0]


def test_without_known_at_the_first_points_are_the_known_then_the_warm(tmp_path: Path) -> None:
    config, source = _config(tmp_path, KNOWN_AT, "search.known_at={}")
    space = build_space(config, source)
    warm = dict.fromkeys(space.ratio_names, 0.2)
    first = space.first_points(config, [warm])
    assert first == [
        *space.known_points(config, [0.0, 0.3]),
        space.at_defaults(config, warm),
    ]


@pytest.mark.parametrize(
    ("known_at", "problem"),
    [
        ("{prune.ratios: [0.2]}", "search.known_at.prune.ratios: the known points' ratios are search.known_points"),
        ("{finetune.weight_decay: [0.1]}", "search.known_at.finetune.weight_decay: not a key of search.space"),
        ("{finetune.lr: [0.5]}", "search.known_at.finetune.lr: 0.5 is not a value search.space.finetune.lr can give (values in [0.0001, 0.01])"),
        ("{finetune.lr: [fast]}", "search.known_at.finetune.lr: 'fast' is not a value search.space.finetune.lr"),
        ("{prune.scope: [layer]}", "search.known_at.prune.scope: sampled only when {'prune.method': 'weight'}"),
        ("{prune.criterion: [l2]}", "search.known_at.prune.criterion: sampled only when"),
    ],
)  # fmt: skip
def test_a_known_at_the_space_cannot_give_is_one_line(
    tmp_path: Path, known_at: str, problem: str
) -> None:
    config, source = _config(tmp_path, SPACE, f"search.known_at={known_at}")
    with pytest.raises(InputError) as caught:
        build_space(config, source)
    assert str(caught.value).startswith(f"{source}: {problem}")


def test_a_known_at_choice_outside_the_choices_names_them(tmp_path: Path) -> None:
    space = "search:\n  space:\n    prune.ratios: {groups: uniform, low: 0.0, high: 0.6}\n" \
            "    prune.criterion: {choices: [l1, bn]}\n"  # fmt: skip
    config, source = _config(tmp_path, space, "search.known_at={prune.criterion: [l2]}")
    with pytest.raises(InputError, match=r"'l2' is not a value .* \(one of \['l1', 'bn'\]\)"):
        build_space(config, source)


def test_known_at_without_searched_ratios_has_no_points_to_fix(tmp_path: Path) -> None:
    space = "search:\n  space:\n    finetune.lr: {low: 1.0e-4, high: 1.0e-2}\n"
    config, source = _config(tmp_path, space, "search.known_at={finetune.lr: [0.001]}")
    with pytest.raises(InputError, match=r"search\.known_at: there are no known points"):
        build_space(config, source)


LOSS_ORDERS = [
    "    finetune_loss.coord_scale: {low: 0.5, high: 2.0}\n    loss.object_scale: {low: 1.0, high: 9.0}\n",
    "    loss.object_scale: {low: 1.0, high: 9.0}\n    finetune_loss.coord_scale: {low: 0.5, high: 2.0}\n",
]  # fmt: skip


@pytest.mark.parametrize("keys", LOSS_ORDERS, ids=["finetune_loss first", "loss first"])
def test_the_finetune_loss_is_the_trials_loss_whatever_the_key_order(
    tmp_path: Path, keys: str
) -> None:
    space_text = "search:\n  space:\n    prune.ratios: {groups: uniform, low: 0.0, high: 0.6}\n"
    config, source = _config(tmp_path, space_text + keys)
    assert config.finetune_loss is None
    assert config.loss.object_scale == 5.0
    space = build_space(config, source)
    params = {"ratio": 0.3, "finetune_loss.coord_scale": 1.5, "loss.object_scale": 9.0}
    trial = space.apply(config, params)
    assert trial.loss.object_scale == 9.0
    assert trial.finetune_loss is not None
    assert (trial.finetune_loss.object_scale, trial.finetune_loss.coord_scale) == (9.0, 1.5)
    assert trial.finetune_loss.noobject_scale == config.loss.noobject_scale


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("search.known_points=[0.0, 0.3, 0.9]", "a point with ratio 0.9 lies outside search.space.prune.ratios [0, 0.6]"),
        ("search.known_points=[0.1]", "a point with ratio 0.1 lies outside search.space.prune.ratios [0.2, 0.6]"),
    ],
)  # fmt: skip
def test_a_known_point_outside_the_searched_range_is_one_line(
    tmp_path: Path, override: str, problem: str
) -> None:
    low = 0.2 if "0.1]" in override else 0.0
    space_text = (
        f"search:\n  space:\n    prune.ratios: {{groups: uniform, low: {low}, high: 0.6}}\n"
    )
    config, source = _config(tmp_path, space_text, override)
    with pytest.raises(InputError) as caught:
        build_space(config, source)
    assert str(caught.value).startswith(f"{source}: search.known_points: {problem}")


def test_the_dense_point_is_allowed_below_the_range_and_kept(tmp_path: Path) -> None:
    space_text = "search:\n  space:\n    prune.ratios: {groups: stage, low: 0.2, high: 0.6}\n"
    config, source = _config(tmp_path, space_text, "search.known_points=[0.0, 0.3]")
    space = build_space(config, source)
    first = space.first_points(config)
    assert [point[space.ratio_names[0]] for point in first] == [0.0, 0.3]


def test_a_warm_point_outside_the_range_names_the_group(tmp_path: Path) -> None:
    space_text = "search:\n  space:\n    prune.ratios: {groups: stage, low: 0.0, high: 0.6}\n"
    config, source = _config(tmp_path, space_text, "search.known_points=[0.0]")
    space = build_space(config, source)
    inside = dict.fromkeys(space.ratio_names, 0.6)
    space.check_ratios([inside, dict.fromkeys(space.ratio_names, 0.0)], "warm")
    outside = {**inside, "ratio.stage2": 0.65}
    with pytest.raises(InputError, match=r"^warm: a point with ratio.stage2 0.65 lies outside"):
        space.check_ratios([inside, outside], "warm")
