"""The PACS change feed (``Pacs.changes``) and the auto-trigger over it, against a real Orthanc over both
protocols: the trigger keys a study's job exactly as the per-protocol triggers before it did (the key
recomputed here from the PACS's raw answers with that formula), so an upgrade makes no second job; the
feed reports a complete study once per cursor, and a cursor it did not give starts it afresh."""

from __future__ import annotations

import hashlib
import time
from datetime import date
from pathlib import Path

import httpx
import pydicom
import pytest

from tests.orthanc import LocalOrthanc, OrthancEndpoint, upload_folder
from tests.studies import ConvertedStudy, clone_study
from tumorseg.jobs.trigger import AutoTrigger
from tumorseg.jobstore import JobStore
from tumorseg.pacs import Pacs
from tumorseg.pacs.dicomweb import DicomwebClient
from tumorseg.results import new_result_id
from tumorseg.schema import Job, JobOrigin, JobRequest

pytestmark = pytest.mark.integration

MODEL_TAG = "tiny 0"
DERIVED = {"SEG", "SR", "PR", "KO", "RTSTRUCT"}


class _Recorder:
    """What the trigger asks of ``Jobs``: the job store, and a submit that records the job and its key
    (nothing runs it: the key is under test, not the segmentation)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.keys: list[str] = []

    def submit(self, request: JobRequest, origin: JobOrigin = "api", key: str | None = None) -> Job:
        self.keys.append(str(key))
        return self.store.create(request, origin, new_result_id(), key)


def _key_as_before(study_uid: str, patient_id: str, images_version: str) -> str:
    """The job key of the triggers before the change feed (``job_key`` of commit 4e0b960)."""
    request = JobRequest(patient_id=patient_id, study=study_uid, store_seg=True)
    options = request.model_dump_json(exclude={"patient_id", "study"})
    return hashlib.sha256("|".join((study_uid, images_version, MODEL_TAG, options)).encode()).hexdigest()


def _versions_as_before(orthanc: OrthancEndpoint, study_uid: str) -> tuple[str, str]:
    """The images versions the two triggers computed, from raw answers: over Orthanc REST the newest
    LastUpdate of the image series; over DICOMweb a hash of the sorted "SeriesInstanceUID:instances"."""
    with httpx.Client(base_url=orthanc.url, auth=orthanc.auth, timeout=30) as http:
        (found,) = http.post("/tools/lookup", content=study_uid).json()
        series = http.get(f"/studies/{found['ID']}/series").json()
        rest = max(s["LastUpdate"] for s in series if s["MainDicomTags"]["Modality"] not in DERIVED)
        qido = http.get(
            f"/dicom-web/studies/{study_uid}/series",
            params={"includefield": ["Modality", "NumberOfSeriesRelatedInstances"]},
        ).json()
    web = sorted(
        f"{s['0020000E']['Value'][0]}:{s['00201209']['Value'][0]}"
        for s in qido
        if s["00080060"]["Value"][0] not in DERIVED
    )
    return rest, hashlib.sha256("|".join(web).encode()).hexdigest()[:16]


def _keys_made(pacs: Pacs, results: Path, settle_s: float = 1.5) -> list[str]:
    """The keys of the jobs the trigger makes over ``pacs`` into a new job store, running on a while
    after the first (more polls: no second job)."""
    store = JobStore(results)
    jobs = _Recorder(store)
    trigger = AutoTrigger(pacs, jobs, MODEL_TAG, poll_s=0.2)  # type: ignore[arg-type]
    trigger.start()
    try:
        deadline = time.monotonic() + 30
        while not jobs.keys and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(settle_s)
    finally:
        trigger.stop()
        store.close()
    return jobs.keys


def test_the_trigger_keys_a_study_as_before_over_both_protocols(
    own_orthanc: LocalOrthanc, plain_study: ConvertedStudy, tmp_path: Path
) -> None:
    orthanc = OrthancEndpoint(own_orthanc.url, *own_orthanc.auth)

    def today(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        ds.StudyDate = ds.SeriesDate = date.today().strftime("%Y%m%d")  # in DICOMweb's polled window
        return ds

    patient_id = clone_study(plain_study, tmp_path / "study", edit=today)
    upload_folder(orthanc, tmp_path / "study")  # stable before the trigger starts
    with orthanc.client() as rest:
        (study,) = rest.find_studies(patient_id)
    rest_version, web_version = _versions_as_before(orthanc, study.study_instance_uid)
    rest_key = _key_as_before(study.study_instance_uid, patient_id, rest_version)
    web_key = _key_as_before(study.study_instance_uid, patient_id, web_version)
    assert rest_key != web_key  # the two versions differ: each protocol's is checked below

    with orthanc.client() as rest:
        assert _keys_made(rest, tmp_path / "rest") == [rest_key]
    with DicomwebClient(f"{orthanc.url}/dicom-web", orthanc.auth, stable_s=0.3) as web:
        assert _keys_made(web, tmp_path / "web") == [web_key]


def _follow(pacs: Pacs, cursor: str) -> tuple[list[str], str]:
    """The PatientIDs of the studies the feed gives after ``cursor`` (every page), and its cursor then."""
    patients: list[str] = []
    while True:
        batch = pacs.changes(cursor)
        patients += [s.patient_id for s in batch.studies]
        cursor = batch.cursor
        if not batch.more:
            return patients, cursor


def test_orthanc_s_feed_reports_a_stable_study_once_per_cursor(
    own_orthanc: LocalOrthanc, plain_study: ConvertedStudy, tmp_path: Path
) -> None:
    orthanc = OrthancEndpoint(own_orthanc.url, *own_orthanc.auth)
    with orthanc.client() as rest:
        start = rest.changes(None)
        assert start.studies == () and not start.more  # an empty Orthanc: nothing complete yet
        patient_id = clone_study(plain_study, tmp_path / "study", modalities=("t1",))
        upload_folder(orthanc, tmp_path / "study")
        patients, cursor = _follow(rest, start.cursor)
        assert patients == [patient_id]  # its StableStudy event, once
        assert _follow(rest, start.cursor)[0] == patients  # not acknowledged: given again
        assert _follow(rest, cursor)[0] == []  # acknowledged: not again
        assert [s.patient_id for s in rest.changes(None).studies] == [patient_id]  # a start reconciles
        foreign = rest.changes("poll:0123456789ab:3")  # another protocol's cursor: the log's end
        assert foreign.studies == () and int(foreign.cursor) >= int(cursor)
