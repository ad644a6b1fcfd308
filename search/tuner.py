"""The search: Ray Tune runs the trials, Optuna samples them into a SQLite study in the experiment
folder, and after every fit the study is settled (no trial of ours left RUNNING) and the front
written.

`run` reads like its diagram: check the space, make the dense stage once with every core, start Ray,
check the resources, build the searcher and the Tuner, fit, settle, front. `resume` restores the
Tuner from the folder (the searcher comes back bound to the same study) and does the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune.search.optuna import OptunaSearch

from search.pareto import Front, Ledger, pareto_front, trials_table
from search.reporting import SearchViews, TrialCurves, front_figure
from search.space import Space, build_space, is_finite, sample
from search.trainable import DONE, run_trial
from yolov2.config import ExperimentConfig, SearchConfig, load_config
from yolov2.errors import InputError
from yolov2.files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    import optuna
    from ray import tune

log = logging.getLogger("prune-search")

STUDY_FILE = "study.db"
EXPERIMENT_FILE = "experiment.yaml"
TRIALS_CSV = "trials.csv"
FRONT_PNG = "front.png"
# Ray's own experiment lives in a subfolder: on restore Ray copies its folder to a staging area
# and back, which would put stale copies over the live study and ledger beside it.
RAY_DIR = "ray"
TUNER_FILE = "tuner.pkl"  # Ray's; with EXPERIMENT_FILE it marks an experiment folder


@dataclass(frozen=True)
class Outcome:
    directory: Path
    front: Front
    finished: bool  # every trial of the budget has ended (not interrupted)


def run(config: ExperimentConfig, source: str, directory: Path, address: str | None) -> Outcome:
    """A new search into `directory` (`<storage>/<name>`); the same search again resumes it."""
    space = build_space(config, source)  # 1. the space, checked before Ray starts
    if _same_search(directory, config):
        log.info("%s holds this search already: resuming it", directory)
        return resume(directory, address)
    _check_new_experiment_dir(directory)
    make_dense(config, space)  # 2. the dense stage, once, with every core of this machine
    with ray_session(address):  # 3. Ray: a loopback instance of our own, or the cluster
        check_resources(config.search)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / EXPERIMENT_FILE, config.to_yaml())
        tuner = build_tuner(config, space, directory)  # 4. searcher and Tuner
        return fit(tuner, config, space, directory)  # 5. fit, settle the study, the front


def resume(directory: Path, address: str | None = None) -> Outcome:
    """Finish the search in `directory` after Ctrl-C or a killed driver."""
    from ray import tune

    config, space = load_experiment(directory)
    if len(Ledger.load(directory).records) >= config.search.num_samples:
        log.info("%s: the search has finished (%d trials)", directory, config.search.num_samples)
        return _outcome(directory, config, space)
    with ray_session(address):
        check_resources(config.search)
        settle_study(directory, config)  # orphans of the lost driver: FAIL, never RUNNING
        tuner = tune.Tuner.restore(
            str(directory / RAY_DIR),
            trainable=trainable(config, space, directory),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        return fit(tuner, config, space, directory)


def load_experiment(directory: Path) -> tuple[ExperimentConfig, Space]:
    """The experiment and space of a search folder, or one clear error when it is not one."""
    if (
        not (directory / EXPERIMENT_FILE).is_file()
        or not (directory / RAY_DIR / TUNER_FILE).is_file()
    ):
        raise InputError(
            f"{directory}: not a search folder (no {EXPERIMENT_FILE} and {RAY_DIR}/{TUNER_FILE})"
        )
    config = load_config(directory / EXPERIMENT_FILE)
    return config, build_space(config, str(directory / EXPERIMENT_FILE))


def fit(tuner: tune.Tuner, config: ExperimentConfig, space: Space, directory: Path) -> Outcome:
    try:
        tuner.fit()
    finally:
        settle_study(directory, config)
    return _outcome(directory, config, space)


def _outcome(directory: Path, config: ExperimentConfig, space: Space) -> Outcome:
    ledger = Ledger.load(directory)
    front = pareto_front(trials_table(ledger, space.columns), config.search.cost)
    write_front_files(directory, front)
    return Outcome(directory, front, len(ledger.records) >= config.search.num_samples)


def write_front_files(directory: Path, front: Front, csv: Path | None = None) -> None:
    """trials.csv (one row per trial, with `pareto`) and front.png, or to the paths given."""
    with atomic_path(csv or directory / TRIALS_CSV) as temporary:
        front.table.to_csv(temporary, index=False)
    figure = front_figure(front)
    with atomic_path(directory / FRONT_PNG) as temporary:
        figure.savefig(temporary, format="png")


def _same_search(directory: Path, config: ExperimentConfig) -> bool:
    if not (directory / EXPERIMENT_FILE).exists():
        return False
    stored, _ = load_experiment(directory)
    if stored != config:
        raise InputError(
            f"{directory}: holds another search (its {EXPERIMENT_FILE} differs); "
            f"`prune-search resume {directory}` finishes that one, or give another --name"
        )
    return True


def _check_new_experiment_dir(directory: Path) -> None:
    """`directory` is not a search yet and can be written: checked before any work, and nothing
    left behind (a folder this made is removed again)."""
    existed = directory.exists()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / ".writable") as probe:
            probe.write_text("")
        (directory / ".writable").unlink()
    except OSError as error:
        raise InputError(
            f"{directory}: cannot write the experiment folder ({error.strerror})"
        ) from None
    finally:
        if not existed and directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()


def make_dense(config: ExperimentConfig, space: Space) -> None:
    """Generate the data and make the experiment's dense model before any trial starts, so trials
    reuse it from the cache; a space that changes the dense stage leaves it to its trials."""
    from yolov2.engine import load_splits
    from yolov2.pipeline import cached_dense

    splits = load_splits(config.data)
    if space.touches_dense:
        log.info(
            "the space changes the dense stage: each distinct dense config is made once, by a trial"
        )
        return
    dense = cached_dense(config, splits)
    log.info("dense stage ready: map %.4f (%s)", dense.map, dense.checkpoint)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """A Ray instance of our own on 127.0.0.1 only (never a cluster an earlier `ray start` left on
    this machine), or the cluster at `address`; shut down afterwards either way."""
    if address is None:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # every Ray listener on loopback
    # Trials checkpoint every epoch; Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its reporter prints even when verbose=0
    import ray

    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        ray.init(
            address="local",
            num_cpus=os.cpu_count(),
            include_dashboard=False,
            object_store_memory=256 * 2**20,
            **quiet,
        )
    else:
        ray.init(address=address, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(search: SearchConfig) -> None:
    """One clear error for a trial no node can hold, instead of a search that waits forever."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    most_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_gpus = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
    if search.cpus_per_trial > most_cpus:
        raise InputError(
            f"search.cpus_per_trial is {search.cpus_per_trial:g}, but the largest node of this "
            f"Ray cluster has {most_cpus:g} CPUs"
        )
    if search.gpus_per_trial > 0 and most_gpus < min(1.0, search.gpus_per_trial):
        raise InputError(
            f"search.gpus_per_trial is {search.gpus_per_trial:g}, but no node of this Ray "
            "cluster has a GPU"
        )
    if search.gpus_per_trial > most_gpus:
        raise InputError(
            f"search.gpus_per_trial is {search.gpus_per_trial:g}, but the largest node has "
            f"{most_gpus:g} GPUs"
        )


