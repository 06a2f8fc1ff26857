"""Image synthesis for the phantoms: tissue fractions in, FLAIR / T1 / T1ce / T2 volumes out.

Contract
- Input: ``Anatomy`` (WM/GM/CSF fractions) and ``Tumour`` (soft NCR-or-core / ET / ED maps) on the phantom
  lattice (``SHAPE``, axes i, j, k of ``BRATS_AFFINE``, 1 mm).
- Output of ``synthesize``: one int16 volume per modality on the same lattice, >= 1 inside the brain and
  exactly 0 outside it (skull-stripped, as in BraTS, and so a non-zero mask recovers the brain).
- ``render`` makes the same draws and also returns, per modality, the noiseless signal (relative to WM = 1,
  before bias, scale and noise) and the tissue means of the case (``BrainContrast``): what the clinical-head
  phantoms (``phantom_head``) put inside their own acquisition. A seed's images never depend on which of
  the two was called.

Each voxel is the partial-volume mix of the per-tissue mean intensities, times a smooth texture, a smooth
multiplicative bias field and a per-modality global scale, then Rician noise. The per-tissue means are
drawn per case from ranges (relative to white matter) that never overlap where the order matters:

    FLAIR: oedema > GM > WM > CSF            T1:   WM > GM > CSF, oedema below WM, core dark
    T1ce:  enhancing > WM > GM > CSF, necrosis dark     T2: CSF > GM > WM, oedema and necrosis bright

T1ce also shows enhancing vessels / choroid plexus in the CSF spaces (strength varies per case, down
to none). Some modalities are blurred along one axis (thick-slice acquisitions upsampled to 1 mm, common in BraTS).
All arithmetic is done on the brain voxels only (about a fifth of the box).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

from tumorseg.sequences import SEQUENCES
from tumorseg_devkit.synth.phantom_anatomy import SHAPE, Anatomy
from tumorseg_devkit.synth.phantom_tumour import Tumour

log = logging.getLogger(__name__)

F32 = NDArray[np.float32]

# Mean intensity relative to white matter, (low, high) per case. "ncr" is necrosis in an enhancing
# tumour, "net" the non-enhancing core of a tumour without enhancement (both carry BraTS label 1).
_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "flair": {
        "gm": (1.15, 1.40),  # cortex carries CSF partial volume: keep a margin
        "csf": (0.20, 0.45),
        "vessel": (0.20, 0.60),
        "ed": (1.60, 2.30),
        "ncr": (0.50, 1.50),
        "net": (1.30, 1.90),
        "et": (1.20, 1.80),
    },
    "t1": {
        "gm": (0.62, 0.80),
        "csf": (0.18, 0.38),
        "vessel": (0.30, 0.70),
        "ed": (0.66, 0.85),
        "ncr": (0.22, 0.45),
        "net": (0.45, 0.68),
        "et": (0.62, 0.85),
    },
    "t1ce": {
        "gm": (0.62, 0.80),
        "csf": (0.18, 0.38),
        "vessel": (1.20, 1.80),
        "ed": (0.66, 0.85),
        "ncr": (0.18, 0.42),
        "net": (0.45, 0.70),
        "et": (1.35, 2.00),
    },
    "t2": {
        "gm": (1.25, 1.60),
        "csf": (2.60, 3.60),
        "vessel": (0.30, 0.90),  # flow voids
        "ed": (1.80, 2.60),
        "ncr": (2.00, 3.00),
        "net": (1.80, 2.60),
        "et": (1.30, 1.90),
    },
}
_TEXTURE_STEP = 3  # mm between nodes of the texture fields


def _texture_fields(rng: np.random.Generator, n: int) -> list[F32]:
    """Smooth random fields on a 3 mm lattice covering the box, unit std: tissue heterogeneity."""
    shape = tuple(s // _TEXTURE_STEP + 2 for s in SHAPE)
    fields = []
    for _ in range(n):
        f = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), rng.uniform(0.6, 1.5))
        f /= max(float(f.std()), 1e-6)
        fields.append(f)
    return fields


def _bias(rng: np.random.Generator, coords: F32) -> F32:
    """exp of a few long plane waves (wavelength 150-400 mm): a smooth multiplicative bias, within +/-13 %."""
    log_bias = np.zeros(coords.shape[1], dtype=np.float32)
    for _ in range(3):
        direction = rng.standard_normal(3)
        direction *= 2 * np.pi / (rng.uniform(150, 400) * np.linalg.norm(direction))
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        amp = np.float32(rng.uniform(0.0, 0.04))
        log_bias += amp * np.cos(direction.astype(np.float32) @ coords + phase)
    return np.exp(log_bias)


def _blur_along_axis(values: F32, where: tuple[NDArray[np.intp], ...], axis: int, sigma: float) -> F32:
    # Only the brain's bounding box (plus the kernel's reach) is filtered: half the work of the full box.
    lo = [max(int(w.min()) - 8, 0) for w in where]
    hi = [int(w.max()) + 9 for w in where]
    local = tuple(w - o for w, o in zip(where, lo, strict=True))
    block = np.zeros([h - o for h, o in zip(hi, lo, strict=True)], dtype=np.float32)
    block[local] = values
    ndi.gaussian_filter1d(block, sigma, axis=axis, output=block)
    return block[local]


@dataclass(frozen=True, eq=False)
class BrainContrast:
    """One modality of one case, as 1-d arrays over the brain voxels (``Anatomy.voxels``, in that order).

    ``signal`` (float32) is the noiseless image relative to white matter = 1: the partial-volume mix of the
    per-tissue ``means``, texture and the optional through-plane blur, before bias, scale and noise.
    ``means`` are the per-tissue means drawn for the case (keys ``wm`` = 1.0, ``gm``, ``csf``, ``vessel``,
    ``ed``, ``ncr``, ``net``, ``et``). ``values`` (int16, >= 1) are what ``synthesize`` writes on those
    voxels: ``signal`` times a bias field and a scale, with Rician noise.
    """

    signal: F32
    means: dict[str, float]
    values: NDArray[np.int16]


@dataclass(frozen=True, eq=False)
class _Mixture:
    """What the four modalities share: tissue fractions, texture fields and texture amplitudes."""

    fractions: dict[str, F32]
    texture_a: F32
    texture_b: F32
    texture_amp: dict[str, float]


def _mixture(
    anatomy: Anatomy, tumour: Tumour, enhancing: bool, coords: F32, rng: np.random.Generator
) -> _Mixture:
    where = anatomy.voxels
    core_kind = "ncr" if enhancing else "net"

    ed_strength = np.float32(rng.uniform(0.8, 1.0))  # oedema infiltrates: some normal signal remains
    core, et = tumour.core[where], tumour.et[where]
    ed = np.minimum(tumour.ed[where] * ed_strength, 1 - core - et)
    normal = 1 - core - et - ed
    fractions = {
        "wm": anatomy.wm[where] * normal,
        "gm": anatomy.gm[where] * normal,
        "csf": anatomy.csf[where] * normal,
        "ed": ed,
        core_kind: core,
        "et": et,
    }
    tex_a, tex_b, tex_c = (
        ndi.map_coordinates(f, coords / np.float32(_TEXTURE_STEP), order=1, output=np.float32)
        for f in _texture_fields(rng, 3)
    )
    # Vessels and choroid plexus: thin level-set sheets of a random field inside the CSF spaces, bright
    # on T1ce only (strength 0 to strong per case), so that not every bright T1ce voxel is tumour.
    band = np.abs(tex_c) < np.float32(rng.uniform(0.05, 0.15))
    vessel = np.where(band, fractions["csf"] * np.float32(rng.uniform(0.0, 0.8)), np.float32(0))
    fractions["csf"] = fractions["csf"] - vessel
    fractions["vessel"] = vessel
    texture_amp = {
        "wm": 0.03,
        "gm": 0.04,
        "csf": 0.05,
        "vessel": 0.05,
        "ed": 0.08,
        "ncr": 0.12,
        "net": 0.10,
        "et": 0.12,
    }
    texture_amp = {k: v * rng.uniform(0.5, 1.5) for k, v in texture_amp.items()}
    return _Mixture(fractions, tex_a, tex_b, texture_amp)


def _noiseless(
    modality: str, mix: _Mixture, where: tuple[NDArray[np.intp], ...], rng: np.random.Generator
) -> tuple[F32, dict[str, float]]:
    """Signal relative to WM (texture and optional blur included) and the tissue means of ``modality``."""
    theta = rng.uniform(0, 2 * np.pi)
    texture = np.float32(np.cos(theta)) * mix.texture_a + np.float32(np.sin(theta)) * mix.texture_b
    means = {"wm": 1.0} | {t: float(rng.uniform(*r)) for t, r in _RANGES[modality].items()}
    signal = np.zeros(texture.size, dtype=np.float32)
    for tissue, frac in mix.fractions.items():
        signal += frac * np.float32(means[tissue]) * (1 + np.float32(mix.texture_amp[tissue]) * texture)
    if rng.random() < 0.3:
        axis = int(rng.choice(3, p=[0.2, 0.2, 0.6]))
        signal = _blur_along_axis(signal, where, axis, rng.uniform(0.6, 1.5))
    return signal, means


def _acquire(modality: str, signal: F32, coords: F32, rng: np.random.Generator) -> NDArray[np.int16]:
    """Bias, global scale and Rician noise on ``signal``: the values of the skull-stripped phantom."""
    signal = signal * _bias(rng, coords)
    scale = np.float32(np.exp(rng.uniform(np.log(150), np.log(2000))))
    signal *= scale
    sigma = np.float32(rng.uniform(0.008, 0.05)) * scale
    # Rician magnitude noise: |signal + complex Gaussian|.
    real = signal + sigma * rng.standard_normal(signal.size, dtype=np.float32)
    imag = sigma * rng.standard_normal(signal.size, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    log.debug("%s: scale %.0f, noise %.1f", modality, scale, sigma)
    return np.clip(np.rint(magnitude), 1, np.iinfo(np.int16).max).astype(np.int16)


def render(
    anatomy: Anatomy, tumour: Tumour, enhancing: bool, rng: np.random.Generator
) -> dict[str, BrainContrast]:
    """Per modality (``SEQUENCES`` order), the brain's noiseless signal, tissue means and final values.

    Arrays are 1-d over ``anatomy.voxels`` (see ``BrainContrast``). The draws from ``rng`` are exactly
    those of ``synthesize``, in the same order (shared mixture, then per modality: contrast, then
    acquisition), so the signal and means of a seed are those behind ``generate_case(seed)``'s images.
    Label 1 (``tumour.core``) is rendered as necrosis when ``enhancing`` and as non-enhancing core otherwise.
    """
    where = anatomy.voxels
    coords = np.stack(where).astype(np.float32)
    mix = _mixture(anatomy, tumour, enhancing, coords, rng)
    out: dict[str, BrainContrast] = {}
    for modality in SEQUENCES:
        signal, means = _noiseless(modality, mix, where, rng)
        out[modality] = BrainContrast(
            signal=signal, means=means, values=_acquire(modality, signal, coords, rng)
        )
    return out


def synthesize(
    anatomy: Anatomy, tumour: Tumour, enhancing: bool, rng: np.random.Generator
) -> dict[str, NDArray[np.int16]]:
    """The four modalities (``SEQUENCES``), int16 on ``SHAPE`` (axes i, j, k of ``BRATS_AFFINE``), >= 1
    inside the brain and 0 outside.

    Label 1 (``tumour.core``) is rendered as necrosis when ``enhancing`` and as non-enhancing core otherwise.
    """
    images: dict[str, NDArray[np.int16]] = {}
    for modality, contrast in render(anatomy, tumour, enhancing, rng).items():
        volume = np.zeros(SHAPE, dtype=np.int16)
        volume[anatomy.voxels] = contrast.values
        images[modality] = volume
    return images
