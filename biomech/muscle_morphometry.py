"""Paraspinal-muscle morphometry on axial slices (DOMAIN.md §6), as pure
functions: cross-sectional area, relative CSA, fat infiltration by
per-muscle Otsu thresholding, Dixon fat fraction (with the magnitude
noise floor removed, the border read from the interior), volume, asymmetry and
slice-wise centroids in patient coordinates.

Conventions: an axial stack is (slice, row, column); a 2D mask is one
slice; pixel spacing is (row spacing, column spacing) in mm as DICOM
PixelSpacing gives it.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "csa_cm2",
    "csa_per_slice_cm2",
    "relative_csa",
    "otsu_threshold",
    "fat_infiltration",
    "fat_fraction",
    "interior_mask",
    "magnitude_noise_sigma",
    "muscle_volume_ml",
    "asymmetry",
    "centroid_2d_lps_mm",
]


def _spacing(pixel_spacing_mm: Sequence[float]) -> tuple[float, float]:
    rows, cols = (float(v) for v in pixel_spacing_mm)
    if rows <= 0 or cols <= 0:
        raise ValueError(f"'pixel_spacing_mm' must be positive, got {pixel_spacing_mm!r}")
    return rows, cols


def csa_cm2(mask: np.ndarray, pixel_spacing_mm: Sequence[float]) -> float:
    """Cross-sectional area of a 2D mask: pixels × pixel area, in cm²."""
    if mask.ndim != 2:
        raise ValueError(f"'mask' must be 2D, got shape {mask.shape}")
    rows, cols = _spacing(pixel_spacing_mm)
    return float(np.count_nonzero(mask)) * rows * cols / 100.0


def csa_per_slice_cm2(masks: np.ndarray, pixel_spacing_mm: Sequence[float]) -> np.ndarray:
    """CSA of every slice of a (slice, row, column) mask stack, in cm²."""
    if masks.ndim != 3:
        raise ValueError(f"'masks' must be 3D (slice, row, column), got shape {masks.shape}")
    rows, cols = _spacing(pixel_spacing_mm)
    return np.count_nonzero(masks.reshape(len(masks), -1), axis=1) * rows * cols / 100.0


def relative_csa(muscle_csa_cm2: float, disc_csa_cm2: float) -> float:
    """rCSA: muscle CSA / disc CSA at the same level (dimensionless).

    Raises
    ------
    ValueError
        If the disc area is not positive (no disc on the slice).
    """
    if not disc_csa_cm2 > 0:
        raise ValueError(f"'disc_csa_cm2' must be > 0, got {disc_csa_cm2}")
    return float(muscle_csa_cm2) / float(disc_csa_cm2)


def otsu_threshold(image: np.ndarray, mask: np.ndarray, bins: int = 128) -> float:
    """Otsu's threshold of the intensities inside ``mask`` (SimpleITK).

    Raises
    ------
    ValueError
        If the mask holds fewer than two distinct intensities.
    """
    import SimpleITK as sitk

    values = np.asarray(image, np.float32)[mask > 0]
    if values.size < 2 or np.ptp(values) == 0:
        raise ValueError("Otsu needs at least two distinct intensities inside the mask")
    img = sitk.GetImageFromArray(np.asarray(image, np.float32))
    roi = sitk.GetImageFromArray((mask > 0).astype(np.uint8))
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(bins)
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.SetMaskValue(1)
    otsu.Execute(img, roi)
    return float(otsu.GetThreshold())


def fat_infiltration(image: np.ndarray, muscles: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Fat infiltration per muscle ROI by thresholding (DOMAIN.md §6).

    Each muscle gets its own Otsu threshold; pixels brighter than it are fat
    (fat is bright on T1 and T2). A muscle whose threshold lies beyond
    ±1.96 SD of the other muscles' thresholds takes their mean instead (a
    muscle with little fat has no second histogram mode to find).

    Returns {muscle: {"fat_infiltration": fat area / muscle area,
    "threshold": used, "threshold_replaced": 0 or 1}}; muscles with an
    empty mask or a uniform interior are left out.
    """
    thresholds: dict[str, float] = {}
    for name, mask in muscles.items():
        try:
            thresholds[name] = otsu_threshold(image, mask)
        except ValueError:
            continue
    out: dict[str, dict[str, float]] = {}
    for name, t in thresholds.items():
        others = [v for k, v in thresholds.items() if k != name]
        replaced = 0
        if len(others) >= 2:
            mean, sd = float(np.mean(others)), float(np.std(others, ddof=1))
            if abs(t - mean) > 1.96 * sd:
                t, replaced = mean, 1
        values = np.asarray(image)[muscles[name] > 0]
        out[name] = {"fat_infiltration": float(np.mean(values > t)), "threshold": t, "threshold_replaced": replaced}
    return out


