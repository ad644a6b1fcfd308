"""dense → prune → finetune → measure on the smoke experiment, with real files and the dense cache."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from tests.yolov2.conftest import WriteVocTree
from yolov2.checkpoint import checkpoint_metadata, load_checkpoint
from yolov2.config import ExperimentConfig, TrainConfig, load_config
from yolov2.engine import autocasts, train_precision
from yolov2.errors import InputError
from yolov2.pipeline import DENSE_SECTIONS, METRIC_NAMES, dense_folder, dense_key, run
from yolov2.prune import prunable_convs

SMOKE = Path(__file__).resolve().parents[2] / "experiments" / "smoke.yaml"
METRICS = {
    "map",
    "map_voc12",
    "size_mb",
    "params",
    "nonzero_params",
    "sparsity",
    "gflops",
    "latency_ms",
    "node",
    "device",
}


def smoke(tmp_path: Path, *overrides: str) -> ExperimentConfig:
    return load_config(
        SMOKE,
        [f"cache_dir={tmp_path}/cache", f"data.root={tmp_path}/data/VOCdevkit", *overrides],
    )


def test_filter_pipeline_shrinks_the_model_and_reuses_the_dense_stage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = run(smoke(tmp_path), tmp_path / "a")
    dense_dir = dense_folder(smoke(tmp_path))
    dense = load_checkpoint(dense_dir / "model.safetensors")
    pruned = load_checkpoint(first.checkpoint)

    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert set(metrics) >= METRICS
    assert set(metrics) == set(METRIC_NAMES) | {"node", "device", "map_split"}
    assert metrics == pytest.approx(first.metrics)
    assert metrics["size_mb"] == pytest.approx(first.checkpoint.stat().st_size / 1e6)
    dense_params = sum(p.numel() for p in dense.parameters())
    assert metrics["params"] < dense_params * 0.4
    # sparsity is against the dense model, so filter pruning (few zeros) shares weight pruning's axis
    assert metrics["sparsity"] == pytest.approx(1 - metrics["nonzero_params"] / dense_params)
    assert metrics["sparsity"] > 0.6
    assert 0 <= metrics["pruned_map"] <= 1
    assert all(
        after <= before for before, after in zip(dense.arch.widths, pruned.arch.widths, strict=True)
    )
    assert pruned.arch.widths[-1] == dense.arch.widths[-1]  # the head is never pruned
    assert (tmp_path / "a" / "config.yaml").exists()
    meta = checkpoint_metadata(first.checkpoint)["meta"]
    assert meta["classes"]
    assert meta["config"]["name"] == "smoke"

    mtime = (dense_dir / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="yolov2.pipeline"):
        second = run(smoke(tmp_path, "prune.ratio=0.25"), tmp_path / "b")
    assert "dense stage: reusing" in caplog.text
    assert (dense_dir / "model.safetensors").stat().st_mtime_ns == mtime
    assert second.metrics["params"] > first.metrics["params"]
    # Real maps: the smoke model learns, and pruning less of it keeps another map.
    assert first.metrics["dense_map"] == second.metrics["dense_map"] > 0.5
    assert 0 < first.metrics["map"] != second.metrics["map"] > 0


def test_weight_pipeline_keeps_masks_through_finetuning(tmp_path: Path) -> None:
    weight = ("prune.method=weight", "prune.ratio=0.8", "finetune.epochs=2")
    config = smoke(tmp_path, *weight)
    result = run(config, tmp_path / "w")
    model = load_checkpoint(result.checkpoint)
    convs = [model.conv_blocks()[i].conv.weight for i in prunable_convs(model.arch)]
    zero_fraction = [float((w == 0).float().mean()) for w in convs]
    assert min(zero_fraction) == pytest.approx(0.8, abs=0.01)
    assert result.metrics["sparsity"] > 0.7
    assert result.metrics["map"] > 0
    dense = run(smoke(tmp_path, "prune.method=none"), tmp_path / "d")
    assert result.metrics["size_mb"] <= 0.3 * dense.metrics["size_mb"]
    assert dense.metrics["map"] == dense.metrics["dense_map"] > 0.5
    lower_lr = run(smoke(tmp_path, *weight, "finetune.lr=0.001"), tmp_path / "w2")
    assert 0 < lower_lr.metrics["map"] != result.metrics["map"]


def test_iterative_pruning_reaches_the_configured_ratio(tmp_path: Path) -> None:
    one_shot = run(smoke(tmp_path, "prune.ratio=0.5"), tmp_path / "one")
    rounds = run(smoke(tmp_path, "prune.ratio=0.5", "prune.iterations=2"), tmp_path / "two")
    assert (tmp_path / "two" / "finetune_1").is_dir()
    assert (tmp_path / "two" / "finetune_2").is_dir()
    assert load_checkpoint(rounds.checkpoint).arch == load_checkpoint(one_shot.checkpoint).arch


def test_an_unprunable_ratio_count_is_one_clear_error(tmp_path: Path) -> None:
    from yolov2.errors import InputError

    with pytest.raises(InputError, match=r"expected 1, 6 \(per stage\) or 22 \(per layer\)"):
        run(smoke(tmp_path, "prune.ratio=null", "prune.ratios=[0.1,0.2]"), tmp_path / "x")
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_the_same_experiment_starts_from_the_same_weights(tmp_path: Path) -> None:
    from yolov2.pipeline import initial_model

    a = initial_model(smoke(tmp_path), 8).state_dict()
    b = initial_model(smoke(tmp_path), 8).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- results that do not depend on parallelism --------------------------------------------------


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict()


def test_the_weights_do_not_depend_on_the_loader_workers(tmp_path: Path) -> None:
    from yolov2.engine import load_splits
    from yolov2.pipeline import train_dense

    checkpoints = {}
    for workers in (0, 2):
        config = smoke(tmp_path, f"data.workers={workers}", "train.epochs=3")
        stage = train_dense(config, load_splits(config.data), tmp_path / f"workers{workers}")
        checkpoints[workers] = _weights(stage.checkpoint)
    serial, parallel = checkpoints[0], checkpoints[2]
    assert serial.keys() == parallel.keys()
    for name, tensor in serial.items():
        assert torch.equal(tensor, parallel[name]), name


@pytest.mark.parametrize(
    ("knob", "same"),
    [
        ("data.workers=2", True),
        ("train.eval_every=2", True),
        ("train.device=cpu", True),
        ("search.num_samples=3", True),
        ("name=other", True),
        ("train.lr=0.002", False),
        ("train.seed=1", False),
        ("loss.object_scale=4", False),
        ("data.augment.jitter=0.1", False),
    ],
)
def test_the_dense_cache_is_keyed_on_what_shapes_the_weights(
    tmp_path: Path, knob: str, same: bool
) -> None:
    base = smoke(tmp_path)
    other = smoke(tmp_path, knob)
    assert (base.digest(*DENSE_SECTIONS) == other.digest(*DENSE_SECTIONS)) is same


def test_another_worker_count_reuses_the_cached_dense_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    short = ("prune.method=none", "train.epochs=2")
    run(smoke(tmp_path, *short), tmp_path / "a")
    (dense_dir,) = (tmp_path / "cache" / "dense").iterdir()
    mtime = (dense_dir / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="yolov2.pipeline"):
        run(smoke(tmp_path, *short, "data.workers=1"), tmp_path / "b")
    assert "dense stage: reusing" in caplog.text
    assert (dense_dir / "model.safetensors").stat().st_mtime_ns == mtime
    run(smoke(tmp_path, *short, "train.lr=0.002"), tmp_path / "c")
    assert len(list((tmp_path / "cache" / "dense").iterdir())) == 2


# --- the dense key: what the data is, not where; the precision that really ran -------------------


def _voc_tree(root: Path, write_voc_tree: WriteVocTree) -> Path:
    write_voc_tree(root, "2007", "trainval", [
        {"id": "000005", "objects": [("dog", 1, 1, 10, 20), ("cat", 30, 5, 64, 48, True)]},
        {"id": "000007", "objects": [("person", 2, 3, 50, 40)]},
    ])  # fmt: skip
    write_voc_tree(root, "2007", "test", [{"id": "000009", "objects": [("cat", 5, 6, 7, 8)]}])
    return root


def _on_voc(tmp_path: Path, root: Path, *overrides: str) -> ExperimentConfig:
    return smoke(
        tmp_path, f"data.root={root}", "data.synthetic=null", "data.classes=voc",
        "data.test_sets=[[2007, test]]", "train.device=cpu", *overrides,
    )  # fmt: skip


def _edit(root: Path, edit: str, tmp_path: Path) -> Path:
    """Change the tree at `root` as `edit` says; the root the experiment then names."""
    year = root / "VOC2007"
    if edit == "an annotation's bytes":
        xml = year / "Annotations" / "000007.xml"
        xml.write_text(xml.read_text().replace("<xmax>50</xmax>", "<xmax>49</xmax>"))
    elif edit == "a test annotation's bytes":
        xml = year / "Annotations" / "000009.xml"
        xml.write_text(
            xml.read_text().replace("<difficult>0</difficult>", "<difficult>1</difficult>")
        )
    elif edit == "an image set's list":
        (year / "ImageSets" / "Main" / "trainval.txt").write_text("000005\n")
    elif edit == "the tree copied elsewhere":
        return Path(shutil.copytree(root, tmp_path / "elsewhere" / "VOCdevkit"))
    return root


@pytest.mark.parametrize(
    ("edit", "overrides", "same"),
    [
        ("nothing", [], True),
        ("the tree copied elsewhere", [], True),
        ("nothing", ["data.workers=3"], True),
        ("nothing", ["train.amp=false"], True),  # float32 on the CPU either way
        ("an annotation's bytes", [], False),
        ("a test annotation's bytes", [], False),  # the test map is kept with the dense model
        ("an image set's list", [], False),
        ("nothing", ["train.lr=0.002"], False),
    ],
)
def test_the_dense_key_is_what_the_data_is_not_where(
    tmp_path: Path, write_voc_tree: WriteVocTree, edit: str, overrides: list[str], same: bool
) -> None:
    root = _voc_tree(tmp_path / "data" / "VOCdevkit", write_voc_tree)
    before = dense_folder(_on_voc(tmp_path, root))
    after = dense_folder(_on_voc(tmp_path, _edit(root, edit, tmp_path), *overrides))
    assert after.parent == before.parent == tmp_path / "cache" / "dense"
    assert (after == before) is same


def test_a_bad_tree_is_one_clear_error_naming_the_file(
    tmp_path: Path, write_voc_tree: WriteVocTree
) -> None:
    root = _voc_tree(tmp_path / "data" / "VOCdevkit", write_voc_tree)
    with pytest.raises(
        InputError, match=r"/VOC2007/ImageSets/Main/val\.txt: image set file not found$"
    ):
        dense_folder(_on_voc(tmp_path, root, "data.test_sets=[[2007, val]]"))
    (root / "VOC2007" / "Annotations" / "000007.xml").unlink()
    with pytest.raises(
        InputError, match=r"/VOC2007/Annotations/000007\.xml: annotation file not found$"
    ):
        dense_folder(_on_voc(tmp_path, root))


@pytest.mark.parametrize(
    ("amp", "device", "precision"),
    [
        (True, "cpu", "cpu fp32"),
        (False, "cpu", "cpu fp32"),
        (True, "cuda", "cuda bf16"),
        (False, "cuda", "cuda fp32"),
    ],
)
def test_the_precision_is_what_really_runs(amp: bool, device: str, precision: str) -> None:
    train = TrainConfig(amp=amp)
    assert train_precision(train, torch.device(device)) == precision
    assert autocasts(train, torch.device(device)) is (precision == "cuda bf16")


def test_a_cpu_and_a_cuda_dense_model_never_share_a_key(tmp_path: Path) -> None:
    keys = {}
    for amp in (True, False):
        config = smoke(tmp_path, f"train.amp={amp}")
        for device in ("cpu", "cuda"):
            precision = train_precision(config.train, torch.device(device))
            keys[amp, device] = dense_key(config, None, precision)
    assert keys[True, "cpu"] == keys[False, "cpu"]
    assert len({keys[True, "cpu"], keys[True, "cuda"], keys[False, "cuda"]}) == 3


def test_generated_data_on_the_cpu_keeps_its_key(tmp_path: Path) -> None:
    """The dense models cached before the data's content and the precision were keyed stay
    valid: on the CPU, generated data's key is the digest of the dense sections, as it was."""
    config = smoke(tmp_path, "train.device=cpu")
    assert dense_folder(config).name == config.digest(*DENSE_SECTIONS)
    assert not (tmp_path / "cache" / "fingerprints").exists()  # no data read for the key


