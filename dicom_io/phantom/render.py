"""The phantom's MR images on any slice grid (`anatomy` holds its shapes):
T1, T2 or Dixon water/fat contrast, Rician noise, a smooth bias field and
partial-volume averaging across thick slices (sub-plane supersampling).
"""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.levels import VERTEBRAL_BODY_LEVELS
from spinegate.dicom_io.phantom.anatomy import (TRUNK_HALF_DEPTH_MM, TRUNK_INNER_HALF_DEPTH_MM, MuscleField,
                                                PhantomElement, SliceGrid, SpinePhantom)

__all__ = ["render_phantom", "render_phantom_weightings"]


# Relative signal per tissue (arbitrary units ~ 0..1), chosen to mimic
# spin-echo contrasts at 1.5 T: fat bright on both, CSF and disc nucleus
# bright on T2 only, cortical bone dark.
_SIGNAL = {
    Weighting.T1: dict(fat=0.95, marrow=0.62, disc=0.36, csf=0.14, muscle=0.38, bone=0.05, abdomen=0.45,
                       posterior=0.55),
    Weighting.T2: dict(fat=0.75, marrow=0.45, disc=0.85, csf=1.0, muscle=0.28, bone=0.04, abdomen=0.40, posterior=0.40),
    # Dixon: the water and the fat part of each tissue's proton density, so
    # that fat / (water + fat) of a muscle pixel is exactly its fat fraction
    # (the muscle mix (1 - ff)·muscle + ff·fat gives 1 - ff and ff).
    Weighting.WATER: dict(fat=0.0, marrow=0.5, disc=0.9, csf=1.0, muscle=1.0, bone=0.03, abdomen=0.7,
                          posterior=0.5),
    Weighting.FAT: dict(fat=1.0, marrow=0.5, disc=0.02, csf=0.0, muscle=0.0, bone=0.01, abdomen=0.2,
                        posterior=0.3),
}
_NOISE_STREAM = {Weighting.T1: 1, Weighting.T2: 2, Weighting.WATER: 3, Weighting.FAT: 4}


def _inside_cylinder(p: np.ndarray, e: PhantomElement) -> np.ndarray:
    d = p - e.centre_lps
    along = d @ e.axis
    ap = d @ e.ap_axis
    lr = d[..., 0]  # the LR axis is +x for every element (chain bends about x)
    return (np.abs(along) <= e.height_mm / 2) & ((ap / e.radius_ap_mm) ** 2 + (lr / e.radius_lr_mm) ** 2 <= 1.0)


class _Extent:
    """The bounding box of a set of points: shapes wholly outside it are
    skipped (each would paint nothing), which makes a slice that crosses
    one or two of the ~40 shapes several times cheaper to render."""

    def __init__(self, p: np.ndarray) -> None:
        flat = p.reshape(-1, 3)
        self.low, self.high = flat.min(axis=0), flat.max(axis=0)

    def may_reach(self, centre: np.ndarray, radius_mm: float) -> bool:
        """Whether a shape within ``radius_mm`` of ``centre`` can hold a point."""
        return bool(np.all(centre + radius_mm >= self.low) and np.all(centre - radius_mm <= self.high))


def _cylinder_radius_mm(e: PhantomElement) -> float:
    return float(np.hypot(e.height_mm / 2, max(e.radius_ap_mm, e.radius_lr_mm)))


def _ellipsoid(p: np.ndarray, centre: np.ndarray, radii: tuple[float, float, float]) -> np.ndarray:
    d = (p - centre) / np.asarray(radii)
    return (d**2).sum(axis=-1) <= 1.0


# One paint layer of the phantom: where (mask), what (the value for a
# weighting's signal table, a scalar or an array over every point) and
# whether it replaces or adds to the signal beneath.
_Layer = tuple[np.ndarray, Callable[[Mapping[str, float], Weighting], "float | np.ndarray"], bool]


