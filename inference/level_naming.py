"""Name the clean components of a sagittal class map as spine levels.

S1 is the largest S1-class component, with any body component inside its
footprint (`absorb_into_s1`); bodies off the spinal column are dropped
(`on_spinal_column`); the bodies above S1 are counted upward L5, L4, …
(DOMAIN.md §3: count from S1 when S1 is visible). A step between two
bodies of about twice the column's median pitch is a body the network
missed: the count skips its level (flagged). Without S1 the lowest body is
taken as L5, and a step that is neither one nor two pitches cannot be
counted across: either leaves the naming resting on an assumption, flagged
with one of `UNVERIFIED_FLAGS` so that every output says "level
unverified" (`name_bodies`).
Each disc is named by the two bodies it lies between; the one under L5 is
L5S1 even when S1 was not found (`name_discs`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from spinegate.dicom_io.levels import VERTEBRAL_BODY_LEVELS, disc_between, structure_by_name
from spinegate.dicom_io.volume import centroid_lps_mm
from spinegate.inference.postprocess import (body_height_mm, clean_class_mask, merge_fragments,
                                             regularise_body_heights, superior_mm, tallest_slice_height_mm,
                                             touches_edge, z_extent_mm)

__all__ = ["NamedLabels", "NamedBody", "name_levels", "name_bodies", "name_discs", "absorb_into_s1",
           "on_spinal_column", "CLASS_VB", "CLASS_S1", "CLASS_DISC", "MIN_BODY_MM3", "MIN_DISC_MM3",
           "FLAG_UNANCHORED", "FLAG_PARTIAL", "FLAG_BODY_MISSED", "FLAG_PITCH_UNCOUNTABLE", "UNVERIFIED_FLAGS",
           "level_steps", "naming_unverified", "touches_inferior_edge", "FLAG_S1_AT_EDGE", "FLAG_S1_STEP_AMBIGUOUS",
           "FLAG_S1_SLIVER", "FLAG_FROM_OTHER_SERIES", "FLAG_SERIES_DISAGREE", "FLAG_BODY_TWO_LEVELS_HIGH",
           "FLAG_TOO_MANY_BODIES"]

# Network classes of the sagittal model.
CLASS_VB, CLASS_S1, CLASS_DISC = 1, 2, 3

# Smallest body or S1 component kept, and smallest disc component (mm³).
MIN_BODY_MM3 = 2000.0
MIN_DISC_MM3 = 400.0
# Bodies are ~25 mm high and discs 5-12 mm: eroding 3 mm (bodies) and
# 1.5 mm (discs) in-plane breaks bridges without losing a structure.
BODY_SPLIT_RADIUS_MM = 3.0
DISC_SPLIT_RADIUS_MM = 1.5
# A body farther than this from the fitted spinal column is not on it.
OFF_COLUMN_MM = 20.0
# A body component joins S1 when this share of it lies in S1's footprint.
S1_FOOTPRINT_SHARE = 0.5
# A disc part farther than this from the midpoint of its two bodies is not
# that disc; parts of one disc join when this close to its largest part.
DISC_MAX_OFFSET_MM = 30.0
DISC_PART_JOIN_MM = 15.0

# Body-to-body pitch against the column's median: about two pitches is one
# body missed inside the column (its level is skipped); a step outside
# both ranges cannot be counted across.
PITCH_ONE = (0.6, 1.45)
PITCH_TWO = (1.6, 2.4)
# S1's centroid sits lower in its segment than a lumbar body's: S1 to L5 is
# 0.4-0.96 pitches in the shared data's manual labels (lumbar steps 0.8-1.2),
# S1 to L4 with L5 missed about 1.8.
S1_PITCH_ONE = (0.25, 1.3)
S1_PITCH_TWO = (1.45, 2.2)

FLAG_UNANCHORED = "level_naming_unanchored_no_s1"
FLAG_PARTIAL = "touches_field_of_view_edge"
FLAG_OFF_COLUMN = "off_column_components_dropped"
FLAG_TOO_MANY_BODIES = "more_bodies_than_levels"
FLAG_BODY_MISSED = "level_naming_body_missed_in_column"
FLAG_PITCH_UNCOUNTABLE = "level_naming_pitch_not_countable"
# S1 cut by the lower edge of the field of view may be L5 the network called
# S1 (seen on a held-out volume cropped 70 mm); two pitches between S1 and
# the lowest body may be a missed L5 or S2 called S1 (seen with S1 blanked).
FLAG_S1_AT_EDGE = "level_naming_s1_cut_by_field_of_view"
# The network seldom labels a structure's outermost pixel at the image edge:
# an S1 ending this close to the inferior edge is cut by it (held-out
# VB2_14 cropped 40 mm: L5 called S1, ending one 1 mm row above the edge).
S1_EDGE_MARGIN_MM = 3.0
# An S1 component this small beside the lumbar bodies is a sliver that may
# be a fragment of L5 (held-out volume cropped 55 mm: 0.09 of the bodies'
# median; whole S1 components measure 0.5-0.7, partial ones down to 0.2).
S1_SLIVER_FRACTION = 0.25
FLAG_S1_SLIVER = "level_naming_s1_only_a_sliver"
FLAG_S1_STEP_AMBIGUOUS = "level_naming_s1_step_ambiguous"
# A body as high as two on slices holding at least half its largest area is
# joined to its neighbour there, and the count may be a level off
# (VB1_02 cropped 55 mm: L4 joined to the top of L5 on one side, the rest of
# L5 called S1; correctly named volumes reach 1.52 x the median height).
BODY_TWO_LEVELS_FACTOR = 1.6
FLAG_BODY_TWO_LEVELS_HIGH = "level_naming_body_two_levels_high"
# Across the sagittal series of a study (`inference.study_naming`): names
# taken from a series that S1 anchors, and a pairing no single shift explains.
FLAG_FROM_OTHER_SERIES = "level_naming_corrected_from_other_series"
FLAG_SERIES_DISAGREE = "level_naming_disagrees_with_other_series"
# The naming rests on an assumption: every level is marked unverified, and why.
UNVERIFIED_FLAGS = {
    FLAG_UNANCHORED: "no S1 in view, lowest body taken as L5",
    FLAG_S1_AT_EDGE: "S1 cut by the field of view",
    FLAG_S1_SLIVER: "S1 only a sliver",
    FLAG_S1_STEP_AMBIGUOUS: "S1 two steps below the lowest body",
    FLAG_PITCH_UNCOUNTABLE: "a step between bodies cannot be counted",
    FLAG_SERIES_DISAGREE: "another sagittal series of the study places the levels differently",
    FLAG_BODY_TWO_LEVELS_HIGH: "a body is two levels high on some slices",
}


@dataclass(frozen=True)
class NamedLabels:
    """A spinegate label map (values from `dicom_io.levels`) with flags.

    ``structure_flags`` maps a level name to its review flags.
    """

    label_map: np.ndarray
    series_flags: tuple[str, ...]
    structure_flags: dict[str, tuple[str, ...]]


@dataclass(frozen=True)
class NamedBody:
    """A vertebral body (or S1) component with its level name and the
    patient z (mm) of its centroid."""

    name: str
    superior_mm: float
    mask: np.ndarray


def absorb_into_s1(s1: np.ndarray, bodies: list[np.ndarray], affine: np.ndarray,
                   min_share: float = S1_FOOTPRINT_SHARE) -> tuple[np.ndarray, list[np.ndarray]]:
    """S1 with the body components that are part of it; the other bodies.

    Why: in the midline slices of a thick-slice series the network can
    call part of S1 a lumbar body while the lateral slices call it S1. Such
    a component lies within S1's in-plane footprint (its projection across
    the sagittal slices), its centroid below S1's top; L5 lies above S1,
    mostly outside that footprint, and sacral segments lie below it. A
    component joins S1 when at least ``min_share`` of its voxels fall in
    the footprint and its centroid is not above S1's highest voxel.
    """
    footprint = np.asarray(s1.any(axis=0))
    s1_top_mm = z_extent_mm(s1, affine)[1]
    merged, rest = s1.copy(), []
    for b in bodies:
        inside = float((b & footprint[None]).sum()) / max(int(b.sum()), 1)
        if inside >= min_share and superior_mm(b, affine) <= s1_top_mm:
            merged |= b
        else:
            rest.append(b)
    return merged, rest


def on_spinal_column(centroids_lps: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Which body centroids lie on the spinal column (boolean per body).

    The column is fitted through the centroids, weighted by size: the AP
    position as a quadratic in z (lordosis), the LR position as a line.
    Bodies farther than 20 mm from the fit are dropped and the fit repeated
    once. With fewer than 4 bodies every body is kept.
    """
    c = np.asarray(centroids_lps, float)
    keep = np.ones(len(c), bool)
    if len(c) < 4:
        return keep
    w = np.sqrt(np.asarray(sizes, float))
    for _ in range(2):
        z = c[keep, 2]
        fy = np.polyfit(z, c[keep, 1], 2, w=w[keep])
        fx = np.polyfit(z, c[keep, 0], 1, w=w[keep])
        off = np.hypot(c[:, 1] - np.polyval(fy, c[:, 2]), c[:, 0] - np.polyval(fx, c[:, 2]))
        keep = off <= OFF_COLUMN_MM
        if keep.sum() < 4:
            return np.ones(len(c), bool)
    return keep


