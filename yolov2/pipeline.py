"""train → prune → finetune → measure: the one pipeline behind `prune-search pipeline` and every trial.

Free of Ray: the search passes a `report` callback that forwards each epoch to Ray Tune, the command
line passes one that logs. The dense stage is cached by a key of what makes it (`dense_key`: the
config sections that shape it, what the data is, the precision it trains in), so reruns and the
trials of a search that leave those alone train it once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import socket
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from yolov2.checkpoint import checkpoint_metadata, load_checkpoint, save_checkpoint
from yolov2.config import (
    ExperimentConfig,
    ModelConfig,
    PruneConfig,
    TrainConfig,
    config_from_record,
    json_digest,
    shaping,
    write_resolved,
)
from yolov2.darknet import load_darknet_weights, parse_cfg
from yolov2.data.fingerprint import voc_fingerprint
from yolov2.engine import (
    Report,
    Splits,
    eval_loader,
    evaluate,
    fit,
    held_eval_loader,
    load_splits,
    resolve_device,
    train_precision,
)
from yolov2.errors import InputError
from yolov2.files import write_text_atomic
from yolov2.latency import MeasureLatency, at_input_size, local_latency
from yolov2.measure import count_params, profile
from yolov2.model import Architecture, YOLOv2, build_model, yolov2_tiny_voc, yolov2_voc
from yolov2.prune import WeightMasks, expand_ratios, prune_filters, prune_weights, pruned_widths

log = logging.getLogger(__name__)

DENSE_SECTIONS = ("data", "model", "loss", "train")
# The numbers every pipeline run measures, by the names Ray results, CSV, TensorBoard and
# checkpoints share (design.md); `node` and `device` say where they were measured.
METRIC_NAMES = (
    "map",
    "map_voc12",
    "size_mb",
    "params",
    "nonzero_params",
    "sparsity",
    "gflops",
    "latency_ms",
    "dense_map",
    "pruned_map",
    *("test_map", "test_map_voc12"),
)
# `map` and `map_voc12` are on the selection split (engine.Splits.selection): the validation split
# where the experiment has one. A search measures these on the test split only for the models it
# has chosen (search/holdout.py); where there is no validation split they are `map` itself.
TEST_METRICS = ("test_map", "test_map_voc12")
METRICS_FILE = "metrics.json"
CHECKPOINT_FILE = "model.safetensors"  # a run's model, beside its metrics
DENSE_CACHE = "dense"  # the cache's folder of dense stages, one folder per key (dense_key)
CPU_PRECISION = "cpu fp32"  # engine.train_precision on the CPU, whatever train.amp says
LOCK_FILE = ".lock"  # held while a dense stage is trained into its folder


def architecture(model: ModelConfig, num_classes: int, input_size: int) -> Architecture:
    """The dense architecture an experiment's model section describes."""
    build = yolov2_voc if model.family == "yolov2" else yolov2_tiny_voc
    kwargs: dict[str, Any] = {
        "num_classes": num_classes,
        "width": model.width,
        "input_size": (input_size, input_size),
    }
    if model.anchors is not None:
        kwargs["anchors"] = tuple(model.anchors)
    return build(**kwargs)


def dense_architecture(config: ExperimentConfig, num_classes: int) -> Architecture:
    """The architecture the dense stage trains: the model section's, or the one `model.darknet.cfg`
    describes, at the input size it is trained at (`data.input_size`) either way, so predict and
    profile default to that size. Model keys the cfg contradicts are refused, never ignored."""
    size = config.data.input_size
    darknet = config.model.darknet
    if darknet is None or darknet.cfg is None:
        return architecture(config.model, num_classes, size)
    arch, _ = parse_cfg(darknet.cfg)
    _refuse_conflicts(config.model, arch, darknet.cfg)
    if arch.num_classes != num_classes:
        raise InputError(f"{darknet.cfg}: {arch.num_classes} classes, the data has {num_classes}")
    return dataclasses.replace(arch, input_size=(size, size))


