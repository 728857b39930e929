"""The subject's lumbar spine in the model frame, from measured centroids.

Vertebral-body and disc centroids (patient LPS, mm, from the sagittal series)
are projected onto the sagittal plane and mapped to the OpenSim frame
(x anterior, y superior, z right; metres). The intervertebral joints sit at
the disc centroids, so the subject's lordosis is the model's.

Conventions (documented in docs/measurements.md, "Spinal loads"):

- The scan is supine, so the spine's orientation in the scanner says nothing
  about standing. Upright stance is defined by sagittal balance of the lumbar
  segment: the T12L1 joint is placed vertically above the L5S1 joint. The
  lordosis (angles between levels) is the measured one.
- A disc's axis runs from the centroid of the body below to the centroid of
  the body above; a vertebra's long axis from its lower to its upper disc.
- Missing levels at either end of the chain are extrapolated by repeating
  the last measured step (flagged); a missing level inside the chain is the
  midpoint of its neighbours (flagged). A chain whose consecutive centroids do
  not climb steadily is rejected as implausible.
- `robust_spine_geometry` does not let one bad centroid block the model: it
  leaves out structures the segmentation distrusts (cut by the field of
  view, implausibly small beside their neighbours) and, if the chain is
  still implausible, the fewest structures off the chain (keeping the lumbar
  bodies first); each left-out centroid is flagged and its level
  interpolated or extrapolated like a missing one.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Mapping

import numpy as np

__all__ = ["CHAIN", "JOINTS", "LUMBAR", "GeometryError", "SpineGeometry", "spine_geometry", "robust_spine_geometry"]

# Inferior → superior: the bodies and discs the model is built on.
CHAIN = ("S1", "L5S1", "L5", "L4L5", "L4", "L3L4", "L3", "L2L3", "L2", "L1L2", "L1", "T12L1", "T12")
JOINTS = ("L5S1", "L4L5", "L3L4", "L2L3", "L1L2", "T12L1")
LUMBAR = ("L5", "L4", "L3", "L2", "L1")

# Plausible centroid-to-centroid step between a body and a neighbouring disc.
_STEP_MM = (6.0, 40.0)


class GeometryError(ValueError):
    """The centroids cannot define a spine; ``reason`` is a short flag."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SpineGeometry:
    """Upright-stance sagittal positions (m) in the model frame, origin at
    the L5S1 joint.

    ``points`` maps every name of `CHAIN` to (x anterior, y superior);
    ``flags`` names the levels that were interpolated or extrapolated.
    """

    points: Mapping[str, np.ndarray]
    flags: tuple[str, ...]
    lordosis_deg: float  # angle between the L5S1 and T12L1 disc axes
    sacral_slope_deg: float  # L5S1 disc plane against the horizontal

    def point(self, name: str) -> np.ndarray:
        return np.asarray(self.points[name], float)

    def disc_axis(self, joint: str) -> np.ndarray:
        """Unit vector along the disc's axis, pointing superior."""
        i = CHAIN.index(joint)
        return _unit(self.points[CHAIN[i + 1]] - self.points[CHAIN[i - 1]])

    def vertebra_axis(self, body: str) -> np.ndarray:
        """Unit vector along a vertebra's long axis, pointing superior."""
        i = CHAIN.index(body)
        lower = self.points[CHAIN[max(i - 1, 0)]]
        upper = self.points[CHAIN[min(i + 1, len(CHAIN) - 1)]]
        return _unit(upper - lower)


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, float) / float(np.linalg.norm(v))


def _sagittal_m(lps_mm: np.ndarray) -> np.ndarray:
    """LPS (mm) → (anterior, superior) metres."""
    p = np.asarray(lps_mm, float)
    if p.shape != (3,) or not np.all(np.isfinite(p)):
        raise GeometryError("implausible_centroids", f"centroid must be 3 finite numbers, got {lps_mm!r}")
    return np.array([-p[1], p[2]]) / 1000.0


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.degrees(np.arctan2(a[0] * b[1] - a[1] * b[0], a @ b)))


