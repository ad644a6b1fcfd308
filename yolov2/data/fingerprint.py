"""What a VOCdevkit's data is, as one hash: the content of a tree that shapes a model trained on it.

The dense stage's cache key holds it in place of `data.root`, so that annotations edited in place
make a new key while the same tree copied or moved elsewhere keeps its key. It covers the image-set
lists of the sets used (their ids, in order), every annotation file of their images (its bytes), and
each image's path inside the tree and its size: decoding every image would cost minutes on VOC, and
a JPEG replaced by another of the very same size is a change this hash does not see.

VOC 07+12 has 21,503 annotation files. Their digests are kept in a small file in the cache, by
each file's (path, size, mtime_ns), so that a second call on an unchanged tree stats the files and
reads no XML (`python bench/bench_fingerprint.py` times both).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from yolov2.data.voc import _devkit_folder, _read_image_set, _year_folder
from yolov2.errors import InputError
from yolov2.files import write_text_atomic

log = logging.getLogger(__name__)

FINGERPRINT_CACHE = "fingerprints"  # the cache's folder of annotation digests, one file per tree
# A file changed this shortly before a scan may change again within the same mtime tick (coarse on
# some filesystems: 2 s on FAT): its digest is used but not kept, so the next scan reads it again.
_RACY_NS = 2_000_000_000

# A file's "<size> <mtime_ns> <sha256 of its bytes>", by its path inside the tree: text, which the
# garbage collector does not track (21,503 tuples made its full passes cost as much as the stats).
Digests = dict[str, str]


def voc_fingerprint(
    root: Path, sets: Sequence[tuple[str, str]], cache_dir: Path | None = None
) -> str:
    """A 16-hex-digit hash of the (year, image set) lists of the VOCdevkit at `root`, the bytes of
    their annotations and their images' paths and sizes; the same wherever the tree lies. The
    digests of the annotations are kept in `cache_dir`/fingerprints (None: every file is read). A
    missing folder, list, annotation or image is the InputError the data loader gives."""
    root = _devkit_folder(Path(root))
    started = time.time_ns()
    store = _store_file(root, cache_dir)
    known = _load(store)
    fresh: Digests = {}
    digest = hashlib.sha256()
    base = str(root)
    for year, image_set in sets:
        year_dir = _year_folder(root, year)
        digest.update(f"set VOC{year}/{image_set}\n".encode())
        # Paths as text: 21,503 pathlib joins and relative_to cost more than the stats themselves.
        for image_id in _read_image_set(year_dir, image_set):
            xml = f"VOC{year}/Annotations/{image_id}.xml"
            image = f"VOC{year}/JPEGImages/{image_id}.jpg"
            sha = _annotation_digest(base, xml, known, fresh)
            digest.update(f"{xml} {sha} {image} {_size(base, image)}\n".encode())
    if store is not None:
        _save(store, root, known, fresh, started)
    return digest.hexdigest()[:16]


def _annotation_digest(root: str, name: str, known: Digests, fresh: Digests) -> str:
    """The sha256 of the bytes of `root`/`name`: from `known` while the file's size and mtime are
    those recorded there, read otherwise; either way put into `fresh`."""
    if name in fresh:  # an image in two of the sets
        return fresh[name].rsplit(" ", 1)[1]
    path = f"{root}/{name}"
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: annotation file not found") from None
    stamp = f"{stat.st_size} {stat.st_mtime_ns} "
    recorded = known.get(name, "")
    if recorded.startswith(stamp):
        fresh[name] = recorded
        return recorded[len(stamp) :]
    try:
        with open(path, "rb") as file:
            sha = hashlib.sha256(file.read()).hexdigest()
    except OSError as error:
        raise InputError(f"{path}: cannot read the annotation file ({error.strerror})") from None
    fresh[name] = stamp + sha
    return sha


def _size(root: str, name: str) -> int:
    try:
        return os.stat(f"{root}/{name}").st_size
    except FileNotFoundError:
        raise InputError(f"{root}/{name}: image not found") from None


def _store_file(root: Path, cache_dir: Path | None) -> Path | None:
    """The cache's file of the tree at `root`: one per absolute path (a copy is another tree)."""
    if cache_dir is None:
        return None
    name = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir / FINGERPRINT_CACHE / f"{name}.json"


def _load(store: Path | None) -> Digests:
    """The digests recorded in `store`; none when it is missing or unreadable (then every
    annotation is read again, and the file rewritten)."""
    if store is None or not store.is_file():
        return {}
    try:
        files = json.loads(store.read_text())["files"]
        if not all(isinstance(entry, str) for entry in files.values()):
            raise ValueError("an entry is not text")
        return dict(files)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        log.warning(
            "%s: not a fingerprint cache (%s); reading every annotation again", store, error
        )
        return {}


def _save(store: Path, root: Path, known: Digests, fresh: Digests, started_ns: int) -> None:
    """Record the digests of this scan beside those of other sets of the tree, leaving out the
    files changed just before it began (_RACY_NS); written only when that changes what is there."""
    changed = {name: entry for name, entry in fresh.items() if known.get(name) != entry}
    settled = {
        name: entry
        for name, entry in changed.items()
        if int(entry.split(" ", 2)[1]) < started_ns - _RACY_NS
    }
    if not settled:
        return
    merged = {**known, **settled}
    text = json.dumps({"root": str(root.resolve()), "files": merged}, separators=(",", ":"))
    try:
        write_text_atomic(store, text)
    except OSError as error:  # a read-only cache costs the next call time, never its answer
        log.warning("%s: cannot keep the fingerprint cache (%s)", store, error.strerror)
