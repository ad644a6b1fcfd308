"""What a search shows while it runs and after: the ledger kept as trials finish, a progress line,
and TensorBoard (an hparams table with the same columns for every trial, the front as a figure, the
hypervolume as trials finish), each trial's curves in the run that holds its hparams.

Ray's own hparams summary covers only searched values and marks failed trials as successes, so
ours replaces it; the driver writes it under `<exp>/tensorboard`. What grows with the search is
kept off the path of each finished trial: the ledger gets one line, the front is updated from its
own points (pareto.LiveFront), and the views and a remote storage's copy of the driver's files are
brought up to date at most every `search.sync_every_s` seconds, and at the end.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import AUTO_RESULT_KEYS

from search import dense
from search.pareto import (
    COMPLETE,
    COST_UNITS,
    FAILED,
    METRICS,
    PLACEMENT,
    STOPPED,
    Front,
    Ledger,
    LiveFront,
    TrialRecord,
    dense_rows,
    pareto_front,
    selection_split,
    trials_table,
)
from search.space import Space, is_finite
from search.storage import DRIVER_FILES, Pusher, Storage
from search.trainable import FINISHED, REPLAYED
from yolov2.config import ExperimentConfig
from yolov2.pipeline import TEST_METRICS

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from ray.tune.experiment import Trial
    from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("prune-search")
VIEWS_DIR = "tensorboard"


class TrialCurves(TBXLoggerCallback):
    """Each trial's curves in the trial's one TensorBoard run, `<exp>/tensorboard/trials/<id>`,
    beside its hparams row: every number it reports (loss, map, lr, ...) as `progress/<name>` by
    epoch. Ray's own keys (`done`, times, iterations) and its hparams summary are left out, and
    none of it goes into Ray's trial folders, so TensorBoard lists one run per trial."""

    def __init__(self, storage: str) -> None:
        super().__init__()
        self.storage = storage  # the search's storage; the runs go into its driver's folder

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: no open writers
        return {**self.__dict__, "_trial_writer": {}, "_trial_result": {}}

    def log_trial_start(self, trial: Trial) -> None:
        if trial in self._trial_writer:
            self._trial_writer[trial].close()
        folder = Storage(self.storage).driver_folder() / VIEWS_DIR / "trials" / trial.trial_id
        self._trial_writer[trial] = self._summary_writer_cls(str(folder), flush_secs=30)
        self._trial_result[trial] = {}

    def log_trial_result(self, iteration: int, trial: Trial, result: dict[str, Any]) -> None:
        if result.get(REPLAYED):  # a finished trial's last report again: drawn already
            return
        if trial not in self._trial_writer:
            self.log_trial_start(trial)
        writer, seen = self._trial_writer[trial], self._trial_result[trial]
        # The final report names no epoch: it belongs to the last one reported.
        step = seen["epoch"] = int(result.get("epoch", seen.get("epoch", 0)))
        for name, value in curve_values(result).items():
            writer.add_scalar(f"progress/{name}", value, global_step=step)
        writer.flush()

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        writer = self._trial_writer.pop(trial, None)
        self._trial_result.pop(trial, None)
        if writer is not None:
            writer.close()


