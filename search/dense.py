"""One dense stage for the whole search, wherever its trials run.

Each node keeps its own cache (synthetic data, dense models) at its default cache location, unless
the experiment names a `cache_dir`, which every node then uses as it is (a shared disk, say). The
dense stage reaches a node through the search's storage, `<storage>/<name>/dense/<key>/`, the one
place every node reaches (Ray requires it of a cluster's storage): the driver makes the
experiment's own dense stage once, before any trial holds a slot (so nothing can deadlock on it),
and publishes it there; a trial copies it into its node's cache before it starts. A dense config
of a trial's own (a space that changes the dense stage) is made by that trial and published for the
others. Which trial makes a dense config is decided by a small Ray actor (`Claims`), the lock
across nodes; a trial waiting on another's polls the store.

The key is the pipeline's dense key as each node resolves it (`dense_key_here`): generated data is
known by its recipe and real data by its content (not where a node keeps either), so every node's
own dense folder holds the same model; the precision its device trains in is part of it, so a GPU
node never takes a CPU node's model for its own.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from pathlib import Path

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


def claims_name(experiment: str) -> str:
    return f"prune-search-dense-{experiment}"


class Claims:
    """Which trial makes which dense config (a Ray actor the driver starts when the space changes
    the dense stage): the first to ask, until the driver releases a trial that failed."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, key: str, trial_id: str) -> str:
        return self.owners.setdefault(key, trial_id)

    def release(self, trial_id: str) -> None:
        self.owners = {k: v for k, v in self.owners.items() if v != trial_id}


def start_claims(experiment: str) -> object:
    import ray

    actor = ray.remote(num_cpus=0)(Claims)
    return actor.options(name=claims_name(experiment), get_if_exists=True).remote()


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
    poll_s: float = 5.0,
) -> ExperimentConfig:
    """The trial's config on this node, its dense stage in this node's cache when another trial
    (or the driver) made it. A dense config no one has made is claimed: the first trial to claim
    it makes it (in `pipeline.run`) and publishes it after; the others wait for the store."""
    import ray

    local = on_this_node(config, driver_cache)
    key = store_key(local)
    while not fetch(storage, key, local):
        try:
            claims = ray.get_actor(claims_name(config.name))
        except ValueError:  # no claims: this trial makes it
            return local
        owner = str(ray.get(claims.claim.remote(key, trial_id)))
        if owner == trial_id:
            return local
        log.info("dense stage %s: trial %s is making it; waiting for the store", key, owner)
        time.sleep(poll_s)
    return local


def after_trial(config: ExperimentConfig, storage: Storage, driver_cache: str) -> None:
    """Publish the trial's dense stage if this trial made it."""
    local = on_this_node(config, driver_cache)
    key = store_key(local)
    if not published(storage, key) and (dense_folder(local) / CHECKPOINT_FILE).is_file():
        publish(storage, key, dense_folder(local))


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
