"""What the search benchmarks share: a variant of the default experiment run as a real search.

`run_variant` writes the variant's experiment beside its folder, runs `prune-search run` on it (or
resumes it, or reads it back when it finished), and keeps the minutes of the run that finished it,
so that an interrupted benchmark carries on where it stopped and reports every run's own time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "experiments" / "default.yaml"


def default_experiment(
    name: str, path: Path = DEFAULT, overrides: Sequence[str] = ()
) -> dict[str, Any]:
    """An experiment (the default one unless `path`) as its YAML's raw mapping, with `--set`'s
    `overrides` (key.sub=value), renamed."""
    from yolov2.config import apply_override
    from yolov2.errors import InputError

    try:
        raw: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
        for override in overrides:
            apply_override(raw, override)
    except (OSError, yaml.YAMLError, InputError) as error:
        raise SystemExit(f"{path}: {error}") from None
    raw["name"] = name
    return raw


def run_variant(raw: dict[str, Any], out: Path) -> tuple[Path, float]:
    """The experiment folder `out/<name>` of the search of `raw`, finished, and its minutes."""
    from search import tuner
    from search.storage import Storage
    from yolov2.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    source = out / f"{raw['name']}.yaml"
    source.write_text(yaml.safe_dump(raw, sort_keys=False))
    config = load_config(source)
    timing = _timing(out, config.name)
    start = time.perf_counter()
    outcome = tuner.run(config, str(source), Storage(str((out / config.name).resolve())), None)
    if not outcome.finished:
        raise SystemExit(f"{outcome.directory}: the search was interrupted; run again to go on")
    if not timing.is_file():  # the first time it finished: a run read back keeps its time
        timing.write_text(f"{(time.perf_counter() - start) / 60:.3f}\n")
    return outcome.directory, float(timing.read_text())


def finished_variant(name: str, out: Path) -> tuple[Path, float] | None:
    """The folder and minutes of the search `name` in `out`, if `run_variant` finished it."""
    timing = _timing(out, name)
    return (out / name, float(timing.read_text())) if timing.is_file() else None


def _timing(out: Path, name: str) -> Path:
    return out / f"{name}.minutes"


def box_hypervolume(
    maps: Sequence[float], gflops: Sequence[float], dense_map: float, dense_gflops: float
) -> float:
    """The hypervolume of (map, GFLOPs) with the reference (map 0, the dense model's GFLOPs), over
    the dense model's own box (its map x its GFLOPs); nan for an empty box."""
    from search.pareto import hypervolume

    box = dense_map * dense_gflops
    return hypervolume(maps, gflops, dense_gflops) / box if box > 0 else float("nan")


def write_results(payload: dict[str, Any], figure: Any, stem: Path) -> None:
    """`stem`.json and `stem`.png (a matplotlib figure, closed), each through a temporary file."""
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    for suffix, write in (
        (".json", lambda path: path.write_text(json.dumps(payload, indent=2))),
        (".png", lambda path: figure.savefig(path, format="png", dpi=110)),
    ):
        temporary = stem.with_suffix(f".tmp{suffix}")
        write(temporary)
        temporary.replace(stem.with_suffix(suffix))
    plt.close(figure)
