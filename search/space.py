"""The search space: an experiment's `search.space` as an Optuna define-by-run function, checked
against the experiment before Ray starts, and applied to each trial's config.

A searched key is a dotted path of the experiment (`finetune.lr`, `prune.method`,
`finetune_loss.coord_scale`); `prune.ratios` is searched as one ratio, one per stage or one per
prunable layer. Every trial shows the same columns: each searched key as the trial's config has it
(empty where a `when` condition left it unsampled) and one pruning ratio per prunable layer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from yolov2.config import ExperimentConfig, Scalar, Searched
from yolov2.errors import InputError
from yolov2.pipeline import DENSE_SECTIONS, dense_architecture
from yolov2.prune import expand_ratios, prunable_convs, stages

if TYPE_CHECKING:
    import optuna

RATIOS = "prune.ratios"


@dataclass(frozen=True)
class Space:
    """What a trial samples, in order, and how its sample becomes an experiment."""

    entries: tuple[tuple[str, Searched], ...]  # the searched keys but prune.ratios, in file order
    ratios: Searched | None  # prune.ratios, when searched
    ratio_names: tuple[str, ...]  # the Optuna names of the sampled ratios, one per group
    layers: int  # prunable convolutions of the architecture

    @property
    def layer_columns(self) -> tuple[str, ...]:
        return tuple(f"ratio.layer{index + 1:02d}" for index in range(self.layers))

    @property
    def columns(self) -> tuple[str, ...]:
        """Every trial's parameter columns, the same for every trial: the searched keys, the
        sampled ratios (per stage, say) and the ratio each prunable layer got from them."""
        sampled = tuple(n for n in self.ratio_names if n not in self.layer_columns)
        return tuple(key for key, _ in self.entries) + sampled + self.layer_columns

    @property
    def touches_dense(self) -> bool:
        """Whether a trial's sample can change the dense model (then each trial makes its own)."""
        return any(key.split(".")[0] in DENSE_SECTIONS for key, _ in self.entries)

    def known_points(self, config: ExperimentConfig, ratios: list[float]) -> list[dict[str, Any]]:
        """Enqueued first: the uniform `ratios` (0: the dense model), each at the experiment's own
        values of the other searched keys (`at_defaults`). build_space has refused a ratio outside
        the searched range."""
        if self.ratios is None:
            return []
        return [self.at_defaults(config, dict.fromkeys(self.ratio_names, r)) for r in ratios]

    def check_ratios(self, points: Sequence[Mapping[str, float]], where: str) -> None:
        """Refuse a point (known or warm start) whose ratios leave the searched range: the sampler
        would be told of a trial it could never have drawn. The dense point (every ratio 0) is the
        front's reference and always allowed."""
        if self.ratios is None:
            return
        low, high = self.ratios.low or 0.0, self.ratios.high or 0.0
        for point in points:
            if self.is_dense(point):
                continue
            outside = {n: point[n] for n in self.ratio_names if not low <= point[n] <= high}
            if outside:
                shown = ", ".join(f"{name} {value:g}" for name, value in outside.items())
                raise InputError(
                    f"{where}: a point with {shown} lies outside search.space.{RATIOS} "
                    f"[{low:g}, {high:g}] (0 everywhere, the dense model, is always allowed)"
                )

    def first_points(
        self, config: ExperimentConfig, warm: Sequence[Mapping[str, float]] = ()
    ) -> list[dict[str, Any]]:
        """Every point enqueued before the sampler takes over, in order: the known points, then
        the warm start's ratios `warm` (those not known already), each at every combination of
        `search.known_at` in turn; a point whose ratios are all 0 (the dense model, measured as it
        is, so the other keys cannot change it) once."""
        known = self.known_points(config, config.search.known_points)
        points = known + [p for p in (self.at_defaults(config, r) for r in warm) if p not in known]
        fixed = config.search.known_at
        combinations = [
            dict(zip(fixed, values, strict=True)) for values in product(*fixed.values())
        ]
        first: list[dict[str, Any]] = []
        for point in points:
            variants = [point] if self.is_dense(point) else [{**point, **c} for c in combinations]
            for variant in variants:
                if variant not in first:
                    first.append(variant)
        return first

    def at_defaults(self, config: ExperimentConfig, ratios: Mapping[str, float]) -> dict[str, Any]:
        """A point of `ratios` with every other searched key at the experiment's own value, where
        the search can give that value (a key whose value lies outside its range, or whose `when`
        does not hold, is left to the sampler): a known point is the experiment as written, pruned
        by those ratios."""
        point: dict[str, Any] = dict(ratios)
        for key, searched in self.entries:
            if searched.when and any(point.get(k) != v for k, v in searched.when.items()):
                continue
            value = _get(config, key)
            if _can_sample(searched, value):
                point[key] = value
        return point

    def is_dense(self, params: Mapping[str, Any]) -> bool:
        """Whether the sample `params` is the dense model: its ratios, when searched, all 0."""
        return not any(float(params[name]) for name in self.ratio_names)

    def apply(self, config: ExperimentConfig, params: Mapping[str, Any]) -> ExperimentConfig:
        """The experiment of one trial: `config` with the sampled values set; ratios all 0 are the
        dense model as it is (prune.method none), the baseline of the front."""
        raw = config.model_dump(mode="json")
        # The finetune's loss is the trial's `loss` with its own samples over it, whatever the
        # order of the keys: `finetune_loss` unset starts as a copy of `loss`, so that copy is
        # taken after every `loss.*` sample.
        keys = sorted(self.entries, key=lambda entry: entry[0].startswith("finetune_loss."))
        for key, _ in keys:
            if key in params:
                _set(raw, key, params[key])
        if self.ratios is not None:
            values = [float(params[name]) for name in self.ratio_names]
            prune = raw["prune"]
            if len(values) == 1:
                prune["ratio"], prune["ratios"] = values[0], None
            else:
                prune["ratio"], prune["ratios"] = None, values
            if self.is_dense(params):
                prune["method"] = "none"
        return ExperimentConfig.model_validate(raw)

    def row(self, config: ExperimentConfig, params: Mapping[str, Any]) -> dict[str, Scalar | None]:
        """A trial's parameter columns, read back from the experiment it ran."""
        trial = self.apply(config, params)
        row: dict[str, Scalar | None] = {
            key: _get(trial, key) if key in params else None for key, _ in self.entries
        }
        prune = trial.prune
        per_layer = (
            [0.0] * self.layers
            if prune.method == "none"
            else expand_ratios(_architecture(trial), prune.ratio, prune.ratios)
        )
        row.update(zip(self.layer_columns, per_layer, strict=True))
        row.update({name: float(params[name]) for name in self.ratio_names if name in params})
        return {column: row.get(column) for column in self.columns}