# --- finetuning carries on darknet's `seen` -------------------------------------------------------


def _start_seen(run_dir: Path) -> int:
    state = torch.load(run_dir / "train_state.pt", weights_only=True)
    return int(json.loads(state["settings"])["start"]["seen"])


def test_finetuning_carries_on_the_dense_count_so_the_prior_warm_up_does_not_restart(
    tmp_path: Path,
) -> None:
    config = smoke(tmp_path, "prune.iterations=2", "finetune.epochs=1")
    run(config, tmp_path / "carry")
    dense_seen = config.train.epochs * 16  # 16 images, batches of 8: no image dropped
    assert _start_seen(tmp_path / "carry" / "finetune_1") == dense_seen
    assert _start_seen(tmp_path / "carry" / "finetune_2") == dense_seen + 16
    restart = smoke(tmp_path, "prune.iterations=2", "finetune.epochs=1", "finetune.seen=0")
    run(restart, tmp_path / "restart")
    assert _start_seen(tmp_path / "restart" / "finetune_1") == 0
    assert _start_seen(tmp_path / "restart" / "finetune_2") == 0


def test_a_fit_past_the_warm_up_trains_as_one_without_it(tmp_path: Path) -> None:
    from yolov2.engine import fit, load_splits
    from yolov2.pipeline import initial_model

    def weights(seen: int, *overrides: str) -> dict[str, torch.Tensor]:
        config = smoke(tmp_path, "train.epochs=1", *overrides)
        splits = load_splits(config.data)
        model = initial_model(config, len(splits.classes))
        out = tmp_path / f"fit-{seen}-{len(overrides)}"
        train, loss = config.train, config.loss
        result = fit(
            model, splits, data=config.data, train=train, loss=loss, out_dir=out, seen=seen
        )
        assert result.seen == seen + 16
        return result.model.state_dict()

    past = weights(12800)  # the default loss.prior_warmup_images
    without = weights(0, "loss.prior_warmup_images=0")
    warming = weights(0)
    assert all(torch.equal(past[k], without[k]) for k in past)
    assert not all(torch.equal(past[k], warming[k]) for k in past)


