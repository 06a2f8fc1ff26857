"""The Orthanc client against a real Orthanc (see tests/conftest.py; ``silent_server`` is in
tests/integration/conftest.py)."""

from __future__ import annotations

from dataclasses import replace

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.uid import generate_uid

from tests.dicom_factory import mr_series, unique_patient_id
from tests.orthanc import OrthancEndpoint
from tumorseg.errors import PacsNotFound, PacsProtocolError, PacsRejected, PacsTimeout, PacsUnavailable
from tumorseg.pacs import OrthancClient
from tumorseg_devkit.local import free_port

pytestmark = pytest.mark.integration


def upload(client: OrthancClient, files: list[bytes]) -> str:
    """Upload and return the Orthanc id of the study."""
    results = [client.upload_instance(f) for f in files]
    assert {r.status for r in results} == {"Success"}
    return results[0].study_id


def test_system_reports_the_version(orthanc_client: OrthancClient) -> None:
    info = orthanc_client.system()
    assert info["Version"].count(".") >= 1
    assert orthanc_client.version() == info["Version"]


def test_records_carry_uids_and_orthanc_ids_and_uids_alone_fetch_a_series(
    orthanc_client: OrthancClient,
) -> None:
    pid, study_uid = unique_patient_id("UIDS"), generate_uid()
    files = mr_series(pid, study_uid, n=3)
    study_id = upload(orthanc_client, files)
    (study,) = orthanc_client.find_studies(pid)
    (series,) = orthanc_client.list_series(study_id)
    assert (study.study_instance_uid, study.orthanc_id) == (study_uid, study_id)
    assert (series.study_instance_uid, series.orthanc_id) == (study_uid, series.key)
    instance = orthanc_client.first_instance(series)
    assert instance.orthanc_id in orthanc_client.instance_ids(series.key)
    assert (instance.study_instance_uid, instance.series_instance_uid) == (
        study_uid,
        series.series_instance_uid,
    )
    assert instance.sop_instance_uid in {str(pydicom.dcmread(DicomBytesIO(f)).SOPInstanceUID) for f in files}
    bare = replace(series, key="", orthanc_id=None)  # as another client lists it: UIDs only
    assert len(orthanc_client.download_series(bare)) == 3
    assert orthanc_client.first_instance(bare) == instance
    patient = orthanc_client.patient_of_study(study_id)
    assert patient.patient_id == pid
    stored = orthanc_client.upload_instance(files[0])
    assert stored.orthanc_id == stored.instance_id and stored.orthanc_id in orthanc_client.instance_ids(
        series.key
    )


def test_patient_id_wildcards_match_only_themselves(orthanc_client: OrthancClient) -> None:
    base = unique_patient_id("WILD")
    ids = [f"{base}*A", f"{base}XA", f"{base}?A", f"{base}YA", f"{base}A"]
    for pid in ids:
        upload(orthanc_client, mr_series(pid, generate_uid(), n=1))
    for pid in ids:
        found = orthanc_client.find_studies(pid)
        assert [s.patient_id for s in found] == [pid], pid
    assert orthanc_client.find_studies(f"{base}*") == []


def test_patient_with_two_studies_lists_both_oldest_first(orthanc_client: OrthancClient) -> None:
    pid = unique_patient_id("TWO")
    old, new = generate_uid(), generate_uid()
    upload(orthanc_client, mr_series(pid, new, n=2, study_date="20260301"))
    upload(orthanc_client, mr_series(pid, old, n=2, study_date="20240115"))
    found = orthanc_client.find_studies(pid)
    assert [s.study_instance_uid for s in found] == [old, new]
    assert [s.study_date for s in found] == ["20240115", "20260301"]
    assert all(s.series_count == 1 for s in found)


def test_unknown_patient_finds_nothing(orthanc_client: OrthancClient) -> None:
    assert orthanc_client.find_studies(unique_patient_id("NOBODY")) == []


def test_series_listing_carries_instance_level_tags(orthanc_client: OrthancClient) -> None:
    pid = unique_patient_id("TAGS")
    study_id = upload(
        orthanc_client, mr_series(pid, generate_uid(), n=4, series_description="t2_tirm_tra_dark-fluid")
    )
    (series,) = orthanc_client.list_series(study_id)
    assert series.series_description == "t2_tirm_tra_dark-fluid"
    assert series.modality == "MR"
    assert (series.repetition_time, series.echo_time, series.inversion_time) == (9000.0, 100.0, 2500.0)
    assert series.image_type == ("ORIGINAL", "PRIMARY", "M", "ND")
    assert series.image_orientation_patient == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert series.pixel_spacing == (1.0, 1.0)
    assert (series.rows, series.columns) == (8, 8)
    assert series.instance_count == 4


