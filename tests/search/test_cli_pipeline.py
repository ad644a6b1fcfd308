"""train, pipeline, prune, eval, predict, compare and export on the smoke experiment, as a user runs them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import onnx
import pytest
import yaml

from tests.console import run_main as _run
from tests.search.test_cli import _assert_one_line_error
from yolov2.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from yolov2.config import load_config
from yolov2.data import read_voc

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One dense training and one filter pipeline of the smoke experiment, shared by the tests."""
    root = tmp_path_factory.mktemp("cli")
    where = [
        "--set",
        f"cache_dir={root / 'cache'}",
        "--set",
        f"data.root={root / 'data' / 'VOCdevkit'}",
    ]
    assert _run(["train", str(SMOKE), *where, "--out", str(root / "dense")]) == 0
    assert _run(["pipeline", str(SMOKE), *where, "--out", str(root / "pruned")]) == 0
    return {
        "root": root,
        "dense": root / "dense" / "model.safetensors",
        "pruned": root / "pruned" / "model.safetensors",
        "voc": root / "data" / "VOCdevkit",
    }


def test_train_writes_a_checkpoint_with_its_config_and_tensorboard(
    trained: dict[str, Path],
) -> None:
    run_dir = trained["dense"].parent
    meta = checkpoint_metadata(trained["dense"])["meta"]
    assert meta["stage"] == "dense"
    assert meta["metrics"]["map"] > 0.5  # the smoke model learns its images
    assert (run_dir / "config.yaml").exists()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_pipeline_writes_every_metric(trained: dict[str, Path]) -> None:
    metrics = json.loads((trained["pruned"].parent / "metrics.json").read_text())
    assert {"map", "map_voc12", "size_mb", "params", "gflops", "latency_ms"} <= set(metrics)
    dense_map = checkpoint_metadata(trained["dense"])["meta"]["metrics"]["map"]
    assert metrics["dense_map"] == pytest.approx(dense_map)  # train and pipeline: one recipe
    assert 0 < metrics["map"] < metrics["dense_map"]  # half the filters, six finetune epochs
    dense, pruned = load_checkpoint(trained["dense"]), load_checkpoint(trained["pruned"])
    assert sum(pruned.arch.widths) < sum(dense.arch.widths)


