"""The search driver's own work for 1,000 finished trials: its time per trial and the bytes it
copies into the storage, at trials 10, 100 and 1,000, against the same driver at every event.

No training and no Ray trials: the objects a search's driver runs for each trial, as `tuner.fit`
wires them, fed fabricated results in the order Ray's controller calls them: FrontSearch's
suggest and tell on a real SQLite study, SearchViews' ledger line, front, progress line,
TensorBoard views and its copy of the study, ledger and experiment into a `file://` storage
(what an `s3://` one gets), with a Ray step between trials. The default experiment's space, with
Optuna's random sampler (a model-based sampler's own cost grows with its history by design, and
is the same with or without this bookkeeping); about 3% of the trials fail (a map that is not
finite) and 3% are stopped early.

Side by side, the same driver with `search.sync_every_s: 0`: the views and the copy at every
trial event, as before they were throttled, for the first `--every-event-trials` trials (200 by
default: its cost grows with the trials already finished). And the same driver with slow trials
on a simulated clock: one finishes every `--slow-trial-s` seconds (300 by default, five times the
default `search.sync_every_s`), where a copy at every finish would make the bytes grow as trials
squared; once into a storage that appends (the ledger's new lines alone, as `file://` and HDFS
take them), once into one whose objects are written whole (as S3 and GCS: every file copied whole).

Time per trial is the median of the 10 trials ending at each mark (a throttled refresh of the
views lands on one trial in a few hundred), and of it SearchViews' part (the ledger, the front, the
progress line, the views, the copies; the rest is the study's: Optuna's SQLite commits); the mean
over the run, refreshes included, is printed beside it. The bytes of a search of n trials are
those copied while its n trials finished plus the copy every fit ends with (taken at each mark
into a storage of its own). Targets: the time per trial at the last mark at most 2x that at trial
10, the same for SearchViews' part, and, for each throttled driver (fast trials or slow), the
bytes per trial at the last mark at most 2x those at trial 100 (bytes linear in trials).

    python bench/bench_driver.py [--trials 1000] [--every-event-trials 200] [--slow-trial-s 300]
                                 [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

DEFAULT = Path(__file__).resolve().parents[1] / "experiments" / "default.yaml"
MARKS = (10, 100, 1000)
WINDOW = 10  # trials ending at a mark whose median is its time per trial


@dataclass
class Run:
    """What one driver did, trial by trial."""

    label: str
    seconds: list[float] = field(default_factory=list)  # the driver's time for each trial
    views_s: list[float] = field(default_factory=list)  # of it, SearchViews' (not the study's)
    pushed: dict[int, int] = field(default_factory=dict)  # a search of n trials' bytes, by n
    end_s: float = 0.0  # the end of the fit: views and the final copy

    def per_trial_ms(self, mark: int, part: str = "seconds") -> float:
        times: list[float] = getattr(self, part)
        return 1e3 * statistics.median(times[max(0, mark - WINDOW) : mark])

    def per_trial_bytes(self, mark: int) -> float:
        return self.pushed[mark] / mark


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Work in `folder` (a URI search's driver folder is runs/<name> of the working folder)."""
    before = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def fabricated(rng: random.Random, trial_id: str, cost: str) -> dict[str, Any]:
    """A trial's last report: every metric, finished; a few not finite, a few stopped early."""
    size = rng.uniform(2.0, 13.0)
    result: dict[str, Any] = {
        "map": rng.uniform(0.5, 0.85),
        "map_voc12": rng.uniform(0.5, 0.9),
        "size_mb": size,
        "params": int(size * 250_000),
        "nonzero_params": int(size * 250_000),
        "sparsity": rng.uniform(0.0, 0.8),
        "gflops": size / 45,
        "latency_ms": size / 2,
        "dense_map": 0.82,
        "pruned_map": rng.uniform(0.0, 0.8),
        "node": "bench:00000000",
        "device": "cpu",
        "gpu_ids": "",
        "trial_id": trial_id,
        "finished": True,
    }
    draw = rng.random()
    if draw < 0.03:
        result["map"] = float("nan")
    elif draw < 0.06:
        result["finished"] = False
    return result


