"""The `prune-search` command line: one console script, a subcommand per job, clear one-line errors."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.commands import DEFAULT_EXPERIMENT, add_search_commands, positive_int
from yolov2.errors import InputError, TrainingDivergedError

if TYPE_CHECKING:
    from yolov2.cache import CacheEntry
    from yolov2.config import ExperimentConfig

log = logging.getLogger("prune-search")

Command = Callable[[argparse.Namespace], int]
SENSITIVITY_RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def _image_size(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 32")
    return value


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
    classes = _classes(spec)
    if len(classes) != num_classes:
        raise InputError(f"--classes: {len(classes)} names for the {num_classes} classes of {cfg}")
    return classes


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


def cmd_eval_dets(args: argparse.Namespace) -> int:
    from yolov2.data import read_voc
    from yolov2.evaluate import evaluate_detections, read_results

    classes = _classes(args.classes)
    truth = read_voc(args.voc_root, [(args.year, args.image_set)], classes)
    detections = read_results(args.results, args.image_set, classes)
    result = evaluate_detections(truth, detections, classes, metric=args.metric)
    if args.json:
        print(json.dumps({"metric": result.metric, "map": result.map, "ap": result.ap}))
    else:
        for name, ap in result.ap.items():
            print(f"{name:>15s}  {ap:.4f}")
        print(f"{'mAP (' + result.metric + ')':>15s}  {result.map:.4f}")
    return 0


def _classes(spec: str | None) -> list[str]:
    """'voc' (also the default), 'synthetic', a file with one name a line, or names a,b,c."""
    from yolov2.data import SYNTHETIC_CLASSES, VOC_CLASSES

    if spec is None or spec == "voc":
        return list(VOC_CLASSES)
    if spec == "synthetic":
        return list(SYNTHETIC_CLASSES)
    path = Path(spec).expanduser()
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif _looks_like_a_path(spec):
        raise InputError(f"--classes {spec}: no such file")
    else:
        names = [name.strip() for name in spec.split(",") if name.strip()]
    if not names:
        raise InputError(f"--classes {spec!r}: no class names")
    if len(set(names)) != len(names):
        raise InputError(f"--classes {spec!r}: a class name is repeated")
    return names


def _looks_like_a_path(spec: str) -> bool:
    # Class names have no folders nor file suffixes; 'classes.txt' or 'data/voc.names' is a file.
    return "," not in spec and (
        "/" in spec or spec.startswith(("~", ".")) or bool(Path(spec).suffix)
    )


def cmd_make_data(args: argparse.Namespace) -> int:
    from yolov2.data import make_synthetic_voc

    root = make_synthetic_voc(
        args.out, num_trainval=args.trainval, num_val=args.val, num_test=args.test, seed=args.seed
    )
    log.info("synthetic VOCdevkit ready at %s", root)
    return 0


_CACHE_SOURCES = {
    "PRUNE_SEARCH_CACHE": "set by PRUNE_SEARCH_CACHE",
    "XDG_CACHE_HOME": "$XDG_CACHE_HOME/prune-search; PRUNE_SEARCH_CACHE would move it",
    "default": "the default; PRUNE_SEARCH_CACHE or XDG_CACHE_HOME would move it",
}
_CACHE_HEADINGS = {
    "synthetic": "synthetic data sets",
    "dense": "dense models",
    "fingerprints": "real data sets' annotation digests (read again when cleared)",
    "latency": "latency figures by architecture (timed again when cleared)",
    "partial": "interrupted generations",
    "other": "not written by prune-search (--clear leaves it)",
}


def cmd_cache(args: argparse.Namespace) -> int:
    from yolov2.cache import cache_contents, clear_cache
    from yolov2.config import cache_location

    root, source = cache_location()
    print(f"cache: {root} ({_CACHE_SOURCES[source]})")
    if args.clear:
        removed = clear_cache(root)
        for entry in removed:
            print(f"removed {_cache_line(entry, root)}")
        print(f"removed {_bytes(sum(e.size_bytes for e in removed))} in {len(removed)} entries")
    entries = cache_contents(root)
    if not entries:
        print("  empty" if root.is_dir() else "  nothing cached (the folder does not exist)")
        return 0
    size, files = sum(e.size_bytes for e in entries), sum(e.files for e in entries)
    print(
        f"{'left' if args.clear else 'holds'} {_bytes(size)} in {files:,} file{'s' * (files != 1)}"
    )
    for kind, heading in _CACHE_HEADINGS.items():
        shown = [e for e in entries if e.kind == kind]
        if shown:
            print(f"{heading}:")
        for entry in shown:
            print(f"  {_cache_line(entry, root)}")
    return 0


def _cache_line(entry: CacheEntry, root: Path) -> str:
    return f"{_bytes(entry.size_bytes):>9}  {entry.path.relative_to(root)}: {entry.about}"


def _bytes(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count} B"


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


def _load_config(args: argparse.Namespace) -> ExperimentConfig:
    from yolov2.config import load_config

    return load_config(args.config, args.set)


def cmd_train(args: argparse.Namespace) -> int:
    from yolov2.engine import load_splits
    from yolov2.pipeline import train_dense

    config = _load_config(args)
    splits = load_splits(config.data)
    stage = train_dense(config, splits, args.out)
    log.info(
        "wrote %s: map %.4f (VOC07 11-point), map_voc12 %.4f",
        stage.checkpoint,
        stage.map,
        stage.map_voc12,
    )
    return 0


def cmd_anchors(args: argparse.Namespace) -> int:
    from yolov2.anchors import box_sizes, kmeans_anchors, mean_best_iou
    from yolov2.engine import load_splits
    from yolov2.pipeline import dense_architecture

    config = _load_config(args)
    splits = load_splits(config.data)
    size = config.data.input_size
    sizes = box_sizes(splits.train, size, letterbox=config.data.letterbox)
    current = dense_architecture(config, len(splits.classes)).anchors
    anchors = kmeans_anchors(sizes, args.num or len(current), seed=args.seed)
    listed = ", ".join(f"[{w:.3f}, {h:.3f}]" for w, h in anchors)
    print(f"# k-means (1 - IoU) over {len(sizes):,} training boxes at input {size} "
          f"({size // 32} x {size // 32} grid cells)")  # fmt: skip
    print(f"# mean best IoU: {mean_best_iou(sizes, anchors):.3f} with these anchors, "
          f"{mean_best_iou(sizes, current):.3f} with the experiment's")  # fmt: skip
    print(f"model:\n  anchors: [{listed}]")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from yolov2.pipeline import run

    result = run(_load_config(args), args.out)
    print(json.dumps(result.metrics, indent=2))
    log.info("wrote %s and %s", result.checkpoint, result.checkpoint.with_name("metrics.json"))
    return 0


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


def cmd_eval(args: argparse.Namespace) -> int:
    from yolov2.pipeline import config_of_checkpoint, evaluate_checkpoint

    config = _load_config(args) if args.config else config_of_checkpoint(args.checkpoint, args.set)
    result = evaluate_checkpoint(args.checkpoint, config)
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


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from yolov2.checkpoint import load_checkpoint
    from yolov2.engine import load_splits
    from yolov2.pipeline import config_of_checkpoint
    from yolov2.sensitivity import analyse, checked_groups, checked_ratios, format_table, write

    groups = checked_groups(args.groups)  # bad input fails before the model is read
    ratios = checked_ratios(args.ratios)
    model = load_checkpoint(args.checkpoint)
    config = _load_config(args) if args.config else config_of_checkpoint(args.checkpoint, args.set)
    table = analyse(model, config, load_splits(config.data), groups, ratios)
    print(format_table(table))
    paths = write(
        table, args.out, title=f"{config.name} ({args.checkpoint.name}): each {groups} pruned alone"
    )
    log.info("wrote %s and %s", *paths)
    return 0


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="prune-search",
        description="Search for compressed (pruned) YOLOv2 detectors. Each subcommand has --help.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_search_commands(commands)  # run, resume, pareto, best: search/commands.py

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

    p = commands.add_parser("export", help="checkpoint -> darknet files")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--format", choices=["darknet", "onnx"], default="darknet",
                   help="darknet: model.cfg + model.weights; onnx: model.onnx (checked with onnxruntime)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    p.set_defaults(run=cmd_export)

    p = commands.add_parser("eval-dets", help="VOC mAP of results files against a VOCdevkit")
    p.add_argument("--voc-root", type=Path, required=True, help="the VOCdevkit folder")
    p.add_argument("--year", default="2007")
    p.add_argument("--image-set", default="test")
    p.add_argument(
        "--results", type=Path, required=True, help="folder of comp4_det_<set>_<class>.txt"
    )
    p.add_argument("--metric", choices=["voc07", "voc12"], default="voc07",
                   help="voc07: 11-point AP (default); voc12: all-point AP (VOC2010+)")  # fmt: skip
    p.add_argument("--classes", default=None,
                   help="'voc' (default), 'synthetic', a file with one name a line, or a,b,c")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_eval_dets)

    p = commands.add_parser("make-data", help="write the synthetic VOC-format data set")
    p.add_argument("--out", type=Path, required=True, help="folder for the VOCdevkit tree")
    p.add_argument("--trainval", type=int, default=1600, help="images in trainval")
    p.add_argument(
        "--val",
        type=int,
        default=None,
        help="trainval's last images that form val (default: every other trainval image)",
    )
    p.add_argument("--test", type=int, default=400, help="images in test")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_make_data)

    p = commands.add_parser(
        "cache",
        help="where the cache of synthetic data and dense models is, how big, what it holds",
        description="Show the cache folder: PRUNE_SEARCH_CACHE, else $XDG_CACHE_HOME/prune-search, "
        "else ~/.cache/prune-search. An experiment's paths may start with ${cache}/ to live in "
        "it; its cache_dir key moves that experiment's cache elsewhere.",
    )
    p.add_argument("--clear", action="store_true",
                   help="delete the synthetic data sets and dense models in it (no questions "
                   "asked; what it deletes is printed, what prune-search did not write stays)")  # fmt: skip
    p.set_defaults(run=cmd_cache)

    p = commands.add_parser("profile", help="params, GFLOPs, size and latency of a checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--size", type=_image_size, nargs=2, metavar=("H", "W"),
                   help="input size (default: the checkpoint's)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_profile)

    p = commands.add_parser("train", help="train the dense model of an experiment")
    _experiment_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder (resumes if interrupted)")
    p.set_defaults(run=cmd_train)

    p = commands.add_parser(
        "anchors", help="YOLOv2's dimension clusters: k-means anchors for an experiment's data"
    )
    _experiment_arguments(p)
    p.add_argument("--num", type=positive_int, default=0,
                   help="number of anchors (default: as many as the experiment has)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed")
    p.set_defaults(run=cmd_anchors)

    p = commands.add_parser(
        "pipeline", help="dense -> prune -> finetune -> measure, on one machine"
    )
    _experiment_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="run folder: checkpoint + metrics.json")
    p.set_defaults(run=cmd_pipeline)

    p = commands.add_parser("prune", help="prune a checkpoint once, without finetuning")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--method", choices=["weight", "filter"], required=True)
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

    p = commands.add_parser("eval", help="VOC mAP of a checkpoint on its experiment's test set")
    p.add_argument("checkpoint", type=Path)
    p.add_argument(
        "--config", type=Path, help="experiment file (default: the one in the checkpoint)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the experiment (--config's, or else the checkpoint's), "
                   "e.g. --set data.root=/data/VOCdevkit where the data lives elsewhere")  # fmt: skip
    p.add_argument(
        "--metric", choices=["voc07", "voc12"], default="voc07", help="which AP per class to show"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_eval)

    p = commands.add_parser(
        "sensitivity",
        help="map of a checkpoint with each stage or layer alone pruned at each ratio",
        description="Prune each group (a stage, or a prunable layer) of the checkpoint alone at "
        "each ratio, without finetuning, as its experiment's prune section prunes (method, "
        "criterion, round_to, min_channels), and evaluate it: map, map drop, GFLOPs and GFLOPs "
        "saved per group and ratio. Writes sensitivity.csv and sensitivity.png into --out.",
    )
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--ratios", type=float, nargs="+", default=list(SENSITIVITY_RATIOS),
                   metavar="R", help="ratios to prune each group at, in [0, 1) "
                   "(default: 0.1 0.2 ... 0.7)")  # fmt: skip
    p.add_argument("--groups", default="stage",
                   help="stage (one group per stride, 6 for yolov2) or layer (each prunable "
                   "convolution, 22 for yolov2); default: stage")  # fmt: skip
    p.add_argument(
        "--config", type=Path, help="experiment file (default: the one in the checkpoint)"
    )
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the experiment (--config's, or else the "
                   "checkpoint's), e.g. --set prune.criterion=bn")  # fmt: skip
    p.add_argument("--out", type=Path, required=True,
                   help="folder for sensitivity.csv and sensitivity.png")  # fmt: skip
    p.set_defaults(run=cmd_sensitivity)

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

    p = commands.add_parser("predict", help="draw a checkpoint's detections on images")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True, help="folder for <image>.png")
    p.add_argument("--conf", type=float, default=0.25, help="score threshold of the drawn boxes")
    p.add_argument("--size", type=_image_size, help="input size (default: the checkpoint's)")
    p.add_argument("--results-dir", type=Path, help="also write VOC results files here")
    p.add_argument("--image-set",
                   help="with --results-dir: the <set> in comp4_det_<set>_<class>.txt (test)")  # fmt: skip
    p.add_argument("--device", default="cpu")
    p.set_defaults(run=cmd_predict)
    return parser


def _experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, nargs="?", default=DEFAULT_EXPERIMENT,
                   help="experiment YAML (default: experiments/default.yaml)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    try:
        code: int = args.run(args)
    except (InputError, TrainingDivergedError) as error:
        print(f"prune-search {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"prune-search {args.command}: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
