"""The commands that search: `run`, `resume`, `pareto`, `best` and `refine`, each parser beside
its function.

Ray and Optuna are imported inside the functions, so `prune-search <other command> --help` stays
fast; `pareto` and `best` read the experiment folder alone (copied from the storage first when
given a storage URI) and never start Ray.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.cli_args import Commands, add_experiment, positive_int
from yolov2.errors import InputError

if TYPE_CHECKING:
    from search.pareto import Front
    from search.tuner import Outcome

log = logging.getLogger("prune-search")


def cmd_run(args: argparse.Namespace) -> int:
    from search import tuner
    from search.storage import search_storage
    from yolov2.config import load_config

    overrides = [
        *args.set,
        *([f"search.num_samples={args.num_samples}"] if args.num_samples else []),
    ]
    config = load_config(args.experiment, overrides)
    storage = search_storage(args.storage, args.name or config.name)
    outcome = tuner.run(config, str(args.experiment), storage, args.address)
    return _conclude(outcome)


def add_run(commands: Commands) -> None:
    p = commands.add_parser("run", help="Ray Tune trials sampled by Optuna -> a Pareto front")
    add_experiment(p)
    p.add_argument("--address", default=None,
                   help="a running Ray cluster ('auto', or host:port); default: a new loopback "
                        "Ray instance on this machine")  # fmt: skip
    p.add_argument("--storage", default="runs",
                   help="where experiment folders go: a folder (default: runs/), or a URI Ray "
                        "Tune accepts (s3://..., gs://..., file://...) that every node reaches; "
                        "then the driver keeps its study in runs/<name> and copies it there "
                        "after every trial")  # fmt: skip
    p.add_argument("--name", help="experiment folder name (default: the experiment's name)")
    p.add_argument("--num-samples", type=positive_int, help="trials (default: search.num_samples)")
    p.set_defaults(run=cmd_run)


def cmd_resume(args: argparse.Namespace) -> int:
    from search import tuner

    return _conclude(tuner.resume(args.experiment_dir, args.address))


def add_resume(commands: Commands) -> None:
    p = commands.add_parser("resume", help="finish a search after Ctrl-C or a lost driver")
    _add_experiment_dir(p)
    p.add_argument("--address", default=None, help="a running Ray cluster (default: loopback)")
    p.set_defaults(run=cmd_resume)


def _conclude(outcome: Outcome) -> int:
    from search.pareto import format_table
    from search.storage import STUDY_FILE
    from search.tuner import FRONT_PNG, TRIALS_CSV

    front, directory = outcome.front, outcome.directory
    print(_summary(front))
    print(format_table(front))
    print(_failures(front), end="")
    print(
        f"\ntrials: {directory / TRIALS_CSV}   front plot: {directory / FRONT_PNG}\n"
        f"look further:\n"
        f"  tensorboard --logdir {directory}\n"
        f"  optuna-dashboard sqlite:///{directory / STUDY_FILE}\n"
        f"  prune-search pareto {directory} --cost gflops\n"
        f"  prune-search best {directory} --pick knee --out best.safetensors"
    )
    if not outcome.finished:
        print(
            f"prune-search: the search was interrupted; `prune-search resume {directory}` finishes it",
            file=sys.stderr,
        )
        return 130
    return 0


def _summary(front: Front) -> str:
    from search.pareto import selection_split

    table = front.table
    states = table["state"].value_counts().to_dict()
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    return (
        f"{len(table)} trials ({counts or 'none finished'}); Pareto front of map on "
        f"{selection_split(table)} against "
        f"{front.cost}: {len(front.points)} points, hypervolume {front.hypervolume:.4g} "
        f"({front.normalised_hypervolume:.3f} of the dense model's map x {front.cost}, reference "
        f"point map 0, {front.cost} {front.reference_cost:.4g})"
    )


def cmd_pareto(args: argparse.Namespace) -> int:
    from search.pareto import format_table
    from search.tuner import checked_out

    directory, _ = checked_out(args.experiment_dir)
    front = _front(directory, args.cost, args.front)
    print(_summary(front))
    print(format_table(front))
    print(_failures(front), end="")
    from search.reporting import write_front

    write_front(front, args.csv, args.plot)
    for path in (args.csv, args.plot):
        if path is not None:
            log.info("wrote %s", path)
    return 0


def _failures(front: Front) -> str:
    """One line for each trial that failed or was stopped, with its error."""
    failed = front.table[front.table["state"] != "COMPLETE"]
    lines = [
        f"  {row['trial_id']} {row['state']}: {row['error'] or 'stopped early'}\n"
        for _, row in failed.iterrows()
    ]
    return ("not on the front:\n" + "".join(lines)) if lines else ""


def add_pareto(commands: Commands) -> None:
    p = commands.add_parser("pareto", help="the Pareto front of a search: table, CSV, plot")
    _add_experiment_dir(p)
    p.add_argument("--csv", type=Path, help="write one row per trial, with a `pareto` column")
    p.add_argument("--plot", type=Path, help="write map against the cost as a PNG")
    p.add_argument("--cost", choices=["size_mb", "gflops", "latency_ms"],
                   help="the cost axis (default: the search's own)")  # fmt: skip
    _add_front_choice(p)
    p.set_defaults(run=cmd_pareto)


def _front(directory: Path, cost: str | None, which: str = "searched") -> Front:
    from search.pareto import Ledger, pareto_front, trials_table
    from search.refine import REFINED_LEDGER, refined_ledger
    from search.storage import LEDGER_FILE
    from search.tuner import load_experiment, locate

    config, space = load_experiment(directory)
    name = REFINED_LEDGER if which == "refined" else LEDGER_FILE
    if which == "refined":  # from the storage, where refine put it, when this folder lacks it
        refined_ledger(directory, locate(str(directory))[1])
    if not (directory / name).is_file() and which == "refined":
        raise InputError(f"{directory}: no refined front yet; `prune-search refine {directory}`")
    ledger = Ledger.load(directory, name)
    return pareto_front(trials_table(ledger, space.columns), cost or config.search.cost)


def _add_front_choice(p: argparse.ArgumentParser) -> None:
    p.add_argument("--front", choices=["searched", "refined"], default="searched",
                   help="the searched front, or the one `refine` made (default: searched)")  # fmt: skip


def cmd_best(args: argparse.Namespace) -> int:
    from search.pareto import budget_mask, knee, pareto_front
    from search.tuner import checked_out

    directory, _ = checked_out(args.experiment_dir)
    front = _front(directory, args.cost, args.front)
    budgets = {
        name: value
        for name, value in (
            ("map", args.min_map),
            ("size_mb", args.max_size_mb),
            ("gflops", args.max_gflops),
            ("latency_ms", args.max_latency_ms),
        )
        if value is not None
    }
    completed = front.table[front.table["state"] == "COMPLETE"]
    if not len(completed):
        raise InputError(f"{directory}: no completed trial to pick from")
    meets, excess = budget_mask(completed, budgets)
    if not meets.any():
        nearest = completed.iloc[int(excess.argmin())]
        shown = ", ".join(f"{n} {nearest[n]:.4g}" for n in ("map", *budgets) if n != "map")
        raise InputError(
            f"no trial meets {_budget_text(budgets)}; the nearest is {nearest['trial_id']} "
            f"(map {nearest['map']:.4f}, {shown})"
        )
    chosen = pareto_front(completed[meets], front.cost).points
    if args.pick == "best-map":
        row = chosen.sort_values(["map", front.cost], ascending=[False, True]).iloc[0]
    elif args.pick == "smallest":
        row = chosen.sort_values([front.cost, "map"], ascending=[True, False]).iloc[0]
    else:
        row = chosen.iloc[knee(chosen["map"], chosen[front.cost])]
    _copy_checkpoint(directory, row, args.out)
    print(
        f"{row['trial_id']}: {_maps_text(front, row)}, {row['size_mb']:.4g} MB, "
        f"{row['gflops']:.4g} GFLOPs, {row['latency_ms']:.4g} ms -> {args.out}"
    )
    return 0


def _maps_text(front: Front, row: Any) -> str:
    """`map 0.81 on val, 0.79 on test (VOC07)`: the map it was chosen by, and the one to report."""
    from search.pareto import selection_split

    split = selection_split(front.table)
    if split == "test":
        return f"map {row['map']:.4f} on test (VOC07; selected on test: no validation split)"
    test = row["test_map"]
    tested = f"{test:.4f} on test" if math.isfinite(test) else "test map not measured yet"
    return f"map {row['map']:.4f} on val, {tested} (VOC07)"


def _budget_text(budgets: dict[str, float]) -> str:
    names = {
        "map": "map >=",
        "size_mb": "size_mb <=",
        "gflops": "gflops <=",
        "latency_ms": "latency_ms <=",
    }
    return ", ".join(f"{names[n]} {v:g}" for n, v in budgets.items()) or "the budget"


def _copy_checkpoint(directory: Path, row: Any, out: Path) -> None:
    from search.tuner import locate
    from yolov2.checkpoint import load_checkpoint
    from yolov2.files import atomic_path
    from yolov2.pipeline import CHECKPOINT_FILE

    relative = f"{row['checkpoint']}/{CHECKPOINT_FILE}"
    source = directory / relative
    with tempfile.TemporaryDirectory() as scratch:
        storage = locate(str(directory))[1]
        if not source.is_file() and storage.remote:  # in the search's storage, not on this disk
            source = Path(scratch) / CHECKPOINT_FILE
            if not storage.download(relative, source):
                raise InputError(f"{storage.uri(relative)}: the checkpoint of trial "
                                 f"{row['trial_id']} is missing")  # fmt: skip
        if not source.is_file():
            raise InputError(f"{source}: the checkpoint of trial {row['trial_id']} is missing")
        load_checkpoint(source)  # refuses a truncated or foreign file before it is copied
        with atomic_path(out) as temporary:
            shutil.copyfile(source, temporary)


def add_best(commands: Commands) -> None:
    p = commands.add_parser("best", help="the front's checkpoint that fits a budget")
    _add_experiment_dir(p)
    p.add_argument("--pick", choices=["best-map", "smallest", "knee"], default="best-map",
                   help="among the front points within the budget (default: best-map)")  # fmt: skip
    p.add_argument("--min-map", type=float, metavar="X", help="budget: map at least X")
    p.add_argument("--max-size-mb", type=float, metavar="Y", help="budget: size_mb at most Y")
    p.add_argument("--max-gflops", type=float, metavar="Z", help="budget: gflops at most Z")
    p.add_argument("--max-latency-ms", type=float, metavar="W",
                   help="budget: latency_ms at most W")  # fmt: skip
    p.add_argument("--cost", choices=["size_mb", "gflops", "latency_ms"],
                   help="the front's cost axis (default: the search's own)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="checkpoint to write (.safetensors)")
    _add_front_choice(p)
    p.set_defaults(run=cmd_best)


def cmd_refine(args: argparse.Namespace) -> int:
    from search.pareto import format_table
    from search.refine import REFINED_CSV, REFINED_PNG, REFINED_VIEWS, refine
    from search.tuner import checked_out

    directory, _ = checked_out(args.experiment_dir)
    searched, refined = refine(directory, args.epochs, args.address)
    before = searched.table.set_index("trial_id")["map"]
    print(_summary(refined))
    print(format_table(refined))
    print("map searched -> refined, for each point of the searched front:")
    for _, row in refined.table.iterrows():
        print(f"  {row['trial_id']}: {before.get(row['trial_id'], float('nan')):.4f} -> "
              f"{row['map']:.4f}{'' if row['pareto'] else '  (not on the refined front)'}")  # fmt: skip
    print(
        f"\nrefined: {directory / REFINED_CSV}   plot: {directory / REFINED_PNG}   "
        f"tensorboard: {directory / REFINED_VIEWS}\n"
        f"  prune-search best {directory} --front refined --pick knee --out best.safetensors"
    )
    return 0


def add_refine(commands: Commands) -> None:
    p = commands.add_parser("refine", help="finetune the front's points longer: the refined front")
    _add_experiment_dir(p)
    p.add_argument("--epochs", type=positive_int,
                   help="finetune epochs of each point (default: 3x the search's)")  # fmt: skip
    p.add_argument("--address", default=None,
                   help="a running Ray cluster whose nodes refine the points, each as a task "
                        "with a trial's resources (default: loopback)")  # fmt: skip
    p.set_defaults(run=cmd_refine)


def _add_experiment_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("experiment_dir", metavar="EXPERIMENT_DIR", help="the experiment folder (<storage>/<name>), or the "
                   "search's storage URI (<storage URI>/<name>) from any machine: its study, "
                   "ledger and experiment come into ./runs/<name> when that is empty")  # fmt: skip
