"""Synthetic lumbar spine with exact truth (its images: `render`).

The anatomy is analytic, in DICOM patient coordinates (LPS, mm): vertebral
bodies and discs are elliptic cylinders stacked along a lordotic chain from
the sacrum up to T11, separated by thin dark endplates; a CSF-filled canal,
posterior elements, paraspinal muscle, subcutaneous fat and abdominal
contents surround them. Because each disc is a straight elliptic cylinder,
its true height (``height_mm``) and volume (pi*a*b*h) are known exactly, and
the label map on a grid is the shapes sampled at voxel centres.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from spinegate.dicom_io.levels import DISC_LEVELS, structure_by_name
from spinegate.dicom_io.volume import index_to_lps


# Trunk envelope: half-depths (y) of the whole trunk and of its inner
# (non-subcutaneous) part; the skin's fat layer lies between the two.
TRUNK_HALF_DEPTH_MM = 130.0
TRUNK_INNER_HALF_DEPTH_MM = 118.0


class MuscleField(Protocol):
    """Points (..., 3) LPS mm → (muscle label, fat fraction); label 0 with
    a fraction > 0 is fascia or fat of the back. ``trunk_centre_y_mm(z)``
    places the trunk (see `dicom_io.phantom.paraspinal.ParaspinalField`)."""

    def __call__(self, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def trunk_centre_y_mm(self, z: np.ndarray) -> np.ndarray: ...

__all__ = [
    "MuscleField",
    "SliceGrid",
    "PhantomElement",
    "SpinePhantom",
    "make_spine_phantom",
    "sagittal_grid",
]


@dataclass(frozen=True)
class SliceGrid:
    """A stack of parallel slices in patient space.

    Parameters
    ----------
    shape : tuple of int
        ``(n_slices, rows, columns)``.
    affine : numpy.ndarray
        4×4 map from (slice, row, column) indices to LPS mm (voxel centres).
    slice_thickness_mm : float
        Acquired thickness; rendering averages across it.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    slice_thickness_mm: float

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise ValueError(f"'shape' needs 3 positive sizes, got {self.shape!r}")
        if np.asarray(self.affine).shape != (4, 4):
            raise ValueError(f"'affine' must be 4x4, got {np.asarray(self.affine).shape}")
        if self.slice_thickness_mm <= 0:
            raise ValueError(f"'slice_thickness_mm' must be > 0, got {self.slice_thickness_mm}")

    @property
    def normal(self) -> np.ndarray:
        """Unit vector of increasing slice index (the stack normal)."""
        step = np.asarray(self.affine, float)[:3, 0]
        return step / np.linalg.norm(step)

    def subplane_offsets_mm(self, subplanes: int) -> np.ndarray:
        """Offsets along `normal` of ``subplanes`` evenly spaced planes across
        the slice thickness: where rendering samples each slab."""
        if subplanes < 1:
            raise ValueError(f"'subplanes' must be >= 1, got {subplanes}")
        return ((np.arange(subplanes) + 0.5) / subplanes - 0.5) * self.slice_thickness_mm

    def slice_centres_lps(self, k: int) -> np.ndarray:
        """(rows, columns, 3) patient coordinates of slice ``k``'s voxel centres."""
        _, rows, cols = self.shape
        ii, jj = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        return index_to_lps(self.affine, np.stack([np.full_like(ii, k), ii, jj], axis=-1))


def sagittal_grid(
    n_slices: int = 15,
    rows: int = 512,
    columns: int = 512,
    pixel_spacing_mm: float = 0.6,
    slice_spacing_mm: float = 4.0,
    slice_thickness_mm: float | None = None,
    centre_lps: tuple[float, float, float] = (0.0, -20.0, 0.0),
) -> SliceGrid:
    """A sagittal grid: rows run superior→inferior, columns anterior→posterior.

    Slices are ordered from the patient's right to left (increasing L), the
    ImageOrientationPatient is ``[0, 1, 0, 0, 0, -1]``.
    """
    aff = np.eye(4)
    aff[:3, 0] = (slice_spacing_mm, 0.0, 0.0)
    aff[:3, 1] = (0.0, 0.0, -pixel_spacing_mm)
    aff[:3, 2] = (0.0, pixel_spacing_mm, 0.0)
    centre_index = np.array([(n_slices - 1) / 2, (rows - 1) / 2, (columns - 1) / 2])
    aff[:3, 3] = np.asarray(centre_lps) - aff[:3, :3] @ centre_index
    return SliceGrid((n_slices, rows, columns), aff, slice_thickness_mm or slice_spacing_mm)


