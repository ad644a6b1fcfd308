"""The search on a real multi-node Ray cluster on one machine (`ray.cluster_utils.Cluster`: a head
without CPUs and worker nodes, all on loopback), each node with a cache of its own: trials spread
over the workers, the dense stage made once for the whole cluster and copied through the storage
to nodes that never saw the driver's cache, two trials on one node's two (fake) GPUs, a node lost
mid-trial, the front refined on the workers, a killed driver resumed from the storage alone; and the cluster.yaml, validated
offline, and the local search's listeners, on loopback only."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import psutil  # type: ignore[import-untyped]
import pytest
import torch
import yaml

from search import dense
from search.pareto import Ledger
from search.space import build_space
from search.storage import Storage
from search.tuner import _loopback_only, ray_session
from tests.search.conftest import LEARNS, SMOKE, set_arguments
from tests.search.test_search import SPACE, search
from yolov2.checkpoint import load_checkpoint
from yolov2.config import load_config
from yolov2.measure import count_params
from yolov2.pipeline import run

REPO = Path(__file__).resolve().parents[2]
MiB = 2**20
# The smoke search of test_search, its data and dense stage in each node's own default cache.
OVERRIDES = ["data.root=${cache}/cluster-smoke/VOCdevkit", *LEARNS, SPACE]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ray.cluster_utils import Cluster

    _loopback_only()
    caches = tmp_path_factory.mktemp("node-caches")
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "object_store_memory": 100 * MiB},
    )
    workers = {name: _add_worker(cluster, caches, name) for name in ("a", "b")}
    try:
        yield {"cluster": cluster, "caches": caches, "workers": workers}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def searched(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One finished search of two trials side by side, for the tests that only read it (refine
    writes its own files beside it); its driver has a cache of its own, which must stay empty."""
    root = tmp_path_factory.mktemp("searched")
    driver_cache = root / "driver-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PRUNE_SEARCH_CACHE", str(driver_cache))
        directory = _run(cluster, root, "spread", "search.num_samples=2", "search.max_concurrent=2")
    return {"directory": directory, "driver_cache": driver_cache}


NODES: dict[str, Any] = {}  # every worker node added, by the name of its cache


def _add_worker(
    cluster: Any, caches: Path, name: str, seed: str | None = None, **resources: Any
) -> Any:
    """A worker node whose processes see `caches/<name>` as their default cache; `seed`: a cache
    whose data and dense models it starts with (as a node that ran trials before), not trained
    again."""
    if seed is not None and (caches / seed).is_dir():
        ignore = shutil.ignore_patterns("train_state.pt")
        shutil.copytree(caches / seed, caches / name, ignore=ignore, dirs_exist_ok=True)
    env = {"PRUNE_SEARCH_CACHE": str(caches / name)}
    args = {"num_cpus": 1, "object_store_memory": 80 * MiB, **resources}
    NODES[name] = cluster.add_node(env_vars=env, **args)
    return NODES[name]


def _run(cluster: dict[str, Any], storage: Path | str, name: str, *extra: str) -> Path:
    code, _out, err = search(
        ["run", str(SMOKE), "--address", cluster["cluster"].address, "--storage", str(storage),
         "--name", name, *set_arguments([*OVERRIDES, *extra])]
    )  # fmt: skip
    assert code == 0, err[-3000:]
    return Path(str(storage).removeprefix("file://")) / name


def _by_hand(config: Any, directory: Path, out: Path) -> dict[str, Any]:
    """The metrics of `config` run here by `pipeline.run`, one thread, on the dense stage the
    search at `directory` published: what a trial or a refined point must reproduce exactly."""
    assert dense.fetch(Storage(str(directory)), dense.store_key(config), config)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run(config, out).metrics
    finally:
        torch.set_num_threads(threads)


def _results(trial_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (trial_dir / "result.json").read_text().splitlines()]


def _replace_worker(cluster: dict[str, Any], lost: Any, name: str) -> Any:
    """Remove the worker node `lost` and add another, `name`, in its place among the workers."""
    cluster["cluster"].remove_node(lost, allow_graceful=False)
    cluster["workers"] = {k: n for k, n in cluster["workers"].items() if n is not lost}
    cluster["workers"][name] = _add_worker(cluster["cluster"], cluster["caches"], name)
    return cluster["workers"][name]


