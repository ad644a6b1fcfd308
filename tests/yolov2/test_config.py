"""Experiment files: defaults, a full file, dotted overrides, one-line errors, paths, digest, resolved copy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from yolov2.config import (
    PruneConfig,
    Searched,
    SyntheticConfig,
    TrainConfig,
    cache_location,
    config_from_record,
    default_cache,
    load_config,
    write_resolved,
)
from yolov2.errors import InputError
from yolov2.loss import LossConfig

FULL_YAML = """\
name: voc-small
data:
  root: data/VOCdevkit
  synthetic: {num_trainval: 8, num_test: 4, seed: 3}
  train_sets: [["2007", trainval], ["2012", trainval]]
  test_sets: [["2007", test]]
  classes: [cat, dog]
  input_size: 320
  letterbox: true
  augment: {jitter: 0.1, hue: 0.05, saturation: 1.2, exposure: 1.3, flip: false}
  workers: 0
model:
  family: yolov2-tiny
  width: 0.5
  anchors: [[1.0, 2.0], [3.0, 4.0]]
  darknet: {cfg: darknet/yolov2.cfg, weights: darknet/yolov2.weights}
loss:
  coord_scale: 2.0
  object_scale: 4.0
  noobject_scale: 0.5
  class_scale: 1.5
  thresh: 0.7
  rescore: false
train:
  epochs: 3
  batch_size: 4
  lr: 0.002
  schedule: steps
  steps: [0.5, 0.75]
  scales: [0.1, 0.5]
  multiscale: [288, 320, 352]
  amp: false
  device: cpu
prune:
  method: filter
  ratios: [0.1, 0.2, 0.3]
  criterion: bn
finetune:
  epochs: 2
  lr: 0.0001
search:
  num_samples: 40
  sampler: nsga2
  gpus_per_trial: 0.5
  cost: gflops
  space:
    prune.ratios: {groups: layer, low: 0.1, high: 0.8}
    prune.method: {choices: [weight, filter]}
    prune.scope: {choices: [layer, global], when: {prune.method: weight}}
    finetune.epochs: {low: 2, high: 6, integer: true}
    finetune_loss.noobject_scale: {low: 0.5, high: 2.0}
