"""Checkpoints: bit-exact round trips, the sparse encoding, metadata, atomic writes, refused files."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import yolov2.checkpoint
from yolov2.checkpoint import (
    checkpoint_letterbox,
    checkpoint_metadata,
    load_checkpoint,
    save_checkpoint,
)
from yolov2.errors import InputError
from yolov2.model import Architecture, YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc

SIZE = (64, 64)


def _model(seed: int = 0, family: Callable[..., Architecture] = yolov2_voc) -> YOLOv2:
    """A small model whose every tensor, BN statistics included, holds seeded random values."""
    torch.manual_seed(seed)
    model = build_model(family(num_classes=3, width=0.125, input_size=SIZE))
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(
                    torch.rand_like(tensor) + 0.5
                    if "running_var" in name
                    else torch.randn_like(tensor)
                )
            else:
                tensor.fill_(seed + 7)  # num_batches_tracked
    return model.eval()


def _sparse_model(density: float = 0.2) -> YOLOv2:
    model = _model(seed=1)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for block in model.conv_blocks():
            weight = block.conv.weight
            weight.mul_((torch.rand(weight.shape, generator=generator) < density).float())
    return model


def _image() -> torch.Tensor:
    return torch.rand(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))


def _assert_same(a: YOLOv2, b: YOLOv2) -> None:
    assert a.arch == b.arch
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    for name, tensor in state_a.items():
        assert state_b[name].dtype == tensor.dtype, name
        assert torch.equal(state_b[name], tensor), name
    with torch.no_grad():
        assert torch.equal(a(_image()), b(_image()))


# --- round trips ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [_model, lambda: _model(family=yolov2_tiny_voc), _sparse_model],
    ids=["dense", "tiny", "sparse"],
)
def test_save_load_is_bit_exact(tmp_path: Path, make: Callable[[], YOLOv2]) -> None:
    model = make()
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    assert path == tmp_path / "model.safetensors"
    loaded = load_checkpoint(path)
    assert not loaded.training
    _assert_same(model, loaded)


def test_pruned_architecture_round_trips(tmp_path: Path) -> None:
    arch = yolov2_voc(num_classes=2, width=0.125, input_size=SIZE)
    pruned = arch.with_widths([8] * 20 + [4, 24, arch.widths[-1]])
    torch.manual_seed(0)
    model = build_model(pruned).eval()
    loaded = load_checkpoint(save_checkpoint(model, tmp_path / "pruned.safetensors"))
    assert loaded.arch.widths == [8] * 20 + [4, 24, 35]
    _assert_same(model, loaded)


def test_sparse_encoding_is_used_and_small(tmp_path: Path) -> None:
    dense_path = save_checkpoint(_model(seed=1), tmp_path / "dense.safetensors")
    sparse_path = save_checkpoint(_sparse_model(), tmp_path / "sparse.safetensors")
    assert sparse_path.stat().st_size <= 0.3 * dense_path.stat().st_size
    sparse = checkpoint_metadata(sparse_path)["sparse"]
    assert checkpoint_metadata(dense_path)["sparse"] == {}
    # Every conv weight of at least 1024 values is stored sparse (not layer 2's 8*8*9 = 576).
    assert "layers.2.conv.weight" not in sparse
    assert sparse["layers.4.conv.weight"] == [16, 8, 3, 3]
    with safe_open(str(sparse_path), framework="pt") as handle:
        keys = set(handle.keys())
    assert "layers.4.conv.weight::values" in keys
    assert "layers.4.conv.weight::bits" in keys
    assert "layers.4.conv.weight" not in keys


def test_almost_dense_weights_stay_dense(tmp_path: Path) -> None:
    path = save_checkpoint(_sparse_model(density=0.99), tmp_path / "m.safetensors")
    assert checkpoint_metadata(path)["sparse"] == {}


# --- metadata -------------------------------------------------------------------------------------


def test_metadata_holds_architecture_provenance_and_meta(tmp_path: Path) -> None:
    model = _model()
    meta = {"config": {"train": {"lr": 0.001}}, "config_hash": "abc123", "map": 0.5, "tags": ["a"]}
    path = save_checkpoint(model, tmp_path / "m.safetensors", **meta)
    header = checkpoint_metadata(path)
    assert header["format"] == "prune-search/yolov2"
    assert header["format_version"] == 1
    assert header["architecture"] == json.loads(json.dumps(model.arch.to_dict()))
    assert Architecture.from_dict(header["architecture"]) == model.arch
    assert header["meta"] == meta
    provenance = header["provenance"]
    assert provenance["torch"] == torch.__version__.split("+")[0]
    assert set(provenance) >= {"torch", "torchvision", "safetensors", "python", "git_revision"}
    assert provenance["git_revision"] == _head()  # the tests run in a checkout


REPO = Path(__file__).resolve().parents[2]


def _head(folder: Path = REPO) -> str:
    result = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_the_git_revision_is_this_checkout_s_and_never_another_repository_s(
    tmp_path: Path,
) -> None:
    import shutil

    from yolov2.checkpoint import _git_revision

    package = REPO / "yolov2"
    assert _git_revision(package) == _head()
    assert len(_head()) == 40
    # An installed copy inside some other repository, as site-packages of a venv in a project.
    other = tmp_path / "project"
    site = other / ".venv" / "lib" / "site-packages"
    shutil.copytree(package, site / "yolov2")
    subprocess.run(["git", "init", "-q"], cwd=other, check=True)
    (other / "README").write_text("another project\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "add", "README"], cwd=other, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=other, check=True)
    assert _head(other) != _head()
    assert _git_revision(site / "yolov2") == "unknown"
    assert _git_revision(tmp_path) == "unknown"  # in no repository at all


# --- atomic writes --------------------------------------------------------------------------------


def _failing_save(tensors: object, filename: str, metadata: object = None) -> None:
    Path(filename).write_bytes(b"half a file")  # a disk that fills up midway
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("meta", "letterbox"),
    [
        ({"config": {"data": {"letterbox": True}}}, True),
        ({"config": {"data": {"letterbox": False}}}, False),
        ({"source": {"darknet_cfg": "yolov2.cfg"}}, False),  # imported: darknet's v2 resizes
        ({}, False),
    ],
)
def test_the_letterbox_a_checkpoint_was_trained_with(
    tmp_path: Path, meta: dict[str, object], letterbox: bool
) -> None:
    model = build_model(yolov2_tiny_voc(width=0.25, input_size=(64, 64)))
    path = save_checkpoint(model, tmp_path / "m.safetensors", **meta)
    assert checkpoint_letterbox(path) is letterbox


def test_failed_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yolov2.checkpoint, "save_file", _failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(_model(), tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_checkpoint(_model(), tmp_path / "m.safetensors")
    before = path.read_bytes()
    monkeypatch.setattr(yolov2.checkpoint, "save_file", _failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(_model(seed=5), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_save_creates_missing_folders(tmp_path: Path) -> None:
    path = save_checkpoint(_model(), tmp_path / "a" / "b" / "m.safetensors")
    assert path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.safetensors"]


# --- refused files --------------------------------------------------------------------------------


def _truncated(tmp_path: Path, keep: Callable[[int], int]) -> Path:
    data = save_checkpoint(_model(), tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data[: keep(len(data))])
    return path


def _rewritten(
    tmp_path: Path, change: Callable[[dict[str, torch.Tensor], dict[str, object]], object]
) -> Path:
    """Our checkpoint with its tensors or header changed and written back by plain safetensors."""
    good = save_checkpoint(_model(), tmp_path / "good.safetensors")
    with safe_open(str(good), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        header = json.loads(handle.metadata()["prune_search"])
    change(tensors, header)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"prune_search": json.dumps(header)})
    return path


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "nothing-here.safetensors"


def _half(tmp_path: Path) -> Path:
    return _truncated(tmp_path, lambda n: n // 2)


def _last_byte_cut(tmp_path: Path) -> Path:
    return _truncated(tmp_path, lambda n: n - 1)


def _empty(tmp_path: Path) -> Path:
    return _truncated(tmp_path, lambda n: 0)


def _random_bytes(tmp_path: Path) -> Path:
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return path


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path))
    return path


def _foreign_with_metadata(tmp_path: Path) -> Path:
    path = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.zeros(3, 3)}, str(path), metadata={"format": "pt"})
    return path


def _other_format(tmp_path: Path) -> Path:
    return _rewritten(tmp_path, lambda tensors, header: header.update(format="someone-else"))


def _newer_format(tmp_path: Path) -> Path:
    return _rewritten(tmp_path, lambda tensors, header: header.update(format_version=99))


def _bad_header_json(tmp_path: Path) -> Path:
    path = tmp_path / "bad.safetensors"
    save_file({"weight": torch.zeros(3)}, str(path), metadata={"prune_search": "{not json"})
    return path


def _wrong_shape(tmp_path: Path) -> Path:
    def change(tensors: dict[str, torch.Tensor], header: dict[str, object]) -> None:
        tensors["layers.30.conv.bias"] = torch.zeros(7)

    return _rewritten(tmp_path, change)


def _missing_tensor(tmp_path: Path) -> Path:
    return _rewritten(tmp_path, lambda tensors, header: tensors.pop("layers.0.bn.weight"))


def _extra_tensor(tmp_path: Path) -> Path:
    return _rewritten(tmp_path, lambda tensors, header: tensors.update(surprise=torch.zeros(2)))


def _bad_architecture(tmp_path: Path) -> Path:
    return _rewritten(tmp_path, lambda tensors, header: header.update(architecture={"layers": []}))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing, "no such checkpoint file"),
        (_half, "not a readable .safetensors checkpoint"),
        (_last_byte_cut, "not a readable .safetensors checkpoint"),
        (_empty, "not a readable .safetensors checkpoint"),
        (_random_bytes, "not a readable .safetensors checkpoint"),
        (_foreign, "not a prune-search checkpoint"),
        (_foreign_with_metadata, "not a prune-search checkpoint"),
        (_other_format, "not a prune-search checkpoint (format 'someone-else')"),
        (_newer_format, "written by a newer prune-search (format 99)"),
        (_bad_header_json, "checkpoint header is not valid JSON"),
        (_wrong_shape, "'layers.30.conv.bias' has shape [7], the architecture needs [40]"),
        (_missing_tensor, "tensor 'layers.0.bn.weight' is missing"),
        (_extra_tensor, "unexpected tensors ['surprise']"),
        (_bad_architecture, "malformed architecture"),
    ],
)
def test_bad_files_are_refused_naming_the_file(
    tmp_path: Path, make: Callable[[Path], Path], message: str
) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError) as error:
        load_checkpoint(path)
    text = str(error.value)
    assert message in text
    assert "\n" not in text
    assert str(path) in text


@pytest.mark.parametrize("make", [_missing, _half, _random_bytes, _foreign, _bad_header_json])
def test_metadata_of_bad_files_is_refused(tmp_path: Path, make: Callable[[Path], Path]) -> None:
    path = make(tmp_path)
    with pytest.raises(InputError) as error:
        checkpoint_metadata(path)
    assert str(path) in str(error.value)