def curve_values(result: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers a trial reported, without Ray's own keys, flags and the epoch."""
    skipped = {*AUTO_RESULT_KEYS, "done", "epoch", "trial_id"}
    return {
        name: float(value)
        for name, value in result.items()
        if name not in skipped
        and isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    }


class Every:
    """Whether a thing is due: at most once per `seconds` by `clock` (0: every time asked)."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self.clock = seconds, clock
        self.last = -math.inf

    def due(self) -> bool:
        now = self.clock()
        if now - self.last < self.seconds:
            return False
        self.last = now
        return True


@dataclass
class _Running:
    """What a SearchViews holds while its fit runs (never pickled into tuner.pkl)."""

    ledger: Ledger
    live: LiveFront
    views: FrontViews
    sync: Every
    pusher: Pusher
    refresh: Every
    unviewed: list[TrialRecord] = field(default_factory=list)  # hparams not written yet
    stale: bool = False  # the front views lag the ledger
    unsynced: bool = False  # the storage's copy lags the driver's files


class SearchViews(Callback):
    """Keeps the ledger and the progress line as each trial finishes, and the TensorBoard views
    and a remote storage's copy of the study, ledger and experiment at most every
    `search.sync_every_s` seconds (the views once more when the fit ends; `tuner.fit` pushes
    the files then)."""

    def __init__(
        self,
        config: ExperimentConfig,
        space: Space,
        storage: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.space = space
        self.storage = storage  # the search's storage: the ledger and study go there too
        self.clock = clock
        self._running: _Running | None = None

    @property
    def directory(self) -> Path:
        """The driver's folder, of whichever driver runs this (a new one resumes from the
        storage): not pickled into tuner.pkl with the rest."""
        return Storage(self.storage).driver_folder()

    def __getstate__(self) -> dict[str, Any]:  # pickled into tuner.pkl: no open state
        return {**self.__dict__, "_running": None}

    @property
    def running(self) -> _Running:
        if self._running is None:
            ledger = Ledger.load(self.directory)
            every = self.config.search.sync_every_s
            self._running = _Running(
                ledger=ledger,
                live=LiveFront(ledger, self.space.columns, self.config.search.cost),
                views=FrontViews(self.directory, self.space.columns),
                sync=Every(every, self.clock),
                pusher=Pusher(self.directory, Storage(self.storage), every, self.clock),
                refresh=Every(every, self.clock),
            )
        return self._running

    @property
    def ledger(self) -> Ledger:
        return self.running.ledger

    @property
    def pushed_bytes(self) -> int:
        """Bytes this driver has copied into the storage (0 for a local folder)."""
        return self.running.pusher.pushed_bytes

    def on_trial_start(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        log.info("trial %s started: %s", trial.trial_id, _shown(trial.config))
        self.running.unsynced = True  # the study has it RUNNING
        self._catch_up()

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        state, error = judged(trial.last_result or {}, self.config.search.cost)
        self._finish(trials, trial, state, error)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        local = Path(trial.error_file) if trial.error_file else None  # before Ray syncs it
        trace = local.read_text() if local is not None and local.is_file() else trial.get_error()
        self._finish(trials, trial, FAILED, error_line(trace))

    def on_trial_recover(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        """A trial whose process failed (its node lost, say) waits to be retried: the dense config
        it was making is free at once, for a waiter, not only once its heartbeat goes stale."""
        if self.space.touches_dense:
            dense.release(self.config.name, trial.trial_id)

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self._catch_up()  # what came due since the last trial event

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        """The fit ends (all trials done, Ctrl-C or an error): the views as they are now."""
        if self._running is not None:
            self._refresh()
            self._running.views.close()

    def _finish(self, trials: list[Trial], trial: Trial, state: str, error: str) -> None:
        if self.space.touches_dense:  # whatever its ending, another trial may make its dense
            dense.release(self.config.name, trial.trial_id)
        result = trial.last_result or {}
        checkpoint = trial.checkpoint
        relative = ""
        if state == COMPLETE and checkpoint is not None:
            relative = Storage(self.storage).relative(checkpoint.path)
        record = TrialRecord(
            trial_id=trial.trial_id,
            state=state,
            params=dict(trial.config),
            row=self.space.row(self.config, trial.config),
            metrics={k: result[k] for k in (*METRICS, *PLACEMENT) if k in result},
            error=error,
            checkpoint=relative,
        )
        running = self.running
        running.ledger.record(record)
        front = running.live.add(record)
        running.unviewed.append(record)
        running.stale = running.unsynced = True
        log.info("%s", progress_line(trials, front, record, running.live.counts))
        self._catch_up()

    def _catch_up(self) -> None:
        """The views and the storage's copy, each if it lags and its time has come."""
        running = self._running
        if running is None:
            return
        if running.stale and running.refresh.due():
            self._refresh()
        if running.unsynced and running.sync.due():  # a file that must wait lags until then
            running.unsynced = not running.pusher.push(DRIVER_FILES)

    def _refresh(self) -> None:
        """The hparams of the trials finished since the last refresh, and the whole front."""
        running = self.running
        for record in running.unviewed:
            running.views.trial(record)
        running.unviewed.clear()
        if running.stale:
            table = trials_table(running.ledger, self.space.columns)
            running.views.front(pareto_front(table, self.config.search.cost))
            running.stale = False


