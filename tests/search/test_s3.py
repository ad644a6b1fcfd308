"""The search stored in a real S3 API: moto's server on loopback, reached over HTTP by pyarrow's
S3FileSystem, as Ray Tune reaches its storage. A storage URI that carries its endpoint in its query,
a driver killed with SIGKILL, `resume` from a new driver folder with the URI alone, `pareto`,
`best` and `refine` given the URI; a wrong endpoint is one line before any work."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.pareto import Ledger
from search.storage import STUDY_FILE, Storage
from tests.search.conftest import SMOKE, set_arguments, smoke_overrides
from tests.search.test_search import SPACE, search
from yolov2.checkpoint import load_checkpoint
from yolov2.errors import InputError
from yolov2.measure import count_params

REPO = Path(__file__).resolve().parents[2]
BUCKET = "bucket"
NUM_SAMPLES = 3
ALLOW_ALL = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
}


@dataclass(frozen=True)
class Moto:
    endpoint: str  # host:port
    key_id: str  # an IAM user's key: with authentication on, anything else is refused
    secret: str


@pytest.fixture(scope="module")
def moto() -> Iterator[Moto]:
    """moto's S3 server on 127.0.0.1, with an empty bucket and authentication on: a request not
    signed with its user's key is refused, so a search that passes shows that every process of
    it (the driver, Ray's trial workers) found the credentials in its environment."""
    import boto3
    import pyarrow.fs
    from moto import settings
    from moto.server import ThreadedMotoServer

    quiet = logging.getLogger("werkzeug")  # one log line a request otherwise
    level, authenticated_after = quiet.level, settings.INITIAL_NO_AUTH_ACTION_COUNT
    quiet.setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    iam = boto3.client(
        "iam",
        endpoint_url=f"http://{host}:{port}",
        region_name="us-east-1",
        aws_access_key_id="admin",
        aws_secret_access_key="admin",
    )
    iam.create_user(UserName="search")
    iam.put_user_policy(UserName="search", PolicyName="all", PolicyDocument=json.dumps(ALLOW_ALL))
    key = iam.create_access_key(UserName="search")["AccessKey"]
    s3 = pyarrow.fs.S3FileSystem(
        access_key=key["AccessKeyId"],
        secret_key=key["SecretAccessKey"],
        endpoint_override=f"{host}:{port}",
        scheme="http",
        allow_bucket_creation=True,
    )
    s3.create_dir(BUCKET)
    settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on every request is authenticated
    try:
        yield Moto(f"{host}:{port}", key["AccessKeyId"], key["SecretAccessKey"])
    finally:
        settings.INITIAL_NO_AUTH_ACTION_COUNT = authenticated_after
        server.stop()
        quiet.setLevel(level)


@pytest.fixture
def endpoint(moto: Moto, monkeypatch: pytest.MonkeyPatch) -> str:
    """moto's `host:port`, its user's credentials in the environment, where the AWS SDK under
    pyarrow looks first (and which a local Ray's workers inherit from the driver)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto.key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto.secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    return moto.endpoint


def _ledger(directory: Path) -> dict[str, Any]:
    return {r.trial_id: asdict(r) for r in Ledger.load(directory).ordered()}


def _kill_mid_search(command: list[str], cwd: Path, stored: Storage, log: Path) -> None:
    """Run the driver in `cwd` until a trial has finished and the storage holds the study, then
    SIGKILL it and the Ray it started. (The storage's ledger may lag: it is copied at most every
    search.sync_every_s, and `resume` records the trials Ray had ended from their folders.)"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    with log.open("w") as out:
        driver = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=out, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and not (
            _ledger(cwd / "runs" / "s3t") and stored.exists(STUDY_FILE)
        ):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        assert driver.poll() is None, log.read_text()[-3000:]
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started: all ours
        driver.wait()


def test_a_search_in_s3_survives_its_driver_and_every_command_takes_its_uri(
    smoke_cache: Path, endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    query = f"endpoint_override={endpoint}&scheme=http"
    uri = f"s3://{BUCKET}/runs/s3t?{query}"
    drivers = [tmp_path / f"driver-{n}" for n in (1, 2, 3, 4)]
    for folder in drivers:
        folder.mkdir()
    overrides = smoke_overrides(smoke_cache, SPACE, "search.max_concurrent=2")
    command = [
        sys.executable, "-m", "search.cli", "run", str(SMOKE), "--storage",
        f"s3://{BUCKET}/runs?{query}", "--name", "s3t", "--num-samples", str(NUM_SAMPLES),
        *set_arguments(overrides),
    ]  # fmt: skip
    stored = Storage(uri)
    _kill_mid_search(command, drivers[0], stored, tmp_path / "driver.log")
    assert stored.exists("ray/tuner.pkl")
    assert len(_ledger(drivers[0] / "runs" / "s3t")) < NUM_SAMPLES  # killed mid-search

    monkeypatch.chdir(drivers[1])  # a new driver: nothing of the first one's folder
    code, out, err = search(["resume", uri])
    assert code == 0, err[-3000:]
    directory = drivers[1] / "runs" / "s3t"
    assert (directory / "storage.txt").read_text().strip() == uri  # the query kept
    ledger = _ledger(directory)
    assert len(ledger) == NUM_SAMPLES
    assert all(r["state"] == "COMPLETE" for r in ledger.values())
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{directory / 'study.db'}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * NUM_SAMPLES
    assert sorted(stored.folders("ray", prefix="trial_")) == sorted(f"trial_{t}" for t in ledger)

    monkeypatch.chdir(drivers[2])  # a machine that never ran a driver: the URI alone
    code, out, err = search(["pareto", uri])
    assert code == 0, err
    assert f"{NUM_SAMPLES} trials ({NUM_SAMPLES} complete)" in out
    here = drivers[2] / "runs" / "s3t"
    best = tmp_path / "best.safetensors"
    code, out, err = search(["best", uri, "--out", str(best)])
    assert code == 0, err  # the checkpoint comes from S3: the chosen trial's model
    assert not (here / "ray").exists()
    chosen = ledger[out.split(":")[0]]
    params, nonzero = count_params(load_checkpoint(best))
    assert (params, nonzero) == (chosen["metrics"]["params"], chosen["metrics"]["nonzero_params"])
    code, out, err = search(["refine", uri, "--epochs", "1"])
    assert code == 0, err
    assert (here / "refined.csv").is_file()
    assert "map searched -> refined" in out
    code, out, err = search(["best", uri, "--front", "refined", "--out", str(best)])
    assert code == 0, err  # the refined checkpoint comes from S3, where the refine task put it
    assert not (here / "refined").exists()
    refined = Ledger.load(here, "refined.jsonl").records
    assert stored.exists("refined.jsonl")  # pushed when refine ended, for any other driver

    monkeypatch.chdir(drivers[3])  # another machine: the refined front from the URI alone
    code, out, err = search(["pareto", uri, "--front", "refined"])
    assert code == 0, err
    assert f"{len(refined)} trials ({len(refined)} complete)" in out
    code, out, err = search(["best", uri, "--front", "refined", "--out", str(best)])
    assert code == 0, err
    chosen_refined = refined[out.split(":")[0]]
    assert count_params(load_checkpoint(best))[1] == chosen_refined.metrics["nonzero_params"]
    assert Ledger.load(drivers[3] / "runs" / "s3t", "refined.jsonl").records == refined


@pytest.mark.parametrize(
    ("location", "problem"),
    [
        ("s3://nobucket/runs?endpoint_override={endpoint}&scheme=http", "Bucket 'nobucket'"),
        # nothing listens on port 1: the AWS SDK's retries take about 12 s
        ("s3://bucket/runs?endpoint_override=127.0.0.1:1&scheme=http", "Could not connect"),
        ("s3://bucket/runs?endpoint_override={endpoint}&scheme=htp", "scheme 'htp'"),
        ("s3://bucket/runs?endpoint_overide={endpoint}", "parameter in S3 URI"),
    ],
)
def test_a_storage_uri_that_cannot_be_reached_is_one_line_before_any_work(
    endpoint: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    location: str,
    problem: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = location.format(endpoint=endpoint)
    code, _, err = search(["run", str(SMOKE), "--storage", storage, "--name", "s3t"])
    assert code == 2
    (line,) = err.strip().splitlines()  # no dense stage, no Ray: the error alone
    assert line.startswith(f"prune-search run: error: {storage.replace('/runs', '/runs/s3t')}: ")
    assert problem in line
    assert not (tmp_path / "runs").exists()


def test_credentials_moto_does_not_know_are_one_line(
    endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    storage = Storage(f"s3://{BUCKET}/runs/s3t?endpoint_override={endpoint}&scheme=http")
    with pytest.raises(InputError, match=r"cannot write the search's storage .*ACCESS_DENIED"):
        storage.check_writable()


@pytest.mark.parametrize("given", ["query", "environment"])
def test_the_endpoint_comes_from_the_uri_or_the_environment(
    endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str
) -> None:
    if given == "environment":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{endpoint}")
        root = f"s3://{BUCKET}/endpoints/{given}"
    else:
        root = f"s3://{BUCKET}/endpoints/{given}?endpoint_override={endpoint}&scheme=http&region=us-east-1"
    storage = Storage(root)
    storage.check_writable()
    source = tmp_path / "file"
    source.write_bytes(b"through S3")
    storage.upload(source, "a/b")
    assert storage.files("a") == ["b"]
    assert storage.download("a/b", tmp_path / "back")
    assert (tmp_path / "back").read_bytes() == b"through S3"
    path, mark, query = root.partition("?")
    assert storage.uri("a/b") == f"{path}/a/b{mark}{query}"  # the query kept, after the path


def test_a_driver_folder_of_another_storage_is_one_line_and_a_new_endpoint_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from search.tuner import checked_out

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "runs" / "s3t"
    folder.mkdir(parents=True)
    (folder / "experiment.yaml").write_text("name: s3t\n")
    (folder / "storage.txt").write_text("s3://bucket/runs/s3t?endpoint_override=old:9000\n")
    moved = "s3://bucket/runs/s3t?endpoint_override=new:9000"
    assert checked_out(moved) == (folder, Storage(moved))  # the same storage, moved
    assert (folder / "storage.txt").read_text() == f"{moved}\n"
    other = "s3://other/runs/s3t?endpoint_override=new:9000"
    code, _, err = search(["pareto", other])
    assert code == 2
    assert err.strip() == (
        f"prune-search pareto: error: {folder}: holds the search stored at {moved}, not at "
        f"{other}; run this command from another folder"
    )
