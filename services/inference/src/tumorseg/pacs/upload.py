"""Upload a folder of DICOM files to Orthanc, in parallel, reporting each file that failed."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import Progress

from tumorseg.errors import PacsNotFound, PacsProtocolError
from tumorseg.pacs.client import OrthancClient

log = logging.getLogger(__name__)


def is_dicom_file(path: Path) -> bool:
    """Part-10 files only: 128-byte preamble then ``DICM``."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def dicom_files(directory: Path) -> Iterator[Path]:
    for path in sorted(directory.rglob("*")):
        if path.is_file() and is_dicom_file(path):
            yield path


@dataclass
class UploadReport:
    stored: int = 0
    already_stored: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.stored + self.already_stored + len(self.failed)


def upload_directory(
    pacs: OrthancClient, directory: Path, *, workers: int = 4, show_progress: bool = False
) -> UploadReport:
    """Every Part-10 file under ``directory`` into Orthanc. A file Orthanc refuses is listed in
    ``failed`` with the reason and the others still go; losing Orthanc itself stops the upload."""
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder")
    files = list(dicom_files(directory))
    report = UploadReport()

    def send(path: Path) -> tuple[Path, str | None, str]:
        try:
            return path, pacs.upload_instance(path.read_bytes()).status, ""
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
    log.info(
        "upload of %s: %d stored, %d already stored, %d failed",
        directory,
        report.stored,
        report.already_stored,
        len(report.failed),
    )
    return report