def name_bodies(classes: np.ndarray, affine: np.ndarray, min_body_voxels: int,
                spacing_mm: tuple[float, float, float],
                disc_centres_z_mm: Sequence[float] = ()) -> tuple[list[NamedBody], list[str]]:
    """The named bodies (S1 first when found, then L5 upward) and the
    series flags of the naming; the discs' centres (patient z, mm) let
    `regularise_body_heights` join a body's parts that no disc separates."""
    flags: list[str] = []
    bodies = merge_fragments(clean_class_mask(classes == CLASS_VB, min_body_voxels, spacing_mm,
                                              split_radius_mm=BODY_SPLIT_RADIUS_MM))
    bodies = regularise_body_heights(bodies, affine, disc_centres_z_mm)
    s1_parts = clean_class_mask(classes == CLASS_S1, min_body_voxels, spacing_mm)
    if s1_parts:
        s1_parts[0], bodies = absorb_into_s1(s1_parts[0], bodies, affine)
    if bodies:
        inliers = on_spinal_column(np.array([centroid_lps_mm(b, affine) for b in bodies]),
                                   np.array([b.sum() for b in bodies]))
        if not inliers.all():
            flags.append(FLAG_OFF_COLUMN)
        bodies = [b for b, k in zip(bodies, inliers) if k]
    s1 = s1_parts[0] if s1_parts else None
    s1_z = superior_mm(s1, affine) if s1 is not None else -np.inf
    # Bodies below S1 are sacral segments the network called vertebral bodies.
    body_z = sorted(((z, b) for z, b in ((superior_mm(b, affine), b) for b in bodies) if z > s1_z),
                    key=lambda t: t[0])
    named: list[NamedBody] = []
    if s1 is not None:
        named.append(NamedBody("S1", s1_z, s1))
        if touches_inferior_edge(s1, affine, S1_EDGE_MARGIN_MM):
            flags.append(FLAG_S1_AT_EDGE)
    else:
        flags.append(FLAG_UNANCHORED)
    centre_z = [float(centroid_lps_mm(b, affine)[2]) for _, b in body_z]
    if s1 is not None:
        centre_z.insert(0, float(centroid_lps_mm(s1, affine)[2]))
    steps, step_flags = level_steps(np.diff(centre_z), from_s1=s1 is not None)
    flags += step_flags
    if s1 is not None and steps and steps[0] == 2:
        flags.append(FLAG_S1_STEP_AMBIGUOUS)
    if s1 is not None and len(body_z) >= 2 and \
            s1.sum() < S1_SLIVER_FRACTION * float(np.median([b.sum() for _, b in body_z])):
        flags.append(FLAG_S1_SLIVER)
    if two_levels_high([b for _, b in body_z], affine):
        flags.append(FLAG_BODY_TWO_LEVELS_HIGH)
    if s1 is None:
        steps = [1] + steps  # the lowest body is taken as L5
    idx = VERTEBRAL_BODY_LEVELS.index("S1")
    for (z, b), step in zip(body_z, steps):
        idx -= step
        if idx < 0:
            flags.append(FLAG_TOO_MANY_BODIES)
            break
        named.append(NamedBody(VERTEBRAL_BODY_LEVELS[idx], z, b))
    return named, flags