def judged(result: Mapping[str, Any], cost: str) -> tuple[str, str]:
    """(state, error) of a trial that ended without raising, from its last report: FAIL when an
    objective is not a finite number, PRUNED when it did not finish (stopped early), COMPLETE."""
    objectives = {name: result.get(name) for name in ("map", cost)}
    broken = {name: value for name, value in objectives.items() if not is_finite(value)}
    if broken:
        shown = ", ".join(f"{name} {value}" for name, value in broken.items())
        return FAILED, f"its last report has no finite objective ({shown})"
    if not result.get(FINISHED):
        return STOPPED, ""
    return COMPLETE, ""


def progress_line(
    trials: list[Trial], front: Front, record: TrialRecord, counts: Mapping[str, int]
) -> str:
    """`trial x COMPLETE map .. | 5 done, 2 running, 5 pending | best map .. | front 3 points`;
    `counts`: the finished trials by state."""
    states = [t.status for t in trials]
    running, pending = states.count("RUNNING"), states.count("PENDING")
    done, stopped = counts.get(COMPLETE, 0), counts.get(STOPPED, 0)
    failed = sum(counts.values()) - done - stopped
    cost = front.cost
    if record.state == COMPLETE:
        outcome = (
            f"map {record.metrics['map']:.4f} at {record.metrics[cost]:.4g} {COST_UNITS[cost]}"
        )
    else:
        outcome = record.error or "stopped early"
    best = front.table.loc[front.table["state"] == COMPLETE, "map"]
    best_text = f"best map {best.max():.4f}" if len(best) else "no map yet"
    stopped_text = f"{stopped} stopped early, " if stopped else ""
    return (
        f"trial {record.trial_id} {record.state}: {outcome} | {done} done, {failed} failed, "
        f"{stopped_text}{running} running, {pending} pending | {best_text} | front "
        f"{len(front.points)} points, hypervolume {front.normalised_hypervolume:.3f} of the dense "
        "model's"
    )


def error_line(trace: object) -> str:
    """The last line of a trial's traceback that names the exception, without module paths."""
    lines = [line.strip() for line in str(trace or "").splitlines() if line.strip()]
    for line in reversed(lines):
        head, sep, _ = line.partition(":")
        if sep and head.split(".")[-1].endswith(("Error", "Exception", "Interrupt")):
            return line[len(head) - len(head.split(".")[-1]) :]
    return lines[-1] if lines else "failed without an error message"


