"""Paraspinal muscles of the phantom subject, for axial series with exact truth.

Left and right multifidus (MF), erector spinae (ES), psoas major (PM) and
quadratus lumborum (QL) are elliptic cross-sections that follow the spine of
`dicom_io.phantom.make_spine_phantom` (same patient coordinates, so an axial
and a sagittal series of one phantom share a frame of reference). Sizes
change with level the way anatomy does — psoas and multifidus grow
caudally, erector spinae shrinks toward S1, quadratus lumborum ends at L5 —
with a per-subject left/right asymmetry, at adult sizes (erector spinae
about 20 cm² a side at L1-L3). A thin fascia sheet wraps each muscle and
fat fills the back around them; the back follows the spine, so lordosis
never cuts a muscle off. Fat infiltrates each muscle as blobs of known fat
fraction, so the truth (label map, CSA per muscle and slice, fat
fraction, fat-infiltrated area) is exact on any grid.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinegate.dicom_io.muscles import MUSCLE_LABELS
from spinegate.dicom_io.phantom.anatomy import TRUNK_HALF_DEPTH_MM, TRUNK_INNER_HALF_DEPTH_MM, SliceGrid, SpinePhantom

__all__ = ["MUSCLE_LABELS", "MUSCLE_NAMES", "ParaspinalAnatomy", "make_paraspinal_anatomy", "muscle_field",
           "axial_grid", "BLOB_FAT_FRACTION", "LEAN_FAT_FRACTION", "FASCIA_FAT_FRACTION", "PHANTOM_REVISION",
           "ParaspinalField", "slice_muscle_truth"]

MUSCLE_NAMES = {v: f"{m}_{s}" for (m, s), v in MUSCLE_LABELS.items()}
# Bumped whenever the drawing changes, so cached renders are not reused
# (3: adult erector spinae, fascia and back fat, the back follows the spine).
PHANTOM_REVISION = 3
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
    "ES": ((41, 27, 29, 23), (42, 28, 30, 24), (43, 29, 29, 23), (42, 30, 25, 20), (38, 31, 16, 14), (34, 31, 10, 9)),
    "PM": ((24, -32, 7, 6), (28, -33, 11, 9), (34, -34, 15, 12), (40, -34, 19, 15), (45, -33, 23, 18),
           (50, -30, 24, 19)),
    "QL": ((58, 2, 11, 6), (62, 3, 14, 7), (66, 4, 15, 7), (68, 5, 13, 6), (66, 6, 7, 4), None),
}
_CANAL_BEHIND_BODY_MM = 9.0  # canal centre behind the body's posterior wall (as the sagittal phantom)
# The back follows the spine: the trunk's inner (muscle/fat) boundary lies
# this far behind the canal centre at every level, so no muscle is cut off
# where lordosis carries the spine backwards.
_INNER_BACK_BEHIND_CANAL_MM = 62.0
# Fascia around each muscle: a thin, partly fatty sheet (what separates
# multifidus from erector spinae on MRI), and the fat that fills the back
# between the muscles, the laminae and the skin.
FASCIA_MM = 1.0
FASCIA_FAT_FRACTION = 0.6
BACK_FAT_BEHIND_CANAL_MM = 6.0


@dataclass(frozen=True)
class ParaspinalAnatomy:
    """One subject's muscles: per (muscle, side) a size factor (asymmetry)
    and the area share of fat blobs; ``seed`` drives the blob pattern;
    ``fascia_fat_fraction`` is how fatty (so how visible) the sheets
    between the muscles are."""

    size: dict[tuple[str, str], float]
    blob_share: dict[tuple[str, str], float]
    seed: int
    fascia_fat_fraction: float = FASCIA_FAT_FRACTION

    def fat_fraction(self, muscle: str, side: str) -> float:
        """Expected mean fat fraction of a muscle (the exact value on a grid
        is the mean of the per-pixel map, see `muscle_field`)."""
        share = self.blob_share[(muscle, side)]
        return share * BLOB_FAT_FRACTION + (1 - share) * LEAN_FAT_FRACTION


def make_paraspinal_anatomy(seed: int, multifidus_scale: float = 1.0,
                            fascia_fat_fraction: float = FASCIA_FAT_FRACTION) -> ParaspinalAnatomy:
    """One subject's muscles, drawn from ``seed``.

    Parameters
    ----------
    seed : int
        Drives the per-muscle size factors (0.9-1.1, the left/right
        asymmetry), the fat-blob shares and the blob pattern.
    multifidus_scale : float
        Extra linear size factor of both multifidi (area ∝ its square): the
        multifidus' size against the erector spinae varies between adults
        far more than the default asymmetry (atrophy in back pain). Training
        data uses it to show the network multifidi of every size; 1.0 keeps
        the anatomy of the anchors.
    fascia_fat_fraction : float
        Fat fraction of the fascia sheets. On real water images the sheet
        between multifidus and erector spinae is often barely darker than
        the muscles; training data draws fainter sheets than the default.
    """
    if not 0.3 <= multifidus_scale <= 2.0:
        raise ValueError(f"multifidus_scale {multifidus_scale} is outside 0.3-2.0")
    if not 0.0 <= fascia_fat_fraction <= 1.0:
        raise ValueError(f"fascia_fat_fraction {fascia_fat_fraction} is outside 0-1")
    rng = np.random.default_rng(10_000 + seed)
    size = {key: float(rng.uniform(0.9, 1.1)) * (multifidus_scale if key[0] == "MF" else 1.0) for key in MUSCLE_LABELS}
    share = {key: float(rng.uniform(0.03, 0.25)) for key in MUSCLE_LABELS}
    return ParaspinalAnatomy(size, share, seed, fascia_fat_fraction)


def _anchor_z_and_canal_y(ph: SpinePhantom) -> tuple[np.ndarray, np.ndarray]:
    """z of each anchor body centre and the canal centre y there."""
    z, y = [], []
    for name in _ANCHORS:
        e = ph.element(name)
        z.append(e.centre_lps[2])
        y.append(e.centre_lps[1] + e.radius_ap_mm + _CANAL_BEHIND_BODY_MM)
    return np.array(z), np.array(y)


def _interp(z: np.ndarray, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """`numpy.interp`, evaluated once when every point has the same z (an
    axial slice: the muscle profiles are interpolated 21 times per plane)."""
    z = np.asarray(z)
    if z.size and z.min() == z.max():
        return np.full(z.shape, np.interp(z.flat[0], xp, fp))
    return np.interp(z, xp, fp)


def _blob_field(p: np.ndarray, seed: int, key: tuple[str, str]) -> np.ndarray:
    """A smooth pseudo-random field in [0, 1) (sum of plane waves), fixed per
    subject and muscle; thresholding it at a quantile makes fat blobs."""
    rng = np.random.default_rng(seed * 97 + MUSCLE_LABELS[key])
    k = rng.normal(0, 0.25, (6, 3))
    phase = rng.uniform(0, 2 * np.pi, 6)
    f = sum(np.sin(p @ k[i] + phase[i]) for i in range(6)) / 6.0
    return 0.5 + 0.5 * f


@dataclass(frozen=True)
class ParaspinalField:
    """The subject's back as `dicom_io.phantom.render_phantom` draws it
    (its ``muscles`` argument): called on points (..., 3) LPS mm it gives
    the muscle label (0 elsewhere) and the fat fraction — of the muscle,
    or of fascia and back fat (label 0, fraction > 0), 0 where the field
    draws nothing; `trunk_centre_y_mm` places the trunk so that the back
    follows the spine."""

    anatomy: ParaspinalAnatomy
    anchor_z: np.ndarray  # increasing (np.interp's x)
    canal_y: np.ndarray
    # Per muscle, at the anchors in anchor_z order: present (1/0) and
    # (lateral offset, posterior offset, half-width, half-depth) mm.
    profiles: dict[str, tuple[np.ndarray, np.ndarray]]
    blob_cut: dict[tuple[str, str], float]

    def canal_y_mm(self, z: np.ndarray) -> np.ndarray:
        return _interp(z, self.anchor_z, self.canal_y)

    def view_centre_y_mm(self) -> float:
        """y of the middle of the body's extent from the front of L1 to the
        skin behind S1: where an axial stack of the lumbar spine is centred."""
        front = self.canal_y.min() - _CANAL_BEHIND_BODY_MM - 34.0  # the body's front wall
        back = self.canal_y.max() + _INNER_BACK_BEHIND_CANAL_MM + (TRUNK_HALF_DEPTH_MM - TRUNK_INNER_HALF_DEPTH_MM)
        return float((front + back) / 2)

    def trunk_centre_y_mm(self, z: np.ndarray) -> np.ndarray:
        """Centre y of the trunk ellipse at height ``z``."""
        return self.canal_y_mm(z) + _INNER_BACK_BEHIND_CANAL_MM - TRUNK_INNER_HALF_DEPTH_MM

    def __call__(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        y_canal = self.canal_y_mm(z)
        label = np.zeros(p.shape[:-1], np.uint8)
        ff = np.zeros(p.shape[:-1], np.float32)
        ff[y - y_canal > BACK_FAT_BEHIND_CANAL_MM] = 1.0
        # Paint big to small so that no muscle hides a smaller neighbour;
        # each muscle's fascia is painted with it, over what lies beneath.
        for muscle in ("ES", "PM", "QL", "MF"):
            present, vals = self.profiles[muscle]
            exists = _interp(z, self.anchor_z, present) > 0.5
            if not exists.any():
                continue  # the muscle ends above or below these points
            cx, cy, a, b = (_interp(z, self.anchor_z, vals[:, i]) for i in range(4))
            a, b = np.maximum(a, 1e-3), np.maximum(b, 1e-3)  # absent levels: no zero division
            for side, sign in (("R", -1.0), ("L", 1.0)):  # patient left is +x
                key = (muscle, side)
                k = self.anatomy.size[key]
                dx, dy = x - sign * cx, y - y_canal - cy
                inside = exists & ((dx / (a * k)) ** 2 + (dy / (b * k)) ** 2 <= 1.0)
                sheet = exists & ~inside & ((dx / (a * k + FASCIA_MM)) ** 2 + (dy / (b * k + FASCIA_MM)) ** 2 <= 1.0)
                label[sheet] = 0
                ff[sheet] = self.anatomy.fascia_fat_fraction
                label[inside] = MUSCLE_LABELS[key]
                # The blob field only where the muscle is (a few % of the slice).
                blobs = _blob_field(p[inside], self.anatomy.seed, key) >= self.blob_cut[key]
                ff[inside] = np.where(blobs, BLOB_FAT_FRACTION, LEAN_FAT_FRACTION)
        return label, ff


def muscle_field(ph: SpinePhantom, anatomy: ParaspinalAnatomy) -> ParaspinalField:
    """The subject's muscles, fascia and back fat, for
    `dicom_io.phantom.render_phantom`'s ``muscles`` argument."""
    anchor_z, canal_y = _anchor_z_and_canal_y(ph)
    order = np.argsort(anchor_z)  # np.interp needs increasing x
    # Fat-blob thresholds: the field's quantile giving each muscle its share,
    # estimated once on a dense sample of the field.
    sample = np.random.default_rng(anatomy.seed).uniform(-150, 150, (20000, 3))
    cut = {key: float(np.quantile(_blob_field(sample, anatomy.seed, key), 1 - anatomy.blob_share[key]))
           for key in MUSCLE_LABELS}
    profiles = {m: (np.array([s is not None for s in shapes], float)[order],
                    np.array([s if s is not None else (0, 0, 0, 0) for s in shapes], float)[order])
                for m, shapes in _SHAPES.items()}
    return ParaspinalField(anatomy, anchor_z[order], canal_y[order], profiles, cut)


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