# --- a darknet cfg decides the architecture; keys it contradicts are refused ---------------------


@pytest.fixture
def tiny_cfg(tmp_path: Path) -> tuple[Path, Path]:
    """yolov2-tiny at width 0.125 for the 8 synthetic classes, written as darknet files at 416."""
    from yolov2.darknet import save_darknet
    from yolov2.model import build_model, yolov2_tiny_voc

    torch.manual_seed(0)
    model = build_model(yolov2_tiny_voc(num_classes=8, width=0.125, input_size=(416, 416)))
    cfg, weights = tmp_path / "dn" / "tiny.cfg", tmp_path / "dn" / "tiny.weights"
    save_darknet(model, cfg, weights)
    return cfg, weights


def _with_cfg(tmp_path: Path, files: tuple[Path, Path], *overrides: str) -> ExperimentConfig:
    # smoke.yaml sets model.family and model.width: a cfg experiment leaves them out.
    raw = yaml.safe_load(SMOKE.read_text())
    raw["model"] = {"darknet": {"cfg": str(files[0]), "weights": str(files[1])}}
    path = tmp_path / "dn.yaml"
    path.write_text(yaml.safe_dump(raw))
    where = [f"cache_dir={tmp_path}/cache", f"data.root={tmp_path}/data/VOCdevkit"]
    return load_config(path, [*where, *overrides])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.width=2.0", "model.family 'yolov2' at model.width 2.0 is not the network"),
        ("model.family=yolov2", "model.family 'yolov2' at model.width 1.0 is not the network"),
        ("model.anchors=[[1,1]]", "model.anchors [(1.0, 1.0)] conflict with the anchors of"),
    ],
)
def test_model_keys_that_contradict_the_darknet_cfg_are_refused(
    tmp_path: Path, tiny_cfg: tuple[Path, Path], override: str, message: str
) -> None:
    from yolov2.errors import InputError
    from yolov2.pipeline import initial_model

    config = _with_cfg(tmp_path, tiny_cfg, override)
    with pytest.raises(InputError, match=re.escape(message)) as error:
        initial_model(config, 8)
    assert str(tiny_cfg[0]) in str(error.value)
    with pytest.raises(InputError, match=re.escape(message)):
        run(config, tmp_path / "p")  # before any training
    assert not (tmp_path / "cache" / "dense").exists()


def test_the_darknet_cfg_s_network_trains_and_records_the_input_size_it_trained_at(
    tmp_path: Path, tiny_cfg: tuple[Path, Path]
) -> None:
    from yolov2.darknet import load_darknet
    from yolov2.engine import load_splits
    from yolov2.pipeline import initial_model, train_dense

    agreeing = ["model.family=yolov2-tiny", "model.width=0.125", "train.epochs=1"]
    config = _with_cfg(tmp_path, tiny_cfg, *agreeing)
    model = initial_model(config, 8)
    darknet = load_darknet(*tiny_cfg)
    assert model.arch.layers == darknet.arch.layers
    assert model.arch.input_size == (96, 96)  # data.input_size, not the cfg's 416
    assert all(torch.equal(t, darknet.state_dict()[k]) for k, t in model.state_dict().items())
    stage = train_dense(config, load_splits(config.data), tmp_path / "dense")
    assert load_checkpoint(stage.checkpoint).arch.input_size == (96, 96)
