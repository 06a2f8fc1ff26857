"""The DICOM SEG goes to the PACS only after the result is saved: when Orthanc refuses the SEG, the
request fails with a PACS error but the result (mask, JSON) is kept and names no SEG, and nothing was
stored in the study. The study is uploaded first; then Orthanc is restarted with a Lua
``IncomingHttpRequestFilter`` that refuses every upload (POST /instances, HTTP 403)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.orthanc import TEST_ORTHANC, OrthancEndpoint, segment_settings, upload_folder
from tests.studies import clone_study
from tumorseg.api.main import create_app
from tumorseg.results import ResultStore
from tumorseg_devkit.local import LocalOrthanc
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration

REFUSE_UPLOADS = """
function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return not (method == 'POST' and uri == '/instances')
end
"""


@pytest.fixture
def study_in_refusing_orthanc(
    tmp_path: Path, plain_study: ConvertedStudy
) -> Iterator[tuple[OrthancEndpoint, str]]:
    patient_id = clone_study(plain_study, tmp_path / "clone")
    with LocalOrthanc(tmp_path / "orthanc", overrides=TEST_ORTHANC) as server:
        upload_folder(OrthancEndpoint(server.url, server.username, server.password), tmp_path / "clone")
    script = tmp_path / "refuse-uploads.lua"
    script.write_text(REFUSE_UPLOADS)
    refusing = LocalOrthanc(
        tmp_path / "orthanc",
        password=server.password,
        http_port=server.http_port,
        overrides={**TEST_ORTHANC, "LuaScripts": [str(script)]},
    )
    with refusing:
        yield OrthancEndpoint(refusing.url, refusing.username, refusing.password, local=refusing), patient_id


def test_a_refused_seg_leaves_the_saved_result_and_no_seg(
    study_in_refusing_orthanc: tuple[OrthancEndpoint, str], random_model: Path, tmp_path: Path
) -> None:
    refusing_orthanc, patient_id = study_in_refusing_orthanc
    results = tmp_path / "results"
    app = create_app(segment_settings(refusing_orthanc.url, refusing_orthanc.auth, random_model, results))
    with TestClient(app) as client:
        answer = client.post(f"/segment/{patient_id}", params={"store_seg": "true"})
        assert answer.status_code == 502, answer.text  # Orthanc refused the SEG upload (HTTP 403)
        assert answer.json()["code"] == "pacs_rejected"
        saved = [p.name for p in results.iterdir() if p.is_dir() and not p.name.startswith(".")]
        assert len(saved) == 1, saved  # the result was saved before the SEG was sent
        result = ResultStore(results).read(saved[0])
        assert result.dicom_seg is None and result.patient_id == patient_id
        assert client.get(f"/results/{saved[0]}/mask.nii.gz").status_code == 200
    with refusing_orthanc.client() as pacs:
        (study,) = pacs.find_studies(patient_id)
        assert {s.modality for s in pacs.list_series(study.key)} == {"MR"}
