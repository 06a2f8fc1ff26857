"""Decoy series a real brain-tumour exam also contains: a 3-plane localizer, DWI and an ADC map.

They exist to make study-to-modality mapping realistic (a b0 image looks like a T2, a localizer is
"T2-ish" too); their pixels are derived from the case's T2 and FLAIR, not simulated physics.

Contract: each decoy is a list of :class:`Stack` — a :class:`~tumorseg_devkit.synth.dicom_geometry.Lattice`
(LPS) with real-valued ``values[slice, row, column]`` and per-instance extra attributes.
- localizer: three single-plane stacks (sagittal, coronal, axial), 3 slices each through the centre
  of the source volume, ``step`` = min(20 mm, extent / 4) apart; 2 mm pixels (finer when the
  volume is under 80 mm across, so an image keeps at least 40 pixels a side).
- dwi: axial, 1.8 × 1.8 mm pixels, 5 mm slices over the source extent; one stack per b-value
  (b = 0 then b = 1000 s/mm²), trace-weighted ``b0 · exp(-b · ADC)``.
- adc: the same lattice; ADC in 10⁻⁶ mm²/s, high where T2 is bright and FLAIR dark (CSF), 0
  outside the brain (T2 = 0, BraTS is skull-stripped).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tumorseg_devkit.synth.dicom_geometry import (
    Lattice,
    Plane,
    SeriesGeometry,
    SourceVolume,
    covering_lattice,
    plan_lattice,
    sample,
    source_aligned_frame,
)

DWI_SPACING = (1.8, 1.8, 5.0)
LOCALIZER_PIXEL_MM = 2.0
LOCALIZER_THICKNESS_MM = 5.0
B_VALUES = (0, 1000)
LOCALIZER_PLANES: tuple[Plane, ...] = ("sagittal", "coronal", "axial")


@dataclass(frozen=True, eq=False)
class Stack:
    """Slices on one lattice: ``values[slice, row, column]`` (real intensities) plus per-instance tags."""

    lattice: Lattice
    values: np.ndarray
    extra: Mapping[str, object] = field(default_factory=dict)


def localizer(t2: SourceVolume) -> list[Stack]:
    """Three orthogonal 3-slice stacks through the middle of the volume."""
    stacks = []
    for plane in LOCALIZER_PLANES:
        frame, _ = source_aligned_frame(t2, plane)
        extent = float(np.ptp(t2.corners() @ frame[:, 2]))
        step = max(min(20.0, extent / 4), 1.0)
        # 2 mm pixels, finer for small volumes so an image keeps >= 40 pixels a side.
        pixel = min(LOCALIZER_PIXEL_MM, float(np.ptp(t2.corners() @ frame[:, :2], axis=0).min()) / 40)
        full = covering_lattice(t2, frame, (pixel, pixel, step))
        mid = full.size[2] // 2
        lattice = Lattice(
            origin=full.slice_position(max(mid - 1, 0)),
            direction=frame,
            spacing=full.spacing,
            size=(full.size[0], full.size[1], min(3, full.size[2])),
        )
        stacks.append(Stack(lattice, sample(t2, lattice)))
    return stacks


def diffusion(t2: SourceVolume, flair: SourceVolume) -> tuple[list[Stack], list[Stack]]:
    """(DWI stacks, one per b-value; the ADC stack) on one axial 5 mm lattice."""
    lattice = plan_lattice(t2, SeriesGeometry(plane="axial", spacing=DWI_SPACING))
    b0 = np.clip(sample(t2, lattice).astype(np.float64), 0, None)
    fl = np.clip(sample(flair, lattice).astype(np.float64), 0, None)
    adc = apparent_diffusion(b0, fl)
    # Integer sources give integer images, as a scanner would (and an identity rescale).
    finish = np.rint if np.issubdtype(t2.data.dtype, np.integer) else np.asarray
    dwi = [
        Stack(
            lattice,
            finish(b0 * np.exp(-b * adc * 1e-6)),
            {"DiffusionBValue": float(b), "DiffusionDirectionality": "ISOTROPIC" if b else "NONE"},
        )
        for b in B_VALUES
    ]
    return dwi, [Stack(lattice, adc)]


def apparent_diffusion(t2: np.ndarray, flair: np.ndarray) -> np.ndarray:
    """A plausible ADC map (10⁻⁶ mm²/s, integers) from co-located T2 and FLAIR intensities."""
    brain = t2 > 0
    if not np.any(brain):
        return np.zeros_like(t2)
    t2n = t2 / max(float(np.percentile(t2[brain], 99)), 1e-6)
    fln = flair / max(float(np.percentile(flair[brain], 99)), 1e-6)
    csf = np.clip(t2n - fln, 0.0, 1.0)  # free water: bright on T2, suppressed on FLAIR
    oedema = np.clip(fln - 0.6, 0.0, 0.4)  # vasogenic oedema raises ADC a little
    adc = 750.0 + 2250.0 * csf + 1000.0 * oedema
    return np.where(brain, np.rint(adc), 0.0)
