"""The data and tool commands: `make-data`, `anchors`, `eval-dets` and `cache`, each parser beside
its function."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from search.cli_args import (
    Commands,
    add_experiment,
    class_names,
    experiment_config,
    positive_int,
)

if TYPE_CHECKING:
    from yolov2.cache import CacheEntry

log = logging.getLogger("prune-search")


def cmd_make_data(args: argparse.Namespace) -> int:
    from yolov2.data import make_synthetic_voc

    root = make_synthetic_voc(
        args.out, num_trainval=args.trainval, num_val=args.val, num_test=args.test, seed=args.seed
    )
    log.info("synthetic VOCdevkit ready at %s", root)
    return 0


def add_make_data(commands: Commands) -> None:
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
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the generated images (default: 0)"
    )
    p.set_defaults(run=cmd_make_data)


def cmd_anchors(args: argparse.Namespace) -> int:
    from yolov2.anchors import box_sizes, kmeans_anchors, mean_best_iou
    from yolov2.engine import load_splits
    from yolov2.pipeline import dense_architecture

    config = experiment_config(args)
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


def add_anchors(commands: Commands) -> None:
    p = commands.add_parser(
        "anchors", help="YOLOv2's dimension clusters: k-means anchors for an experiment's data"
    )
    add_experiment(p)
    p.add_argument("--num", type=positive_int, default=0,
                   help="number of anchors (default: as many as the experiment has)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="k-means++ seed (default: 0)")
    p.set_defaults(run=cmd_anchors)


def cmd_eval_dets(args: argparse.Namespace) -> int:
    from yolov2.data import read_voc
    from yolov2.evaluate import evaluate_detections, read_results

    classes = class_names(args.classes)
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


def add_eval_dets(commands: Commands) -> None:
    p = commands.add_parser("eval-dets", help="VOC mAP of results files against a VOCdevkit")
    p.add_argument("--voc-root", type=Path, required=True, help="the VOCdevkit folder")
    p.add_argument("--year", default="2007",
                   help="the VOC<year> folder of the ground truth (default: 2007)")  # fmt: skip
    p.add_argument("--image-set", default="test",
                   help="the image set scored, as in ImageSets/Main/<set>.txt and "
                   "comp4_det_<set>_<class>.txt (default: test)")  # fmt: skip
    p.add_argument(
        "--results", type=Path, required=True, help="folder of comp4_det_<set>_<class>.txt"
    )
    p.add_argument("--metric", choices=["voc07", "voc12"], default="voc07",
                   help="voc07: 11-point AP (default); voc12: all-point AP (VOC2010+)")  # fmt: skip
    p.add_argument("--classes", default=None,
                   help="'voc' (default), 'synthetic', a file with one name a line, or a,b,c")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=cmd_eval_dets)


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


def add_cache(commands: Commands) -> None:
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
