"""Brain extraction: which voxels of the model grid are brain, so that nothing outside it is segmented and
the intensities are normalised over the brain alone (what BraTS-trained networks saw: skull-stripped heads).

Contract: an extractor takes one channel on the model grid (float32, axes i, j, k = L, P, S of an
identity-direction LPS lattice, isotropic ``spacing_mm``) and returns a boolean brain mask of the same shape:
one connected region, holes filled. Backends, chosen by name (``TUMORSEG_BRAIN_EXTRACTOR``):

- ``auto`` (default): input that is already skull-stripped (``is_skull_stripped``: every series mostly exact
  zeros around a brain-sized region, as BraTS data are) keeps its non-zero voxels as the brain, unchanged;
  anything else goes to ``deepbet``.
- ``deepbet``: the two TorchScript networks that the ``deepbet`` wheel ships (Fisch et al. 2024, trained on
  T1-weighted heads; offline, ~2 M parameters): a 128³ pass finds the brain's bounding box, a second pass
  segments the box resampled to ``DEEPBET_SHAPE``; the largest connected part, holes filled (tumour inside
  the brain is a hole to fill when the network leaves it out). The networks run on the GPU when torch sees
  one and ``TUMORSEG_DEVICE`` is not ``cpu`` (``extractor_device``), else on the CPU; only the small arrays
  that pass through them move.
- ``none``: no extraction; the whole field of view counts (the behaviour before this stage existed).

deepbet's mask is intracranial (CSF, dura, some bone and fat at its surface): ``preprocess.prepare`` peels
it (``peel`` with ``not_brain_like`` on all four sequences). ``confine_to_brain`` keeps the predicted tumour
inside the brain and drops what lies only in its outer rim.

HD-BET (trained on tumour patients) downloads its weights at first use and is not offered here.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray

log = logging.getLogger(__name__)

EXTRACTORS = ("auto", "deepbet", "none")
ExtractorName = Literal["auto", "deepbet", "none"]
# The series brain extraction runs on, best first. deepbet was trained on T1-weighted heads; on the clinical
# head phantoms its mask on T1ce kept the least non-brain (Dice 0.964-0.972 against 0.922-0.969 on T1 and
# 0.944-0.965 on FLAIR, seeds 3, 22, 23) and every tumour voxel but 0.1 %.
PREFERENCE = ("t1ce", "t1", "flair", "t2")
STRIPPED_ZERO_FRACTION = 0.25  # a skull-stripped series is at least this much exact zero ...
STRIPPED_MAX_ML = 2500.0  # ... around a non-zero region no larger than a brain
# An extracted brain outside this range is reported as a warning. Adult brains measure 975-1499 mL (Allen,
# Damasio & Grabowski 2002, Am J Phys Anthropol 118:341, MRI, 46 adults aged 22-49) and 1173-1626 mL
# (Filipek et al. 1994, Cereb Cortex 4:344, 20 young adults); 1245 +- 125 mL at 41-77 years, intracranial
# volume 1397 +- 133 mL (Ahmad et al., J Biomed Clin Sci, 58 adults). 750 mL is that mean less 4 SD (the
# atrophy of old age); 1850 mL leaves the ventricles and the CSF an extraction keeps at the surface above
# the largest brain, near the largest intracranial volumes (+3.5 SD). The phantom brains: 1.19-1.82 L.
PLAUSIBLE_ML = (750.0, 1850.0)
RIM_MM = 3.0  # see confine_to_brain
PEEL_MM = 10.0  # how deep ``peel`` may take the extractor's mask
# not_brain_like's thresholds, in robust z (median, IQR over the extracted brain)
CSF_FLAIR_Z, CSF_T2_Z = -2.0, 1.5
DARK_FLAIR_Z, DARK_T2_Z = -1.2, -1.0
# CSF without FLAIR (bright on T2 as above, and dark on T1ce): on the clinical head phantoms of seeds 3 and
# 22 the peeled brain's Dice went from 0.971 / 0.967 (T2 alone) to 0.983 / 0.987, no tumour voxel lost.
CSF_T1CE_Z = -1.0
FAT_T1_Z = 1.6
DEEPBET_SHAPE = 192  # the box is resampled to this cube (the weights were trained on 256³; 192³ is 3x faster)
_BBOX_SHAPE = 128


class BrainExtractor(Protocol):
    """A brain-extraction backend (see module docstring)."""

    name: str

    def extract(self, image: NDArray[np.float32], spacing_mm: float) -> NDArray[np.bool_]: ...

    def warm_up(self) -> None: ...


def is_skull_stripped(volumes: Mapping[str, sitk.Image]) -> bool:
    """True when every volume is at least ``STRIPPED_ZERO_FRACTION`` exact zeros and its non-zero voxels fill
    at most ``STRIPPED_MAX_ML``: BraTS-style input, already stripped. A head (scalp, noisy air) is neither."""
    for image in volumes.values():
        array = sitk.GetArrayViewFromImage(image)
        nonzero = int(np.count_nonzero(array))
        voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
        if array.size - nonzero < STRIPPED_ZERO_FRACTION * array.size or nonzero * voxel_ml > STRIPPED_MAX_ML:
            return False
    return True


def largest_filled(mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """The largest connected part (26-connectivity) of ``mask``, with its enclosed holes filled."""
    if not mask.any():
        return mask
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    components = sitk.RelabelComponent(sitk.ConnectedComponent(image, True), sortByObjectSize=True)
    filled = sitk.BinaryFillhole(components == 1, fullyConnected=False)
    return np.asarray(sitk.GetArrayFromImage(filled), dtype=bool)


class DeepBet:
    """deepbet's networks (see module docstring). Loaded once; calls are serialised."""

    name = "deepbet"

    def __init__(
        self, model_dir: Path | None = None, shape: int = DEEPBET_SHAPE, device: str = "cpu"
    ) -> None:
        import torch

        folder = model_dir or deepbet_model_dir()
        with warnings.catch_warnings():  # torch 2.13 calls TorchScript deprecated; deepbet ships TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self._bbox = torch.jit.load(str(folder / "bbox_model.pt"), map_location=device).eval()
            self._model = torch.jit.load(str(folder / "model.pt"), map_location=device).eval()
        self._shape = shape
        self.device = device

    def extract(self, image: NDArray[np.float32], spacing_mm: float) -> NDArray[np.bool_]:
        import torch
        import torch.nn.functional as F

        # deepbet works in RAS: the networks see the L and P axes of the LPS grid flipped (``ras``); only the
        # small arrays that go through them are flipped, the volume is not copied.
        def ras(t: torch.Tensor) -> torch.Tensor:
            return t.flip(-3, -2)

        x = torch.from_numpy(image)
        small = F.interpolate(x[None, None], (_BBOX_SHAPE,) * 3, mode="nearest-exact")[0, 0]
        low, high = (float(v) for v in torch.quantile(small.flatten(), torch.tensor([0.005, 0.995])))
        with torch.inference_mode():  # one call at a time: Segmenter runs one request at a time
            small = _normalise(small, low, high).to(self.device)
            box_probability = ras(self._bbox(ras(small)[None, None])[0, 1]).cpu().numpy()
            box = _bounding_box(largest_filled(box_probability > 0.5), image.shape, margin=0.1)
            if box is None:
                return np.zeros(image.shape, dtype=bool)
            crop = F.interpolate(x[box].to(self.device)[None, None], (self._shape,) * 3, mode="trilinear")
            probability = ras(self._model(ras(_normalise(crop, low, high)))[:, 1:2])
            probability = F.interpolate(probability, tuple(x[box].shape), mode="trilinear")[0, 0]
        mask = np.zeros(image.shape, dtype=bool)
        # the network's brain lies inside its box
        mask[box] = largest_filled(probability.cpu().numpy() > 0.5)
        return mask

    def warm_up(self) -> None:
        """Two passes on a small blob: TorchScript optimises a network during its first calls (2.7 s, then
        1.6 s, then 1.2 s on 2 CPU cores); the networks always see the same shapes, whatever the input."""
        blob = np.zeros((64, 64, 64), dtype=np.float32)
        blob[16:48, 12:52, 16:48] = 1.0
        for _ in range(2):
            self.extract(blob, 1.0)


