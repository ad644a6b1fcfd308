"""One dense stage for the whole search, wherever its trials run.

Each node keeps its own cache (synthetic data, dense models) at its default cache location, unless
the experiment names a `cache_dir`, which every node then uses as it is (a shared disk, say). The
dense stage reaches a node through the search's storage, `<storage>/<name>/dense/<key>/`, the one
place every node reaches (Ray requires it of a cluster's storage): the driver makes the
experiment's own dense stage once, before any trial holds a slot (so nothing can deadlock on it),
and publishes it there; a trial copies it into its node's cache before it starts. A dense config
of a trial's own (a space that changes the dense stage) is made by that trial, before its finetune,
and published for the others the moment it exists. Which trial makes a dense config is decided by
a small Ray actor (`Claims`), the lock across nodes; a trial waiting on another's polls the store
and says what it waits for. The maker beats a heartbeat into the claim while it trains: a claim
whose heartbeat stops (its node lost, its process killed, its trial waiting to be retried) is
taken over by a waiter, and the driver releases the claims of every trial that ends or waits to
be retried (its node lost), so a waiter never waits on something that cannot happen.

The key is the pipeline's dense key as each node resolves it (`dense_key_here`): generated data is
known by its recipe and real data by its content (not where a node keeps either), so every node's
own dense folder holds the same model; the precision its device trains in is part of it, so a GPU
node never takes a CPU node's model for its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from search.actors import on_driver_node
from search.devices import on_ray_device
from search.storage import Storage
from yolov2.config import ExperimentConfig, default_cache
from yolov2.engine import Splits, load_splits
from yolov2.pipeline import (
    CHECKPOINT_FILE,
    METRICS_FILE,
    Stage,
    cached_dense,
    dense_folder,
    dense_key_here,
)

log = logging.getLogger("prune-search")

STORE = "dense"  # the storage's folder of dense stages
MADE_FILE = "made.json"  # which node made a published dense stage, and where


def store_key(config: ExperimentConfig) -> str:
    """The store's name of the dense stage of `config` (this node's config: `on_this_node`)."""
    return dense_key_here(config)


def on_this_node(config: ExperimentConfig, driver_cache: str) -> ExperimentConfig:
    """`config` with the driver's default cache replaced by this node's default cache (its data
    and dense models; a `cache_dir` the experiment named stays as it is), training on the device
    Ray gave this worker (`devices.on_ray_device`)."""
    config = on_ray_device(config)
    here = default_cache()
    old = Path(driver_cache)
    if config.cache_dir != old or here == old:
        return config

    def moved(path: Path) -> Path:
        return here / path.relative_to(old) if path.is_relative_to(old) else path

    data = config.data.model_copy(update={"root": moved(config.data.root)})
    return config.model_copy(update={"cache_dir": here, "data": data})


def publish(storage: Storage, key: str, folder: Path) -> None:
    """Copy the dense stage in `folder` to the store; its metrics go last: they mark it whole."""
    storage.upload(folder / CHECKPOINT_FILE, f"{STORE}/{key}/{CHECKPOINT_FILE}")
    made = Path(folder / MADE_FILE)
    if not made.exists():
        made.write_text(json.dumps({"node": socket.gethostname(), "folder": str(folder)}))
    storage.upload(made, f"{STORE}/{key}/{MADE_FILE}")
    storage.upload(folder / METRICS_FILE, f"{STORE}/{key}/{METRICS_FILE}")


def published(storage: Storage, key: str) -> bool:
    return storage.exists(f"{STORE}/{key}/{METRICS_FILE}")


def fetch(storage: Storage, key: str, config: ExperimentConfig) -> bool:
    """Copy a published dense stage into this node's cache, unless it is there; False when the
    store does not have it either."""
    folder = dense_folder(config)
    if (folder / CHECKPOINT_FILE).is_file():
        return True
    if not published(storage, key):
        return False
    # The checkpoint last: `cached_dense` takes a folder with one for a finished dense stage.
    storage.download(f"{STORE}/{key}/{METRICS_FILE}", folder / METRICS_FILE)
    storage.download(f"{STORE}/{key}/{MADE_FILE}", folder / MADE_FILE)
    storage.download(f"{STORE}/{key}/{CHECKPOINT_FILE}", folder / CHECKPOINT_FILE)
    log.info("dense stage %s: copied from %s", key, storage.root)
    return True


HEARTBEAT_S = 5.0  # how often the maker of a dense config says it is alive
STALE_AFTER_S = 30.0  # a claim with no heartbeat for this long is taken over by a waiter
WAIT_LOG_S = 60.0  # how often a waiter says what it waits for


def claims_name(experiment: str) -> str:
    return f"prune-search-dense-{experiment}"


class Claims:
    """Which trial makes which dense config (a Ray actor the driver starts when the space changes
    the dense stage): the first to ask, while it beats; then whoever asks after its heartbeat
    stopped, or after the driver released it (its trial ended). Time is the actor's own clock."""

    def __init__(self) -> None:
        self.owners: dict[str, tuple[str, float]] = {}  # key -> (trial id, last heartbeat)

    def claim(self, key: str, trial_id: str, stale_after_s: float) -> tuple[str, float]:
        """The owner of `key` (`trial_id` when it was free or stale) and seconds since its beat."""
        now = time.monotonic()
        owner, beat = self.owners.get(key, (trial_id, now))
        if owner != trial_id and now - beat > stale_after_s:
            owner, beat = trial_id, now  # its maker went quiet: this trial takes it over
        if owner == trial_id:
            self.owners[key] = (trial_id, now)
        return owner, now - beat

    def beat(self, key: str, trial_id: str) -> None:
        if self.owners.get(key, ("", 0.0))[0] == trial_id:
            self.owners[key] = (trial_id, time.monotonic())

    def release(self, trial_id: str) -> None:
        self.owners = {k: v for k, v in self.owners.items() if v[0] != trial_id}


