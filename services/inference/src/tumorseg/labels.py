"""BraTS 2021 labels ⇄ the model's region channels, named once for the package (mask, JSON, preview, SEG).

Labels (uint8): 0 background, 1 necrotic tumour core (NCR), 2 peritumoral oedema (ED), 4 enhancing tumour (ET).
Regions (the network's sigmoid outputs, channel order ``REGIONS``): TC = 1 ∪ 4, WT = 1 ∪ 2 ∪ 4, ET = 4,
as MONAI's ``ConvertToMultiChannelBasedOnBratsClasses``. Arrays keep whatever spatial axis order they come in.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

NCR, ED, ET = 1, 2, 4
# BraTS label → (abbreviation, name, RGB display colour: the preview's and the SEG's recommended colours).
LABEL_STYLE: dict[int, tuple[str, str, tuple[int, int, int]]] = {
    NCR: ("NCR", "necrotic tumor core", (255, 0, 0)),
    ED: ("ED", "peritumoral edema", (0, 255, 0)),
    ET: ("ET", "enhancing tumor", (255, 255, 0)),
}
# The result JSON's and the manifest's ``labels``: {"1": "necrotic tumor core", ...}.
LABEL_NAMES = {str(label): name for label, (_, name, _) in LABEL_STYLE.items()}
REGIONS = ("tc", "wt", "et")


def labels_to_regions(labels: NDArray[np.integer]) -> NDArray[np.bool_]:
    """(…) labels → (3, …) boolean TC, WT, ET."""
    tc = (labels == NCR) | (labels == ET)
    wt = tc | (labels == ED)
    return np.stack([tc, wt, labels == ET])


def regions_to_labels(regions: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """(3, …) boolean TC, WT, ET → (…) labels, nested the BraTS way: ET wins, then the rest of TC is
    NCR, then the rest of WT is ED. An ET or TC voxel outside WT still counts as tumour."""
    tc, wt, et = regions[0], regions[1], regions[2]
    labels = np.zeros(tc.shape, dtype=np.uint8)
    labels[wt | tc | et] = ED
    labels[tc | et] = NCR
    labels[et] = ET
    return labels


def volumes_ml(labels: NDArray[np.integer], voxel_volume_mm3: float) -> dict[str, float]:
    """ET, TC and WT volumes, and NCR and ED (the labels the SR reports with ET), in millilitres for a
    label map whose voxels are ``voxel_volume_mm3`` each."""
    regions = labels_to_regions(labels)
    volumes = {
        name: float(np.count_nonzero(regions[i])) * voxel_volume_mm3 / 1000.0
        for i, name in enumerate(REGIONS)
    }
    for name, label in (("ncr", NCR), ("ed", ED)):
        volumes[name] = float(np.count_nonzero(labels == label)) * voxel_volume_mm3 / 1000.0
    return volumes
