"""The preview PNG: three patient-space planes through the tumour, overlay colours, display convention.

A synthetic reference (oblique or sagittal lattice, anisotropic voxels) holds a concentric blob placed
off the volume centre towards patient left, anterior and superior: ET (r ≤ 5 mm) inside NCR (≤ 9 mm)
inside ED (≤ 14 mm). A plane through the blob centre shows all three colours; one 10 mm off shows no ET.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.typing import NDArray
from PIL import Image

from tumorseg.export.preview import LABEL_STYLE, OVERLAY_ALPHA, Panel, PreviewLayout, write_preview

OFFSET_LPS = np.array([15.0, -12.0, 10.0])  # from the volume centre: patient left, anterior, superior
RADII = {4: 5.0, 1: 9.0, 2: 14.0}


def _rotation(axis: int, degrees: float) -> NDArray[np.float64]:
    c, s = np.cos(np.deg2rad(degrees)), np.sin(np.deg2rad(degrees))
    i, j = [a for a in range(3) if a != axis]
    rotation = np.eye(3)
    rotation[i, i], rotation[i, j], rotation[j, i], rotation[j, j] = c, -s, s, c
    return rotation


DIRECTIONS = {
    # columns: row direction, column direction, slice normal (LPS)
    "oblique": _rotation(0, 20.0) @ _rotation(2, 10.0),
    "sagittal": np.column_stack([(0.0, 1.0, 0.0), (0.0, 0.0, -1.0), (-1.0, 0.0, 0.0)]),
}


def synthetic(
    direction: NDArray[np.float64], with_tumour: bool = True
) -> tuple[sitk.Image, sitk.Image, NDArray[np.float64]]:
    """Reference and mask on one lattice (size 80×72×34, spacing 1.0×1.2×2.5 mm), and the blob centre."""
    size, spacing = np.array([80, 72, 34]), np.array([1.0, 1.2, 2.5])
    matrix = direction * spacing
    centre_offset = matrix @ ((size - 1) / 2)
    origin = np.array([3.0, -20.0, 40.0]) - centre_offset  # volume centre at (3, -20, 40)
    blob = np.array([3.0, -20.0, 40.0]) + OFFSET_LPS
    k, j, i = np.indices(size[::-1])
    points = np.stack([i, j, k], axis=-1) @ matrix.T + origin  # (k, j, i, 3) LPS
    distance = np.linalg.norm(points - blob, axis=-1)
    intensity = (100.0 + points[..., 0] - points[..., 1] + 0.5 * points[..., 2]).astype(np.float32)
    labels = np.zeros(distance.shape, dtype=np.uint8)
    if with_tumour:
        for label in (2, 1, 4):  # outermost first, so inner shells overwrite
            labels[distance <= RADII[label]] = label
    images = []
    for array in (intensity, labels):
        image = sitk.GetImageFromArray(array)
        image.SetOrigin([float(v) for v in origin])
        image.SetSpacing([float(v) for v in spacing])
        image.SetDirection([float(v) for v in direction.ravel()])
        images.append(image)
    return images[0], images[1], blob


def overlay_pixels(png: NDArray[np.uint8], panel: Panel, label: int) -> NDArray[np.int64]:
    """(column, row) of the panel's pixels blended with ``label``'s colour: p − α·colour is grey."""
    left, top, right, bottom = panel.box
    crop = png[top:bottom, left:right].astype(np.float64)
    rest = crop - OVERLAY_ALPHA * np.asarray(LABEL_STYLE[label][2], dtype=np.float64)
    grey = rest.max(axis=-1) - rest.min(axis=-1) <= 2.0
    rows, columns = np.nonzero(grey)
    return np.stack([columns, rows], axis=-1)


def render(
    tmp_path: Path, reference: sitk.Image, mask: sitk.Image
) -> tuple[NDArray[np.uint8], PreviewLayout]:
    path = tmp_path / "preview.png"
    layout = write_preview(reference, mask, path)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        return np.asarray(image), layout


@pytest.mark.parametrize("acquisition", sorted(DIRECTIONS))
def test_three_planes_cut_through_the_tumour_centre(acquisition: str, tmp_path: Path) -> None:
    reference, mask, blob = synthetic(DIRECTIONS[acquisition])
    png, layout = render(tmp_path, reference, mask)
    assert layout.tumour_found
    assert np.allclose(layout.centre_lps, blob, atol=1.0)
    assert [p.plane for p in layout.panels] == ["axial", "coronal", "sagittal"]
    for panel in layout.panels:
        for label in LABEL_STYLE:
            assert len(overlay_pixels(png, panel, label)) > 0, (panel.plane, label)
        # The ET disc is centred where the panel shows the blob centre, and that point is on the plane.
        et = overlay_pixels(png, panel, 4).mean(axis=0)
        assert np.linalg.norm(panel.to_lps(*et) - blob) < 1.5, panel.plane


def test_panels_are_axis_aligned_in_radiological_convention(tmp_path: Path) -> None:
    reference, mask, _ = synthetic(DIRECTIONS["oblique"])
    png, layout = render(tmp_path, reference, mask)
    axial, coronal, sagittal = layout.panels
    # Each panel's pixel axes are patient axes, whatever the acquisition's direction.
    assert np.allclose(np.sign(axial.column_step_lps), (1, 0, 0)) and np.allclose(
        np.sign(axial.row_step_lps), (0, 1, 0)
    )
    assert np.allclose(np.sign(coronal.row_step_lps), (0, 0, -1))
    assert np.allclose(np.sign(sagittal.column_step_lps), (0, 1, 0))

    def where(panel: Panel) -> NDArray[np.float64]:
        """The ET centre as a fraction of the panel's width and height."""
        left, top, right, bottom = panel.box
        return overlay_pixels(png, panel, 4).mean(axis=0) / (right - left, bottom - top)

    # The blob lies towards the patient's left, anterior and superior of the volume centre.
    assert where(axial)[0] > 0.55 and where(axial)[1] < 0.45  # left → image right (radiological); A up
    assert where(coronal)[0] > 0.55 and where(coronal)[1] < 0.45  # left → image right; S up
    assert where(sagittal)[0] < 0.45 and where(sagittal)[1] < 0.45  # anterior → image left; S up