def fat_fraction(water: np.ndarray, fat: np.ndarray, mask: np.ndarray, noise_sigma: float = 0.0,
                 border_px: int = 0) -> float:
    """Mean Dixon fat fraction fat / (water + fat) over the voxels of ``mask``.

    Dixon water and fat images are magnitudes, and a magnitude's noise does
    not average out: with Gaussian noise of ``noise_sigma`` on each of the
    real and imaginary channels, E[M²] = A² + 2σ² (Rician statistics), so a
    muscle's small fat signal reads too high and a lean muscle's fat
    fraction is overestimated. With ``noise_sigma`` > 0 each magnitude is
    first corrected to sqrt(max(M² − 2σ², 0)) (see
    `magnitude_noise_sigma`); 0 leaves the images as they are.

    A muscle's border pixels image partly the fascia and fat around it
    (partial volume in-plane and across a thick slice), and a segmentation
    a pixel too wide adds fat outright; both read as fat infiltration. With
    ``border_px`` > 0 each pixel of the in-plane rim of that width takes the
    fat fraction of the nearest interior pixel (see `interior_mask`): the
    mean still weighs the whole section, so fat that really lies near the
    muscle's edge still counts, but no fat from outside does.

    Raises
    ------
    ValueError
        If the images differ in shape from the mask, the mask is empty,
        ``noise_sigma`` is negative or ``border_px`` is negative.
    """
    if water.shape != fat.shape or water.shape != mask.shape:
        raise ValueError(f"water {water.shape}, fat {fat.shape} and mask {mask.shape} must have one shape")
    if not noise_sigma >= 0.0:
        raise ValueError(f"'noise_sigma' must be >= 0, got {noise_sigma}")
    if border_px < 0:
        raise ValueError(f"'border_px' must be >= 0, got {border_px}")
    m = np.asarray(mask) > 0
    if not m.any():
        raise ValueError("'mask' is empty")
    at = _border_read_from_interior(m, border_px) if border_px > 0 else np.nonzero(m)
    w = np.asarray(water)[at].astype(np.float64)  # only the muscle's pixels are converted
    f = np.asarray(fat)[at].astype(np.float64)
    if noise_sigma > 0.0:
        floor = 2.0 * noise_sigma**2
        w = np.sqrt(np.maximum(w * w - floor, 0.0))
        f = np.sqrt(np.maximum(f * f - floor, 0.0))
    total = w + f
    ff = np.divide(f, total, out=np.zeros_like(f), where=total > 0)
    return float(np.clip(ff, 0.0, 1.0).mean())


def _border_read_from_interior(mask: np.ndarray, border_px: int) -> tuple[np.ndarray, ...]:
    """Index arrays of the pixel each pixel of ``mask`` is read from: itself
    inside, the nearest interior pixel of its slice on the rim."""
    stack = mask.reshape((-1,) + mask.shape[-2:])
    k, r, c = np.nonzero(stack)
    # Only the mask's bounding box matters (erosion counts outside it as
    # background either way): a muscle is a few percent of the image.
    z0, r0, c0 = k.min(), r.min(), c.min()
    core = interior_mask(stack[z0 : k.max() + 1, r0 : r.max() + 1, c0 : c.max() + 1], border_px)
    k, r, c = k - z0, r - r0, c - c0
    for z in np.unique(k):
        on_z = k == z
        _, (rows, cols) = ndimage.distance_transform_edt(~core[z], return_indices=True)
        r[on_z], c[on_z] = rows[r[on_z], c[on_z]], cols[r[on_z], c[on_z]]
    k, r, c = k + z0, r + r0, c + c0
    return (r, c) if mask.ndim == 2 else (k, r, c)


def interior_mask(mask: np.ndarray, margin_px: int = 1, min_kept_fraction: float = 0.5) -> np.ndarray:
    """Each slice's mask less an in-plane rim of ``margin_px`` pixels.

    A muscle's border pixels mix it with the fascia and fat around it
    (partial volume, chemical shift), and a segmentation a pixel too wide
    reads that fat; the interior is free of both (`fat_fraction` reads the
    border from it). A slice whose interior would keep less than
    ``min_kept_fraction`` of its pixels (a thin or small section, where the
    rim is most of the muscle) keeps its whole mask.

    Parameters
    ----------
    mask : numpy.ndarray
        A 2D slice or a (slice, row, column) stack; erosion never reaches
        across slices.
    margin_px : int
        Rim width in pixels (4-connected erosion steps); 0 returns the mask.
    min_kept_fraction : float
        In [0, 1]: the least share of a slice's pixels its interior must keep.

    Raises
    ------
    ValueError
        If ``mask`` is not 2D or 3D, ``margin_px`` is negative or
        ``min_kept_fraction`` lies outside [0, 1].
    """
    m = np.asarray(mask) > 0
    if m.ndim not in (2, 3):
        raise ValueError(f"'mask' must be 2D or 3D, got shape {m.shape}")
    if margin_px < 0:
        raise ValueError(f"'margin_px' must be >= 0, got {margin_px}")
    if not 0.0 <= min_kept_fraction <= 1.0:
        raise ValueError(f"'min_kept_fraction' must lie in [0, 1], got {min_kept_fraction}")
    if margin_px == 0:
        return m.copy()
    stack = m.reshape((-1,) + m.shape[-2:])
    cross = ndimage.generate_binary_structure(2, 1)[None]
    core = ndimage.binary_erosion(stack, structure=cross, iterations=margin_px)
    whole, kept = stack.sum(axis=(1, 2)), core.sum(axis=(1, 2))
    thin = kept < min_kept_fraction * whole
    core[thin] = stack[thin]
    return core.reshape(m.shape)


