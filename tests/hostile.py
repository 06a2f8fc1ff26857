"""Hostile studies for the hardening tests: clones of a converted phantom study with edited headers, and a
served ``tumorseg serve`` process whose peak memory the tests can read.

Plain helpers, no fixtures (those live in the test module).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pydicom

from tests.service import running_service
from tests.studies import Edit, clone_study
from tumorseg.pacs import OrthancClient
from tumorseg.pacs.upload import UploadReport, upload_directory
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

GIB = 2**30

# -- a served process ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """A running ``tumorseg serve``: its base URL and process id."""

    url: str
    pid: int

    def peak_rss(self) -> int:
        """The process's peak resident set size (``VmHWM`` of /proc/<pid>/status), bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError(f"no VmHWM in /proc/{self.pid}/status")

    def alive(self) -> bool:
        return Path(f"/proc/{self.pid}").exists()


def child_listening_on(port: int) -> int:
    """The pid of this process's child started with ``--port <port>`` (how ``LocalService`` runs it)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == me and b"serve" in cmdline and str(port).encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no child process of {me} serves port {port}")


@contextmanager
def served(env: dict[str, str], work: Path) -> Iterator[Served]:
    """``running_service`` with ``env``, its log in ``work/service.log``; yields the URL and the pid."""
    with running_service(env, work / "service.log", work, timeout=180.0) as url:
        port = urlsplit(url).port
        assert port is not None
        yield Served(url, child_listening_on(port))


@dataclass(frozen=True)
class Answer:
    response: httpx.Response
    seconds: float

    @property
    def body(self) -> dict[str, object]:
        body = self.response.json()
        assert isinstance(body, dict), self.response.text
        return body


def post_segment(url: str, patient_id: str, timeout: float = 300.0, **params: str) -> Answer:
    start = time.perf_counter()
    response = httpx.post(f"{url}/segment/{patient_id}", params=params, timeout=timeout)
    return Answer(response, time.perf_counter() - start)


# -- hostile studies ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HostileStudy:
    patient_id: str
    folder: Path
    series_uids: dict[str, str]  # modality → the clone's SeriesInstanceUID
    study_uid: str


def hostile_study(plain: ConvertedStudy, out: Path, edit: Edit | None = None) -> HostileStudy:
    """A clone of ``plain`` under a new patient in ``out``, ``edit`` applied (see ``clone_study``)."""
    patient_id = clone_study(plain, out, edit=edit)
    uids, study_uid = {}, ""
    for modality in SEQUENCES:
        first = sorted((out / modality).glob("*.dcm"))[0]
        ds = pydicom.dcmread(first, stop_before_pixels=True)
        uids[modality], study_uid = str(ds.SeriesInstanceUID), str(ds.StudyInstanceUID)
    return HostileStudy(patient_id, out, uids, study_uid)


def upload(pacs: OrthancClient, folder: Path, stable_timeout: float | None = 60.0) -> UploadReport:
    """Every file of ``folder`` into Orthanc; with ``stable_timeout``, wait until the study is stable.
    The report lists the files Orthanc refused (the caller decides what that means)."""
    return upload_directory(pacs, folder, stable_timeout=stable_timeout)


def seg_series(url: str, auth: tuple[str, str], patient_id: str) -> list[dict[str, object]]:
    """The SEG series (Modality SEG) in the patient's studies, as Orthanc's REST ``/studies/{id}/series``
    lists them."""
    found: list[dict[str, object]] = []
    with OrthancClient(url, auth) as pacs, httpx.Client(base_url=url, auth=auth, timeout=30) as http:
        for study in pacs.find_studies(patient_id):
            series = http.get(f"/studies/{study.key}/series").raise_for_status().json()
            found += [s for s in series if s.get("MainDicomTags", {}).get("Modality") == "SEG"]
    return found
