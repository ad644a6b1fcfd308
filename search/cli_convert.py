"""The commands that convert checkpoints: `import-darknet` and `export`, each parser beside its
function."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from search.cli_args import Commands, class_names
from yolov2.errors import InputError

log = logging.getLogger("prune-search")


def cmd_import_darknet(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import save_checkpoint
    from yolov2.darknet import load_darknet

    model = load_darknet(args.cfg, args.weights)
    classes = _darknet_classes(args.cfg, args.classes, model.arch.num_classes)
    save_checkpoint(
        model,
        args.out,
        source={"darknet_cfg": str(args.cfg), "darknet_weights": str(args.weights)},
        classes=classes,
        seen=int(getattr(model, "darknet_seen", 0)),
    )
    log.info("wrote %s (%d convolutions)", args.out, len(model.conv_blocks()))
    return 0


def _darknet_classes(cfg: Path, spec: str | None, num_classes: int) -> list[str]:
    """The class names of an imported cfg: --classes, else VOC's for a 20-class cfg."""
    if spec is None and num_classes != 20:
        raise InputError(
            f"{cfg}: {num_classes} classes; name them with --classes (a file with one name a "
            "line, or a,b,c): results files and eval-dets need the names"
        )
    classes = class_names(spec)
    if len(classes) != num_classes:
        raise InputError(f"--classes: {len(classes)} names for the {num_classes} classes of {cfg}")
    return classes


def add_import_darknet(commands: Commands) -> None:
    p = commands.add_parser("import-darknet", help="darknet .cfg + .weights -> checkpoint")
    p.add_argument("cfg", type=Path, help="darknet .cfg (YOLOv2 family)")
    p.add_argument(
        "weights", type=Path, help="darknet .weights (a partial backbone file loads too)"
    )
    p.add_argument("--classes", default=None,
                   help="class names: 'voc' (the default for a 20-class cfg), 'synthetic', a file "
                        "with one name a line, or a,b,c")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    p.set_defaults(run=cmd_import_darknet)


def cmd_export(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import load_checkpoint

    model = load_checkpoint(args.checkpoint)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.format == "darknet":
        from yolov2.darknet import save_darknet

        save_darknet(model, args.out / "model.cfg", args.out / "model.weights")
        log.info("wrote %s and %s", args.out / "model.cfg", args.out / "model.weights")
    else:
        from yolov2.checkpoint import checkpoint_metadata
        from yolov2.export import check_onnx, export_onnx

        classes = checkpoint_metadata(args.checkpoint)["meta"].get("classes")
        path = export_onnx(model, args.out / "model.onnx", classes=classes)
        difference = check_onnx(model, path)
        log.info("wrote %s (onnxruntime matches PyTorch to %.1e)", path, difference)
    return 0


def add_export(commands: Commands) -> None:
    p = commands.add_parser("export", help="checkpoint -> darknet files or ONNX")
    p.add_argument("checkpoint", type=Path, help="checkpoint to export (.safetensors)")
    p.add_argument("--format", choices=["darknet", "onnx"], default="darknet",
                   help="darknet: model.cfg + model.weights; onnx: model.onnx (checked with onnxruntime)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    p.set_defaults(run=cmd_export)