# Immerkær's 3×3 stencil: zero on any locally planar signal; on white noise
# of standard deviation σ its response has standard deviation 6σ.
_NOISE_STENCIL = np.array([[1.0, -2.0, 1.0], [-2.0, 4.0, -2.0], [1.0, -2.0, 1.0]])
_MIN_NOISE_PIXELS = 50


def magnitude_noise_sigma(image: np.ndarray, mask: np.ndarray) -> float:
    """Per-channel noise σ of a magnitude image, from the bright, uniform
    part of ``mask`` (lean muscle on a Dixon water image).

    Where the signal is many σ above zero a magnitude's noise is nearly
    Gaussian with that σ. The pixels used are those of ``mask`` within
    ±20 % of its median signal whose 3×3 neighbourhood lies wholly among
    such pixels (no muscle border, no fat blob edge under the stencil); σ is
    the robust (median absolute) spread of the stencil response / 6.
    Spatially correlated noise (interpolated or filtered images) reads
    lower, so a correction with it errs towards too little.

    Parameters
    ----------
    image : numpy.ndarray
        A 2D slice or a (slice, row, column) stack.
    mask : numpy.ndarray
        Same shape: the region to estimate from.

    Raises
    ------
    ValueError
        If the shapes differ or fewer than 50 pixels qualify.
    """
    if image.shape != mask.shape or image.ndim not in (2, 3):
        raise ValueError(f"image {image.shape} and mask {mask.shape} must be one 2D or 3D shape")
    img = np.asarray(image, np.float64).reshape((-1,) + image.shape[-2:])
    m = (np.asarray(mask) > 0).reshape(img.shape)
    if not m.any():
        raise ValueError("'mask' is empty")
    median = float(np.median(img[m]))
    uniform = m & (img > 0.8 * median) & (img < 1.2 * median)
    # Per slice: the stencil and the erosion never reach across slices.
    core = ndimage.binary_erosion(uniform, structure=np.ones((1, 3, 3), bool))
    values = np.abs(ndimage.convolve(img, _NOISE_STENCIL[None], mode="nearest")[core])
    if values.size < _MIN_NOISE_PIXELS:
        raise ValueError(f"only {values.size} uniform pixels to estimate the noise from; "
                         f"{_MIN_NOISE_PIXELS} are needed")
    return float(1.4826 * np.median(values) / 6.0)


def muscle_volume_ml(masks: np.ndarray, pixel_spacing_mm: Sequence[float], slice_spacing_mm: float) -> float:
    """Volume over contiguous slices (Cavalieri): Σ CSA × slice spacing, ml."""
    if slice_spacing_mm <= 0:
        raise ValueError(f"'slice_spacing_mm' must be > 0, got {slice_spacing_mm}")
    return float(csa_per_slice_cm2(masks, pixel_spacing_mm).sum() * slice_spacing_mm / 10.0)


def asymmetry(right: float, left: float) -> float:
    """Relative left/right asymmetry: (right − left) / mean(right, left).

    0 for equal sides, +0.2 when the right is 20 % of the mean larger.
    """
    mean = (float(right) + float(left)) / 2.0
    if mean <= 0:
        raise ValueError(f"asymmetry needs a positive mean, got right={right}, left={left}")
    return (float(right) - float(left)) / mean


def centroid_2d_lps_mm(mask: np.ndarray, slice_affine: np.ndarray) -> np.ndarray:
    """Centre of mass of a 2D mask in patient coordinates (LPS, mm).

    ``slice_affine`` maps (row, column, 1) → LPS: columns 0/1 are the row and
    column steps, column 2 the position of pixel (0, 0).

    Raises
    ------
    ValueError
        If ``mask`` is empty or ``slice_affine`` is not 3×3.
    """
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("'mask' is empty")
    a = np.asarray(slice_affine, float)
    if a.shape != (3, 3):
        raise ValueError(f"'slice_affine' must be 3x3, got {a.shape}")
    r, c = idx.mean(axis=0)
    return a @ np.array([r, c, 1.0])
