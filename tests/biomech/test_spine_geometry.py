"""Spine geometry from centroids: exact frames, flags, rejection."""
from __future__ import annotations

import numpy as np
import pytest

from spinegate.biomech.spine_geometry import CHAIN, GeometryError, robust_spine_geometry, spine_geometry


def straight_spine(tilt_deg: float = 0.0, step_mm: float = 20.0) -> dict:
    """Centroids on a straight line in LPS, climbing `step_mm` per structure,
    tilted anteriorly (−y) by `tilt_deg` from the S-I axis."""
    t = np.radians(tilt_deg)
    direction = np.array([0.0, -np.sin(t), np.cos(t)])
    return {name: np.array([3.0, 10.0, -100.0]) + direction * step_mm * i for i, name in enumerate(CHAIN)}


def test_straight_spine_is_stood_upright_with_l5s1_at_the_origin():
    g = spine_geometry(straight_spine(tilt_deg=30.0))
    np.testing.assert_allclose(g.point("L5S1"), [0, 0], atol=1e-12)
    np.testing.assert_allclose(g.point("T12L1"), [0, 0.2], atol=1e-12)  # 10 steps of 20 mm, vertical
    np.testing.assert_allclose(g.disc_axis("L3L4"), [0, 1], atol=1e-12)
    assert g.lordosis_deg == pytest.approx(0.0, abs=1e-9)
    assert g.flags == ()


def test_lordosis_and_sacral_slope_are_measured_from_the_disc_axes():
    # Bend the chain at L3 by 40° in total: lower half tilted anteriorly.
    pts = {}
    p = np.zeros(3)
    for i, name in enumerate(CHAIN):
        angle = np.radians(20.0 if i < 6 else -20.0)  # cranial direction, anterior tilt
        pts[name] = p.copy()
        p = p + 20.0 * np.array([0.0, -np.sin(angle), np.cos(angle)])
    g = spine_geometry(pts)
    assert g.lordosis_deg == pytest.approx(40.0, abs=1e-6)
    assert g.sacral_slope_deg == pytest.approx(20.0, abs=1e-6)  # T12L1 above L5S1 keeps the symmetry


def test_missing_levels_are_interpolated_inside_and_extrapolated_at_the_ends():
    pts = straight_spine()
    for name in ("S1", "L3", "T12L1", "T12"):
        pts.pop(name)
    g = spine_geometry(pts)
    assert set(g.flags) == {"level_extrapolated_S1", "level_interpolated_L3", "level_extrapolated_T12L1",
                            "level_extrapolated_T12"}
    np.testing.assert_allclose(g.point("T12L1"), [0, 0.2], atol=1e-12)
    np.testing.assert_allclose(g.point("L3") * 1000, [0, 100], atol=1e-9)  # 5 steps above L5S1


@pytest.mark.parametrize("mutate, message", [
    (lambda p: p.update(L3=p["L4"] - np.array([0, 0, 5.0])), "backwards|apart"),
    (lambda p: p.update(L2=p["L2"] + np.array([0, 0, 60.0])), "apart"),
    (lambda p: p.update(L3L4=p["L3L4"] + np.array([0, 25.0, 0])), "turns"),
    (lambda p: p.update(L3=np.array([np.nan, 0, 0])), "finite"),
])
def test_implausible_centroids_are_rejected_with_a_reason(mutate, message):
    pts = straight_spine()
    mutate(pts)
    with pytest.raises(GeometryError, match=message) as err:
        spine_geometry(pts)
    assert err.value.reason == "implausible_centroids"


def test_too_few_levels_is_its_own_reason():
    pts = {k: v for k, v in straight_spine().items() if k in ("L3", "L3L4")}
    with pytest.raises(GeometryError) as err:
        spine_geometry(pts)
    assert err.value.reason == "too_few_levels"


@pytest.mark.parametrize("mutate, left_out", [
    # the field's failures: a sliver of S1 and a thin L5S1 disc at the bottom edge of the field of view
    (lambda p: p.update(L5S1=p["L5S1"] + np.array([0, -25.0, 0])), ("L5S1",)),
    (lambda p: p.update(L4L5=p["L4L5"] + np.array([0, 25.0, 0])), ("L4L5",)),
    (lambda p: p.update(T12L1=p["L1"] + np.array([0, 0, 5.0])), ("T12L1",)),  # 5 mm above L1
    (lambda p: p.update(L3=np.array([np.nan, 0, 0])), ("L3",)),
    (lambda p: p.update(S1=p["S1"] + np.array([0, -50.0, 0]), L5S1=p["L5S1"] + np.array([0, -25.0, 8.0])),
     ("S1", "L5S1")),
])
def test_one_or_two_bad_centroids_are_left_out_flagged_and_interpolated(mutate, left_out):
    pts = straight_spine()
    mutate(pts)
    g = robust_spine_geometry(pts)
    assert [f for f in g.flags if f.startswith("centroid_not_used")] == [
        f"centroid_not_used_{n}_off_the_chain" for n in left_out]
    for n in left_out:
        assert any(f in g.flags for f in (f"level_interpolated_{n}", f"level_extrapolated_{n}"))
    np.testing.assert_allclose(g.point("T12L1"), [0, 0.2], atol=1e-9)  # the straight spine is recovered


def test_distrusted_centroids_are_left_out_with_their_reason_while_enough_remain():
    pts = straight_spine()
    pts["L2L3"] = pts["L2L3"] + np.array([0, 4.0, 0])  # plausible, but cut by the field of view
    g = robust_spine_geometry(pts, {"L2L3": "field_of_view_edge", "T99": "implausibly_small"})
    assert g.flags[0] == "centroid_not_used_L2L3_field_of_view_edge"
    assert "level_interpolated_L2L3" in g.flags and len(g.flags) == 2
    few = {k: v for k, v in pts.items() if k in ("L3", "L3L4", "L4")}
    kept = robust_spine_geometry(few, {"L4": "implausibly_small"})  # too few without it: used after all
    assert not [f for f in kept.flags if f.startswith("centroid_not_used")]


def test_a_spine_that_no_two_left_out_centroids_make_plausible_is_still_refused():
    pts = straight_spine()
    for i, name in enumerate(CHAIN):
        if i % 2:
            pts[name] = pts[name] + np.array([0, -30.0, 0])  # zig-zag: every step turns
    with pytest.raises(GeometryError) as err:
        robust_spine_geometry(pts)
    assert err.value.reason == "implausible_centroids"