def drive(
    trials: int,
    sync_every_s: float | None,
    label: str,
    scratch: Path,
    *,
    trial_s: float | None = None,
    appends: bool = True,
) -> Run:
    """`trials` finished trials through a new search's driver objects in `scratch`; with
    `trial_s`, on a simulated clock where each trial takes that long (else the real clock);
    without `appends`, into a storage that writes its files whole."""
    import optuna

    from search import storage as stored
    from search.books import study_storage
    from search.reporting import SearchViews
    from search.space import build_space, sample
    from search.storage import EXPERIMENT_FILE, Storage
    from search.tuner import FrontSearch
    from yolov2.config import load_config

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    knob = [] if sync_every_s is None else [f"search.sync_every_s={sync_every_s}"]
    config = load_config(DEFAULT, [f"search.num_samples={trials}", *knob])
    space = build_space(config, str(DEFAULT))
    cost = config.search.cost
    storage = Storage(f"file://{scratch / 'storage'}/{config.name}")
    directory = storage.driver_folder()
    directory.mkdir(parents=True)
    (directory / EXPERIMENT_FILE).write_text(config.to_yaml())
    searcher = FrontSearch(
        space=partial(sample, space),
        metric=["map", cost],
        mode=["max", "min"],
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name=config.name,
        storage=study_storage(directory),
        search_storage=storage.root,
    )
    now = [0.0]
    clock = time.monotonic if trial_s is None else (lambda: now[0])
    views = SearchViews(config, space, storage.root, clock=clock)
    appending = stored.APPENDING_FILESYSTEMS
    if not appends:
        stored.APPENDING_FILESYSTEMS = ()
    try:
        return _fed(
            trials, searcher, views, Run(label), storage=storage, scratch=scratch, cost=cost,
            clock=(now, trial_s or 0.0),
        )  # fmt: skip
    finally:
        stored.APPENDING_FILESYSTEMS = appending


def _fed(
    trials: int,
    searcher: Any,
    views: Any,
    run: Run,
    *,
    storage: Any,
    scratch: Path,
    cost: str,
    clock: tuple[list[float], float],
) -> Run:
    """The trials, one after another, through `searcher` (FrontSearch) and `views` (SearchViews);
    `clock`: the simulated clock and the seconds each trial runs on it."""
    from ray.tune.experiment import Trial

    from search.storage import DRIVER_FILES, Storage, push

    now, trial_s = clock
    directory = storage.driver_folder()
    rng = random.Random(0)
    everyone: list[Trial] = []
    marks = [m for m in MARKS if m < trials] + [trials]
    for number in range(1, trials + 1):
        trial_id = f"{number:08x}"
        start = time.perf_counter()
        params = searcher.suggest(trial_id)
        trial = Trial("run_trial", config=params, trial_id=trial_id, stub=True)
        everyone.append(trial)
        trial.set_status(Trial.RUNNING)
        started = time.perf_counter()
        views.on_trial_start(number, everyone, trial)
        views.on_step_end(number, everyone)
        viewing = time.perf_counter() - started
        now[0] += trial_s  # the trial runs
        result = fabricated(rng, trial_id, cost)
        trial.update_last_result(result)
        searcher.on_trial_complete(trial_id, result)
        trial.set_status(Trial.TERMINATED)
        started = time.perf_counter()
        views.on_trial_complete(number, everyone, trial)
        run.views_s.append(viewing + time.perf_counter() - started)
        run.seconds.append(time.perf_counter() - start)
        if number in marks:  # a search that ended here: its copies, and the one fit ends with
            final = push(directory, Storage(f"file://{scratch / 'ends'}/{number}"), DRIVER_FILES)
            run.pushed[number] = views.pushed_bytes + final
    start = time.perf_counter()
    views.on_experiment_end(everyone)
    push(directory, storage, DRIVER_FILES)  # tuner.fit's finally
    run.end_s = time.perf_counter() - start
    return run