"""


def _write(tmp_path: Path, text: str, name: str = "experiment.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- loading --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "{}\n", "# only a comment\n"])
def test_empty_file_gives_defaults(tmp_path: Path, text: str) -> None:
    config = load_config(_write(tmp_path, text))
    assert config.train == TrainConfig()
    assert config.finetune == TrainConfig(epochs=5, lr=1e-4, burn_in=0)
    assert config.prune == PruneConfig()
    assert config.loss == LossConfig()
    assert config.name == "experiment"
    assert config.cache_dir == default_cache().resolve()
    assert config.data.root == config.cache_dir / "synthetic" / "VOCdevkit"
    assert config.data.input_size == 416
    assert config.data.class_names()[:2] == ["aeroplane", "bicycle"]
    assert len(config.data.class_names()) == 20
    assert config.model.family == "yolov2"
    assert config.model.darknet is None
    assert config.train.lr == 1e-3
    assert config.train.epochs == 10
    assert config.finetune.lr == 1e-4
    assert config.finetune.epochs == 5
    assert config.prune.method == "none"
    assert config.loss.object_scale == 5.0


def test_full_file(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL_YAML, "experiments/voc.yaml")
    config = load_config(path)
    assert config.name == "voc-small"
    assert config.data.root == tmp_path / "experiments" / "data" / "VOCdevkit"
    assert config.data.synthetic == SyntheticConfig(num_trainval=8, num_test=4, seed=3)
    assert config.data.train_sets == [("2007", "trainval"), ("2012", "trainval")]
    assert config.data.class_names() == ["cat", "dog"]
    assert config.data.input_size == 320
    assert config.data.augment.flip is False
    assert config.data.augment.saturation == 1.2
    assert config.model.family == "yolov2-tiny"
    assert config.model.anchors == [(1.0, 2.0), (3.0, 4.0)]
    assert config.model.darknet is not None
    assert config.model.darknet.cfg == tmp_path / "experiments" / "darknet" / "yolov2.cfg"
    assert config.model.darknet.weights == tmp_path / "experiments" / "darknet" / "yolov2.weights"
    assert config.loss.coord_scale == 2.0
    assert config.loss.rescore is False
    assert config.train.schedule == "steps"
    assert config.train.scales == [0.1, 0.5]
    assert config.train.multiscale == [288, 320, 352]
    assert config.prune == PruneConfig(method="filter", ratios=[0.1, 0.2, 0.3], criterion="bn")
    assert config.finetune == TrainConfig(epochs=2, lr=0.0001)
    assert (config.search.num_samples, config.search.sampler) == (40, "nsga2")
    assert config.search.gpus_per_trial == 0.5
    assert config.search.cost == "gflops"
    space = config.search.space
    assert list(space) == [
        "prune.ratios",
        "prune.method",
        "prune.scope",
        "finetune.epochs",
        "finetune_loss.noobject_scale",
    ]
    assert space["prune.ratios"] == Searched(groups="layer", low=0.1, high=0.8)
    assert space["prune.method"].kind == "categorical"
    assert space["prune.scope"].when == {"prune.method": "weight"}
    assert space["finetune.epochs"].kind == "int"
    assert space["finetune_loss.noobject_scale"] == Searched(low=0.5, high=2.0)


@pytest.mark.parametrize(
    ("overrides", "attribute", "expected"),
    [
        (["train.lr=1e-4"], ("train", "lr"), 1e-4),
        (["train.lr=0.01", "train.lr=0.02"], ("train", "lr"), 0.02),  # the last one wins
        (["data.classes=[a,b]"], ("data", "classes"), ["a", "b"]),
        (["data.classes=synthetic"], ("data", "classes"), "synthetic"),
        (["prune.ratios=[0.1,0.2]"], ("prune", "ratios"), [0.1, 0.2]),
        (["prune.method=weight", "prune.ratio=0.5"], ("prune", "ratio"), 0.5),
        (["data.synthetic.seed=7"], ("data", "synthetic"), SyntheticConfig(seed=7)),
        (["name=other"], ("name",), "other"),
        (["train.multiscale=null"], ("train", "multiscale"), None),
        (["finetune.epochs=0"], ("finetune", "epochs"), 0),
        (["loss.rescore=false"], ("loss", "rescore"), False),
        (["model.width=0.25"], ("model", "width"), 0.25),
    ],
)
def test_dotted_overrides(
    tmp_path: Path, overrides: list[str], attribute: tuple[str, ...], expected: object
) -> None:
    config: object = load_config(_write(tmp_path, "train:\n  lr: 0.005\n"), overrides)
    for name in attribute:
        config = getattr(config, name)
    assert config == expected


def test_override_replaces_a_file_value_and_keeps_the_rest(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, FULL_YAML), ["train.lr=1e-4", "data.input_size=64"])
    assert config.train.lr == 1e-4
    assert config.data.input_size == 64
    assert config.train.epochs == 3
    assert config.data.classes == ["cat", "dog"]


# --- one-line errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "overrides", "key", "problem"),
    [
        ("bogus: 1\n", [], "bogus", "unknown key"),
        ("train:\n  lrr: 0.1\n", [], "train.lrr", "unknown key"),
        ("", ["data.augment.blur=1"], "data.augment.blur", "unknown key"),
        ("train:\n  epochs: ten\n", [], "train.epochs", "valid integer"),
        ("train:\n  lr: [1]\n", [], "train.lr", "valid number"),
        ("data:\n  letterbox: maybe\n", [], "data.letterbox", "valid boolean"),
        ("", ["prune.ratio=1.0"], "prune.ratio", "less than 1"),
        ("", ["prune.ratio=-0.1"], "prune.ratio", "greater than or equal to 0"),
        ("", ["prune.ratios=[0.1,1.0]"], "prune.ratios", "every ratio must be in [0, 1)"),
        ("", ["prune.method=weight"], "prune", "needs ratio or ratios"),
        ("", ["prune.ratio=0.1", "prune.ratios=[0.1]"], "prune", "either ratio or ratios"),
        ("train:\n  steps: [0.5]\n", [], "train", "steps and scales need the same length"),
        ("", ["finetune.steps=[0.9,0.5]"], "finetune", "increasing fractions"),
        ("", ["train.multiscale=[320,300]"], "train", "multiples of 32"),
        ("data:\n  input_size: 400\n", [], "data.input_size", "multiple of 32"),
        ("", ["data.input_size=0"], "data.input_size", "greater than 0"),
        ("", ["data.classes=[a,a]"], "data.classes", "without repeats"),
        ("", ["model.family=yolov3"], "model.family", "'yolov2' or 'yolov2-tiny'"),
        ("", ["name=a b"], "name", "should match pattern"),
        ("", ["model.darknet.cfg=x.cfg"], "model.darknet.weights", "Field required"),
        ("", ["model.anchors=[[1,0]]"], "model.anchors", "positive (w, h)"),
        ("", ["search.num_samples=0"], "search.num_samples", "greater than or equal to 1"),
        ("", ["search.sampler=grid"], "search.sampler", "'tpe', 'nsga2', 'gp' or 'random'"),
        ("", ["search.sync_every_s=-1"], "search.sync_every_s", "greater than or equal to 0"),
        ("", ["search.checkpoint_every=0"], "search.checkpoint_every", "greater than or equal"),
        ("", ["search.cost=params"], "search.cost", "'size_mb', 'gflops' or 'latency_ms'"),
        ("", ["search.known_points=[1.0]"], "search.known_points.0", "less than 1"),
        ("", ["search.space={}"], "search.space", "the search space is empty"),
        ("", ["search.space={x: {low: 0.5, high: 0.2}}"], "search.space.x", "low must be"),
        ("", ["search.space={x: {low: 0, high: 1, log: true}}"], "search.space.x", "low > 0"),
        ("", ["search.space={x: {low: 0, high: 1.5, integer: true}}"], "search.space.x", "whole"),
        ("", ["search.space={x: {choices: [a, a]}}"], "search.space.x", "without repeats"),
        ("", ["search.space={x: {choices: [a], low: 1}}"], "search.space.x", "not both"),
        ("", ["search.space={x: {low: 1}}"], "search.space.x", "give low and high"),
        ("", ["search.space={x: {groups: stage, low: 0, high: 1}}"], "search.space", "groups"),
        ("", ["search.space={prune.ratios: {low: 0, high: 0.5}}"], "search.space", "groups"),
        (
            "",
            ["search.space={x: {low: 1, high: 2, depth: 3}}"],
            "search.space.x.depth",
            "unknown key",
        ),
    ],
)
def test_bad_values_are_one_line_naming_file_and_key(
    tmp_path: Path, text: str, overrides: list[str], key: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as error:
        load_config(path, overrides)
    message = str(error.value)
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("train: [unclosed\n", "not valid YAML"),
        ("train:\n  lr: 1\n lr: 2\n", "not valid YAML"),
        ("- a\n- b\n", "an experiment file is a mapping of sections"),
        ("just a string\n", "an experiment file is a mapping of sections"),
    ],
)
def test_unreadable_files_are_one_line_naming_the_file(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(InputError) as error:
        load_config(path)
    message = str(error.value)
    assert message.startswith(f"{path}: ")
    assert problem in message
    assert "\n" not in message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(InputError, match="no such experiment file") as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("override", "problem"),
    [
        ("train.lr", "--set 'train.lr': expected key.sub=value"),
        ("=3", "--set '=3': expected key.sub=value"),
        ("train.lr.x=1", "--set 'train.lr.x=1': lr is not a section"),
        (
            "prune.ratios=[0.1,0.2",  # was the string '[0.1,0.2', then a type error or worse
            "--set 'prune.ratios=[0.1,0.2': the value is not valid YAML (expected ',' or ']', "
            "but got '<stream end>'); quote a string, e.g. key='\"text\"'",
        ),
        (
            "data.root=@home",
            "--set 'data.root=@home': the value is not valid YAML (found character '@' that "
            "cannot start any token); quote a string, e.g. key='\"text\"'",
        ),
    ],
)
def test_malformed_overrides(tmp_path: Path, override: str, problem: str) -> None:
    with pytest.raises(InputError) as error:
        load_config(_write(tmp_path, "train:\n  lr: 0.1\n"), [override])
    assert str(error.value) == problem


# --- paths ----------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = "data:\n  root: ../voc\nmodel:\n  darknet: {weights: w/backbone.conv.23}\n"
    _write(tmp_path, text, "experiments/exp.yaml")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../../experiments/exp.yaml"))
    assert config.data.root == tmp_path / "voc"
    assert config.data.root.is_absolute()
    assert config.model.darknet is not None
    assert config.model.darknet.weights == tmp_path / "experiments" / "w" / "backbone.conv.23"
    assert config.model.darknet.cfg is None


def test_absolute_and_home_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = f"data:\n  root: {tmp_path / 'abs'}\nmodel:\n  darknet: {{weights: ~/w.weights}}\n"
    config = load_config(_write(tmp_path, text, "experiments/exp.yaml"))
    assert config.data.root == tmp_path / "abs"
    assert config.model.darknet is not None
    assert config.model.darknet.weights == tmp_path / "home" / "w.weights"


def test_paths_given_by_override_are_relative_to_the_config_folder(tmp_path: Path) -> None:
    path = _write(tmp_path, "", "experiments/exp.yaml")
    config = load_config(path, ["data.root=voc"])
    assert config.data.root == tmp_path / "experiments" / "voc"


# --- the cache ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "xdg", "expected"),
    [
        ("/ours", "/xdg", ("/ours", "PRUNE_SEARCH_CACHE")),
        (None, "/xdg", ("/xdg/prune-search", "XDG_CACHE_HOME")),
        (None, None, ("home/.cache/prune-search", "default")),
        ("", "", ("home/.cache/prune-search", "default")),  # set but empty: as if unset
        (None, "rel/xdg", ("home/.cache/prune-search", "default")),  # XDG: relative is invalid
    ],
)
def test_cache_location(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    ours: str | None,
    xdg: str | None,
    expected: tuple[str, str],
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for name, value in (("PRUNE_SEARCH_CACHE", ours), ("XDG_CACHE_HOME", xdg)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert cache_location() == (tmp_path / expected[0], expected[1])
    assert default_cache() == tmp_path / expected[0]


def test_the_default_cache_follows_the_environment_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _write(tmp_path, "")
    monkeypatch.delenv("PRUNE_SEARCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = load_config(path)
    assert config.cache_dir == tmp_path / "xdg" / "prune-search"
    assert config.data.root == tmp_path / "xdg" / "prune-search" / "synthetic" / "VOCdevkit"
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(tmp_path / "ours"))
    assert load_config(path).data.root == tmp_path / "ours" / "synthetic" / "VOCdevkit"


def test_cache_variable_in_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(tmp_path / "ours"))
    text = "data:\n  root: ${cache}/synthetic-v2/VOCdevkit\nmodel:\n  darknet:\n    weights: ${cache}/w\n"
    path = _write(tmp_path, text, "experiments/exp.yaml")
    config = load_config(path)
    assert config.data.root == tmp_path / "ours" / "synthetic-v2" / "VOCdevkit"
    assert config.model.darknet is not None
    assert config.model.darknet.weights == tmp_path / "ours" / "w"
    # The experiment's own cache_dir (relative to its file) decides, and so does an override.
    moved = load_config(path, ["cache_dir=../scratch"])
    assert moved.cache_dir == tmp_path / "scratch"
    assert moved.data.root == tmp_path / "scratch" / "synthetic-v2" / "VOCdevkit"
    assert load_config(path, ["data.root=${cache}"]).data.root == tmp_path / "ours"
    assert write_resolved(config, tmp_path / "run").read_text().count("${cache}") == 0


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("data.root=data/${cache}/x", "data.root"),
        ("data.root=${CACHE}/x", "data.root"),
        ("cache_dir=${cache}/x", "cache_dir"),
        ("model.darknet.weights=w/${cache}", "model.darknet.weights"),
    ],
)
def test_cache_variable_elsewhere_is_an_error(tmp_path: Path, override: str, key: str) -> None:
    path = _write(tmp_path, "")
    with pytest.raises(
        InputError, match=rf"experiment\.yaml: {key}: .*only a leading \$\{{cache\}}/"
    ):
        load_config(path, [override])


def test_a_synthetic_root_left_in_the_old_cache_is_kept_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("PRUNE_SEARCH_CACHE", raising=False)
    text = "data:\n  root: ~/.cache/prune-search/synthetic-v2/VOCdevkit\n  synthetic: {}\n"
    config = load_config(_write(tmp_path, text))
    assert (
        config.data.root
        == tmp_path / "home" / ".cache" / "prune-search" / "synthetic-v2" / "VOCdevkit"
    )
    assert "write data.root as ${cache}/synthetic-v2/VOCdevkit" in caplog.text
    caplog.clear()
    monkeypatch.delenv("XDG_CACHE_HOME")
    load_config(_write(tmp_path, text))  # the cache is there too: nothing to say
    assert caplog.text == ""


# --- a recorded experiment --------------------------------------------------------------------


def test_config_from_record_applies_overrides_to_a_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(_write(tmp_path, FULL_YAML, "experiments/voc.yaml"))
    record = config.model_dump(mode="json")
    monkeypatch.chdir(tmp_path)
    again = config_from_record(record, ["data.root=moved/VOCdevkit", "data.workers=3"], "ck")
    assert again.data.root == tmp_path / "moved" / "VOCdevkit"  # from the current folder
    assert again.data.workers == 3
    assert again.model.darknet == config.model.darknet  # recorded absolute paths stay
    assert config_from_record(record, None, "ck") == config
    assert record["data"]["workers"] == 0  # the record itself is untouched
    with pytest.raises(
        InputError, match=r"^ck: data\.input_size: Input should be a multiple of 32"
    ):
        config_from_record(record, ["data.input_size=33"], "ck")


# --- digest and the resolved copy -----------------------------------------------------------------


def test_digest_is_stable(tmp_path: Path) -> None:
    a = load_config(_write(tmp_path, FULL_YAML, "a/x.yaml"))
    b = load_config(_write(tmp_path, FULL_YAML, "a/y.yaml"))
    reordered = "\n".join(reversed(FULL_YAML.split("\nprune:\n")))  # prune first, same values
    c = load_config(_write(tmp_path, "prune:\n" + reordered, "a/z.yaml"))
    assert c == a
    for section in ((), ("train",), ("data", "model")):
        assert a.digest(*section) == b.digest(*section) == c.digest(*section)
    assert len(a.digest()) == 16
    int(a.digest(), 16)  # hexadecimal


@pytest.mark.parametrize(
    ("override", "changed", "unchanged"),
    [
        ("train.lr=0.5", ["train"], ["data", "model", "prune", "finetune", "loss"]),
        ("prune.ratios=[0.5]", ["prune"], ["data", "model", "train", "finetune", "loss"]),
        ("data.input_size=416", ["data"], ["model", "train", "prune", "finetune", "loss"]),
        ("loss.thresh=0.5", ["loss"], ["data", "model", "train", "prune", "finetune"]),
        ("finetune.epochs=9", ["finetune"], ["data", "model", "train", "prune", "loss"]),
    ],
)
def test_digest_changes_with_its_sections_only(
    tmp_path: Path, override: str, changed: list[str], unchanged: list[str]
) -> None:
    path = _write(tmp_path, FULL_YAML)
    base, other = load_config(path), load_config(path, [override])
    assert base.digest() != other.digest()
    for name in changed:
        assert base.digest(name) != other.digest(name)
    for name in unchanged:
        assert base.digest(name) == other.digest(name)
    assert base.digest(*unchanged) == other.digest(*unchanged)


def test_generated_data_is_known_by_its_recipe_and_real_data_by_its_place(tmp_path: Path) -> None:
    """A cluster's nodes cache generated data where each likes: one digest for all of them."""
    path = _write(tmp_path, "data:\n  synthetic: {num_trainval: 8, num_test: 4}\n")
    here = load_config(path, ["data.root=${cache}/synthetic/VOCdevkit", "cache_dir=/node/a"])
    there = load_config(path, ["data.root=${cache}/synthetic/VOCdevkit", "cache_dir=/node/b"])
    assert here.data.root != there.data.root
    assert here.digest("data") == there.digest("data")
    assert here.digest("data") != load_config(path, ["data.synthetic.seed=1"]).digest("data")
    real = _write(tmp_path, "data:\n  root: voc\n", "real.yaml")
    assert load_config(real).digest("data") != load_config(real, ["data.root=voc2"]).digest("data")


