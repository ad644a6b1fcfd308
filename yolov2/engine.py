"""One train loop and one eval loop: training, finetuning and every search trial run these two."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler
from torchvision import tv_tensors
from tqdm import tqdm

from yolov2.boxes import ImageDetections, postprocess, to_voc_pixels
from yolov2.config import DataConfig, TrainConfig, shaping
from yolov2.data import (
    Annotation,
    DarknetAugment,
    EvalTransform,
    VOCDetection,
    collate_detections,
    load_image,
    make_synthetic_voc,
    read_voc,
    sample_seed,
    voc_fingerprint,
)
from yolov2.errors import InputError, TrainingDivergedError
from yolov2.evaluate import METRICS, VOCEvaluator, mean_ap, precision_recall
from yolov2.files import atomic_path
from yolov2.loss import LossConfig, region_loss
from yolov2.model import YOLOv2

if TYPE_CHECKING:
    from yolov2.prune import WeightMasks

log = logging.getLogger(__name__)

Report = Callable[[dict[str, Any]], None]
STATE_FILE = "train_state.pt"
MULTISCALE_EVERY = 10  # batches between input-size changes, as darknet's `random=1`
# Steps between reads of the loss on the host (progress bar, divergence check): each read waits for
# the device to finish every step queued before it, so a read per step would keep a GPU idle while
# the host prepares the next one.
LOG_EVERY = 10
LOSS_TERMS = ("total", "coord", "object", "noobject", "class_")


@dataclass(frozen=True)
class Splits:
    """The annotations a run trains and evaluates on, and their class names. `val` is what a
    search selects on (empty: it selects on `test`); no image of it is in `train`."""

    train: list[Annotation]
    test: list[Annotation]
    classes: list[str]
    val: list[Annotation] = field(default_factory=list)

    @property
    def selection(self) -> list[Annotation]:
        """What a run's `map` is measured on: the validation split, else the test split."""
        return self.val or self.test

    @property
    def selection_name(self) -> str:
        return "val" if self.val else "test"


# The splits this process has read, by what the data is (`load_splits`): a Ray worker kept warm
# between trials (reuse_actors) parses a data set's annotations once, not once per trial.
_READ_SPLITS: dict[tuple[object, ...], Splits] = {}
_READ_SPLITS_KEPT = 4


def load_splits(data: DataConfig, cache_dir: Path | None = None) -> Splits:
    """Read the configured VOCdevkit sets, generating the synthetic data set first if asked to.

    With a `cache_dir`, the annotations are parsed once per process and data set: kept by the
    data's fingerprint (data/fingerprint.py: its image-set lists, the bytes of its annotations,
    its images' sizes; from the digests kept in `cache_dir`, a stat of each file), so a tree
    edited in between is read again."""
    if data.synthetic is not None:
        make_synthetic_voc(data.root, classes=data.class_names(), **data.synthetic.model_dump())
    if not data.root.is_dir():
        raise InputError(f"{data.root}: data folder not found (data.root)")
    classes = data.class_names()
    if cache_dir is None:
        return _read_splits(data, classes)
    sets = [*data.train_sets, *data.val_sets, *data.test_sets]
    key = (
        str(data.root.resolve()),
        json.dumps([data.train_sets, data.val_sets, data.val_fraction, data.test_sets, classes]),
        voc_fingerprint(data.root, sets, cache_dir),
    )
    splits = _READ_SPLITS.pop(key, None)
    if splits is None:
        splits = _read_splits(data, classes)
    _READ_SPLITS[key] = splits  # the newest last
    while len(_READ_SPLITS) > _READ_SPLITS_KEPT:
        del _READ_SPLITS[next(iter(_READ_SPLITS))]
    return Splits(list(splits.train), list(splits.test), list(splits.classes), list(splits.val))


