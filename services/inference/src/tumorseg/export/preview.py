"""A preview PNG: the reference image with the mask overlaid in three planes through the tumour.

Geometry contract. ``reference`` (float, any pixel type) and ``mask`` (BraTS labels 0/1/2/4) are
``SimpleITK.Image``s on the same lattice, in patient LPS millimetres with any direction (oblique and
sagittal acquisitions included). For display both are resampled onto three axis-aligned planes in
PATIENT space — axial, coronal, sagittal — through one centre point: the centre of mass of the whole tumour
(WT, every non-zero label), or the centre of the reference volume when the mask is empty. The image is
interpolated linearly, the mask by nearest neighbour, so labels are never blended into new labels.
Each plane covers the axis-aligned bounding box of the reference volume with square pixels of one size
for all three panels (mm per pixel is the same across panels).

Display convention: radiological — the patient's right is on the image's left in the axial and coronal
panels; anterior is left in the sagittal panel; superior is up. Each panel's edges carry the patient
direction letters (R/L, A/P, S/I), derived from the panel's LPS axes rather than written per panel, and
small ticks on the panel borders mark where the other two planes cut it. The legend names the colours.

``render_preview`` also returns the layout (where each panel lies in the PNG and which LPS point each
panel pixel shows), so tests can check the planes against known positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import NDArray
from PIL import Image, ImageDraw, ImageFont

from tumorseg.labels import LABEL_STYLE

log = logging.getLogger(__name__)

OVERLAY_ALPHA = 0.5
PANEL_PX = 256  # the longest side of the reference's bounding box, in preview pixels
SIDE = 28  # room on each side of a panel for its direction letters and plane ticks
TITLE_PX = 20
LEGEND_PX = 58
WINDOW_PERCENTILES = (0.5, 99.5)

# (name, column direction, row direction) in LPS: the image's +column and +row axes.
PLANES: tuple[tuple[str, tuple[float, float, float], tuple[float, float, float]], ...] = (
    ("axial", (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),  # column → patient left, row → posterior
    ("coronal", (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),  # column → patient left, row → inferior
    ("sagittal", (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),  # column → posterior, row → inferior
)
_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_LETTERS = {(0, 1): "L", (0, -1): "R", (1, 1): "P", (1, -1): "A", (2, 1): "S", (2, -1): "I"}


@dataclass(frozen=True)
class Panel:
    """One plane in the PNG: pixel (column c, row r) of ``box`` shows LPS point
    ``origin_lps + c · column_step_lps + r · row_step_lps`` (mm)."""

    plane: str
    box: tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive), PNG pixels
    origin_lps: tuple[float, float, float]
    column_step_lps: tuple[float, float, float]
    row_step_lps: tuple[float, float, float]

    def to_lps(self, column: float, row: float) -> NDArray[np.float64]:
        return (
            np.asarray(self.origin_lps)
            + column * np.asarray(self.column_step_lps)
            + row * np.asarray(self.row_step_lps)
        )


@dataclass(frozen=True)
class PreviewLayout:
    centre_lps: tuple[float, float, float]
    tumour_found: bool
    panels: tuple[Panel, ...]


def _letter(axis: NDArray[np.float64]) -> str:
    index = int(np.argmax(np.abs(axis)))
    return _LETTERS[(index, 1 if axis[index] > 0 else -1)]


def _centre(mask: sitk.Image) -> tuple[NDArray[np.float64], bool]:
    """WT centre of mass in LPS, or the volume centre when the mask is empty; and whether it was a tumour."""
    tumour = sitk.GetArrayViewFromImage(mask) > 0  # (k, j, i)
    count = int(np.count_nonzero(tumour))
    found = count > 0
    if found:  # mean index per axis from the projections: no list of voxel coordinates
        kji = [
            float(np.arange(n) @ tumour.sum(axis=tuple(a for a in range(3) if a != axis)))
            for axis, n in enumerate(tumour.shape)
        ]
        index = np.asarray(kji[::-1]) / count
    else:
        index = (np.asarray(mask.GetSize(), dtype=np.float64) - 1) / 2
    return np.asarray(mask.TransformContinuousIndexToPhysicalPoint([float(v) for v in index])), found


def _bounding_box(image: sitk.Image) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """LPS min and max corners of the volume's voxel extent (voxel edges, not centres)."""
    size = np.asarray(image.GetSize(), dtype=np.float64)
    corners = [
        image.TransformContinuousIndexToPhysicalPoint([float(c) for c in np.where(bits, size - 0.5, -0.5)])
        for bits in np.ndindex(2, 2, 2)
    ]
    points = np.asarray(corners)
    return points.min(axis=0), points.max(axis=0)


