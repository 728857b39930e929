"""Typed measurement values that cross from `biomech` to the SR writer."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_io.levels import SpineStructure

__all__ = ["HeightLine", "StructureMeasurements"]


@dataclass(frozen=True)
class HeightLine:
    """Where a height was measured: two points on one source slice.

    ``points_rc`` are (row, column) pixel-centre indices, zero-based.
    """

    slice_index: int
    points_rc: tuple[tuple[float, float], tuple[float, float]]

    def __post_init__(self) -> None:
        if self.slice_index < 0:
            raise ValueError(f"'slice_index' must be >= 0, got {self.slice_index}")
        if len(self.points_rc) != 2:
            raise ValueError(f"'points_rc' needs 2 points, got {len(self.points_rc)}")


@dataclass(frozen=True)
class StructureMeasurements:
    """Measurements of one segmented structure of one series.

    Parameters
    ----------
    structure : SpineStructure
        The named level.
    volume_cm3 : float
        Voxel count × voxel volume.
    height_mm : float
        Shorter side of the minimum-area rectangle on the centroid slice
        (DOMAIN.md §6).
    centroid_lps_mm : numpy.ndarray
        3D centre of mass in patient coordinates.
    height_line : HeightLine
        The height drawn across the rectangle, for the SR polyline.
    flags : tuple of str
        Review flags (e.g. ``"touches_field_of_view_edge"``).
    """

    structure: SpineStructure
    volume_cm3: float
    height_mm: float
    centroid_lps_mm: np.ndarray
    height_line: HeightLine
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.volume_cm3 < 0 or self.height_mm < 0:
            raise ValueError(f"negative size for {self.structure.name}: {self.volume_cm3} cm3, {self.height_mm} mm")
        if np.asarray(self.centroid_lps_mm).shape != (3,):
            raise ValueError(f"'centroid_lps_mm' needs 3 values, got {np.asarray(self.centroid_lps_mm).shape}")