def _shown(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class FrontViews:
    """The TensorBoard views of a front under `<directory>/<views>` (tensorboard/, or
    tensorboard/refined/ for the refined front): one writer kept open for the front's hypervolume,
    size and figure, and each finished trial's hparams in a run of its own (TensorBoard's hparams
    table takes one run per trial)."""

    def __init__(self, directory: Path, columns: tuple[str, ...], views: str = VIEWS_DIR) -> None:
        self.folder = directory / views
        self.columns = columns
        self._writer: SummaryWriter | None = None

    def trial(self, record: TrialRecord) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.folder / "trials" / record.trial_id)) as writer:
            for summary in hparams_summaries(record, self.columns):
                writer.file_writer.add_summary(summary)

    def test_maps(self, record: TrialRecord) -> None:
        """A trial's test maps, measured after its hparams were written, into its run: the hparams
        table shows them in its `trial/test_map` columns."""
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(self.folder / "trials" / record.trial_id)) as writer:
            for name in TEST_METRICS:
                writer.add_scalar(f"trial/{name}", float(record.metrics[name]), 1)  # after step 0's

    def front(self, front: Front) -> None:
        """The front's scalars and figure at its number of finished trials."""
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(str(self.folder / "front"))
        step = len(front.table)
        self._writer.add_scalar("pareto/hypervolume", front.hypervolume, step)
        self._writer.add_scalar("pareto/hypervolume_normalised", front.normalised_hypervolume, step)
        self._writer.add_scalar("pareto/front_size", len(front.points), step)
        self._writer.add_figure("pareto/front", front_figure(front), step, close=True)
        self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def hparams_summaries(record: TrialRecord, columns: tuple[str, ...]) -> list[Any]:
    """TensorBoard's hparams protos for one trial: every column, every metric, its real status."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
    from torch.utils.tensorboard.summary import hparams

    values = {name: _hparam(record.row.get(name)) for name in columns}
    metrics = {f"trial/{k}": float(record.metrics.get(k, math.nan)) for k in METRICS}
    experiment, start, _ = hparams(values, metrics)
    status = api_pb2.STATUS_SUCCESS if record.state == COMPLETE else api_pb2.STATUS_FAILURE
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status), version=0
    )
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(
            plugin_name="hparams", content=content.SerializeToString()
        )
    )
    end = Summary(value=[Summary.Value(tag="_hparams_/session_end_info", metadata=metadata)])
    scalars = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in metrics.items()])
    return [experiment, start, end, scalars]


def _hparam(value: Any) -> Any:
    if value is None:
        return "n/a"  # a conditional value this trial did not sample
    return value if isinstance(value, (bool, str)) else float(value)


def front_figure(front: Front) -> Figure:
    """map against the cost: every trial, the front joined, the dense model marked."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4.4), dpi=100)
    axes = figure.subplots()
    table, cost = front.table, front.cost
    done = table[table["state"] == COMPLETE]
    axes.scatter(done[cost], done["map"], s=22, color="0.6", label="trials")
    points = front.points
    split = selection_split(table)
    axes.plot(points[cost], points["map"], "-o", color="tab:blue", ms=5,
              label=f"Pareto front on {split}")  # fmt: skip
    dense = dense_rows(done)
    if len(dense):
        axes.scatter(dense[cost], dense["map"], marker="*", s=160, color="tab:red",
                     label=f"dense on {split}")  # fmt: skip
    if split == "val":  # the front's models on the test split, measured after the search chose them
        tested = points[points["test_map"].notna()]
        if len(tested):
            axes.plot(tested[cost], tested["test_map"], "--o", color="tab:green", ms=5,
                      mfc="none", label="the front on test")  # fmt: skip
        dense = dense[dense["test_map"].notna()]
        if len(dense):
            axes.scatter(dense[cost], dense["test_map"], marker="*", s=160, color="tab:green",
                         facecolors="none", label="dense on test")  # fmt: skip
    failed = int((table["state"] != COMPLETE).sum())
    axes.set_xlabel(f"{cost} ({COST_UNITS[cost]})")
    axes.set_ylabel("map (VOC07 11-point, IoU 0.5)")
    axes.set_title(f"{len(done)} completed trials, {failed} failed or stopped")
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def write_front(front: Front, csv: Path | None = None, plot: Path | None = None) -> None:
    """The table of every trial (with `pareto`) as a CSV and the front figure as a PNG, each
    written whole or not at all, to the paths given."""
    from yolov2.files import atomic_path

    if csv is not None:
        with atomic_path(csv) as temporary:
            front.table.to_csv(temporary, index=False)
    if plot is not None:
        with atomic_path(plot) as temporary:
            front_figure(front).savefig(temporary, format="png")