def slice_muscle_truth(field: ParaspinalField, grid: SliceGrid, labels: np.ndarray, k: int,
                       subplanes: int) -> dict[str, dict[str, float]]:
    """Exact truth of slice ``k`` as `dicom_io.phantom.render_phantom` drew
    it with ``subplanes``: per muscle (``"MF_R"`` …) in ``labels[k]`` its
    ``csa_cm2`` (label map at voxel centres), and the mean ``fat_fraction``
    and ``fat_area_share`` (blob / muscle) of the muscle tissue its labelled
    pixels image, over the slab's subplanes where the muscle is. A thick
    slice's pixel at a tapering muscle's edge images partly fascia or fat,
    which is no part of the muscle; the muscle's own fat across the slab
    is, and can differ from the centre plane's by several hundredths.
    """
    pixel_cm2 = float(np.prod(np.linalg.norm(np.asarray(grid.affine)[:3, 1:3], axis=0))) / 100.0
    centres = grid.slice_centres_lps(k)
    planes = [field(centres + grid.normal * offset) for offset in grid.subplane_offsets_mm(subplanes)]
    out: dict[str, dict[str, float]] = {}
    for value, name in MUSCLE_NAMES.items():
        inside = labels[k] == value
        if inside.any():
            ff = np.concatenate([plane_ff[inside & (plane_label == value)] for plane_label, plane_ff in planes])
            out[name] = {"csa_cm2": float(inside.sum() * pixel_cm2), "fat_fraction": float(ff.mean()),
                         "fat_area_share": float((ff == np.float32(BLOB_FAT_FRACTION)).mean())}
    return out
