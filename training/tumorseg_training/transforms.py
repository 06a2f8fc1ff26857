"""MONAI dictionary transforms that turn a ``PreparedCase`` into training crops.

Input (``training_item``): a dict with ``image`` float16 (C, I, J, K) z-scored channels and ``label``
uint8 (1, I, J, K) BraTS labels {0, 1, 2, 4}, both on the cropped model grid (see ``data``), padded to at
least the crop size, plus ``label_cls_indices``: flat voxel indices per label value 0..4, computed once
per case (MONAI ``map_classes_to_indices``; background centres restricted to the brain).

Output (``train_transform``): per case ``samples_per_case`` dicts with ``image`` float32 (C, *crop) and
``label`` float32 (3, *crop) region channels TC, WT, ET (``tumorseg.labels.labels_to_regions``),
plain ``torch.Tensor`` s. Crop centres are drawn per label class with ``class_ratios`` (background, NCR,
ED, ET), so most crops hold tumour and the thin enhancing rims are seen often; a class a case lacks is
skipped. Then optional core-contrast jitter (``RandRegionContrastd``: the contrast of the label-1 core
against the normal brain around it scaled per channel), random flips on each axis, per-channel intensity
scale and shift, an optional bias field per channel (``RandBiasFieldd``, as it acts before z-scoring),
optional thick slices (``RandThickSlicesd``: a channel as a 2D acquisition of thick
slices along one axis shows it once resampled to the model grid), and optional modality dropout (optional
sequences' channels set to 0, the value of "no signal" after z-scoring, or to their substitute, as
inference feeds a missing sequence; never a required one).
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
from scipy import ndimage as ndi

from tumorseg.labels import ET, labels_to_regions
from tumorseg.sequences import ALL_FOUR, SEQUENCES, InputPolicy, fill_absent
from tumorseg_training.config import dropout_problems, droppable
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


def epoch_visits(items: Sequence[dict[str, Any]], repeat_without_et: int) -> list[dict[str, Any]]:
    """The items of one epoch: every case once, a case without enhancing tumour ``repeat_without_et``
    times (see ``TrainConfig.repeat_without_et``)."""
    return [item for item in items for _ in range(1 if np.any(item[LABEL] == ET) else repeat_without_et)]


class LabelsToRegionsd(MapTransform):
    """BraTS labels (1, …) → float32 (3, …) TC, WT, ET, with ``tumorseg.labels.labels_to_regions``."""

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            labels = convert_to_numpy(d[key])[0]
            d[key] = torch.from_numpy(labels_to_regions(labels).astype(np.float32))
        return d


class RandModalityDropoutd(RandomizableTransform, MapTransform):
    """Set channels to 0, the value of "no signal" after z-scoring: a missing sequence, as inference feeds
    one (``tumorseg.imaging.preprocess.prepare``).

    ``rates`` is a recipe's ``modality_dropout``: a mapping ``{sequence: p}`` drops each listed sequence
    independently with its probability; a number p drops one sequence, drawn uniformly from those the
    policy lets go alone (``config.droppable``), with probability p. Never a required sequence of
    ``inputs``, and never so many that ``inputs.problem`` would refuse what is left: with a mapping the
    sequences are visited in a random order and one whose drop would break the policy (the second of an
    ``any_of`` pair, say) is kept, so such a sequence is dropped a little less often than its rate
    (p · (1 - q / 2) for a pair at p and q). ``channels`` names the image's channels in order (the
    package's ``Preprocessing.channels``).

    Off (rate 0, or no rate above 0) the transform draws nothing from its random state.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        rates: float | Mapping[str, float] = 0.0,
        inputs: InputPolicy = ALL_FOUR,
        channels: Sequence[str] = SEQUENCES,
    ) -> None:
        problems = dropout_problems(rates, inputs)
        missing = [m for m in (rates if isinstance(rates, Mapping) else ()) if m not in channels]
        if problems or missing:
            raise ValueError("; ".join([*problems, *(f"no channel named {m}" for m in missing)]))
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, 1.0)
        self.inputs, self.channels = inputs, tuple(channels)
        if isinstance(rates, Mapping):
            self.rates = {m: float(p) for m, p in rates.items() if float(p) > 0}
            self.one_of: tuple[str, ...] = ()
            self.prob_one = 0.0
        else:
            self.rates = {}
            self.one_of = droppable(inputs) if rates > 0 else ()
            self.prob_one = float(rates)
        self._dropped: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.rates) or (self.prob_one > 0 and bool(self.one_of))

    def randomize(self, data: Any = None) -> None:
        self._dropped = ()
        if not self.active:
            return
        if self.one_of:
            if self.R.rand() < self.prob_one:
                self._dropped = (self.one_of[int(self.R.randint(len(self.one_of)))],)
            return
        names = list(self.rates)
        order = self.R.permutation(len(names))
        draws = self.R.rand(len(names))
        present = set(self.channels)
        dropped = []
        for n in order:
            name = names[int(n)]
            if draws[n] < self.rates[name] and self.inputs.problem(present - {name}) is None:
                present.discard(name)
                dropped.append(name)
        self._dropped = tuple(dropped)

    def draw(self) -> tuple[str, ...]:
        """One draw: the sequences to drop (empty: none). What ``__call__`` uses per crop, and training
        once per batch (``dropout_per_batch``)."""
        self.randomize()
        return self._dropped

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.randomize()
            if self._dropped:
                d[key] = self.fill(torch.as_tensor(d[key]).clone(), self._dropped)
        return d

    def fill(self, images: Any, dropped: Sequence[str], channel_axis: int = 0) -> Any:
        """``images`` (in place) with the ``dropped`` sequences' channels as inference makes a missing one:
        zeros, or the policy's substitute (``InputPolicy.stand_ins``, ``fill_absent``)."""
        present = [m for m in self.channels if m not in dropped]
        return fill_absent(images, self.inputs.stand_ins(self.channels, present), channel_axis)


