"""The command line against a real Orthanc: upload (idempotent, failures listed), inspect, and what
`worker` needs."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.orthanc import OrthancEndpoint, cli_with_env
from tests.studies import UploadedStudy, clone_study
from tumorseg.cli import app
from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


@pytest.fixture
def cli_env(orthanc: OrthancEndpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[CliRunner]:
    with cli_with_env(monkeypatch, orthanc.env()) as runner:
        yield runner


def test_upload_counts_and_is_idempotent(
    cli_env: CliRunner, plain_study: ConvertedStudy, orthanc: OrthancEndpoint, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path / "study")
    (tmp_path / "study" / "notes.txt").write_text("not DICOM, skipped")
    files = sum(s.n_files for s in plain_study.series)
    first = cli_env.invoke(app, ["upload", str(tmp_path / "study")])
    assert first.exit_code == 0, first.output
    assert f"{files} stored, 0 already stored, 0 failed" in first.output
    with orthanc.client() as pacs:
        (study,) = pacs.find_studies(patient_id)
        counts = [series.instance_count for series in pacs.list_series(study.key)]
    assert sum(counts) == files
    again = cli_env.invoke(app, ["upload", str(tmp_path / "study")])
    assert again.exit_code == 0 and f"0 stored, {files} already stored, 0 failed" in again.output
    with orthanc.client() as pacs:
        assert sum(s.instance_count for s in pacs.list_series(study.key)) == files


def test_upload_lists_refused_files_and_fails(cli_env: CliRunner, tmp_path: Path) -> None:
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"\0" * 128 + b"DICM" + b"garbage that Orthanc cannot parse" * 4)
    result = cli_env.invoke(app, ["upload", str(tmp_path)])
    assert result.exit_code == 1
    assert "1 failed" in result.output and "broken.dcm" in result.output


def test_inspect_reports_the_mapping_segment_would_use(
    cli_env: CliRunner, clinical_study: UploadedStudy
) -> None:
    result = cli_env.invoke(app, ["inspect", clinical_study.patient_id, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["orthanc"]["reachable"] is True
    assert report["study_instance_uid"] == clinical_study.converted.study_instance_uid
    for modality in SEQUENCES:
        expected = clinical_study.converted.get(modality)
        assert report["series"][modality]["series_instance_uid"] == expected.series_instance_uid
        assert report["series"][modality]["series_description"] == expected.series_description
    rejected = {r["series_instance_uid"]: r["reason"] for r in report["rejected"]}
    assert clinical_study.converted.get("localizer").series_instance_uid in rejected
    assert len(report["studies"]) == 2


def test_inspect_unknown_patient_exits_non_zero(cli_env: CliRunner) -> None:
    result = cli_env.invoke(app, ["inspect", "NO-SUCH-PATIENT-0815"])
    assert result.exit_code == 1 and "no study for PatientID" in result.output


def test_a_worker_without_a_queue_url_says_what_to_set(
    cli_env: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TUMORSEG_QUEUE_URL", raising=False)
    result = cli_env.invoke(app, ["worker"])
    assert result.exit_code == 2 and "TUMORSEG_QUEUE_URL" in result.output