def sample(space: Space, trial: optuna.Trial) -> dict[str, Any]:
    """The define-by-run function (bound to a space with functools.partial, so it pickles)."""
    params: dict[str, Any] = {}
    if space.ratios is not None:
        low, high = space.ratios.low or 0.0, space.ratios.high or 0.0
        for name in space.ratio_names:
            params[name] = trial.suggest_float(name, low, high)
    for key, searched in space.entries:
        if searched.when and any(params.get(k) != v for k, v in searched.when.items()):
            continue
        params[key] = _suggest(trial, key, searched)
    return params


def _can_sample(searched: Searched, value: Any) -> bool:
    if searched.choices is not None:
        return value in searched.choices
    if not is_finite(value) or (searched.integer and value != int(value)):
        return False
    return bool((searched.low or 0.0) <= value <= (searched.high or 0.0))


def _suggest(trial: optuna.Trial, key: str, searched: Searched) -> Any:
    if searched.choices is not None:
        return trial.suggest_categorical(key, searched.choices)
    low, high = searched.low or 0.0, searched.high or 0.0
    if searched.integer:
        return trial.suggest_int(key, int(low), int(high), log=searched.log)
    return trial.suggest_float(key, low, high, log=searched.log)


def build_space(config: ExperimentConfig, source: str) -> Space:
    """The experiment's space, every key, range and ratio count checked; errors name `source`."""
    arch = _architecture(config)
    layers, groups = len(prunable_convs(arch)), len(stages(arch))
    if config.prune.method != "none":
        try:
            expand_ratios(arch, config.prune.ratio, config.prune.ratios)
        except InputError as error:
            raise InputError(f"{source}: prune: {error}") from None
    entries: list[tuple[str, Searched]] = []
    ratios: Searched | None = None
    for key, searched in config.search.space.items():
        where = f"{source}: search.space.{key}"
        if key == RATIOS:
            ratios = _checked_ratios(searched, where)
            continue
        _check_condition(searched, dict(entries), where)
        _check_values(config, key, searched, where)
        entries.append((key, searched))
    names: tuple[str, ...] = ()
    if ratios is not None:
        count = {"uniform": 1, "stage": groups, "layer": layers}[ratios.groups or "uniform"]
        kind = {"uniform": "ratio", "stage": "ratio.stage", "layer": "ratio.layer"}
        width = 2 if ratios.groups == "layer" else 1
        prefix = kind[ratios.groups or "uniform"]
        names = (
            (prefix,) if count == 1 else tuple(f"{prefix}{i + 1:0{width}d}" for i in range(count))
        )
    space = Space(tuple(entries), ratios, names, layers)
    known = [dict.fromkeys(names, r) for r in config.search.known_points]
    space.check_ratios(known, f"{source}: search.known_points")
    _check_known_at(config, space, f"{source}: search.known_at")
    if config.search.warm_start == "sensitivity":
        _check_warm_start(config, space, f"{source}: search.warm_start")
    if config.search.screen is not None:
        _check_screen(config, space, f"{source}: search.screen")
    return space


