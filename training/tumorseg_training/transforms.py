"""MONAI dictionary transforms that turn a ``PreparedCase`` into training crops.

Input (``training_item``): a dict with ``image`` float16 (C, I, J, K) z-scored channels and ``label``
uint8 (1, I, J, K) BraTS labels {0, 1, 2, 4}, both on the cropped model grid (see ``data``), padded to at
least the crop size, plus ``label_cls_indices``: flat voxel indices per label value 0..4, computed once
per case (MONAI ``map_classes_to_indices``; background centres restricted to the brain).

Output (``train_transform``): per case ``samples_per_case`` dicts with ``image`` float32 (C, *crop) and
``label`` float32 (3, *crop) region channels TC, WT, ET (``tumorseg.model.labels.labels_to_regions``),
plain ``torch.Tensor`` s. Crop centres are drawn per label class with ``class_ratios`` (background, NCR,
ED, ET), so most crops hold tumour and the thin enhancing rims are seen often; a class a case lacks is
skipped. Then random flips on each axis, per-channel intensity scale and shift, and optional modality
dropout (one channel set to 0, the value of "no signal" after z-scoring).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import (
    CastToTyped,
    Compose,
    EnsureTyped,
    MapTransform,
    RandCropByLabelClassesd,
    RandFlipd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SelectItemsd,
)
from monai.transforms.utils import map_classes_to_indices
from monai.utils import convert_to_numpy

from tumorseg.model.labels import labels_to_regions
from tumorseg_training.data import PreparedCase

IMAGE, LABEL = "image", "label"
INDICES = "label_cls_indices"
NUM_LABEL_VALUES = 5  # label values 0..4; 3 never occurs in BraTS 2021 and gets ratio 0
MAX_INDICES_PER_CLASS = 20_000


def _pad_to(array: np.ndarray[Any, Any], size: Sequence[int]) -> np.ndarray[Any, Any]:
    """Zero-pad the spatial axes (the last three) at the far end up to ``size``."""
    pad = [(0, 0)] * (array.ndim - 3) + [
        (0, max(0, s - n)) for s, n in zip(size, array.shape[-3:], strict=True)
    ]
    return np.pad(array, pad) if any(p[1] for p in pad) else array


def training_item(case: PreparedCase, crop_size: Sequence[int]) -> dict[str, Any]:
    """The cached, deterministic part of the training pipeline for one case (see module docstring)."""
    image = _pad_to(case.image, crop_size)
    label = _pad_to(case.labels[None], crop_size)
    indices = map_classes_to_indices(
        label, num_classes=NUM_LABEL_VALUES, max_samples_per_class=MAX_INDICES_PER_CLASS
    )
    # Background centres only inside the brain. Z-scored voxels can be negative, so "inside" is
    # "non-zero in some channel" (MONAI's ``image > threshold`` would drop dark tissue).
    background = np.flatnonzero(np.any(image != 0, axis=0) & (label[0] == 0))
    indices[0] = background[:: max(1, len(background) // MAX_INDICES_PER_CLASS)]
    return {IMAGE: image, LABEL: label, INDICES: indices}


ET_LABEL = 4


def epoch_visits(items: Sequence[dict[str, Any]], repeat_without_et: int) -> list[dict[str, Any]]:
    """The items of one epoch: every case once, a case without enhancing tumour ``repeat_without_et``
    times (see ``TrainConfig.repeat_without_et``)."""
    return [
        item
        for item in items
        for _ in range(1 if np.any(item[LABEL] == ET_LABEL) else repeat_without_et)
    ]


class LabelsToRegionsd(MapTransform):
    """BraTS labels (1, …) → float32 (3, …) TC, WT, ET, with ``tumorseg.model.labels.labels_to_regions``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = convert_to_numpy(d[key])[0]
            d[key] = torch.from_numpy(labels_to_regions(labels).astype(np.float32))
        return d


class RandModalityDropoutd(RandomizableTransform, MapTransform):
    """With probability ``prob``, set one randomly chosen channel to 0 (a missing sequence)."""

    def __init__(self, keys: str | Sequence[str], prob: float = 0.0) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self._channel = 0

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._channel = int(self.R.randint(int(data))) if data else 0

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize(d[key].shape[0])
            if self._do_transform:
                tensor = torch.as_tensor(d[key]).clone()
                tensor[self._channel] = 0
                d[key] = tensor
        return d


def train_transform(
    crop_size: Sequence[int],
    samples_per_case: int,
    class_ratios: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    flip_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    modality_dropout: float = 0.0,
) -> Compose:
    """The random part of the pipeline (see module docstring); ``class_ratios`` = (bg, NCR, ED, ET)."""
    if len(class_ratios) != 4 or min(class_ratios) < 0 or sum(class_ratios) <= 0:
        raise ValueError(
            f"class_ratios must be four non-negative weights (bg, NCR, ED, ET), got {class_ratios}"
        )
    bg, ncr, ed, et = (float(r) for r in class_ratios)
    keys = [IMAGE, LABEL]
    return Compose(
        [
            RandCropByLabelClassesd(
                keys=keys,
                label_key=LABEL,
                spatial_size=list(crop_size),
                ratios=[bg, ncr, ed, 0.0, et],
                num_classes=NUM_LABEL_VALUES,
                num_samples=samples_per_case,
                indices_key=INDICES,
                warn=False,  # a case without ET (or NCR) simply gets no crop centred there
            ),
            SelectItemsd(keys=keys),
            CastToTyped(keys=IMAGE, dtype=np.float32),
            LabelsToRegionsd(keys=LABEL),
            *[RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd(keys=IMAGE, factors=intensity_scale, prob=1.0, channel_wise=True),
            RandShiftIntensityd(keys=IMAGE, offsets=intensity_shift, prob=1.0, channel_wise=True),
            RandModalityDropoutd(keys=IMAGE, prob=modality_dropout),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
        ]
    )