def test_eval_json_uses_the_data_recorded_in_the_checkpoint(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _run(["eval", str(trained["dense"]), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"map", "map_voc12", "ap"}
    recorded = checkpoint_metadata(trained["dense"])["meta"]["metrics"]
    assert result["map"] == pytest.approx(recorded["map"])
    assert result["map_voc12"] == pytest.approx(recorded["map_voc12"])
    assert result["map"] > 0.5
    assert len(result["ap"]) == 8


def test_eval_with_experiment_reads_that_experiment_s_data(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--set", f"data.root={trained['voc']}", "--set", f"cache_dir={trained['root']}"]
    capsys.readouterr()
    assert _run(["eval", str(trained["dense"]), "--experiment", str(SMOKE), *where, "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    recorded = checkpoint_metadata(trained["dense"])["meta"]["metrics"]
    assert same["map"] == pytest.approx(recorded["map"])
    # The same weights on another image set: the 4 held-out images the model never saw.
    held_out = [*where, "--set", "data.test_sets=[[2007,test]]"]
    assert (
        _run(["eval", str(trained["dense"]), "--experiment", str(SMOKE), *held_out, "--json"]) == 0
    )
    other = json.loads(capsys.readouterr().out)
    assert other["map"] != pytest.approx(recorded["map"])


def test_predict_draws_pngs_and_writes_voc_results_that_eval_dets_scores_as_eval_does(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images = [a.image_path for a in read_voc(trained["voc"], [("2007", "trainval")], _classes())]
    argv = ["predict", str(trained["dense"]), *map(str, images), "--out", str(tmp_path / "png")]
    results = tmp_path / "results"
    assert _run([*argv, "--results-dir", str(results), "--image-set", "trainval"]) == 0
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        f"{p.stem}.png" for p in images
    )
    files = list(results.glob("comp4_det_trainval_*.txt"))
    assert len(files) == 8
    assert all(f.stat().st_size > 0 for f in files)  # at conf 0.005 every class has candidates

    capsys.readouterr()
    argv = ["eval-dets", "--voc-root", str(trained["voc"]), "--image-set", "trainval"]
    assert _run([*argv, "--results", str(results), "--classes", "synthetic", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    recorded = checkpoint_metadata(trained["dense"])["meta"]["metrics"]
    assert scored["map"] == pytest.approx(recorded["map"], abs=1e-4)
    assert scored["map"] > 0.5


def test_compare_writes_the_three_figures(trained: dict[str, Path], tmp_path: Path) -> None:
    assert (
        _run(["compare", str(trained["dense"]), str(trained["pruned"]), "--out", str(tmp_path)])
        == 0
    )
    names = sorted(p.name for p in tmp_path.iterdir())
    weights = [name for name in names if re.fullmatch(r"weights_\d+\.png", name)]
    assert len(weights) == 1
    assert names == sorted(["boxes.png", "layers.png", *weights])
    assert 0 <= int(weights[0][len("weights_") : -len(".png")]) < 22  # a prunable convolution
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_prune_then_export_to_onnx(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pruned.safetensors"
    argv = ["prune", str(trained["dense"]), "--method", "weight", "--ratio", "0.7"]
    assert _run([*argv, "--out", str(out)]) == 0
    meta = checkpoint_metadata(out)["meta"]
    assert meta["prune"] == {"method": "weight", "ratio": 0.7, "ratios": None, "scope": "layer"}
    assert "metrics" not in meta  # the dense model's map is not this model's
    assert meta["pruned_from"] == str(trained["dense"])
    assert _run(["export", str(out), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    onnx.checker.check_model(str(tmp_path / "onnx" / "model.onnx"))


# The smoke dense model's widths (width 0.125) and what ratio 0.5 keeps of them.
DENSE_WIDTHS = [8, 8, 16, 8, 16, 32, 16, 32, 64, 32, 64, 32, 64, 128, 64, 128, 64, 128, 128, 128, 8, 128, 65]  # fmt: skip
HALF_BY_8 = [8, 8, 8, 8, 8, 16, 8, 16, 32, 16, 32, 16, 32, 64, 32, 64, 32, 64, 64, 64, 8, 64, 65]
HALF_BY_4 = [4, 4, 8, 4, 8, 16, 8, 16, 32, 16, 32, 16, 32, 64, 32, 64, 32, 64, 64, 64, 4, 64, 65]


def _recording_prune(trained: dict[str, Path], tmp_path: Path, **prune: object) -> Path:
    """The dense checkpoint, as if its experiment's prune section had held `prune`."""
    meta = checkpoint_metadata(trained["dense"])["meta"]
    meta["config"]["prune"].update(prune)
    return save_checkpoint(load_checkpoint(trained["dense"]), tmp_path / "src.safetensors", **meta)


HALF = {8: HALF_BY_8, 4: HALF_BY_4}  # by the rounding (min_channels = round_to) that made them


@pytest.mark.parametrize(
    ("recorded", "flags", "rounding"),
    [
        ({}, [], 8),  # PruneConfig's defaults
        ({"min_channels": 4, "round_to": 4}, [], 4),  # the recorded experiment's
        ({"min_channels": 4, "round_to": 4}, ["--min-channels", "8", "--round-to", "8"], 8),
        ({}, ["--min-channels", "4", "--round-to", "4"], 4),
    ],
)
def test_prune_takes_rounding_from_flags_else_the_recorded_experiment(
    trained: dict[str, Path],
    tmp_path: Path,
    recorded: dict[str, int],
    flags: list[str],
    rounding: int,
) -> None:
    assert load_checkpoint(trained["dense"]).arch.widths == DENSE_WIDTHS
    source = _recording_prune(trained, tmp_path, **recorded)
    out = tmp_path / "pruned.safetensors"
    argv = ["prune", str(source), "--method", "filter", "--ratio", "0.5", *flags]
    assert _run([*argv, "--out", str(out)]) == 0
    assert load_checkpoint(out).arch.widths == HALF[rounding]
    assert checkpoint_metadata(out)["meta"]["prune"] == {
        "method": "filter",
        "ratio": 0.5,
        "ratios": None,
        "criterion": "l1",
        "min_channels": rounding,
        "round_to": rounding,
    }


def test_prune_takes_the_criterion_from_the_recorded_experiment(
    trained: dict[str, Path], tmp_path: Path
) -> None:
    source = _recording_prune(trained, tmp_path, criterion="bn", scope="global")
    for flags, criterion in (([], "bn"), (["--criterion", "l2"], "l2")):
        out = tmp_path / f"{criterion}.safetensors"
        argv = ["prune", str(source), "--method", "filter", "--ratio", "0.5", *flags]
        assert _run([*argv, "--out", str(out)]) == 0
        assert checkpoint_metadata(out)["meta"]["prune"]["criterion"] == criterion
    out = tmp_path / "weight.safetensors"
    assert (
        _run(["prune", str(source), "--method", "weight", "--ratio", "0.5", "--out", str(out)]) == 0
    )
    assert checkpoint_metadata(out)["meta"]["prune"]["scope"] == "global"


@pytest.mark.parametrize(
    ("method", "flag"),
    [
        ("filter", ["--scope", "global"]),
        ("weight", ["--criterion", "bn"]),
        ("weight", ["--min-channels", "4"]),
        ("weight", ["--round-to", "4"]),
    ],
)
def test_a_prune_option_the_method_does_not_use_is_refused(
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    method: str,
    flag: list[str],
) -> None:
    capsys.readouterr()
    out = tmp_path / "x.safetensors"
    argv = ["prune", str(trained["dense"]), "--method", method, "--ratio", "0.5", *flag]
    assert _run([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"prune-search prune: error: {flag[0]} applies to --method "
        f"{'weight' if method == 'filter' else 'filter'} only, not to --method {method}"
    ]
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ratio", "1.0"], "less than 1"),
        (["--ratio", "-0.2"], "greater than or equal to 0"),
        (["--ratios", "0.1,0.2"], "expected 1, 6 (per stage) or 22 (per layer) ratios"),
        (["--ratios", "0.1,x"], "expected comma-separated numbers"),
    ],
)
def test_invalid_ratios_are_one_line(
    trained: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    capsys.readouterr()
    argv = [
        "prune",
        str(trained["dense"]),
        "--method",
        "filter",
        *extra,
        "--out",
        str(tmp_path / "x"),
    ]
    assert _run(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("change", ["train.lr=0.1", "train.epochs=1"])
def test_train_again_with_other_settings_is_refused_and_leaves_the_run_alone(
    trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], change: str
) -> None:
    where = ["--set", f"data.root={trained['voc']}", "--set", f"cache_dir={trained['root']}"]
    out = tmp_path / "dense"
    assert _run(["train", str(SMOKE), *where, "--set", "train.epochs=2", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    argv = ["train", str(SMOKE), *where, "--set", "train.epochs=2", "--set", change]
    assert _run([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "train", out / "train_state.pt")
    assert f"to start afresh remove {out} or pick another output folder" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # A run-time knob is no other setting: the run resumes (at its end: nothing to train).
    assert _run([*argv[:-2], "--set", "data.workers=1", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["workers"] == 1


def test_a_bad_experiment_key_is_one_line_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert _run(["train", str(SMOKE), "--set", "train.lrr=1", "--out", str(tmp_path / "t")]) == 2
    _assert_one_line_error(capsys.readouterr().err, "train", SMOKE)
    assert not (tmp_path / "t").exists()


def test_a_missing_experiment_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    missing = tmp_path / "nope.yaml"
    assert _run(["pipeline", str(missing), "--out", str(tmp_path / "p")]) == 2
    _assert_one_line_error(capsys.readouterr().err, "pipeline", missing)


def _classes() -> list[str]:
    from yolov2.data import SYNTHETIC_CLASSES

    return list(SYNTHETIC_CLASSES)


def test_anchors_prints_yaml_the_experiment_accepts(
    trained: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    where = ["--set", f"data.root={trained['voc']}", "--set", f"cache_dir={trained['root']}"]
    capsys.readouterr()
    assert _run(["anchors", str(SMOKE), *where, "--num", "3"]) == 0
    out = capsys.readouterr().out
    anchors = yaml.safe_load(out)["model"]["anchors"]
    assert len(anchors) == 3
    assert all(w > 0 and h > 0 for w, h in anchors)
    ours, theirs = (float(v) for v in re.findall(r"(\d\.\d+) with", out))
    assert ours >= theirs  # the clusters fit the data at least as well as darknet's VOC anchors
    config = load_config(SMOKE, [f"model.anchors={anchors}", *where[1::2]])
    assert config.model.anchors is not None
    assert len(config.model.anchors) == 3


def test_anchors_rejects_a_count_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run(["anchors", str(SMOKE), "--num", "0"])
    assert exit_info.value.code == 2
    assert "not a positive integer" in capsys.readouterr().err