def _worker_processes(node: Any) -> list[psutil.Process]:
    """The processes that run a node's tasks and actors (its raylet's children named ray::)."""
    raylet = psutil.Process(node.all_processes["raylet"][0].process.pid)
    return [
        process
        for process in raylet.children(recursive=True)
        if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::")
    ]


def _node_of(cluster: dict[str, Any], shown: str) -> Any:
    """The worker node a trial's `node` column names (host:node id prefix)."""
    prefix = shown.rsplit(":", 1)[-1]
    (node,) = [n for n in cluster["cluster"].worker_nodes if n.node_id.startswith(prefix)]
    return node


def test_trials_spread_over_the_workers_and_share_one_dense_stage(
    cluster: dict[str, Any], searched: dict[str, Path]
) -> None:
    directory = searched["directory"]
    table = pd.read_csv(directory / "trials.csv")
    assert (table["state"] == "COMPLETE").all()
    nodes = {_node_of(cluster, shown).node_id for shown in table["node"]}
    assert nodes == {n.node_id for n in cluster["workers"].values()}  # both workers ran trials
    # The dense stage was trained once in the whole cluster, by one node: the others copied it
    # from the storage into a cache that never saw the driver's.
    caches = cluster["caches"]
    trained = list(caches.glob("*/dense/*/train_state.pt"))
    assert len(trained) == 1
    copied = [
        p for p in caches.glob("*/dense/*/model.safetensors") if p.parent != trained[0].parent
    ]
    assert len(copied) == 1
    assert (copied[0].parent / dense.MADE_FILE).is_file()
    config = load_config(SMOKE, OVERRIDES)
    key = dense.store_key(config)
    assert dense.published(Storage(str(directory)), key)
    assert not list(searched["driver_cache"].glob("**/dense/*"))  # the driver's, never used


def test_a_dense_config_of_the_trials_own_is_made_once_by_one_of_them(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """A space that touches the dense stage: the first trial to claim its dense config makes it,
    the other waits for the storage and copies it; one training in the whole cluster."""
    caches = cluster["caches"]
    before = set(caches.glob("*/dense/*/train_state.pt"))
    space = (
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.6}, "
        "loss.object_scale: {choices: [4.0]}}"
    )
    directory = _run(
        cluster, tmp_path, "claims", space, "search.num_samples=2", "search.max_concurrent=2",
        "search.known_points=[0.3]",
    )  # fmt: skip
    table = pd.read_csv(directory / "trials.csv")
    assert (table["state"] == "COMPLETE").all()
    assert table["node"].nunique() == 2  # the two trials ran side by side, on both workers
    trained = set(caches.glob("*/dense/*/train_state.pt")) - before
    assert len(trained) == 1
    key = dense.store_key(load_config(SMOKE, [*OVERRIDES, "loss.object_scale=4.0"]))
    assert dense.published(Storage(str(directory)), key)