def _plane_grid(
    column_dir: NDArray[np.float64],
    row_dir: NDArray[np.float64],
    centre: NDArray[np.float64],
    low: NDArray[np.float64],
    high: NDArray[np.float64],
    step: float,
) -> tuple[sitk.Image, NDArray[np.float64]]:
    """A one-slice grid whose (column, row) axes are the panel's, through ``centre``; and its top-left
    pixel centre. The grid's direction may be improper (det -1): it is only a sampling lattice."""
    extent = high - low
    columns = max(1, int(round(abs(float(column_dir @ extent)) / step)))
    rows = max(1, int(round(abs(float(row_dir @ extent)) / step)))
    # Start each in-plane axis at the box edge it points away from; keep the centre on the plane's normal.
    start = centre.copy()
    for axis in (column_dir, row_dir):
        index = int(np.argmax(np.abs(axis)))
        start[index] = (low[index] if axis[index] > 0 else high[index]) + axis[index] * step / 2
    normal = np.cross(column_dir, row_dir)
    grid = sitk.Image([columns, rows, 1], sitk.sitkUInt8)
    grid.SetOrigin([float(v) for v in start])
    grid.SetSpacing([step, step, step])
    grid.SetDirection([float(v) for v in np.column_stack([column_dir, row_dir, normal]).ravel()])
    return grid, start


