"""Per-level paraspinal-muscle measurements of one axial series (DOMAIN.md §6).

Pure functions on masks and slice geometry (no network, no DICOM): level
assignment of every slice to its nearest disc, level names for the axial
vertebral-body and disc cross-sections, and per muscle, side and level the
CSA at the disc mid-plane and averaged over the level, rCSA, fat
infiltration by thresholding, Dixon fat fraction, volume, asymmetry and
slice-wise centroids in patient coordinates.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from spinegate.biomech.axial_levels import disc_midplane_slices, levels_from_centroids, levels_from_disc_order
from spinegate.biomech.muscle_morphometry import (
    asymmetry,
    centroid_2d_lps_mm,
    csa_cm2,
    fat_fraction,
    fat_infiltration,
    relative_csa,
)
from spinegate.dicom_io.levels import StructureKind, structure_by_name
from spinegate.dicom_io.measurements import MuscleLevelMeasurements
from spinegate.dicom_io.muscles import MuscleStructure, muscle_by_name

__all__ = ["AxialGeometry", "nearest_disc_levels", "disc_centroids_from_axial", "axial_spine_labels",
           "measure_muscles", "model_acsa_cm2", "FLAG_LEVELS_FROM_AXIAL", "FLAG_NO_MIDPLANE", "FLAG_NO_DISC_ON_MIDPLANE",
           "FLAG_SMALL_SECTION"]

FLAG_LEVELS_FROM_AXIAL = "levels_from_axial_disc_order_lowest_assumed_L5S1"
FLAG_NO_MIDPLANE = "no_slice_at_disc_midplane"
FLAG_NO_DISC_ON_MIDPLANE = "no_disc_on_midplane_slice"
# A section this small (a muscle starting or ending within the level) is
# mostly border pixels: its CSA, fat infiltration and fat fraction are
# dominated by partial volume, whatever the segmentation.
SMALL_SECTION_CM2 = 1.0
FLAG_SMALL_SECTION = "muscle_section_under_1cm2"
# The rim of a muscle whose Dixon fat fraction is read from its interior
# (partial volume with the fascia and fat around it; see fat_fraction).
DIXON_BORDER_PX = 1
# No lumbar disc is taller: two disc sections farther apart are two discs.
_DISC_HEIGHT_MAX_MM = 15.0


class AxialGeometry:
    """Slice geometry of an axial series.

    Parameters
    ----------
    positions_lps : array (slices, 3)
        ImagePositionPatient of each slice.
    row_step_lps, column_step_lps : array (3,)
        Patient-space step (mm) from one row / column to the next.
    """

    def __init__(self, positions_lps: np.ndarray, row_step_lps: Sequence[float], column_step_lps: Sequence[float]):
        self.positions = np.asarray(positions_lps, float)
        if self.positions.ndim != 2 or self.positions.shape[1] != 3:
            raise ValueError(f"'positions_lps' must be (n, 3), got {self.positions.shape}")
        self.row_step = np.asarray(row_step_lps, float)
        self.column_step = np.asarray(column_step_lps, float)
        normal = np.cross(self.column_step, self.row_step)
        self.normal = normal / np.linalg.norm(normal)
        if self.normal[2] < 0:  # point superior, so "above" is positive
            self.normal = -self.normal
        self.pixel_spacing_mm = (float(np.linalg.norm(self.row_step)), float(np.linalg.norm(self.column_step)))
        d = np.sort(self.positions @ self.normal)
        steps = np.diff(d)
        self.slice_spacing_mm = float(steps.min()) if steps.size else 0.0
        self.contiguous = bool(steps.size and np.all(np.abs(steps - steps.min()) <= 0.05 * steps.min() + 0.05))

    def slice_affine(self, k: int) -> np.ndarray:
        return np.column_stack([self.row_step, self.column_step, self.positions[k]])


def nearest_disc_levels(geometry: AxialGeometry, disc_centroids: Mapping[str, Sequence[float]],
                        max_distance_mm: float = 25.0) -> list[tuple[str, float] | None]:
    """Per slice, the disc whose centroid lies nearest its plane
    (`levels_from_centroids` over the discs) and the signed distance (mm,
    positive when the slice lies above the disc); None beyond
    ``max_distance_mm`` of every disc."""
    discs = {k: np.asarray(v, float) for k, v in disc_centroids.items()
             if structure_by_name(k).kind is StructureKind.DISC}
    if not discs:
        return [None] * len(geometry.positions)
    out: list[tuple[str, float] | None] = []
    for lv in levels_from_centroids(geometry.positions, geometry.normal, discs, max_distance_mm):
        if lv is None:
            out.append(None)
            continue
        signed = float((geometry.positions[lv.slice_index] - discs[lv.structure]) @ geometry.normal)
        out.append((lv.structure, signed))
    return out


def disc_centroids_from_axial(geometry: AxialGeometry, disc_mask: np.ndarray) -> dict[str, np.ndarray]:
    """Fallback without a sagittal series: discs named from the order of the
    axial disc cross-sections (`levels_from_disc_order`, lowest = L5S1),
    each placed at the 2D centroid of its mid-run slice. A gap in the stack
    (more than 1.5 slice spacings, or more than a disc is tall) ends a run,
    so a series with one slice per disc level names every disc."""
    height = geometry.positions @ geometry.normal
    order = [int(i) for i in np.argsort(-height)]  # superior → inferior
    present: list[bool] = []
    slice_of: list[int | None] = []
    for n, i in enumerate(order):
        step = height[order[n - 1]] - height[i] if n else 0.0
        if n and (step > 1.5 * geometry.slice_spacing_mm or step > _DISC_HEIGHT_MAX_MM):
            present.append(False)
            slice_of.append(None)
        present.append(bool(disc_mask[i].any()))
        slice_of.append(i)
    named = levels_from_disc_order(present)
    out = {}
    for j, name in named.items():
        k = slice_of[j]
        assert k is not None  # runs hold only real slices
        out[name] = centroid_2d_lps_mm(disc_mask[k], geometry.slice_affine(k))
    return out


def _split(disc: str) -> tuple[str, str]:
    for i in range(1, len(disc)):
        if disc[i].isalpha():
            return disc[:i], disc[i:]
    raise ValueError(f"'{disc}' is not a disc level")


def axial_spine_labels(geometry: AxialGeometry, vb_mask: np.ndarray, disc_mask: np.ndarray,
                       levels: Sequence[tuple[str, float] | None]) -> np.ndarray:
    """Spinegate label map of the axial vertebral-body and disc sections:
    a disc takes its slice's level; a body is the vertebra above that disc
    when the slice lies above it, the one below otherwise. Slices without a
    level stay unlabelled."""
    out = np.zeros(vb_mask.shape, np.uint8)
    for k, level in enumerate(levels):
        if level is None:
            continue
        disc, signed = level
        upper, lower = _split(disc)
        out[k][vb_mask[k]] = structure_by_name(upper if signed > 0 else lower).label
        out[k][disc_mask[k]] = structure_by_name(disc).label
    return out


def measure_muscles(
    geometry: AxialGeometry,
    muscle_masks: Mapping[str, np.ndarray],
    disc_mask: np.ndarray,
    disc_centroids: Mapping[str, Sequence[float]],
    image: np.ndarray | None = None,
    water: np.ndarray | None = None,
    fat: np.ndarray | None = None,
    flags: tuple[str, ...] = (),
    dixon_noise_sigma: float = 0.0,
) -> list[MuscleLevelMeasurements]:
    """Measurements per muscle, side and disc level.

    Parameters
    ----------
    geometry : AxialGeometry
        The series' slice geometry.
    muscle_masks : mapping
        ``"MF_R"`` … → boolean (slices, rows, columns).
    disc_mask : numpy.ndarray
        Boolean disc cross-sections (for rCSA).
    disc_centroids : mapping
        Disc level → 3D centroid (sagittal series in the same frame of
        reference, or `disc_centroids_from_axial`).
    image : numpy.ndarray, optional
        T1/T2 intensities: fat infiltration by thresholding.
    water, fat : numpy.ndarray, optional
        Dixon images on the same grid: fat fraction, each muscle's border
        pixels read from its interior (``DIXON_BORDER_PX``, see
        `biomech.muscle_morphometry.fat_fraction`) so that the fat around
        the muscle does not leak in.
    dixon_noise_sigma : float
        Per-channel noise σ of the Dixon magnitudes, whose floor the fat
        fraction removes (`biomech.muscle_morphometry.magnitude_noise_sigma`);
        0 leaves the images as they are.
    flags : tuple of str
        Review flags applying to every result (e.g. ``FLAG_LEVELS_FROM_AXIAL``).
    """
    levels = nearest_disc_levels(geometry, disc_centroids)
    mid = disc_midplane_slices(geometry.positions, geometry.normal,
                               {k: v for k, v in disc_centroids.items()}, max(geometry.slice_spacing_mm, 1.0))
    area = geometry.pixel_spacing_mm
    out: list[MuscleLevelMeasurements] = []
    for disc in sorted({lv[0] for lv in levels if lv is not None}, key=lambda d: structure_by_name(d).label):
        slices = [k for k, lv in enumerate(levels) if lv is not None and lv[0] == disc]
        mid_k = mid[disc].slice_index if disc in mid else None
        disc_area = csa_cm2(disc_mask[mid_k], area) if mid_k is not None else 0.0
        fi: dict[str, dict[str, float]] = {}
        if image is not None:
            fi = fat_infiltration(image[slices], {n: m[slices] for n, m in muscle_masks.items()})
        level_rows: dict[str, dict] = {}
        for name, mask in muscle_masks.items():
            shown = [k for k in slices if mask[k].any()]
            if not shown:
                continue
            per_slice = tuple((k, csa_cm2(mask[k], area),
                               tuple(float(v) for v in centroid_2d_lps_mm(mask[k], geometry.slice_affine(k))))
                              for k in shown)
            csa_mid = csa_cm2(mask[mid_k], area) if mid_k is not None else None
            ref_k = mid_k if (mid_k is not None and mask[mid_k].any()) else shown[len(shown) // 2]
            item_flags = list(flags)
            csa_mean = float(np.mean([a for _, a, _ in per_slice]))
            if csa_mean < SMALL_SECTION_CM2:
                item_flags.append(FLAG_SMALL_SECTION)
            if mid_k is None:
                item_flags.append(FLAG_NO_MIDPLANE)
            rcsa = None
            if csa_mid is not None and disc_area > 0:
                rcsa = relative_csa(csa_mid, disc_area)
            elif csa_mid is not None:
                item_flags.append(FLAG_NO_DISC_ON_MIDPLANE)
            ff = None
            if water is not None and fat is not None:
                m = np.zeros(mask.shape, bool)
                m[slices] = mask[slices]
                ff = fat_fraction(water, fat, m, dixon_noise_sigma, border_px=DIXON_BORDER_PX)
            contiguous_run = len(shown) >= 2 and (geometry.contiguous or _contiguous(geometry, shown))
            level_rows[name] = dict(
                muscle=muscle_by_name(name), level=structure_by_name(disc), csa_midplane_cm2=csa_mid,
                csa_mean_cm2=csa_mean, n_slices=len(shown), rcsa=rcsa,
                fat_infiltration=fi.get(name, {}).get("fat_infiltration"), fat_fraction=ff,
                volume_ml=(sum(a for _, a, _ in per_slice) * geometry.slice_spacing_mm / 10.0) if contiguous_run else None,
                centroid_lps_mm=np.asarray(centroid_2d_lps_mm(mask[ref_k], geometry.slice_affine(ref_k))),
                slice_index=int(ref_k), per_slice=per_slice, flags=tuple(item_flags),
            )
        for name, row in level_rows.items():
            muscle: MuscleStructure = row["muscle"]
            other = level_rows.get(f"{muscle.muscle}_{'L' if muscle.side == 'R' else 'R'}")
            asym = None
            if other is not None:
                right, left = (row, other) if muscle.side == "R" else (other, row)
                asym = asymmetry(right["csa_mean_cm2"], left["csa_mean_cm2"])
            out.append(MuscleLevelMeasurements(asymmetry=asym, **row))
    return out


def _contiguous(geometry: AxialGeometry, slices: Sequence[int]) -> bool:
    d = np.sort(geometry.positions[list(slices)] @ geometry.normal)
    steps = np.diff(d)
    return bool(steps.size == 0 or np.all(np.abs(steps - geometry.slice_spacing_mm) <= 0.05 * geometry.slice_spacing_mm + 0.05))


_MODEL_GROUPS = {"ES": "erector_spinae", "MF": "multifidus", "PM": "psoas", "QL": "quadratus_lumborum"}


def model_acsa_cm2(measurements: Sequence[MuscleLevelMeasurements]) -> dict[tuple[str, str], float]:
    """The biomechanical model's input: per muscle group and side
    (`biomech.muscles.REFERENCE_ACSA_CM2` names, ``"r"``/``"l"``) the
    largest level-mean CSA measured (the maximum anatomical CSA)."""
    out: dict[tuple[str, str], float] = {}
    for m in measurements:
        key = (_MODEL_GROUPS[m.muscle.muscle], m.muscle.side.lower())
        out[key] = max(out.get(key, 0.0), m.csa_mean_cm2)
    return out