def test_two_trials_on_a_node_with_two_gpus_get_one_gpu_each(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    gpus = _add_worker(cluster["cluster"], cluster["caches"], "gpus", seed="a", num_gpus=2)
    try:
        directory = _run(
            cluster, tmp_path, "gpus", "search.num_samples=2", "search.max_concurrent=2",
            "search.known_points=[0.3, 0.5]", "search.cpus_per_trial=0.5",
            "search.gpus_per_trial=1", "finetune.epochs=30",
        )  # fmt: skip
    finally:
        cluster["cluster"].remove_node(gpus)
    table = pd.read_csv(directory / "trials.csv", dtype={"gpu_ids": str})
    assert sorted(table["gpu_ids"]) == ["0", "1"]
    assert {shown.rsplit(":", 1)[-1] for shown in table["node"]} == {gpus.node_id[:8]}
    # The two ran at once. Ray's timestamps are whole seconds (rounded down), so a trial's start
    # is taken as late and its end as early as they can be; 30 epochs (~8 s) outlast the second
    # or two by which one trial's fresh worker process starts after the other's prestarted one.
    spans = [
        (rows[0]["timestamp"] + 1 - rows[0]["time_this_iter_s"], rows[-1]["timestamp"])
        for rows in (_results(d) for d in sorted(directory.glob("ray/trial_*")))
    ]
    assert spans[0][0] <= spans[1][1]
    assert spans[1][0] <= spans[0][1]


def test_a_trial_whose_node_is_lost_carries_on_elsewhere_from_its_checkpoint(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    extra = (
        "search.num_samples=1", "search.known_points=[0.3]", "search.max_failures=1",
        "finetune.epochs=8", "search.checkpoint_every=1",
    )  # fmt: skip
    outcome: dict[str, Any] = {}
    searching = threading.Thread(
        target=lambda: outcome.update(directory=_run(cluster, tmp_path, "lost", *extra))
    )
    searching.start()
    # No deadline of its own: how long the search takes to get there depends on the CPUs other
    # processes leave it, and it ends by itself (then the trial ran to its end untouched).
    victim = None
    while victim is None and searching.is_alive():  # each epoch's checkpoint names its node
        for saved in (tmp_path / "lost").glob("ray/trial_*/checkpoint_*/metrics.json"):
            with contextlib.suppress(OSError, ValueError):  # one being written or removed
                metrics = json.loads(saved.read_text())
                if metrics.get("epoch", 0) >= 3 and not metrics["finished"]:
                    victim = _node_of(cluster, metrics["node"])
        time.sleep(0.05)
    assert victim is not None, "the trial ended before its node could be removed"
    # Its workers frozen first, so that the trial cannot run to its end while the node goes down
    # (which takes seconds on a busy machine): the node is lost mid-trial, whatever the load.
    frozen = _worker_processes(victim)
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        replacement = _replace_worker(cluster, victim, "replacement")
    finally:
        for process in frozen:  # what is left of them: the removed node's, started by this test
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
    searching.join(timeout=600)
    assert not searching.is_alive()
    assert "directory" in outcome
    directory = outcome["directory"]
    (trial_dir,) = directory.glob("ray/trial_*")
    rows = _results(trial_dir)
    epochs = [row["epoch"] for row in rows if not row["finished"]]
    assert epochs == sorted(set(epochs)), epochs
    assert epochs[-1] == 8
    assert rows[-1]["node"] != rows[0]["node"]  # ended on another node than it began
    assert _node_of(cluster, rows[-1]["node"]).node_id in {
        n.node_id for n in cluster["workers"].values()
    }
    assert replacement.node_id != victim.node_id
    # The same trial without the fault: its map, exactly.
    config = load_config(SMOKE, [*OVERRIDES, *extra])
    space = build_space(config, str(SMOKE))
    config = space.apply(config, json.loads((trial_dir / "params.json").read_text()))
    config = config.model_copy(update={"data": config.data.model_copy(update={"workers": 0})})
    reference = _by_hand(config, directory, tmp_path / "reference")
    assert rows[-1]["map"] == reference["map"]


def test_refine_runs_on_the_workers_from_the_published_dense_stage(
    cluster: dict[str, Any],
    searched: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`refine --address`: each point's longer finetune is a task on a worker, from the dense stage
    the search published, never one trained by the driver; a new --epochs refines afresh."""
    directory, driver_cache = searched["directory"], searched["driver_cache"]
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(driver_cache))  # the search's driver's, unused
    address = cluster["cluster"].address
    code, out, err = search(["refine", str(directory), "--address", address, "--epochs", "3"])
    assert code == 0, err[-3000:]
    assert not list(driver_cache.glob("**/dense/*/model.safetensors"))
    refined = Ledger.load(directory, "refined.jsonl").records
    (pruned,) = [r for r in refined.values() if not r.is_dense]
    assert pruned.metrics["refine_epochs"] == 3
    workers = {n.node_id for n in cluster["workers"].values()}
    assert _node_of(cluster, pruned.metrics["node"]).node_id in workers
    assert (directory / pruned.checkpoint / "model.safetensors").is_file()  # in the storage
    # The same finetune by hand, from the published dense stage: its map, exactly.
    config = load_config(SMOKE, [*OVERRIDES, "search.num_samples=2", "search.max_concurrent=2"])
    config = build_space(config, str(SMOKE)).apply(config, pruned.params)
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"workers": 0}),
            "finetune": config.finetune.model_copy(update={"epochs": 3}),
        }
    )
    reference = _by_hand(config, directory, tmp_path / "reference")
    assert pruned.metrics["map"] == reference["map"]
    # Another schedule refines afresh (no training state of the first in its way).
    code, out, err = search(["refine", str(directory), "--address", address, "--epochs", "2"])
    assert code == 0, err[-3000:]
    again = Ledger.load(directory, "refined.jsonl").records[pruned.trial_id]
    assert again.metrics["refine_epochs"] == 2
    best = tmp_path / "best.safetensors"
    code, out, err = search(
        ["best", str(directory), "--front", "refined", "--pick", "smallest", "--out", str(best)]
    )
    assert code == 0, err
    assert out.split(":")[0] == pruned.trial_id
    assert count_params(load_checkpoint(best))[1] == again.metrics["nonzero_params"]
    # A search whose storage lacks its dense stage: one line, and no dense model trained anywhere.
    other = tmp_path / "no-dense"
    shutil.copytree(directory, other, ignore=shutil.ignore_patterns("dense"))
    resolved = yaml.safe_load((other / "experiment.yaml").read_text())
    resolved["train"]["epochs"] += 1  # a dense config no node has made
    (other / "experiment.yaml").write_text(yaml.safe_dump(resolved))
    made = set(cluster["caches"].glob("*/dense/*/*"))
    code, _, err = search(["refine", str(other), "--address", address, "--epochs", "4"])
    assert code == 2
    assert "the search's dense stage is not in its storage" in err.strip().splitlines()[-1]
    assert set(cluster["caches"].glob("*/dense/*/*")) == made


def _ledger(directory: Path) -> dict[str, Any]:
    return {r.trial_id: asdict(r) for r in Ledger.load(directory).ordered()}


def test_the_screen_spreads_its_candidates_over_the_workers(
    cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The screen's tasks, one candidate each here, ask for a trial's resources: both workers
    score candidates, from the dense stage the search published, and the chosen one is a trial."""
    root = tmp_path_factory.mktemp("screened")
    screen = "search.screen={candidates: 4, finetune: 1, images: 4, bn_batches: 2}"
    directory = _run(cluster, root, "screened", "search.num_samples=2", "search.max_concurrent=2",
                     "search.known_points=[0]", screen)  # fmt: skip
    table = pd.read_csv(directory / "screen.csv")
    assert len(table) == 4
    workers = {n.node_id for n in cluster["workers"].values()}
    assert {_node_of(cluster, shown).node_id for shown in table["node"]} == workers
    (chosen,) = table[table["chosen"]].index
    ratios = [c for c in table.columns if c.startswith("ratio.")]
    finetuned = [r for r in Ledger.load(directory).completed() if not r.is_dense]
    assert [[r.params[n] for n in ratios] for r in finetuned] == [
        table.loc[chosen, ratios].tolist()
    ]


def test_a_killed_driver_is_resumed_from_the_storage_alone(
    cluster: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = f"file://{tmp_path / 'storage'}"
    first, second = tmp_path / "driver-1", tmp_path / "driver-2"
    first.mkdir()
    second.mkdir()
    command = [
        sys.executable, "-m", "search.cli", "run", str(SMOKE), "--address",
        cluster["cluster"].address, "--storage", storage, "--name", "killed",
        *set_arguments([*OVERRIDES, "search.num_samples=4", "search.max_concurrent=2"]),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with (tmp_path / "driver.log").open("w") as log:
        driver = subprocess.Popen(
            command, cwd=first, stdout=log, stderr=log, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while len(_ledger(first / "runs" / "killed")) < 2 and driver.poll() is None:
            assert time.monotonic() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            time.sleep(0.2)
        assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    stored = Storage(f"{storage}/killed")
    assert stored.exists("study.db")
    # the ledger may not be there yet (copied at most every search.sync_every_s): the trials Ray
    # had ended are recorded again from their folders

    monkeypatch.chdir(second)  # a new driver: nothing of the first one's folder
    code, out, err = search(
        ["resume", f"{storage}/killed", "--address", cluster["cluster"].address]
    )
    assert code == 0, err[-3000:]
    directory = second / "runs" / "killed"
    ledger = _ledger(directory)
    assert len(ledger) == 4
    assert all(r["state"] == "COMPLETE" for r in ledger.values())
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    # one set of books: the study holds the ledger's trials, each once
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(ledger)
    assert f"prune-search best {directory}" in out
    code, out, err = search(["best", str(directory), "--out", str(tmp_path / "best.safetensors")])
    assert code == 0, err  # its checkpoint comes from the storage: the chosen trial's model
    chosen = ledger[out.split(":")[0]]
    params, nonzero = count_params(load_checkpoint(tmp_path / "best.safetensors"))
    assert (params, nonzero) == (chosen["metrics"]["params"], chosen["metrics"]["nonzero_params"])


def test_a_dense_config_whose_maker_is_lost_mid_training_is_made_by_a_waiter(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    """A space that touches the dense stage, early stopping on, and the node of the trial making
    that dense config removed while it trains, with no node to retry it on: the waiter holds the
    only slot left, so the maker's retry can start only once the waiter ends. The driver releases
    the claim of the trial it will retry, the waiter takes the claim over and makes the dense
    config (not after the 30 s a silent heartbeat takes: test_claims), and every trial ends."""
    caches = cluster["caches"]
    before = set(caches.glob("*/dense/*"))
    space = (
        "search.space={prune.ratios: {groups: uniform, low: 0.0, high: 0.6}, "
        "loss.object_scale: {choices: [3.0]}}"
    )
    extra = [
        space, "search.num_samples=2", "search.max_concurrent=2", "search.known_points=[0.3]",
        "search.max_failures=1", "search.early_stop={rule: front, every: 1}", "train.epochs=30",
    ]  # fmt: skip
    outcome: dict[str, Any] = {}
    searching = threading.Thread(
        target=lambda: outcome.update(directory=_run(cluster, tmp_path, "maker-lost", *extra))
    )
    searching.start()
    making: list[Path] = []
    while not making and searching.is_alive():  # no deadline: the search ends by itself
        making = sorted(set(caches.glob("*/dense/*")) - before)
        time.sleep(0.05)
    assert making, "the dense stage was made before its node could be removed"
    name = making[0].relative_to(caches).parts[0]  # the maker's node, by its cache
    cluster["cluster"].remove_node(NODES[name], allow_graceful=False)
    cluster["workers"] = {k: n for k, n in cluster["workers"].items() if n is not NODES[name]}
    try:
        searching.join(timeout=600)
    finally:  # the later tests' two workers
        again = f"{name}-again"
        cluster["workers"][again] = _add_worker(cluster["cluster"], caches, again)
    assert not searching.is_alive()
    directory = outcome["directory"]
    ledger = Ledger.load(directory).records
    assert [r.state for r in ledger.values()] == ["COMPLETE", "COMPLETE"]
    key = dense.store_key(load_config(SMOKE, [*OVERRIDES, "loss.object_scale=3.0", extra[-1]]))
    assert dense.published(Storage(str(directory)), key)
    trained = [  # a finished training of that dense config: on another node than the lost one
        p.parent.relative_to(caches).parts[0]
        for p in caches.glob(f"*/dense/{key}/train_state.pt")
        if (p.parent / "metrics.json").is_file()
    ]
    assert len(trained) == 1
    assert trained[0] != name


def test_cluster_yaml_passes_rays_own_validation() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    written = yaml.safe_load((REPO / "cluster.yaml").read_text())
    prepared = prepare_config(copy.deepcopy(written))
    validate_config(prepared)
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["resources"]["GPU"] == 1
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}
    setup = " ".join(prepared["setup_commands"])
    assert "ray[default,tune]==2.60.0" in setup
    assert "-e ~/prune-search" in setup
    starts = " ".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])
    assert starts.count("RAY_AUTH_MODE=token") == 2
    assert "disabled" not in starts
    broken = copy.deepcopy(written)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "none"
    with pytest.raises(Exception, match="not of type 'integer'"):
        validate_config(prepare_config(broken))


def test_a_local_search_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from ray._private import ray_constants

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", True)  # as Ray starts without us
    with ray_session(None):
        import ray

        ray.get(ray.remote(lambda: 1).remote())  # a worker process, listening too
        ours = {p.pid for p in psutil.Process().children(recursive=True)} | {os.getpid()}
        listening = [
            c.laddr.ip
            for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in ours
        ]
    assert listening
    assert all(ip in ("127.0.0.1", "::ffff:127.0.0.1") for ip in listening), listening
