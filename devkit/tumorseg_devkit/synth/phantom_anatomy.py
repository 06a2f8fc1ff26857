"""Anatomy of the phantoms: nilearn's MNI152 tissue templates, randomly posed and deformed into the BraTS box.

Contract
- Output lattice: ``SHAPE`` = (240, 240, 155) voxels, 1 mm isotropic; array axes are the NIfTI voxel
  axes (i, j, k). ``BRATS_AFFINE`` (nibabel convention: voxel -> RAS+ mm) is diag(-1, -1, 1) with the
  translation (0, 239, 0), the header of the BraTS 2021 release files: i runs right -> left, j anterior
  -> posterior, k inferior -> superior (``nibabel.aff2axcodes`` gives ('L', 'P', 'S')).
- ``Anatomy`` holds a boolean brain mask and float32 WM/GM/CSF fractions on that lattice; the fractions
  sum to 1 inside the brain and are 0 outside it.
- Templates: the MNI152 2009 (symmetric, 1 mm) brain mask and GM/WM probability maps shipped inside the
  nilearn package (no network), loaded once per process. CSF is what the brain mask holds beyond GM and
  WM: ventricles, cisterns and sulcal CSF.

Per case: a random pose (rotation, anisotropic scale, shift), a smooth elastic field (two scales), the
ventricles enlarged or shrunk, and each tumour's mass effect. These are evaluated on a coarse lattice
(every 4th voxel) and interpolated trilinearly, and the templates are sampled only near the brain: that
keeps the geometry of one case at one to two seconds of CPU.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage as ndi

log = logging.getLogger(__name__)

SHAPE: tuple[int, int, int] = (240, 240, 155)
BRATS_AFFINE: NDArray[np.float64] = np.array(
    [[-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 239.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
SITES: tuple[str, ...] = ("deep", "periventricular", "cortical")

_COARSE = 4  # voxels between nodes of the coarse deformation lattice
_SITE_STEP = 2  # template voxels between entries of the tumour-site catalogue

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Templates:
    """The MNI152 tissue maps on the template lattice (197 x 233 x 189, 1 mm, RAS, float32 in [0, 1])."""

    gm: F32
    wm: F32
    csf: F32
    support: NDArray[np.uint8]  # brain mask dilated by 5 voxels: where sampling can still find brain
    vox_from_mm: F64  # inverse of the template affine (4 x 4)
    centre_mm: F64  # centre of the brain's bounding box, MNI mm
    extent_mm: F64  # size of that bounding box, mm
    sites: dict[str, F64]  # tumour-site catalogue: site name -> (n, 3) MNI mm coordinates
    ventricle_centre_mm: F64  # centroid of the deep CSF (ventricular system), MNI mm


@dataclass(frozen=True)
class Pose:
    """Where the template lands in the box: ``q - template_centre = linear @ (p - out_centre)`` (mm, RAS)."""

    linear: F64  # 3 x 3, output mm -> template mm
    out_centre_mm: F64
    template_centre_mm: F64

    def to_output_vox(self, q_mm: F64) -> F64:
        """Template mm (n, 3) -> output voxel coordinates (n, 3), ignoring the elastic field."""
        p_mm = (np.linalg.solve(self.linear, (q_mm - self.template_centre_mm).T)).T + self.out_centre_mm
        vox_from_mm = np.linalg.inv(BRATS_AFFINE)
        return p_mm @ vox_from_mm[:3, :3].T + vox_from_mm[:3, 3]


@dataclass(frozen=True)
class MassEffect:
    """Radial push around a tumour: content at distance r moves to r / (1 - a exp(-r^2 / 2 s^2)) roughly."""

    centre_mm: F64  # output RAS mm
    amplitude: float  # a < 1: how much the centre is magnified
    sigma_mm: float


@dataclass(frozen=True, eq=False)
class Anatomy:
    """Deformed anatomy on ``SHAPE`` (axes i, j, k of ``BRATS_AFFINE``): brain mask and tissue fractions."""

    brain: NDArray[np.bool_]
    wm: F32
    gm: F32
    csf: F32
    voxels: tuple[NDArray[np.intp], ...]  # np.nonzero(brain), kept because it costs a full pass


@functools.lru_cache(maxsize=1)
def load_templates() -> Templates:
    """Load (once per process) the MNI152 templates shipped with nilearn and derive CSF and tumour sites."""
    # Imported here: nilearn takes seconds to import and only the phantom generator needs it.
    from nilearn import datasets

    gm_img = datasets.load_mni152_gm_template(resolution=1)
    wm_img = datasets.load_mni152_wm_template(resolution=1)
    mask_img = datasets.load_mni152_brain_mask(resolution=1)
    affine = np.asarray(mask_img.affine, dtype=np.float64)
    for img in (gm_img, wm_img):
        if img.shape != mask_img.shape or not np.allclose(img.affine, affine):
            raise RuntimeError("nilearn's MNI152 templates do not share one lattice")
    mask = np.asarray(mask_img.dataobj) > 0
    gm = np.where(mask, np.asarray(gm_img.dataobj, dtype=np.float32), np.float32(0))
    wm = np.where(mask, np.asarray(wm_img.dataobj, dtype=np.float32), np.float32(0))
    csf = np.clip(mask.astype(np.float32) - gm - wm, 0.0, 1.0)
    support = ndi.maximum_filter(mask.astype(np.uint8), size=11)

    nz = np.argwhere(mask)
    lo_mm = affine[:3, :3] @ nz.min(0) + affine[:3, 3]
    hi_mm = affine[:3, :3] @ nz.max(0) + affine[:3, 3]
    sites, ventricle_centre = _site_catalogue(mask, gm + wm, csf, affine)
    log.debug("MNI152 templates loaded: %s sites", {k: len(v) for k, v in sites.items()})
    return Templates(
        gm=gm,
        wm=wm,
        csf=csf,
        support=support,
        vox_from_mm=np.asarray(np.linalg.inv(affine), dtype=np.float64),
        centre_mm=(lo_mm + hi_mm) / 2,
        extent_mm=hi_mm - lo_mm + 1,
        sites=sites,
        ventricle_centre_mm=ventricle_centre,
    )


def _site_catalogue(
    mask: NDArray[np.bool_], tissue: F32, csf: F32, affine: F64
) -> tuple[dict[str, F64], F64]:
    """Candidate tumour centres (MNI mm) by kind, on a 2 mm grid: deep WM, around the ventricles, near
    cortex; and the centroid of the ventricles."""
    s = _SITE_STEP
    m2, t2, c2 = mask[::s, ::s, ::s], tissue[::s, ::s, ::s] > 0.6, csf[::s, ::s, ::s]
    depth = ndi.distance_transform_edt(m2) * s
    # Deep CSF is the ventricular system (and the deepest cisterns); sulcal CSF lies near the surface.
    ventricles = (c2 > 0.6) & (depth > 12)
    to_ventricle = ndi.distance_transform_edt(~ventricles) * s
    # Gliomas in BraTS are nearly all supratentorial, and the posterior fossa has no room for a large
    # one: no sites below the tentorium (MNI z < -10 behind y = -30, or the brainstem).
    x, y, z = (affine[a, a] * np.arange(n) * s + affine[a, 3] for a, n in enumerate(m2.shape))
    infratentorial = (z[None, None, :] < -10) & (
        (y[None, :, None] < -30) | ((np.abs(x)[:, None, None] < 15) & (y[None, :, None] < -10))
    )
    t2 = t2 & ~infratentorial
    masks = {
        "deep": t2 & (depth >= 18) & (to_ventricle > 8),
        "periventricular": t2 & (to_ventricle >= 2) & (to_ventricle <= 10),
        "cortical": t2 & (depth >= 4) & (depth <= 14),
    }
    out: dict[str, F64] = {}
    for name, m in masks.items():
        vox = np.argwhere(m).astype(np.float64) * s
        out[name] = vox @ affine[:3, :3].T + affine[:3, 3]
    centre = affine[:3, :3] @ (np.argwhere(ventricles).mean(0) * s) + affine[:3, 3]
    return out, np.asarray(centre, dtype=np.float64)


def _rotation(angles: F64) -> F64:
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


def sample_pose(rng: np.random.Generator, templates: Templates) -> Pose:
    """A random pose: rotation of a few degrees, scale 0.86-1.0 (MNI152 is larger than most heads) with
    +/-5 % per axis, and a shift, keeping the brain inside the 155 slices."""
    angles = np.clip(rng.normal(0.0, np.deg2rad(3.0), 3), -np.deg2rad(7), np.deg2rad(7))
    scale = rng.uniform(0.86, 1.0) * rng.uniform(0.95, 1.05, 3)
    scale[2] = min(scale[2], 150.0 / templates.extent_mm[2])
    linear = _rotation(angles) @ np.diag(1.0 / scale)
    half_z = scale[2] * templates.extent_mm[2] / 2
    centre_vox = np.array([119.5, 119.5, 77.0]) + rng.uniform(-6, 6, 3) * np.array([1.0, 1.0, 0.4])
    centre_vox[2] = np.clip(centre_vox[2], half_z - 0.5, SHAPE[2] - 0.5 - half_z)
    out_centre = BRATS_AFFINE[:3, :3] @ centre_vox + BRATS_AFFINE[:3, 3]
    return Pose(linear=linear, out_centre_mm=out_centre, template_centre_mm=templates.centre_mm.copy())


def ventricle_resize(templates: Templates, pose: Pose, rng: np.random.Generator) -> MassEffect:
    """Enlarge or shrink the ventricles and the deep structures around them (-20 % to +30 % in radius at
    the centre): ventricle size varies widely with age and disease, and the template has only one."""
    centre_vox = pose.to_output_vox(templates.ventricle_centre_mm[None, :])[0]
    centre_mm = BRATS_AFFINE[:3, :3] @ centre_vox + BRATS_AFFINE[:3, 3]
    return MassEffect(centre_mm, float(rng.uniform(-0.2, 0.3)), float(rng.uniform(15.0, 25.0)))


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float, amplitude: float) -> F32:
    """Three-component smooth random displacement (mm) on the coarse lattice, std ``amplitude``."""
    field = rng.standard_normal((3, *shape), dtype=np.float32)
    for c in range(3):
        field[c] = ndi.gaussian_filter(field[c], sigma, mode="nearest")
    field *= np.float32(amplitude / max(float(field.std()), 1e-6))
    return field


def deform(
    templates: Templates, pose: Pose, masses: Sequence[MassEffect], rng: np.random.Generator
) -> Anatomy:
    """Resample the templates into the BraTS box through pose, mass effect and a random elastic field.

    Backward mapping, output mm p -> template mm q: the mass effects pull p towards each tumour centre
    (so tissue appears pushed away), then the pose, then the elastic displacement (two scales, 1-4 mm).
    """
    nodes = [np.arange(0, n + _COARSE, _COARSE, dtype=np.float64) for n in SHAPE]
    node_shape = tuple(len(n) for n in nodes)
    vox = np.stack(np.meshgrid(*nodes, indexing="ij")).reshape(3, -1)
    p = BRATS_AFFINE[:3, :3] @ vox + BRATS_AFFINE[:3, 3:]
    for m in masses:
        d = p - m.centre_mm[:, None]
        p = p - d * (m.amplitude * np.exp(-(d * d).sum(0) / (2 * m.sigma_mm**2)))
    q = pose.linear @ (p - pose.out_centre_mm[:, None]) + pose.template_centre_mm[:, None]
    # Coarse nodes are 4 mm apart: sigma 2.5-4 nodes is a 10-16 mm smooth warp, 1.2 nodes the fine one.
    elastic = _smooth_field(rng, node_shape, rng.uniform(2.5, 4.0), rng.uniform(1.5, 4.0))
    elastic += _smooth_field(rng, node_shape, 1.2, rng.uniform(0.3, 1.2))
    q += elastic.reshape(3, -1)
    src_coarse = (templates.vox_from_mm[:3, :3] @ q + templates.vox_from_mm[:3, 3:]).astype(np.float32)

    # A voxel's nearest node is < 2.5 template voxels away per axis (scale >= 0.82), well inside the
    # 5-voxel margin of ``support``: no brain voxel is dropped.
    near = ndi.map_coordinates(templates.support, src_coarse, order=0, cval=0).reshape(node_shape) > 0
    nearest_node = [np.rint(np.arange(n) / _COARSE).astype(np.intp) for n in SHAPE]
    candidates = np.nonzero(near[np.ix_(*nearest_node)])

    fine = np.stack(candidates).astype(np.float32) / np.float32(_COARSE)
    src_coarse = src_coarse.reshape(3, *node_shape)
    src = np.stack([ndi.map_coordinates(src_coarse[c], fine, order=1, output=np.float32) for c in range(3)])
    del fine
    fractions = [
        ndi.map_coordinates(t, src, order=1, cval=0.0, output=np.float32)
        for t in (templates.wm, templates.gm, templates.csf)
    ]
    total = fractions[0] + fractions[1] + fractions[2]
    inside = total > 0.5
    where = tuple(c[inside] for c in candidates)
    brain = np.zeros(SHAPE, dtype=bool)
    brain[where] = True
    maps = []
    for f in fractions:
        full = np.zeros(SHAPE, dtype=np.float32)
        full[where] = f[inside] / total[inside]
        maps.append(full)
    return Anatomy(brain=brain, wm=maps[0], gm=maps[1], csf=maps[2], voxels=where)
