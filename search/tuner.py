"""The search: Ray Tune runs the trials, Optuna samples them into a SQLite study in the experiment
folder, and after every fit the study is settled (no trial of ours left RUNNING) and the front
written.

`run` reads like its diagram: check the space, make the dense stage once with every core, start Ray,
check the resources, plan the warm start (if asked), build the searcher and the Tuner, fit, settle,
front. `resume` restores the Tuner from the folder (the searcher comes back bound to the same
study) and does the same.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search import books, dense, holdout, latency, screening, warm_start
from search.books import RAY_ID, settle_study, study_storage
from search.cluster import check_resources, connect
from search.devices import check_device
from search.early_stop import make_scheduler
from search.pareto import Front, Ledger, pareto_front, trials_table
from search.reporting import FrontViews, SearchViews, TrialCurves, judged, write_front
from search.space import Space, build_space, sample
from search.storage import (
    DRIVER_FILES,
    EXPERIMENT_FILE,
    Storage,
    is_uri,
    join,
    pull,
    push,
)
from search.trainable import RAY_DIR, run_trial
from yolov2.config import ExperimentConfig, SearchConfig, default_cache, load_config
from yolov2.errors import InputError
from yolov2.files import atomic_path, write_text_atomic

if TYPE_CHECKING:
    from ray import tune

log = logging.getLogger("prune-search")

TRIALS_CSV = "trials.csv"
FRONT_PNG = "front.png"
# Ray's own experiment lives in a subfolder (RAY_DIR): on restore Ray copies its folder to a
# staging area and back, which would put stale copies over the live study and ledger beside it.
TUNER_FILE = "tuner.pkl"  # Ray's; with EXPERIMENT_FILE it marks an experiment folder
STORAGE_FILE = "storage.txt"  # in the driver's folder of a search stored at a URI: that URI


@dataclass(frozen=True)
class Outcome:
    directory: Path
    front: Front
    finished: bool  # every trial of the budget has ended (not interrupted)


def run(config: ExperimentConfig, source: str, storage: Storage, address: str | None) -> Outcome:
    """A new search into `storage` (`<storage>/<name>`: the experiment folder, or a URI whose
    driver's folder is `runs/<name>`); the same search again resumes it."""
    directory = storage.driver_folder()
    space = build_space(config, source)  # 1. the space, checked before Ray starts
    check_device(config, source)
    if _same_search(directory, config, storage):
        log.info("%s holds this search already: resuming it", directory)
        return resume(str(directory), address)
    if storage.remote:  # first: a wrong URI leaves nothing behind, not even runs/
        storage.check_writable()
    _check_new_experiment_dir(directory)
    holdout.warn_without_validation(config, source)
    if address is None:  # 2. the dense stage, once, with every core of this machine
        make_dense(config, space, None)
    with ray_session(address):  # 3. Ray: a loopback instance of our own, or the cluster
        check_resources(config.search)
        # 2. into the storage (on a cluster, made first on a node with a trial's resources)
        make_dense(config, space, storage, on_cluster=address is not None)
        # 4. the warm start, if asked: points chosen from the dense model's sensitivity
        warm = warm_start.plan(config, space, storage, on_cluster=address is not None)
        space.check_ratios(warm.points, f"{source}: search.warm_start")
        # 5. the screen, if asked: many candidates scored without finetuning, the best kept
        screen = screening.plan(config, space, storage)
        with _undone_unless_built(directory, storage):  # a failed start leaves no half search
            write_text_atomic(directory / EXPERIMENT_FILE, config.to_yaml())
            written = [*warm.write(directory), *screen.write(directory, space.ratio_names)]
            push(directory, storage, tuple(path.name for path in written))
            if storage.remote:
                write_text_atomic(directory / STORAGE_FILE, storage.root + "\n")
            first = [*warm.points, *screen.points]
            tuner = build_tuner(config, space, directory, storage, first)  # 6. the Tuner
        return fit(tuner, config, space, directory, storage)  # 7. fit, settle, the front


@contextlib.contextmanager
def _undone_unless_built(directory: Path, storage: Storage) -> Iterator[None]:
    """Remove what a new search wrote into `directory` (and its remote storage) if its Tuner is
    not built: a folder with experiment.yaml and a study but no tuner.pkl would be taken for a
    search to resume by the next run, and could not be resumed. What was there before stays."""
    existed = directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    remote_ray = storage.remote and storage.exists(RAY_DIR)
    try:
        yield
    except BaseException:
        for path in set(directory.iterdir()) - before:
            if storage.remote:
                storage.delete(path.name)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        if storage.remote and not remote_ray:
            storage.delete_folder(RAY_DIR)
        if not existed:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise


def locate(location: str) -> tuple[Path, Storage]:
    """The driver's experiment folder and the storage of the search at `location`: an experiment
    folder, or a storage URI (`<storage>/<name>`), whose driver folder is `runs/<name>`."""
    if is_uri(location):
        storage = Storage(join(location))  # no trailing slash, before its query or not
        return storage.driver_folder(), storage
    directory = Path(location).resolve()
    marker = directory / STORAGE_FILE
    root = marker.read_text().strip() if marker.is_file() else str(directory)
    return directory, Storage(root)


def checked_out(location: str) -> tuple[Path, Storage]:
    """`locate`, with a storage URI's driver files (the experiment, the study, the ledger) copied
    into its driver folder when that holds none: from a new driver, anywhere, every command that
    takes an experiment folder takes the storage URI too."""
    directory, storage = locate(location)
    if not storage.remote:
        return directory, storage
    if (directory / EXPERIMENT_FILE).is_file():
        held = locate(str(directory))[1].root
        if held.partition("?")[0] != storage.root.partition("?")[0]:
            raise InputError(
                f"{directory}: holds the search stored at {held}, not at {storage.root}; "
                "run this command from another folder"
            )
        if held != storage.root:  # the same storage at another endpoint: the one given now
            write_text_atomic(directory / STORAGE_FILE, storage.root + "\n")
        return directory, storage
    copied = pull(storage, directory, DRIVER_FILES)
    if copied:
        log.info("from %s: %s copied into %s", storage.root, ", ".join(copied), directory)
    if (directory / EXPERIMENT_FILE).is_file():
        write_text_atomic(directory / STORAGE_FILE, storage.root + "\n")
    return directory, storage


def resume(location: str, address: str | None = None) -> Outcome:
    """Finish the search at `location` (its folder, or its storage URI from a new driver) after
    Ctrl-C or a lost driver."""
    from ray import tune

    directory, storage = checked_out(location)
    config, space = load_experiment(directory, storage)
    # One set of books: the study, the ledger and the trial folders hold Ray's trials, by id.
    trials = books.ray_trials(storage)
    books.reconcile(directory, storage, config, space, trials)
    push(directory, storage, DRIVER_FILES)
    ledger = Ledger.load(directory)
    ended = [t for t, status in trials.items() if status in books.ENDED and t in ledger.records]
    if len(ended) >= config.search.num_samples:
        log.info("%s: the search has finished (%d trials)", directory, config.search.num_samples)
        if not holdout.chosen(ledger, space, config.search.cost):
            return _outcome(directory, config, space)
        with ray_session(address):  # it ended before the test maps of its front were measured
            check_resources(config.search)
            return measure_test_maps(directory, storage, config, space) or _outcome(
                directory, config, space
            )
    with ray_session(address):
        check_resources(config.search)
        tuner = tune.Tuner.restore(
            storage.uri(RAY_DIR),
            trainable=trainable(config, space, storage),
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
        return fit(tuner, config, space, directory, storage)


def load_experiment(
    directory: Path, storage: Storage | None = None
) -> tuple[ExperimentConfig, Space]:
    """The experiment and space of a search folder, or one clear error when it is not one."""
    storage = storage or locate(str(directory))[1]
    if not (directory / EXPERIMENT_FILE).is_file() or not storage.exists(f"{RAY_DIR}/{TUNER_FILE}"):
        where = f"{storage.root}: " if storage.remote else ""
        raise InputError(
            f"{directory}: not a search folder (no {EXPERIMENT_FILE} and {where}"
            f"{RAY_DIR}/{TUNER_FILE})"
        )
    config = load_config(directory / EXPERIMENT_FILE)
    return config, build_space(config, str(directory / EXPERIMENT_FILE))


def fit(
    tuner: tune.Tuner,
    config: ExperimentConfig,
    space: Space,
    directory: Path,
    storage: Storage,
) -> Outcome:
    if space.touches_dense:
        claims = dense.start_claims(config.name)  # noqa: F841 (alive while the trials run)
    registry = latency.registry(config.name, storage)  # noqa: F841 (one latency per architecture)
    try:
        tuner.fit()
    finally:
        settle_study(directory, config)
        push(directory, storage, DRIVER_FILES)
    outcome = _outcome(directory, config, space)
    if outcome.finished:
        outcome = measure_test_maps(directory, storage, config, space) or outcome
        if screening.conclude(directory, config, space) is not None:
            push(directory, storage, (screening.SCREEN_PNG,))
    return outcome


def measure_test_maps(
    directory: Path, storage: Storage, config: ExperimentConfig, space: Space
) -> Outcome | None:
    """The test maps of the models the finished search chose (search/holdout.py), in the ledger,
    the views and the storage; the outcome with them, or None when none was missing. Ray runs."""
    measured = holdout.measure(storage, config, space, Ledger.load(directory))
    if not measured:
        return None
    outcome = _outcome(directory, config, space)
    with contextlib.closing(FrontViews(directory, space.columns)) as views:
        for record in measured:
            views.test_maps(record)
        views.front(outcome.front)
    push(directory, storage, DRIVER_FILES)
    return outcome


def _outcome(directory: Path, config: ExperimentConfig, space: Space) -> Outcome:
    ledger = Ledger.load(directory)
    front = pareto_front(trials_table(ledger, space.columns), config.search.cost)
    write_front(front, directory / TRIALS_CSV, directory / FRONT_PNG)
    return Outcome(directory, front, len(ledger.records) >= config.search.num_samples)


def _same_search(directory: Path, config: ExperimentConfig, storage: Storage) -> bool:
    """Whether `directory` holds this very search (then `run` resumes it): the same experiment
    in the same storage. A search kept at another storage whose driver folder is this one (a URI
    search's `runs/<name>`, say) is another search, however equal its experiment."""
    if not (directory / EXPERIMENT_FILE).exists():
        return False
    stored_root = locate(str(directory))[1].root
    if stored_root != storage.root:
        raise InputError(
            f"{directory}: holds the search stored at {stored_root}, not at {storage.root}; "
            f"`prune-search resume {stored_root}` finishes that one, or give this one another "
            "--name"
        )
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


def make_dense(
    config: ExperimentConfig, space: Space, storage: Storage | None, on_cluster: bool = False
) -> None:
    """Generate the data and make the experiment's dense model before any trial starts (none can
    hold a slot it needs), and publish it in the storage (unless None: the cache only), where
    every trial's node finds it; a space that changes the dense stage leaves each of its dense
    configs to the first trial that needs it. Locally it runs here, with every core; on a
    cluster, as a Ray task with a trial's resources on whichever node has them."""
    if space.touches_dense:
        if storage is not None:
            log.info(
                "the space changes the dense stage: each distinct one is made once, by a trial"
            )
        return
    # The key is a node's (its data's content, its device's precision): on a cluster, the task's,
    # which finds the published stage itself (the driver may not even hold the data).
    if storage is not None and not on_cluster:
        key = dense.store_key(config)
        if dense.published(storage, key):
            log.info("dense stage %s: in %s already", key, storage.root)
            return
    if not on_cluster:
        dense_map = dense.make(config, storage, str(default_cache()))
    else:
        import ray

        search = config.search
        task = ray.remote(num_cpus=search.cpus_per_trial, num_gpus=search.gpus_per_trial)(
            dense.make
        )
        log.info("dense stage: made on the cluster by a task with a trial's resources")
        dense_map = ray.get(task.remote(config, storage, str(default_cache())))
    where = storage.uri(dense.STORE) if storage is not None else "the cache"
    log.info("dense stage ready: map %.4f, in %s", dense_map, where)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[None]:
    """A Ray instance of our own on 127.0.0.1 only (never a cluster an earlier `ray start` left on
    this machine), or the cluster at `address`; shut down afterwards either way."""
    if address is None:
        _loopback_only()
    # Trials checkpoint every epoch; Ray's warning about frequent snapshots is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # its reporter prints even when verbose=0
    import ray

    quiet: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address is None:
        # Ray counts the CPUs itself: those of the machine's cgroup (a container's quota), where
        # os.cpu_count() says the host's and would oversubscribe a container with trials.
        ray.init(
            address="local",
            include_dashboard=False,
            object_store_memory=256 * 2**20,
            **quiet,
        )
    else:
        connect(address, **quiet)
    try:
        yield
    finally:
        ray.shutdown()


def _loopback_only() -> None:
    """Every listener of the Ray we start binds 127.0.0.1. Ray reads the switch once, when it is
    first imported (our searcher's import has done that by now): the environment carries it to
    the processes Ray starts, the constant to this one."""
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def trainable(config: ExperimentConfig, space: Space, storage: Storage) -> Any:
    from ray import tune

    bound = tune.with_parameters(
        run_trial,
        experiment=config.model_dump(mode="json"),
        space=space,
        storage=storage.root,
        driver_cache=str(default_cache()),
    )
    search = config.search
    return tune.with_resources(bound, {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial})


def build_tuner(
    config: ExperimentConfig,
    space: Space,
    directory: Path,
    storage: Storage,
    warm_points: Sequence[dict[str, float]] = (),
) -> tune.Tuner:
    """The searcher and the Tuner of a new search: the known points first, then the warm start's,
    at `search.known_at` (`points_to_evaluate` enqueues them in the study; built once, so never
    again on resume)."""
    from ray import tune

    search = config.search
    first = space.first_points(config, warm_points)
    if len(first) > search.num_samples:
        log.warning(
            "search.num_samples is %d: %d of the %d known and warm-start points are not tried",
            search.num_samples, len(first) - search.num_samples, len(first),
        )  # fmt: skip
    searcher = FrontSearch(
        space=partial(sample, space),
        metric=["map", search.cost],
        mode=["max", "min"],
        points_to_evaluate=first[: search.num_samples],
        sampler=make_sampler(search, len(first)),
        study_name=config.name,
        storage=study_storage(directory),
        search_storage=storage.root,
    )
    return tune.Tuner(
        trainable(config, space, storage),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=search.num_samples,
            max_concurrent_trials=search.max_concurrent,
            scheduler=make_scheduler(config),
            trial_dirname_creator=trial_dirname,
            reuse_actors=True,  # a new trial starts in a warm worker: torch imported, data read
        ),
        run_config=tune.RunConfig(
            name=RAY_DIR,
            storage_path=storage.root,
            callbacks=[SearchViews(config, space, storage.root), TrialCurves(storage.root)],
            failure_config=tune.FailureConfig(max_failures=search.max_failures),
            # Every checkpoint folder stays: a restored snapshot may name an older one than the
            # newest, and Ray cannot restore a trial whose named checkpoint is gone. The trials
            # remove the old training states themselves (trainable._trim_states).
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0,  # our progress line instead of Ray's tables (Ray's results are in the folder)
        ),
    )


def trial_dirname(trial: Any) -> str:
    return f"trial_{trial.trial_id}"


class PicklableNSGAII(optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II, picklable. Optuna 5.1's keeps a `threading.Lock` (it guards a cache of
    the generations read from the study), and Ray Tune pickles the searcher into tuner.pkl and its
    snapshots: the stock sampler fails there ("cannot pickle '_thread.lock' object"). A copy
    carries the cache and gets a lock of its own."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_thread_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def make_sampler(search: SearchConfig, known: int) -> optuna.samplers.BaseSampler:
    """The sampler the file names, seeded; its random start kept short for budgets of a dozen."""
    startup = max(known + 1, min(10, search.num_samples // 3))
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(
            seed=search.seed, n_startup_trials=startup, constant_liar=True
        )
    if search.sampler == "nsga2":
        population = max(4, min(50, search.num_samples // 3))
        return PicklableNSGAII(seed=search.seed, population_size=population)
    if search.sampler == "gp":
        return optuna.samplers.GPSampler(seed=search.seed, n_startup_trials=startup)
    return optuna.samplers.RandomSampler(seed=search.seed)


class FrontSearch(OptunaSearch):
    """OptunaSearch that tells the study the truth about each trial: COMPLETE only for a finished
    trial with finite objectives, PRUNED for one stopped early (a scheduler's truncated values
    must not reach the front nor the sampler), FAIL for an error or a non-finite value. A trial
    resumed after the study was settled completes as a new study trial with its values."""

    def __init__(self, *args: Any, search_storage: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._search_storage = search_storage  # the search's storage root: the driver's folder

    def _setup_study(self, mode: str | list[str]) -> None:
        """The study as OptunaSearch makes it, its objectives named by their metrics (`map` and
        the cost), as optuna-dashboard and Optuna's plots show them."""
        super()._setup_study(mode)
        if self._ot_study is not None and self._metric is not None:
            with warnings.catch_warnings():  # set_metric_names is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self._ot_study.set_metric_names(list(self._metric))

    def restore(self, checkpoint_path: str) -> None:
        """The searcher as a lost driver saved it, bound to this driver's study (a new driver's
        folder holds the copy it resumed from, and the saved state names the old one)."""
        super().restore(checkpoint_path)
        self._storage = study_storage(Storage(self._search_storage).driver_folder())
        sampler = self._ot_study.sampler if self._ot_study is not None else None
        self._ot_study = optuna.load_study(  # type: ignore[assignment]
            study_name=self._study_name, storage=self._storage, sampler=sampler
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        params: dict[str, Any] | None = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(RAY_ID, trial_id)
        return params

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        study = self._ot_study
        if trial_id in self._completed_trials or trial_id not in self._ot_trials or study is None:
            return
        State = optuna.trial.TrialState
        metrics = list(self._metric or [])
        values = [(result or {}).get(metric) for metric in metrics]
        # The ledger's judgement of the same report (its state names are Optuna's).
        state = State.FAIL if error else State[judged(result or {}, metrics[-1])[0]]
        told = [float(v) for v in values if v is not None] if state == State.COMPLETE else None
        # The study's entries of this Ray trial, found by the id `suggest` recorded (numbers
        # differ between a lost driver's study and the copy a new driver resumed from).
        entries = [
            t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(RAY_ID) == trial_id
        ]
        running = [t for t in entries if not t.state.is_finished()]
        if running:
            study.tell(running[0].number, told, state=state)
        elif state == State.COMPLETE and entries and all(t.state == State.FAIL for t in entries):
            frozen = entries[-1]  # settled as interrupted: completes as a new entry
            study.add_trial(
                optuna.trial.create_trial(
                    params=frozen.params,
                    distributions=frozen.distributions,
                    values=told,
                    user_attrs={**frozen.user_attrs, "resumed": True, "interrupted": False},
                )
            )
        elif not entries:
            log.warning(
                "trial %s: not in the study (its driver was lost first); not told", trial_id
            )
        self._completed_trials.add(trial_id)