def _tissue_layers(p: np.ndarray, ph: SpinePhantom,
                   muscles: MuscleField | None = None) -> tuple[list[_Layer], np.ndarray]:
    """The phantom at points ``p`` (..., 3) in LPS mm, as the ordered paint
    layers `_paint` turns into a weighting's signal, and the label per point.

    The geometry is the same for every weighting, so a study's weightings
    on one grid share one evaluation of it. ``muscles`` replaces the plain
    paraspinal block by separate muscles: it returns (label, fat fraction)
    per point; a muscle's signal mixes lean muscle and fat by its fat
    fraction, and its label (41-48) stays where no bone, canal or posterior
    element is painted over it; fascia and back fat (label 0) mix the same
    way. It also places the trunk.
    """
    layers: list[_Layer] = []
    lab = np.zeros(p.shape[:-1], np.uint8)

    def paint(mask: np.ndarray, tissue: str, factor: float = 1.0) -> None:
        layers.append((mask, lambda s, w: s[tissue] * factor, False))  # x * 1.0 is x, to the bit

    y, z = p[..., 1], p[..., 2]
    x = p[..., 0]
    # Trunk envelope: an ellipse in the axial plane (x, y) around the spine.
    cy = -45.0 if muscles is None else muscles.trunk_centre_y_mm(z)
    trunk = ((x / 160.0) ** 2 + ((y - cy) / TRUNK_HALF_DEPTH_MM) ** 2) <= 1.0
    inner = ((x / 148.0) ** 2 + ((y - cy) / TRUNK_INNER_HALF_DEPTH_MM) ** 2) <= 1.0
    paint(trunk, "fat")
    paint(inner, "abdomen")
    # Abdominal texture: bowel loops as smooth stripes (deterministic per seed).
    phase = 0.37 * ph.seed
    tex = 0.12 * np.sin(0.09 * z + phase) * np.sin(0.07 * y + 2 * phase)
    layers.append((inner & (y < cy + 20.0), lambda s, w: tex, True))
    # Paraspinal muscle block behind the spine, fat rim beneath the skin.
    if muscles is None:
        paint(inner & (y > 10) & (y < 62) & (np.abs(x) < 80), "muscle")
    else:
        m_label, m_ff = muscles(p)
        m = inner & ((m_label > 0) | (m_ff > 0))
        layers.append((m, lambda s, w: (1.0 - m_ff) * s["muscle"] + m_ff * s["fat"], False))
        lab[m] = m_label[m]
    extent = _Extent(p)
    bodies = [e for e in ph.elements if e.name in VERTEBRAL_BODY_LEVELS]
    for b in bodies:
        # Posterior elements (arch + spinous process) as an ellipsoid blob.
        c = b.centre_lps + b.ap_axis * (b.radius_ap_mm + 30.0)
        if not extent.may_reach(c, max(12.0, b.height_mm * 0.45)):
            continue
        arch = _ellipsoid(p, c, (12.0, 12.0, b.height_mm * 0.45))
        paint(arch, "posterior")
        lab[arch] = 0
    # Canal: CSF tube following the bodies' posterior walls.
    for b in bodies:
        c = b.centre_lps + b.ap_axis * (b.radius_ap_mm + 9.0)
        if not extent.may_reach(c, float(np.hypot(b.height_mm / 2 + 8, 10.0))):
            continue
        d = p - c
        along = d @ b.axis
        ap = d @ b.ap_axis
        tube = (np.abs(along) <= b.height_mm / 2 + 8) & ((ap / 7.5) ** 2 + (x / 10.0) ** 2 <= 1.0)
        paint(tube, "csf")
        lab[tube] = 0
    for c in ph.sacrum_centres:
        if not extent.may_reach(c, 40.0):
            continue
        sacrum = _ellipsoid(p, c, (40.0, 14.0, 12.0))
        paint(sacrum, "marrow", 0.9)
        lab[sacrum] = 0
    for e in ph.elements:
        # A slightly larger dark shell is the cortical bone / endplate.
        if e.name in VERTEBRAL_BODY_LEVELS:
            shell = PhantomElement(e.name, 0, e.centre_lps, e.axis, e.ap_axis, e.height_mm + 1.0,
                                   e.radius_ap_mm + 0.8, e.radius_lr_mm + 0.8)
            if not extent.may_reach(shell.centre_lps, _cylinder_radius_mm(shell)):
                continue
            cortex = _inside_cylinder(p, shell)
            paint(cortex, "bone")
            lab[cortex] = 0
    for e in ph.elements:
        if not extent.may_reach(e.centre_lps, _cylinder_radius_mm(e)):
            continue
        inside = _inside_cylinder(p, e)
        lab[inside] = e.label
        if e.name in VERTEBRAL_BODY_LEVELS:
            paint(inside, "marrow")
        else:
            # Nucleus (inner part) carries the level's hydration signal on T2.
            d = p - e.centre_lps
            r = np.sqrt(((d @ e.ap_axis) / e.radius_ap_mm) ** 2 + (d[..., 0] / e.radius_lr_mm) ** 2)

            def nucleus(s: Mapping[str, float], w: Weighting, boost: float = ph.disc_t2_signal[e.name]) -> float:
                return s["disc"] * (boost if w is Weighting.T2 else 1.0)

            layers.append((inside, lambda s, w: s["disc"] * (0.55 if w is Weighting.T2 else 1.0), False))
            layers.append((inside & (r < 0.6), nucleus, False))
    return layers, lab


