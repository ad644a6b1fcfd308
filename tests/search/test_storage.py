"""The search's storage (a folder or a URI, through pyarrow) and the dense stage's way to a node:
whole copies only, a consistent copy of a live SQLite study, the driver's files pushed and pulled,
a node's own cache for the driver's, the store's key the same on every node."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest

from search import dense
from search import storage as storage_module
from search.storage import (
    DRIVER_FILES,
    LEDGER_FILE,
    STUDY_FILE,
    WHOLE_COPY_BYTES,
    Pusher,
    Storage,
    join,
    pull,
    push,
)
from tests.search.conftest import LEARNS, SMOKE
from yolov2.config import load_config
from yolov2.errors import InputError
from yolov2.pipeline import dense_folder


@pytest.mark.parametrize("uri", [False, True])
def test_upload_and_download_copy_whole_files(tmp_path: Path, uri: bool) -> None:
    root = tmp_path / "storage" / "exp"
    storage = Storage(f"file://{root}" if uri else str(root))
    assert storage.remote == uri
    source = tmp_path / "model.bin"
    source.write_bytes(b"weights" * 1000)
    assert not storage.exists("dense/k/model.bin")
    storage.upload(source, "dense/k/model.bin")
    assert storage.exists("dense/k/model.bin")
    assert sorted(p.name for p in (root / "dense" / "k").iterdir()) == ["model.bin"]  # no partial
    back = tmp_path / "back" / "model.bin"
    assert storage.download("dense/k/model.bin", back)
    assert back.read_bytes() == source.read_bytes()
    assert not storage.download("dense/k/absent.bin", tmp_path / "absent.bin")
    assert not (tmp_path / "absent.bin").exists()
    assert storage.relative(str(root / "ray" / "trial_1" / "checkpoint_000002")) == (
        "ray/trial_1/checkpoint_000002"
    )
    assert join("s3://bucket/runs", "exp") == "s3://bucket/runs/exp"


def test_a_storage_that_cannot_be_written_is_one_clear_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(InputError, match="cannot write the search's storage"):
        Storage(f"file://{blocked}/exp").check_writable()
    with pytest.raises(InputError, match="not a storage Ray can use"):
        Storage("nosuchscheme://bucket/exp").exists("x")


def test_the_study_is_pushed_consistent_while_open_and_pulled_by_a_new_driver(
    tmp_path: Path,
) -> None:
    driver = tmp_path / "driver"
    driver.mkdir()
    study = optuna.create_study(
        study_name="s", storage=f"sqlite:///{driver / STUDY_FILE}", directions=["maximize"]
    )
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, values=[0.5]))
    (driver / "experiment.yaml").write_text("name: s\n")
    storage = Storage(f"file://{tmp_path / 'store' / 's'}")
    pushed = push(driver, storage, DRIVER_FILES)  # the ledger is not there yet: skipped
    assert storage.exists(STUDY_FILE)
    assert not storage.exists("trials.jsonl")
    assert pushed == sum(  # the bytes copied: the study's consistent copy has the file's size
        (driver / name).stat().st_size for name in ("experiment.yaml", STUDY_FILE)
    )
    fresh = tmp_path / "new-driver"
    pull(storage, fresh, DRIVER_FILES)
    assert sorted(p.name for p in fresh.iterdir()) == ["experiment.yaml", STUDY_FILE]
    with sqlite3.connect(fresh / STUDY_FILE) as copy:
        assert copy.execute("pragma integrity_check").fetchone() == ("ok",)
    again = optuna.load_study(study_name="s", storage=f"sqlite:///{fresh / STUDY_FILE}")
    assert [t.values for t in again.trials] == [[0.5]]
    assert push(driver, Storage(str(driver)), DRIVER_FILES) == 0  # a local storage: the folder


def test_a_node_uses_its_own_cache_and_the_store_key_of_the_driver(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(tmp_path / "driver"))
    overrides = ["data.root=${cache}/smoke/VOCdevkit", *LEARNS]
    config = load_config(SMOKE, overrides)
    assert config.cache_dir == tmp_path / "driver"
    monkeypatch.setenv("PRUNE_SEARCH_CACHE", str(tmp_path / "node"))
    local = dense.on_this_node(config, str(tmp_path / "driver"))
    assert local.cache_dir == tmp_path / "node"
    assert local.data.root == tmp_path / "node" / "smoke" / "VOCdevkit"
    assert dense.store_key(local) == dense.store_key(config)  # generated data: by its recipe
    named = config.model_copy(update={"cache_dir": tmp_path / "shared"})
    placed = dense.on_this_node(named, str(tmp_path / "driver"))
    assert (placed.cache_dir, placed.data) == (named.cache_dir, named.data)  # named: kept
    assert (placed.train.device, placed.finetune.device) == ("cpu", "cpu")  # no GPU planned


def test_a_published_dense_stage_reaches_a_new_cache_whole(tmp_path: Path) -> None:
    config = load_config(SMOKE, [f"cache_dir={tmp_path / 'node'}", *LEARNS])
    made = tmp_path / "made"
    made.mkdir()
    for name, text in (("model.safetensors", "w"), ("metrics.json", '{"map": 0.5}')):
        (made / name).write_text(text)
    storage = Storage(str(tmp_path / "exp"))
    key = dense.store_key(config)
    assert not dense.fetch(storage, key, config)
    dense.publish(storage, key, made)
    assert dense.published(storage, key)
    assert dense.fetch(storage, key, config)
    folder = dense_folder(config)
    assert (folder / "model.safetensors").read_text() == "w"
    assert (folder / dense.MADE_FILE).is_file()


@pytest.mark.parametrize("appends", [True, False])
def test_the_pusher_appends_the_ledger_and_spaces_whole_copies_by_their_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appends: bool
) -> None:
    """Bytes linear in trials however slowly they end: the ledger's new lines alone where the
    storage appends; a file copied whole (the study, or the ledger where objects are written
    whole) at most once per period for each WHOLE_COPY_BYTES of it; nothing unchanged again."""
    if not appends:  # as S3 and GCS, whose objects are written whole
        monkeypatch.setattr(storage_module, "APPENDING_FILESYSTEMS", ())
    directory, root = tmp_path / "driver", tmp_path / "storage"
    directory.mkdir()
    study, ledger = directory / STUDY_FILE, directory / LEDGER_FILE
    optuna.create_study(study_name="s", storage=f"sqlite:///{study}")
    ledger.write_text("")
    now = [0.0]
    pusher = Pusher(directory, Storage(f"file://{root}"), every_s=60, clock=lambda: now[0])
    assert pusher.push((STUDY_FILE, LEDGER_FILE))  # both, whole
    assert 1.5 < study.stat().st_size / WHOLE_COPY_BYTES < 3  # it waits over 90 s, under 180
    line = '{"trial_id": "t"}\n'
    study_copied, ledger_bytes = [], []
    for number in range(1, 5):  # a slow trial's end every 90 s: each changes both files
        now[0] = 90.0 * number
        optuna.load_study(study_name="s", storage=f"sqlite:///{study}").ask()
        with ledger.open("a") as file:
            file.write(line)
        before = pusher.pushed_bytes
        assert pusher.push((LEDGER_FILE,))  # small: at every end
        ledger_bytes.append(pusher.pushed_bytes - before)
        assert (root / LEDGER_FILE).read_text() == line * number
        study_copied.append(pusher.push((STUDY_FILE,)))
    assert study_copied == [False, True, False, True]  # 60 s x its 64 KiBs (1.75): at 180, 360
    whole = [len(line) * number for number in range(1, 5)]
    assert ledger_bytes == ([len(line)] * 4 if appends else whole)
    before = pusher.pushed_bytes
    assert pusher.push((STUDY_FILE, LEDGER_FILE))  # nothing changed: nothing copied
    assert pusher.pushed_bytes == before