def _check_screen(config: ExperimentConfig, space: Space, where: str) -> None:
    """The screen prunes the experiment's one dense model along the searched ratios, spread by
    the GFLOPs that filter pruning removes."""
    if space.ratios is None:
        raise InputError(f"{where}: screening draws {RATIOS}; search it in search.space")
    _check_filters_of_one_dense_model(
        config,
        space,
        f"{where}: candidates are spread by the GFLOPs filter pruning removes",
        f"{where}: candidates are pruned from",
    )


def _checked_ratios(searched: Searched, where: str) -> Searched:
    low, high = searched.low or 0.0, searched.high or 0.0
    if not 0 <= low < high < 1:
        raise InputError(f"{where}: pruning ratios lie in [0, 1), got [{low:g}, {high:g}]")
    if searched.log or searched.integer or searched.when:
        raise InputError(f"{where}: ratios are a plain [low, high] range (no log, integer, when)")
    return searched


def _check_warm_start(config: ExperimentConfig, space: Space, where: str) -> None:
    """The warm start prunes each group of the searched ratios alone on the experiment's one dense
    model, and its budgets are GFLOPs, which filter pruning removes."""
    if space.ratios is None:
        raise InputError(f"{where}: sensitivity needs {RATIOS} in search.space: its groups are "
                         "what it measures")  # fmt: skip
    if space.ratios.groups == "uniform":
        raise InputError(f"{where}: sensitivity prunes each stage or layer alone, but {RATIOS} "
                         "has groups uniform; search groups stage or layer")  # fmt: skip
    _check_filters_of_one_dense_model(
        config,
        space,
        f"{where}: its budgets are GFLOPs to remove, which filter pruning removes",
        f"{where}: sensitivity is measured on",
    )