def _refuse_conflicts(model: ModelConfig, arch: Architecture, cfg: Path) -> None:
    given = model.model_fields_set
    anchors = model.anchors if "anchors" in given else None
    if anchors is not None and tuple((float(w), float(h)) for w, h in anchors) != arch.anchors:
        raise InputError(
            f"model.anchors {anchors} conflict with the anchors of {cfg}; leave "
            "model.anchors out (model.darknet.cfg decides the architecture) or edit the cfg"
        )
    if given & {"family", "width"}:
        described = architecture(
            model.model_copy(update={"anchors": list(arch.anchors)}),
            arch.num_classes,
            arch.input_size[0],
        )
        if described.layers != arch.layers:
            raise InputError(
                f"model.family {model.family!r} at model.width {model.width} is not the network "
                f"{cfg} describes; leave them out (model.darknet.cfg decides the architecture)"
            )


def initial_model(config: ExperimentConfig, num_classes: int) -> YOLOv2:
    """A fresh model, or darknet's weights (full, or a partial backbone) when the config names them."""
    arch = dense_architecture(config, num_classes)
    torch.manual_seed(config.train.seed)  # the same experiment starts from the same weights
    model = build_model(arch)
    if config.model.darknet is not None:
        load_darknet_weights(model, config.model.darknet.weights)
    return model


@dataclass(frozen=True)
class Stage:
    """What a stage hands on: the model, its checkpoint and its evaluation."""

    model: YOLOv2
    checkpoint: Path
    map: float
    map_voc12: float
    seen: int  # images the weights have been trained on (darknet's `seen`)


def train_dense(
    config: ExperimentConfig, splits: Splits, out_dir: Path, report: Report | None = None
) -> Stage:
    """1. dense: train from scratch or darknet weights into `out_dir/model.safetensors`."""
    model = initial_model(config, len(splits.classes))
    write_resolved(config, out_dir, replace=False)
    result = fit(
        model,
        splits,
        data=config.data,
        train=config.train,
        loss=config.loss,
        out_dir=out_dir,
        report=report,
        tag="train",
    )
    checkpoint = save_checkpoint(
        result.model,
        out_dir / CHECKPOINT_FILE,
        **_provenance(config, "dense", DENSE_SECTIONS),
        classes=splits.classes,
        metrics={"map": result.final["map"], "map_voc12": result.final["map_voc12"]},
        seen=result.seen,
    )
    write_resolved(config, out_dir)
    return Stage(
        result.model, checkpoint, result.final["map"], result.final["map_voc12"], result.seen
    )


def dense_key(config: ExperimentConfig, data: str | None, precision: str) -> str:
    """The dense stage's cache key: a pure function of what makes the dense model (and the test
    map and sensitivity tables kept beside it). That is the shaping fields of DENSE_SECTIONS
    (run-time knobs left out), what the data is (`data`: a real VOCdevkit's content fingerprint,
    in place of its path; None for generated data, known by its recipe) and the arithmetic the
    training runs in (`precision`, from engine.train_precision). `train.amp` counts through the
    precision alone, so on the CPU amp true and false share a key; the CPU's float32 adds nothing
    to the key, so generated data trained on the CPU keeps the key it had before the data's content
    and the precision were keyed (and its cached dense model)."""
    amp_default: bool = TrainConfig.model_fields["amp"].default
    as_ran = config.model_copy(
        update={"train": config.train.model_copy(update={"amp": amp_default})}
    )
    chosen: list[Any] = [
        [type(s).__name__, shaping(s)] for s in (getattr(as_ran, n) for n in DENSE_SECTIONS)
    ]
    if data is not None:
        chosen[DENSE_SECTIONS.index("data")][1]["root"] = data  # what the tree is, not where
    if precision != CPU_PRECISION:
        chosen.append(["precision", precision])
    return json_digest(chosen)


def dense_key_here(config: ExperimentConfig) -> str:
    """`dense_key` of `config` on this machine: its data's content as read here (the annotations'
    digests kept in the cache), and the precision of the device `train.device` resolves to here
    ('auto' is CUDA on a machine with a GPU)."""
    data = config.data
    content = None
    if data.synthetic is None:
        sets = [*data.train_sets, *data.test_sets]
        content = voc_fingerprint(data.root, sets, config.cache_dir)
    device = resolve_device(config.train.device)
    return dense_key(config, content, train_precision(config.train, device))


