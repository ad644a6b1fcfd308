"""Where a search keeps what outlives its driver: a local folder, or a URI that Ray Tune accepts
(a shared filesystem's path, `file://`, `s3://`, `gs://`; pyarrow's filesystems reach it).

With a local folder the experiment folder is the storage. With a URI the driver keeps the study
(SQLite wants a local disk), the ledger and the views in a local folder and copies them into the
storage at most every `search.sync_every_s` seconds and at every end of a fit, so that a new
driver resumes from the storage alone; Ray's experiment and the dense stage live in the storage
itself, where every node reaches them.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from yolov2.errors import InputError

if TYPE_CHECKING:
    import pyarrow.fs


EXPERIMENT_FILE = "experiment.yaml"  # the resolved experiment
STUDY_FILE = "study.db"  # the Optuna study
LEDGER_FILE = "trials.jsonl"  # every finished trial, a line each (search.pareto.Ledger)
OLD_LEDGER_FILE = "trials.json"  # the ledger as one JSON document, read until rewritten
# What the driver keeps and copies into a remote storage (the old ledger, only while a search
# begun before the JSON-lines ledger still has it).
DRIVER_FILES = (EXPERIMENT_FILE, STUDY_FILE, LEDGER_FILE, OLD_LEDGER_FILE)
# Files the driver only appends to (JSON-lines ledgers): a storage that can append gets their new
# lines alone. pyarrow's local and HDFS filesystems append; S3's and GCS's objects are written whole.
APPENDED_FILES = (LEDGER_FILE,)
APPENDING_FILESYSTEMS = ("local", "hdfs")
# A file copied whole goes at most once per `search.sync_every_s` for each WHOLE_COPY_BYTES of
# it: its bytes per second stay bounded however large it grows (docs/cluster.md).
WHOLE_COPY_BYTES = 64 * 1024


def search_storage(location: str, name: str) -> Storage:
    """The storage of the search `name` under `--storage location`: `<location>/<name>`, a
    folder's absolute path or a URI."""
    if is_uri(location):
        return Storage(join(location, name))
    return Storage(str(Path(location, name).resolve()))


def is_uri(location: str) -> bool:
    return "://" in location


def join(location: str, *parts: str) -> str:
    """`location/part/...`; a URI keeps its query (`?endpoint_override=...&scheme=http`, which
    pyarrow reads to reach an S3 API that is not AWS's) after the joined path. Ray Tune 2.60
    takes such a URI as `storage_path` as it is: its own joins keep the query too
    (`ray.air._internal.uri_utils.URI`), and it opens each with `FileSystem.from_uri`."""
    if is_uri(location):
        path, mark, query = location.partition("?")
        return "/".join([path.rstrip("/"), *parts]) + mark + query
    return str(Path(location).joinpath(*parts))


