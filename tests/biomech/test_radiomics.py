"""Radiomics features against closed-form answers and scipy's moments."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from spinegate.biomech.radiomics import ENTROPY_BINS, first_order_features, shape_features, structure_radiomics


def test_two_valued_intensities_have_the_textbook_moments():
    x = np.array([100.0] * 50 + [300.0] * 50)
    f = first_order_features(x)
    assert f.n_voxels == 100 and f.mean == 200.0 and f.standard_deviation == 100.0
    assert f.skewness == pytest.approx(0.0) and f.kurtosis == pytest.approx(-2.0)
    assert f.entropy_bits == pytest.approx(1.0)  # two equally full bins: the minimum's and the maximum's
    assert (f.minimum, f.p10, f.median, f.p90, f.maximum) == (100.0, 100.0, 200.0, 300.0, 300.0)
    assert f.interquartile_range == 200.0 and f.mean_positive == 200.0


def test_skewed_intensities_match_scipy():
    rng = np.random.default_rng(3)
    x = rng.gamma(2.0, 50.0, 5000) - 40.0  # right-skewed, some values negative
    f = first_order_features(x)
    assert f.skewness == pytest.approx(stats.skew(x, bias=True))
    assert f.kurtosis == pytest.approx(stats.kurtosis(x, fisher=True, bias=True))
    assert f.standard_deviation == pytest.approx(np.std(x))  # IBSI variance divides by N
    assert f.mean_positive == pytest.approx(x[x > 0].mean()) and f.mean_positive > f.mean
    assert f.p10 == pytest.approx(np.percentile(x, 10)) and f.p90 == pytest.approx(np.percentile(x, 90))


def test_entropy_of_a_uniform_spread_over_every_bin_is_log2_bins():
    x = np.repeat(np.arange(ENTROPY_BINS, dtype=float), 3)  # one level per bin
    assert first_order_features(x).entropy_bits == pytest.approx(math.log2(ENTROPY_BINS))
    constant = first_order_features(np.full(10, 7.0))
    assert constant.entropy_bits == 0.0 and math.isnan(constant.skewness) and constant.standard_deviation == 0.0
    assert math.isnan(first_order_features(np.array([-1.0, -2.0])).mean_positive)


def test_bad_intensities_are_refused():
    with pytest.raises(ValueError, match="no voxels"):
        first_order_features(np.array([]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        first_order_features(np.array([1.0, np.nan]))


def test_box_shape_has_the_discrete_principal_axes():
    mask = np.zeros((12, 30, 30), bool)
    mask[1:11, 2:22, 5:10] = True  # 10 x 20 x 5 voxels
    affine = np.diag([4.0, 0.8, 0.8, 1.0])
    s = shape_features(mask, affine)
    # a row of n voxel centres s apart has variance s² (n² - 1) / 12
    lam = sorted([4.0 ** 2 * 99 / 12, 0.8 ** 2 * 399 / 12, 0.8 ** 2 * 24 / 12], reverse=True)
    assert s.major_axis_mm == pytest.approx(4 * math.sqrt(lam[0]))
    assert s.minor_axis_mm == pytest.approx(4 * math.sqrt(lam[1]))
    assert s.least_axis_mm == pytest.approx(4 * math.sqrt(lam[2]))
    assert s.elongation == pytest.approx(math.sqrt(lam[1] / lam[0]))
    assert s.flatness == pytest.approx(math.sqrt(lam[2] / lam[0]))
    assert s.volume_cm3 == pytest.approx(1000 * 4.0 * 0.8 * 0.8 / 1000)
    with pytest.raises(ValueError, match="non-empty 3D mask"):
        shape_features(np.zeros((3, 3, 3), bool), affine)


def test_the_central_slice_is_the_one_given():
    image = np.zeros((5, 8, 8))
    for k in range(5):
        image[k] = 10.0 * (k + 1)
    mask = np.zeros((5, 8, 8), bool)
    mask[1:4, 2:6, 2:6] = True
    r = structure_radiomics(image, mask, np.eye(4), central_slice=2)
    assert r.central_slice.mean == 30.0 and r.central_slice.n_voxels == 16 and r.central_slice.standard_deviation == 0
    assert r.whole.mean == pytest.approx(30.0) and r.whole.n_voxels == 48
    with pytest.raises(ValueError, match="no voxel on slice 4"):
        structure_radiomics(image, mask, np.eye(4), central_slice=4)
    with pytest.raises(ValueError, match="differ in shape"):
        structure_radiomics(image[:4], mask, np.eye(4), central_slice=2)
