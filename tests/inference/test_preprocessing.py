"""Pre-processing shared by training and inference: the resampling to the
training grid and back is scipy's linear zoom, exactly."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from spinegate.inference.preprocessing import SIZE_MULTIPLE, from_training_grid, normalise_intensity, to_training_grid


def _scipy_zoom(a: np.ndarray, zr: float, zc: float) -> np.ndarray:
    zoom = (1.0,) * (a.ndim - 2) + (zr, zc)
    return ndimage.zoom(a.astype(np.float32), zoom, order=1, prefilter=False, grid_mode=True, mode="nearest")


@pytest.mark.parametrize("shape, spacing", [((3, 97, 130), (0.6, 0.6)), ((2, 64, 64), (1.5, 0.8)),
                                            ((1, 40, 41), (1.25, 1.25))])
def test_to_training_grid_is_scipy_linear_zoom_then_padding(shape, spacing):
    planes = np.random.default_rng(0).random(shape, dtype=np.float32)
    padded, (r, c) = to_training_grid(planes, spacing, 1.25)
    expected = _scipy_zoom(planes, spacing[0] / 1.25, spacing[1] / 1.25)
    assert (r, c) == expected.shape[1:]
    assert padded.shape[1] % SIZE_MULTIPLE == 0 and padded.shape[2] % SIZE_MULTIPLE == 0
    np.testing.assert_allclose(padded[:, :r, :c], expected, atol=1e-6)
    assert not padded[:, r:, :].any() and not padded[:, :, c:].any()


def test_from_training_grid_is_scipy_linear_zoom_onto_the_native_grid():
    scores = np.random.default_rng(1).random((2, 4, 80, 96), dtype=np.float32)
    out = from_training_grid(scores, (75, 90), (128, 150))
    assert out.shape == (2, 4, 128, 150)
    expected = _scipy_zoom(scores[:, :, :75, :90], 128 / 75, 150 / 90)[:, :, :128, :150]
    np.testing.assert_allclose(out, expected, atol=1e-6)
    # Linear interpolation of a probability field keeps it a probability field.
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_a_constant_image_stays_constant_after_resampling():
    planes = np.full((1, 50, 70), 0.25, np.float32)
    padded, (r, c) = to_training_grid(planes, (0.7, 0.9), 1.0)
    np.testing.assert_allclose(padded[:, :r, :c], 0.25, atol=1e-6)


def test_normalise_intensity_scales_by_volume_percentiles():
    v = np.arange(101, dtype=np.float32).reshape(1, 1, 101)
    out = normalise_intensity(v)
    assert out.min() == 0.0 and out.max() == 1.0
    assert out[0, 0, 50] == pytest.approx(0.5)
    assert not normalise_intensity(np.ones((2, 3, 3))).any()


@pytest.mark.parametrize("n_in, zoom", [(240, 512 / 240), (205, 256 / 205), (512, 240 / 512), (33, 0.5), (7, 3.0)])
def test_the_resampling_bands_hold_every_weight_of_the_zoom_matrix(n_in, zoom):
    from spinegate.inference.preprocessing import _bands, _linear_resize_matrix

    full = _linear_resize_matrix(n_in, zoom)
    rebuilt = np.zeros_like(full)
    for out, used in _bands(n_in, zoom):
        rebuilt[out, used] = full[out, used]
    np.testing.assert_array_equal(rebuilt, full)
    assert _bands(n_in, zoom)[-1][0].stop == full.shape[0]


def test_score_volumes_of_pipeline_size_resample_as_scipy_zooms_them():
    scores = np.random.default_rng(2).random((3, 4, 240, 208), dtype=np.float32)
    out = from_training_grid(scores, (240, 205), (512, 256))
    np.testing.assert_allclose(out, _scipy_zoom(scores[:, :, :, :205], 512 / 240, 256 / 205)[:, :, :512, :256],
                               atol=1e-6)


def test_network_inputs_are_the_full_zoom_products_bit_for_bit():
    # The training data are built by to_training_grid too: the committed
    # models rebuild bit for bit only if its arithmetic never changes.
    from spinegate.inference.preprocessing import _linear_resize_matrix

    planes = np.random.default_rng(3).random((4, 300, 260), dtype=np.float32)
    padded, (r, c) = to_training_grid(planes, (0.7, 0.7), 1.0)
    rows, cols = _linear_resize_matrix(300, 0.7), _linear_resize_matrix(260, 0.7)
    assert np.array_equal(padded[:, :r, :c], rows @ (planes @ cols.T))
