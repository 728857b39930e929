"""Overlap, surface distances and agreement statistics against masks and
numbers with a known answer (and an independent scipy computation)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from spinegate.service.agreement import agreement, icc_2_1, overlap


def _boxes(shift: int) -> tuple[np.ndarray, np.ndarray]:
    auto, manual = np.zeros((20, 24, 24), bool), np.zeros((20, 24, 24), bool)
    auto[5:15, 5:15, 2:12] = True
    manual[5:15, 5:15, 2 + shift:12 + shift] = True
    return auto, manual


def _scipy_surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    """MedPy-style: surface voxels (mask minus its face-connected erosion) to
    the other's surface voxels, Euclidean distance transform in mm."""
    def surface(x: np.ndarray) -> np.ndarray:
        return x & ~ndimage.binary_erosion(x, border_value=0)

    return ndimage.distance_transform_edt(~surface(b), sampling=spacing)[surface(a)]


def test_shifted_box_has_the_counted_overlap_and_distances():
    auto, manual = _boxes(2)
    affine = np.diag([4.0, 1.2, 1.2, 1.0])  # 4 mm slices, 1.2 mm pixels; the shift is along the columns
    o = overlap(auto, manual, affine)
    assert o.dice == pytest.approx(0.8) and o.jaccard == pytest.approx(80 / 120)
    assert o.sensitivity == pytest.approx(0.8) and o.precision == pytest.approx(0.8)
    voxel_cm3 = 4.0 * 1.2 * 1.2 / 1000
    assert o.volume_auto_cm3 == pytest.approx(1000 * voxel_cm3) and o.volume_difference_pct == pytest.approx(0.0)
    assert o.hausdorff_mm == pytest.approx(2.4) and o.hd95_mm == pytest.approx(2.4)
    d1 = _scipy_surface_distances(auto, manual, (4.0, 1.2, 1.2))
    d2 = _scipy_surface_distances(manual, auto, (4.0, 1.2, 1.2))
    assert o.mean_surface_distance_mm == pytest.approx((d1.mean() + d2.mean()) / 2, rel=1e-5)
    assert 0 < o.mean_surface_distance_mm < 2.4


def test_precision_and_sensitivity_differ_when_one_mask_is_larger():
    auto, manual = np.zeros((10, 10, 10), bool), np.zeros((10, 10, 10), bool)
    auto[2:8, 2:8, 2:8] = True  # 216 voxels
    manual[2:8, 2:8, 2:5] = True  # 108, all inside auto
    o = overlap(auto, manual, np.eye(4))
    assert o.sensitivity == 1.0 and o.precision == pytest.approx(0.5)
    assert o.dice == pytest.approx(2 * 108 / 324) and o.volume_difference_pct == pytest.approx(100.0)


def test_identical_masks_agree_perfectly():
    auto, _ = _boxes(0)
    o = overlap(auto, auto, np.diag([4.0, 0.8, 0.8, 1.0]))
    assert (o.dice, o.jaccard, o.sensitivity, o.precision) == (1.0, 1.0, 1.0, 1.0)
    assert (o.mean_surface_distance_mm, o.hd95_mm, o.hausdorff_mm) == (0.0, 0.0, 0.0)


def test_a_missed_structure_scores_zero_and_an_empty_manual_mask_is_refused():
    _, manual = _boxes(0)
    o = overlap(np.zeros_like(manual), manual, np.eye(4))
    assert (o.dice, o.sensitivity, o.volume_auto_cm3) == (0.0, 0.0, 0.0)
    assert math.isnan(o.hd95_mm) and math.isnan(o.precision)
    with pytest.raises(ValueError, match="no manual outline"):
        overlap(manual, np.zeros_like(manual), np.eye(4))
    with pytest.raises(ValueError, match="not on one grid"):
        overlap(manual, manual[:-1], np.eye(4))


def test_icc_2_1_reproduces_shrout_and_fleiss():
    # Shrout & Fleiss (1979), Table 2: 6 targets, 4 judges; ICC(2,1) = 0.29.
    ratings = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]])
    assert icc_2_1(ratings) == pytest.approx(0.2898, abs=1e-4)
    assert icc_2_1(np.column_stack([np.arange(5.0), np.arange(5.0)])) == pytest.approx(1.0)
    # a constant offset lowers absolute agreement below consistency
    assert icc_2_1(np.column_stack([np.arange(5.0), np.arange(5.0) + 2])) < 0.8
    with pytest.raises(ValueError, match="raters"):
        icc_2_1(np.arange(5.0))


def test_agreement_statistics_are_exact_on_constructed_pairs():
    a = agreement([11.0, 9.0, 9.0], [10.0, 10.0, 8.0])  # differences +1, -1, +1
    assert a.n == 3 and a.mae == pytest.approx(1.0) and a.bias == pytest.approx(1 / 3)
    sd = np.std([1, -1, 1], ddof=1)
    assert a.limits_of_agreement == (pytest.approx(1 / 3 - 1.96 * sd), pytest.approx(1 / 3 + 1.96 * sd))
    assert a.mape_pct == pytest.approx(100 * (0.1 + 0.1 + 0.125) / 3)
    assert a.pearson_r == pytest.approx(np.corrcoef([11, 9, 9], [10, 10, 8])[0, 1])
    one = agreement([2.0], [1.0])
    assert one.bias == 1.0 and math.isnan(one.pearson_r) and math.isnan(one.limits_of_agreement[0])
    with pytest.raises(ValueError, match="same, non-zero number"):
        agreement([1.0, 2.0], [1.0])
