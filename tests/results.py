"""A valid result JSON for tests of the result store, and a result's mask as the API serves it."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from fastapi.testclient import TestClient

from tumorseg.schema import SegmentResult


def result(rid: str) -> SegmentResult:
    """The smallest valid result JSON (the keys without defaults)."""
    uid = {"series_instance_uid": "1.2.3", "series_description": "AX FLAIR", "orthanc_id": "abc"}
    return SegmentResult.model_validate(
        {
            "result_id": rid,
            "patient_id": "P1",
            "study_instance_uid": "1.2",
            "series": {"flair": uid},
            "reference": {"modality": "flair", "series_instance_uid": "1.2.3"},
            "volumes_ml": {"et": 1.0, "tc": 2.0, "wt": 3.5},
            "mask_url": f"/results/{rid}/mask.nii.gz",
            "timings_s": dict.fromkeys(
                ("fetch", "load", "preprocess", "inference", "postprocess", "export", "total"), 0.5
            ),
        }
    )


def mask_array(client: TestClient, result: dict[str, object], path: Path) -> np.ndarray:
    """The labels of ``result``'s mask, downloaded through ``client`` to ``path``."""
    path.write_bytes(client.get(str(result["mask_url"])).content)
    return np.asarray(nib.load(path).dataobj)