def two_levels_high(bodies: Sequence[np.ndarray], affine: np.ndarray) -> bool:
    """Whether a body is at least `BODY_TWO_LEVELS_FACTOR` × the median
    body height on a slice holding at least half its largest area
    (`postprocess.tallest_slice_height_mm`); the median over bodies not cut
    by the field of view, measured on their largest slices. False with
    fewer than three such bodies."""
    whole = [body_height_mm(b, affine) for b in bodies if not touches_edge(b)]
    if len(whole) < 3:
        return False
    limit = BODY_TWO_LEVELS_FACTOR * float(np.median(whole))
    return any(tallest_slice_height_mm(b, affine) >= limit for b in bodies)


def touches_inferior_edge(mask: np.ndarray, affine: np.ndarray, margin_mm: float = 0.0) -> bool:
    """Whether a component reaches the in-plane image edge that lies most
    inferior (the row or column edge along which patient z falls), or
    comes within ``margin_mm`` of it (patient z)."""
    axis = 1 if abs(affine[2, 1]) >= abs(affine[2, 2]) else 2
    step_mm = abs(float(affine[2, axis]))  # patient z per pixel along that axis
    n = min(mask.shape[axis], 1 + int(margin_mm / step_mm)) if step_mm > 0 else 1
    edge = np.arange(mask.shape[axis] - n, mask.shape[axis]) if affine[2, axis] < 0 else np.arange(n)
    return bool(np.take(mask, edge, axis=axis).any())