def _read_splits(data: DataConfig, classes: list[str]) -> Splits:
    train = read_voc(data.root, data.train_sets, classes)
    if data.val_sets:
        val = read_voc(data.root, data.val_sets, classes)
    else:
        val = [a for a in train if _carved(a, data.val_fraction)]
    held_out = {_image_key(a) for a in val}
    kept = [a for a in train if _image_key(a) not in held_out]
    if val and len(kept) < len(train) and data.val_sets:
        log.info("%d images of the val sets are in the train sets too: trained without them",
                 len(train) - len(kept))  # fmt: skip
    if val and not kept:
        raise InputError(f"{data.root}: the validation split holds every training image")
    test = read_voc(data.root, data.test_sets, classes)
    return Splits(train=kept, test=test, classes=classes, val=val)


def _image_key(annotation: Annotation) -> tuple[str, str]:
    """An image's identity across a VOCdevkit's years: (its VOC<year> folder, its id)."""
    return annotation.image_path.parent.parent.name, annotation.image_id


def _carved(annotation: Annotation, fraction: float) -> bool:
    """Whether `data.val_fraction` puts this image in the validation split: by a hash of its
    identity, so the carve depends on no order and an image stays where it is when a set grows."""
    if fraction <= 0:
        return False
    digest = hashlib.sha256("/".join(_image_key(annotation)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("train.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def autocasts(train: TrainConfig, device: torch.device) -> bool:
    """Whether a training step runs in bfloat16 autocast: with `train.amp`, and on CUDA alone (on
    the CPU training stays float32, whatever `amp` says)."""
    return train.amp and device.type == "cuda"


def train_precision(train: TrainConfig, device: torch.device) -> str:
    """The arithmetic training really runs in on `device`: "cpu fp32", "cuda fp32" or "cuda bf16".
    The dense cache key holds it, so a CPU and a CUDA dense model never share a key, and `amp`
    true or false on the CPU (the same float32 run) makes one key."""
    return f"{device.type} {'bf16' if autocasts(train, device) else 'fp32'}"


class MultiScaleBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Shuffled batches of (index, input size, augmentation seed), the same for the same epoch, so a
    resumed run continues exactly; the size is redrawn every 10 batches, as darknet's `random=1`
    does, and each sample's seed is `sample_seed(seed, epoch, index)`, so the batches and their
    augmentation do not depend on how many loader workers draw them."""

    def __init__(self, num_images: int, batch_size: int, sizes: Sequence[int], seed: int) -> None:
        self.num_images, self.batch_size, self.sizes, self.seed = (
            num_images,
            batch_size,
            list(sizes),
            seed,
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.num_images, generator=generator).tolist()
        batches = [
            order[i : i + self.batch_size] for i in range(0, self.num_images, self.batch_size)
        ]
        if len(batches) > 1 and len(batches[-1]) == 1:
            batches.pop()  # BatchNorm cannot normalise a batch of one image
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        rng = random.Random(self.seed * 100_003 + self.epoch)
        size = rng.choice(self.sizes)
        for count, batch in enumerate(self._batches()):
            if count and count % MULTISCALE_EVERY == 0:
                size = rng.choice(self.sizes)
            yield [(i, size, sample_seed(self.seed, self.epoch, i)) for i in batch]

    def __len__(self) -> int:
        return len(self._batches())


def train_loader(
    annotations: Sequence[Annotation], data: DataConfig, train: TrainConfig
) -> DataLoader[Any]:
    transform = DarknetAugment(
        data.input_size, letterbox=data.letterbox, **data.augment.model_dump()
    )
    dataset = VOCDetection(annotations, transform, keep_difficult=False)
    sizes = train.multiscale or [data.input_size]
    batch_sampler = MultiScaleBatchSampler(len(dataset), train.batch_size, sizes, train.seed)
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_detections,
        num_workers=data.workers,
        persistent_workers=data.workers > 0,
        pin_memory=resolve_device(train.device).type == "cuda",
    )


def eval_loader(
    annotations: Sequence[Annotation],
    data: DataConfig,
    batch_size: int,
    device: torch.device | None = None,
) -> DataLoader[Any]:
    """Batches of `annotations` at the input size; pinned when they feed a CUDA `device`."""
    dataset = VOCDetection(annotations, EvalTransform(data.input_size, data.letterbox))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate_detections,
        num_workers=data.workers,
        pin_memory=device is not None and device.type == "cuda",
    )


HELD_BYTES = 2**30  # the most a split's decoded batches may take to be held in memory


@dataclass(frozen=True)
class HeldBatches:
    """An eval loader's batches, decoded once and kept: a split that many models are evaluated on
    in turn (the sensitivity's and the screen's candidates) is not read, decoded and resized again
    for each, nor are loader workers started again. `evaluate` takes it in place of the loader."""

    dataset: VOCDetection
    batches: tuple[tuple[Tensor, list[dict[str, Any]]], ...]

    def __iter__(self) -> Iterator[tuple[Tensor, list[dict[str, Any]]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def held_eval_loader(
    annotations: Sequence[Annotation],
    data: DataConfig,
    batch_size: int,
    device: torch.device | None = None,
) -> DataLoader[Any] | HeldBatches:
    """`eval_loader`'s batches held in memory when they take at most HELD_BYTES (a VOC test set at
    416 would take gigabytes: it stays a loader, read again for each model)."""
    loader = eval_loader(annotations, data, batch_size, device)
    decoded = len(annotations) * 3 * data.input_size**2 * 4  # float32 images, letterboxed
    if decoded > HELD_BYTES:
        return loader
    return HeldBatches(loader.dataset, tuple(loader))  # type: ignore[arg-type]


def lr_factor(train: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """darknet's burn-in, (step / burn_in)^4, then steps, cosine or constant over the whole run."""

    def factor(step: int) -> float:
        if step < train.burn_in:
            return ((step + 1) / train.burn_in) ** 4
        progress = step / max(1, total_steps)
        if train.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        if train.schedule == "steps":
            return math.prod(
                s for at, s in zip(train.steps, train.scales, strict=True) if progress >= at
            )
        return 1.0

    return factor


def make_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (darknet's) or AdamW; weight decay on convolution weights only, as darknet."""
    decayed = [p for n, p in model.named_parameters() if n.endswith("conv.weight")]
    plain = [p for n, p in model.named_parameters() if not n.endswith("conv.weight")]
    groups = [
        {"params": decayed, "weight_decay": train.weight_decay},
        {"params": plain, "weight_decay": 0.0},
    ]
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr, betas=(train.momentum, 0.999))
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


@dataclass
class TrainState:
    """What resuming needs besides the weights: where the run was and the optimiser's memory."""

    epoch: int = 0
    step: int = 0
    seen: int = 0  # images trained on, which drives the loss's prior warm-up
    history: list[dict[str, Any]] = field(default_factory=list)


def memory_format(train: TrainConfig) -> torch.memory_format:
    """The layout a run trains in: channels-last (NHWC) unless the config says otherwise."""
    return torch.channels_last if train.channels_last else torch.contiguous_format


def compiled(model: YOLOv2) -> Callable[[Tensor], Tensor]:
    """`model`'s forward through torch.compile (TrainConfig.compile). Its input sizes change with
    multi-scale training and a short last batch, so shapes are compiled dynamic from the start
    rather than once per size."""
    return torch.compile(model, dynamic=True)


def train_one_epoch(
    model: YOLOv2,
    loader: DataLoader[Any],
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_config: LossConfig,
    device: torch.device,
    state: TrainState,
    train: TrainConfig,
    masks: WeightMasks | None = None,
    desc: str = "train",
    forward: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """One pass over `loader`; returns the mean of every loss term, the last lr and images/s.

    `forward` is the model's forward to train through (fit passes a compiled one with
    `train.compile`). The loss terms stay on the device and are read every LOG_EVERY steps; a
    non-finite loss raises TrainingDivergedError naming the epoch and the step it first appeared
    in, at most LOG_EVERY - 1 steps after it."""
    model.train()
    forward = forward or model
    use_amp = autocasts(train, device)
    layout = memory_format(train)
    # Batch sums of the terms in float64, as Python floats would add them; read once at the end.
    sums = torch.zeros(len(LOSS_TERMS), dtype=torch.float64, device=device)
    unread: list[Tensor] = []  # each step's total since the last read
    images = steps = 0
    start = time.perf_counter()
    progress = tqdm(loader, desc=desc, leave=False, disable=None, dynamic_ncols=True)
    for cpu_inputs, cpu_targets in progress:
        inputs = cpu_inputs.to(device, non_blocking=True)
        inputs = inputs.contiguous(memory_format=layout)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            output = forward(inputs)
        # The targets as the loader gave them: region_loss pads them on the host, one copy each.
        terms = region_loss(output, cpu_targets, model.arch.anchors, loss_config, seen=state.seen)
        optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        if train.clip_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), train.clip_grad_norm)
        optimizer.step()
        scheduler.step()
        if masks is not None:
            masks.apply(model)
        state.step += 1
        state.seen += len(inputs)
        images += len(inputs)
        steps += 1
        values = torch.stack([getattr(terms, name).detach() for name in LOSS_TERMS])
        sums += values.double() * len(inputs)
        unread.append(values[0])
        if len(unread) == LOG_EVERY:
            last = _read_totals(unread, desc, state.epoch + 1, steps + 1 - len(unread))
            progress.set_postfix(loss=f"{last:.3f}", size=inputs.shape[-1])
            unread = []
    if unread:
        _read_totals(unread, desc, state.epoch + 1, steps + 1 - len(unread))
    means = {
        f"loss/{name.rstrip('_')}": total / max(1, images)
        for name, total in zip(LOSS_TERMS, sums.tolist(), strict=True)
    }
    seconds = time.perf_counter() - start
    return {
        **means,
        "lr": optimizer.param_groups[0]["lr"],
        "images_per_s": images / max(seconds, 1e-9),
    }


def _read_totals(totals: list[Tensor], desc: str, epoch: int, first_step: int) -> float:
    """The last of these steps' losses, read on the host at once; TrainingDivergedError naming the
    first non-finite one (`first_step` is the 1-based step of `totals[0]`)."""
    values = torch.stack(totals).tolist()
    for offset, value in enumerate(values):
        if not math.isfinite(value):
            raise TrainingDivergedError(
                f"{desc}: loss is {value} at epoch {epoch}, step {first_step + offset}"
            )
    return float(values[-1])


@torch.no_grad()
def evaluate(
    model: YOLOv2,
    loader: DataLoader[Any] | HeldBatches,
    annotations: Sequence[Annotation],
    classes: Sequence[str],
    device: torch.device,
) -> dict[str, Any]:
    """VOC07 11-point mAP (`map`), all-point mAP (`map_voc12`) and per-class AP under each."""
    model.eval()
    evaluator = VOCEvaluator(classes)
    transform: Any = loader.dataset.transform  # type: ignore[union-attr]
    for inputs, targets in tqdm(loader, desc="eval", leave=False, disable=None, dynamic_ncols=True):
        detections = postprocess(model(inputs.to(device)), model.arch.anchors)
        boxes, scores, labels = [], [], []
        for found, target in zip(detections, targets, strict=True):
            height, width = target["orig_size"]
            original = transform.to_original(found.boxes.cpu(), (height, width), inputs.shape[-1])
            boxes.append(to_voc_pixels(original, height, width).numpy())
            scores.append(found.scores.cpu().numpy())
            labels.append(found.labels.cpu().numpy())
        evaluator.process([t["image_id"] for t in targets], boxes, scores, labels)
    curves = precision_recall(annotations, evaluator.detections, classes)
    voc07, voc12 = (mean_ap(curves, metric) for metric in METRICS)
    return {"map": voc07.map, "map_voc12": voc12.map, "ap": voc07.ap, "ap_voc12": voc12.ap}


def weights_digest(model: nn.Module) -> str:
    """A 16-hex-digit hash of every tensor of `model` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().view(-1)
        digest.update(f"{name} {flat.dtype} {list(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def training_settings(
    model: nn.Module,
    *,
    data: DataConfig,
    train: TrainConfig,
    loss: LossConfig,
    masks: WeightMasks | None,
    seen: int,
) -> dict[str, Any]:
    """What decides the weights a fit ends with: the shaping fields of its config sections (run-time
    knobs left out) and where it starts (weights, masks, images already seen). A training state is
    resumed only by a fit whose settings are these."""
    return {
        "data": shaping(data),
        "train": shaping(train),
        "loss": shaping(loss),
        "start": {
            "weights": weights_digest(model),
            "masks": _masks_digest(masks),
            "seen": seen,
        },
    }


def _masks_digest(masks: WeightMasks | None) -> str | None:
    if masks is None:
        return None
    digest = hashlib.sha256()
    for number, mask in sorted(masks.masks.items()):
        digest.update(f"{number} {list(mask.shape)}".encode())
        digest.update(mask.cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def settings_digest(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def save_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    *,
    settings: dict[str, Any],
) -> None:
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "seen": state.seen,
        "history": state.history,
        "settings": json.dumps(settings, sort_keys=True),
        "digest": settings_digest(settings),
    }
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


def load_state(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    settings: dict[str, Any],
) -> TrainState:
    """The training state at `path`, loaded into model, optimizer and scheduler, if it was saved by
    a fit with these `settings`; otherwise an InputError that says what differs and how to start
    afresh (a resumed run must end where an uninterrupted one would)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as error:
        raise InputError(
            f"{path}: cannot resume from this training state ({str(error).splitlines()[0]})"
        ) from None
    if payload.get("digest") != settings_digest(settings):
        recorded = json.loads(payload["settings"]) if "settings" in payload else {}
        changed = _differences(recorded, settings) if recorded else ["(no settings recorded)"]
        raise InputError(
            f"{path}: a training state of other settings ({', '.join(changed[:3])}"
            f"{', ...' if len(changed) > 3 else ''}); to start afresh remove {path.parent} "
            "or pick another output folder"
        )
    try:
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scheduler.load_state_dict(payload["scheduler"])
    except (RuntimeError, KeyError, ValueError) as error:
        raise InputError(
            f"{path}: cannot resume from this training state ({str(error).splitlines()[0]})"
        ) from None
    return TrainState(payload["epoch"], payload["step"], payload["seen"], list(payload["history"]))


def _differences(old: Any, new: Any, key: str = "") -> list[str]:
    """The dotted keys whose values differ between two nested dicts, as 'key old -> new'."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for name in sorted(set(old) | set(new))
            for change in _differences(old.get(name), new.get(name), f"{key}.{name}".lstrip("."))
        ]
    return [] if old == new else [f"{key} {old} -> {new}"]


@dataclass(frozen=True)
class FitResult:
    model: YOLOv2
    history: list[dict[str, Any]]  # one entry per epoch: losses, lr, images/s, map when evaluated
    final: dict[str, Any]  # the last evaluation: map, map_voc12, ap
    seen: int  # images the weights have been trained on, the starting weights' included


def fit(
    model: YOLOv2,
    splits: Splits,
    *,
    data: DataConfig,
    train: TrainConfig,
    loss: LossConfig,
    out_dir: str | os.PathLike[str],
    report: Report | None = None,
    masks: WeightMasks | None = None,
    tag: str = "train",
    seen: int = 0,
) -> FitResult:
    """Train `model` for `train.epochs`, resuming from `out_dir` if a run of the same settings there
    was interrupted (and refusing a training state of other settings: `load_state`).

    `seen` is how many images the starting weights have been trained on (darknet's `seen`: a
    finetune passes the dense stage's), unless `train.seen` says otherwise; the loss's prior
    warm-up runs while the count is below `loss.prior_warmup_images`. Saves the training state
    every epoch, writes TensorBoard scalars under `out_dir`, and calls `report` with each epoch's
    metrics (the search reports them to Ray Tune through it). The maps it measures are on
    `splits.selection`: the validation split where there is one.
    """
    from torch.utils.tensorboard import SummaryWriter

    out = Path(out_dir)
    start_seen = train.seen if train.seen is not None else seen
    settings = training_settings(
        model, data=data, train=train, loss=loss, masks=masks, seen=start_seen
    )
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(train.device)
    torch.manual_seed(train.seed)
    np.random.seed(train.seed)
    model = model.to(device)
    model = model.to(memory_format=memory_format(train))
    loader = train_loader(splits.train, data, train)
    selection_loader = eval_loader(splits.selection, data, train.batch_size, device)
    optimizer = make_optimizer(model, train)
    forward = compiled(model) if train.compile else None
    total_steps = max(1, train.epochs * len(loader))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(train, total_steps))
    state_path = out / STATE_FILE
    state = (
        load_state(state_path, model, optimizer, scheduler, settings)
        if state_path.exists()
        else TrainState(seen=start_seen)
    )
    if state.epoch:
        log.info("%s: resuming %s at epoch %d of %d", tag, out, state.epoch + 1, train.epochs)
    final: dict[str, Any] = {}
    with SummaryWriter(str(out / "tensorboard")) as writer:
        while state.epoch < train.epochs:
            loader.batch_sampler.set_epoch(state.epoch)  # type: ignore[union-attr]
            desc = f"{tag} {state.epoch + 1}/{train.epochs}"
            metrics: dict[str, Any] = train_one_epoch(
                model,
                loader,
                optimizer=optimizer,
                scheduler=scheduler,
                loss_config=loss,
                device=device,
                state=state,
                train=train,
                masks=masks,
                desc=desc,
                forward=forward,
            )
            state.epoch += 1
            last = state.epoch == train.epochs
            if last or (train.eval_every and state.epoch % train.eval_every == 0):
                final = evaluate(model, selection_loader, splits.selection, splits.classes, device)
                metrics.update(map=final["map"], map_voc12=final["map_voc12"])
            metrics["epoch"] = state.epoch
            _log_epoch(writer, tag, metrics, state.epoch)
            state.history.append(metrics)
            save_state(state_path, model, optimizer, scheduler, state, settings=settings)
            if report is not None:
                report(dict(metrics))
    if not final:
        final = evaluate(model, selection_loader, splits.selection, splits.classes, device)
    return FitResult(
        model.to(memory_format=torch.contiguous_format), state.history, final, state.seen
    )


def _log_epoch(writer: Any, tag: str, metrics: Mapping[str, Any], epoch: int) -> None:
    for name, value in metrics.items():
        if isinstance(value, (int, float)) and name != "epoch":
            writer.add_scalar(f"{tag}/{name}", value, epoch)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float))
    log.info("%s epoch %d: %s", tag, epoch, shown)


@torch.no_grad()
def detect(
    model: YOLOv2,
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    input_size: int | None = None,
    conf_thresh: float = 0.25,
    letterbox: bool = False,
) -> list[ImageDetections]:
    """Detections of each image file in its own pixels (0-based XYXY); darknet's demo threshold."""
    model.eval()
    device = next(model.parameters()).device
    size = input_size or model.arch.input_size[0]
    transform = EvalTransform(size, letterbox)
    results = []
    for path in image_paths:
        image = load_image(Path(path))
        height, width = image.shape[-2:]
        empty = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.zeros(0, 4), format="XYXY", canvas_size=(height, width)
            )
        }
        inputs, _ = transform(tv_tensors.Image(image), empty)
        (found,) = postprocess(
            model(inputs[None].to(device)), model.arch.anchors, conf_thresh=conf_thresh
        )
        boxes = transform.to_original(found.boxes.cpu(), (height, width))
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        results.append(ImageDetections(boxes, found.scores.cpu(), found.labels.cpu()))
    return results
