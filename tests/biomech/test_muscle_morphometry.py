"""Paraspinal-muscle measurements against synthetic slices with exact answers."""
import numpy as np
import pytest
from scipy import ndimage

from spinegate.biomech.muscle_morphometry import (
    asymmetry,
    centroid_2d_lps_mm,
    csa_cm2,
    csa_per_slice_cm2,
    fat_fraction,
    fat_infiltration,
    interior_mask,
    magnitude_noise_sigma,
    muscle_volume_ml,
    otsu_threshold,
    relative_csa,
)


def rect(shape=(64, 64), rows=(10, 20), cols=(30, 50)):
    m = np.zeros(shape, bool)
    m[rows[0]:rows[1], cols[0]:cols[1]] = True
    return m


def test_csa_is_pixel_count_times_pixel_area():
    assert csa_cm2(rect(), (0.5, 0.8)) == pytest.approx(10 * 20 * 0.4 / 100)
    stack = np.stack([rect(), rect(rows=(10, 15)), np.zeros((64, 64), bool)])
    np.testing.assert_allclose(csa_per_slice_cm2(stack, (1.0, 1.0)), [2.0, 1.0, 0.0])
    with pytest.raises(ValueError, match="positive"):
        csa_cm2(rect(), (0.0, 1.0))
    with pytest.raises(ValueError, match="2D"):
        csa_cm2(stack, (1.0, 1.0))


def test_relative_csa_and_asymmetry():
    assert relative_csa(6.0, 12.0) == 0.5
    with pytest.raises(ValueError, match="disc_csa_cm2"):
        relative_csa(6.0, 0.0)
    assert asymmetry(12.0, 8.0) == pytest.approx(0.4)
    assert asymmetry(5.0, 5.0) == 0.0


def test_volume_sums_areas_over_the_slice_spacing():
    stack = np.stack([rect(rows=(0, 10), cols=(0, 10))] * 3)  # 1 cm² per slice at 1 mm pixels
    assert muscle_volume_ml(stack, (1.0, 1.0), 4.0) == pytest.approx(1.2)


def _muscle(rng, fat_share, n=2000, lean=200.0, fat=800.0, noise=15.0):
    values = np.where(np.arange(n) < int(fat_share * n), fat, lean) + rng.normal(0, noise, n)
    return values


def test_fat_infiltration_thresholds_each_muscle_and_replaces_outlier_thresholds():
    rng = np.random.default_rng(0)
    shares = {"MF_L": 0.30, "MF_R": 0.25, "ES_L": 0.20, "ES_R": 0.35, "PM_L": 0.0}
    image = np.zeros((50, 500), np.float32)
    masks = {}
    for i, (name, share) in enumerate(shares.items()):
        image[i * 10:(i + 1) * 10, :400] = _muscle(rng, share).reshape(10, 200).repeat(2, axis=1)[:, :400]
        m = np.zeros(image.shape, bool)
        m[i * 10:(i + 1) * 10, :400] = True
        masks[name] = m
    result = fat_infiltration(image, masks)
    for name, share in shares.items():
        assert result[name]["fat_infiltration"] == pytest.approx(share, abs=0.01), name
    # The lean psoas has no second mode: its own Otsu split the noise; it took the others' mean.
    assert result["PM_L"]["threshold_replaced"] == 1
    assert all(result[n]["threshold_replaced"] == 0 for n in shares if n != "PM_L")
    assert 200 < otsu_threshold(image, masks["MF_L"]) < 800  # between the lean and the fat mode


def test_dixon_fat_fraction_is_fat_over_water_plus_fat():
    water = np.full((4, 4), 700.0)
    fat = np.full((4, 4), 300.0)
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    assert fat_fraction(water, fat, mask) == pytest.approx(0.3)
    fat[0, 0] = 1e6  # outside the mask: ignored
    assert fat_fraction(water, fat, mask) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="one shape"):
        fat_fraction(water, fat[:3], mask)
    with pytest.raises(ValueError, match="empty"):
        fat_fraction(water, fat, np.zeros((4, 4), bool))