@pytest.mark.parametrize("text", ["", FULL_YAML])
def test_write_resolved_loads_back_equal(tmp_path: Path, text: str) -> None:
    config = load_config(_write(tmp_path, text, "experiments/exp.yaml"), ["train.lr=3e-4"])
    path = write_resolved(config, tmp_path / "run" / "out")
    assert path == tmp_path / "run" / "out" / "config.yaml"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.yaml"]
    again = load_config(path)
    assert again == config
    assert again.digest() == config.digest()


EXPERIMENTS = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_the_shipped_experiments_load(path: Path) -> None:
    config = load_config(path)
    assert config.name == path.stem
    assert config.data.root.is_absolute()


def test_the_experiments_folder_holds_the_three_documented_ones() -> None:
    assert {p.name for p in EXPERIMENTS} >= {"default.yaml", "smoke.yaml", "voc2007.yaml"}


# --- what shapes the weights and what is a run-time knob -----------------------------------------

# Every field of every section, as the test's own literal list: a new field fails here until it is
# put on one side or the other (RUNTIME_KNOBS in config.py, or this list of fields that shape).
SHAPING_FIELDS = {
    "ExperimentConfig": {"data", "model", "loss", "train", "prune", "finetune", "finetune_loss"},
    "DataConfig": {
        "root",
        "synthetic",
        "train_sets",
        "val_sets",
        "val_fraction",
        "test_sets",
        "classes",
        "input_size",
        "letterbox",
        "augment",
    },
    "TrainConfig": {
        "epochs",
        "batch_size",
        "optimizer",
        "lr",
        "momentum",
        "weight_decay",
        "burn_in",
        "schedule",
        "steps",
        "scales",
        "multiscale",
        "clip_grad_norm",
        "amp",
        "channels_last",
        "compile",
        "seed",
        "seen",
    },
    "SyntheticConfig": {
        "num_trainval",
        "num_val",
        "num_test",
        "seed",
        "objects_per_image",
        "object_size",
        "max_rotation_deg",
        "max_aspect",
        "clutter",
        "noise",
    },
    "AugmentConfig": {"jitter", "hue", "saturation", "exposure", "flip"},
    "DarknetInit": {"cfg", "weights"},
    "ModelConfig": {"family", "width", "anchors", "darknet"},
    "LossConfig": {
        "coord_scale",
        "object_scale",
        "noobject_scale",
        "class_scale",
        "thresh",
        "rescore",
        "prior_warmup_images",
    },
    "PruneConfig": {
        "method",
        "ratio",
        "ratios",
        "scope",
        "criterion",
        "min_channels",
        "round_to",
        "iterations",
    },
}