def test_series_download_is_complete_and_is_dicom(orthanc_client: OrthancClient) -> None:
    pid = unique_patient_id("DL")
    files = mr_series(pid, generate_uid(), n=12)
    study_id = upload(orthanc_client, files)
    (series,) = orthanc_client.list_series(study_id)
    progress: list[int] = []
    downloaded = orthanc_client.download_series(series, progress=progress.append)
    assert len(downloaded) == series.instance_count == len(files) == sum(progress)
    sop = {pydicom.dcmread(DicomBytesIO(b)).SOPInstanceUID for b in downloaded}
    assert sop == {pydicom.dcmread(DicomBytesIO(b)).SOPInstanceUID for b in files}
    assert len(orthanc_client.download_series(series.key)) == len(files)


def test_a_series_downloads_through_the_dicomweb_plugin_as_the_same_files(
    orthanc: OrthancEndpoint, orthanc_client: OrthancClient
) -> None:
    """Orthanc with its DICOMweb plugin (the test Orthanc loads Debian's, the compose stack enables it):
    one WADO-RS request per series, and exactly the files one request per instance gives."""
    if orthanc.local is None and orthanc_client.series_transport() is None:
        pytest.skip("the Orthanc under test (TUMORSEG_TEST_ORTHANC_URL) runs no DICOMweb plugin")
    transport = orthanc_client.series_transport()
    assert transport is not None and transport.url == f"{orthanc.url}/dicom-web"
    files = mr_series(unique_patient_id("WADO"), generate_uid(), n=12)
    (series,) = orthanc_client.list_series(upload(orthanc_client, files))
    requests: list[str] = []
    transport._client.event_hooks["request"] = [lambda request: requests.append(request.url.path)]
    progress: list[int] = []
    downloaded = orthanc_client.download_series(series, progress=progress.append)
    assert requests == [f"/dicom-web/studies/{series.study_instance_uid}/series/{series.series_instance_uid}"]
    one_by_one = [orthanc_client.download_instance(i) for i in orthanc_client.instance_ids(series.key)]
    assert sorted(downloaded) == sorted(one_by_one) and sum(progress) == len(files)


def test_second_upload_is_already_stored(orthanc_client: OrthancClient) -> None:
    files = mr_series(unique_patient_id("AGAIN"), generate_uid(), n=1)
    assert orthanc_client.upload_instance(files[0]).status == "Success"
    assert orthanc_client.upload_instance(files[0]).status == "AlreadyStored"


def test_non_dicom_upload_is_refused(orthanc_client: OrthancClient) -> None:
    with pytest.raises(PacsProtocolError):
        orthanc_client.upload_instance(b"this is not DICOM")


def test_unknown_resources_are_not_found(orthanc_client: OrthancClient) -> None:
    with pytest.raises(PacsNotFound):
        orthanc_client.list_series("0000000-no-such-study")
    with pytest.raises(PacsNotFound):
        orthanc_client.download_instance("0000000-no-such-instance")


def test_wrong_password_is_rejected(orthanc: OrthancEndpoint) -> None:
    with OrthancClient(orthanc.url, (orthanc.username, "wrong-password")) as client:
        with pytest.raises(PacsRejected):
            client.system()
    with OrthancClient(orthanc.url, None) as client, pytest.raises(PacsRejected):
        client.find_studies("anyone")


def test_closed_port_is_unavailable() -> None:
    with OrthancClient(f"http://127.0.0.1:{free_port()}", None, timeout=5) as client:
        with pytest.raises(PacsUnavailable):
            client.system()


def test_hung_server_times_out(silent_server: str) -> None:
    with OrthancClient(silent_server, None, timeout=0.5) as client, pytest.raises(PacsTimeout):
        client.system()


def test_a_series_the_plugin_cannot_serve_downloads_one_instance_at_a_time(
    orthanc_client: OrthancClient,
) -> None:
    """The same series stored under two PatientIDs is two series in Orthanc, and the DICOMweb plugin, which
    finds a series by its UIDs, refuses both (404): each still downloads whole, one request per instance,
    and the plugin is looked up again at the next download."""
    if orthanc_client.series_transport() is None:
        pytest.skip("the Orthanc under test runs no DICOMweb plugin")
    files = mr_series(unique_patient_id("TWICE"), generate_uid(), n=4)
    (series,) = orthanc_client.list_series(upload(orthanc_client, files))
    other = unique_patient_id("TWICE")
    for data in files:
        dataset = pydicom.dcmread(DicomBytesIO(data))
        dataset.PatientID = other
        copy = DicomBytesIO()
        dataset.save_as(copy, enforce_file_format=True)
        assert orthanc_client.upload_instance(copy.getvalue()).status == "Success"
    downloaded = orthanc_client.download_series(series)
    assert sorted(downloaded) == sorted(files)
    assert orthanc_client._wado_until == 0.0  # dropped: looked up again next time
    assert orthanc_client.series_transport() is not None