def _window(reference: sitk.Image) -> tuple[float, float]:
    sample = sitk.GetArrayViewFromImage(reference)[::2, ::2, ::2]
    low, high = np.percentile(sample, WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def _panel_rgb(
    reference: sitk.Image, mask: sitk.Image, grid: sitk.Image, window: tuple[float, float]
) -> NDArray[np.uint8]:
    """(rows, columns, 3) uint8: the windowed image with the labels blended in their colours."""
    image = sitk.Resample(reference, grid, sitk.Transform(), sitk.sitkLinear, window[0], sitk.sitkFloat32)
    labels = sitk.Resample(mask, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    grey = np.clip((sitk.GetArrayViewFromImage(image)[0] - window[0]) / (window[1] - window[0]), 0, 1)
    rgb = np.repeat((grey * 255.0)[..., None], 3, axis=-1)
    label_array = sitk.GetArrayViewFromImage(labels)[0]
    for label, (_, _, colour) in LABEL_STYLE.items():
        where = label_array == label
        rgb[where] = (1 - OVERLAY_ALPHA) * rgb[where] + OVERLAY_ALPHA * np.asarray(colour, dtype=np.float64)
    return np.round(rgb).astype(np.uint8)


def render_preview(
    reference: sitk.Image, mask: sitk.Image, *, panel_px: int = PANEL_PX, note: str | None = None
) -> tuple[Image.Image, PreviewLayout]:
    """The preview as a Pillow RGB image and its layout (see the module docstring); ``note`` (e.g. the
    sequences a study lacked) is written after the legend's last line."""
    if reference.GetSize() != mask.GetSize():
        raise ValueError(f"mask size {mask.GetSize()} differs from the reference's {reference.GetSize()}")
    centre, found = _centre(mask)
    low, high = _bounding_box(reference)
    step = float(max(high - low)) / panel_px
    window = _window(reference)

    pictures: list[
        tuple[str, NDArray[np.uint8], NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]
    ]
    pictures = []
    for name, column_dir, row_dir in PLANES:
        cd, rd = np.asarray(column_dir), np.asarray(row_dir)
        grid, start = _plane_grid(cd, rd, centre, low, high, step)
        pictures.append((name, _panel_rgb(reference, mask, grid, window), start, cd * step, rd * step))

    font = ImageFont.load_default(size=13)
    width = max(640, sum(p[1].shape[1] + 2 * SIDE for p in pictures))
    height = TITLE_PX + 2 * SIDE + max(p[1].shape[0] for p in pictures) + LEGEND_PX
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    panels = []
    left = SIDE
    top = TITLE_PX + SIDE
    for name, rgb, start, column_step, row_step in pictures:
        rows, columns = rgb.shape[:2]
        canvas.paste(Image.fromarray(rgb, "RGB"), (left, top))
        panel = Panel(name, (left, top, left + columns, top + rows), *_tuples(start, column_step, row_step))
        panels.append(panel)
        _annotate(draw, font, panel, centre)
        left += columns + 2 * SIDE
    _legend(draw, font, height, found, note)
    layout = PreviewLayout(tuple(float(v) for v in centre), found, tuple(panels))  # type: ignore[arg-type]
    return canvas, layout


def _tuples(
    *vectors: NDArray[np.float64],
) -> tuple[tuple[float, float, float], ...]:
    return tuple((float(v[0]), float(v[1]), float(v[2])) for v in vectors)


def _annotate(draw: ImageDraw.ImageDraw, font: _Font, panel: Panel, centre: NDArray[np.float64]) -> None:
    left, top, right, bottom = panel.box
    middle_x, middle_y = (left + right) // 2, (top + bottom) // 2
    column_step, row_step = np.asarray(panel.column_step_lps), np.asarray(panel.row_step_lps)
    white = (255, 255, 255)
    draw.text((left - SIDE + 4, top - SIDE - TITLE_PX + 4), panel.plane, fill=white, font=font)
    edge_letters = (
        ((left - SIDE // 2, middle_y), _letter(-column_step)),
        ((right + SIDE // 2, middle_y), _letter(column_step)),
        ((middle_x, top - SIDE // 2), _letter(-row_step)),
        ((middle_x, bottom + SIDE // 2), _letter(row_step)),
    )
    for xy, letter in edge_letters:
        draw.text(xy, letter, fill=white, font=font, anchor="mm")
    # Ticks where the other planes cut this one: the centre's pixel position along each panel axis.
    offset = centre - np.asarray(panel.origin_lps)
    column = left + offset @ column_step / (column_step @ column_step)
    row = top + offset @ row_step / (row_step @ row_step)
    grey = (160, 160, 160)
    draw.line([(column, top - 6), (column, top - 1)], fill=grey)
    draw.line([(column, bottom), (column, bottom + 5)], fill=grey)
    draw.line([(left - 6, row), (left - 1, row)], fill=grey)
    draw.line([(right, row), (right + 5, row)], fill=grey)


def _legend(draw: ImageDraw.ImageDraw, font: _Font, height: int, found: bool, extra: str | None) -> None:
    x, y = SIDE, height - LEGEND_PX + 6
    for abbreviation, name, colour in LABEL_STYLE.values():
        draw.rectangle([x, y, x + 12, y + 12], fill=colour)
        text = f"{abbreviation} {name}"
        draw.text((x + 18, y - 1), text, fill=(255, 255, 255), font=font)
        x += 18 + int(draw.textlength(text, font=font)) + 20
    where = "tumour centre of mass" if found else "volume centre (no tumour found)"
    note = f"radiological convention (patient right on image left); planes through the {where}"
    draw.text((SIDE, y + 22), note, fill=(200, 200, 200), font=font)
    if extra:
        x = SIDE + int(draw.textlength(note, font=font)) + 20
        draw.text((x, y + 22), extra, fill=(255, 200, 0), font=font)


def write_preview(
    reference: sitk.Image, mask: sitk.Image, path: Path, note: str | None = None
) -> PreviewLayout:
    """Render and write the preview PNG to ``path``; returns its layout."""
    canvas, layout = render_preview(reference, mask, note=note)
    canvas.save(path, format="PNG", optimize=False, compress_level=1)  # fast; a few hundred kB
    return layout
