"""The persisted result store. ``ResultStore`` is its interface, with two engines behind the same methods
and one shared test suite: ``DirResultStore`` here, ``<results_dir>/<result_id>/`` with ``result.json``
and the files it names, and ``tumorseg.db.results.PgResultStore`` (``TUMORSEG_DATABASE_URL``). Either way
a result is written into a private staging folder (``staging``), then ``commit`` makes it visible whole;
``read_file`` returns a file's bytes (what the API serves), and retention bounds both the same way.

The rest of this docstring is about the directory.

Result ids are random UUIDs (32 lowercase hex digits) and are validated before any path is built, so a
caller cannot reach outside the store. A result is written into a hidden temporary folder and renamed
into place in one step, so a crash never leaves half a result behind; results survive restarts.

Durability: ``commit`` fsyncs every file of the staging folder (``result.json`` included) and the folder
itself before the rename, and the store's root after it, so after a power loss a result is either
absent or whole; never a ``result.json`` naming bytes that did not reach the disk.

Bounded growth, enforced when the store opens and after each commit (one scan of the root, cheap for
thousands of results):

* staging folders (``.tmp-*``) left by a crashed process are deleted once nothing has been written
  into them for ``STALE_TMP_S`` (1 hour). A result is staged from the moment its series are loaded
  (the viewer's reference volume is written while the network runs) until it is committed: seconds,
  a minute for the largest study on a slow CPU. So the grace period never hurts another process sharing
  the folder mid-write, while a crash's leftovers go at the next start;
* results older than ``max_age_days`` are deleted. A result's age is its folder's mtime: the moment its
  last file (``result.json``, written by ``commit``) was created. It needs one ``stat`` and no JSON
  parsing, and a result copied in by hand with its times kept ages as it did where it came from;
* while the results together take more than ``max_bytes`` (the sizes of their files; staging folders,
  still being written, are not counted), the oldest are deleted; never the result just committed.

``None`` disables either bound. A result is deleted by renaming it first to a hidden ``.del-*`` name
(atomic) and then removing that folder, so a concurrent reader sees the whole result or none
(``ResultNotFound``, a 404), and a file it already opened stays readable until it closes it.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, NoReturn

from tumorseg.errors import ResultFailed, ResultNotFound, ResultPending
from tumorseg.jobstore import ACTIVE, JobStore
from tumorseg.schema import SegmentResult

log = logging.getLogger(__name__)

_RESULT_ID = re.compile(r"^[0-9a-f]{32}$")
RESULT_JSON = "result.json"
# ``reference.nii.gz`` (the reference series on the mask's lattice, for the viewer) exists for results
# exported since the viewer; older results have the other two.
FILES = {
    "mask.nii.gz": "application/gzip",
    "preview.png": "image/png",
    "reference.nii.gz": "application/gzip",
}
TMP_PREFIX = ".tmp-"
DEL_PREFIX = ".del-"
STALE_TMP_S = 3600.0
"""A staging folder untouched for this long belongs to a process that died (see the module docstring)."""


def check_result_id(result_id: str) -> str:
    """``result_id`` if it has the form of one (32 lowercase hex digits); else ``ResultNotFound``."""
    if not _RESULT_ID.match(result_id):
        raise ResultNotFound(f"no result {result_id!r} (a result id is 32 hexadecimal digits)")
    return result_id


def new_result_id() -> str:
    return uuid.uuid4().hex


def _fsync(path: Path, *, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError as error:
        # a few file systems cannot fsync a directory; the files themselves are on disk by then
        if not directory or error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _write_json(path: Path, result: SegmentResult) -> None:
    """``result`` as indented JSON at ``path``, flushed to disk before returning."""
    with path.open("wb") as out:
        out.write((result.model_dump_json(indent=2) + "\n").encode())
        out.flush()
        os.fsync(out.fileno())


def _tree(path: Path) -> tuple[int, float]:
    """The total size of the files under ``path`` and the newest mtime of it and anything in it."""
    size, newest = 0, path.stat().st_mtime
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                sub_size, sub_newest = _tree(Path(entry.path))
                size, newest = size + sub_size, max(newest, sub_newest)
            else:
                info = entry.stat(follow_symlinks=False)
                size, newest = size + info.st_size, max(newest, info.st_mtime)
    return size, newest


class ResultStore(ABC):
    """The result store's interface (see the module docstring); ``ResultStore(root, ...)`` still builds
    the directory store, as it did before there were two engines. ``jobs``: where a result id not in the
    store yet may be a job's (pending or failed)."""

    jobs: JobStore | None
    max_age_days: float | None
    max_bytes: int | None

    def __new__(cls, *args: Any, **kwargs: Any) -> ResultStore:
        return super().__new__(DirResultStore if cls is ResultStore else cls)

    @abstractmethod
    def staging(self, result_id: str) -> Path:
        """A fresh private local folder in which a result's files are written before ``commit``."""

    @abstractmethod
    def commit(self, staging: Path, result: SegmentResult) -> None:
        """Store ``result`` and the files in ``staging`` as ``result.result_id``, atomically (visible whole
        or not at all) and durably; then apply the retention bounds (sparing this result)."""

    @abstractmethod
    def discard(self, staging: Path) -> None: ...

    @abstractmethod
    def update(self, result: SegmentResult) -> None:
        """Replace a committed result's JSON (the pipeline adds the stored SEG and the final timings),
        atomically: a reader sees the old or the new JSON, never half of one."""

    @abstractmethod
    def extra_files(self, result_id: str) -> AbstractContextManager[Path]:
        """A local folder in which files are written for the committed result ``result_id`` (the SR,
        after the SEG): once the block ends they belong to the result."""

    @abstractmethod
    def read(self, result_id: str) -> SegmentResult: ...

    @abstractmethod
    def read_file(self, result_id: str, name: str) -> bytes:
        """The bytes of one of a result's files (``FILES``), read at once: retention may delete a result
        at any time, and a file opened later (a lazy file response) would then fail mid-answer instead of
        a 404."""

    @abstractmethod
    def recent(self, limit: int, offset: int = 0) -> tuple[int, list[SegmentResult]]:
        """How many results the store holds, and ``limit`` of them from ``offset`` on, newest first (by
        the last write; ties by id)."""

    @abstractmethod
    def enforce_retention(self, keep: str | None = None) -> int:
        """Delete the results older than ``max_age_days``, then the oldest while the results take more
        than ``max_bytes``; never ``keep``. Returns how many were deleted."""

    def _not_here(self, result_id: str, what: str = "") -> NoReturn:
        """Why ``result_id`` is not in the store: its job is still queued or running (``ResultPending``),
        it ended without a result (``ResultFailed``, with the job's code and reason), or it is unknown or
        deleted (``ResultNotFound``)."""
        job = self.jobs.by_result(result_id) if self.jobs is not None else None
        if job is not None and job.state in ACTIVE:
            raise ResultPending(
                f"result {result_id} is not ready: job {job.job_id} is {job.state}"
                + (f" ({job.stage})" if job.stage else "")
                + f"; follow GET /jobs/{job.job_id}",
                retry_after_s=10,
            )
        if job is not None and job.state != "done":
            raise ResultFailed(
                f"result {result_id} was not made: job {job.job_id} {job.state} ({job.code}): {job.reason}"
            )
        raise ResultNotFound(f"result {result_id} has no {what}" if what else f"no result {result_id}")


