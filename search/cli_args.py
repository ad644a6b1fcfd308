"""The arguments several commands share: how each is spelled on the command line, checked by the
parser, and read by the commands (the experiment, its `--set` overrides, class names, sizes, devices).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias

from yolov2.errors import InputError

if TYPE_CHECKING:
    from yolov2.config import ExperimentConfig

Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

DEFAULT_EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"
_DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def image_size(text: str) -> int:
    value = int(text)
    if value <= 0 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} is not a positive multiple of 32")
    return value


def device(text: str) -> str:
    """A torch device a checkpoint can be put on: cpu, cuda, cuda:N or mps."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device: cpu, cuda, cuda:N or mps")
    return text


def add_experiment(p: argparse.ArgumentParser) -> None:
    """The experiment as the positional argument, for the commands that start from one."""
    p.add_argument("experiment", metavar="EXPERIMENT", type=Path, nargs="?",
                   default=DEFAULT_EXPERIMENT,
                   help="experiment YAML (default: experiments/default.yaml)")  # fmt: skip
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the experiment, e.g. --set train.lr=1e-4 "
                   "(repeatable)")  # fmt: skip


def add_experiment_option(p: argparse.ArgumentParser, example: str) -> None:
    """The experiment as an option, for the commands that start from a checkpoint, which records
    the experiment that made it."""
    p.add_argument("--experiment", type=Path, metavar="EXPERIMENT",
                   help="experiment YAML (default: the one recorded in the checkpoint)")  # fmt: skip
    # The option's former spelling, still accepted and not shown.
    p.add_argument("--config", dest="experiment", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the experiment (--experiment's, or else the "
                   f"checkpoint's), e.g. --set {example} (repeatable)")  # fmt: skip


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The experiment named on the command line, with its `--set` overrides."""
    from yolov2.config import load_config

    return load_config(args.experiment, args.set)


def checkpoint_experiment(args: argparse.Namespace) -> ExperimentConfig:
    """`--experiment` with its overrides, else the experiment recorded in `args.checkpoint`."""
    from yolov2.pipeline import config_of_checkpoint

    if args.experiment is not None:
        return experiment_config(args)
    return config_of_checkpoint(args.checkpoint, args.set)


def class_names(spec: str | None) -> list[str]:
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