def dense_folder(config: ExperimentConfig) -> Path:
    """The cache's folder of the experiment's dense stage on this machine (`dense_key_here`)."""
    return config.cache_dir / DENSE_CACHE / dense_key_here(config)


def cached_dense(config: ExperimentConfig, splits: Splits, report: Report | None = None) -> Stage:
    """The dense stage from the cache, training it first if no run has yet (one trainer at a time)."""
    directory = dense_folder(config)
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory / LOCK_FILE):
        checkpoint = directory / CHECKPOINT_FILE
        if checkpoint.exists():
            log.info("dense stage: reusing %s", checkpoint)
            meta = json.loads((directory / METRICS_FILE).read_text())
            model = load_checkpoint(checkpoint)
            return Stage(model, checkpoint, meta["map"], meta["map_voc12"], meta["seen"])
        stage = train_dense(config, splits, directory, report)
        recorded = {"map": stage.map, "map_voc12": stage.map_voc12, "seen": stage.seen}
        write_text_atomic(directory / METRICS_FILE, json.dumps(recorded))
        return stage


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    # Trials of a search on one machine share the cache; the lock makes the first one train it.
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def prune(
    model: YOLOv2, config: PruneConfig, dense: Architecture | None = None, fraction: float = 1.0
) -> tuple[YOLOv2, WeightMasks | None]:
    """2. prune `model` to `fraction` of the way to the configured ratios of the `dense` architecture.

    Iterative pruning calls this with fractions 1/k, 2/k, .. 1: each round keeps the same share,
    (1 - r)^(1/k), so k rounds reach exactly the one-shot model's sparsity or widths.
    """
    dense = dense or model.arch
    ratios = [1 - (1 - r) ** fraction for r in expand_ratios(dense, config.ratio, config.ratios)]
    if config.method == "weight":
        # Zeros rank first by magnitude, so a share of all weights counts the earlier rounds' zeros.
        return model, prune_weights(model, ratios, scope=config.scope)
    if config.method == "filter":
        targets = pruned_widths(dense, ratios, config.min_channels, config.round_to)
        relative = [1 - t / c for t, c in zip(targets[:-1], model.arch.widths[:-1], strict=True)]
        return prune_filters(
            model, relative, config.criterion, config.min_channels, config.round_to
        ), None
    return model, None


@dataclass(frozen=True)
class PipelineResult:
    checkpoint: Path
    metrics: dict[str, Any]


def run(
    config: ExperimentConfig,
    out_dir: str | os.PathLike[str],
    report: Report | None = None,
    latency: MeasureLatency | None = None,
    test: bool = True,
) -> PipelineResult:
    """dense → prune (one shot or in rounds) → finetune → measure; metrics.json beside the checkpoint.

    `report` gets every finetune epoch's metrics together with the pruned model's costs (size_mb,
    gflops, latency_ms, ...), which finetuning does not change, so a search sees both objectives
    every epoch. `latency` gives an architecture's latency_ms (yolov2.latency): by default timed
    here and cached in the experiment's cache; a search passes its own, shared by its trials.
    The maps are on the selection split; `test` adds the test split's (TEST_METRICS), which a
    search's trial leaves to the end of the search, for the models it chooses.
    """
    out = Path(out_dir)
    latency = latency or local_latency(config.cache_dir, config.search.cpus_per_trial)
    splits = load_splits(config.data, config.cache_dir)  # parsed once per process
    # A conflicting darknet cfg or a wrong ratio count fails before the dense model trains.
    arch = dense_architecture(config, len(splits.classes))
    if config.prune.method != "none":
        expand_ratios(arch, config.prune.ratio, config.prune.ratios)
    write_resolved(config, out, replace=False)
    # 1. dense
    dense = cached_dense(config, splits)
    # 2. prune and 3. finetune
    model, evaluation = prune_and_finetune(dense, config, splits, out, report, latency=latency)
    # 4. measure
    checkpoint = save_pruned(model, out / CHECKPOINT_FILE, config, splits.classes)
    metrics = {
        **measure(model, checkpoint, config, dense.model, latency),
        **_maps(evaluation),
        "dense_map": dense.map,
        "pruned_map": float(evaluation["pruned_map"]),
        "map_split": splits.selection_name,
    }
    if test or not splits.val:
        metrics.update(maps_on_test(model, config, splits, metrics))
    write_text_atomic(out / METRICS_FILE, json.dumps(metrics, indent=2))
    write_resolved(config, out)
    return PipelineResult(checkpoint, metrics)