class NoExtraction:
    """Every voxel with signal in the channel is 'brain' (no extraction)."""

    name = "none"

    def extract(self, image: NDArray[np.float32], spacing_mm: float) -> NDArray[np.bool_]:
        return np.asarray(image != 0)

    def warm_up(self) -> None:
        pass


def deepbet_model_dir() -> Path:
    """Where the ``deepbet`` wheel put its TorchScript files (``<site-packages>/data/models``)."""
    spec = importlib.util.find_spec("deepbet")
    if spec is None or spec.origin is None:
        raise RuntimeError("the deepbet package is not installed (pip install deepbet)")
    folder = Path(spec.origin).resolve().parents[1] / "data" / "models"
    if not (folder / "model.pt").is_file():
        raise RuntimeError(f"deepbet's weights are missing from {folder}")
    return folder


def extractor_device() -> str:
    """Where deepbet runs: the service's device (``TUMORSEG_DEVICE``): ``cpu`` when it says so, else
    ``cuda`` when torch sees a CUDA device (``auto`` or ``cuda``), else ``cpu``."""
    import torch

    from tumorseg.config import get_settings

    if get_settings().device == "cpu":
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def get_extractor(name: str) -> BrainExtractor:
    """The backend ``name`` (``deepbet`` or ``none``), created once per process."""
    if name == "deepbet":
        return DeepBet(device=extractor_device())
    if name == "none":
        return NoExtraction()
    raise ValueError(f"unknown brain extractor {name!r}; choose one of {EXTRACTORS}")


