"""The experiment: one typed tree loaded from YAML, validated before any work, with dotted overrides.

Every section is a frozen pydantic model that forbids unknown keys, so a typo in a YAML file or in a
`--set` override is an error naming the file and the key, raised before a single image is read. Paths
are made absolute at load time because Ray runs every trial in its own working directory; a path that
starts with `${cache}` is in the experiment's cache (`cache_dir`), wherever that is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from yolov2.errors import InputError
from yolov2.loss import LossConfig

log = logging.getLogger(__name__)

# A path that starts with this is in the experiment's cache_dir: `root: ${cache}/synthetic/VOCdevkit`.
CACHE = "${cache}"
LEGACY_CACHE = Path("~/.cache/prune-search")  # the cache before XDG_CACHE_HOME was honoured


def cache_location() -> tuple[Path, str]:
    """The default cache and what decided it: $PRUNE_SEARCH_CACHE, else $XDG_CACHE_HOME/prune-search,
    else ~/.cache/prune-search (XDG's own default). Read from the environment at each call."""
    explicit = os.environ.get("PRUNE_SEARCH_CACHE")
    if explicit:
        return Path(explicit).expanduser().resolve(), "PRUNE_SEARCH_CACHE"
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():  # the XDG spec: a relative value is invalid, ignore it
        return Path(xdg) / "prune-search", "XDG_CACHE_HOME"
    return LEGACY_CACHE.expanduser(), "default"


def default_cache() -> Path:
    """Where synthetic data and dense models are cached unless an experiment sets `cache_dir`."""
    return cache_location()[0]


# YAML reads a year as a number; a set name is text either way.
Text = Annotated[
    str, BeforeValidator(lambda value: str(value) if isinstance(value, int) else value)
]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticConfig(Section):
    """Generate the synthetic VOC-format data set into `data.root` when it is not there yet."""

    num_trainval: int = Field(1600, ge=1)
    # The last `num_val` images of trainval are the val set (train the rest); None: val and train
    # are trainval's odd and even images.
    num_val: int | None = Field(None, ge=1)
    num_test: int = Field(400, ge=1)
    seed: int = 0
    objects_per_image: tuple[int, int] = (1, 6)  # drawn uniformly, inclusive
    object_size: tuple[float, float] = (0.08, 0.6)  # object side / the image's shorter side
    max_rotation_deg: float = Field(20.0, ge=0, le=180)
    max_aspect: float = Field(1.6, ge=1)
    clutter: int = Field(10, ge=0)  # mean distractor strokes and blobs per image
    noise: float = Field(8.0, ge=0)  # per-pixel Gaussian noise, grey levels

    @model_validator(mode="after")
    def _ranges(self) -> SyntheticConfig:
        low, high = self.objects_per_image
        if not 0 <= low <= high:
            raise ValueError("objects_per_image is (min, max) with 0 <= min <= max")
        if not 0 < self.object_size[0] <= self.object_size[1] <= 1:
            raise ValueError("object_size is (min, max) with 0 < min <= max <= 1")
        if self.num_val is not None and self.num_val >= self.num_trainval:
            raise ValueError("num_val must be below num_trainval: the rest of trainval is train")
        return self


class AugmentConfig(Section):
    """darknet's augmentation: crop jitter, horizontal flip, hue/saturation/exposure."""

    jitter: float = Field(0.2, ge=0, lt=0.5)
    hue: float = Field(0.1, ge=0, le=0.5)
    saturation: float = Field(1.5, ge=1)
    exposure: float = Field(1.5, ge=1)
    flip: bool = True


class DataConfig(Section):
    root: Path = Path(CACHE, "synthetic", "VOCdevkit")  # the VOCdevkit folder
    synthetic: SyntheticConfig | None = None  # set: generate into `root` on first use
    train_sets: list[tuple[Text, Text]] = [("2007", "trainval")]  # (year, image set) pairs, a union
    # What a search selects on (every trial's map); no training run ever sees these images. Either
    # image sets, or a share of the train sets' images carved out by image id (engine.load_splits).
    # Neither: the search selects on the test sets, and says so.
    val_sets: list[tuple[Text, Text]] = []
    val_fraction: float = Field(0.0, ge=0, lt=1)
    test_sets: list[tuple[Text, Text]] = [("2007", "test")]
    classes: Literal["voc", "synthetic"] | list[str] = "voc"
    input_size: int = Field(416, gt=0, multiple_of=32)
    letterbox: bool = False
    augment: AugmentConfig = AugmentConfig()
    workers: int = Field(2, ge=0)

    @field_validator("classes")
    @classmethod
    def _distinct(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and (not value or len(set(value)) != len(value)):
            raise ValueError("class names must be a non-empty list without repeats")
        return value

    @model_validator(mode="after")
    def _one_validation(self) -> DataConfig:
        if self.val_sets and self.val_fraction:
            raise ValueError("give val_sets or val_fraction, not both")
        return self

    @property
    def has_validation(self) -> bool:
        """Whether a search on this data selects on a validation split (else on the test sets)."""
        return bool(self.val_sets) or self.val_fraction > 0

    def class_names(self) -> list[str]:
        from yolov2.data import SYNTHETIC_CLASSES, VOC_CLASSES

        if self.classes == "voc":
            return list(VOC_CLASSES)
        if self.classes == "synthetic":
            return list(SYNTHETIC_CLASSES)
        return list(self.classes)


class DarknetInit(Section):
    """Start from darknet files: full weights, or a partial backbone such as darknet19_448.conv.23."""

    # None: the model section's architecture. Set: the cfg's network, trained at data.input_size;
    # model.family, model.width or model.anchors given beside it must describe that same network.
    cfg: Path | None = None
    weights: Path


class ModelConfig(Section):
    family: Literal["yolov2", "yolov2-tiny"] = "yolov2"
    width: float = Field(1.0, gt=0, le=4)  # multiplier of every layer's filters (multiples of 8)
    # (w, h) in grid cells; None: darknet's VOC ones. `prune-search anchors` clusters the data's.
    anchors: list[tuple[float, float]] | None = None
    darknet: DarknetInit | None = None

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, value: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if value is not None and (not value or any(w <= 0 or h <= 0 for w, h in value)):
            raise ValueError(f"anchors are a non-empty list of positive (w, h), got {value}")
        return value


class TrainConfig(Section):
    """One loop serves training and finetuning; finetuning usually has fewer epochs and a lower lr."""

    epochs: int = Field(10, ge=0)
    batch_size: int = Field(16, ge=1)
    optimizer: Literal["sgd", "adamw"] = "sgd"  # darknet's SGD; AdamW converges faster from scratch
    lr: float = Field(1e-3, gt=0, le=1)
    momentum: float = Field(0.9, ge=0, lt=1)  # SGD's momentum, AdamW's beta1
    weight_decay: float = Field(5e-4, ge=0)
    burn_in: int = Field(100, ge=0)  # steps of darknet's (step/burn_in)^4 warm-up
    schedule: Literal["steps", "cosine", "constant"] = "cosine"
    steps: list[float] = [0.8, 0.9]  # fractions of the run at which lr is multiplied by `scales`
    scales: list[float] = [0.1, 0.1]
    multiscale: list[int] | None = None  # input sizes (multiples of 32) drawn every 10 steps
    clip_grad_norm: float | None = Field(10.0, gt=0)
    amp: bool = True  # on CUDA only: bfloat16 autocast
    # NHWC weights and activations: faster on CUDA and on the CPU as well (oneDNN's convolutions:
    # 1.3-1.5x a training step of the default model on 1 thread, bench/bench_data.py)
    channels_last: bool = True
    # torch.compile the training forward (engine.compiled). Off until measured to pay for its
    # compile time: bench/bench_gpu.py times both on CUDA, compile time included.
    compile: bool = False
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = Field(1, ge=0)  # epochs; 0: only at the end
    seed: int = 0
    # Images the starting weights count as trained on (darknet's `seen`); the loss's prior warm-up
    # (loss.prior_warmup_images) runs while the count is below it. None carries the count on, as
    # darknet does from a .weights file: 0 for the dense model, the dense stage's count (and then
    # each round's) when finetuning, so finetuning does not pull trained boxes back toward the
    # anchors. `finetune.seen: 0` asks a finetune to warm up again.
    seen: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _schedule(self) -> TrainConfig:
        if len(self.steps) != len(self.scales):
            raise ValueError("steps and scales need the same length")
        if any(not 0 < s < 1 for s in self.steps) or self.steps != sorted(self.steps):
            raise ValueError("steps are increasing fractions of the run, each in (0, 1)")
        if self.multiscale and any(s <= 0 or s % 32 for s in self.multiscale):
            raise ValueError("multiscale sizes must be positive multiples of 32")
        return self


class PruneConfig(Section):
    method: Literal["none", "weight", "filter"] = "none"
    ratio: float | None = Field(None, ge=0, lt=1)  # uniform ratio over the prunable convolutions
    ratios: list[float] | None = None  # one per prunable convolution, or one per stage
    scope: Literal["layer", "global"] = "layer"  # weight pruning: per-layer or one global threshold
    criterion: Literal["l1", "l2", "bn"] = "l1"  # filter pruning: what ranks a filter
    min_channels: int = Field(8, ge=1)  # filter pruning: the fewest filters a conv keeps
    round_to: int = Field(8, ge=1)  # filter pruning: kept filters are a multiple of this
    iterations: int = Field(1, ge=1)  # rounds of prune + finetune; the last finetune is `finetune`

    # The options one method reads and the other ignores. A search samples the method, so the
    # config keeps both methods' options; what a pruned checkpoint records is `applied()`.
    METHOD_OF: ClassVar[dict[str, str]] = {
        "scope": "weight",
        "criterion": "filter",
        "min_channels": "filter",
        "round_to": "filter",
    }

    def applied(self) -> dict[str, Any]:
        """The options this method really uses, as JSON (one-shot: `iterations` left out)."""
        used = {
            name
            for name in type(self).model_fields
            if self.METHOD_OF.get(name, self.method) == self.method and name != "iterations"
        }
        return self.model_dump(mode="json", include=used)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and any(not 0 <= r < 1 for r in value):
            raise ValueError(f"every ratio must be in [0, 1), got {value}")
        return value

    @model_validator(mode="after")
    def _one_ratio_form(self) -> PruneConfig:
        if self.ratio is not None and self.ratios is not None:
            raise ValueError("give either ratio or ratios, not both")
        if self.method != "none" and self.ratio is None and self.ratios is None:
            raise ValueError(f"method {self.method!r} needs ratio or ratios")
        return self


Scalar = str | bool | int | float
RATIO_GROUPS = ("uniform", "stage", "layer")


class Searched(Section):
    """One searched field: a float range (uniform, or log-uniform when `log`), an int range when
    `integer`, or a choice among `choices`. `groups` is for `prune.ratios` alone: one ratio for
    every prunable convolution (uniform), one per stage or one per layer, each in [low, high].
    `when` samples the field only while an earlier searched field has the given value (the weight
    scope only for weight pruning, say); otherwise the experiment's own value holds."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = False
    choices: list[Scalar] | None = None
    groups: Literal["uniform", "stage", "layer"] | None = None
    when: dict[str, Scalar] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Searched:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.log or self.integer:
                raise ValueError("give either choices or low/high, not both")
            if not self.choices or len(set(map(str, self.choices))) != len(self.choices):
                raise ValueError("choices is a non-empty list without repeats")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (a range) or choices")
        if not self.low < self.high:
            raise ValueError(f"low must be below high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low}")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"an integer range needs whole bounds, got [{self.low}, {self.high}]")
        return self

    @property
    def kind(self) -> Literal["float", "int", "categorical"]:
        return "categorical" if self.choices is not None else "int" if self.integer else "float"


def _default_space() -> dict[str, Searched]:
    return {
        "prune.ratios": Searched(groups="stage", low=0.0, high=0.6),
        "finetune.lr": Searched(low=1e-4, high=1e-2, log=True),
    }


class EarlyStopConfig(Section):
    """Stop a trial whose map, at its cost, is clearly dominated by the completed trials at the
    same finetune epoch: every `every` epochs the finetune evaluates, and a trial stops when a
    completed trial of no more cost had a map at least `margin` higher at that epoch (with at
    least `min_completed` completed trials to compare with). Stopped trials are PRUNED in the
    study and never on the front; their slots go to new trials. `rule: asha` stops by Ray's ASHA
    on map alone instead, the usual scalar scheduler, for comparison (bench/bench_early_stop.py):
    at epochs `every`, 2 x `every`, 4 x `every`, ... a trial below the median map of the trials
    that reached that epoch stops, whatever its cost (`margin` and `min_completed` unused)."""

    rule: Literal["front", "asha"] = "front"
    every: int = Field(2, ge=1)
    margin: float = Field(0.02, ge=0, le=1)
    min_completed: int = Field(2, ge=1)


class ScreenConfig(Section):
    """Screening before the finetunes (yolov2/screen.py, search/screening.py): `candidates`
    allocations of `prune.ratios` drawn evenly over the cost range, each pruned and scored on the
    first `images` images of the selection split without finetuning (`score`: its map after
    adaptive batch norm on `bn_batches` training batches, or as pruned); the best `finetune` of
    them, spread along the cost axis, are the search's first trials after the known points:
    `spread: slices`, the best of each of `finetune` equal slices of the cost range; `spread:
    front`, the screen's own front (no candidate scored higher at no more GFLOPs) at `finetune`
    costs evenly spaced from its cheapest point to its dearest."""

    candidates: int = Field(120, ge=2)
    finetune: int = Field(6, ge=1)
    score: Literal["bn_map", "pruned_map"] = "bn_map"
    spread: Literal["slices", "front"] = "slices"
    images: int = Field(200, ge=1)
    bn_batches: int = Field(20, ge=1)

    @model_validator(mode="after")
    def _fewer_finetuned(self) -> ScreenConfig:
        if self.finetune > self.candidates:
            raise ValueError(
                "finetune is how many of the candidates get a trial: at most candidates"
            )
        return self


class SearchConfig(Section):
    """The search: how many trials, how Optuna picks them, what each trial gets from Ray.

    `space` maps a dotted path of the experiment (`finetune.lr`, `prune.method`, `loss.coord_scale`,
    `finetune_loss.object_scale`, ...) to how it is searched; search/space.py checks every path,
    range and ratio count against the experiment before Ray starts. `known_points` are uniform
    pruning ratios evaluated first (0 is the dense model itself), each at the experiment's own
    values of the other searched keys where the search can give them. `warm_start: sensitivity`
    adds, after them, one point per `warm_start_budgets` entry (a fraction of the dense model's
    GFLOPs to remove): per-group ratios chosen greedily from the dense model's sensitivity to each
    group of `prune.ratios` pruned alone (yolov2/sensitivity.py). `known_at` maps a searched key
    (`finetune.lr`, say) to values at which every known and warm point is tried, in place of the
    experiment's own value, each combination once; the dense model (ratios all 0) is tried once."""

    num_samples: int = Field(12, ge=1)
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"  # multi-objective: map up, cost down
    seed: int = 0
    cost: Literal["size_mb", "gflops", "latency_ms"] = "size_mb"  # the objective besides map
    max_concurrent: int = Field(2, ge=1)
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)  # a fraction shares one GPU between trials
    max_failures: int = Field(0, ge=0)  # retries of a trial that errors (a lost node, say)
    # Seconds a search on an autoscaling cluster waits for a node that can hold a trial (a cloud
    # GPU node takes minutes to start and set up) before it gives up in one line.
    placement_timeout: float = Field(1200.0, gt=0)
    # The driver copies its study, ledger and experiment into a remote storage, and refreshes the
    # front's TensorBoard views, at most this often (0: at every trial event); always at the end.
    sync_every_s: float = Field(60.0, ge=0)
    # Finetune epochs between the training states a trial checkpoints (the last epoch's always):
    # what a trial carries on from after a lost node. docs/cluster.md sizes it.
    checkpoint_every: int = Field(3, ge=1)
    known_points: list[Annotated[float, Field(ge=0, lt=1)]] = [0.0, 0.3, 0.5]
    early_stop: EarlyStopConfig | None = None  # none: every trial runs its whole finetune
    warm_start: Literal["none", "sensitivity"] = "none"
    warm_start_budgets: list[Annotated[float, Field(gt=0, lt=1)]] = [0.3, 0.5, 0.7]
    screen: ScreenConfig | None = None  # none: no screening
    known_at: dict[str, Annotated[list[Scalar], Field(min_length=1)]] = Field(default_factory=dict)
    space: dict[str, Searched] = Field(default_factory=_default_space)

    @field_validator("space")
    @classmethod
    def _space(cls, value: dict[str, Searched]) -> dict[str, Searched]:
        if not value:
            raise ValueError("the search space is empty: name at least one field to search")
        for key, searched in value.items():
            if (searched.groups is not None) != (key == "prune.ratios"):
                raise ValueError(
                    f"{key}: groups (uniform, stage or layer) is for prune.ratios, and needed there"
                )
        return value


class ExperimentConfig(Section):
    name: str = Field("experiment", pattern=r"^[A-Za-z0-9_.-]+$")
    # Synthetic data and dense models shared between runs; `${cache}` in a path stands for it.
    cache_dir: Path = Field(default_factory=default_cache)
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    finetune: TrainConfig = TrainConfig(epochs=5, lr=1e-4, burn_in=0)
    # The loss of the finetune stage; None: the `loss` section. A search over finetune loss scales
    # sets this, so it leaves the dense model (trained with `loss`) alone.
    finetune_loss: LossConfig | None = None
    search: SearchConfig = SearchConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def digest(self, *sections: str) -> str:
        """A stable hash of what shapes the weights in the named sections (all when none), as the
        config says it. Run-time knobs (RUNTIME_KNOBS) are left out. The dense cache's key
        (pipeline.dense_key) adds what no config says: the data's content and the precision."""
        chosen = [getattr(self, name) for name in sections] if sections else [self]
        return shaping_digest(*chosen)


# Every field either shapes the weights or is a run-time knob that cannot change them. The knobs
# are named here, in one place, per section type (so `train` and `finetune` share theirs); every
# cache key and training-state digest leaves them out. tests/yolov2/test_config.py lists every
# field, so a new one fails there until it is put on one side or the other.
RUNTIME_KNOBS: dict[type[BaseModel], frozenset[str]] = {
    ExperimentConfig: frozenset({"name", "cache_dir", "search"}),
    DataConfig: frozenset({"workers"}),  # augmentation is drawn per sample: data.sample_seed
    TrainConfig: frozenset({"device", "eval_every"}),
}


# Fields that came after cache keys existed, and at these values leave the weights as they were
# before them: left out of the keys at these values, so a cached dense model stays valid.
LATER_FIELDS: dict[type[BaseModel], dict[str, Any]] = {
    DataConfig: {"val_sets": [], "val_fraction": 0.0},
    SyntheticConfig: {"num_val": None},
    TrainConfig: {"compile": False},
}


def shaping(section: BaseModel) -> dict[str, Any]:
    """The fields of `section` that shape the weights, recursively, as JSON-ready values."""
    skipped = RUNTIME_KNOBS.get(type(section), frozenset())
    later = LATER_FIELDS.get(type(section), {})
    skipped = skipped | {name for name, value in later.items() if getattr(section, name) == value}
    if isinstance(section, DataConfig) and section.synthetic is not None:
        # Generated data is known by its recipe, wherever a machine caches it (a cluster's nodes
        # each keep their own); real data here by where it lives, and in the dense cache's key by
        # its content (pipeline.dense_key).
        skipped = skipped | {"root"}
    kept: dict[str, Any] = {}
    for name in type(section).model_fields:
        if name in skipped:
            continue
        value = getattr(section, name)
        kept[name] = (
            shaping(value)
            if isinstance(value, BaseModel)
            else section.model_dump(mode="json", include={name})[name]
        )
    return kept


def shaping_digest(*sections: BaseModel) -> str:
    """A stable 16-hex-digit hash of what shapes the weights in `sections`, in the order given."""
    return json_digest([[type(s).__name__, shaping(s)] for s in sections])


def json_digest(value: Any) -> str:
    """A stable 16-hex-digit hash of a JSON-ready value: the recipe of every cache key."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def load_config(
    path: str | os.PathLike[str], overrides: list[str] | None = None
) -> ExperimentConfig:
    """Read, override (`key.sub=value`, the value parsed as YAML) and validate an experiment file."""
    file = Path(path)
    try:
        raw = yaml.safe_load(file.read_text()) or {}
    except FileNotFoundError:
        raise InputError(f"{file}: no such experiment file") from None
    except yaml.YAMLError as error:
        raise InputError(f"{file}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{file}: an experiment file is a mapping of sections")
    for override in overrides or []:
        apply_override(raw, override)
    return _validated(raw, file)


def config_from_record(
    recorded: dict[str, Any], overrides: list[str] | None, source: str | os.PathLike[str]
) -> ExperimentConfig:
    """The experiment a run recorded (a checkpoint's metadata), with `key.sub=value` overrides.

    The recorded paths are absolute already; a relative path given by override is taken from the
    current directory, as any path on the command line. Errors name `source` and the key.
    """
    raw = json.loads(json.dumps(recorded))  # a deep copy: overrides must not touch the record
    for override in overrides or []:
        apply_override(raw, override)
    return _validated(raw, Path(source), Path.cwd())


def apply_override(raw: dict[str, Any], override: str) -> None:
    """`key.sub=value` set in an experiment's raw mapping, the value parsed as YAML."""
    key, sep, text = override.partition("=")
    if not sep or not key:
        raise InputError(f"--set {override!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = " ".join(str(getattr(error, "problem", None) or error).split())
        raise InputError(
            f"--set {override!r}: the value is not valid YAML ({problem}); quote a string, "
            "e.g. key='\"text\"'"
        ) from None
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise InputError(f"--set {override!r}: {part} is not a section")
        node = child
    node[leaf] = value


def _validated(raw: dict[str, Any], file: Path, base: Path | None = None) -> ExperimentConfig:
    try:
        config = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "(top level)"
        problem = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise InputError(f"{file}: {key}: {problem}{more}") from None
    return _absolute_paths(config, base or file.parent.resolve(), file)


def _absolute_paths(config: ExperimentConfig, base: Path, file: Path) -> ExperimentConfig:
    """Every path made absolute: `${cache}/...` in the cache, others relative to `base`."""
    cache_dir = (
        base / _no_cache_variable(config.cache_dir, "cache_dir", file).expanduser()
    ).resolve()

    def absolute(path: Path, key: str) -> Path:
        if path.parts[:1] == (CACHE,):
            return cache_dir.joinpath(*path.parts[1:])
        return (base / _no_cache_variable(path, key, file).expanduser()).resolve()

    data = config.data.model_copy(update={"root": absolute(config.data.root, "data.root")})
    darknet = config.model.darknet
    if darknet is not None:
        darknet = darknet.model_copy(
            update={
                "weights": absolute(darknet.weights, "model.darknet.weights"),
                "cfg": absolute(darknet.cfg, "model.darknet.cfg") if darknet.cfg else None,
            }
        )
    model = config.model.model_copy(update={"darknet": darknet})
    config = config.model_copy(update={"data": data, "model": model, "cache_dir": cache_dir})
    _warn_outside_cache(config, file)
    return config


def _no_cache_variable(path: Path, key: str, file: Path) -> Path:
    if "${" in str(path):
        raise InputError(f"{file}: {key}: {path}: only a leading {CACHE}/ is expanded in a path")
    return path


def _warn_outside_cache(config: ExperimentConfig, file: Path) -> None:
    # Experiment files written before the cache followed XDG_CACHE_HOME name ~/.cache/prune-search
    # literally; a literal path means what it says, but the user who moved the cache should know.
    legacy = LEGACY_CACHE.expanduser().resolve()
    root = config.data.root
    if config.data.synthetic is None or not root.is_relative_to(legacy):
        return
    if not config.cache_dir.resolve().is_relative_to(legacy):
        log.warning(
            "%s: data.root %s is under %s, not in the cache %s; write data.root as %s/%s to keep "
            "the synthetic data set in the cache",
            file, root, legacy, config.cache_dir, CACHE, root.relative_to(legacy).as_posix(),
        )  # fmt: skip


def write_resolved(
    config: ExperimentConfig, directory: str | os.PathLike[str], *, replace: bool = True
) -> Path:
    """Write the resolved config next to a run's outputs, as `config.yaml`; with `replace` False,
    only when there is none yet (a run writes it at its start so, and again once it has trained,
    so that a rerun refused for other settings leaves the config that made the weights)."""
    from yolov2.files import write_text_atomic

    path = Path(directory) / "config.yaml"
    if replace or not path.exists():
        write_text_atomic(path, config.to_yaml())
    return path
