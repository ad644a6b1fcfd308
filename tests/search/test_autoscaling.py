"""The cluster users start from `cluster.yaml`, on one machine: a head started by `ray start` with a
token (so Ray enforces token authentication), no CPUs on the head and workers from zero that Ray's
fake multi-node autoscaler launches on demand. The autoscaler's config lies where Ray's launcher
puts it on the head (~/ray_bootstrap_config.yaml). The head is started and stopped by its own
process group, never `ray stop`. Each driver is a process of its own with nothing exported: it
finds the token itself."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.pareto import Ledger
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides

RAY = Path(sys.executable).with_name("ray")
WORKER_TYPE = "ray.worker.cpu"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _autoscaling_config(port: int) -> dict[str, Any]:
    """A cluster config of Ray's fake multi-node provider: cluster.yaml's shape (a head of no
    CPUs, workers from zero), with nodes that are processes on this machine."""
    empty: dict[str, Any] = {key: [] for key in (
        "cluster_synced_files", "rsync_exclude", "rsync_filter", "initialization_commands",
        "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands",
    )}  # fmt: skip
    return {
        "cluster_name": "fake",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 1,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": f"127.0.0.1:{port}",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "head_node_type": "ray.head.default",
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            WORKER_TYPE: {
                "resources": {"CPU": 1},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **empty,
    }


def _driver_env(**changes: str) -> dict[str, str]:
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **changes}
    env.pop("RAY_AUTH_MODE", None)  # the driver finds the token itself
    return env


@pytest.fixture(scope="module")
def autoscaling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = Path.home()  # the suite's own (tests/conftest.py)
    subprocess.run([str(RAY), "get-auth-token", "--generate"], check=True, capture_output=True)
    assert (home / ".ray" / "auth_token").is_file()
    port = _free_port()
    config = home / "ray_bootstrap_config.yaml"
    config.write_text(yaml.safe_dump(_autoscaling_config(port)))
    log_path = tmp_path_factory.mktemp("head") / "head.log"
    env = {
        **os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "token",
    }  # fmt: skip
    command = [
        str(RAY), "start", "--head", "--block", f"--port={port}", "--num-cpus=0",
        "--include-dashboard=false", f"--autoscaling-config={config}",
    ]  # fmt: skip
    with log_path.open("w") as log:
        head = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "--block" not in log_path.read_text() or "Ray runtime started" not in (
            log_path.read_text()
        ):
            assert head.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "home": home}
    finally:
        # The head and every node it started: ours alone. Its GCS server and autoscaler take
        # about 30 s to end on SIGTERM (measured); nothing of theirs outlives the test, so a
        # short grace, then SIGKILL.
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=3)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # what of the group outlived the head
        config.unlink(missing_ok=True)


def _drive(argv: list[str], env: dict[str, str], timeout: float = 600) -> tuple[int, str]:
    done = subprocess.run(
        [sys.executable, "-m", "search.cli", *argv],
        check=False, capture_output=True, text=True, env=env, timeout=timeout,
    )  # fmt: skip
    return done.returncode, done.stderr


def _search(autoscaling: dict[str, Any], storage: Path, *arguments: str) -> tuple[int, str]:
    """`prune-search run` of the smoke experiment on the cluster, from a driver of its own."""
    command = ["run", str(SMOKE), "--address", autoscaling["address"], "--storage", str(storage)]
    return _drive([*command, *arguments], _driver_env())


def test_the_smoke_search_runs_to_the_end_on_workers_the_autoscaler_started(
    autoscaling: dict[str, Any], smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, "search.known_points=[0.3]")
    code, err = _search(
        autoscaling, tmp_path, "--name", "autoscaled", "--num-samples", "2",
        *set_arguments(overrides),
    )  # fmt: skip
    assert code == 0, err[-3000:]
    # The head has no CPU: the search asked for a worker before anything else, and waited for it.
    assert "waiting for a node with 1 CPUs: 0 of 2 workers up" in err
    records = Ledger.load(tmp_path / "autoscaled").records.values()
    assert [r.state for r in records] == ["COMPLETE", "COMPLETE"]


def test_a_trial_no_node_type_can_hold_is_refused_in_one_line(
    autoscaling: dict[str, Any], smoke_cache: Path, tmp_path: Path
) -> None:
    overrides = smoke_overrides(smoke_cache, "search.cpus_per_trial=4")
    code, err = _search(autoscaling, tmp_path, *set_arguments(overrides))
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "prune-search run: error: search.cpus_per_trial is 4, but the largest node type this "
        "Ray cluster's autoscaler launches has 1 CPUs"
    )


def test_a_driver_without_the_token_is_told_where_it_was_looked_for(
    autoscaling: dict[str, Any], tmp_path: Path
) -> None:
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    code, err = _drive(
        ["run", str(SMOKE), "--address", autoscaling["address"], "--storage", str(tmp_path)],
        # Ray tries a refused connection once a second, 20 times unless this says otherwise
        _driver_env(
            HOME=str(elsewhere),
            RAY_gcs_rpc_server_reconnect_timeout_s="5",
            RAY_gcs_server_port_wait_time_s="3",
        ),
        timeout=180,
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"prune-search run: error: --address {autoscaling['address']}: no Ray cluster let this "
        "driver in: none runs there, or it requires a token and none was found (RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token: copy the head's ~/.ray/auth_token, which `ray "
        "get-auth-token` prints on the head)"
    )
