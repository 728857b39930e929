"""Post-processing of network classes into clean components.

Per class: fill holes, smooth (binary opening/closing in-plane), split into
3D connected components and drop those under a minimum volume; bodies
holding two, or broken in two, are split or joined by their height against
the median body, by sharing their superior-inferior extent or by lying
between the same two discs (`regularise_body_heights`). `inference.level_naming` names the components.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from spinegate.dicom_io.volume import centroid_lps_mm, voxel_indices

__all__ = ["body_height_mm", "clean_class_mask", "component_sizes", "fill_holes_2d", "merge_fragments",
           "regularise_body_heights", "superior_mm", "tallest_slice_height_mm", "touches_edge", "z_extent_mm"]

# Splitting structures joined through lateral slices (`_split_on_central_cores`).
_CENTRAL_AREA_FRACTION = 0.5
_FAR_FROM_CORES_MM = 30.0
# Components under this share of the median size are fragments (`merge_fragments`).
_FRAGMENT_FRACTION = 0.35
# A body this many times the median body height holds two bodies whose disc
# the network missed; two neighbours no taller together than this many
# median heights are one body the network broke in two (two real bodies and
# their disc measure about twice the median or more).
_MERGED_HEIGHT_FACTOR = 1.6
_BROKEN_PAIR_HEIGHT_FACTOR = 1.35
_BROKEN_PART_HEIGHT_FACTOR = 0.8
_SIDE_BY_SIDE_SHARE = 0.5
# Two consecutive discs this many times the median disc pitch apart hold
# one body between them (a missed disc leaves about two pitches); the
# median needs three pitches to outvote one such double.
_DISC_PITCH_ONE = (0.6, 1.45)
_MIN_DISC_PITCHES = 3
# A waist is a level at most this share of the body's median cross-section.
_WAIST_FRACTION = 0.7


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
    sizes = component_sizes(labels, n)
    order = np.argsort(sizes)[::-1]
    return [labels == (i + 1) for i in order if sizes[i] >= min_voxels]


def component_sizes(labels: np.ndarray, n: int) -> np.ndarray:
    """Voxel counts of components 1..n of a label image, as float64 (what
    `scipy.ndimage.sum_labels` of ones returns, so sorting them breaks ties
    as before): one pass, where ``sum_labels`` takes one per component."""
    return np.bincount(labels.ravel(), minlength=n + 1)[1 : n + 1].astype(np.float64)


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
    central = np.flatnonzero(area >= _CENTRAL_AREA_FRACTION * area.max())
    # In-plane erosion: each slice on its own, so only the central ones.
    cores = ndimage.binary_erosion(m[central], structure=st2d, iterations=iterations)
    min_core_px = max(4, int(20.0 / (spacing_mm[1] * spacing_mm[2])))  # 20 mm²
    best, best_key, best_labels = -1, (-1, -1), None
    for core, k in zip(cores, central):
        lab, n = ndimage.label(core)
        if n:
            sizes = component_sizes(lab, n)
            keep = np.zeros(n + 1, bool)
            keep[1:] = sizes >= min_core_px
            lab = np.where(keep[lab], lab, 0)
            n = int(keep.sum())
        key = (n, int(area[k]))
        if key > best_key:
            best, best_key, best_labels = int(k), key, lab
    if best < 0 or best_key[0] == 0 or best_labels is None:
        return ndimage.label(m, structure=conn)
    # Cores renumbered 1..n in order (np.unique's inverse, without its sort).
    present = np.zeros(int(best_labels.max()) + 1, bool)
    present[best_labels] = True
    seeds2d = (np.cumsum(present) - 1)[best_labels]
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
    for i in sorted(range(len(kept)), key=lambda i: sizes[i]):
        if sizes[i] >= fraction * median or not kept[i].any() or touches_edge(kept[i]):
            continue
        box, grown = _grown_in_box(kept[i])
        contacts = [(int((grown & kept[j][box]).sum()), j) for j in range(len(kept)) if j != i and kept[j].any()]
        touching, j = max(contacts)
        if touching > 0:
            kept[j] |= kept[i]
            kept[i] = np.zeros_like(kept[i])
    return sorted((p for p in kept if p.any()), key=lambda p: -int(p.sum()))


def _grown_in_box(mask: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray]:
    """A non-empty component dilated by one voxel (face connectivity), as
    the box one voxel around it and the dilated mask inside that box: the
    whole-field dilation restricted to where it can be true, at the cost of
    the component's size rather than the series'."""
    idx = voxel_indices(mask)
    box = tuple(slice(max(0, int(lo) - 1), int(hi) + 2) for lo, hi in zip(idx.min(axis=0), idx.max(axis=0)))
    return box, ndimage.binary_dilation(mask[box], structure=ndimage.generate_binary_structure(mask.ndim, 1))


def _touching(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether component ``b`` touches (shares a face with, or overlaps)
    the non-empty component ``a``."""
    box, grown = _grown_in_box(a)
    return bool((grown & b[box]).any())


