"""What a model from another framework (a MONAI bundle, an nnU-Net v2 result folder) is given and must
return, and the names both formats use for the four sequences and the BraTS regions.

A foreign network (``ForeignNetwork``) gets the study as tumorseg prepared it, *before* tumorseg's own
normalisation: the registered volumes resampled onto the cropped model grid, zero outside the brain (and
outside any series' field of view), one channel per sequence in the package's channel order
(``Preprocessing.channels``; a missing optional sequence's channel is zeros or its substitute's, as the
package's ``inputs`` say). It applies its own preprocessing, resampling and tiling, and returns TC/WT/ET
probabilities on the same grid; everything after that (threshold, brain confinement, the reference lattice,
export) is the service's, the same for every backend.

Array contract (as ``tumorseg.imaging.preprocess``): ``volumes`` float32 (C, I, J, K), the spatial axes the
index axes (i, j, k) of ``grid`` (``tumorseg.imaging.grid.to_array``: SimpleITK's numpy view transposed),
``grid`` an empty image carrying origin, spacing and direction in LPS (identity direction, isotropic).
The result: float32 (3, I, J, K) in ``REGIONS`` order (TC, WT, ET), each in [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

from tumorseg.errors import ModelError
from tumorseg.labels import REGIONS
from tumorseg.sequences import SEQUENCES

BACKENDS = ("monai-unet", "monai-bundle", "nnunet-v2")

# Channel names that published models give the four sequences (MONAI bundles' ``channel_def``, nnU-Net's
# ``dataset.json`` ``channel_names``, the BraTS 2023 file suffixes t1c/t1n/t2w/t2f), lower-cased with
# everything but letters and digits removed.
_SEQUENCE_NAMES: dict[str, tuple[str, ...]] = {
    "t1ce": ("t1ce", "t1c", "t1gd", "t1gad", "t1contrast", "t1post", "t1wce", "t1cepost", "ct1", "t1cgd"),
    "t1": ("t1", "t1w", "t1n", "t1native", "t1pre", "t1precontrast"),
    "t2": ("t2", "t2w", "t2weighted"),
    "flair": ("flair", "t2flair", "t2f", "t2wflair", "flairt2"),
}
_BY_NAME = {alias: sequence for sequence, aliases in _SEQUENCE_NAMES.items() for alias in aliases}

# Region names (bundles' output ``channel_def``, nnU-Net's region-based ``labels``) → BraTS region.
_REGION_NAMES: dict[str, tuple[str, ...]] = {
    "tc": ("tc", "tumorcore", "tumourcore", "core"),
    "wt": ("wt", "wholetumor", "wholetumour", "whole"),
    "et": ("et", "enhancingtumor", "enhancingtumour", "enhancing"),
}
_REGION_BY_NAME = {alias: region for region, aliases in _REGION_NAMES.items() for alias in aliases}


# Label-map class names (bundles' output ``channel_def``, nnU-Net's label-based ``labels``) → BraTS class,
# looked up whole: "non-enhancing tumor core" is NCR, never ET because it contains "enhancing".
_LABEL_NAMES: dict[str, tuple[str, ...]] = {
    "background": ("background", "bg"),
    "ncr": (
        "ncr",
        "netc",
        "ncrnet",
        "necrosis",
        "necrotic",
        "necroticcore",
        "necrotictumorcore",
        "necrotictumourcore",
        "nonenhancingtumor",
        "nonenhancingtumour",
        "nonenhancingtumorcore",
        "nonenhancingtumourcore",
        "necroticnonenhancingtumorcore",
    ),
    "ed": (
        "ed",
        "snfh",
        "edema",
        "oedema",
        "peritumoraledema",
        "peritumouraledema",
        "peritumouraloedema",
        "peritumoraloedema",
        "surroundingnonenhancingflairhyperintensity",
    ),
    "et": ("et", "enhancing", "enhancingtumor", "enhancingtumour", "gdenhancingtumor"),
}
LABEL_BY_NAME = {alias: role for role, aliases in _LABEL_NAMES.items() for alias in aliases}


def label_of_name(name: str) -> str | None:
    """The BraTS class ("background", "ncr", "ed", "et") a label-map class name stands for, or ``None``;
    the whole name is looked up (case, spaces and punctuation ignored), never a part of it."""
    return LABEL_BY_NAME.get(_key(name))


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def sequence_of_channel(name: str) -> str | None:
    """The sequence (``SEQUENCES``) a model's input channel name stands for, or ``None``: "T1c", "T1Gd",
    "t1c" → t1ce; "T1", "T1w", "t1n" → t1; "T2", "T2w", "t2w" → t2; "FLAIR", "T2-FLAIR", "t2f" → flair."""
    return _BY_NAME.get(_key(name))


def region_of_name(name: str) -> str | None:
    """The BraTS region (``REGIONS``) an output channel name stands for ("Tumor core" → tc), or ``None``."""
    return _REGION_BY_NAME.get(_key(name))


def map_channels(names: Mapping[int, str], manual: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The sequence of each input channel, in channel order, from the model's channel names (index → name)
    and a ``manual`` mapping (channel name or index as a string → sequence) that takes precedence.
    ``ModelError`` naming each channel it cannot map, or a sequence named twice."""
    manual = {str(k): v for k, v in (manual or {}).items()}
    wrong = [v for v in manual.values() if v not in SEQUENCES]
    if wrong:
        raise ModelError(f"channel mapping names {wrong}, not one of {list(SEQUENCES)}")
    if sorted(names) != list(range(len(names))):
        raise ModelError(f"the model's input channels are not numbered 0..{len(names) - 1}: {dict(names)}")
    sequences: list[str] = []
    unmapped: list[str] = []
    for index in range(len(names)):
        name = str(names[index])
        sequence = manual.get(name, manual.get(str(index))) or sequence_of_channel(name)
        if sequence is None:
            unmapped.append(f"channel {index} {name!r}")
        else:
            sequences.append(sequence)
    if unmapped:
        raise ModelError(
            f"cannot map {', '.join(unmapped)} to one of {list(SEQUENCES)}; give the mapping by hand "
            "(--channel NAME=SEQUENCE)"
        )
    if len(set(sequences)) != len(sequences):
        raise ModelError(f"the model's channels map to a sequence twice: {sequences} (from {dict(names)})")
    return tuple(sequences)


def check_probabilities(probabilities: NDArray[np.float32], shape: tuple[int, ...], who: str) -> None:
    """``ModelError`` unless ``probabilities`` is (3, *shape) with values in [0, 1] (a backend's output)."""
    if probabilities.shape != (len(REGIONS), *shape):
        raise ModelError(f"{who} returned {probabilities.shape}, expected {(len(REGIONS), *shape)}")
    if not np.isfinite(probabilities).all() or probabilities.min() < 0 or probabilities.max() > 1:
        raise ModelError(f"{who} returned values outside [0, 1]")


class ForeignNetwork(Protocol):
    """A loaded foreign model (see the module docstring for the arrays)."""

    def predict(self, volumes: NDArray[np.float32], grid: sitk.Image) -> NDArray[np.float32]: ...

    def warm_up(self) -> None: ...
