"""Lattices for tests: building one (``lattice``, ``rotation``) and comparing two. Two volumes are on the
same lattice when one's voxel indices map onto the other's by a signed axis permutation with integral
offsets, covering the same extent. dcm2niix is the referee for DICOM → volume (it may flip or reorder axes:
compare lattices, never raw affines)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def lattice(
    size: tuple[int, int, int],
    spacing: tuple[float, float, float],
    direction: np.ndarray,
    origin: tuple[float, float, float],
) -> sitk.Image:
    """An empty uint8 image with this size (i, j, k), spacing (mm), LPS direction matrix (columns = the
    index axes) and origin (LPS mm): a lattice to resample onto."""
    image = sitk.Image(list(size), sitk.sitkUInt8)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    image.SetOrigin(origin)
    return image


def rotation(axis: int, degrees: float) -> np.ndarray:
    """The 3 × 3 rotation by ``degrees`` about the LPS axis ``axis`` (0 x, 1 y, 2 z)."""
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    a, b = [i for i in range(3) if i != axis]
    m = np.eye(3)
    m[a, a], m[a, b], m[b, a], m[b, b] = c, -s, s, c
    return m


def ras_affine(image: sitk.Image) -> np.ndarray:
    """The nibabel-style (RAS) affine of a SimpleITK image (LPS), index order (i, j, k)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return LPS_TO_RAS @ affine


def dcm2niix(series_folder: Path, out: Path) -> nib.Nifti1Image:
    """dcm2niix's conversion of one series folder (no BIDS sidecar, uncompressed)."""
    assert shutil.which("dcm2niix"), "dcm2niix is required (make setup installs it)"
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["dcm2niix", "-b", "n", "-z", "n", "-f", "%s", "-o", str(out), str(series_folder)],
        check=True,
        capture_output=True,
    )
    (nifti,) = out.glob("*.nii")
    return nib.load(nifti)  # type: ignore[return-value]


def index_map(
    ref_affine: np.ndarray, ref_shape: tuple[int, ...], other_affine: np.ndarray, other_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(P, t) with ref index = P @ other index + t; fails unless both lattices are the same point set."""
    m = np.linalg.solve(ref_affine, other_affine)
    perm, shift = np.rint(m[:3, :3]), np.rint(m[:3, 3])
    assert np.allclose(m[:3, :3], perm, atol=1e-4), f"not an axis permutation:\n{m}"
    assert np.array_equal(np.abs(perm).sum(axis=0), [1, 1, 1])
    assert np.array_equal(np.abs(perm).sum(axis=1), [1, 1, 1])
    assert np.allclose(m[:3, 3], shift, atol=1e-3), f"voxel centres off the reference grid: {m[:3, 3]}"
    hi = np.abs(perm) @ (np.array(other_shape[:3]) - 1)
    lo = shift
    ends = perm @ (np.array(other_shape[:3]) - 1) + shift
    assert np.array_equal(np.minimum(lo, ends), [0, 0, 0]), "lattices differ"
    assert np.array_equal(hi, np.array(ref_shape[:3]) - 1), "lattices differ in extent"
    return perm, shift


def reindex(data: np.ndarray, perm: np.ndarray, shift: np.ndarray, ref_shape: tuple[int, ...]) -> np.ndarray:
    """``data`` (on the 'other' lattice of ``index_map``) rearranged onto the reference lattice."""
    index = (perm @ np.indices(data.shape[:3]).reshape(3, -1) + shift[:, None]).astype(int)
    out = np.full(ref_shape[:3], np.nan)
    out[tuple(index)] = data.reshape(-1)
    assert not np.isnan(out).any(), "the volume does not cover the reference lattice"
    return out


def onto_lattice_of(reference: nib.Nifti1Image, other: nib.Nifti1Image) -> np.ndarray:
    """``other``'s voxels placed at ``reference``'s indices; fails unless the two lattices coincide."""
    perm, shift = index_map(reference.affine, reference.shape, other.affine, other.shape)
    return reindex(np.asarray(other.get_fdata(dtype=np.float64)), perm, shift, reference.shape)


def as_nifti(image: sitk.Image) -> nib.Nifti1Image:
    """A SimpleITK image as an in-memory nibabel image (array in (i, j, k) order, RAS affine)."""
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    return nib.Nifti1Image(array, ras_affine(image))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 1.0 if total == 0 else 2.0 * np.count_nonzero(a & b) / total
