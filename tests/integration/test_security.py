"""Security against real processes: which DICOM peers Orthanc accepts C-STORE from, and the service's
refusal of cross-site state-changing requests.

The Orthanc here is the Debian one with the project's ``services/orthanc/orthanc.json`` (the file compose
deploys); only ``DicomModalities`` gains a test modality on 127.0.0.1, declared with the same permissions
as the shipped example. dcmtk's ``storescu`` is the sending scanner.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import generate_uid

from tests.dicom_factory import mr_instance, unique_patient_id
from tests.orthanc import OrthancEndpoint, segment_settings
from tumorseg.api.main import create_app
from tumorseg.pipeline import Segmenter, SegmentRequest
from tumorseg.schema import SegmentResult
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.paths import ORTHANC_CONFIG

pytestmark = pytest.mark.integration

SHIPPED = json.loads(ORTHANC_CONFIG.read_text())
CALLED_AET = SHIPPED["DicomAet"]
TEST_AET = "TUMORSEGTEST"


@pytest.fixture(scope="module")
def dicom_orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOrthanc]:
    """The shipped configuration plus one declared modality on 127.0.0.1 (AE title ``TUMORSEGTEST``)."""
    if shutil.which("storescu") is None:
        pytest.skip("dcmtk's storescu is not installed (make setup installs it)")
    example = next(iter(SHIPPED["DicomModalities"].values()))
    declared = {
        **SHIPPED["DicomModalities"],
        "tumorseg-test": {**example, "AET": TEST_AET, "Host": "127.0.0.1"},
    }
    with LocalOrthanc(
        tmp_path_factory.mktemp("dicom-orthanc"), overrides={"DicomModalities": declared}
    ) as server:
        yield server


@pytest.fixture
def instance(tmp_path: Path) -> tuple[str, Path]:
    """One small MR instance of a new patient, as a file: (PatientID, path)."""
    patient_id = unique_patient_id("CSTORE")
    path = tmp_path / "instance.dcm"
    path.write_bytes(mr_instance(patient_id, generate_uid(), generate_uid(), 0))
    return patient_id, path


def storescu(orthanc: LocalOrthanc, path: Path, *, calling: str, called: str = CALLED_AET) -> str:
    """Send ``path`` with C-STORE; the tool's output. Raises if storescu reports a failure."""
    done = subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(orthanc.dicom_port), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:
        raise subprocess.CalledProcessError(done.returncode, done.args, done.stdout, done.stderr)
    return done.stdout + done.stderr


def stored(orthanc: LocalOrthanc, patient_id: str) -> int:
    answer = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Instance", "Query": {"PatientID": patient_id}},
        auth=orthanc.auth,
        timeout=30,
    )
    answer.raise_for_status()
    return len(answer.json())


def refused(orthanc: LocalOrthanc, path: Path, **titles: str) -> str:
    with pytest.raises(subprocess.CalledProcessError) as failure:
        storescu(orthanc, path, **titles)
    return str(failure.value.stderr)


def test_the_shipped_configuration_accepts_only_declared_modalities() -> None:
    assert SHIPPED["DicomAlwaysAllowStore"] is False
    assert SHIPPED["DicomCheckCalledAet"] is True
    assert SHIPPED["DicomCheckModalityHost"] is True
    for name, modality in SHIPPED["DicomModalities"].items():
        # the example is a documentation address (RFC 5737): it matches no real peer
        assert modality["Host"].startswith(("192.0.2.", "198.51.100.", "203.0.113.")), name


def test_c_store_from_a_declared_modality_is_stored(
    dicom_orthanc: LocalOrthanc, instance: tuple[str, Path]
) -> None:
    patient_id, path = instance
    storescu(dicom_orthanc, path, calling=TEST_AET)
    assert stored(dicom_orthanc, patient_id) == 1


def test_c_store_from_an_undeclared_calling_ae_is_refused(
    dicom_orthanc: LocalOrthanc, instance: tuple[str, Path]
) -> None:
    patient_id, path = instance
    assert "Calling AE Title Not Recognized" in refused(dicom_orthanc, path, calling="SOMESCANNER")
    assert stored(dicom_orthanc, patient_id) == 0


