"""One set of books: Ray's experiment state, the Optuna study and the ledger name the same trials.

A driver that is lost (SIGKILL, a dead head node) leaves three records that can disagree, because
Ray snapshots its experiment every few seconds while the study and the ledger are written as each
trial starts and ends. A trial the lost driver created and even finished after Ray's last snapshot
is in the study and the ledger but not in Ray's state: the restored Ray never runs it, and makes
another trial in its place. Counting rows cannot see that; ids can.

On resume, Ray's newest snapshot decides which trials the search has: it is what the restored Ray
runs, and it cannot be amended. The study and the ledger are reconciled to it by trial id: the
entries of trials Ray never knew are removed (their folders too), each trial keeps one study entry,
an entry Ray will run again is RUNNING (even one an interrupted fit settled as FAIL), and a trial
Ray had ended that the ledger lacks (it ended after the lost driver last copied its files into a
remote storage, which it does at most every `search.sync_every_s` seconds) is recorded from its
folder in the storage: its last result, its error, its final checkpoint; its study entry, if
still RUNNING, takes that outcome. Optuna cannot remove a trial from a study, so the study is
copied without those entries and the copy replaces it whole.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from search.pareto import COMPLETE, FAILED, METRICS, PLACEMENT, STOPPED, Ledger, TrialRecord
from search.space import Space
from search.storage import STUDY_FILE, Storage
from search.trainable import RAY_DIR
from yolov2.config import ExperimentConfig
from yolov2.errors import InputError

log = logging.getLogger("prune-search")

RAY_ID = "ray_trial_id"  # the user attribute that ties a study entry to its Ray trial
ENDED = ("TERMINATED", "ERROR")  # Ray statuses a resume does not run again
_STATE_PREFIX = "experiment_state-"  # Ray's snapshots: experiment_state-<session>.json


def study_storage(directory: Path) -> optuna.storages.RDBStorage:
    return optuna.storages.RDBStorage(f"sqlite:///{directory / STUDY_FILE}")


def settle_study(directory: Path, config: ExperimentConfig) -> int:
    """Tell FAIL for every trial of the study still RUNNING (a driver interrupted or lost while
    they ran); a resume reopens those Ray runs again (`reconcile`). Returns how many it settled."""
    study = _load_study(directory, config)
    if study is None:
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


def ray_trials(storage: Storage) -> dict[str, str]:
    """The trials of Ray's newest experiment snapshot in `storage`, id -> status (the snapshot
    Tuner.restore reads: the greatest file name)."""
    names = [n for n in storage.files(RAY_DIR, _STATE_PREFIX) if n.endswith(".json")]
    if not names:
        raise InputError(f"{storage.uri(RAY_DIR)}: no experiment state of Ray to resume from")
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / names[-1]
        storage.download(f"{RAY_DIR}/{names[-1]}", local)
        try:
            trial_data = json.loads(local.read_text())["trial_data"]
            states = [json.loads(state) for state, _ in trial_data]
            return {str(s["trial_id"]): str(s["status"]) for s in states}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            where = storage.uri(f"{RAY_DIR}/{names[-1]}")
            raise InputError(f"{where}: not an experiment state of Ray ({error})") from None


def reconcile(
    directory: Path,
    storage: Storage,
    config: ExperimentConfig,
    space: Space,
    trials: Mapping[str, str],
) -> list[str]:
    """Make the study, the ledger and the trial folders hold exactly Ray's `trials` (id ->
    status, `ray_trials`); returns the ids of the trials removed, which Ray never knew."""
    ledger = Ledger.load(directory)
    for trial_id, status in trials.items():
        if status in ENDED and trial_id not in ledger.records:
            ledger.record(recovered(storage, config, space, trial_id, status))
            log.warning(
                "trial %s: ended after the lost driver's last copy of its files; recorded from "
                "its folder in the storage (%s)",
                trial_id, ledger.records[trial_id].state,
            )  # fmt: skip
    removed = _reconcile_study(directory, config, trials, ledger)
    removed |= ledger.keep_only(set(trials))
    for name in storage.folders(RAY_DIR, prefix="trial_"):
        if name.removeprefix("trial_") not in trials:
            removed.add(name.removeprefix("trial_"))
            storage.delete_folder(f"{RAY_DIR}/{name}")
    for trial_id in sorted(removed):
        log.warning(
            "trial %s: made by the lost driver after Ray's last snapshot, which the restored "
            "Ray does not run: removed from the study, the ledger and the storage",
            trial_id,
        )
    return sorted(removed)


def recovered(
    storage: Storage, config: ExperimentConfig, space: Space, trial_id: str, status: str
) -> TrialRecord:
    """The ledger's record of a trial Ray ended, from its folder in the storage: its parameters
    (params.json), its last result (result.json), its error (error.txt), its final checkpoint."""
    from search.reporting import error_line, judged

    folder = f"{RAY_DIR}/trial_{trial_id}"
    with tempfile.TemporaryDirectory() as scratch:
        texts = {
            name: (Path(scratch) / name).read_text()
            for name in ("params.json", "result.json", "error.txt")
            if storage.download(f"{folder}/{name}", Path(scratch) / name)
        }
    try:
        params = json.loads(texts.get("params.json", "{}"))
    except json.JSONDecodeError as bad:
        raise InputError(f"{storage.uri(folder)}/params.json: not Ray's ({bad})") from None
    result = _last_result(texts.get("result.json", ""))
    if status == "ERROR":
        state, error = FAILED, error_line(texts.get("error.txt", ""))
    elif not result:
        state, error = FAILED, f"no results in {storage.uri(folder)}"
    else:
        state, error = judged(result, config.search.cost)
    checkpoints = storage.folders(folder, prefix="checkpoint_") if state == COMPLETE else []
    return TrialRecord(
        trial_id=trial_id,
        state=state,
        params=params,
        row=space.row(config, params) if params else {},  # no params.json: no columns
        metrics={k: result[k] for k in (*METRICS, *PLACEMENT) if k in result},
        error=error,
        checkpoint=f"{folder}/{checkpoints[-1]}" if checkpoints else "",
    )


def _last_result(text: str) -> dict[str, Any]:
    """The last whole line of a result.json (one cut short by a lost driver is passed over)."""
    for line in reversed(text.splitlines()):
        with contextlib.suppress(json.JSONDecodeError):
            result: dict[str, Any] = json.loads(line)
            return result
    return {}


def _reconcile_study(
    directory: Path, config: ExperimentConfig, trials: Mapping[str, str], ledger: Ledger
) -> set[str]:
    study = _load_study(directory, config)
    if study is None:
        return set()
    State = optuna.trial.TrialState
    entries = study.get_trials(deepcopy=True)
    last = {t.user_attrs[RAY_ID]: t.number for t in entries if RAY_ID in t.user_attrs}
    kept: list[optuna.trial.FrozenTrial] = []
    removed: set[str] = set()
    for entry in entries:
        ray_id = entry.user_attrs.get(RAY_ID)
        if ray_id is None:  # an enqueued point not yet tried stays; one asked by a lost driver not
            if entry.state == State.WAITING:
                kept.append(entry)
            continue
        if ray_id not in trials:
            removed.add(ray_id)
        elif last[ray_id] == entry.number:  # each trial once: its latest entry
            kept.append(_as_ray_has_it(entry, trials[ray_id], ledger.records.get(ray_id), config))
    if [(t.number, t.state) for t in kept] != [(t.number, t.state) for t in entries]:
        _replace_study(directory, study, kept)
    return removed


def _as_ray_has_it(
    entry: optuna.trial.FrozenTrial,
    status: str,
    record: TrialRecord | None,
    config: ExperimentConfig,
) -> optuna.trial.FrozenTrial:
    """A study entry in the state Ray's status gives it: RUNNING when Ray runs the trial again
    (a completed one stays: the trial reports its final checkpoint again); when Ray has it ended
    and no one told the study, the ledger's outcome of it (`record`), or FAIL."""
    State = optuna.trial.TrialState
    again = status not in ENDED
    values = None
    if again and entry.state == State.FAIL and entry.user_attrs.get("interrupted"):
        state = State.RUNNING
    elif not again and entry.state == State.RUNNING:
        state = State.FAIL
        if record is not None and record.state == COMPLETE:
            state = State.COMPLETE
            values = [float(record.metrics[k]) for k in ("map", config.search.cost)]
        elif record is not None and record.state == STOPPED:
            state = State.PRUNED
    else:
        return entry
    return optuna.trial.create_trial(
        state=state,
        values=values,
        params=entry.params,
        distributions=entry.distributions,
        user_attrs={**entry.user_attrs, "interrupted": state == State.FAIL},
        system_attrs=entry.system_attrs,
        intermediate_values=entry.intermediate_values,
    )


def _replace_study(
    directory: Path, study: optuna.Study, entries: list[optuna.trial.FrozenTrial]
) -> None:
    """Write `entries` as the whole study, under its name and directions, and put the copy in
    place of study.db at once (a reader never sees half a study)."""
    partial = directory / f".{STUDY_FILE}.partial-{os.getpid()}"
    partial.unlink(missing_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{partial}")
    try:
        copy = optuna.create_study(
            study_name=study.study_name, storage=storage, directions=study.directions
        )
        for key, value in study.user_attrs.items():
            copy.set_user_attr(key, value)
        for key, value in study._storage.get_study_system_attrs(study._study_id).items():
            storage.set_study_system_attr(copy._study_id, key, value)
        for entry in entries:
            copy.add_trial(entry)
        storage.engine.dispose()
        os.replace(partial, directory / STUDY_FILE)
    finally:
        storage.engine.dispose()
        partial.unlink(missing_ok=True)


def _load_study(directory: Path, config: ExperimentConfig) -> optuna.Study | None:
    if not (directory / STUDY_FILE).exists():
        return None
    try:
        return optuna.load_study(study_name=config.name, storage=study_storage(directory))
    except KeyError:
        return None