def test_a_plane_off_the_tumour_centre_misses_the_enhancing_core(tmp_path: Path) -> None:
    """The premise of the test above: a second oedema blob 26 mm below pulls the centre of mass down,
    so the axial plane misses the ET core while the coronal and sagittal planes still cut it."""
    reference, mask, blob = synthetic(DIRECTIONS["oblique"])
    labels = sitk.GetArrayFromImage(mask)
    k, j, i = np.indices(labels.shape)
    matrix = np.asarray(mask.GetDirection()).reshape(3, 3) * np.asarray(mask.GetSpacing())
    lps = np.stack([i, j, k], axis=-1) @ matrix.T + np.asarray(mask.GetOrigin())
    labels[np.linalg.norm(lps - (blob + (0.0, 0.0, -26.0)), axis=-1) <= 12.0] = 2
    moved = sitk.GetImageFromArray(labels)
    moved.CopyInformation(mask)
    png, layout = render(tmp_path, reference, moved)
    assert blob[2] - layout.centre_lps[2] > 8.0
    axial, coronal, sagittal = layout.panels
    assert len(overlay_pixels(png, axial, 4)) == 0
    assert len(overlay_pixels(png, coronal, 4)) > 0 and len(overlay_pixels(png, sagittal, 4)) > 0


def test_empty_mask_shows_the_volume_centre_and_no_overlay(tmp_path: Path) -> None:
    reference, mask, _ = synthetic(DIRECTIONS["oblique"], with_tumour=False)
    png, layout = render(tmp_path, reference, mask)
    assert not layout.tumour_found
    assert np.allclose(layout.centre_lps, (3.0, -20.0, 40.0), atol=1e-6)
    for panel in layout.panels:
        for label in LABEL_STYLE:
            assert len(overlay_pixels(png, panel, label)) == 0
        left, top, right, bottom = panel.box
        assert png[top:bottom, left:right].std() > 10  # the reference image itself is drawn


def test_mask_on_another_lattice_is_refused() -> None:
    reference, _, _ = synthetic(DIRECTIONS["sagittal"])
    with pytest.raises(ValueError, match="size"):
        write_preview(reference, sitk.Image([4, 4, 4], sitk.sitkUInt8), Path("/nonexistent/preview.png"))