def uri_name(location: str) -> str:
    """The last name of a folder's path or a URI's path (its query left out)."""
    return location.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Storage:
    """One experiment's storage: `<storage>/<name>`, a local folder's absolute path or a URI."""

    root: str

    @property
    def remote(self) -> bool:
        return is_uri(self.root)

    def driver_folder(self) -> Path:
        """Where the driver keeps the study, the ledger and the views: the storage itself when
        it is a folder; `runs/<name>` in the driver's working folder when it is a URI."""
        if not self.remote:
            return Path(self.root)
        return (Path("runs") / uri_name(self.root)).resolve()

    def uri(self, relative: str) -> str:
        return join(self.root, relative)

    def relative(self, path: str) -> str:
        """A path of Ray's (a checkpoint's, in the storage's filesystem) relative to the root."""
        _, root = self._resolved("")
        inside = Path(path)
        return str(inside.relative_to(root) if inside.is_relative_to(root) else inside)

    def _resolved(self, relative: str) -> tuple[pyarrow.fs.FileSystem, str]:
        import pyarrow.fs

        try:
            resolved: tuple[pyarrow.fs.FileSystem, str] = pyarrow.fs.FileSystem.from_uri(
                self.uri(relative)
            )
            return resolved
        except (pyarrow.ArrowInvalid, OSError) as error:
            raise InputError(f"{self.root}: not a storage Ray can use ({error})") from None

    def exists(self, relative: str) -> bool:
        import pyarrow.fs

        filesystem, path = self._resolved(relative)
        return bool(filesystem.get_file_info(path).type != pyarrow.fs.FileType.NotFound)

    def folders(self, relative: str, prefix: str = "") -> list[str]:
        """The names of the folders in `relative` that start with `prefix`, sorted."""
        return self._listed(relative, prefix, folders=True)

    def files(self, relative: str, prefix: str = "") -> list[str]:
        """The names of the files in `relative` that start with `prefix`, sorted."""
        return self._listed(relative, prefix, folders=False)

    def _listed(self, relative: str, prefix: str, folders: bool) -> list[str]:
        import pyarrow.fs

        filesystem, path = self._resolved(relative)
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
            return []
        kind = pyarrow.fs.FileType.Directory if folders else pyarrow.fs.FileType.File
        listed = filesystem.get_file_info(pyarrow.fs.FileSelector(path))
        return sorted(
            info.base_name
            for info in listed
            if info.type == kind and info.base_name.startswith(prefix)
        )

    def delete_folder(self, relative: str) -> None:
        """Remove the folder `relative` and everything in it, if it is there."""
        filesystem, path = self._resolved(relative)
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_dir(path)

    def delete(self, relative: str) -> None:
        """Remove the file `relative`, if it is there."""
        filesystem, path = self._resolved(relative)
        with contextlib.suppress(FileNotFoundError):
            filesystem.delete_file(path)

    def upload(self, local: Path, relative: str) -> None:
        """Copy the file `local` to `relative`, replacing it whole (a partial copy never shows)."""
        import pyarrow.fs

        filesystem, path = self._resolved(relative)
        filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
        partial = f"{path}.partial-{uuid.uuid4().hex[:8]}"
        pyarrow.fs.copy_files(str(local), partial, destination_filesystem=filesystem)
        try:
            filesystem.move(partial, path)
        finally:
            with contextlib.suppress(OSError):
                filesystem.delete_file(partial)

    def append(self, local: Path, relative: str, offset: int) -> int | None:
        """Append the bytes of `local` after its first `offset` to `relative`, which holds those
        `offset` bytes: the bytes appended, or None when the storage cannot append or holds
        another length (then only a whole copy brings it up to date)."""
        filesystem, path = self._resolved(relative)
        if filesystem.type_name not in APPENDING_FILESYSTEMS:
            return None
        if filesystem.get_file_info(path).size != offset:
            return None
        with local.open("rb") as source:
            source.seek(offset)
            tail = source.read()
        with filesystem.open_append_stream(path) as stream:
            stream.write(tail)
        return len(tail)

    def download(self, relative: str, local: Path) -> bool:
        """Copy `relative` to the file `local` (whole, or not at all); False when it is absent."""
        import pyarrow.fs

        from yolov2.files import atomic_path

        filesystem, path = self._resolved(relative)
        if filesystem.get_file_info(path).type != pyarrow.fs.FileType.File:
            return False
        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(local) as temporary:
            pyarrow.fs.copy_files(path, str(temporary), source_filesystem=filesystem)
        return True

    def check_writable(self) -> None:
        """One clear line when the storage cannot be written, before any work starts."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            probe = Path(scratch) / "probe"
            probe.write_text("")
            try:
                self.upload(probe, ".writable")
                self.delete(".writable")
            except OSError as error:
                raise InputError(
                    f"{self.root}: cannot write the search's storage ({error})"
                ) from None


def push(directory: Path, storage: Storage, names: tuple[str, ...]) -> int:
    """Copy the driver's files `names` from `directory` into a remote storage; an SQLite study
    through SQLite's backup, so the copy is consistent even while the study is in use. Returns
    the bytes copied."""
    import sqlite3
    import tempfile

    if not storage.remote:
        return 0
    pushed = 0
    for name in names:
        source = directory / name
        if not source.is_file():
            continue
        if name.endswith(".db"):
            with tempfile.TemporaryDirectory() as scratch:
                copy = Path(scratch) / name
                with (
                    contextlib.closing(sqlite3.connect(source)) as live,
                    contextlib.closing(sqlite3.connect(copy)) as snapshot,
                ):
                    live.backup(snapshot)
                storage.upload(copy, name)
                pushed += copy.stat().st_size
        else:
            storage.upload(source, name)
            pushed += source.stat().st_size
    return pushed


def pull(storage: Storage, directory: Path, names: tuple[str, ...]) -> list[str]:
    """Copy `names` from a remote storage into a new driver's folder: those it holds, named."""
    return [name for name in names if storage.download(name, directory / name)]


@dataclass(frozen=True)
class _Copy:
    """What a storage holds of one driver file: which local version, since when, how many bytes."""

    at: float
    version: tuple[int, int, int]  # the local file's (inode, size, mtime in ns) when copied
    size: int


class Pusher:
    """The driver's copies of its files into a remote storage, with bytes that grow linearly with
    the search however slowly its trials finish. A file unchanged since its last copy is not
    copied; an appended file (the ledger) gets its new lines alone where the storage appends; a
    file copied whole (the study) waits `every_s` seconds for each WHOLE_COPY_BYTES of it since
    its last copy, so that a copy at every slow trial's end cannot make the bytes grow as trials
    squared. The copy every fit ends with is `push`'s, whole."""

    def __init__(
        self,
        directory: Path,
        storage: Storage,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory, self.storage, self.every_s, self.clock = directory, storage, every_s, clock
        self.copies: dict[str, _Copy] = {}
        self.pushed_bytes = 0

    def push(self, names: tuple[str, ...]) -> bool:
        """Copy what changed of `names`, as far as their spacing allows; True when the storage
        holds every one of them as it is here."""
        current = [self._push(name) for name in names]  # each one, not up to the first that waits
        return all(current)

    def _push(self, name: str) -> bool:
        source = self.directory / name
        if not self.storage.remote or not source.is_file():
            return True
        stat = source.stat()
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        copy = self.copies.get(name)
        if copy is not None and copy.version == version:
            return True
        now = self.clock()
        if (
            name in APPENDED_FILES
            and copy is not None
            and copy.version[0] == stat.st_ino  # appended in place: its first bytes are the same
            and stat.st_size >= copy.size
        ):
            appended = self.storage.append(source, name, copy.size)
            if appended is not None:
                self.pushed_bytes += appended
                self.copies[name] = _Copy(now, version, copy.size + appended)
                return True
        if copy is not None and now - copy.at < self.every_s * max(
            1.0, stat.st_size / WHOLE_COPY_BYTES
        ):
            return False
        pushed = push(self.directory, self.storage, (name,))
        self.pushed_bytes += pushed
        self.copies[name] = _Copy(now, version, stat.st_size)
        return True
