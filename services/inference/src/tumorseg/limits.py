"""Bounds on what one request may make the service download, decode and allocate.

A crafted or broken study must be refused before it costs memory: every limit is checked from header
values (the PACS listing before the download, each instance's header before its pixels are decoded), and
a series over one raises ``SeriesTooLarge`` (HTTP 422) naming the series and the limit. The defaults fit
every brain MR protocol (a 1024² matrix, 1000 slices and a 300 mm field of view are already generous).
"""

from __future__ import annotations

from dataclasses import dataclass

from tumorseg.errors import SeriesTooLarge

DECODED_BYTES_PER_VOXEL = 4  # float32, the loaded volume's pixel type


@dataclass(frozen=True)
class InputLimits:
    max_frame_pixels: int = 2048 * 2048  # Rows × Columns of one frame
    max_series_frames: int = 2000  # instances (slices) of one series
    max_study_bytes: int = 4 * 2**30  # the decoded volumes of one request together (float32)
    max_extent_mm: float = 400.0  # field of view along each axis of a series

    def check_frame(self, label: str, rows: int, columns: int, pixel_spacing: tuple[float, float]) -> None:
        """One frame's matrix and in-plane field of view (``pixel_spacing`` = (row, column) spacing, mm)."""
        if rows * columns > self.max_frame_pixels:
            raise SeriesTooLarge(
                f"series {label}: a frame of {rows}x{columns} pixels is over the limit of "
                f"{self.max_frame_pixels} pixels (TUMORSEG_MAX_FRAME_PIXELS)"
            )
        for name, n, step in (("rows", rows, pixel_spacing[0]), ("columns", columns, pixel_spacing[1])):
            if n * step > self.max_extent_mm:
                raise SeriesTooLarge(
                    f"series {label}: {n} {name} of {step:g} mm span {n * step:.0f} mm, over the limit of "
                    f"{self.max_extent_mm:g} mm per axis (TUMORSEG_MAX_EXTENT_MM)"
                )

    def check_frames(self, label: str, frames: int) -> None:
        if frames > self.max_series_frames:
            raise SeriesTooLarge(
                f"series {label}: {frames} instances, over the limit of {self.max_series_frames} "
                "(TUMORSEG_MAX_SERIES_FRAMES)"
            )

    def check_depth(self, label: str, slices: int, spacing_mm: float) -> None:
        """The field of view along the slice normal."""
        depth = (slices - 1) * spacing_mm
        if depth > self.max_extent_mm:
            raise SeriesTooLarge(
                f"series {label}: {slices} slices {spacing_mm:g} mm apart span {depth:.0f} mm, over the limit "
                f"of {self.max_extent_mm:g} mm per axis (TUMORSEG_MAX_EXTENT_MM)"
            )

    def check_study(self, sizes: dict[str, tuple[int, int, int]]) -> None:
        """The decoded volumes of one request, ``label: (rows, columns, frames)``, against the budget."""
        total = 0
        for label, (rows, columns, frames) in sizes.items():
            total += rows * columns * frames * DECODED_BYTES_PER_VOXEL
            if total > self.max_study_bytes:
                raise SeriesTooLarge(
                    f"series {label}: the study's decoded volumes would need {total / 2**30:.1f} GiB, over "
                    f"the limit of {self.max_study_bytes / 2**30:g} GiB (TUMORSEG_MAX_STUDY_GB)"
                )
