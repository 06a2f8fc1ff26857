"""Upload a folder of DICOM files to Orthanc, in parallel, reporting each file that failed; optionally wait
until Orthanc marks the studies it touched stable (the service answers 409 for a study still receiving
instances, so a script that uploads and then segments waits here)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from tumorseg.errors import PacsNotFound, PacsProtocolError
from tumorseg.pacs.base import Pacs
from tumorseg.pacs.tags import is_part10

log = logging.getLogger(__name__)


def is_dicom_file(path: Path) -> bool:
    """Part-10 files only: 128-byte preamble then ``DICM``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return is_part10(head)


def dicom_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and is_dicom_file(path):
            yield path


@dataclass
class UploadReport:
    stored: int = 0
    already_stored: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    study_ids: set[str] = field(default_factory=set)  # Orthanc ids of the studies the files went into

    @property
    def total(self) -> int:
        return self.stored + self.already_stored + len(self.failed)


def wait_until_stable(pacs: Pacs, study_ids: Iterable[str], timeout: float, poll: float = 0.5) -> None:
    """Return once Orthanc marks every study stable (``StableAge`` seconds without a new instance);
    ``TimeoutError`` after ``timeout`` seconds."""
    pending = set(study_ids)
    deadline = time.monotonic() + timeout
    while pending:
        pending = {study for study in pending if not pacs.get_study(study).is_stable}
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{len(pending)} uploaded study(ies) not stable after {timeout:g} s")
        time.sleep(poll)


def upload_directory(
    pacs: Pacs,
    directory: Path,
    *,
    workers: int = 4,
    show_progress: bool = False,
    stable_timeout: float | None = None,
) -> UploadReport:
    """Every Part-10 file under ``directory`` into Orthanc. A file Orthanc refuses is listed in
    ``failed`` with the reason and the others still go; losing Orthanc itself stops the upload. With
    ``stable_timeout``, then wait (that long at most) until the studies the files went into are stable."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    files = list(dicom_files(directory))
    report = UploadReport()

    def send(path: Path) -> tuple[Path, str | None, str]:
        try:
            stored = pacs.upload_instance(path.read_bytes())
            report.study_ids.add(stored.study_id)
            return path, stored.status, ""
        except (PacsProtocolError, PacsNotFound) as exc:  # this file was refused; the rest may pass
            return path, None, exc.detail
        except OSError as exc:
            return path, None, str(exc)

    with Progress(disable=not show_progress, transient=True) as progress:
        task = progress.add_task("uploading", total=len(files))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, status, reason in pool.map(send, files):
                progress.advance(task)
                if status == "AlreadyStored":
                    report.already_stored += 1
                elif status is not None:
                    report.stored += 1
                else:
                    report.failed.append((path, reason))
    if stable_timeout is not None:
        wait_until_stable(pacs, report.study_ids, stable_timeout)
    log.info(
        "upload of %s: %d stored, %d already stored, %d failed",
        directory,
        report.stored,
        report.already_stored,
        len(report.failed),
    )
    return report