def test_c_store_to_a_wrong_called_ae_is_refused(
    dicom_orthanc: LocalOrthanc, instance: tuple[str, Path]
) -> None:
    patient_id, path = instance
    assert "Called AE Title Not Recognized" in refused(
        dicom_orthanc, path, calling=TEST_AET, called="ANYPACS"
    )
    assert stored(dicom_orthanc, patient_id) == 0


def test_a_declared_ae_title_from_another_host_is_refused(
    dicom_orthanc: LocalOrthanc, instance: tuple[str, Path]
) -> None:
    """The shipped example's AE title, sent from 127.0.0.1 instead of its declared host: an AE title
    alone is no credential."""
    patient_id, path = instance
    example_aet = next(iter(SHIPPED["DicomModalities"].values()))["AET"]
    assert "Not Recognized" in refused(dicom_orthanc, path, calling=example_aet)
    assert stored(dicom_orthanc, patient_id) == 0


# -- cross-site requests (the service in-process, the session's Orthanc) --------------------------------

EVIL = "http://evil.example"


Service = Callable[..., AbstractContextManager[TestClient]]


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The PatientIDs the pipeline was run for: a refused request never gets there."""
    seen: list[str] = []
    run = Segmenter.run

    def recorded(self: Segmenter, request: SegmentRequest, *args: Any, **kwargs: Any) -> SegmentResult:
        seen.append(request.patient_id)
        return run(self, request, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "run", recorded)
    return seen


@pytest.fixture
def service(orthanc: OrthancEndpoint, random_model: Path, tmp_path: Path) -> Service:
    """The app in-process (open, or with ``api_key=...``) on the session's Orthanc, as ``testserver``."""

    @contextmanager
    def start(**extra: Any) -> Iterator[TestClient]:
        settings = segment_settings(orthanc.url, orthanc.auth, random_model, tmp_path / "results", **extra)
        with TestClient(create_app(settings), base_url="http://testserver") as client:
            yield client

    return start


def test_a_cross_site_post_is_refused_before_any_work(service: Service, asked: list[str]) -> None:
    with service() as client:
        for origin in (EVIL, "null", "http://testserver.evil.example", "https://testserver:8443"):
            answer = client.post("/segment/ANYONE", headers={"Origin": origin, "X-Request-ID": "xsite-1"})
            assert answer.status_code == 403, (origin, answer.text)
            assert answer.json()["code"] == "cross_site_request"
            assert set(answer.json()) == {"detail", "code"}
            assert answer.headers["X-Request-ID"] == "xsite-1"
        # a form post, the kind a page can send without a preflight
        form = client.post(
            "/segment/ANYONE",
            headers={"Origin": EVIL, "Content-Type": "application/x-www-form-urlencoded"},
            content=b"x=1",
        )
        assert form.status_code == 403
        assert asked == []


def test_same_origin_and_scripted_posts_are_handled_normally(service: Service, asked: list[str]) -> None:
    with service() as client:
        nobody = unique_patient_id("NOBODY")
        same = client.post(f"/segment/{nobody}", headers={"Origin": "http://testserver"})
        scripted = client.post(f"/segment/{nobody}")  # curl and scripts send no Origin
        assert same.status_code == scripted.status_code == 404, (same.text, scripted.text)
        assert same.json()["code"] == "patient_not_found"
        assert asked == [nobody, nobody]


def test_reads_with_a_foreign_origin_are_not_blocked(service: Service) -> None:
    with service() as client:
        assert client.get("/health", headers={"Origin": EVIL}).status_code == 200
        missing = client.get(f"/results/{'0' * 32}", headers={"Origin": EVIL})
        assert missing.status_code == 404 and missing.json()["code"] != "cross_site_request"


def test_the_refusal_applies_with_an_api_key_too(service: Service, asked: list[str]) -> None:
    key = secrets.token_urlsafe(32)
    with service(api_key=key) as client:
        with_key = client.post("/segment/ANYONE", headers={"Origin": EVIL, "X-API-Key": key})
        without = client.post("/segment/ANYONE", headers={"Origin": EVIL})
        assert with_key.status_code == without.status_code == 403
        assert asked == []
        nobody = unique_patient_id("NOBODY")
        own = client.post(f"/segment/{nobody}", headers={"Origin": "http://testserver", "X-API-Key": key})
        assert own.status_code == 404 and asked == [nobody]