class _RandPerChanneld(RandomizableTransform, MapTransform):
    """Each channel of each key, with probability ``prob``, replaced by ``_channel(channel)`` (which may
    return None: unchanged); voxels that were 0 in every channel (outside the brain) stay 0. Off (``prob``
    0) it draws nothing."""

    def _channel(self, channel: torch.Tensor) -> torch.Tensor | None:
        raise NotImplementedError

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        if self.prob <= 0:
            return d
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            out = None
            for c in range(image.shape[0]):
                if self.R.rand() >= self.prob:
                    continue
                changed = self._channel(image[c])
                if changed is not None:
                    out = image.clone() if out is None else out
                    out[c] = changed
            if out is not None:
                d[key] = out * (image != 0).any(dim=0)
        return d


class RandBiasFieldd(_RandPerChanneld):
    """Per channel, with probability ``prob``: a smooth multiplicative bias field, applied as it acts before
    normalisation. A z-scored channel is z = (x - m) / s; the acquisition x times a field b gives, with the
    same m and s, z' = (z + k) b - k, k = m / s (drawn from ``ratio``: 3-6 on the phantoms' brains). The
    field is exp(a cos(2 pi u . (p - c) / w + phi)) on voxel positions p (1 mm): a plane wave of length w
    (150-400 mm) whose peak a is drawn up to log(1 + ``max_bias``), so a crop sees part of one head-sized
    wave. Voxels that were 0 in every channel (outside the brain) stay 0.

    Why: a clinical head's series each carry their own bias (the clinical-head phantoms up to 20 %, the
    training phantoms 13 %), and 10 % of bias moves a z-scored tissue by about 0.5. With all four sequences
    the network tells a bright patch of one from oedema by the others; without FLAIR or T2 it called the
    bright front of a head's FLAIR oedema (docs/missing-sequences.md). Off (``prob`` 0) it draws nothing.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        prob: float = 0.0,
        max_bias: float = 0.2,
        ratio: Sequence[float] = (3.0, 6.0),
        wavelength_mm: Sequence[float] = (150.0, 400.0),
    ) -> None:
        if not 0.0 <= max_bias < 1.0:
            raise ValueError(f"bias field: max_bias must be in [0, 1), got {max_bias}")
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.max_bias = float(max_bias)
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.wavelength = (float(wavelength_mm[0]), float(wavelength_mm[1]))

    def _channel(self, channel: torch.Tensor) -> torch.Tensor:
        direction = self.R.normal(size=3)
        direction /= max(float(np.linalg.norm(direction)), 1e-9)
        wavelength = float(self.R.uniform(*self.wavelength))
        phase = float(self.R.uniform(0.0, 2 * np.pi))
        amplitude = float(self.R.uniform(0.0, np.log1p(self.max_bias)))
        k = float(self.R.uniform(*self.ratio))
        axes = [torch.arange(n, dtype=torch.float32) for n in channel.shape]
        grid = torch.meshgrid(*axes, indexing="ij")
        along = grid[0] * float(direction[0]) + grid[1] * float(direction[1]) + grid[2] * float(direction[2])
        field = torch.exp(amplitude * torch.cos(along * (2 * np.pi / wavelength) + phase))
        return (channel + k) * field - k


class RandThickSlicesd(_RandPerChanneld):
    """Per channel, with probability ``prob``: the channel as a stack of thick slices along a random axis,
    resampled back onto the model grid, as a clinical 2D series (FLAIR 0.9 x 0.9 x 4 mm, T2 3 mm) reaches
    the network after ``prepare``: the mean over slabs of ``thickness`` voxels (drawn from ``thickness``
    = (low, high), rounded; random phase), then linear interpolation between the slab centres. Voxels that
    were 0 in every channel (outside the brain) stay 0.

    Why: the phantoms are 1 mm isotropic in every sequence, the clinical heads are not, and a network that
    must find the oedema in one thick-sliced sequence alone (a study without T2, or without FLAIR) missed
    small tumours there (docs/missing-sequences.md). Off (``prob`` 0) it draws nothing.
    """

    def __init__(
        self, keys: str | Sequence[str], prob: float = 0.0, thickness: Sequence[float] = (2.0, 5.0)
    ) -> None:
        low, high = (float(t) for t in thickness)
        if not 1.0 <= low <= high:
            raise ValueError(f"thick slices: thickness must be 1 <= low <= high voxels, got {thickness}")
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.low, self.high = low, high

    def _channel(self, channel: torch.Tensor) -> torch.Tensor | None:
        axis = int(self.R.randint(3))
        slab = max(1, round(float(self.R.uniform(self.low, self.high))))
        phase = int(self.R.randint(slab))
        return thick_slices(channel, axis, slab, phase) if slab > 1 else None


def thick_slices(channel: torch.Tensor, axis: int, slab: int, phase: int = 0) -> torch.Tensor:
    """``channel`` (I, J, K) averaged over slabs of ``slab`` voxels along ``axis`` (the first slab starts at
    ``phase - slab``, partial slabs at the ends averaged over what they hold) and linearly interpolated
    back between the slab centres (constant beyond the outer ones)."""
    import torch.nn.functional as F

    moved = channel.movedim(axis, -1)
    length = moved.shape[-1]
    lines = moved.reshape(-1, 1, length).float()
    start = phase - slab if phase else 0
    pad_front, pad_back = -start, (-(length - start)) % slab
    ones = torch.ones_like(lines)
    padded = F.pad(lines, (pad_front, pad_back))
    weights = F.pad(ones, (pad_front, pad_back))
    sums = F.avg_pool1d(padded, slab, slab)
    counts = F.avg_pool1d(weights, slab, slab)
    means = sums / counts.clamp_min(1e-6)
    # slab n holds voxels [start + n*slab, start + (n+1)*slab): its centre, clipped to the voxels it holds
    n = means.shape[-1]
    first = torch.clamp(start + torch.arange(n) * slab, min=0)
    last = torch.clamp(start + (torch.arange(n) + 1) * slab, max=length) - 1
    centres = (first + last).float() / 2
    position = torch.arange(length, dtype=torch.float32)
    right = torch.searchsorted(centres, position).clamp(1, max(n - 1, 1))
    left = right - 1
    if n == 1:
        resampled = means.expand(-1, -1, length)
    else:
        span = (centres[right] - centres[left]).clamp_min(1e-6)
        w = ((position - centres[left]) / span).clamp(0.0, 1.0)
        resampled = means[..., left] * (1 - w) + means[..., right] * w
    return resampled.reshape(moved.shape).movedim(-1, axis).to(channel.dtype)


class RandRegionContrastd(RandomizableTransform, MapTransform):
    """With probability ``prob``, scale the contrast of one label's region per channel.

    For a crop holding at least ``min_voxels`` of ``label``, each channel c gets its own factor f_c drawn
    from [1 - ``spread``, 1 + ``spread``], and the image moves by ``w * (f_c - 1) * (mean_region_c -
    mean_normal_c)``: inside the region its mean contrast against the normal brain of the crop (label 0,
    non-zero in some channel) is scaled by f_c, its texture kept. ``w`` is the region mask smoothed by a
    Gaussian of ``sigma`` voxels, so no step edge appears that the labels alone would explain; it fades
    over the first voxels around the region (a neighbouring rim moves a little with it) and is 0 outside
    the brain (which stays 0).

    Why: the BraTS label-1 core (necrosis, or a non-enhancing core) varies most between tumours, and a
    network that learns its contrasts from a few dozen cases misses a core whose contrast sits at the
    edge of them (a non-enhancing core as grey as cortex in FLAIR and T1ce, only brighter in T2). Varying
    the contrast per channel teaches it to use every channel and the region's shape.
    """

    def __init__(
        self,
        keys: str | Sequence[str],
        label_key: str,
        label: int,
        spread: float,
        prob: float = 0.5,
        sigma: float = 1.0,
        min_voxels: int = 8,
    ) -> None:
        if not 0.0 <= spread < 1.0:
            raise ValueError(f"spread must be in [0, 1), got {spread}")
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key, self.label, self.spread = label_key, label, spread
        self.sigma, self.min_voxels = sigma, min_voxels
        self._factors: np.ndarray[Any, Any] = np.ones(0)

    def randomize(self, data: Any = None) -> None:
        super().randomize(None)
        self._factors = self.R.uniform(1.0 - self.spread, 1.0 + self.spread, size=int(data or 0))

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        labels = convert_to_numpy(d[self.label_key])[0]
        region = labels == self.label
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            self.randomize(image.shape[0])
            if not self._do_transform or self.spread == 0 or region.sum() < self.min_voxels:
                continue
            values = convert_to_numpy(image).astype(np.float32, copy=False)
            brain = np.any(values != 0, axis=0)
            normal = (labels == 0) & brain
            if not normal.any():
                continue
            weight = ndi.gaussian_filter(region.astype(np.float32), self.sigma) * brain
            contrast = values[:, region].mean(axis=1) - values[:, normal].mean(axis=1)
            shift = ((self._factors - 1.0) * contrast).astype(np.float32)
            d[key] = image + torch.from_numpy(shift[:, None, None, None] * weight[None]).to(image.dtype)
        return d


def train_transform(
    crop_size: Sequence[int],
    samples_per_case: int,
    class_ratios: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    flip_prob: float = 0.5,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    modality_dropout: float | Mapping[str, float] = 0.0,
    core_contrast: float = 0.0,
    core_contrast_prob: float = 0.5,
    inputs: InputPolicy = ALL_FOUR,
    channels: Sequence[str] = SEQUENCES,
    thick_slices_prob: float = 0.0,
    thick_slices_vox: Sequence[float] = (2.0, 5.0),
    bias_field_prob: float = 0.0,
    bias_field_max: float = 0.2,
) -> Compose:
    """The random part of the pipeline (see module docstring); ``class_ratios`` = (bg, NCR, ED, ET);
    ``core_contrast`` is ``RandRegionContrastd``'s spread for label 1 (0: off); ``modality_dropout``,
    ``inputs`` and ``channels`` as ``RandModalityDropoutd``; ``thick_slices_prob`` and
    ``thick_slices_vox`` as ``RandThickSlicesd``, ``bias_field_prob`` and ``bias_field_max`` as
    ``RandBiasFieldd`` (0: off)."""
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
            # Only when on: every randomisable transform takes a seed from the Compose, so an extra one
            # would change the augmentation of recipes without it.
            *(
                [
                    RandRegionContrastd(
                        keys=IMAGE, label_key=LABEL, label=1, spread=core_contrast, prob=core_contrast_prob
                    )
                ]
                if core_contrast > 0
                else []
            ),
            LabelsToRegionsd(keys=LABEL),
            *[RandFlipd(keys=keys, prob=flip_prob, spatial_axis=axis) for axis in range(3)],
            RandScaleIntensityd(keys=IMAGE, factors=intensity_scale, prob=1.0, channel_wise=True),
            RandShiftIntensityd(keys=IMAGE, offsets=intensity_shift, prob=1.0, channel_wise=True),
            *(
                [RandBiasFieldd(keys=IMAGE, prob=bias_field_prob, max_bias=bias_field_max)]
                if bias_field_prob > 0
                else []
            ),
            *(
                [RandThickSlicesd(keys=IMAGE, prob=thick_slices_prob, thickness=thick_slices_vox)]
                if thick_slices_prob > 0
                else []
            ),
            # Always in the pipeline, and last of the random ones: its seed from the Compose is drawn after
            # every other's, so recipes without dropout (for which it draws nothing) crop as they always did.
            RandModalityDropoutd(keys=IMAGE, rates=modality_dropout, inputs=inputs, channels=channels),
            EnsureTyped(keys=keys, dtype=torch.float32, track_meta=False),
        ]
    )
