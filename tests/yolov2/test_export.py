"""ONNX export: onnxruntime gives torch's output at several sizes, pruned models too, metadata decodes."""

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from yolov2.errors import InputError
from yolov2.export import check_onnx, export_onnx, onnx_metadata
from yolov2.model import Architecture, YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc
from yolov2.prune import prune_filters, prune_weights

CLASSES = [f"class{i}" for i in range(20)]
ARCHS: dict[str, Callable[[], Architecture]] = {
    "voc": lambda: yolov2_voc(width=0.125, input_size=(64, 64)),
    "tiny": lambda: yolov2_tiny_voc(width=0.25, input_size=(64, 64)),
}


def _trained_like(arch: Architecture) -> YOLOv2:
    """Random weights with BN statistics away from (0, 1), so BN folding is really exercised."""
    torch.manual_seed(0)
    model = build_model(arch)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert module.running_mean is not None
            assert module.running_var is not None
            nn.init.uniform_(module.running_mean, -0.5, 0.5)
            nn.init.uniform_(module.running_var, 0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


def _runtime_vs_torch(model: YOLOv2, path: Path, batch: int, height: int, width: int) -> float:
    images = torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["output"], {"images": images.numpy()})
    with torch.no_grad():
        expected = model(images).numpy()
    head = model.arch.head_filters
    assert output.shape == (batch, head, height // 32, width // 32)
    assert np.abs(expected).max() > 0.1  # a real signal, not zeros equal to zeros
    return float(np.abs(output - expected).max())


@pytest.mark.parametrize("family", sorted(ARCHS))
def test_onnx_matches_torch_at_two_sizes(family: str, tmp_path: Path) -> None:
    model = _trained_like(ARCHS[family]())
    path = export_onnx(model, tmp_path / f"{family}.onnx", classes=CLASSES)
    assert path.is_file()
    assert not model.training
    # 96 x 128: the passthrough reorg sees 6 x 8 and tiny's stride-1 pool pads a 3 x 4 map
    for batch, height, width in [(1, 64, 64), (3, 96, 128)]:
        assert _runtime_vs_torch(model, path, batch, height, width) < 1e-4
    assert check_onnx(model, path, (128, 64)) < 1e-4


def test_metadata_holds_architecture_classes_and_anchors(tmp_path: Path) -> None:
    model = _trained_like(ARCHS["voc"]())
    path = export_onnx(model, tmp_path / "model.onnx", classes=CLASSES)
    meta = onnx_metadata(path)
    assert Architecture.from_dict(meta["architecture"]) == model.arch
    assert meta["classes"] == CLASSES
    assert meta["anchors"] == [list(anchor) for anchor in model.arch.anchors]
    assert meta["input_size"] == [64, 64]
    assert "sigmoid" in meta["decoding"]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["output"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]


def test_static_export_has_fixed_shape(tmp_path: Path) -> None:
    model = _trained_like(ARCHS["tiny"]())
    path = export_onnx(model, tmp_path / "static.onnx", input_size=(96, 64), dynamic=False)
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 96, 64]
    assert "classes" not in onnx_metadata(path)
    assert _runtime_vs_torch(model, path, 1, 96, 64) < 1e-4


def test_filter_pruned_model_exports_smaller_and_matches(tmp_path: Path) -> None:
    dense = _trained_like(ARCHS["voc"]())
    pruned = prune_filters(dense, [0.5]).eval()
    dense_path = export_onnx(dense, tmp_path / "dense.onnx")
    pruned_path = export_onnx(pruned, tmp_path / "pruned.onnx")
    assert pruned_path.stat().st_size < 0.5 * dense_path.stat().st_size
    assert Architecture.from_dict(onnx_metadata(pruned_path)["architecture"]) == pruned.arch
    assert _runtime_vs_torch(pruned, pruned_path, 2, 96, 96) < 1e-4


def test_weight_pruned_model_exports_its_zeros_densely(tmp_path: Path) -> None:
    dense = _trained_like(ARCHS["tiny"]())
    pruned = copy.deepcopy(dense)
    prune_weights(pruned, [0.7])
    dense_path = export_onnx(dense, tmp_path / "dense.onnx")
    pruned_path = export_onnx(pruned, tmp_path / "pruned.onnx")
    assert abs(pruned_path.stat().st_size - dense_path.stat().st_size) < 1024
    assert _runtime_vs_torch(pruned, pruned_path, 1, 64, 96) < 1e-4


def test_training_mode_is_restored_and_eval_forward_exported(tmp_path: Path) -> None:
    model = _trained_like(ARCHS["tiny"]()).train()
    path = export_onnx(model, tmp_path / "model.onnx")
    assert model.training
    assert check_onnx(model, path) < 1e-4  # BN running statistics, not batch statistics
    assert model.training


def test_check_onnx_catches_a_stale_file(tmp_path: Path) -> None:
    model = _trained_like(ARCHS["tiny"]())
    path = export_onnx(model, tmp_path / "model.onnx")
    bias = model.conv_blocks()[-1].conv.bias
    assert bias is not None
    with torch.no_grad():
        bias.add_(0.5)
    with pytest.raises(RuntimeError, match=r"differs from torch by 0\.5"):
        check_onnx(model, path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_size": (64, 48)}, "multiples of 32"),
        ({"classes": ["cat"]}, "1 class names for a model with 20 classes"),
    ],
)
def test_bad_requests_are_input_errors(
    kwargs: dict[str, object], message: str, tmp_path: Path
) -> None:
    model = _trained_like(ARCHS["tiny"]())
    with pytest.raises(InputError, match=message):
        export_onnx(model, tmp_path / "model.onnx", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "model.onnx").exists()


@pytest.mark.parametrize("junk", [b"not an onnx model at all", bytes(100), b"\xff" * 50])
def test_metadata_of_a_foreign_file_is_refused(tmp_path: Path, junk: bytes) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(junk)
    with pytest.raises(InputError, match=r"junk\.onnx: not a readable ONNX model"):
        onnx_metadata(path)
    with pytest.raises(InputError, match="no such ONNX file"):
        onnx_metadata(tmp_path / "missing.onnx")
    with pytest.raises(InputError, match="no such ONNX file"):
        onnx_metadata(tmp_path)


def test_a_bug_while_reading_onnx_is_not_passed_off_as_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    path = tmp_path / "model.onnx"
    path.write_bytes(b"")

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug")

    monkeypatch.setattr(onnx, "load_model", broken)
    with pytest.raises(TypeError, match="a bug"):
        onnx_metadata(path)
