import numpy as np
import pytest

from spinegate.biomech.morphometry import (
    centroid_index,
    centroid_lps_mm,
    height_on_centroid_slice,
    measure_structure,
    min_area_rectangle,
    volume_cm3,
)
from spinegate.dicom_io.levels import structure_by_name


def _rotated_rectangle_points(w: float, h: float, angle_deg: float) -> np.ndarray:
    t = np.deg2rad(angle_deg)
    u, v = np.array([np.cos(t), np.sin(t)]), np.array([-np.sin(t), np.cos(t)])
    corners = [a * u * w / 2 + b * v * h / 2 for a, b in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    inner = [np.zeros(2), 0.3 * u * w / 2]
    return np.array(corners + inner) + np.array([10.0, -3.0])


@pytest.mark.parametrize("angle", [0.0, 13.0, 37.5, 80.0])
def test_min_area_rectangle_is_exact_on_a_rotated_rectangle(angle):
    rect = min_area_rectangle(_rotated_rectangle_points(40.0, 9.0, angle))
    assert rect.short_mm == pytest.approx(9.0, abs=1e-9)
    assert rect.long_mm == pytest.approx(40.0, abs=1e-9)
    assert rect.centre == pytest.approx(np.array([10.0, -3.0]), abs=1e-9)


def test_min_area_rectangle_rejects_degenerate_input():
    with pytest.raises(ValueError, match="collinear"):
        min_area_rectangle(np.array([[0, 0], [1, 1], [2, 2.0]]))
    with pytest.raises(ValueError, match="N>=3"):
        min_area_rectangle(np.array([[0, 0], [1, 1.0]]))


def test_volume_and_centroid_of_a_box_are_exact():
    mask = np.zeros((5, 20, 30), bool)
    mask[1:4, 5:15, 10:20] = True  # 3 x 10 x 10 voxels
    affine = np.diag([4.0, 0.5, 0.5, 1.0])
    affine[:3, 3] = (100.0, -20.0, 7.0)
    assert volume_cm3(mask, affine) == pytest.approx(300 * 4 * 0.25 / 1000)
    assert centroid_index(mask) == pytest.approx([2.0, 9.5, 14.5])
    assert centroid_lps_mm(mask, affine) == pytest.approx([108.0, -15.25, 14.25])


def test_centroid_of_empty_mask_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        centroid_index(np.zeros((2, 2, 2), bool))


def test_height_of_axis_aligned_disc_is_within_a_quarter_pixel():
    mask = np.zeros((3, 60, 80), bool)
    mask[1, 20:32, 10:60] = True  # 12 rows at 0.5 mm: 6.0 mm high, 25 mm long
    height, line = height_on_centroid_slice(mask, (0.5, 0.5))
    assert height == pytest.approx(6.0, abs=0.25 * 0.5)
    assert line.slice_index == 1
    (r0, c0), (r1, c1) = line.points_rc
    assert abs(r1 - r0) * 0.5 == pytest.approx(height, abs=1e-6)
    assert c0 == pytest.approx(c1) and c0 == pytest.approx(34.5, abs=0.5)


@pytest.mark.parametrize("angle", [10.0, 25.0, 40.0])
def test_height_of_tilted_disc_is_within_half_a_pixel(angle):
    t = np.deg2rad(angle)
    rr, cc = np.mgrid[0:160, 0:160].astype(float)
    u = (rr - 80) * np.cos(t) + (cc - 80) * np.sin(t)
    v = -(rr - 80) * np.sin(t) + (cc - 80) * np.cos(t)
    plane = (np.abs(u) <= 6.0) & (np.abs(v) <= 30.0)  # 12 px high
    height, _ = height_on_centroid_slice(plane[None], (1.0, 1.0))
    assert height == pytest.approx(12.0, abs=0.5)


def test_height_uses_centroid_slice():
    mask = np.zeros((5, 40, 40), bool)
    mask[1, 10:30, 5:35] = True
    mask[2, 15:20, 5:35] = True  # centroid slice (weighted): round(1.2) = 1
    height, line = height_on_centroid_slice(mask, (1.0, 1.0))
    assert line.slice_index == 1
    assert height == pytest.approx(20.0, abs=0.25)


def test_measure_structure_on_phantom_disc_matches_truth():
    from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid

    phantom = make_spine_phantom(3)
    grid = sagittal_grid(15, 256, 256, 1.2, 4.0)
    _, labels = render_phantom(phantom, grid, "T2", subplanes=1)
    for name in ("L3L4", "L4L5", "L3"):
        e = phantom.element(name)
        m = measure_structure(labels == e.label, grid.affine, structure_by_name(name))
        assert m.height_mm == pytest.approx(e.height_mm, abs=1.2)  # one pixel
        assert m.volume_cm3 == pytest.approx(e.volume_cm3, rel=0.08)
        assert m.centroid_lps_mm == pytest.approx(e.centre_lps, abs=2.0)


def test_height_ignores_a_stray_fragment_on_the_centroid_slice():
    from spinegate.biomech.morphometry import height_on_centroid_slice

    mask = np.zeros((3, 80, 80), bool)
    mask[:, 20:40, 10:60] = True  # a 20 × 50 pixel box on every slice
    clean, _ = height_on_centroid_slice(mask, (1.0, 1.0))
    mask[1, 50:53, 30:33] = True  # a 3 × 3 fragment 10 pixels below it
    with_fragment, line = height_on_centroid_slice(mask, (1.0, 1.0))
    assert with_fragment == pytest.approx(clean) and line.slice_index == 1