def report(run: Run) -> None:
    marks = sorted(run.pushed)
    print(f"{run.label}: {len(run.seconds)} trials in {sum(run.seconds):.1f} s, "
          f"mean {1e3 * statistics.mean(run.seconds):.1f} ms per trial with the refreshes, "
          f"the fit's end {run.end_s:.2f} s")  # fmt: skip
    print(f"  {'trials':>8} {'ms/trial':>9} {'of it views':>12} {'MB pushed':>10} {'KB/trial':>9}")
    for mark in marks:
        print(f"  {mark:>8} {run.per_trial_ms(mark):>9.2f} "
              f"{run.per_trial_ms(mark, 'views_s'):>12.2f} {run.pushed[mark] / 1e6:>10.2f} "
              f"{run.per_trial_bytes(mark) / 1e3:>9.1f}")  # fmt: skip


def main() -> None:
    from targets import Target, check  # bench/targets.py, beside this script

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--every-event-trials", type=int, default=200)
    parser.add_argument("--slow-trial-s", type=float, default=300.0,
                        help="simulated seconds between slow trials' ends")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="200 trials, 100 at every event")
    args = parser.parse_args()
    trials, every_event = (200, 100) if args.quick else (args.trials, args.every_event_trials)
    if trials < WINDOW + 1:
        parser.error(f"--trials: at least {WINDOW + 1}")
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as scratch:
        folders = [Path(scratch, n) for n in ("throttled", "every-event", "slow", "slow-whole")]
        for folder in folders:
            folder.mkdir()
        with inside(folders[0]):
            throttled = drive(trials, None, "search.sync_every_s default (60 s)", folders[0])
        with inside(folders[1]):
            eager = drive(min(every_event, trials), 0, "search.sync_every_s 0", folders[1])
        slow_label = f"one trial ends every {args.slow_trial_s:g} s (simulated), 60 s default"
        with inside(folders[2]):
            slow = drive(trials, None, f"{slow_label}, appending storage", folders[2],
                         trial_s=args.slow_trial_s)  # fmt: skip
        with inside(folders[3]):
            whole = drive(trials, None, f"{slow_label}, objects written whole", folders[3],
                          trial_s=args.slow_trial_s, appends=False)  # fmt: skip
    for run in (throttled, eager, slow, whole):
        report(run)
    for mark in sorted(set(throttled.pushed) & set(eager.pushed)):
        time_x = eager.per_trial_ms(mark) / throttled.per_trial_ms(mark)
        views_x = eager.per_trial_ms(mark, "views_s") / throttled.per_trial_ms(mark, "views_s")
        bytes_x = eager.pushed[mark] / throttled.pushed[mark]
        print(f"at {mark} trials, every event over throttled: {time_x:.1f}x the time per trial "
              f"({views_x:.1f}x SearchViews' part), {bytes_x:.1f}x the bytes")  # fmt: skip
    first, last = min(throttled.pushed), max(throttled.pushed)
    middle = sorted(throttled.pushed)[-2]  # trial 100 of 1,000
    growth = {
        f"time per trial at {last} over at {first}": (
            throttled.per_trial_ms(last) / throttled.per_trial_ms(first)
        ),
        f"SearchViews' time per trial at {last} over at {first}": (
            throttled.per_trial_ms(last, "views_s") / throttled.per_trial_ms(first, "views_s")
        ),
        **{
            f"bytes per trial at {last} over at {middle}, {name}": (
                run.per_trial_bytes(last) / run.per_trial_bytes(middle)
            )
            for name, run in (("fast", throttled), ("slow", slow), ("slow, whole", whole))
        },
    }
    raise SystemExit(check([Target(name, value, "<=", 2.0, "x") for name, value in growth.items()]))


if __name__ == "__main__":
    main()