def spine_geometry(centroids_lps_mm: Mapping[str, np.ndarray]) -> SpineGeometry:
    """Model-frame spine from measured body and disc centroids.

    Parameters
    ----------
    centroids_lps_mm : mapping of str to array
        Structure name (``"L4"``, ``"L4L5"`` …) → centroid in LPS mm.
        Names outside `CHAIN` are ignored.

    Raises
    ------
    GeometryError
        ``reason="too_few_levels"`` when fewer than three consecutive chain
        structures are present; ``reason="implausible_centroids"`` when the
        chain does not climb steadily (non-monotonic or implausible steps).
    """
    known = {n: _sagittal_m(c) for n, c in centroids_lps_mm.items() if n in CHAIN}
    present = [i for i, n in enumerate(CHAIN) if n in known]
    if len(present) < 3:
        raise GeometryError("too_few_levels", f"need at least 3 of {CHAIN}, got {sorted(known)}")
    lo, hi = present[0], present[-1]
    if hi - lo + 1 < 3:
        raise GeometryError("too_few_levels", "the measured structures do not span three consecutive levels")
    pts: dict[str, np.ndarray] = {}
    flags: list[str] = []
    for i in range(lo, hi + 1):
        name = CHAIN[i]
        if name in known:
            pts[name] = known[name]
            continue
        below = max(j for j in present if j < i)
        above = min(j for j in present if j > i)
        t = (i - below) / (above - below)
        pts[name] = (1 - t) * known[CHAIN[below]] + t * known[CHAIN[above]]
        flags.append(f"level_interpolated_{name}")
    _check_monotonic(pts)
    # Extrapolate at the ends by repeating the last step.
    for i in range(lo - 1, -1, -1):
        pts[CHAIN[i]] = 2 * pts[CHAIN[i + 1]] - pts[CHAIN[i + 2]]
        flags.append(f"level_extrapolated_{CHAIN[i]}")
    for i in range(hi + 1, len(CHAIN)):
        pts[CHAIN[i]] = 2 * pts[CHAIN[i - 1]] - pts[CHAIN[i - 2]]
        flags.append(f"level_extrapolated_{CHAIN[i]}")
    # Upright stance: T12L1 vertically above L5S1.
    origin = pts["L5S1"]
    up = _unit(pts["T12L1"] - origin)
    angle = np.arctan2(up[0], up[1])  # rotate so that 'up' becomes (0, 1)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    upright = {n: rot @ (p - origin) for n, p in pts.items()}
    geometry = SpineGeometry(upright, tuple(flags), 0.0, 0.0)
    l5s1, t12l1 = geometry.disc_axis("L5S1"), geometry.disc_axis("T12L1")
    lordosis = _angle_deg(l5s1, t12l1)
    sacral_slope = float(np.degrees(np.arctan2(l5s1[0], l5s1[1])))
    return SpineGeometry(upright, tuple(flags), lordosis, sacral_slope)


def robust_spine_geometry(centroids_lps_mm: Mapping[str, np.ndarray], distrusted: Mapping[str, str] | None = None,
                          max_left_out: int = 2) -> SpineGeometry:
    """`spine_geometry` that leaves out centroids which cannot be joint centres.

    Parameters
    ----------
    centroids_lps_mm : mapping of str to array
        As for `spine_geometry`.
    distrusted : mapping of str to str, optional
        Structure → why its centroid is not to be used (e.g.
        ``"field_of_view_edge"``, ``"implausibly_small"``); ignored when
        leaving them out would leave fewer than three structures.
    max_left_out : int
        Most structures left out to make an implausible chain plausible.

    Returns
    -------
    SpineGeometry
        Its flags name each left-out centroid
        (``centroid_not_used_<name>_<why>``, ``…_off_the_chain``) before the
        interpolation and extrapolation flags.

    Raises
    ------
    GeometryError
        When no chain is plausible even with ``max_left_out`` structures
        left out (the error of the full chain), or too few levels.
    """
    flags = [f"centroid_not_used_{n}_{why}" for n, why in sorted((distrusted or {}).items())
             if n in centroids_lps_mm and n in CHAIN]
    base = {n: c for n, c in centroids_lps_mm.items() if n not in (distrusted or {})}
    if sum(n in CHAIN for n in base) < 3:
        base, flags = dict(centroids_lps_mm), []
    try:
        geometry = spine_geometry(base)
        return replace(geometry, flags=tuple(flags) + geometry.flags)
    except GeometryError as e:
        if e.reason != "implausible_centroids":
            raise
        first = e
    names = [n for n in CHAIN if n in base]
    plausible = []
    for k in range(1, max_left_out + 1):
        for left_out in itertools.combinations(names, k):
            try:
                geometry = spine_geometry({n: c for n, c in base.items() if n not in left_out})
            except GeometryError:
                continue
            # Lumbar bodies are the model's anchors: keep them before keeping fewer structures out.
            plausible.append((sum(n in LUMBAR for n in left_out), k, _turning_deg(geometry), left_out, geometry))
    if plausible:
        *_, left_out, geometry = min(plausible, key=lambda p: p[:3])
        off = [f"centroid_not_used_{n}_off_the_chain" for n in left_out]
        return replace(geometry, flags=tuple(flags + off) + geometry.flags)
    raise first


def _turning_deg(geometry: SpineGeometry) -> float:
    """Total turning of the chain (degrees): the smoother of two plausible
    chains is the likelier spine."""
    chain = np.array([geometry.points[n] for n in CHAIN])
    steps = np.diff(chain, axis=0)
    return float(sum(abs(_angle_deg(a, b)) for a, b in zip(steps[:-1], steps[1:])))


def _check_monotonic(pts: Mapping[str, np.ndarray]) -> None:
    names = [n for n in CHAIN if n in pts]
    chain = np.array([pts[n] for n in names])
    steps = np.diff(chain, axis=0)
    lengths_mm = np.linalg.norm(steps, axis=1) * 1000.0
    general = _unit(chain[-1] - chain[0])
    for k, (step, length) in enumerate(zip(steps, lengths_mm)):
        pair = f"{names[k]}→{names[k + 1]}"
        if not _STEP_MM[0] <= length <= _STEP_MM[1]:
            raise GeometryError("implausible_centroids", f"{pair} is {length:.1f} mm apart "
                                f"(expected {_STEP_MM[0]:.0f}-{_STEP_MM[1]:.0f} mm)")
        if step @ general <= 0:
            raise GeometryError("implausible_centroids", f"{pair} runs backwards along the spine")
        if k and _unit(step) @ _unit(steps[k - 1]) < np.cos(np.radians(45)):
            raise GeometryError("implausible_centroids", f"{pair} turns by more than 45°")
