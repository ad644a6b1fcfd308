"""The `prune-search` commands, run in-process through `main` (their help: test_help.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from search.cli import main
from tests.console import run_main
from tests.yolov2.conftest import WriteVocTree, jpeg_bytes
from yolov2.boxes import to_voc_pixels
from yolov2.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from yolov2.config import load_config
from yolov2.darknet import save_darknet
from yolov2.data import SYNTHETIC_CLASSES, load_image, make_synthetic_voc, read_voc
from yolov2.engine import detect
from yolov2.evaluate import Detections, read_results, write_results
from yolov2.model import YOLOv2, build_model, yolov2_voc

CLASSES = ["cat", "dog"]
A, B, C = [10, 10, 50, 50], [100, 100, 150, 150], [200, 10, 260, 80]  # VOC pixels


def _model(seed: int = 0) -> YOLOv2:
    torch.manual_seed(seed)
    model = build_model(yolov2_voc(width=0.125, input_size=(64, 64)))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5
                    if "running_var" in name
                    else torch.randn_like(tensor)
                )
    return model.eval()


def _darknet_pair(tmp_path: Path) -> tuple[Path, Path, YOLOv2]:
    model = _model()
    cfg, weights = tmp_path / "in" / "small.cfg", tmp_path / "in" / "small.weights"
    save_darknet(model, cfg, weights)
    return cfg, weights, model


@pytest.fixture
def voc(tmp_path: Path, write_voc_tree: WriteVocTree) -> Path:
    """A VOCdevkit whose VOC2007 test set holds two cats and a dog."""
    images = [
        {"id": "000001", "width": 300, "height": 200, "objects": [("cat", *A), ("dog", *B)]},
        {"id": "000002", "width": 300, "height": 200, "objects": [("cat", *C)]},
    ]
    return write_voc_tree(tmp_path / "VOCdevkit", "2007", "test", images)


def _results(voc: Path, rows: list[tuple[str, int, float, list[int]]]) -> Path:
    directory = voc.parent / "results"
    directory.mkdir(exist_ok=True)
    detections = Detections(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.array([r[3] for r in rows]),
    )
    write_results(directory, "test", CLASSES, detections)
    return directory


def _eval_dets(voc: Path, results: Path, *extra: str) -> list[str]:
    return [
        "eval-dets",
        "--voc-root",
        str(voc),
        "--results",
        str(results),
        "--classes",
        "cat,dog",
        *extra,
    ]


def _assert_one_line_error(err: str, command: str, path: Path) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"prune-search {command}: error: ")
    assert str(path) in lines[0]
    assert "Traceback" not in err


# --- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv", [[], ["no-such-command"], ["profile"], ["eval-dets", "--voc-root", "x"]]
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert "usage: prune-search" in capsys.readouterr().err


# --- darknet in and out ---------------------------------------------------------------------------


def test_import_darknet_then_export_round_trips(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, weights, model = _darknet_pair(tmp_path)
    checkpoint = tmp_path / "model.safetensors"
    assert run_main(["import-darknet", str(cfg), str(weights), "--out", str(checkpoint)]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"wrote {checkpoint} (23 convolutions)" in captured.err  # logs go to stderr

    loaded = load_checkpoint(checkpoint)
    assert loaded.arch == model.arch
    for name, tensor in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):  # not in darknet files
            assert torch.equal(loaded.state_dict()[name], tensor), name
    assert checkpoint_metadata(checkpoint)["meta"]["source"] == {
        "darknet_cfg": str(cfg),
        "darknet_weights": str(weights),
    }

    out = tmp_path / "out"
    assert run_main(["export", str(checkpoint), "--format", "darknet", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.cfg", "model.weights"]
    assert (out / "model.cfg").read_text() == cfg.read_text()
    assert (out / "model.weights").read_bytes() == weights.read_bytes()


# --- eval-dets ------------------------------------------------------------------------------------

PERFECT = [("000001", 0, 0.9, A), ("000002", 0, 0.8, C), ("000001", 1, 0.7, B)]
# cat: TP 0.9, FP 0.8 (wrong place), TP 0.7 -> recall (1/2, 1/2, 1), precision (1, 1/2, 2/3).
MIX = [
    ("000001", 0, 0.9, A),
    ("000002", 0, 0.8, [20, 20, 40, 40]),
    ("000002", 0, 0.7, C),
    ("000001", 1, 0.6, B),
]
# As MIX, with the FP an inverted box (C's corners swapped), which the devkit scores, not refuses.
INVERTED = [*MIX[:1], ("000002", 0, 0.8, [260, 80, 200, 10]), *MIX[2:]]
CAT_VOC07 = (6 * 1 + 5 * 2 / 3) / 11  # recall >= 0 .. 0.5: precision 1; >= 0.6 .. 1: 2/3
CAT_VOC12 = 0.5 * 1 + 0.5 * 2 / 3  # the area under the monotone envelope


@pytest.mark.parametrize(
    ("rows", "metric", "cat_ap"),
    [
        (PERFECT, "voc07", 1.0),
        (PERFECT, "voc12", 1.0),
        (MIX, "voc07", CAT_VOC07),
        (MIX, "voc12", CAT_VOC12),
        (MIX[3:], "voc07", 0.0),  # no cat detections at all
        (INVERTED, "voc07", CAT_VOC07),
        (INVERTED, "voc12", CAT_VOC12),
    ],
)
def test_eval_dets_json(
    voc: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list[tuple[str, int, float, list[int]]],
    metric: str,
    cat_ap: float,
) -> None:
    results = _results(voc, rows)
    assert run_main([*_eval_dets(voc, results, "--metric", metric), "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert set(result) == {"metric", "map", "ap"}
    assert result["metric"] == metric
    assert result["ap"] == {"cat": pytest.approx(cat_ap), "dog": 1.0}
    assert result["map"] == pytest.approx((cat_ap + 1.0) / 2)


def test_eval_dets_table(voc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(voc, MIX)
    assert run_main(_eval_dets(voc, results)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split() for line in lines] == [
        ["cat", f"{CAT_VOC07:.4f}"],
        ["dog", "1.0000"],
        ["mAP", "(voc07)", f"{(CAT_VOC07 + 1) / 2:.4f}"],
    ]


# --- cache ----------------------------------------------------------------------------------------


def test_cache_says_where_how_big_and_what_then_clears(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(cache))
    assert run_main(["cache"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"cache: {cache} (set by PRUNE_SEARCH_CACHE)",
        "  nothing cached (the folder does not exist)",
    ]
    make_synthetic_voc(cache / "synthetic" / "VOCdevkit", num_trainval=2, num_test=1, workers=1)
    dense = cache / "dense" / "0123456789abcdef"
    dense.mkdir(parents=True)
    (dense / "config.yaml").write_text("name: default\n")
    (dense / "metrics.json").write_text('{"map": 0.8181, "map_voc12": 0.8345}')
    (cache / "VOCdevkit").mkdir()
    (cache / "VOCdevkit" / "mine.txt").write_text("a real VOC, say\n")
    assert run_main(["cache"]) == 0
    lines = capsys.readouterr().out.splitlines()
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert lines[:2] == [
        f"cache: {cache} (set by PRUNE_SEARCH_CACHE)",
        f"holds {size / 1e3:.1f} kB in 14 files",  # 3 images x 2, 4 set files, marker; 2; 1
    ]
    assert [line.split(":")[0] for line in lines[2::2]] == [
        "synthetic data sets",
        "dense models",
        "not written by prune-search (--clear leaves it)",
    ]
    assert lines[3].split("  ")[-1].startswith("synthetic/VOCdevkit: 2 trainval + 1 test images")
    assert lines[5].endswith(
        "  dense/0123456789abcdef: experiment default: map 0.8181 (VOC07 11-point), "
        "map_voc12 0.8345"
    )
    assert lines[7].endswith("  VOCdevkit: a folder")

    assert run_main(["cache", "--clear"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:4]] == ["removed"] * 3
    assert "synthetic/VOCdevkit: 2 trainval" in lines[1]
    assert "dense/0123456789abcdef: experiment default" in lines[2]
    assert lines[3].endswith(" in 2 entries")
    assert lines[4:] == ["left 16 B in 1 file", "not written by prune-search (--clear leaves it):",
                         "       16 B  VOCdevkit: a folder"]  # fmt: skip
    assert sorted(p.name for p in cache.iterdir()) == ["VOCdevkit"]


def test_cache_follows_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("PRUNE_SEARCH_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    (tmp_path / "xdg" / "prune-search").mkdir(parents=True)
    assert run_main(["cache", "--clear"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"cache: {tmp_path / 'xdg' / 'prune-search'} ($XDG_CACHE_HOME/prune-search; "
        "PRUNE_SEARCH_CACHE would move it)",
        "removed 0 B in 0 entries",
        "  empty",
    ]


# --- make-data and profile ------------------------------------------------------------------------


def test_make_data_writes_a_readable_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "synthetic" / "VOCdevkit"
    argv = ["make-data", "--out", str(root), "--trainval", "8", "--test", "4", "--seed", "1"]
    assert run_main(argv) == 0
    assert f"synthetic VOCdevkit ready at {root}" in capsys.readouterr().err
    trainval = read_voc(root, [("2007", "trainval")], SYNTHETIC_CLASSES)
    test = read_voc(root, [("2007", "test")], SYNTHETIC_CLASSES)
    assert (len(trainval), len(test)) == (8, 4)
    assert not {a.image_id for a in trainval} & {a.image_id for a in test}
    image = load_image(test[0].image_path)
    assert image.shape == (3, test[0].height, test[0].width)
    assert image.dtype == torch.uint8
    assert sum(len(a.labels) for a in trainval) > 0
    assert run_main(argv) == 0  # a finished set is reused


@pytest.mark.parametrize("size", [None, ("96", "128")])
def test_profile_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: tuple[str, str] | None
) -> None:
    model = _model()
    with torch.no_grad():
        model.conv_blocks()[4].conv.weight.zero_()
    checkpoint = save_checkpoint(model, tmp_path / "m.safetensors")
    argv = ["profile", str(checkpoint), "--json", *(["--size", *size] if size else [])]
    assert run_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    result = json.loads(out)
    assert result["params"] == 808_373  # yolov2-voc at width 0.125
    assert result["nonzero_params"] == 808_373 - 1152  # conv 4: 16 filters of 8 x 3 x 3
    assert result["sparsity"] == pytest.approx(1152 / 808_373)
    assert result["size_mb"] == checkpoint.stat().st_size / 1e6
    assert result["input_size"] == ([int(s) for s in size] if size else [64, 64])
    # 13,218,816 FLOPs at 64 x 64 (the checkpoint's size); 96 x 128 is 3 times the area.
    assert result["gflops"] == pytest.approx(0.013218816 * (3 if size else 1), rel=1e-12)
    assert result["latency_ms"] > 0
    assert result["device"] == "cpu"


# --- user mistakes: exit 2, one line, no traceback ------------------------------------------------


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path))
    return path


def test_profile_missing_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.safetensors"
    assert run_main(["profile", str(path)]) == 2
    _assert_one_line_error(capsys.readouterr().err, "profile", path)


@pytest.mark.parametrize("command", ["export", "profile"])
def test_foreign_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    path = _foreign(tmp_path)
    extra = ["--out", str(tmp_path / "out")] if command == "export" else []
    assert run_main([command, str(path), *extra]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, command, path)
    assert "not a prune-search checkpoint" in captured.err
    assert captured.out == ""
    assert not (tmp_path / "out").exists()


def test_eval_dets_malformed_results_line(voc: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = _results(voc, PERFECT)
    bad = results / "comp4_det_test_dog.txt"
    bad.write_text("000001 0.7 100 100 150 150\n000002 0.5 1 2 3\n")
    assert run_main([*_eval_dets(voc, results), "--json"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, "eval-dets", bad)
    assert f"{bad}:2: expected 6 fields" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("missing", ["voc-root", "results", "results-file"])
def test_eval_dets_missing_inputs(
    voc: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    results = _results(voc, PERFECT)
    if missing == "voc-root":
        voc = named = voc.parent / "no-VOCdevkit"
    elif missing == "results":
        results = named = voc.parent / "no-results"
    else:
        named = results / "comp4_det_test_dog.txt"
        named.unlink()
    assert run_main(_eval_dets(voc, results)) == 2
    _assert_one_line_error(capsys.readouterr().err, "eval-dets", named)


@pytest.mark.parametrize("cut", [1, 4, 1000])
def test_import_darknet_truncated_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cut: int
) -> None:
    cfg, weights, _ = _darknet_pair(tmp_path)
    weights.write_bytes(weights.read_bytes()[:-cut])
    out = tmp_path / "model.safetensors"
    assert run_main(["import-darknet", str(cfg), str(weights), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, "import-darknet", weights)
    assert "bytes short" in captured.err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []


def test_import_darknet_missing_cfg(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, weights, _ = _darknet_pair(tmp_path)
    cfg = tmp_path / "missing.cfg"
    assert (
        main(["import-darknet", str(cfg), str(weights), "--out", str(tmp_path / "m.safetensors")])
        == 2
    )
    _assert_one_line_error(capsys.readouterr().err, "import-darknet", cfg)


# --- every option given is used, or refused ------------------------------------------------------


def _recorded_checkpoint(tmp_path: Path, root: Path, letterbox: bool = False) -> Path:
    """A checkpoint recording an experiment on the `voc` fixture's classes, with data at `root`."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        f"data:\n  root: {root}\n  classes: [cat, dog]\n  input_size: 64\n  workers: 0\n"
        f"  letterbox: {str(letterbox).lower()}\n"
        "  train_sets: [[2007, test]]\n  test_sets: [[2007, test]]\n"
        "train: {batch_size: 2, device: cpu}\n"
    )
    record = load_config(experiment).model_dump(mode="json")
    torch.manual_seed(0)
    model = build_model(yolov2_voc(num_classes=2, width=0.125, input_size=(64, 64)))
    return save_checkpoint(model, tmp_path / "moved.safetensors", config=record, classes=CLASSES)


