"""The cache's contents and clearing, on a real synthetic set and dense folders as the pipeline writes them."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.yolov2.conftest import WriteVocTree
from yolov2.cache import cache_contents, clear_cache
from yolov2.data import make_synthetic_voc, voc_fingerprint


def _dense(cache: Path, digest: str, name: str | None, maps: tuple[float, float] | None) -> Path:
    folder = cache / "dense" / digest
    folder.mkdir(parents=True)
    (folder / ".lock").write_text("")
    if name is not None:
        (folder / "config.yaml").write_text(f"name: {name}\ndata: {{}}\n")
    if maps is not None:
        (folder / "model.safetensors").write_bytes(b"\0" * 5000)
        (folder / "metrics.json").write_text(json.dumps({"map": maps[0], "map_voc12": maps[1]}))
    return folder


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _cache(tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    make_synthetic_voc(cache / "synthetic-v2" / "VOCdevkit", num_trainval=3, num_test=1, workers=1)
    _dense(cache, "0123456789abcdef", "default", (0.8181, 0.8345))
    _dense(cache, "fedcba9876543210", None, None)
    (cache / f".VOCdevkit.partial-{_dead_pid()}-0badc0de" / "VOC2007").mkdir(parents=True)
    (cache / "mine" / "VOCdevkit").mkdir(parents=True)
    (cache / "mine" / "VOCdevkit" / "note.txt").write_text("downloaded by hand\n")
    (cache / "synthetic-v2" / "README").write_text("mine too\n")
    return cache


def test_contents_name_every_entry_with_its_size(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    entries = cache_contents(cache)
    assert [(e.kind, e.path.relative_to(cache).as_posix()) for e in entries] == [
        ("synthetic", "synthetic-v2/VOCdevkit"),
        ("dense", "dense/0123456789abcdef"),
        ("dense", "dense/fedcba9876543210"),
        ("partial", entries[3].path.name),
        ("other", "mine"),
        ("other", "synthetic-v2/README"),
    ]
    synthetic, dense, unfinished = entries[:3]
    assert synthetic.files == 4 * 2 + 4 + 1  # xml + jpeg per image, 4 set files, the marker
    assert synthetic.size_bytes == sum(
        p.stat().st_size for p in synthetic.path.rglob("*") if p.is_file()
    )
    assert synthetic.about.startswith("3 trainval + 1 test images, 8 classes (circle, square,")
    assert dense.about == "experiment default: map 0.8181 (VOC07 11-point), map_voc12 0.8345"
    assert dense.size_bytes > 5000
    assert "not finished" in unfinished.about
    assert cache_contents(tmp_path / "nowhere") == []


def test_clear_removes_what_prune_search_wrote_and_nothing_else(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    removed = clear_cache(cache)
    assert [e.kind for e in removed] == ["synthetic", "dense", "dense", "partial"]
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == ["mine", "mine/VOCdevkit", "mine/VOCdevkit/note.txt", "synthetic-v2", "synthetic-v2/README"]  # fmt: skip
    (cache / "mine" / "VOCdevkit" / "note.txt").unlink()
    (cache / "synthetic-v2" / "README").unlink()
    clear_cache(cache)
    assert (cache / "mine" / "VOCdevkit").is_dir()  # an empty folder of the user's stays too
    for folder in ("mine/VOCdevkit", "mine", "synthetic-v2"):
        (cache / folder).rmdir()
    _dense(cache, "0123456789abcdef", "default", (0.5, 0.5))
    clear_cache(cache)
    assert not cache.exists()  # emptied by what it removed: gone


def test_clear_leaves_what_a_running_process_writes(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    training = _dense(cache, "0123456789abcdef", "default", None)
    generating = cache / f".VOCdevkit.partial-{os.getpid()}-0badc0de"
    generating.mkdir()
    with open(training / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as pipeline.cached_dense holds it while it trains
        assert clear_cache(cache) == []
    assert training.is_dir()
    assert generating.is_dir()
    assert [e.kind for e in clear_cache(cache)] == ["dense"]  # unlocked now; the pid still runs


def test_the_data_fingerprints_are_listed_and_cleared(
    tmp_path: Path, write_voc_tree: WriteVocTree
) -> None:
    cache = tmp_path / "cache"
    root = write_voc_tree(tmp_path / "VOCdevkit", "2007", "trainval", [{"id": "000001"}])
    for path in root.rglob("*"):  # a data set written long ago: its digests are kept
        os.utime(path, ns=(0, path.stat().st_mtime_ns - 3600 * 10**9))
    voc_fingerprint(root, [("2007", "trainval")], cache)
    (entry,) = cache_contents(cache)
    assert (entry.kind, entry.path, entry.files) == ("fingerprints", cache / "fingerprints", 1)
    assert entry.about == "annotation digests of 1 VOCdevkit tree(s)"
    assert clear_cache(cache) == [entry]
    assert not cache.exists()
    assert root.is_dir()  # the data itself is not the cache's
