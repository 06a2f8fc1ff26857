"""An imported MONAI bundle served through POST /segment against a real Orthanc: the mask on the reference
lattice, a model without a T1 channel (the study's T1 left aside), the provenance in the result and /health.

The bundle is hand-set (a 1x1x1 convolution whose whole tumour is where the normalised FLAIR exceeds 1), so
the mask has a known source; the probabilities themselves are tested against the bundle's own pipeline in
``tests/integration/test_model_bundle.py``.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.bundles import write_bundle
from tests.geometry import dcm2niix, index_map
from tests.orthanc import OrthancEndpoint, segment_settings
from tests.studies import UploadedStudy
from tumorseg.api.main import create_app
from tumorseg.model.bundle import import_bundle

pytestmark = pytest.mark.integration

CHANNELS = {"0": "T2", "1": "FLAIR", "2": "T1Gd"}  # no T1, in an order of its own


@pytest.fixture(scope="module")
def bundle_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    weight = torch.zeros(3, 3, 1, 1, 1)
    weight[1, 1] = 12.0  # the whole tumour follows FLAIR
    network = {"_target_": "torch.nn.Conv3d", "in_channels": 3, "out_channels": 3, "kernel_size": 1}
    root = tmp_path_factory.mktemp("bundle")
    bundle = write_bundle(
        root / "bundle",
        network_def=network,
        channel_def=CHANNELS,
        state_dict={"weight": weight, "bias": torch.tensor([-30.0, -12.0, -30.0])},
    )
    return import_bundle(bundle, root / "package")


def test_an_imported_bundle_segments_a_study_on_the_reference_lattice(
    orthanc: OrthancEndpoint,
    bundle_package: Path,
    clinical_study: UploadedStudy,
    tmp_path: Path,
) -> None:
    settings = segment_settings(orthanc.url, orthanc.auth, bundle_package, tmp_path / "results")
    with TestClient(create_app(settings)) as client:
        health = client.get("/health").json()
        assert health["model"]["backend"] == "monai-bundle" and health["model"]["loaded"]
        assert health["model"]["provenance"]["bundle"] == "test_brats_bundle"
        response = client.post(f"/segment/{clinical_study.patient_id}", params={"reference": "flair"})
        assert response.status_code == 200, response.text
        result = response.json()
        (tmp_path / "mask.nii.gz").write_bytes(client.get(result["mask_url"]).content)
    model = result["model"]
    assert model["backend"] == "monai-bundle" and model["name"] == "test_brats_bundle"
    assert model["provenance"]["bundle_version"] == "0.3.0"
    assert model["provenance"]["channel_def"] == CHANNELS
    # The model has no T1 channel: the study's T1 is left aside, not reported missing
    assert sorted(result["series"]) == ["flair", "t1ce", "t2"] and result["missing_sequences"] == []
    assert not any("t1 " in w.lower() for w in result["warnings"])
    mask = nib.load(tmp_path / "mask.nii.gz")
    labels = np.asarray(mask.dataobj)
    assert set(np.unique(labels)) == {0, 2}  # only oedema: TC and ET never fire
    assert result["volumes_ml"]["wt"] > 1.0 and result["volumes_ml"]["et"] == 0.0
    referee = dcm2niix(clinical_study.folder("flair"), tmp_path / "referee")
    index_map(
        referee.affine, referee.shape, mask.affine, mask.shape
    )  # a signed permutation, integral offsets