def level_steps(pitches_mm: np.ndarray, from_s1: bool = False) -> tuple[list[int], list[str]]:
    """Levels between consecutive bodies (1, or 2 where one was missed),
    and the flags, from the centroid-to-centroid pitches (inferior first;
    with ``from_s1`` the first pitch starts at S1).

    The median is taken over the body-to-body pitches; fewer than two of
    them give nothing to compare against: one level each, unflagged.
    """
    pitches = np.asarray(pitches_mm, float)
    lumbar = pitches[1:] if from_s1 else pitches
    if len(lumbar) < 2:
        return [1] * len(pitches), []
    median = float(np.median(lumbar))
    steps, flags = [], []
    for k, p in enumerate(pitches / median):
        one, two = (S1_PITCH_ONE, S1_PITCH_TWO) if from_s1 and k == 0 else (PITCH_ONE, PITCH_TWO)
        if two[0] <= p <= two[1]:
            steps.append(2)
            if FLAG_BODY_MISSED not in flags:
                flags.append(FLAG_BODY_MISSED)
        else:
            steps.append(1)
            if not one[0] <= p <= one[1] and FLAG_PITCH_UNCOUNTABLE not in flags:
                flags.append(FLAG_PITCH_UNCOUNTABLE)
    return steps, flags


def naming_unverified(series_flags: tuple[str, ...] | list[str]) -> str:
    """Why the level names rest on an assumption ('' when they do not): the
    `UNVERIFIED_FLAGS` among ``series_flags``, in words."""
    return "; ".join(UNVERIFIED_FLAGS[f] for f in series_flags if f in UNVERIFIED_FLAGS)


