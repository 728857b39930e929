"""T2 (or T1ρ) relaxometry: a voxel-wise mono-exponential fit of one stack
imaged at several echo (spin-lock) times, and its summary per structure.

S(TE) = S0 · exp(−TE / T2) is fitted by weighted linear least squares on
ln S with weights S² (the first-order correction for fitting the
logarithm; Bevington & Robinson), closed form over all voxels at once. A
voxel is fitted when its first-echo signal is above ``signal_floor`` of
the stack's 99th percentile and every echo is positive; its T2 is kept
when the decay is negative and T2 is at most ``MAX_T2_MS``. Elsewhere the
map is 0 ("not fitted"). Exact on noise-free mono-exponential signal;
with noise the log-linear fit is biased where late echoes near the noise
floor (discard such echoes before fitting if the protocol has them).
"""
from __future__ import annotations

import numpy as np

from spinegate.dicom_io.measurements import RelaxationSummary

__all__ = ["MAX_T2_MS", "RelaxationSummary", "fit_t2_ms", "summarise_t2"]

MAX_T2_MS = 2000.0


def fit_t2_ms(echoes: np.ndarray, echo_times_ms: np.ndarray, signal_floor: float = 0.05) -> np.ndarray:
    """Voxel-wise T2 (ms) of ``echoes`` (echo, ...) at ``echo_times_ms``; 0
    where not fitted.

    Raises
    ------
    ValueError
        With fewer than 2 distinct echo times, or shapes that disagree.
    """
    s = np.asarray(echoes, np.float64)
    te = np.asarray(echo_times_ms, np.float64).ravel()
    if s.ndim < 2 or s.shape[0] != te.size:
        raise ValueError(f"'echoes' must be (echo, ...) with one image per echo time, got shape {s.shape} "
                         f"for {te.size} echo times")
    if np.unique(te).size < 2:
        raise ValueError(f"need at least 2 distinct echo times, got {te.tolist()}")
    floor = signal_floor * float(np.percentile(s[0], 99)) if s[0].size else 0.0
    fitted = (s[0] > floor) & np.all(s > 0, axis=0)
    y = np.log(np.where(s > 0, s, 1.0))
    w = np.where(s > 0, s * s, 0.0)
    shape = (-1,) + (1,) * (s.ndim - 1)
    t = te.reshape(shape)
    sw, sx, sy = w.sum(0), (w * t).sum(0), (w * y).sum(0)
    sxx, sxy = (w * t * t).sum(0), (w * t * y).sum(0)
    denominator = sw * sxx - sx * sx
    with np.errstate(divide="ignore", invalid="ignore"):
        slope = (sw * sxy - sx * sy) / denominator
        t2 = -1.0 / slope
    ok = fitted & (denominator > 0) & (slope < 0) & np.isfinite(t2) & (t2 <= MAX_T2_MS)
    return np.where(ok, t2, 0.0).astype(np.float32)


def summarise_t2(t2_ms: np.ndarray, mask: np.ndarray) -> RelaxationSummary | None:
    """Mean, median and SD of the fitted T2 inside ``mask``; None when no
    voxel of it was fitted."""
    mask = np.asarray(mask, bool)
    values = np.asarray(t2_ms, np.float64)[mask]
    values = values[values > 0]
    if values.size == 0:
        return None
    return RelaxationSummary(float(values.mean()), float(np.median(values)), float(values.std()), int(values.size),
                             int(mask.sum()))