def _normalise(x: Any, low: float, high: float) -> Any:
    """deepbet's intensity normalisation: clip to [low, high], z-score, then as ImageNet-normalised grey."""
    x = x.clamp(low, high)
    x = (x - x.mean()) / (x.std() + 1e-8)
    return x * 0.226 + 0.449


def _bounding_box(
    mask: NDArray[np.bool_], shape: tuple[int, ...], margin: float
) -> tuple[slice, slice, slice] | None:
    """deepbet's box: along each axis, the planes where ``mask`` covers more than 2 % of the cross-section,
    scaled to ``shape`` and grown by ``margin`` of its size on each side (a thin neck or stray voxels do not
    widen it)."""
    box = []
    for axis in range(3):
        fraction = mask.mean(axis=tuple(a for a in range(3) if a != axis))
        hits = np.flatnonzero(fraction > 0.02)
        if hits.size == 0:
            return None
        scale = shape[axis] / mask.shape[axis]
        centre, size = (
            (hits[0] + hits[-1] + 1) / 2 * scale,
            (hits[-1] + 1 - hits[0]) * scale * (1 + 2 * margin),
        )
        box.append(
            slice(max(0, int(round(centre - size / 2))), min(shape[axis], int(round(centre + size / 2))))
        )
    return box[0], box[1], box[2]