def prune_and_finetune(
    dense: Stage,
    config: ExperimentConfig,
    splits: Splits,
    out: Path,
    report: Report | None,
    *,
    latency: MeasureLatency | None = None,
) -> tuple[YOLOv2, dict[str, Any]]:
    """`prune.iterations` rounds of prune + finetune; the last finetune is the one reported.

    The evaluation returned holds `pruned_map`, the map after the last pruning and before its
    finetune. Each finetune carries on the count of images the weights it starts from have seen
    (darknet's `seen`), so it does not restart the loss's prior warm-up (unless `finetune.seen`
    is set). With `prune.method: none` the dense model is measured as it is: the baseline of a
    search.
    """
    model, seen = dense.model, dense.seen
    evaluation: dict[str, Any] = {"map": dense.map, "map_voc12": dense.map_voc12}
    rounds = config.prune.iterations if config.prune.method != "none" else 0
    pruned_map = dense.map
    for index in range(1, rounds + 1):
        model, masks = prune(model, config.prune, dense.model.arch, index / rounds)
        last = index == rounds
        if last:
            pruned_map = evaluate_model(model, config, splits)["map"]
        tuned = fit(
            model,
            splits,
            data=config.data,
            train=config.finetune,
            loss=config.finetune_loss or config.loss,
            out_dir=out / f"finetune_{index}",
            report=_with_costs(
                report,
                model,
                config=config,
                dense=dense.model,
                splits=splits,
                pruned_map=pruned_map,
                latency=latency,
            )
            if last
            else None,
            masks=masks,
            tag=f"finetune {index}/{rounds}",
            seen=seen,
        )
        model, evaluation, seen = tuned.model, tuned.final, tuned.seen
    return model, {**evaluation, "pruned_map": pruned_map}


def _with_costs(
    report: Report | None,
    model: YOLOv2,
    *,
    config: ExperimentConfig,
    dense: YOLOv2,
    splits: Splits,
    pruned_map: float,
    latency: MeasureLatency | None = None,
) -> Report | None:
    """`report` with the pruned model's costs added to every epoch, measured once before finetuning
    (which keeps the architecture and the zeros, so the costs hold for every epoch: latency_ms is
    the architecture's, the figure the final report gives too), and `map` the latest evaluated one
    (after pruning, until the finetune first evaluates)."""
    if report is None:
        return None
    with tempfile.TemporaryDirectory() as scratch:
        checkpoint = save_pruned(model, Path(scratch) / CHECKPOINT_FILE, config, splits.classes)
        costs = measure(model, checkpoint, config, dense, latency)
    forward = report  # the narrowed type, for the closure
    latest = {"map": pruned_map, "pruned_map": pruned_map}

    def with_costs(metrics: dict[str, Any]) -> None:
        latest.update({k: metrics[k] for k in ("map", "map_voc12") if k in metrics})
        forward({**costs, **metrics, **latest})

    return with_costs


def evaluate_model(
    model: YOLOv2, config: ExperimentConfig, splits: Splits, on_test: bool = False
) -> dict[str, Any]:
    """map, map_voc12 and per-class AP of `model` on the selection split (the validation split,
    else the test sets), or on the test sets."""
    device = resolve_device(config.train.device)
    annotations = splits.test if on_test else splits.selection
    loader = eval_loader(annotations, config.data, config.train.batch_size, device)
    return evaluate(model.to(device), loader, annotations, splits.classes, device)


