"""Pre-processing shared by training and inference (one definition, so the
two cannot drift): intensity normalisation and in-plane resampling to the
training pixel spacing and back."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy import ndimage

__all__ = ["TRAINING_SPACING_MM", "SIZE_MULTIPLE", "normalise_intensity", "to_training_grid", "from_training_grid"]

TRAINING_SPACING_MM = 1.25
# The network halves the size 4 times.
SIZE_MULTIPLE = 16


def normalise_intensity(volume: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.0) -> np.ndarray:
    """Per-volume percentile scaling to [0, 1] (clipped).

    Percentiles are taken over the whole volume, so every slice of a series is
    scaled alike (per-subject normalisation, DOMAIN.md §4).
    """
    v = np.asarray(volume, dtype=np.float32)
    lo, hi = np.percentile(v, [low_pct, high_pct])
    if hi <= lo:
        return np.zeros_like(v)
    return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


@lru_cache(maxsize=64)
def _linear_resize_matrix(n_in: int, zoom: float) -> np.ndarray:
    """(n_out, n_in) matrix of scipy's linear zoom along one axis
    (grid_mode, edge clamped). Linear zoom is separable, so two matrix
    products give exactly `scipy.ndimage.zoom`'s result on (…, rows, cols)
    stacks, with BLAS instead of a 4-D interpolation loop (3-10× faster on
    score volumes of many classes)."""
    m = ndimage.zoom(np.eye(n_in, dtype=np.float32), (zoom, 1.0), order=1, prefilter=False, grid_mode=True,
                     mode="nearest")
    m.setflags(write=False)
    return m


@lru_cache(maxsize=64)
def _bands(n_in: int, zoom: float, block: int = 32) -> tuple[tuple[slice, slice], ...]:
    """(output rows, input columns) of the blocks of `_linear_resize_matrix`
    that hold its non-zeros: each run of ``block`` output samples draws on
    a few neighbouring input samples only."""
    m = _linear_resize_matrix(n_in, zoom)
    bands = []
    for start in range(0, m.shape[0], block):
        used = np.flatnonzero(m[start : start + block].any(axis=0))
        bands.append((slice(start, min(start + block, m.shape[0])), slice(int(used[0]), int(used[-1]) + 1)))
    return tuple(bands)


def _resize_planes(planes: np.ndarray, zoom_rows: float, zoom_cols: float, banded: bool = True) -> np.ndarray:
    """Linear zoom of the last two axes (float32), as `scipy.ndimage.zoom`.

    With ``banded`` the two matrix products run band by band: the zoom
    matrices are zero beyond two input samples per output sample, so the
    full products would spend 85-95 % of their work multiplying zeros (3x
    faster on the sagittal and axial score volumes). The values agree with
    the full products to float32 rounding, not always bit for bit (BLAS
    sums a shorter row in another order), so the network inputs, from which
    the training data are built too, keep the full products
    (`to_training_grid`): the training data stay those the committed models
    were trained on (a bit-for-bit rebuild needs that, and the same library
    releases: docs/research.md).
    """
    x = planes.astype(np.float32, copy=False)
    rows = _linear_resize_matrix(x.shape[-2], zoom_rows)
    cols = _linear_resize_matrix(x.shape[-1], zoom_cols)
    if not banded:
        return rows @ (x @ cols.T)
    across = np.empty(x.shape[:-1] + (cols.shape[0],), np.float32)
    for out, used in _bands(x.shape[-1], zoom_cols):
        across[..., out] = x[..., used] @ cols[out, used].T
    resized = np.empty(x.shape[:-2] + (rows.shape[0], cols.shape[0]), np.float32)
    for out, used in _bands(x.shape[-2], zoom_rows):
        resized[..., out, :] = rows[out, used] @ across[..., used, :]
    return resized


def to_training_grid(planes: np.ndarray, pixel_spacing_mm: tuple[float, float],
                     training_spacing_mm: float = TRAINING_SPACING_MM) -> tuple[np.ndarray, tuple[int, int]]:
    """Resample (n, rows, cols) planes to ``training_spacing_mm`` (the
    sagittal model's ``TRAINING_SPACING_MM`` unless given) and pad to a
    multiple of ``SIZE_MULTIPLE``.

    Returns the padded array and the unpadded resampled (rows, cols).
    """
    resampled = _resize_planes(planes, pixel_spacing_mm[0] / training_spacing_mm,
                               pixel_spacing_mm[1] / training_spacing_mm, banded=False)
    n, r, c = resampled.shape
    pr = (-r) % SIZE_MULTIPLE
    pc = (-c) % SIZE_MULTIPLE
    padded = np.pad(resampled, ((0, 0), (0, pr), (0, pc)))
    return padded, (r, c)


def from_training_grid(scores: np.ndarray, valid_shape: tuple[int, int], native_shape: tuple[int, int]) -> np.ndarray:
    """Crop padded (n, classes, rows, cols) scores and resample them linearly
    back onto the native (rows, cols) grid."""
    r, c = valid_shape
    cropped = scores[:, :, :r, :c]
    out = _resize_planes(cropped, native_shape[0] / r, native_shape[1] / c)
    # zoom may be off by one pixel from rounding; fix the size exactly.
    out = out[:, :, : native_shape[0], : native_shape[1]]
    pad_r = native_shape[0] - out.shape[2]
    pad_c = native_shape[1] - out.shape[3]
    if pad_r or pad_c:
        out = np.pad(out, ((0, 0), (0, 0), (0, pad_r), (0, pad_c)), mode="edge")
    return out
