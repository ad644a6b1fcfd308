"""What a cache folder holds (synthetic data sets, dense stages), how big it is, and clearing it.

Only what prune-search writes is recognised, and only that is cleared: a synthetic data set by its
marker file, an interrupted generation by its temporary folder's name, a dense stage by its folder
under `dense/`, the digests of real data sets' annotations (the dense keys' fingerprints) by the
folder `fingerprints/`, the latency figures by architecture by the folder `latency/`. Anything
else (a VOCdevkit put there by hand, say) is listed and left alone, so that pointing
PRUNE_SEARCH_CACHE at a busy folder and clearing it cannot delete other files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml

from yolov2.data.fingerprint import FINGERPRINT_CACHE
from yolov2.data.synthetic import MARKER
from yolov2.errors import InputError
from yolov2.latency import LATENCY_CACHE, LATENCY_FILE, timings_from_json
from yolov2.pipeline import DENSE_CACHE, LOCK_FILE, METRICS_FILE

Kind = Literal["synthetic", "dense", "fingerprints", "latency", "partial", "other"]
KINDS: tuple[Kind, ...] = ("synthetic", "dense", "fingerprints", "latency", "partial", "other")
_PARTIAL = re.compile(r"^\..+\.partial-(\d+)-[0-9a-f]+$")  # make_synthetic_voc's, with its pid


@dataclass(frozen=True)
class CacheEntry:
    """One thing in the cache: what it is, where, its size on disk, and a line about it."""

    kind: Kind
    path: Path
    size_bytes: int
    files: int
    about: str


def cache_contents(root: Path) -> list[CacheEntry]:
    """Everything under `root`, as entries by kind, in path order; empty when `root` is missing."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(_scan(root, root), key=lambda e: (KINDS.index(e.kind), e.path))


def clear_cache(root: Path) -> list[CacheEntry]:
    """Delete every entry prune-search wrote under `root`, then the folders that held them if that
    left them empty (`root` too); return the deleted entries. Entries of kind "other" stay, and so
    do those a running process is writing: a dense stage whose lock is held, a generation whose
    process is alive."""
    root = Path(root)
    removed = []
    for entry in cache_contents(root):
        if entry.kind == "other" or _in_use(entry):
            continue
        shutil.rmtree(entry.path)
        removed.append(entry)
    holders = {parent for e in removed for parent in e.path.parents if parent.is_relative_to(root)}
    for folder in sorted(holders, key=lambda p: len(p.parts), reverse=True):  # deepest first
        with contextlib.suppress(OSError):  # not empty (or gone): what is in it stays
            folder.rmdir()
    return removed


def _in_use(entry: CacheEntry) -> bool:
    if entry.kind == "partial":
        match = _PARTIAL.match(entry.path.name)
        return match is not None and _alive(int(match.group(1)))
    lock = entry.path / LOCK_FILE
    if entry.kind != "dense" or not lock.is_file():
        return False
    with lock.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _scan(folder: Path, root: Path) -> list[CacheEntry]:
    entries: list[CacheEntry] = []
    for child in sorted(folder.iterdir()):
        if child.is_dir() and not child.is_symlink():
            recognised = _recognise(child, root)
            if recognised is not None:
                entries.append(recognised)
                continue
            inside = _scan(child, root)
            if inside and all(e.kind == "other" for e in inside):
                inside = [_entry("other", child, "a folder")]
            entries.extend(inside)
        else:
            entries.append(_entry("other", child, "a file"))
    return entries


def _recognise(folder: Path, root: Path) -> CacheEntry | None:
    if (folder / MARKER).is_file():
        return _entry("synthetic", folder, _synthetic_about(folder / MARKER))
    if _PARTIAL.match(folder.name):
        return _entry("partial", folder, "an interrupted synthetic generation")
    if folder.parent == root / DENSE_CACHE:
        return _entry("dense", folder, _dense_about(folder))
    if folder == root / FINGERPRINT_CACHE:
        trees = sum(1 for _ in folder.glob("*.json"))
        return _entry("fingerprints", folder, f"annotation digests of {trees} VOCdevkit tree(s)")
    if folder == root / LATENCY_CACHE:
        return _entry("latency", folder, _latency_about(folder / LATENCY_FILE))
    return None


def _synthetic_about(marker: Path) -> str:
    try:
        spec = json.loads(marker.read_text())
        classes = spec["classes"]
        return (
            f"{spec['num_trainval']} trainval + {spec['num_test']} test images, "
            f"{len(classes)} classes ({', '.join(classes)}), seed {spec['seed']}, "
            f"generator v{spec.get('version', '?')}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a synthetic data set (its marker file is unreadable)"


def _latency_about(path: Path) -> str:
    try:
        return f"latency of {len(timings_from_json(path.read_text(), str(path)))} architecture(s)"
    except (OSError, InputError):
        return "latency figures (none readable)"


def _dense_about(folder: Path) -> str:
    name = "experiment unknown (no readable config.yaml)"
    with contextlib.suppress(OSError, yaml.YAMLError, KeyError, TypeError):
        name = f"experiment {yaml.safe_load((folder / 'config.yaml').read_text())['name']}"
    try:
        metrics = json.loads((folder / METRICS_FILE).read_text())
        scores = f"map {metrics['map']:.4f} (VOC07 11-point), map_voc12 {metrics['map_voc12']:.4f}"
    except (OSError, ValueError, KeyError, TypeError):
        scores = "not finished (training interrupted, or in progress)"
    return f"{name}: {scores}"


def _entry(kind: Kind, path: Path, about: str) -> CacheEntry:
    size, files = _disk_usage(path)
    return CacheEntry(kind, path, size, files, about)


def _disk_usage(path: Path) -> tuple[int, int]:
    """Bytes and files under `path`, not following links (a link counts as itself)."""
    if not path.is_dir() or path.is_symlink():
        return path.lstat().st_size, 1
    size = files = 0
    for folder, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(OSError):  # a file removed meanwhile (a generation finishing)
                size += os.lstat(os.path.join(folder, name)).st_size
                files += 1
    return size, files