def selection_evaluator(
    config: ExperimentConfig, splits: Splits
) -> Callable[[YOLOv2], dict[str, Any]]:
    """`evaluate_model` on the selection split for many models in turn, the split's batches
    decoded once and held in memory where they fit (`held_eval_loader`)."""
    device = resolve_device(config.train.device)
    annotations = splits.selection
    loader = held_eval_loader(annotations, config.data, config.train.batch_size, device)
    return lambda model: evaluate(model.to(device), loader, annotations, splits.classes, device)


def maps_on_test(
    model: YOLOv2, config: ExperimentConfig, splits: Splits, metrics: dict[str, Any] | None = None
) -> dict[str, float]:
    """TEST_METRICS of `model`: its maps on the test sets (`metrics`' own maps, when they are on
    the test sets already: no validation split)."""
    if metrics is not None and not splits.val:
        return {"test_map": metrics["map"], "test_map_voc12": metrics["map_voc12"]}
    measured = evaluate_model(model, config, splits, on_test=True)
    return {"test_map": float(measured["map"]), "test_map_voc12": float(measured["map_voc12"])}


def save_pruned(model: YOLOv2, path: Path, config: ExperimentConfig, classes: list[str]) -> Path:
    """The pipeline's checkpoint of `model`: its size is the `size_mb` every view shows."""
    return save_checkpoint(model, path, **_provenance(config, "pipeline", ()), classes=classes)


def _maps(evaluation: dict[str, Any]) -> dict[str, float]:
    return {"map": float(evaluation["map"]), "map_voc12": float(evaluation["map_voc12"])}


def measure(
    model: YOLOv2,
    checkpoint: Path,
    config: ExperimentConfig,
    dense: YOLOv2,
    latency: MeasureLatency | None = None,
) -> dict[str, Any]:
    """4. measure: every cost metric of design.md, with the names Ray, CSV and TensorBoard share.

    `sparsity` is 1 - nonzero params / the dense model's params, so weight- and filter-pruned models
    share one axis (a filter-pruned model has few zeros, but far fewer params than the dense one).
    `latency_ms` is the architecture's at the input size (`latency`, or timed here and cached in the
    experiment's cache), the same figure for every model of that architecture on this device kind.
    """
    device = resolve_device(config.train.device)
    size = (config.data.input_size, config.data.input_size)
    latency = latency or local_latency(config.cache_dir, config.search.cpus_per_trial)
    figure = latency(at_input_size(model.arch, size), device)
    cost = profile(model.to(device), checkpoint, size, latency=figure)
    dense_params, _ = count_params(dense)
    return {
        "size_mb": cost.size_mb,
        "params": cost.params,
        "nonzero_params": cost.nonzero_params,
        "sparsity": 1.0 - cost.nonzero_params / dense_params,
        "gflops": cost.gflops,
        "latency_ms": cost.latency_ms,
        "node": socket.gethostname(),
        "device": str(device),
    }


def config_of_checkpoint(checkpoint: Path, overrides: list[str] | None = None) -> ExperimentConfig:
    """The experiment a checkpoint was made by, as recorded in it (its data, its input size), with
    `key.sub=value` overrides: `data.root=...` on a machine where the data lives elsewhere."""
    meta = checkpoint_metadata(checkpoint)["meta"]
    if "config" not in meta:
        raise InputError(f"{checkpoint}: records no experiment; pass --experiment")
    return config_from_record(meta["config"], overrides, f"{checkpoint} (its recorded experiment)")


def evaluate_checkpoint(checkpoint: Path, config: ExperimentConfig) -> dict[str, Any]:
    """map, map_voc12 and per-class AP of a checkpoint on the config's test sets."""
    return evaluate_model(load_checkpoint(checkpoint), config, load_splits(config.data), True)


def _provenance(config: ExperimentConfig, stage: str, sections: tuple[str, ...]) -> dict[str, Any]:
    return {
        "stage": stage,
        "experiment": config.name,
        "config": config.model_dump(mode="json"),
        "config_digest": config.digest(*sections),
        "input_size": config.data.input_size,
    }