def body_height_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Superior-inferior extent (mm, patient z) of a body on its largest slice."""
    return _slice_height_mm(mask[int(np.argmax(mask.sum(axis=(1, 2))))], affine)


def _slice_height_mm(plane: np.ndarray, affine: np.ndarray) -> float:
    """Superior-inferior extent (mm, patient z) of a structure on one slice, a pixel included."""
    z = np.argwhere(plane) @ affine[2, 1:3]
    return float(z.max() - z.min()) + float(np.abs(affine[2, 1:3]).max())


def tallest_slice_height_mm(mask: np.ndarray, affine: np.ndarray, share: float = 0.5) -> float:
    """Largest superior-inferior extent (mm, patient z) of a body over its
    slices holding at least ``share`` of its largest slice's area: a body
    joined to its neighbour on a few lateral slices only is one body high
    on its largest slice (`body_height_mm`) and two high on those."""
    areas = mask.sum(axis=(1, 2))
    return max(_slice_height_mm(mask[k], affine) for k in np.flatnonzero(areas >= share * areas.max()))


def _split_at_waist(mask: np.ndarray, affine: np.ndarray) -> list[np.ndarray]:
    """Cut a body holding two bodies at the patient-z level where it is
    thinnest (the missed disc), searched in the middle 30-70 % of its
    height; a body without a waist there (no level under 0.7 × its median
    cross-section) is returned whole."""
    ijk = voxel_indices(mask)
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


def z_extent_mm(mask: np.ndarray, affine: np.ndarray) -> tuple[float, float]:
    """Lowest and highest patient z (mm) of a component's voxels."""
    z = voxel_indices(mask) @ affine[2, :3] + affine[2, 3]
    return float(z.min()), float(z.max())


def _side_by_side(a: np.ndarray, b: np.ndarray, affine: np.ndarray) -> bool:
    """Whether two components share at least half of the shorter one's
    superior-inferior extent."""
    (alo, ahi), (blo, bhi) = z_extent_mm(a, affine), z_extent_mm(b, affine)
    return min(ahi, bhi) - max(alo, blo) >= _SIDE_BY_SIDE_SHARE * min(ahi - alo, bhi - blo)


def regularise_body_heights(bodies: list[np.ndarray], affine: np.ndarray,
                            disc_centres_z_mm: Sequence[float] = ()) -> list[np.ndarray]:
    """Split bodies that hold two and join bodies broken in two, judged by
    height against the median body (naming counts bodies, so one merged
    or broken body renames every level above it).

    A body at least 1.6 × the median height is cut at its waist when both
    parts are body-sized (each at least 0.35 × the median volume). Two
    touching neighbours, each under 0.8 × the median or sharing at least
    half of the shorter one's superior-inferior extent (split side by side:
    two bodies are stacked, a disc between them), and together at most
    1.35 × the median, become one; after each join the median is taken
    again over the bodies as they stand (with two bodies broken, their
    halves would hold it down and hide the second). Two touching
    neighbours whose centroids lie between the same two consecutive discs
    (``disc_centres_z_mm``, patient z, at a usual pitch) become one when
    together they are no taller than those discs are apart: no disc
    separates them, and two bodies with their disc measure well over one
    pitch. This holds where most bodies are broken and their halves set the
    median. (Along patient z, as the heights are: measured instead along
    the line between the two discs' centres, a segment of the lordosis
    along itself, lateral disc fragments gave lines across the column that
    joined whole bodies.) Bodies cut by the
    field of view are left alone; with fewer than three whole bodies
    nothing is changed.
    """
    # each body's height once; a body cut by the field of view has none that
    # counts (inf: never tall, never short)
    heights = [np.inf if touches_edge(b) else body_height_mm(b, affine) for b in bodies]
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
    # with each body's centroid z, once: the loop below starts over after each join
    stack = sorted(((b, h, superior_mm(b, affine)) for b, h in out), key=lambda item: item[2])
    intervals = _disc_intervals_mm(disc_centres_z_mm)
    i = 0
    while i < len(stack) - 1:
        (a, ha, za), (b, hb, zb) = stack[i], stack[i + 1]
        broken = max(ha, hb) < _BROKEN_PART_HEIGHT_FACTOR * median or _side_by_side(a, b, affine)
        pitch = _pitch_around(za, zb, intervals)
        if (broken or pitch) and _touching(a, b):
            joined = a | b
            hj = body_height_mm(joined, affine)
            if (broken and hj <= _BROKEN_PAIR_HEIGHT_FACTOR * median) or hj <= pitch:
                stack[i : i + 2] = [(joined, hj, superior_mm(joined, affine))]
                # Broken halves pull the median down; judged again against
                # the bodies as they now stand, a pair passed over may be short.
                median = float(np.median([h for _, h, _ in stack if np.isfinite(h)]))
                i = 0
                continue
        i += 1
    return sorted((b for b, _, _ in stack), key=lambda p: -int(p.sum()))


def _disc_intervals_mm(disc_centres_z_mm: Sequence[float]) -> list[tuple[float, float]]:
    """(lower, upper) patient z (mm) of each two consecutive discs at a
    usual pitch; none with fewer than `_MIN_DISC_PITCHES` pitches."""
    z = np.sort(np.asarray(disc_centres_z_mm, float))
    if len(z) < _MIN_DISC_PITCHES + 1:
        return []
    pitches = np.diff(z)
    median = float(np.median(pitches))
    lo, hi = _DISC_PITCH_ONE
    return [(float(z[k]), float(z[k + 1])) for k, p in enumerate(pitches) if lo * median <= p <= hi * median]


def _pitch_around(z_a: float, z_b: float, intervals: list[tuple[float, float]]) -> float:
    """The pitch (mm) of the disc interval holding both centroids' patient
    z, 0.0 when none does."""
    for lower, upper in intervals:
        if lower < min(z_a, z_b) and max(z_a, z_b) < upper:
            return upper - lower
    return 0.0


def superior_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """Patient z (superior, mm) of a component's centroid."""
    return float(centroid_lps_mm(mask, affine)[2])


def touches_edge(mask: np.ndarray) -> bool:
    return bool(mask[:, 0, :].any() or mask[:, -1, :].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