def test_eval_set_overrides_the_experiment_recorded_in_the_checkpoint(
    tmp_path: Path, voc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = tmp_path / "elsewhere" / "VOCdevkit"  # where the data was on the machine that trained
    checkpoint = _recorded_checkpoint(tmp_path, gone)
    assert run_main(["eval", str(checkpoint), "--json"]) == 2
    _assert_one_line_error(capsys.readouterr().err, "eval", gone)
    assert run_main(["eval", str(checkpoint), "--set", f"data.root={voc}", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["ap"]) == {"cat", "dog"}
    assert run_main(["eval", str(checkpoint), "--set", "data.input_size=33"]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "eval", checkpoint)
    assert "data.input_size: Input should be a multiple of 32" in err


@pytest.mark.parametrize(
    ("method", "option", "recorded"),
    [("filter", ["--criterion", "bn"], ("bn", None)), ("weight", ["--scope", "global"], (None, "global"))],
)  # fmt: skip
def test_prune_records_the_options_it_was_given(
    tmp_path: Path, method: str, option: list[str], recorded: tuple[str | None, str | None]
) -> None:
    checkpoint = save_checkpoint(_model(), tmp_path / "dense.safetensors")
    out = tmp_path / "pruned.safetensors"
    argv = ["prune", str(checkpoint), "--method", method, "--ratio", "0.5", *option]
    assert run_main([*argv, "--out", str(out)]) == 0
    prune = checkpoint_metadata(out)["meta"]["prune"]
    assert (prune.get("criterion"), prune.get("scope")) == recorded  # only what the method used


IGNORED = {
    "prune --criterion with weight": (
        ["prune", "m.safetensors", "--method", "weight", "--ratio", "0.5", "--criterion", "bn",
         "--out", "out"], "--criterion applies to --method filter only, not to --method weight"),
    "prune --scope with filter": (
        ["prune", "m.safetensors", "--method", "filter", "--ratio", "0.5", "--scope", "global",
         "--out", "out"], "--scope applies to --method weight only, not to --method filter"),
    "predict --image-set without --results-dir": (
        ["predict", "m.safetensors", "a.jpg", "--out", "out", "--image-set", "val"],
        "--image-set names the results files: give --results-dir too"),
    "compare with 6 images": (
        ["compare", "a.safetensors", "b.safetensors", "--images", *"123456", "--out", "out"],
        "--images: 6 given, boxes.png shows 5"),
}  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), IGNORED.values(), ids=IGNORED.keys())
def test_an_option_that_would_do_nothing_is_an_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"prune-search {argv[0]}: error: {message}"]
    assert list(tmp_path.iterdir()) == []