def _paint(layers: list[_Layer], shape: tuple[int, ...], weighting: Weighting) -> np.ndarray:
    """The signal of ``weighting`` where `_tissue_layers` put each tissue."""
    s = _SIGNAL[weighting]
    sig = np.zeros(shape, np.float32)
    for mask, value, add in layers:
        v = value(s, weighting)
        if isinstance(v, np.ndarray):
            v = v[mask]
        if add:
            sig[mask] += v
        else:
            sig[mask] = v
    return sig


def render_phantom(
    phantom: SpinePhantom,
    grid: SliceGrid,
    weighting: Weighting | str = Weighting.T2,
    noise_fraction: float = 0.03,
    bias_fraction: float = 0.15,
    subplanes: int = 4,
    max_value: int = 2000,
    seed: int | None = None,
    muscles: MuscleField | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Render the phantom on ``grid``.

    Returns
    -------
    image : numpy.ndarray
        ``uint16`` (slices, rows, columns), signal averaged over ``subplanes``
        positions across the slice thickness, with bias field and Rician noise.
    labels : numpy.ndarray
        ``uint8`` label map sampled at voxel centres (spinegate label values).
    """
    weighting = Weighting(weighting)
    images, labels = render_phantom_weightings(phantom, grid, (weighting,), noise_fraction, bias_fraction, subplanes,
                                               max_value, seed, muscles)
    return images[weighting], labels


def render_phantom_weightings(
    phantom: SpinePhantom,
    grid: SliceGrid,
    weightings: tuple[Weighting | str, ...],
    noise_fraction: float = 0.03,
    bias_fraction: float = 0.15,
    subplanes: int = 4,
    max_value: int = 2000,
    seed: int | None = None,
    muscles: MuscleField | None = None,
) -> tuple[dict[Weighting, np.ndarray], np.ndarray]:
    """Render the phantom on ``grid`` in each of ``weightings``: the images
    `render_phantom` gives for each, pixel for pixel, with the geometry
    evaluated once for all of them (a study's series on one grid).

    Returns
    -------
    images : dict
        Per weighting its ``uint16`` (slices, rows, columns) image.
    labels : numpy.ndarray
        ``uint8`` label map sampled at voxel centres (spinegate label values).

    Raises
    ------
    ValueError
        If a weighting is not one the phantom renders.
    """
    wanted = tuple(dict.fromkeys(Weighting(w) for w in weightings))
    for weighting in wanted:
        if weighting not in _SIGNAL:
            raise ValueError(f"the phantom renders {', '.join(w.name for w in _SIGNAL)}, not {weighting.name}")
    offsets, normal = grid.subplane_offsets_mm(subplanes), grid.normal
    n, r, c = grid.shape
    ii, jj = np.meshgrid(np.arange(r, dtype=np.float32), np.arange(c, dtype=np.float32), indexing="ij")
    images = {w: np.zeros(grid.shape, np.float32) for w in wanted}
    labels = np.zeros(grid.shape, np.uint8)
    for k in range(n):
        base = (grid.affine[:3, :3] @ np.stack([np.full_like(ii, k), ii, jj]).reshape(3, -1)).T + grid.affine[:3, 3]
        base = base.reshape(r, c, 3)
        _, labels[k] = _tissue_layers(base, phantom, muscles)
        acc = {w: np.zeros((r, c), np.float32) for w in wanted}
        for offset in offsets:
            layers, _ = _tissue_layers(base + normal * offset, phantom, muscles)
            for w in wanted:
                acc[w] += _paint(layers, (r, c), w)
        for w in wanted:
            images[w][k] = acc[w] / len(offsets)
    return {w: _bias_and_noise(images[w], phantom.seed * 7919 + (seed or 0) + _NOISE_STREAM[w], noise_fraction,
                               bias_fraction, max_value) for w in wanted}, labels


def _bias_and_noise(image: np.ndarray, rng_seed: int, noise_fraction: float, bias_fraction: float,
                    max_value: int) -> np.ndarray:
    """A smooth multiplicative bias field (low-order in patient y/z), then
    Rician noise; stored as ``uint16`` scaled to ``max_value``."""
    rng = np.random.default_rng(rng_seed)
    _, r, c = image.shape
    yy = np.linspace(-1, 1, r)[:, None]
    xx = np.linspace(-1, 1, c)[None, :]
    a = rng.uniform(-1, 1, 3)
    bias = 1.0 + bias_fraction * (a[0] * yy + a[1] * xx + a[2] * (xx * yy))
    image *= bias[None].astype(np.float32)
    sigma = noise_fraction
    noisy = np.sqrt((image + rng.normal(0, sigma, image.shape)) ** 2 + rng.normal(0, sigma, image.shape) ** 2)
    return np.clip(noisy * (max_value / 1.1), 0, 65535).astype(np.uint16)
