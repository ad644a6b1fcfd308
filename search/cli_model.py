"""The commands on one model: `train`, `pipeline`, `prune`, `sensitivity`, `eval`, `predict`,
`profile` and `compare`, each parser beside its function."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.cli_args import (
    Commands,
    add_experiment,
    add_experiment_option,
    checkpoint_experiment,
    device,
    experiment_config,
    image_size,
    positive_int,
)
from yolov2.errors import InputError

log = logging.getLogger("prune-search")

SENSITIVITY_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def cmd_train(args: argparse.Namespace) -> int:
    from yolov2.engine import load_splits
    from yolov2.pipeline import train_dense

    config = experiment_config(args)
    splits = load_splits(config.data)
    stage = train_dense(config, splits, args.out)
    log.info(
        "wrote %s: map %.4f (VOC07 11-point), map_voc12 %.4f",
        stage.checkpoint,
        stage.map,
        stage.map_voc12,
    )
    return 0


def add_train(commands: Commands) -> None:
    p = commands.add_parser("train", help="train the dense model of an experiment")
    add_experiment(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes if interrupted)")
    p.set_defaults(run=cmd_train)


def cmd_pipeline(args: argparse.Namespace) -> int:
    from yolov2.pipeline import run

    result = run(experiment_config(args), args.out)
    print(json.dumps(result.metrics, indent=2))
    log.info("wrote %s and %s", result.checkpoint, result.checkpoint.with_name("metrics.json"))
    return 0


def add_pipeline(commands: Commands) -> None:
    p = commands.add_parser(
        "pipeline", help="dense -> prune -> finetune -> measure, on one machine"
    )
    add_experiment(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint + metrics.json")
    p.set_defaults(run=cmd_pipeline)


def cmd_prune(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
    from yolov2.config import PruneConfig
    from yolov2.pipeline import prune

    given = {
        name: getattr(args, name)
        for name in PruneConfig.METHOD_OF
        if getattr(args, name) is not None
    }
    for name in given:
        if PruneConfig.METHOD_OF[name] != args.method:
            flag = "--" + name.replace("_", "-")
            raise InputError(
                f"{flag} applies to --method {PruneConfig.METHOD_OF[name]} only, "
                f"not to --method {args.method}"
            )
    meta = checkpoint_metadata(args.checkpoint)["meta"]
    # Options not given come from the experiment that made the checkpoint, as it would prune.
    recorded = meta.get("config", {}).get("prune", {})
    options = {name: recorded[name] for name in PruneConfig.METHOD_OF if name in recorded}
    config = _validated_prune(
        PruneConfig,
        method=args.method,
        ratio=args.ratio,
        ratios=_ratios(args.ratios) if args.ratios else None,
        **{**options, **given},
    )
    model, _ = prune(load_checkpoint(args.checkpoint), config)
    meta.pop("metrics", None)  # measured on the source checkpoint, not on this one
    meta.update(stage="prune", pruned_from=str(args.checkpoint), prune=config.applied())
    save_checkpoint(model, args.out, **meta)
    log.info("wrote %s (widths %s)", args.out, model.arch.widths)
    return 0


def _ratios(text: str) -> list[float]:
    try:
        return [float(r) for r in text.split(",")]
    except ValueError:
        raise InputError(f"--ratios {text!r}: expected comma-separated numbers") from None


def _validated_prune(cls: Any, **values: Any) -> Any:
    from pydantic import ValidationError

    try:
        return cls(**values)
    except ValidationError as error:
        first = error.errors()[0]
        raise InputError(
            f"--{'.'.join(str(p) for p in first['loc']) or 'prune'}: {first['msg']}"
        ) from None


def add_prune(commands: Commands) -> None:
    p = commands.add_parser("prune", help="prune a checkpoint once, without finetuning")
    p.add_argument("checkpoint", type=Path, help="checkpoint to prune (.safetensors)")
    p.add_argument("--method", choices=["weight", "filter"], required=True,
                   help="weight: zero the smallest weights (sparse, same shapes); filter: remove "
                   "whole filters (a smaller network)")  # fmt: skip
    ratio = p.add_mutually_exclusive_group(required=True)
    ratio.add_argument("--ratio", type=float, help="one ratio for every prunable convolution")
    ratio.add_argument("--ratios", help="r1,r2,...: one per prunable convolution or one per stage")
    # Each option defaults to the prune section of the experiment recorded in the checkpoint,
    # else to the config's default; one the method does not use is refused.
    p.add_argument("--criterion", choices=["l1", "l2", "bn"],
                   help="filter pruning: what ranks a filter (default: the recorded experiment's, else l1)")  # fmt: skip
    p.add_argument("--min-channels", type=positive_int,
                   help="filter pruning: the fewest filters a conv keeps (default: recorded, else 8)")  # fmt: skip
    p.add_argument("--round-to", type=positive_int,
                   help="filter pruning: kept filters are a multiple of this (default: recorded, else 8)")  # fmt: skip
    p.add_argument("--scope", choices=["layer", "global"],
                   help="weight pruning: per-layer or one global threshold (default: recorded, else layer)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write")
    p.set_defaults(run=cmd_prune)


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import load_checkpoint
    from yolov2.engine import load_splits
    from yolov2.sensitivity import analyse, checked_groups, checked_ratios, format_table, write

    groups = checked_groups(args.groups)
    ratios = checked_ratios(args.ratios)  # bad input fails before the model is read
    model = load_checkpoint(args.checkpoint)
    config = checkpoint_experiment(args)
    table = analyse(model, config, load_splits(config.data), groups, ratios)
    print(format_table(table))
    paths = write(
        table, args.out, title=f"{config.name} ({args.checkpoint.name}): each {groups} pruned alone"
    )
    log.info("wrote %s and %s", *paths)
    return 0


def add_sensitivity(commands: Commands) -> None:
    p = commands.add_parser(
        "sensitivity",
        help="map of a checkpoint with each stage or layer alone pruned at each ratio",
        description="Prune each group (a stage, or a prunable layer) of the checkpoint alone at "
        "each ratio, without finetuning, as its experiment's prune section prunes (method, "
        "criterion, round_to, min_channels), and evaluate it: map, map drop, GFLOPs and GFLOPs "
        "saved per group and ratio. Writes sensitivity.csv and sensitivity.png into --out.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint to analyse (.safetensors)")
    p.add_argument("--ratios", type=float, nargs="+", default=list(SENSITIVITY_RATIOS),
                   metavar="R", help="ratios to prune each group at, in [0, 1) "
                   "(default: 0.1 0.2 ... 0.7)")  # fmt: skip
    p.add_argument("--groups", choices=["stage", "layer"], default="stage",
                   help="stage (one group per stride, 6 for yolov2) or layer (each prunable "
                   "convolution, 22 for yolov2); default: stage")  # fmt: skip
    add_experiment_option(p, "prune.criterion=bn")
    p.add_argument("--out", type=Path, required=True,
                   help="folder for sensitivity.csv and sensitivity.png")  # fmt: skip
    p.set_defaults(run=cmd_sensitivity)


def cmd_eval(args: argparse.Namespace) -> int:
    from yolov2.pipeline import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, checkpoint_experiment(args))
    ap = result["ap"] if args.metric == "voc07" else result["ap_voc12"]
    if args.json:
        print(json.dumps({"map": result["map"], "map_voc12": result["map_voc12"], "ap": ap}))
    else:
        for name, value in ap.items():
            print(f"{name:>15s}  {value:.4f}")
        print(
            f"{'map (voc07)':>15s}  {result['map']:.4f}\n{'map_voc12':>15s}  {result['map_voc12']:.4f}"
        )
    return 0


def add_eval(commands: Commands) -> None:
    p = commands.add_parser("eval", help="VOC mAP of a checkpoint on its experiment's test set")
    p.add_argument("checkpoint", type=Path, help="checkpoint to evaluate (.safetensors)")
    add_experiment_option(p, "data.root=/data/VOCdevkit where the data lives elsewhere")
    p.add_argument(
        "--metric", choices=["voc07", "voc12"], default="voc07", help="which AP per class to show"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_eval)


def cmd_predict(args: argparse.Namespace) -> int:
    from yolov2.boxes import ImageDetections
    from yolov2.checkpoint import checkpoint_letterbox, checkpoint_metadata, load_checkpoint
    from yolov2.data import load_image
    from yolov2.engine import detect
    from yolov2.viz import draw_detections, save_png

    if args.image_set is not None and args.results_dir is None:
        raise InputError("--image-set names the results files: give --results-dir too")
    model = load_checkpoint(args.checkpoint, args.device)
    classes = _checkpoint_classes(args.checkpoint, model.arch.num_classes)
    if args.results_dir and not checkpoint_metadata(args.checkpoint)["meta"].get("classes"):
        raise InputError(
            f"{args.checkpoint}: records no class names, which VOC results files are named by; "
            "import it again with import-darknet --classes"
        )
    threshold = 0.005 if args.results_dir else args.conf
    letterbox = checkpoint_letterbox(args.checkpoint)  # as eval and training fed it
    found = detect(
        model, args.images, input_size=args.size, conf_thresh=threshold, letterbox=letterbox
    )
    for path, detections in zip(args.images, found, strict=True):
        shown = detections.scores >= args.conf
        kept = ImageDetections(
            detections.boxes[shown], detections.scores[shown], detections.labels[shown]
        )
        save_png(draw_detections(load_image(path), kept, classes), args.out / f"{path.stem}.png")
    log.info("drew %d images into %s", len(args.images), args.out)
    if args.results_dir:
        _write_predictions(args, found, classes)
    return 0


def _write_predictions(
    args: argparse.Namespace, found: Sequence[Any], classes: Sequence[str]
) -> None:
    from yolov2.boxes import to_voc_pixels
    from yolov2.data import load_image
    from yolov2.evaluate import Detections, write_results

    boxes = []
    for path, detections in zip(args.images, found, strict=True):
        height, width = load_image(path).shape[-2:]
        boxes.append(to_voc_pixels(detections.boxes, height, width).numpy())
    detections = Detections.from_images(
        [p.stem for p in args.images],
        boxes,
        [d.scores.numpy() for d in found],
        [d.labels.numpy() for d in found],
    )
    paths = write_results(args.results_dir, args.image_set or "test", classes, detections)
    log.info("wrote %d VOC results files into %s", len(paths), args.results_dir)


def add_predict(commands: Commands) -> None:
    p = commands.add_parser("predict", help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint", type=Path, help="checkpoint that detects (.safetensors)")
    p.add_argument("images", type=Path, nargs="+", help="images to draw the detections on")
    p.add_argument("--out", type=Path, required=True, help="folder for <image>.png")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold of the drawn boxes")
    p.add_argument("--size", type=image_size, help="input size (default: the checkpoint's)")
    p.add_argument("--results-dir", type=Path, help="also write VOC results files here")
    p.add_argument("--image-set",
                   help="with --results-dir: the <set> in comp4_det_<set>_<class>.txt (test)")  # fmt: skip
    p.add_argument("--device", type=device, default="cpu",
                   help="cpu (default), cuda, cuda:N or mps")  # fmt: skip
    p.set_defaults(run=cmd_predict)


def cmd_profile(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import load_checkpoint
    from yolov2.measure import profile

    model = load_checkpoint(args.checkpoint, device=args.device)
    size = tuple(args.size) if args.size else None
    result = profile(model, args.checkpoint, size)
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        for key, value in result.as_dict().items():
            print(f"{key:>15s}  {value:,}" if isinstance(value, int) else f"{key:>15s}  {value}")
    return 0


def add_profile(commands: Commands) -> None:
    p = commands.add_parser("profile", help="params, GFLOPs, size and latency of a checkpoint")
    p.add_argument("checkpoint", type=Path, help="checkpoint to measure (.safetensors)")
    p.add_argument("--size", type=image_size, nargs=2, metavar=("H", "W"),
                   help="input size (default: the checkpoint's)")  # fmt: skip
    p.add_argument("--device", type=device, default="cpu",
                   help="where latency is timed: cpu (default), cuda, cuda:N or mps")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_profile)


def cmd_compare(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import checkpoint_letterbox, load_checkpoint
    from yolov2.viz import MAX_IMAGES, compare

    if args.images and len(args.images) > MAX_IMAGES:
        raise InputError(f"--images: {len(args.images)} given, boxes.png shows {MAX_IMAGES}")
    dense, pruned = load_checkpoint(args.dense), load_checkpoint(args.pruned)
    classes = _checkpoint_classes(args.pruned, pruned.arch.num_classes)
    images = args.images or _test_images(args.pruned)
    letterbox = checkpoint_letterbox(args.dense), checkpoint_letterbox(args.pruned)
    paths = compare(
        dense,
        pruned,
        images,
        args.out,
        classes,
        layer=args.layer,
        conf_thresh=args.conf,
        letterbox=letterbox,
    )
    log.info("wrote %s", ", ".join(str(p) for p in paths))
    return 0


def _checkpoint_classes(checkpoint: Path, num_classes: int) -> list[str]:
    from yolov2.checkpoint import checkpoint_metadata

    classes: list[str] | None = checkpoint_metadata(checkpoint)["meta"].get("classes")
    return classes or [str(i) for i in range(num_classes)]


def _test_images(checkpoint: Path, count: int = 5) -> list[Path]:
    """The first test images of the experiment a checkpoint was made by."""
    from yolov2.engine import load_splits
    from yolov2.pipeline import config_of_checkpoint

    splits = load_splits(config_of_checkpoint(checkpoint).data)
    return [annotation.image_path for annotation in splits.test[:count]]


def add_compare(commands: Commands) -> None:
    p = commands.add_parser(
        "compare", help="the study's figures: boxes, weights and layers, before vs after"
    )
    p.add_argument("dense", type=Path, help="checkpoint before pruning")
    p.add_argument("pruned", type=Path, help="checkpoint after pruning and finetuning")
    p.add_argument(
        "--images", type=Path, nargs="+", help="up to 5 images (default: the first test images)"
    )
    p.add_argument(
        "--layer", type=int, help="conv number of the weight plot (default: the most changed)"
    )
    p.add_argument("--conf", type=float, default=0.25, help="score threshold of the drawn boxes")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNGs")
    p.set_defaults(run=cmd_compare)
