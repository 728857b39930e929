"""Axial slice → level assignment, on the phantom's exact centroids."""
import numpy as np
import pytest

from spinegate.biomech.axial_levels import disc_midplane_slices, levels_from_centroids, levels_from_disc_order
from spinegate.dicom_io.phantom.paraspinal import axial_grid
from spinegate.dicom_io.phantom import make_spine_phantom


@pytest.fixture(scope="module")
def spine():
    ph = make_spine_phantom(4)
    cents = {e.name: e.centre_lps for e in ph.elements}
    top, bottom = cents["L1"][2] + 10, cents["S1"][2]
    grid = axial_grid(top, bottom, 4.0, 8, 8, 1.0)
    positions = np.array([grid.affine[:3, 3] + grid.affine[:3, 0] * k for k in range(grid.shape[0])])
    return ph, cents, positions


def test_each_slice_takes_the_structure_nearest_its_plane(spine):
    ph, cents, positions = spine
    levels = levels_from_centroids(positions, (0, 0, 1), cents)
    for lv in levels:
        assert lv is not None
        z = positions[lv.slice_index][2]
        nearest = min(cents, key=lambda k: abs(cents[k][2] - z))
        assert lv.structure == nearest and lv.distance_mm == pytest.approx(abs(cents[nearest][2] - z))
    # Slices run superior → inferior: the levels they pass go L1 … S1 in that order.
    order = [lv.structure for lv in levels]
    assert order[0] in ("L1", "T12L1") and order[-1] in ("S1", "L5S1")
    far = levels_from_centroids(positions + np.array([0, 0, 500.0]), (0, 0, 1), cents)
    assert all(lv is None for lv in far)
    with pytest.raises(ValueError, match="empty"):
        levels_from_centroids(positions, (0, 0, 1), {})


def test_disc_midplane_slice_is_nearest_the_disc_centroid_even_with_one_slice_per_level(spine):
    ph, cents, positions = spine
    mid = disc_midplane_slices(positions, (0, 0, 1), cents, 4.0)
    assert set(mid) == {"L1L2", "L2L3", "L3L4", "L4L5", "L5S1"}
    for disc, lv in mid.items():
        assert lv.distance_mm <= 2.0 + 1e-9  # within half the 4 mm spacing
    # A T2 series with one slice through each lumbar disc centre.
    per_disc = np.array([cents[d] for d in ("L1L2", "L2L3", "L3L4", "L4L5", "L5S1")]) + np.array([5.0, -3.0, 0.4])
    mid1 = disc_midplane_slices(per_disc, (0, 0, 1), cents, 30.0)
    assert {d: lv.slice_index for d, lv in mid1.items()} == {"L1L2": 0, "L2L3": 1, "L3L4": 2, "L4L5": 3, "L5S1": 4}


def test_without_sagittal_series_discs_are_counted_up_from_the_lowest():
    present = [False, True, True, False, False, True, False, False, True, True, True, False]
    assert levels_from_disc_order(present) == {9: "L5S1", 5: "L4L5", 2: "L3L4"}
    assert levels_from_disc_order([False, False]) == {}


def test_axial_disc_runs_and_where_they_disagree_with_the_sagittal_discs():
    from spinegate.biomech.axial_levels import disc_runs_mm, level_disagreements

    heights = np.arange(0.0, 40.0, 4.0)  # 10 slices, 4 mm apart
    present = [False, True, True, False, False, False, False, True, False, False]
    assert disc_runs_mm(heights, present, 4.0) == [6.0, 28.0]
    # L4L5 at 6 mm agrees; L3L4 at 36 mm has its nearest axial disc 8 mm away; T12L1 lies outside the stack.
    sagittal = {"L4L5": 6.0, "L3L4": 36.0, "T12L1": 90.0}
    assert level_disagreements(heights, present, sagittal, 4.0) == {"L3L4": 8.0}
    assert level_disagreements(heights, [False] * 10, {"L4L5": 6.0}, 4.0) == {"L4L5": float("inf")}
    # One slice per disc level, slices far apart: runs are single slices, the tolerance grows with the spacing.
    assert level_disagreements([0.0, 30.0], [True, True], {"L4L5": 8.0, "L3L4": 31.0}, 30.0) == {}