def rician(amplitude: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    """A magnitude image: Gaussian noise of ``sigma`` on both channels."""
    rng = np.random.default_rng(seed)
    return np.hypot(amplitude + rng.normal(0, sigma, amplitude.shape), rng.normal(0, sigma, amplitude.shape))


def lean_muscle_with_fat_blobs(shape=(6, 96, 96)):
    """Water and fat amplitudes of a muscle of fat fraction 0.02 with blobs
    of 0.9 (sharp edges inside the mask), and the mask and true mean FF."""
    ff = np.full(shape, 0.02)
    for k in range(shape[0]):
        ff[k, 20 + 3 * k : 30 + 3 * k, 40:52] = 0.9
    mask = np.zeros(shape, bool)
    mask[:, 8:88, 8:88] = True
    return 600.0 * (1 - ff), 600.0 * ff, mask, float(ff[mask].mean())


def test_magnitude_noise_sigma_is_read_from_the_uniform_part_of_the_mask():
    water, _, mask, _ = lean_muscle_with_fat_blobs()
    for sigma in (5.0, 20.0, 40.0):
        noisy = rician(water, sigma, seed=int(sigma))
        # Blob edges and the mask border are left out: the estimate is the noise alone.
        assert magnitude_noise_sigma(noisy, mask) == pytest.approx(sigma, rel=0.05), sigma
    assert magnitude_noise_sigma(water, mask) == 0.0  # noise-free
    assert magnitude_noise_sigma(rician(water[0], 20.0, 1), mask[0]) == pytest.approx(20.0, rel=0.05)  # one slice
    with pytest.raises(ValueError, match="uniform pixels"):
        magnitude_noise_sigma(water, np.pad(np.ones((6, 4, 4), bool), ((0, 0), (0, 92), (0, 92))))
    with pytest.raises(ValueError, match="one 2D or 3D shape"):
        magnitude_noise_sigma(water, mask[0])
    with pytest.raises(ValueError, match="empty"):
        magnitude_noise_sigma(water, np.zeros_like(mask))


def test_fat_fraction_removes_the_magnitude_noise_floor():
    water, fat, mask, true_ff = lean_muscle_with_fat_blobs()
    sigma = 20.0  # the lean muscle's fat signal (12) is below the noise
    w, f = rician(water, sigma, seed=3), rician(fat, sigma, seed=4)
    raw = fat_fraction(w, f, mask)
    assert raw - true_ff > 0.02  # the floor: a lean muscle reads fatty
    corrected = fat_fraction(w, f, mask, noise_sigma=magnitude_noise_sigma(w, mask))
    assert abs(corrected - true_ff) < 0.006, (raw, corrected, true_ff)
    assert fat_fraction(water, fat, mask, noise_sigma=0.0) == pytest.approx(true_ff)
    with pytest.raises(ValueError, match="noise_sigma"):
        fat_fraction(w, f, mask, noise_sigma=-1.0)


def test_interior_mask_drops_an_in_plane_rim_where_the_section_is_large_enough():
    stack = np.zeros((3, 32, 32), bool)
    stack[0, 4:24, 6:26] = True  # 20×20: interior 18×18 keeps 81 %
    stack[1, 10:13, 10:20] = True  # 3×10: interior 1×8 keeps 27 %: whole mask kept
    stack[2, 0:10, 0:10] = True  # at the image edge: the edge is a border too
    core = interior_mask(stack)
    expected = np.zeros_like(stack)
    expected[0, 5:23, 7:25] = True
    expected[1] = stack[1]
    expected[2, 1:9, 1:9] = True
    np.testing.assert_array_equal(core, expected)  # and no erosion across slices (slice 1 stays whole)
    np.testing.assert_array_equal(interior_mask(stack[0], margin_px=2), np.pad(np.ones((16, 16), bool), ((6, 10), (8, 8))))
    np.testing.assert_array_equal(interior_mask(stack[1], min_kept_fraction=0.2)[11], np.r_[[False] * 11, [True] * 8, [False] * 13])
    np.testing.assert_array_equal(interior_mask(stack, margin_px=0), stack)
    for bad, match in (({"margin_px": -1}, "margin_px"), ({"min_kept_fraction": 1.5}, "min_kept_fraction")):
        with pytest.raises(ValueError, match=match):
            interior_mask(stack, **bad)
    with pytest.raises(ValueError, match="2D or 3D"):
        interior_mask(np.ones(5, bool))


def test_fat_fraction_reads_the_border_from_the_interior():
    box = rect(shape=(32, 32), rows=(4, 24), cols=(6, 26))  # 20×20
    water, fat = np.full(box.shape, 100.0), np.zeros(box.shape)
    water[box], fat[box] = 95.0, 5.0
    # Fat infiltration along the muscle's own edge: a band of 4 rows, the rim row among them.
    water[4:8, 6:26], fat[4:8, 6:26] = 10.0, 90.0
    true_ff = (80 * 0.9 + 320 * 0.05) / 400
    assert fat_fraction(water, fat, box, border_px=1) == pytest.approx(true_ff)
    # Ringed by fat and segmented a pixel too wide: read whole, the ring counts; read from the interior it does not.
    wide = ndimage.binary_dilation(box, ndimage.generate_binary_structure(2, 1))
    water[wide & ~box], fat[wide & ~box] = 0.0, 100.0
    assert fat_fraction(water, fat, wide) == pytest.approx((80 * 1.0 + 400 * true_ff) / 480)
    # The ring's 80 pixels read the box's edge: 20 + 2 × 4 of them next to the fat band.
    read_wide = ((80 + 28) * 0.9 + (320 + 52) * 0.05) / 480
    assert fat_fraction(water, fat, wide, border_px=1) == pytest.approx(read_wide)
    # A stack reads each slice from its own interior.
    stack = np.stack([water, water]), np.stack([fat, fat]), np.stack([wide, box])
    assert fat_fraction(*stack, border_px=1) == pytest.approx((480 * read_wide + 400 * true_ff) / 880)
    with pytest.raises(ValueError, match="border_px"):
        fat_fraction(water, fat, box, border_px=-1)


def test_centroid_maps_row_and_column_to_patient_coordinates():
    # Axial slice: rows run posterior (+y), columns run left (+x), 0.5 mm pixels, at z = -40.
    affine = np.array([[0.0, 0.5, -100.0], [0.5, 0.0, -80.0], [0.0, 0.0, -40.0]])
    c = centroid_2d_lps_mm(rect(rows=(10, 20), cols=(30, 50)), affine)
    np.testing.assert_allclose(c, [-100 + 0.5 * 39.5, -80 + 0.5 * 14.5, -40.0])
    with pytest.raises(ValueError, match="empty"):
        centroid_2d_lps_mm(np.zeros((4, 4), bool), affine)