def test_predict_letterboxes_as_the_checkpoint_was_evaluated(
    tmp_path: Path, voc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The voc fixture's images are 300 x 200: letterboxed or squeezed, the model sees other pixels.
    checkpoint = _recorded_checkpoint(tmp_path, voc, letterbox=True)
    assert run_main(["eval", str(checkpoint), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    images = sorted((voc / "VOC2007" / "JPEGImages").glob("*.jpg"))
    results = tmp_path / "results"
    argv = ["predict", str(checkpoint), *map(str, images), "--out", str(tmp_path / "png")]
    assert run_main([*argv, "--results-dir", str(results)]) == 0
    assert run_main([*_eval_dets(voc, results), "--json"]) == 0
    predicted = json.loads(capsys.readouterr().out)
    assert predicted["ap"] == pytest.approx(evaluated["ap"], abs=1e-9)
    # The boxes written are the letterboxed model's, which are not the squeezed model's.
    model = load_checkpoint(checkpoint)
    boxed, squeezed = (
        detect(model, images, conf_thresh=0.005, letterbox=letterbox) for letterbox in (True, False)
    )
    assert not torch.equal(boxed[0].boxes, squeezed[0].boxes)
    expected = Detections.from_images(
        [p.stem for p in images],
        [to_voc_pixels(found.boxes, 200, 300).numpy() for found in boxed],
        [found.scores.numpy() for found in boxed],
        [found.labels.numpy() for found in boxed],
    )
    by_class = np.argsort(expected.labels, kind="stable")
    written = read_results(results, "test", CLASSES)
    np.testing.assert_array_equal(written.image_ids, expected.image_ids[by_class])
    np.testing.assert_array_equal(written.labels, expected.labels[by_class])
    np.testing.assert_allclose(written.boxes, expected.boxes[by_class], atol=1e-5)
    np.testing.assert_allclose(written.scores, expected.scores[by_class], atol=1e-6)


def test_compare_letterboxes_each_model_as_it_was_trained(
    tmp_path: Path, voc: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dense = _recorded_checkpoint(tmp_path / "dense", voc, letterbox=True)
    pruned = _recorded_checkpoint(tmp_path / "pruned", voc, letterbox=True)
    images = sorted((voc / "VOC2007" / "JPEGImages").glob("*.jpg"))
    argv = ["compare", str(dense), str(pruned), "--images", *map(str, images)]
    assert run_main([*argv, "--out", str(tmp_path / "figures")]) == 0
    assert (tmp_path / "figures" / "boxes.png").is_file()


# --- class names: a mistyped file, checkpoints that must record them ----------------------------


@pytest.mark.parametrize("spec", ["clases.txt", "lists/voc.names", "./names", "~/voc.names"])
def test_eval_dets_classes_that_look_like_a_missing_file_are_one_line(
    voc: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    results = _results(voc, PERFECT)
    argv = _eval_dets(voc, results)
    argv[argv.index("cat,dog")] = spec  # was: one class named after the path
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"prune-search eval-dets: error: --classes {spec}: no such file"
    ]


@pytest.mark.parametrize("spec", ["cat,dog", "names.txt"])
def test_eval_dets_classes_from_names_or_a_file(
    voc: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    (voc.parent / "names.txt").write_text("cat\ndog\n")
    results = _results(voc, PERFECT)
    argv = _eval_dets(voc, results, "--json")
    argv[argv.index("cat,dog")] = str(voc.parent / spec) if spec.endswith(".txt") else spec
    assert run_main(argv) == 0
    assert json.loads(capsys.readouterr().out)["ap"] == {"cat": 1.0, "dog": 1.0}


def test_import_darknet_records_voc_s_class_names_for_a_20_class_cfg(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from yolov2.data import VOC_CLASSES

    cfg, weights, _ = _darknet_pair(tmp_path)
    checkpoint = tmp_path / "model.safetensors"
    assert run_main(["import-darknet", str(cfg), str(weights), "--out", str(checkpoint)]) == 0
    assert checkpoint_metadata(checkpoint)["meta"]["classes"] == list(VOC_CLASSES)
    # predict's results files are then named by class, as eval-dets reads them
    image = tmp_path / "000001.jpg"
    image.write_bytes(jpeg_bytes(96, 64))
    results = tmp_path / "results"
    argv = ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "png")]
    assert run_main([*argv, "--results-dir", str(results)]) == 0
    assert sorted(p.name for p in results.iterdir()) == sorted(
        f"comp4_det_test_{name}.txt" for name in VOC_CLASSES
    )


def _eight_class_pair(tmp_path: Path) -> tuple[Path, Path]:
    model = build_model(yolov2_voc(num_classes=8, width=0.125, input_size=(64, 64)))
    cfg, weights = tmp_path / "in" / "eight.cfg", tmp_path / "in" / "eight.weights"
    save_darknet(model, cfg, weights)
    return cfg, weights


def test_import_darknet_names_other_classes_with_classes(tmp_path: Path) -> None:
    cfg, weights = _eight_class_pair(tmp_path)
    out = tmp_path / "model.safetensors"
    argv = ["import-darknet", str(cfg), str(weights), "--classes", "synthetic", "--out", str(out)]
    assert run_main(argv) == 0
    assert checkpoint_metadata(out)["meta"]["classes"] == list(SYNTHETIC_CLASSES)


@pytest.mark.parametrize(
    ("classes", "message"),
    [
        (None, "eight.cfg: 8 classes; name them with --classes"),
        ("voc", "--classes: 20 names for the 8 classes of"),
        ("a,b,c", "--classes: 3 names for the 8 classes of"),
    ],
)
def test_import_darknet_without_the_names_of_its_classes_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], classes: str | None, message: str
) -> None:
    cfg, weights = _eight_class_pair(tmp_path)
    out = tmp_path / "model.safetensors"
    extra = ["--classes", classes] if classes else []
    assert run_main(["import-darknet", str(cfg), str(weights), *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "import-darknet", cfg)
    assert message in err
    assert not out.exists()


def test_predict_results_of_a_checkpoint_without_class_names_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = save_checkpoint(_model(), tmp_path / "m.safetensors")  # no classes recorded
    image = tmp_path / "000001.jpg"
    image.write_bytes(jpeg_bytes(96, 64))
    results = tmp_path / "results"
    argv = ["predict", str(checkpoint), str(image), "--out", str(tmp_path / "png")]
    assert run_main([*argv, "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err
    _assert_one_line_error(err, "predict", checkpoint)
    assert "records no class names" in err
    assert not results.exists()
    assert run_main(argv) == 0  # drawing needs no names: classes are numbered
