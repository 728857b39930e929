"""Paraspinal muscles of the phantom subject, for axial series with exact truth.

Left and right multifidus (MF), erector spinae (ES), psoas major (PM) and
quadratus lumborum (QL) are elliptic cross-sections that follow the spine of
`dicom_io.phantom.make_spine_phantom` (same patient coordinates, so an axial
and a sagittal series of one phantom share a frame of reference). Sizes
change with level the way anatomy does — psoas and multifidus grow
caudally, erector spinae shrinks toward S1, quadratus lumborum ends at L5 —
with a per-subject left/right asymmetry. Fat infiltrates each muscle as
blobs of known fat fraction, so the truth (label map, CSA per muscle and
slice, fat fraction, fat-infiltrated area) is exact on any grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dicom_io.muscles import MUSCLE_LABELS
from dicom_io.phantom import MuscleField, SliceGrid, SpinePhantom

__all__ = ["MUSCLE_LABELS", "MUSCLE_NAMES", "ParaspinalAnatomy", "make_paraspinal_anatomy", "muscle_field",
           "axial_grid", "BLOB_FAT_FRACTION", "LEAN_FAT_FRACTION"]

MUSCLE_NAMES = {v: f"{m}_{s}" for (m, s), v in MUSCLE_LABELS.items()}
LEAN_FAT_FRACTION = 0.02
BLOB_FAT_FRACTION = 0.9

# Anchor levels (vertebral-body centres, cranial → caudal) and, per muscle,
# (lateral centre offset from the midline, posterior offset from the canal
# centre, half-width, half-depth) in mm at each anchor. Negative posterior
# offsets lie in front of the canal. Values sketch an adult's lumbar
# anatomy (psoas and multifidus grow caudally, erector spinae shrinks, QL
# stops at L5); None = absent.
_ANCHORS = ("L1", "L2", "L3", "L4", "L5", "S1")
_SHAPES: dict[str, tuple[tuple[float, float, float, float] | None, ...]] = {
    "MF": ((11, 22, 7, 9), (12, 23, 8, 10), (13, 24, 10, 12), (14, 25, 12, 14), (16, 25, 14, 16), (17, 24, 15, 15)),
    "ES": ((36, 26, 20, 17), (37, 27, 20, 17), (38, 28, 19, 16), (38, 30, 17, 15), (36, 31, 13, 12), (33, 31, 9, 8)),
    "PM": ((24, -32, 7, 6), (28, -33, 11, 9), (34, -34, 15, 12), (40, -34, 19, 15), (45, -33, 23, 18),
           (50, -30, 24, 19)),
    "QL": ((58, 2, 11, 6), (62, 3, 14, 7), (66, 4, 15, 7), (68, 5, 13, 6), (66, 6, 7, 4), None),
}
_CANAL_BEHIND_BODY_MM = 9.0  # canal centre behind the body's posterior wall (as the sagittal phantom)


@dataclass(frozen=True)
class ParaspinalAnatomy:
    """One subject's muscles: per (muscle, side) a size factor (asymmetry)
    and the area share of fat blobs; ``seed`` drives the blob pattern."""

    size: dict[tuple[str, str], float]
    blob_share: dict[tuple[str, str], float]
    seed: int

    def fat_fraction(self, muscle: str, side: str) -> float:
        """Expected mean fat fraction of a muscle (the exact value on a grid
        is the mean of the per-pixel map, see `muscle_field`)."""
        share = self.blob_share[(muscle, side)]
        return share * BLOB_FAT_FRACTION + (1 - share) * LEAN_FAT_FRACTION


def make_paraspinal_anatomy(seed: int) -> ParaspinalAnatomy:
    rng = np.random.default_rng(10_000 + seed)
    size = {key: float(rng.uniform(0.9, 1.1)) for key in MUSCLE_LABELS}
    share = {key: float(rng.uniform(0.03, 0.25)) for key in MUSCLE_LABELS}
    return ParaspinalAnatomy(size, share, seed)


def _anchor_z_and_canal_y(ph: SpinePhantom) -> tuple[np.ndarray, np.ndarray]:
    """z of each anchor body centre and the canal centre y there."""
    z, y = [], []
    for name in _ANCHORS:
        e = ph.element(name)
        z.append(e.centre_lps[2])
        y.append(e.centre_lps[1] + e.radius_ap_mm + _CANAL_BEHIND_BODY_MM)
    return np.array(z), np.array(y)


def _blob_field(p: np.ndarray, seed: int, key: tuple[str, str]) -> np.ndarray:
    """A smooth pseudo-random field in [0, 1) (sum of plane waves), fixed per
    subject and muscle; thresholding it at a quantile makes fat blobs."""
    rng = np.random.default_rng(seed * 97 + MUSCLE_LABELS[key])
    k = rng.normal(0, 0.25, (6, 3))
    phase = rng.uniform(0, 2 * np.pi, 6)
    f = sum(np.sin(p @ k[i] + phase[i]) for i in range(6)) / 6.0
    return 0.5 + 0.5 * f


def muscle_field(ph: SpinePhantom, anatomy: ParaspinalAnatomy) -> MuscleField:
    """The (label, fat fraction) field of the subject's muscles, for
    `dicom_io.phantom.render_phantom`'s ``muscles`` argument."""
    anchor_z, canal_y = _anchor_z_and_canal_y(ph)
    order = np.argsort(anchor_z)  # np.interp needs increasing x
    # Fat-blob thresholds: the field's quantile giving each muscle its share,
    # estimated once on a dense sample of the field.
    sample = np.random.default_rng(anatomy.seed).uniform(-150, 150, (20000, 3))
    cut = {key: float(np.quantile(_blob_field(sample, anatomy.seed, key), 1 - anatomy.blob_share[key]))
           for key in MUSCLE_LABELS}

    def field(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        y_canal = np.interp(z, anchor_z[order], canal_y[order])
        label = np.zeros(p.shape[:-1], np.uint8)
        ff = np.zeros(p.shape[:-1], np.float32)
        # Paint big to small so that no muscle hides a smaller neighbour.
        for muscle in ("ES", "PM", "QL", "MF"):
            shapes = _SHAPES[muscle]
            present = np.array([s is not None for s in shapes], float)
            vals = np.array([s if s is not None else (0, 0, 0, 0) for s in shapes], float)
            exists = np.interp(z, anchor_z[order], present[order]) > 0.5
            cx, cy, a, b = (np.interp(z, anchor_z[order], vals[order, i]) for i in range(4))
            a, b = np.maximum(a, 1e-3), np.maximum(b, 1e-3)  # absent levels: no zero division
            for side, sign in (("R", -1.0), ("L", 1.0)):  # patient left is +x
                key = (muscle, side)
                k = anatomy.size[key]
                inside = exists & (((x - sign * cx) / (a * k)) ** 2 + ((y - y_canal - cy) / (b * k)) ** 2 <= 1.0)
                label[inside] = MUSCLE_LABELS[key]
                blobs = _blob_field(p, anatomy.seed, key) >= cut[key]
                ff[inside] = np.where(blobs[inside], BLOB_FAT_FRACTION, LEAN_FAT_FRACTION)
        return label, ff

    return field


def axial_grid(z_top_mm: float, z_bottom_mm: float, slice_spacing_mm: float = 4.0, rows: int = 320,
               columns: int = 320, pixel_spacing_mm: float = 0.6, centre_xy_mm: tuple[float, float] = (0.0, 10.0),
               slice_thickness_mm: float | None = None) -> SliceGrid:
    """An axial stack from ``z_top_mm`` down to ``z_bottom_mm``: rows run
    anterior→posterior (+y), columns right→left (+x), slices superior→
    inferior; ImageOrientationPatient ``[1, 0, 0, 0, 1, 0]``."""
    if z_top_mm <= z_bottom_mm:
        raise ValueError(f"'z_top_mm' ({z_top_mm}) must be above 'z_bottom_mm' ({z_bottom_mm})")
    n = int(np.floor((z_top_mm - z_bottom_mm) / slice_spacing_mm)) + 1
    aff = np.eye(4)
    aff[:3, 0] = (0.0, 0.0, -slice_spacing_mm)
    aff[:3, 1] = (0.0, pixel_spacing_mm, 0.0)
    aff[:3, 2] = (pixel_spacing_mm, 0.0, 0.0)
    aff[:3, 3] = (centre_xy_mm[0] - pixel_spacing_mm * (columns - 1) / 2,
                  centre_xy_mm[1] - pixel_spacing_mm * (rows - 1) / 2, z_top_mm)
    return SliceGrid((n, rows, columns), aff, slice_thickness_mm or slice_spacing_mm)
