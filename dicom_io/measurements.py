"""Typed measurement values that cross from `biomech` to the SR writer."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from spinegate.dicom_io.levels import SpineStructure
from spinegate.dicom_io.muscles import MuscleStructure

__all__ = ["HeightLine", "StructureMeasurements", "MuscleLevelMeasurements", "TaskLoadReport", "LoadReport",
           "FirstOrderFeatures", "ShapeFeatures", "StructureRadiomics", "RelaxationSummary"]


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


@dataclass(frozen=True)
class MuscleLevelMeasurements:
    """One muscle of one side at one disc level of one axial series
    (DOMAIN.md §6). Optional values are None where they cannot be measured
    (the reason is in ``flags``).

    Parameters
    ----------
    muscle : MuscleStructure
        Muscle and side.
    level : SpineStructure
        The disc level (slices nearer this disc's mid-plane than any other).
    csa_midplane_cm2 : float or None
        CSA on the slice nearest the disc mid-plane (within one slice spacing).
    csa_mean_cm2 : float
        Mean CSA over the level's slices that show the muscle.
    n_slices : int
        Slices of the level that show the muscle.
    rcsa : float or None
        ``csa_midplane_cm2`` / disc CSA on the same slice.
    fat_infiltration : float or None
        Fat area / muscle area by per-muscle Otsu thresholding (T1/T2).
    fat_fraction : float or None
        Mean Dixon fat / (water + fat) over the muscle's pixels of the level.
    volume_ml : float or None
        Σ CSA × slice spacing over the level's slices, when contiguous.
    asymmetry : float or None
        (right − left) / mean of ``csa_mean_cm2``, the same for both sides.
    centroid_lps_mm : numpy.ndarray
        2D centre of mass on the reference slice, in patient coordinates.
    slice_index : int
        The reference slice (mid-plane slice, else the level's middle one).
    per_slice : tuple
        ``(slice index, csa_cm2, centroid_lps_mm)`` for every slice of the level.
    """

    muscle: MuscleStructure
    level: SpineStructure
    csa_midplane_cm2: float | None
    csa_mean_cm2: float
    n_slices: int
    rcsa: float | None
    fat_infiltration: float | None
    fat_fraction: float | None
    volume_ml: float | None
    asymmetry: float | None
    centroid_lps_mm: np.ndarray
    slice_index: int
    per_slice: tuple[tuple[int, float, tuple[float, float, float]], ...] = ()
    flags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.csa_mean_cm2 < 0 or (self.csa_midplane_cm2 is not None and self.csa_midplane_cm2 < 0):
            raise ValueError(f"negative CSA for {self.muscle.name} at {self.level.name}")
        for name in ("fat_infiltration", "fat_fraction"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v <= 1.0:
                raise ValueError(f"'{name}' must lie in [0, 1], got {v}")


@dataclass(frozen=True)
class TaskLoadReport:
    """Spinal loads of one static task, as the SR reports them.

    ``discs``: (disc, compression N, anterior shear N); ``bodies``:
    (vertebral body, compression N).
    """

    task_name: str
    description: str
    discs: tuple[tuple[SpineStructure, float, float], ...]
    bodies: tuple[tuple[SpineStructure, float], ...]
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class LoadReport:
    """The biomechanical model's inputs and results for the SR.

    ``tasks`` is empty when the model could not be built; ``flags`` then say
    why. ``lordosis_deg``/``sacral_slope_deg`` are None in that case.
    """

    height_m: float
    mass_kg: float
    sex: str
    tasks: tuple[TaskLoadReport, ...]
    flags: tuple[str, ...] = ()
    lordosis_deg: float | None = None
    sacral_slope_deg: float | None = None
    model_name: str = "spinegate trunk model"
    model_version: str = "unversioned"

    def __post_init__(self) -> None:
        if self.sex not in ("M", "F"):
            raise ValueError(f"'sex' must be 'M' or 'F', got {self.sex!r}")
        if self.height_m <= 0 or self.mass_kg <= 0:
            raise ValueError(f"'height_m' and 'mass_kg' must be > 0, got {self.height_m}, {self.mass_kg}")


def _rounded(value: float, digits: int) -> float | None:
    return None if not math.isfinite(value) else round(float(value), digits)


@dataclass(frozen=True)
class FirstOrderFeatures:
    """Intensity features of a set of voxels (values in the series' units;
    ``skewness``, ``kurtosis`` and ``entropy_bits`` have none), IBSI
    definitions (`biomech.radiomics`)."""

    n_voxels: int
    mean: float
    mean_positive: float
    standard_deviation: float
    skewness: float
    kurtosis: float
    entropy_bits: float
    minimum: float
    p10: float
    median: float
    p90: float
    maximum: float
    interquartile_range: float

    def as_dict(self, digits: int = 4) -> dict[str, float | int | None]:
        return {k: (v if isinstance(v, int) else _rounded(v, digits)) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ShapeFeatures:
    """Shape of a 3D mask (lengths in mm)."""

    volume_cm3: float
    major_axis_mm: float
    minor_axis_mm: float
    least_axis_mm: float
    elongation: float
    flatness: float

    def as_dict(self, digits: int = 4) -> dict[str, float | None]:
        return {k: _rounded(v, digits) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class StructureRadiomics:
    """Features of one structure: intensity over the whole structure and
    over its centroid sagittal slice (the slice its height is measured on,
    DOMAIN.md §6), and its 3D shape."""

    whole: FirstOrderFeatures
    central_slice: FirstOrderFeatures
    shape: ShapeFeatures
    central_slice_index: int


@dataclass(frozen=True)
class RelaxationSummary:
    """T2 of one structure's fitted voxels (ms); ``n_voxels`` fitted of
    ``n_structure`` in the structure."""

    mean_ms: float
    median_ms: float
    sd_ms: float
    n_voxels: int
    n_structure: int