# The search section is a run-time knob as a whole (RUNTIME_KNOBS[ExperimentConfig]): its fields,
# listed so that a new one is a decision too.
SEARCH_FIELDS = {
    "num_samples",
    "sampler",
    "seed",
    "cost",
    "max_concurrent",
    "cpus_per_trial",
    "gpus_per_trial",
    "max_failures",
    "placement_timeout",
    "sync_every_s",
    "checkpoint_every",
    "known_points",
    "early_stop",
    "warm_start",
    "warm_start_budgets",
    "screen",
    "known_at",
    "space",
}


def test_the_search_section_is_a_run_time_knob_with_the_fields_listed() -> None:
    from yolov2 import config as config_module

    assert "search" in config_module.RUNTIME_KNOBS[config_module.ExperimentConfig]
    assert set(config_module.SearchConfig.model_fields) == SEARCH_FIELDS
    search = config_module.SearchConfig()
    assert (search.sync_every_s, search.checkpoint_every) == (60.0, 3)


@pytest.mark.parametrize("name", sorted(SHAPING_FIELDS))
def test_every_field_is_either_shaping_or_a_run_time_knob(name: str) -> None:
    from yolov2 import config as config_module

    section = getattr(config_module, name)
    knobs = config_module.RUNTIME_KNOBS.get(section, frozenset())
    assert not knobs & SHAPING_FIELDS[name]
    assert knobs | SHAPING_FIELDS[name] == set(section.model_fields)


