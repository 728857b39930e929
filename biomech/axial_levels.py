"""Assign axial slices to lumbar levels (issue 3, DOMAIN.md §6).

With a sagittal series in the same frame of reference, each axial slice
belongs to the structure (disc or vertebral body) whose centroid lies
nearest its plane, and each disc's *mid-plane slice* is the slice nearest
that disc's centroid. Without one, levels come from the order of the disc
cross-sections found on the axial slices themselves, counted upward from
L5S1 (the lowest disc) — the same convention as the sagittal naming.
Pure functions on positions in patient coordinates (LPS, mm).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

__all__ = ["SliceLevel", "levels_from_centroids", "disc_midplane_slices", "levels_from_disc_order", "disc_runs_mm",
           "level_disagreements"]

_DISCS_UPWARD = ("L5S1", "L4L5", "L3L4", "L2L3", "L1L2", "T12L1")


@dataclass(frozen=True)
class SliceLevel:
    """The structure an axial slice belongs to and how far its plane lies
    from that structure's centroid (mm)."""

    slice_index: int
    structure: str
    distance_mm: float


def _plane_distances(slice_positions: np.ndarray, normal: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """|distance| of every centroid from every slice plane: (slices, structures)."""
    n = np.asarray(normal, float) / np.linalg.norm(normal)
    return np.abs((centroids[None, :, :] - slice_positions[:, None, :]) @ n)


def levels_from_centroids(slice_positions_lps: np.ndarray, slice_normal: Sequence[float],
                          centroids_lps: Mapping[str, Sequence[float] | np.ndarray], max_distance_mm: float = 25.0
                          ) -> list[SliceLevel | None]:
    """Level of each axial slice from the sagittal centroids.

    Parameters
    ----------
    slice_positions_lps : array (slices, 3)
        A point on each slice plane (e.g. ImagePositionPatient).
    slice_normal : sequence of 3 floats
        The stack's normal (row direction × column direction).
    centroids_lps : mapping
        Structure name (``"L4"``, ``"L4L5"`` …) → 3D centroid, same frame.
    max_distance_mm : float
        Slices farther than this from every centroid get None (outside the
        measured spine).

    Raises
    ------
    ValueError
        If no centroid is given or the positions are not (n, 3).
    """
    positions = np.asarray(slice_positions_lps, float)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"'slice_positions_lps' must be (n, 3), got {positions.shape}")
    if not centroids_lps:
        raise ValueError("'centroids_lps' is empty: no sagittal structure to assign levels from")
    names = list(centroids_lps)
    d = _plane_distances(positions, np.asarray(slice_normal, float), np.array([centroids_lps[k] for k in names], float))
    out: list[SliceLevel | None] = []
    for i, row in enumerate(d):
        j = int(np.argmin(row))
        out.append(SliceLevel(i, names[j], float(row[j])) if row[j] <= max_distance_mm else None)
    return out


def disc_midplane_slices(slice_positions_lps: np.ndarray, slice_normal: Sequence[float],
                         centroids_lps: Mapping[str, Sequence[float] | np.ndarray], slice_spacing_mm: float
                         ) -> dict[str, SliceLevel]:
    """For every disc, the slice whose plane is nearest its centroid — kept
    only when that slice lies within one slice spacing of it (a series with
    one slice per disc level counts as long as it is aimed at the discs)."""
    positions = np.asarray(slice_positions_lps, float)
    discs = [k for k in centroids_lps if k in _DISCS_UPWARD]
    if not discs:
        return {}
    d = _plane_distances(positions, np.asarray(slice_normal, float), np.array([centroids_lps[k] for k in discs], float))
    out = {}
    for j, disc in enumerate(discs):
        i = int(np.argmin(d[:, j]))
        if d[i, j] <= slice_spacing_mm:
            out[disc] = SliceLevel(i, disc, float(d[i, j]))
    return out


def levels_from_disc_order(disc_present: Sequence[bool]) -> dict[int, str]:
    """Fallback without a sagittal series: runs of consecutive slices that
    show a disc cross-section, ordered superior → inferior, are named
    upward from the lowest as L5S1, L4L5, … ; each run's middle slice is
    returned as that disc's mid-plane slice. Review is needed: the lowest
    disc in view is assumed to be L5S1."""
    runs: list[list[int]] = []
    for i, present in enumerate(disc_present):
        if present and runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        elif present:
            runs.append([i])
    named = {}
    for name, run in zip(_DISCS_UPWARD, reversed(runs)):
        named[run[len(run) // 2]] = name
    return named


def disc_runs_mm(slice_heights_mm: Sequence[float] | np.ndarray, disc_present: Sequence[bool] | np.ndarray,
                 slice_spacing_mm: float) -> list[float]:
    """Height (mm along the stack normal) of the centre of every run of
    consecutive slices showing a disc cross-section; a gap over 1.5 slice
    spacings ends a run."""
    order = np.argsort(np.asarray(slice_heights_mm, float))
    runs: list[list[float]] = []
    last = None
    for i in order:
        h = float(slice_heights_mm[i])
        if disc_present[i]:
            if runs and last is not None and disc_present[last] and h - float(slice_heights_mm[last]) <= 1.5 * slice_spacing_mm:
                runs[-1].append(h)
            else:
                runs.append([h])
        last = int(i)
    return [float(np.mean(r)) for r in runs]


def level_disagreements(slice_heights_mm: Sequence[float] | np.ndarray, disc_present: Sequence[bool] | np.ndarray,
                        sagittal_disc_heights_mm: Mapping[str, float], slice_spacing_mm: float,
                        tolerance_mm: float = 5.0) -> dict[str, float]:
    """Where the axial series disagrees with the sagittal disc levels.

    For each sagittal disc whose mid-plane lies within the axial stack, the
    distance to the nearest run of axial slices that show a disc
    cross-section (`disc_runs_mm`); a disc farther than ``tolerance_mm``
    (or 1.5 slice spacings, if more) from every run — none there, or one a
    body's height away — is returned with that distance (inf: no disc
    cross-section on the axial series at all).

    Parameters
    ----------
    slice_heights_mm : sequence of float
        Each axial slice's position along the stack normal (superior +).
    disc_present : sequence of bool
        Whether the axial model found a disc on each slice.
    sagittal_disc_heights_mm : mapping
        Disc level → its sagittal centroid's position along the same normal.
    """
    heights = np.asarray(slice_heights_mm, float)
    if heights.size == 0:
        return {}
    runs = disc_runs_mm(heights, disc_present, slice_spacing_mm)
    tolerance = max(tolerance_mm, 1.5 * slice_spacing_mm)
    low, high = heights.min() - slice_spacing_mm / 2, heights.max() + slice_spacing_mm / 2
    out = {}
    for level, h in sagittal_disc_heights_mm.items():
        if not low <= h <= high:
            continue
        d = min((abs(h - r) for r in runs), default=float("inf"))
        if d > tolerance:
            out[level] = d
    return out