def trainable(config: ExperimentConfig, space: Space, directory: Path) -> Any:
    from ray import tune

    bound = tune.with_parameters(
        run_trial,
        experiment=config.model_dump(mode="json"),
        space=space,
        ray_dir=str(directory / RAY_DIR),
    )
    search = config.search
    return tune.with_resources(bound, {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})


def build_tuner(config: ExperimentConfig, space: Space, directory: Path) -> tune.Tuner:
    from ray import tune

    search = config.search
    searcher = FrontSearch(
        space=partial(sample, space),
        metric=["map", search.cost],
        mode=["max", "min"],
        points_to_evaluate=space.known_points(search.known_points)[: search.num_samples],
        sampler=make_sampler(search, len(search.known_points)),
        study_name=config.name,
        storage=study_storage(directory),
    )
    return tune.Tuner(
        trainable(config, space, directory),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent,
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a new trial starts in a warm worker: torch imported, data read
        ),
        run_config=tune.RunConfig(
            name=RAY_DIR,
            storage_path=str(directory),
            callbacks=[SearchViews(directory, config, space), TrialCurves()],
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,  # our progress line instead of Ray's tables (Ray's results are in the folder)
        ),
    )


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


def make_sampler(search: SearchConfig, known: int) -> optuna.samplers.BaseSampler:
    """The sampler the file names, seeded; its random start kept short for budgets of a dozen."""
    import optuna

    startup = max(known + 1, min(10, search.num_samples // 3))
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=search.seed, n_startup_trials=startup, constant_liar=True
        )
    if search.sampler == "nsga2":
        population = max(4, min(50, search.num_samples // 3))
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=population)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=search.seed)


def study_storage(directory: Path) -> optuna.storages.RDBStorage:
    import optuna

    return optuna.storages.RDBStorage(f"sqlite:///{directory / STUDY_FILE}")


def settle_study(directory: Path, config: ExperimentConfig) -> int:
    """Tell FAIL for every trial of the study still RUNNING (a driver interrupted or lost while
    they ran); a resumed trial that then completes is added anew. Returns how many it settled."""
    import optuna

    if not (directory / STUDY_FILE).exists():
        return 0
    try:
        study = optuna.load_study(study_name=config.name, storage=study_storage(directory))
    except KeyError:
        return 0
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        study._storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return len(running)


class FrontSearch(OptunaSearch):
    """OptunaSearch that tells the study the truth about each trial: COMPLETE only for a finished
    trial with finite objectives, PRUNED for one stopped early (a scheduler's truncated values
    must not reach the front nor the sampler), FAIL for an error or a non-finite value. A trial
    resumed after the study was settled completes as a new study trial with its values."""

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params: dict[str, Any] | None = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr("ray_trial_id", trial_id)
        return params

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        import optuna

        ot_trial = self._ot_trials.get(trial_id)
        study = self._ot_study
        if trial_id in self._completed_trials or ot_trial is None or study is None:
            return
        State = optuna.trial.TrialState
        values = [(result or {}).get(metric) for metric in list(self._metric or [])]
        state = State.COMPLETE
        if error or not all(is_finite(v) for v in values):
            state = State.FAIL
        elif not (result or {}).get(DONE):
            state = State.PRUNED
        told = [float(v) for v in values if v is not None] if state == State.COMPLETE else None
        frozen = study.get_trials(deepcopy=False)[ot_trial.number]
        if not frozen.state.is_finished():
            study.tell(ot_trial, told, state=state)
        elif state == State.COMPLETE and frozen.state == State.FAIL:  # settled as interrupted
            study.add_trial(
                optuna.trial.create_trial(
                    params=frozen.params,
                    distributions=frozen.distributions,
                    values=told,
                    user_attrs={**frozen.user_attrs, "resumed": True, "interrupted": False},
                )
            )
        self._completed_trials.add(trial_id)