def confine_to_brain(
    probabilities: NDArray[np.float32],
    brain: NDArray[np.bool_],
    threshold: float,
    spacing_mm: float,
    rim_mm: float = RIM_MM,
) -> NDArray[np.float32]:
    """``probabilities`` (C, I, J, K) with nothing outside ``brain`` (I, J, K), and without the tumour
    components (any channel above ``threshold``, 26-connected) of which less than half lies deeper than
    ``rim_mm`` inside the brain: a glioma grows from the white matter, while what a brain mask keeps of the
    meninges, the venous sinuses and the scalp's edge is a thin rim at its surface (bright on T1ce). A copy."""
    from scipy import ndimage

    confined = probabilities * brain
    tumour: NDArray[np.bool_] = np.any(confined > threshold, axis=0)
    if rim_mm <= 0 or not tumour.any():
        return confined
    steps = max(1, int(round(rim_mm / spacing_mm)))
    # Depth is needed near the tumour only: erode the brain within the tumour's box, padded by the rim.
    hits = [np.flatnonzero(np.any(tumour, axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
    box = tuple(slice(max(0, int(h[0]) - steps - 1), int(h[-1]) + steps + 2) for h in hits)
    deep: NDArray[np.bool_] = ndimage.binary_erosion(
        brain[box], ndimage.generate_binary_structure(3, 1), iterations=steps, border_value=1
    )
    labels, count = ndimage.label(tumour[box], structure=np.ones((3, 3, 3), dtype=bool))
    inside = ndimage.sum_labels(deep, labels, index=np.arange(1, count + 1))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    shallow = np.flatnonzero(inside < 0.5 * sizes) + 1
    if shallow.size:
        drop = np.isin(labels, shallow)
        confined[(slice(None), *box)] *= ~drop
    return confined


def _robust_z(channel: NDArray[np.float32], mask: NDArray[np.bool_]) -> NDArray[np.float32]:
    """``channel`` as (x - median) / IQR over ``mask`` (robust to the tumour and to what the mask kept)."""
    values = channel[mask]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return np.zeros_like(channel)
    low, median, high = np.percentile(values, [25, 50, 75])
    return np.asarray((channel - np.float32(median)) / np.float32(max(high - low, 1e-6)), dtype=np.float32)


def not_brain_like(channels: Mapping[str, NDArray[np.float32]], mask: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Voxels whose contrasts across the sequences (robust z over ``mask``) are those of what surrounds the
    brain, not of brain or tumour: CSF (dark on FLAIR, bright on T2), dura, bone and muscle (dark on FLAIR and
    on T2), fat and marrow (bright on T1 without contrast). Oedema is bright on FLAIR, enhancing tumour bright
    on T1ce only, necrosis lies inside its rim (see ``peel``). Without T2 (a study that lacks it) FLAIR
    decides alone, on its safest side; without FLAIR, CSF is what is bright on T2 and dark on T1ce (oedema
    is not dark there); without T1 there is no fat criterion."""
    z = {m: _robust_z(channels[m], mask) for m in ("flair", "t2", "t1", "t1ce") if m in channels}
    outside = np.zeros(mask.shape, dtype=bool)
    if "flair" in z and "t2" in z:
        flair, t2 = z["flair"], z["t2"]
        outside |= (flair < CSF_FLAIR_Z) & (t2 > CSF_T2_Z)  # CSF
        outside |= (flair < DARK_FLAIR_Z) & (t2 < DARK_T2_Z)  # dura, bone, muscle
    elif "flair" in z:  # no T2: what is darkest on FLAIR (CSF, bone)
        outside |= z["flair"] < CSF_FLAIR_Z
    elif "t2" in z:  # no FLAIR: what is dark on T2 (dura, bone, muscle); bright T2 may be oedema ...
        outside |= z["t2"] < DARK_T2_Z
        if "t1ce" in z:  # ... unless it is dark on T1ce too: CSF
            outside |= (z["t2"] > CSF_T2_Z) & (z["t1ce"] < CSF_T1CE_Z)
    if "t1" in z:
        outside |= z["t1"] > FAT_T1_Z  # fat, marrow
    return outside


def peel(
    mask: NDArray[np.bool_], outside_like: NDArray[np.bool_], max_mm: float, spacing_mm: float
) -> NDArray[np.bool_]:
    """``mask`` with its surface peeled, one voxel layer at a time, where the voxels look like the outside
    (``outside_like``), at most ``max_mm`` deep; then the largest part, holes filled. Only what is reachable
    from the outside goes: a necrotic core inside its enhancing rim, or the ventricles, stay."""
    from scipy import ndimage

    peeled = mask.copy()
    structure = ndimage.generate_binary_structure(3, 1)
    for _ in range(max(1, int(round(max_mm / spacing_mm)))):
        surface = peeled & ~ndimage.binary_erosion(peeled, structure, border_value=0)
        drop = surface & outside_like
        if not drop.any():
            break
        peeled &= ~drop
    return largest_filled(peeled)


def implausible_brain(volume_ml: float, method: str, series: str) -> str | None:
    """A warning when an extracted brain's volume is outside ``PLAUSIBLE_ML``."""
    if PLAUSIBLE_ML[0] <= volume_ml <= PLAUSIBLE_ML[1]:
        return None
    return (
        f"brain extraction ({method} on {series}) found {volume_ml:.0f} mL of brain, outside the plausible "
        f"{PLAUSIBLE_ML[0]:.0f}-{PLAUSIBLE_ML[1]:.0f} mL: check the mask"
    )