def start_claims(experiment: str) -> object:
    return on_driver_node(Claims, claims_name(experiment))


def release(experiment: str, trial_id: str) -> None:
    import ray

    try:
        ray.get(ray.get_actor(claims_name(experiment)).release.remote(trial_id))
    except ValueError:  # no claims: the space keeps the dense stage
        return


def for_trial(
    config: ExperimentConfig,
    storage: Storage,
    driver_cache: str,
    trial_id: str,
    poll_s: float = HEARTBEAT_S,
) -> ExperimentConfig:
    """The trial's config on this node, its dense stage in this node's cache: copied from the
    store when another trial (or the driver) made it; else claimed, made here and published at
    once, before the trial's finetune; else (another trial holds the claim) waited for."""
    import ray

    local = on_this_node(config, driver_cache)
    key = store_key(local)
    waited, said = 0.0, -WAIT_LOG_S
    while not fetch(storage, key, local):
        try:
            claims: Any = ray.get_actor(claims_name(config.name))
        except ValueError:  # no claims: the driver made the dense stage, or this trial does
            return local
        owner, quiet_s = ray.get(claims.claim.remote(key, trial_id, STALE_AFTER_S))
        if owner == trial_id:
            with _beating(claims, key, trial_id):
                make(config, storage, driver_cache)
            ray.get(claims.release.remote(trial_id))
            return local
        if waited - said >= WAIT_LOG_S:
            log.info(
                "dense stage %s: waiting for trial %s to make it (heard from %.0f s ago; taken "
                "over after %.0f s of silence), %.0f s so far",
                key, owner, quiet_s, STALE_AFTER_S, waited,
            )  # fmt: skip
            said = waited
        time.sleep(poll_s)
        waited += poll_s
    return local


@contextlib.contextmanager
def _beating(claims: Any, key: str, trial_id: str) -> Iterator[None]:
    """A heartbeat into `claims` every HEARTBEAT_S while the dense config is made."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            claims.beat.remote(key, trial_id)

    beating = threading.Thread(target=beat, name="dense-heartbeat", daemon=True)
    beating.start()
    try:
        yield
    finally:
        stop.set()
        beating.join()


def on_node(
    config: ExperimentConfig, storage: Storage | None, driver_cache: str
) -> tuple[ExperimentConfig, Splits, Stage]:
    """The experiment on this node, its data, and its dense stage in this node's cache: copied
    from the store (unless `storage` is None), or taken from the cache, or made here."""
    local = on_this_node(config, driver_cache)
    if storage is not None:
        fetch(storage, store_key(local), local)
    splits = load_splits(local.data)
    return local, splits, cached_dense(local, splits)


def make(config: ExperimentConfig, storage: Storage | None, driver_cache: str) -> float:
    """The experiment's dense stage in this node's cache (`on_node`), then published in the store
    (unless `storage` is None). Returns its map. Runs on the driver (a local search) or as a Ray
    task on a node with a trial's resources (a cluster)."""
    local, _, stage = on_node(config, storage, driver_cache)
    key = store_key(local)
    if storage is not None and not published(storage, key):
        publish(storage, key, dense_folder(local))
    return stage.map
