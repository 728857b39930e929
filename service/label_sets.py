"""Manual and automatic label sets brought onto one grid for ``spinegate
evaluate`` (the label files are read by `dicom_io.label_files`).

The grid is the automatic SEG's (the source series'), grown where the
manual labels reach beyond it; a manual structure drawn on a finer grid
belongs to a voxel when it covers at least half of it (sampled several
times per voxel along each axis where the manual grid is finer).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from spinegate.dicom_io.label_files import LabelFileError, LabelSet, label_image, label_image_array

__all__ = ["EvaluationError", "on_reference_grid"]


class EvaluationError(LabelFileError):
    """The inputs cannot be evaluated as given; the message says why."""


def _index_bounds(mask: np.ndarray, affine: np.ndarray, reference_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference-grid index box (inclusive) covering ``mask``'s voxels."""
    where = np.argwhere(mask)
    lo, hi = where.min(axis=0) - 0.5, where.max(axis=0) + 0.5
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    ref = (np.linalg.inv(reference_affine) @ (np.asarray(affine, float) @ corners.T)).T[:, :3]
    return np.floor(ref.min(axis=0) + 0.5).astype(int), np.ceil(ref.max(axis=0) - 0.5).astype(int)


def _fraction_on_grid(mask: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, start: np.ndarray,
                      stop: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The fraction of each grid voxel in [start, stop) that ``mask`` covers,
    sampled ``factors`` times per axis (nearest neighbour)."""
    sub_affine = np.array(grid_affine, float)
    sub_affine[:3, :3] = grid_affine[:3, :3] / factors[None, :]
    sub_affine[:3, 3] = (grid_affine @ np.append(start - 0.5 + 0.5 / factors, 1.0))[:3]
    shape = (stop - start) * factors
    reference = label_image(np.zeros(tuple(shape), np.uint8), sub_affine)
    moving = label_image(mask, affine)
    sampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    values = label_image_array(sampled).astype(np.float32)  # back in (sub_affine) index order
    n = stop - start
    return values.reshape(n[0], factors[0], n[1], factors[1], n[2], factors[2]).mean(axis=(1, 3, 5))


def on_reference_grid(auto: LabelSet, manual: LabelSet) -> tuple[LabelSet, LabelSet]:
    """Both label sets on the automatic grid, grown to cover the manual labels.

    Raises
    ------
    EvaluationError
        If the manual labels do not overlap the automatic grid's space at all.
    """
    ref = np.asarray(auto.affine, float)
    lo, hi = np.zeros(3, int), np.array(auto.shape) - 1
    boxes = {}
    for name, mask in manual.masks.items():
        if mask.any():
            boxes[name] = _index_bounds(mask, manual.affine, ref)
            lo, hi = np.minimum(lo, boxes[name][0]), np.maximum(hi, boxes[name][1])
    shape = hi - lo + 1
    if np.any(shape > 4 * np.array(auto.shape) + 64):
        raise EvaluationError(f"{manual.source} lies far outside the space of the automatic SEG {auto.source}: "
                              "are they of the same series?")
    grid = ref.copy()
    grid[:3, 3] = (ref @ np.append(lo, 1.0))[:3]
    offset = -lo
    auto_masks = {}
    for name, mask in auto.masks.items():
        grown = np.zeros(tuple(shape), bool)
        grown[offset[0]:offset[0] + mask.shape[0], offset[1]:offset[1] + mask.shape[1],
              offset[2]:offset[2] + mask.shape[2]] = mask
        auto_masks[name] = grown
    spacing = np.linalg.norm(ref[:3, :3], axis=0)
    manual_spacing = np.linalg.norm(np.asarray(manual.affine, float)[:3, :3], axis=0)
    # Supersample along an axis as often as the manual grid is finer than the
    # reference along the nearest manual axis.
    factors = np.ones(3, int)
    for axis in range(3):
        direction = ref[:3, axis] / spacing[axis]
        cosines = np.abs(direction @ (np.asarray(manual.affine, float)[:3, :3] / manual_spacing))
        factors[axis] = max(1, int(round(spacing[axis] / manual_spacing[int(np.argmax(cosines))])))
    manual_masks = {}
    for name, (box_lo, box_hi) in boxes.items():
        start, stop = np.maximum(box_lo - lo, 0), np.minimum(box_hi - lo + 1, shape)
        fraction = _fraction_on_grid(manual.masks[name], manual.affine, grid, start, stop, factors)
        full = np.zeros(tuple(shape), bool)
        full[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = fraction >= 0.5
        if full.any():
            manual_masks[name] = full
    return LabelSet(auto_masks, grid, auto.source), LabelSet(manual_masks, grid, manual.source)