def _check_filters_of_one_dense_model(
    config: ExperimentConfig, space: Space, by_gflops: str, from_dense: str
) -> None:
    """What the screen and the warm start share: they prune filters (their costs are the GFLOPs
    filter pruning removes) of the experiment's one dense model, which the space must leave be.
    `by_gflops` and `from_dense` begin the two refusals."""
    if config.prune.method != "filter":
        raise InputError(f"{by_gflops}; prune.method is {config.prune.method}")
    if space.touches_dense:
        keys = ", ".join(k for k, _ in space.entries if k.split(".")[0] in DENSE_SECTIONS)
        raise InputError(f"{from_dense} the experiment's one dense model, but search.space "
                         f"changes the dense stage ({keys})")  # fmt: skip


def _check_known_at(config: ExperimentConfig, space: Space, where: str) -> None:
    """Each key of `search.known_at` is searched, unconditionally, and each of its values is one
    the search can give it: the known points are points of the space."""
    searched = dict(space.entries)
    if config.search.known_at and space.ratios is None:
        raise InputError(f"{where}: there are no known points ({RATIOS} is not searched)")
    for key, values in config.search.known_at.items():
        if key == RATIOS:
            raise InputError(f"{where}.{key}: the known points' ratios are search.known_points")
        if key not in searched:
            raise InputError(f"{where}.{key}: not a key of search.space (known_at gives the "
                             "known points values of searched keys)")  # fmt: skip
        if searched[key].when:
            raise InputError(f"{where}.{key}: sampled only when {searched[key].when}; a known "
                             "point cannot fix it")  # fmt: skip
        for value in values:
            if not _can_sample(searched[key], value):
                raise InputError(f"{where}.{key}: {value!r} is not a value search.space.{key} "
                                 f"can give ({_describe(searched[key])})")  # fmt: skip


def _describe(searched: Searched) -> str:
    if searched.choices is not None:
        return f"one of {searched.choices}"
    kind = "whole numbers" if searched.integer else "values"
    return f"{kind} in [{searched.low:g}, {searched.high:g}]"


def _check_condition(searched: Searched, earlier: dict[str, Searched], where: str) -> None:
    for key, value in (searched.when or {}).items():
        condition = earlier.get(key)
        if condition is None or condition.choices is None:
            raise InputError(f"{where}: when {key}: not a choice searched above this key")
        if value not in condition.choices:
            raise InputError(f"{where}: when {key}: {value!r} is not one of {condition.choices}")


def _check_values(config: ExperimentConfig, key: str, searched: Searched, where: str) -> None:
    """`key` is a field of the experiment and every value the search can give it is valid there."""
    current = _get(config, key, where)
    if isinstance(current, BaseModel):
        raise InputError(f"{where}: {key} is a section; search one of its fields")
    if searched.choices is not None:
        values: list[Any] = list(searched.choices)
    elif searched.integer:
        values = [int(searched.low or 0), int(searched.high or 0)]
    else:
        values = [searched.low, searched.high]
    raw = config.model_dump(mode="json")
    for value in values:
        _set(raw, key, value)
        try:
            ExperimentConfig.model_validate(raw)
        except ValidationError as error:
            problem = error.errors()[0]["msg"]
            raise InputError(f"{where}: {value!r} is not a valid {key} ({problem})") from None


def _get(config: ExperimentConfig, key: str, where: str | None = None) -> Any:
    node: Any = config
    for part in key.split("."):
        if node is None and part in type(config.loss).model_fields:
            node = config.loss  # finetune_loss unset: it starts as a copy of `loss`
        if not isinstance(node, BaseModel) or part not in type(node).model_fields:
            raise InputError(f"{where or key}: {key} is not a field of the experiment")
        node = getattr(node, part)
    return node


def _set(raw: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        if node.get(part) is None and part == "finetune_loss":
            node[part] = dict(raw["loss"])
        node = node[part]
    node[leaf] = value


def _architecture(config: ExperimentConfig) -> Any:
    return dense_architecture(config, len(config.data.class_names()))


def is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
