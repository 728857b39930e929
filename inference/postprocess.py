"""Post-processing of network classes into named structures.

Per class: fill holes, smooth (binary opening/closing in-plane), split into
3D connected components and drop those under a minimum volume; bodies
holding two, or broken in two, are split or joined by their height against
the median body or by sharing their superior-inferior extent
(`regularise_body_heights`). Then name levels: S1 is
the largest S1-class component, with any body component inside its
footprint (`absorb_into_s1`); bodies above it are counted upward L5, L4,
… (DOMAIN.md §3: count from S1 when S1 is visible). Without
S1 the lowest body is taken as L5 and the result is flagged for review.
Each disc is named by the two bodies it lies between (the one under L5 is
L5S1 even when S1 was not found).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from spinegate.dicom_io.levels import VERTEBRAL_BODY_LEVELS, disc_between, structure_by_name
from spinegate.dicom_io.volume import index_to_lps

__all__ = ["NamedLabels", "body_height_mm", "clean_class_mask", "fill_holes_2d", "merge_fragments", "name_levels",
           "regularise_body_heights", "absorb_into_s1", "CLASS_VB", "CLASS_S1",
           "CLASS_DISC", "MIN_BODY_MM3"]

CLASS_VB, CLASS_S1, CLASS_DISC = 1, 2, 3

FLAG_UNANCHORED = "level_naming_unanchored_no_s1"
# Smallest body or S1 component kept (mm³).
MIN_BODY_MM3 = 2000.0
FLAG_PARTIAL = "touches_field_of_view_edge"


@dataclass(frozen=True)
class NamedLabels:
    """A spinegate label map (values from `dicom_io.levels`) with flags.

    ``structure_flags`` maps a level name to its review flags.
    """

    label_map: np.ndarray
    series_flags: tuple[str, ...]
    structure_flags: dict[str, tuple[str, ...]]


def fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """`scipy.ndimage.binary_fill_holes` of a 2D mask, run inside the mask's
    bounding box widened by one pixel (the outside stays connected around
    the mask, so the result is the same as on the whole slice, at a fraction
    of the cost on a small structure in a large field)."""
    out = np.zeros_like(mask, dtype=bool)
    rows, cols = np.nonzero(np.any(mask, axis=1))[0], np.nonzero(np.any(mask, axis=0))[0]
    if rows.size == 0:
        return out
    box = (slice(max(0, rows[0] - 1), rows[-1] + 2), slice(max(0, cols[0] - 1), cols[-1] + 2))
    out[box] = ndimage.binary_fill_holes(mask[box])
    return out


def clean_class_mask(mask: np.ndarray, min_voxels: int, spacing_mm: tuple[float, float, float] = (1.0, 1.0, 1.0),
                     split_radius_mm: float = 0.0) -> list[np.ndarray]:
    """Fill holes, smooth and split a class mask into 3D components.

    With ``split_radius_mm`` > 0, neighbouring structures joined through
    lateral slices (where partial volume blurs the disc between two bodies)
    are separated; see `_split_on_central_cores`.

    Returns component masks of at least ``min_voxels`` voxels, largest first.
    """
    st2d = np.zeros((1, 3, 3), bool)
    st2d[0] = ndimage.generate_binary_structure(2, 1)
    # Pad by replication so structures cut by the field of view keep their
    # edge rows (morphology would otherwise erode them).
    m = np.pad(mask, ((0, 0), (2, 2), (2, 2)), mode="edge")
    m = ndimage.binary_opening(m, structure=st2d)
    m = ndimage.binary_closing(m, structure=st2d)
    m = np.stack([fill_holes_2d(s) for s in m])[:, 2:-2, 2:-2]
    conn = ndimage.generate_binary_structure(3, 1)
    labels, n = ndimage.label(m, structure=conn)
    if split_radius_mm > 0 and n:
        labels, n = _split_on_central_cores(m, spacing_mm, split_radius_mm)
    if n == 0:
        return []
    sizes = ndimage.sum_labels(np.ones_like(labels), labels, index=np.arange(1, n + 1))
    order = np.argsort(sizes)[::-1]
    return [labels == (i + 1) for i in order if sizes[i] >= min_voxels]


_CENTRAL_AREA_FRACTION = 0.5
_FAR_FROM_CORES_MM = 30.0


def _split_on_central_cores(
    m: np.ndarray, spacing_mm: tuple[float, float, float], radius_mm: float
) -> tuple[np.ndarray, int]:
    """Label ``m`` by nearest core, cores taken where structures are distinct.

    Cores: the 2D components of the mask eroded in-plane by ``radius_mm`` on
    one slice — among the central slices (class area at least half the
    largest slice's), the one where the structures fall apart into the most
    cores (ties: larger area). Lateral slices are not trusted for this:
    partial volume there can fill the disc between two bodies. Every voxel
    goes to the core nearest in-plane (distance in mm); voxels farther than
    30 mm from every core (a structure missing from that slice) form components of
    their own.
    """
    st2d = np.zeros((1, 3, 3), bool)
    st2d[0] = ndimage.generate_binary_structure(2, 1)
    conn = ndimage.generate_binary_structure(3, 1)
    area = m.sum(axis=(1, 2))
    iterations = max(1, int(round(radius_mm / min(spacing_mm[1:]))))
    cores = ndimage.binary_erosion(m, structure=st2d, iterations=iterations)
    min_core_px = max(4, int(20.0 / (spacing_mm[1] * spacing_mm[2])))  # 20 mm²
    best, best_key, best_labels = -1, (-1, -1), None
    for k in np.where(area >= _CENTRAL_AREA_FRACTION * area.max())[0]:
        lab, n = ndimage.label(cores[k])
        if n:
            sizes = ndimage.sum_labels(np.ones_like(lab), lab, index=np.arange(1, n + 1))
            keep = np.zeros(n + 1, bool)
            keep[1:] = sizes >= min_core_px
            lab = np.where(keep[lab], lab, 0)
            n = int(keep.sum())
        key = (n, int(area[k]))
        if key > best_key:
            best, best_key, best_labels = int(k), key, lab
    if best < 0 or best_key[0] == 0:
        return ndimage.label(m, structure=conn)
    _, relabelled = np.unique(best_labels, return_inverse=True)
    seeds2d = relabelled.reshape(best_labels.shape)
    n = int(seeds2d.max())
    # Nearest core in-plane, the same for every slice of the stack.
    dist2d, idx = ndimage.distance_transform_edt(seeds2d == 0, sampling=spacing_mm[1:], return_indices=True)
    nearest = seeds2d[idx[0], idx[1]]
    labels = np.where(m, nearest[None], 0)
    dist = np.broadcast_to(dist2d[None], m.shape)
    far = m & (dist > _FAR_FROM_CORES_MM)
    if far.any():
        extra, k = ndimage.label(far, structure=conn)
        labels[far] = extra[far] + n
        n += k
    return labels, n


_FRAGMENT_FRACTION = 0.35


def merge_fragments(parts: list[np.ndarray], fraction: float = _FRAGMENT_FRACTION) -> list[np.ndarray]:
    """Merge components smaller than ``fraction`` × the median size into the
    touching component they share most boundary with.

    A body broken at a narrow waist gives a small piece touching its other
    part. A partial body cut by the field of view is not a fragment and
    stays on its own (it is flagged by the naming step).
    """
    if len(parts) < 3:
        return parts
    sizes = [int(p.sum()) for p in parts]
    median = float(np.median(sizes))
    kept = [p.copy() for p in parts]
    conn = ndimage.generate_binary_structure(3, 1)
    for i in sorted(range(len(kept)), key=lambda i: sizes[i]):
        if sizes[i] >= fraction * median or not kept[i].any() or _touches_edge(kept[i]):
            continue
        grown = ndimage.binary_dilation(kept[i], structure=conn)
        contacts = [(int((grown & kept[j]).sum()), j) for j in range(len(kept)) if j != i and kept[j].any()]
        touching, j = max(contacts)
        if touching > 0:
            kept[j] |= kept[i]
            kept[i] = np.zeros_like(kept[i])
    return sorted((p for p in kept if p.any()), key=lambda p: -int(p.sum()))


# A body this many times the median body height holds two bodies whose disc
# the network missed; two neighbours no taller together than this many
# median heights are one body the network broke in two (two real bodies and
# their disc measure about twice the median or more).
_MERGED_HEIGHT_FACTOR = 1.6
_BROKEN_PAIR_HEIGHT_FACTOR = 1.35
_BROKEN_PART_HEIGHT_FACTOR = 0.8
_SIDE_BY_SIDE_SHARE = 0.5
# A waist is a level at most this share of the body's median cross-section.
_WAIST_FRACTION = 0.7


def body_height_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Superior-inferior extent (mm, patient z) of a body on its largest slice."""
    k = int(np.argmax(mask.sum(axis=(1, 2))))
    rc = np.argwhere(mask[k])
    z = rc @ affine[2, 1:3]
    pixel_z = float(np.abs(affine[2, 1:3]).max())
    return float(z.max() - z.min()) + pixel_z


def _split_at_waist(mask: np.ndarray, affine: np.ndarray) -> list[np.ndarray]:
    """Cut a body holding two bodies at the patient-z level where it is
    thinnest (the missed disc), searched in the middle 30-70 % of its
    height; a body without a waist there (no level under 0.7 × its median
    cross-section) is returned whole."""
    ijk = np.argwhere(mask)
    z = ijk @ affine[2, :3]
    lo, hi = float(z.min()), float(z.max())
    # bins no finer than the in-plane z step, or every other bin is empty
    step = max(1.0, float(np.abs(affine[2, 1:3]).max()))
    edges = np.arange(lo - step / 2, hi + step, step)
    profile, _ = np.histogram(z, bins=edges)
    centres = (edges[:-1] + edges[1:]) / 2
    middle = (centres > lo + 0.3 * (hi - lo)) & (centres < lo + 0.7 * (hi - lo))
    # no waist (a tall, tilted L5): one body
    if not middle.any() or profile[middle].min() > _WAIST_FRACTION * float(np.median(profile[profile > 0])):
        return [mask]
    thinnest = np.flatnonzero(profile[middle] == profile[middle].min())
    # the middle of the thinnest stretch (a missed disc is a few rows high)
    cut = centres[middle][thinnest[len(thinnest) // 2]]
    upper, lower = np.zeros_like(mask), np.zeros_like(mask)
    above = z >= cut
    upper[tuple(ijk[above].T)] = True
    lower[tuple(ijk[~above].T)] = True
    return [upper, lower]


def _z_extent_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Lowest and highest patient z (mm) of a component's voxels."""
    z = np.argwhere(mask) @ affine[2, :3] + affine[2, 3]
    return float(z.min()), float(z.max())


def _side_by_side(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> bool:
    """Whether two components share at least half of the shorter one's
    superior-inferior extent."""
    (alo, ahi), (blo, bhi) = _z_extent_mm(a, affine), _z_extent_mm(b, affine)
    return min(ahi, bhi) - max(alo, blo) >= _SIDE_BY_SIDE_SHARE * min(ahi - alo, bhi - blo)


def regularise_body_heights(bodies: list[np.ndarray], affine: np.ndarray) -> list[np.ndarray]:
    """Split bodies that hold two and join bodies broken in two, judged by
    height against the median body (naming counts bodies, so one merged
    or broken body renames every level above it).

    A body at least 1.6 × the median height is cut at its waist when both
    parts are body-sized (each at least 0.35 × the median volume). Two
    touching neighbours, each under 0.8 × the median or sharing at least
    half of the shorter one's superior-inferior extent (split side by side:
    two bodies are stacked, a disc between them), and together at most
    1.35 × the median, become one. Bodies cut by the field of view are left alone;
    with fewer than three whole bodies nothing is changed.
    """
    # each body's height once; a body cut by the field of view has none that
    # counts (inf: never tall, never short)
    heights = [np.inf if _touches_edge(b) else body_height_mm(b, affine) for b in bodies]
    whole = [(b, h) for b, h in zip(bodies, heights) if np.isfinite(h)]
    if len(whole) < 3:
        return bodies
    median = float(np.median([h for _, h in whole]))
    median_voxels = float(np.median([b.sum() for b, _ in whole]))
    out: list[tuple[np.ndarray, float]] = []
    for b, h in zip(bodies, heights):
        if np.isfinite(h) and h >= _MERGED_HEIGHT_FACTOR * median:
            parts = _split_at_waist(b, affine)
            # A tall body that is one (a tilted L5) has no waist leaving two
            # body-sized parts.
            if len(parts) == 2 and min(int(p.sum()) for p in parts) >= _FRAGMENT_FRACTION * median_voxels:
                out.extend((p, body_height_mm(p, affine)) for p in parts)
                continue
        out.append((b, h))
    out.sort(key=lambda item: _superior_mm(item[0], affine))
    conn = ndimage.generate_binary_structure(3, 1)
    i = 0
    while i < len(out) - 1:
        (a, ha), (b, hb) = out[i], out[i + 1]
        short = max(ha, hb) < _BROKEN_PART_HEIGHT_FACTOR * median
        if (short or _side_by_side(a, b, affine)) and (ndimage.binary_dilation(a, structure=conn) & b).any():
            joined = a | b
            hj = body_height_mm(joined, affine)
            if hj <= _BROKEN_PAIR_HEIGHT_FACTOR * median:
                out[i : i + 2] = [(joined, hj)]
                continue
        i += 1
    return sorted((b for b, _ in out), key=lambda p: -int(p.sum()))


_OFF_CHAIN_MM = 20.0


_S1_FOOTPRINT_SHARE = 0.5


def absorb_into_s1(s1: np.ndarray, bodies: list[np.ndarray], affine: np.ndarray,
                   min_share: float = _S1_FOOTPRINT_SHARE) -> tuple[np.ndarray, list[np.ndarray]]:
    """S1 with the body components that are part of it; the other bodies.

    Why: in the midline slices of a thick-slice series the network can
    call part of S1 a lumbar body while the lateral slices call it S1. Such
    a component lies within S1's in-plane footprint (its projection across
    the sagittal slices), its centroid below S1's top; L5 lies above S1,
    mostly outside that footprint, and sacral segments lie below it. A
    component joins S1 when at least ``min_share`` of its voxels fall in
    the footprint and its centroid is not above S1's highest voxel.
    """
    footprint = s1.any(axis=0)
    s1_top_mm = _z_extent_mm(s1, affine)[1]
    merged, rest = s1.copy(), []
    for b in bodies:
        inside = float((b & footprint[None]).sum()) / max(int(b.sum()), 1)
        if inside >= min_share and _superior_mm(b, affine) <= s1_top_mm:
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
        keep = off <= _OFF_CHAIN_MM
        if keep.sum() < 4:
            return np.ones(len(c), bool)
    return keep


_DISC_MAX_OFFSET_MM = 30.0
_DISC_PART_JOIN_MM = 15.0


def _centroid_lps(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return index_to_lps(affine, np.array(ndimage.center_of_mass(mask)))


def _superior_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Patient z (superior, mm) of a component's centroid."""
    return float(_centroid_lps(mask, affine)[2])


def _touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[:, 0, :].any() or mask[:, -1, :].any() or mask[:, :, 0].any() or mask[:, :, -1].any())


def name_levels(classes: np.ndarray, affine: np.ndarray, voxel_volume_mm3: float) -> NamedLabels:
    """Turn a class map (0 bg, 1 body, 2 S1, 3 disc) into named levels.

    Parameters
    ----------
    classes : numpy.ndarray
        (slices, rows, columns) network classes on the native grid.
    affine : numpy.ndarray
        Index → LPS mm map (used for superior/inferior ordering).
    voxel_volume_mm3 : float
        Sets the minimum component sizes (bodies 2 cm³, S1 2 cm³, discs 0.4 cm³).
    """
    min_body = max(1, int(MIN_BODY_MM3 / voxel_volume_mm3))
    min_disc = max(1, int(400 / voxel_volume_mm3))
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    series_flags: list[str] = []
    # Bodies are ~25 mm high and discs 5-12 mm: eroding 3 mm (bodies) and
    # 1.5 mm (discs) in-plane breaks bridges without losing a structure.
    bodies = merge_fragments(clean_class_mask(classes == CLASS_VB, min_body, spacing, split_radius_mm=3.0))
    bodies = regularise_body_heights(bodies, affine)
    s1_parts = clean_class_mask(classes == CLASS_S1, min_body, spacing)
    if s1_parts:
        s1_parts[0], bodies = absorb_into_s1(s1_parts[0], bodies, affine)
    if bodies:
        inliers = on_spinal_column(np.array([_centroid_lps(b, affine) for b in bodies]),
                                   np.array([b.sum() for b in bodies]))
        if not inliers.all():
            series_flags.append("off_column_components_dropped")
        bodies = [b for b, k in zip(bodies, inliers) if k]
    discs = clean_class_mask(classes == CLASS_DISC, min_disc, spacing, split_radius_mm=1.5)
    out = np.zeros(classes.shape, np.uint8)
    flags: dict[str, tuple[str, ...]] = {}

    s1 = s1_parts[0] if s1_parts else None
    s1_z = _superior_mm(s1, affine) if s1 is not None else -np.inf
    # Bodies below S1 are sacral segments the network called vertebral bodies.
    body_z = sorted(((z, b) for z, b in ((_superior_mm(b, affine), b) for b in bodies) if z > s1_z),
                    key=lambda t: t[0])
    named: list[tuple[str, float, np.ndarray]] = []
    if s1 is not None:
        named.append(("S1", s1_z, s1))
        start = VERTEBRAL_BODY_LEVELS.index("L5")
    else:
        series_flags.append(FLAG_UNANCHORED)
        start = VERTEBRAL_BODY_LEVELS.index("L5")
    for i, (z, b) in enumerate(body_z):
        idx = start - i
        if idx < 0:
            series_flags.append("more_bodies_than_levels")
            break
        named.append((VERTEBRAL_BODY_LEVELS[idx], z, b))
    for name, _, m in named:
        out[m & (out == 0)] = structure_by_name(name).label
        flags[name] = (FLAG_PARTIAL,) if _touches_edge(m) else ()
    # Discs: between consecutive named bodies, near the midpoint of their
    # centroids; parts of one disc join only when close to its largest part.
    ladder = sorted(named, key=lambda t: t[1])
    centre = {name: _centroid_lps(m, affine) for name, _, m in named}
    candidates: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
    for d in discs:
        c = _centroid_lps(d, affine)
        z = float(c[2])
        name, expected = None, None
        for (lower, z_lo, _), (upper, z_hi, _) in zip(ladder, ladder[1:]):
            if z_lo < z < z_hi:
                name, expected = disc_between(upper), (centre[upper] + centre[lower]) / 2
                break
        if name is None and ladder and z > ladder[-1][1]:
            top = VERTEBRAL_BODY_LEVELS.index(ladder[-1][0])
            if top > 0:
                name, expected = disc_between(VERTEBRAL_BODY_LEVELS[top - 1]), centre[ladder[-1][0]]
        if name is None and s1 is None and ladder and ladder[0][0] == "L5" and z < ladder[0][1]:
            # Without S1 the disc under the lowest body (taken as L5) is
            # still L5S1: its level is as sure as L5's, which is flagged.
            name, expected = disc_between("L5"), centre["L5"]
        if name is None or np.linalg.norm(c - expected) > _DISC_MAX_OFFSET_MM:
            continue
        candidates.setdefault(name, []).append((int(d.sum()), c, d))
    for name, parts in candidates.items():
        parts.sort(key=lambda t: -t[0])
        label = structure_by_name(name).label
        for _, c, d in parts:
            if np.linalg.norm(c - parts[0][1]) <= _DISC_PART_JOIN_MM:
                out[d & (out == 0)] = label
        flags[name] = (FLAG_PARTIAL,) if _touches_edge(out == label) else ()
    return NamedLabels(out, tuple(series_flags), flags)
