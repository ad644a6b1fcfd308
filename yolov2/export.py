"""ONNX export of the eval forward, with what a user needs to decode its output in the file's metadata.

The graph is darknet's raw head, exactly the model's forward: input "images" float RGB (B, 3, H, W) in
[0, 1], H and W multiples of 32; output "output" (B, A·(5+C), H/32, W/32). Decoding (sigmoid, exp of
anchors, softmax, NMS) stays outside, as in darknet, so any runtime's NMS can follow it.

A weight-pruned model exports its zeros as ordinary dense values: the .onnx file is as large as the
dense model's (ONNX has no sparse conv weights that runtimes use); only filter pruning shrinks it.
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolov2.errors import InputError
from yolov2.files import atomic_path
from yolov2.model import YOLOv2

FORMAT = "prune-search/yolov2"
INPUT_NAME, OUTPUT_NAME = "images", "output"
MAX_ABS_DIFF = 1e-3
DECODING = (
    "output channel a*(5+C)+k of anchor a: k=0,1 tx,ty; k=2,3 tw,th; k=4 objectness; k>=5 class "
    "logits. Box centre x=(col+sigmoid(tx))/W, y=(row+sigmoid(ty))/H, w=anchor_w*exp(tw)/W, "
    "h=anchor_h*exp(th)/H in [0,1] of the input; class score = sigmoid(to)*softmax(class logits). "
    "Anchors are (w, h) in grid cells."
)


def export_onnx(
    model: YOLOv2,
    path: str | os.PathLike[str],
    input_size: tuple[int, int] | None = None,
    *,
    dynamic: bool = True,
    opset: int = 17,
    classes: Sequence[str] | None = None,
) -> Path:
    """Write the model's eval forward to `path` as ONNX, atomically; return the path.

    `input_size` (height, width) is the traced size (default: the architecture's). With `dynamic`
    the batch, height and width axes are free, so one file serves every multiple of 32. The
    architecture, anchors, input size, decoding and `classes` (when given) go in metadata_props.
    """
    onnx = _require("onnx")
    height, width = input_size or model.arch.input_size
    if height <= 0 or width <= 0 or height % 32 or width % 32:
        raise InputError(f"ONNX input size {(height, width)} must be positive multiples of 32")
    if classes is not None and len(classes) != model.arch.num_classes:
        raise InputError(
            f"{len(classes)} class names for a model with {model.arch.num_classes} classes"
        )
    device = next(model.parameters()).device
    example = torch.rand(1, 3, height, width, device=device)
    axes = {
        INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
        OUTPUT_NAME: {0: "batch", 2: "grid_height", 3: "grid_width"},
    }
    target = Path(path)
    was_training = model.training
    model.eval()
    with atomic_path(target) as temporary:
        try:
            with warnings.catch_warnings():
                # The TorchScript exporter (dynamo=False) is deprecated from torch 2.9 but still
                # here in 2.14 and is what works: the torch.export-based one needs onnxscript, not
                # one of our dependencies, and takes seconds where this takes a tenth of one. It
                # traces the reorg's shape arithmetic as graph ops, so height and width stay
                # dynamic. Constant folding skips the reversed Slice of the stride-1 maxpool's
                # replicate pad and says so; the graph is right (the tests compare it with torch).
                warnings.filterwarnings("ignore", category=DeprecationWarning)
                warnings.filterwarnings("ignore", message="Constant folding")
                torch.onnx.export(
                    model,
                    (example,),
                    str(temporary),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes=axes if dynamic else None,
                    opset_version=opset,
                    do_constant_folding=True,
                    dynamo=False,
                )
        finally:
            model.train(was_training)
        proto = onnx.load_model(str(temporary))
        proto.producer_name = "prune-search"
        proto.doc_string = "YOLOv2 raw head; see metadata 'decoding', 'anchors' and 'architecture'."
        onnx.helper.set_model_props(proto, _metadata(model, (height, width), classes))
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(temporary))
    return target


def onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata export_onnx stored, JSON values decoded (architecture, anchors, classes, ...)."""
    onnx = _require("onnx")
    from google.protobuf.message import DecodeError  # onnx's own dependency

    file = Path(path)
    if not file.is_file():
        raise InputError(f"{file}: no such ONNX file")
    try:
        proto = onnx.load_model(str(file), load_external_data=False)
    except (DecodeError, OSError) as error:  # what a file that is not a model gives; else a bug
        raise InputError(f"{file}: not a readable ONNX model ({error})") from None
    props = {prop.key: prop.value for prop in proto.metadata_props}
    if props.get("format") != FORMAT:
        raise InputError(f"{file}: an ONNX model, but not one exported by prune-search")
    return {key: _maybe_json(value) for key, value in props.items()}


def check_onnx(
    model: YOLOv2, path: str | os.PathLike[str], input_size: tuple[int, int] | None = None
) -> float:
    """Run the ONNX file with onnxruntime on a random batch; return its max |difference| from torch.

    Raises RuntimeError above 1e-3: the export would then be a bug, not a user's mistake.
    """
    ort = _require("onnxruntime")
    height, width = input_size or model.arch.input_size
    images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_output,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            torch_output = model(images.to(device)).float().cpu().numpy()
    finally:
        model.train(was_training)
    if onnx_output.shape != torch_output.shape:
        raise RuntimeError(
            f"{path}: ONNX output shape {onnx_output.shape}, torch gives {torch_output.shape}"
        )
    difference = float(np.abs(onnx_output - torch_output).max())
    if not difference <= MAX_ABS_DIFF:  # NaN fails too
        raise RuntimeError(
            f"{path}: ONNX output differs from torch by {difference:.3g} at {(height, width)}"
        )
    return difference


def _metadata(
    model: YOLOv2, input_size: tuple[int, int], classes: Sequence[str] | None
) -> dict[str, str]:
    arch = model.arch
    props = {
        "format": FORMAT,
        "architecture": json.dumps(arch.to_dict()),
        "anchors": json.dumps([list(anchor) for anchor in arch.anchors]),
        "num_classes": str(arch.num_classes),
        "input_size": json.dumps(list(input_size)),
        "input": f"{INPUT_NAME}: float32 RGB (B, 3, H, W) in [0, 1], H and W multiples of 32",
        "output": f"{OUTPUT_NAME}: float32 (B, A*(5+C), H/32, W/32), anchor-major",
        "decoding": DECODING,
    }
    if classes is not None:
        props["classes"] = json.dumps(list(classes))
    return props


def _maybe_json(value: str) -> Any:
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def _require(module: str) -> Any:
    """onnx and onnxruntime are optional: only ONNX export needs them."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        raise InputError(
            f"ONNX export needs the {module!r} package: pip install onnx onnxruntime"
        ) from None