@dataclass(frozen=True)
class PhantomElement:
    """A vertebral body or disc: an elliptic cylinder.

    ``axis`` is the unit cranial direction, ``ap_axis`` the unit anterior→
    posterior direction perpendicular to it; ``radius_ap_mm`` and
    ``radius_lr_mm`` are the semi-axes, ``height_mm`` the length along
    ``axis``.
    """

    name: str
    label: int
    centre_lps: np.ndarray
    axis: np.ndarray
    ap_axis: np.ndarray
    height_mm: float
    radius_ap_mm: float
    radius_lr_mm: float

    @property
    def volume_cm3(self) -> float:
        return float(np.pi * self.radius_ap_mm * self.radius_lr_mm * self.height_mm / 1000.0)


@dataclass(frozen=True)
class SpinePhantom:
    """Analytic anatomy of one synthetic subject plus its contrast settings."""

    elements: tuple[PhantomElement, ...]
    sacrum_centres: tuple[np.ndarray, ...]
    seed: int
    disc_t2_signal: dict[str, float] = field(default_factory=dict)

    def element(self, name: str) -> PhantomElement:
        for e in self.elements:
            if e.name == name:
                return e
        raise KeyError(name)


def _rot_x(v: np.ndarray, angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([v[0], c * v[1] - s * v[2], s * v[1] + c * v[2]])


def make_spine_phantom(seed: int = 0) -> SpinePhantom:
    """Draw one subject's spine geometry (sizes, lordosis) from ``seed``."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.9, 1.1)
    sacral_slope = np.deg2rad(rng.uniform(30, 45))
    lordosis_total = np.deg2rad(rng.uniform(35, 55))
    # Bodies from S1 upward; discs sit between them.
    body_h = {"S1": 24, "L5": 27, "L4": 27, "L3": 27, "L2": 26, "L1": 25, "T12": 24, "T11": 23}
    disc_h = {"L5S1": 10, "L4L5": 11, "L3L4": 10, "L2L3": 9, "L1L2": 8, "T12L1": 7, "T11T12": 6}
    bodies_up = ["S1", "L5", "L4", "L3", "L2", "L1", "T12", "T11"]
    # Cranial direction at S1: tilted anteriorly (−y) by the sacral slope.
    axis = np.array([0.0, -np.sin(sacral_slope), np.cos(sacral_slope)])
    step = lordosis_total / 7.0
    point = np.array([0.0, rng.uniform(-5, 5), rng.uniform(-125, -110)])
    elements: list[PhantomElement] = []
    endplate_mm = 1.2
    for k, body in enumerate(bodies_up):
        h = body_h[body] * scale * rng.uniform(0.95, 1.05)
        r_ap = (15.0 + 0.5 * min(k, 5)) * scale * rng.uniform(0.95, 1.05)
        r_lr = (20.0 + 0.8 * (8 - k) * 0.5) * scale * rng.uniform(0.95, 1.05)
        ap = _rot_x(axis, -np.pi / 2)  # perpendicular, pointing posterior (+y)
        if ap[1] < 0:
            ap = -ap
        centre = point + axis * (h / 2)
        elements.append(PhantomElement(body, structure_by_name(body).label, centre, axis.copy(), ap, h, r_ap, r_lr))
        point = point + axis * (h + endplate_mm)
        if body == "T11":
            break
        upper = bodies_up[k + 1]
        disc = f"{upper}{body}"
        if disc not in DISC_LEVELS:
            raise AssertionError(disc)
        # The chain bends inside the disc: its axis is halfway between neighbours.
        next_axis = _rot_x(axis, -step if k < 6 else -step * 0.3)
        disc_axis = (axis + next_axis) / np.linalg.norm(axis + next_axis)
        dh = disc_h[disc] * scale * rng.uniform(0.85, 1.15)
        gap = r_ap * np.tan(step / 2) + 0.3  # keeps tilted cylinders from overlapping
        point = point + disc_axis * gap
        d_ap = _rot_x(disc_axis, -np.pi / 2)
        if d_ap[1] < 0:
            d_ap = -d_ap
        elements.append(
            PhantomElement(disc, structure_by_name(disc).label, point + disc_axis * dh / 2, disc_axis, d_ap,
                           dh, r_ap * 0.97, r_lr * 0.97)
        )
        point = point + disc_axis * (dh + gap)
        axis = next_axis
    # Centre the chain on the origin so grids centred near (0, 0, 0) hold it.
    shift = -np.mean([e.centre_lps for e in elements], axis=0) * np.array([0.0, 1.0, 1.0])
    elements = [
        PhantomElement(e.name, e.label, e.centre_lps + shift, e.axis, e.ap_axis, e.height_mm, e.radius_ap_mm,
                       e.radius_lr_mm)
        for e in elements
    ]
    s1 = elements[0]
    sacrum = tuple(
        s1.centre_lps - s1.axis * (s1.height_mm * (0.9 + 0.8 * i)) + s1.ap_axis * (4.0 * i) for i in range(1, 4)
    )
    disc_signal = {d: float(rng.uniform(0.55, 1.0)) for d in DISC_LEVELS}
    return SpinePhantom(tuple(elements), sacrum, seed, disc_signal)