def test_a_run_time_knob_leaves_every_digest_alone(tmp_path: Path) -> None:
    path = _write(tmp_path, FULL_YAML)
    base = load_config(path)
    knobs = ["data.workers=7", "train.eval_every=3", "finetune.device=cpu", "name=renamed"]
    other = load_config(path, knobs)
    assert other != base
    assert other.digest() == base.digest()
    assert other.digest("data", "train", "finetune") == base.digest("data", "train", "finetune")


def test_every_section_that_shapes_the_weights_is_listed() -> None:
    import typing

    from pydantic import BaseModel

    from yolov2.config import ExperimentConfig, SearchConfig

    def sections(annotation: Any) -> set[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found = {annotation}
            for field in annotation.model_fields.values():
                found |= sections(field.annotation)
            return found
        return {s for arg in typing.get_args(annotation) for s in sections(arg)}

    reachable = sections(ExperimentConfig) - sections(SearchConfig)  # the search shapes no weights
    assert {s.__name__ for s in reachable} == set(SHAPING_FIELDS)


@pytest.mark.parametrize(
    ("override", "changes"),
    [
        ("data.val_fraction=0.0", False),  # the values before validation splits existed
        ("data.val_sets=[]", False),
        ("data.val_fraction=0.2", True),
        ("data.val_sets=[[2007, val]]", True),
    ],
)
def test_a_validation_split_keys_the_weights_only_when_there_is_one(
    tmp_path: Path, override: str, changes: bool
) -> None:
    path = _write(tmp_path, FULL_YAML)
    base, other = load_config(path), load_config(path, [override])
    assert (other.digest("data") != base.digest("data")) is changes


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.val_fraction=0.2", "data.val_sets=[[2007, val]]"], "not both"),
        (["data.val_fraction=1.0"], "val_fraction"),
        (["data.val_fraction=-0.1"], "val_fraction"),
    ],
)
def test_a_validation_split_is_one_of_sets_or_a_fraction(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    with pytest.raises(InputError, match=message):
        load_config(_write(tmp_path, FULL_YAML), overrides)