def _disc_level(centroid: np.ndarray, ladder: list[NamedBody], centre: dict[str, np.ndarray], s1_found: bool
                ) -> tuple[str, np.ndarray] | None:
    """The disc a component at ``centroid`` would be, and where that disc is
    expected (the midpoint of its two bodies), from the bodies' ladder."""
    z = float(centroid[2])
    for lower, upper in zip(ladder, ladder[1:]):
        if lower.superior_mm < z < upper.superior_mm:
            return disc_between(upper.name), (centre[upper.name] + centre[lower.name]) / 2
    if ladder and z > ladder[-1].superior_mm:
        top = VERTEBRAL_BODY_LEVELS.index(ladder[-1].name)
        if top > 0:
            return disc_between(VERTEBRAL_BODY_LEVELS[top - 1]), centre[ladder[-1].name]
    if not s1_found and ladder and ladder[0].name == "L5" and z < ladder[0].superior_mm:
        # Without S1 the disc under the lowest body (taken as L5) is still
        # L5S1: its level is as sure as L5's, which is flagged.
        return disc_between("L5"), centre["L5"]
    return None


def name_discs(discs: list[np.ndarray], bodies: list[NamedBody], affine: np.ndarray, s1_found: bool
               ) -> dict[str, list[np.ndarray]]:
    """Disc name → the disc components that form it, largest first: each
    component named by the bodies it lies between, near the midpoint of
    their centroids; parts of one disc join only when close to its largest
    part."""
    ladder = sorted(bodies, key=lambda b: b.superior_mm)
    centre = {b.name: centroid_lps_mm(b.mask, affine) for b in bodies}
    candidates: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for d in discs:
        c = centroid_lps_mm(d, affine)
        level = _disc_level(c, ladder, centre, s1_found)
        if level is None or np.linalg.norm(c - level[1]) > DISC_MAX_OFFSET_MM:
            continue
        candidates.setdefault(level[0], []).append((int(d.sum()), c, d))
    named: dict[str, list[np.ndarray]] = {}
    for name, parts in candidates.items():
        parts.sort(key=lambda t: -t[0])
        named[name] = [d for _, c, d in parts if np.linalg.norm(c - parts[0][1]) <= DISC_PART_JOIN_MM]
    return named


def name_levels(classes: np.ndarray, affine: np.ndarray, voxel_volume_mm3: float) -> NamedLabels:
    """Turn a class map (0 bg, 1 body, 2 S1, 3 disc) into named levels.

    Parameters
    ----------
    classes : numpy.ndarray
        (slices, rows, columns) network classes on the native grid.
    affine : numpy.ndarray
        Index → LPS mm map (used for superior/inferior ordering).
    voxel_volume_mm3 : float
        Sets the minimum component sizes (`MIN_BODY_MM3`, `MIN_DISC_MM3`).
    """
    spacing = (float(np.linalg.norm(affine[:3, 0])), float(np.linalg.norm(affine[:3, 1])),
               float(np.linalg.norm(affine[:3, 2])))
    discs = clean_class_mask(classes == CLASS_DISC, max(1, int(MIN_DISC_MM3 / voxel_volume_mm3)), spacing,
                             split_radius_mm=DISC_SPLIT_RADIUS_MM)
    bodies, series_flags = name_bodies(classes, affine, max(1, int(MIN_BODY_MM3 / voxel_volume_mm3)), spacing,
                                       [superior_mm(d, affine) for d in discs])
    out = np.zeros(classes.shape, np.uint8)
    flags: dict[str, tuple[str, ...]] = {}
    for body in bodies:
        out[body.mask & (out == 0)] = structure_by_name(body.name).label
        flags[body.name] = (FLAG_PARTIAL,) if touches_edge(body.mask) else ()
    s1_found = any(b.name == "S1" for b in bodies)
    for name, parts in name_discs(discs, bodies, affine, s1_found).items():
        label = structure_by_name(name).label
        for d in parts:
            out[d & (out == 0)] = label
        flags[name] = (FLAG_PARTIAL,) if touches_edge(out == label) else ()
    return NamedLabels(out, tuple(series_flags), flags)
