"""Study assembly against a real Orthanc: mapping a messy clinical study, exact volume lattices, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from tests.geometry import as_nifti, dcm2niix, index_map, reindex
from tests.orthanc import OrthancEndpoint, upload_folder
from tests.studies import UploadedStudy, clone_study, drop_instance
from tumorseg.errors import AmbiguousSeries, BrokenSeries, ModalityMissing
from tumorseg.imaging import grid as g
from tumorseg.imaging.volume import load_series
from tumorseg.pacs import OrthancClient
from tumorseg.sequences import SEQUENCES
from tumorseg.study.assemble import assemble
from tumorseg_devkit.synth.to_dicom import ConvertedStudy

pytestmark = pytest.mark.integration


def test_clinical_study_maps_four_of_four_and_picks_the_newest(
    clinical_study: UploadedStudy, orthanc_client: OrthancClient
) -> None:
    assert len(orthanc_client.find_studies(clinical_study.patient_id)) == 2
    assembled = assemble(orthanc_client, clinical_study.patient_id)
    converted = clinical_study.converted
    assert assembled.study.study_instance_uid == converted.study_instance_uid  # the newer one
    for modality in SEQUENCES:
        assert (
            assembled.mapping.series[modality].series_instance_uid
            == converted.get(modality).series_instance_uid
        )
    rejected = {info.series_instance_uid: reason for info, reason in assembled.mapping.rejected}
    for decoy in ("localizer", "dwi", "adc"):
        assert converted.get(decoy).series_instance_uid in rejected
    prior = assemble(orthanc_client, clinical_study.patient_id, converted.studies[1].study_instance_uid)
    assert (
        prior.mapping.series["flair"].series_instance_uid
        == converted.get("flair", prior=True).series_instance_uid
    )


@pytest.mark.parametrize("modality", SEQUENCES)
def test_loaded_volume_is_on_dcm2niix_lattice(
    modality: str, clinical_study: UploadedStudy, orthanc_client: OrthancClient, tmp_path: Path
) -> None:
    series = assemble(orthanc_client, clinical_study.patient_id).mapping.series[modality]
    volume = load_series(orthanc_client.download_series(series), modality)
    referee = dcm2niix(clinical_study.folder(modality), tmp_path)
    ours = as_nifti(volume.image)
    perm, shift = index_map(referee.affine, referee.shape, ours.affine, ours.shape)
    on_referee = reindex(np.asarray(ours.dataobj, dtype=np.float64), perm, shift, referee.shape)
    assert np.allclose(on_referee, referee.get_fdata(), atol=1e-3 * max(1.0, float(np.abs(on_referee).max())))


@pytest.mark.parametrize("modality", SEQUENCES)
def test_truth_round_trip_through_the_model_grid_keeps_99_percent(
    modality: str, clinical_study: UploadedStudy, orthanc_client: OrthancClient
) -> None:
    series = assemble(orthanc_client, clinical_study.patient_id).mapping.series[modality]
    lattice = load_series(orthanc_client.download_series(series), modality).image
    truth = sitk.ReadImage(str(next(clinical_study.case_dir.glob("*_seg.nii.gz"))))
    direct = sitk.GetArrayFromImage(g.resample_labels(truth, lattice)) > 0
    grid = g.model_grid(lattice)
    via_grid = sitk.GetArrayFromImage(g.resample_labels(g.resample_labels(truth, grid), lattice)) > 0
    assert direct.sum() > 100
    assert np.count_nonzero(direct & ~via_grid) / np.count_nonzero(direct) < 0.01


def test_missing_t1ce_names_what_is_missing(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, orthanc_client: OrthancClient, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path, modalities=("flair", "t1", "t2"))
    upload_folder(orthanc, tmp_path)
    with pytest.raises(ModalityMissing, match="no usable series for t1ce;") as caught:
        assemble(orthanc_client, patient_id)
    assert "explicitly" in caught.value.detail  # says what the user can do


def test_two_equally_good_flairs_are_ambiguous(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, orthanc_client: OrthancClient, tmp_path: Path
) -> None:
    patient_id = clone_study(plain_study, tmp_path, duplicate=("flair",))
    upload_folder(orthanc, tmp_path)
    with pytest.raises(AmbiguousSeries, match="flair") as caught:
        assemble(orthanc_client, patient_id)
    uids = {
        pydicom.dcmread(next((tmp_path / name).glob("*.dcm"))).SeriesInstanceUID
        for name in ("flair", "flair-copy")
    }
    assert all(uid in caught.value.detail for uid in uids)


def test_missing_slice_breaks_the_series_by_name(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, orthanc_client: OrthancClient, tmp_path: Path
) -> None:
    middle = plain_study.get("t2").n_files // 2
    patient_id = clone_study(plain_study, tmp_path, edit=drop_instance("t2", middle))
    upload_folder(orthanc, tmp_path)
    series = assemble(orthanc_client, patient_id).mapping.series["t2"]
    with pytest.raises(BrokenSeries, match="missing slice") as caught:
        load_series(orthanc_client.download_series(series), f"t2 {series.series_instance_uid}")
    assert series.series_instance_uid in caught.value.detail


def test_non_mr_study_says_there_is_no_mr(
    plain_study: ConvertedStudy, orthanc: OrthancEndpoint, orthanc_client: OrthancClient, tmp_path: Path
) -> None:
    def as_ct(modality: str, n: int, ds: pydicom.Dataset) -> pydicom.Dataset:
        ds.Modality = "CT"
        return ds

    patient_id = clone_study(plain_study, tmp_path, edit=as_ct)
    upload_folder(orthanc, tmp_path)
    with pytest.raises(ModalityMissing, match="(?i)no MR"):
        assemble(orthanc_client, patient_id)
