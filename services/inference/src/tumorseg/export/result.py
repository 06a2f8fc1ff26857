"""The result JSON (CONTRACT.md "Result JSON"), built from what the pipeline produced."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import SimpleITK as sitk

from tumorseg import __version__
from tumorseg.export.dicom_seg import StoredSeg
from tumorseg.imaging.postprocess import voxel_volume_mm3
from tumorseg.imaging.preprocess import MODALITIES, ModelInput
from tumorseg.imaging.volume import SeriesVolume
from tumorseg.labels import LABEL_NAMES, volumes_ml
from tumorseg.model.package import ModelManifest
from tumorseg.study.choose import AssembledStudy


def build_result(
    result_id: str,
    patient_id: str,
    assembled: AssembledStudy,
    reference_modality: str,
    reference: SeriesVolume,
    mask: sitk.Image,
    manifest: ModelManifest,
    dicom_seg: StoredSeg | None,
    model_input: ModelInput,
    registration: bool,
) -> dict[str, Any]:
    """Everything but ``timings_s``, which the pipeline adds once the export is timed. ``model_input``
    brings what the clinical-input stages found (co-registration, brain extraction, warnings)."""
    series = assembled.mapping.series
    labels = sitk.GetArrayViewFromImage(mask).astype(np.uint8, copy=False)
    volumes = volumes_ml(labels, voxel_volume_mm3(reference.image))
    return {
        "result_id": result_id,
        "patient_id": patient_id,
        "study_instance_uid": assembled.study.study_instance_uid,
        "series": {
            m: {
                "series_instance_uid": series[m].series_instance_uid,
                "series_description": series[m].series_description,
                "orthanc_id": series[m].orthanc_id,
            }
            for m in MODALITIES
        },
        "reference": {"modality": reference_modality, "series_instance_uid": reference.series_instance_uid},
        "labels": dict(LABEL_NAMES),
        "volumes_ml": {k: round(v, 3) for k, v in volumes.items()},
        "mask_url": f"/results/{result_id}/mask.nii.gz",
        "preview_url": f"/results/{result_id}/preview.png",
        "dicom_seg": dicom_seg.to_json() if dicom_seg else None,
        "mask": {
            "shape": list(mask.GetSize()),
            "spacing": list(mask.GetSpacing()),
            "origin": list(mask.GetOrigin()),
            "direction": list(mask.GetDirection()),
        },
        "model": {"name": manifest.name, "version": manifest.version},
        "mapping_notes": list(assembled.mapping.notes),
        "registration": {
            "enabled": registration,
            "series": {m: r.to_json() for m, r in model_input.registrations.items()},
        },
        "brain_extraction": dict(model_input.brain_extraction),
        "warnings": list(model_input.warnings),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tumorseg_version": __version__,
    }