class DirResultStore(ResultStore):
    """The results directory (the embedded default)."""

    def __init__(
        self,
        root: Path,
        *,
        max_age_days: float | None = None,
        max_bytes: int | None = None,
        jobs: JobStore | None = None,
    ) -> None:
        self.root = Path(root)
        self.jobs = jobs  # where a result id not in the store yet may be a job's (pending or failed)
        self.max_age_days = max_age_days
        self.max_bytes = max_bytes
        self._retention_lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        self.enforce_retention()

    def _folder(self, result_id: str) -> Path:
        return self.root / check_result_id(result_id)

    def staging(self, result_id: str) -> Path:
        """A fresh private folder in which a result's files are written before ``commit``."""
        folder = self.root / f"{TMP_PREFIX}{self._folder(result_id).name}-{uuid.uuid4().hex[:8]}"
        folder.mkdir(parents=True)
        return folder

    def commit(self, staging: Path, result: SegmentResult) -> None:
        """Write ``result.json`` into ``staging`` and move the folder into place as ``result.result_id``,
        atomically and durably; then apply the retention bounds (sparing this result)."""
        folder = self._folder(result.result_id)
        _write_json(staging / RESULT_JSON, result)
        for dirpath, dirnames, filenames in os.walk(staging):
            for name in filenames:
                if not (dirpath == str(staging) and name == RESULT_JSON):
                    _fsync(Path(dirpath, name))
            for name in dirnames:
                _fsync(Path(dirpath, name), directory=True)
        _fsync(staging, directory=True)
        os.replace(staging, folder)
        _fsync(self.root, directory=True)
        try:
            self.enforce_retention(keep=result.result_id)
        except OSError as error:  # the result is committed; a failed clean-up is retried next commit
            log.warning("result retention failed: %s", error)

    def update(self, result: SegmentResult) -> None:
        """Replace a committed result's ``result.json`` (the pipeline adds the stored SEG and the final
        timings), atomically: a reader sees the old or the new JSON, never half of one."""
        folder = self._folder(result.result_id)
        if not (folder / RESULT_JSON).is_file():
            raise ResultNotFound(f"no result {result.result_id}")
        partial = folder / f".{RESULT_JSON}.{uuid.uuid4().hex[:8]}"
        _write_json(partial, result)
        os.replace(partial, folder / RESULT_JSON)
        _fsync(folder, directory=True)

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def extra_files(self, result_id: str) -> Iterator[Path]:
        folder = self._folder(result_id)
        if not (folder / RESULT_JSON).is_file():
            raise ResultNotFound(f"no result {result_id}")
        yield folder  # the writer renames each file into place

    def read(self, result_id: str) -> SegmentResult:
        path = self._folder(result_id) / RESULT_JSON
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):  # absent, or just deleted
            self._not_here(result_id)
        return SegmentResult.model_validate_json(data)

    def read_file(self, result_id: str, name: str) -> bytes:
        path = self.file(result_id, name)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ResultNotFound(f"result {result_id} has no {name}") from None

    def file(self, result_id: str, name: str) -> Path:
        if name not in FILES:
            raise ResultNotFound(f"results have no file {name!r}")
        path = self._folder(result_id) / name
        if not path.is_file():
            self._not_here(result_id, name)
        return path

    def recent(self, limit: int, offset: int = 0) -> tuple[int, list[SegmentResult]]:
        """How many results the store holds, and ``limit`` of them from ``offset`` on, newest first (by
        the folder's mtime: its last write; ties by id). Only the page's ``result.json`` files are read;
        one deleted meanwhile is skipped."""
        with os.scandir(self.root) as scan:
            entries = [e for e in scan if _RESULT_ID.match(e.name) and e.is_dir(follow_symlinks=False)]
        dated: list[tuple[float, str]] = []
        for entry in entries:
            try:
                dated.append((entry.stat(follow_symlinks=False).st_mtime, entry.name))
            except FileNotFoundError:
                continue
        dated.sort(reverse=True)
        page = []
        for _, result_id in dated[offset : offset + limit]:
            try:
                page.append(self.read(result_id))
            except (ResultNotFound, ResultPending, ResultFailed):  # deleted since the scan
                continue
        return len(dated), page

    def _remove_leftovers(self) -> None:
        """Delete the staging folders of crashed processes (untouched for ``STALE_TMP_S``) and the
        remains of interrupted deletions."""
        cutoff = time.time() - STALE_TMP_S
        removed = 0
        with os.scandir(self.root) as scan:
            entries = list(scan)
        for entry in entries:
            if not entry.is_dir(follow_symlinks=False):
                continue
            if entry.name.startswith(DEL_PREFIX):
                shutil.rmtree(entry.path, ignore_errors=True)
            elif entry.name.startswith(TMP_PREFIX):
                try:
                    _, newest = _tree(Path(entry.path))
                except FileNotFoundError:  # committed or discarded meanwhile
                    continue
                if newest < cutoff:
                    shutil.rmtree(entry.path, ignore_errors=True)
                    removed += 1
        if removed:
            log.info("removed %d stale staging folder(s) from %s", removed, self.root)

    def enforce_retention(self, keep: str | None = None) -> int:
        """Delete the results older than ``max_age_days``, then the oldest while the results take more
        than ``max_bytes``; never ``keep``. Returns how many were deleted."""
        if self.max_age_days is None and self.max_bytes is None:
            return 0
        with self._retention_lock:
            results: list[tuple[float, str, int]] = []  # (mtime, id, bytes)
            with os.scandir(self.root) as scan:
                entries = [e for e in scan if _RESULT_ID.match(e.name) and e.is_dir(follow_symlinks=False)]
            for entry in entries:
                try:
                    size, _ = _tree(Path(entry.path))
                    mtime = entry.stat(follow_symlinks=False).st_mtime
                except FileNotFoundError:  # deleted by another process meanwhile
                    continue
                results.append((mtime, entry.name, size))
            results.sort()
            total = sum(size for _, _, size in results)
            cutoff = None if self.max_age_days is None else time.time() - self.max_age_days * 86400
            expired = too_big = 0
            for mtime, result_id, size in results:
                if result_id == keep:
                    continue
                if cutoff is not None and mtime < cutoff:
                    expired += 1
                elif self.max_bytes is not None and total > self.max_bytes:
                    too_big += 1
                else:
                    continue
                self._delete(result_id)
                total -= size
            if expired or too_big:
                log.info(
                    "retention: deleted %d expired result(s) (max_age_days=%s) and %d over the size "
                    "bound (max_bytes=%s); %d byte(s) of results remain",
                    expired,
                    self.max_age_days,
                    too_big,
                    self.max_bytes,
                    total,
                )
            return expired + too_big

    def _delete(self, result_id: str) -> None:
        """Hide the result in one atomic rename (readers then get ``ResultNotFound``), then remove it."""
        doomed = self.root / f"{DEL_PREFIX}{result_id}-{uuid.uuid4().hex[:8]}"
        try:
            os.replace(self.root / result_id, doomed)
        except FileNotFoundError:  # another process deleted it first
            return
        shutil.rmtree(doomed, ignore_errors=True)  # what a crash leaves here goes at the next start
