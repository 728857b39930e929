"""Per-level muscle measurements on synthetic stacks with exact answers."""
from __future__ import annotations

import numpy as np
import pytest

from spinegate.biomech.axial_measurements import (
    FLAG_LEVELS_FROM_AXIAL,
    FLAG_NO_DISC_ON_MIDPLANE,
    FLAG_SMALL_SECTION,
    AxialGeometry,
    axial_spine_labels,
    disc_centroids_from_axial,
    measure_muscles,
    model_acsa_cm2,
    nearest_disc_levels,
)
from spinegate.dicom_io.levels import structure_by_name

PIXEL_MM = 0.5
SLICE_MM = 4.0
N, ROWS, COLS = 21, 80, 100
# Discs at z = 40 (L3L4) and z = 0 (L4L5); slices from z = 40 down to -40.
DISCS = {"L3L4": np.array([0.0, 0.0, 40.0]), "L4L5": np.array([0.0, 0.0, 0.0])}


def _geometry(z: np.ndarray | None = None) -> AxialGeometry:
    z = np.arange(N) * -SLICE_MM + 40.0 if z is None else z
    positions = np.stack([np.full_like(z, -25.0), np.full_like(z, -20.0), z], axis=1)
    # Rows run posterior (+y), columns toward patient left (+x).
    return AxialGeometry(positions, (0, PIXEL_MM, 0), (PIXEL_MM, 0, 0))


def _box(n: int, r0: int, r1: int, c0: int, c1: int, slices=slice(None)) -> np.ndarray:
    m = np.zeros((n, ROWS, COLS), bool)
    m[slices, r0:r1, c0:c1] = True
    return m


def test_levels_are_the_nearest_disc_with_the_side_of_the_slice():
    g = _geometry()
    levels = nearest_disc_levels(g, DISCS)
    assert levels[0] == ("L3L4", 0.0)
    assert levels[5][0] == "L3L4" and levels[5][1] == pytest.approx(-20.0)  # tie at 20 mm: first disc wins
    assert levels[6] == ("L4L5", pytest.approx(16.0))
    assert levels[10] == ("L4L5", 0.0)
    assert levels[20] is None  # 40 mm below the lowest disc


def test_axial_bodies_and_discs_are_named_by_level():
    g = _geometry()
    vb = _box(N, 10, 30, 40, 60)
    disc = np.zeros_like(vb)
    disc[10, 10:30, 40:60], vb[10] = True, False
    labels = axial_spine_labels(g, vb, disc, nearest_disc_levels(g, DISCS))
    assert labels[10, 20, 50] == structure_by_name("L4L5").label
    assert labels[8, 20, 50] == structure_by_name("L4").label  # 8 mm above L4L5
    assert labels[12, 20, 50] == structure_by_name("L5").label  # below it
    assert labels[3, 20, 50] == structure_by_name("L4").label  # 12 mm below L3L4
    assert labels[20].max() == 0


def test_csa_rcsa_volume_asymmetry_and_centroid_are_exact():
    g = _geometry()
    right = _box(N, 40, 60, 10, 30)  # 20 × 20 px = 100 mm² = 1 cm² on every slice
    left = _box(N, 40, 60, 60, 90)  # 20 × 30 px = 1.5 cm²
    disc = _box(N, 10, 30, 40, 60, slices=[0, 10])  # 1 cm² at both mid-planes
    sliver = _box(N, 62, 70, 10, 30)  # 8 × 20 px = 0.4 cm²: mostly border pixels
    out = measure_muscles(g, {"MF_R": right, "MF_L": left, "QL_R": sliver}, disc, DISCS)
    by = {(m.muscle.name, m.level.name): m for m in out}
    r = by[("MF_R", "L4L5")]
    assert r.csa_midplane_cm2 == pytest.approx(1.0) and r.csa_mean_cm2 == pytest.approx(1.0)
    assert FLAG_SMALL_SECTION not in r.flags and FLAG_SMALL_SECTION in by[("QL_R", "L4L5")].flags
    assert r.rcsa == pytest.approx(1.0)
    assert by[("MF_L", "L4L5")].rcsa == pytest.approx(1.5)
    assert r.asymmetry == pytest.approx((1.0 - 1.5) / 1.25) == by[("MF_L", "L4L5")].asymmetry
    # L4L5 holds slices 6..16 (z 16 .. -24, within 25 mm): 11 slices × 1 cm² × 0.4 cm.
    assert r.n_slices == 11 and r.volume_ml == pytest.approx(4.4)
    assert r.slice_index == 10
    # Centre of rows 40..59, columns 10..29: (49.5, 19.5) px from (-25, -20).
    assert np.allclose(r.centroid_lps_mm, [-25 + 19.5 * PIXEL_MM, -20 + 49.5 * PIXEL_MM, 0.0])
    assert [k for k, _, _ in r.per_slice] == list(range(6, 17))


def test_fat_infiltration_and_dixon_fat_fraction_are_exact():
    g = _geometry()
    masks = {name: _box(N, 40, 60, c, c + 20) for name, c in (("MF_R", 0), ("MF_L", 25), ("ES_R", 50), ("ES_L", 75))}
    image = np.full((N, ROWS, COLS), 100.0)
    water = np.full((N, ROWS, COLS), 90.0)
    fat = np.full((N, ROWS, COLS), 10.0)
    # A quarter of the right multifidus is fat: bright on T1/T2, fat-dominant on Dixon.
    image[:, 40:45, 0:20] = 400.0
    water[:, 40:45, 0:20], fat[:, 40:45, 0:20] = 10.0, 90.0
    for name, mask in masks.items():  # give every muscle a second mode so Otsu has one to find
        if name != "MF_R":
            rows = np.argwhere(mask[0])[:, 0].min()
            image[:, rows : rows + 2, :][mask[:, rows : rows + 2, :]] = 400.0
    disc = _box(N, 10, 30, 40, 60, slices=[10])
    out = {(m.muscle.name, m.level.name): m for m in measure_muscles(g, masks, disc, DISCS, image=image)}
    assert out[("MF_R", "L4L5")].fat_infiltration == pytest.approx(0.25)
    assert out[("ES_L", "L4L5")].fat_infiltration == pytest.approx(0.10)
    dixon = {(m.muscle.name, m.level.name): m for m in measure_muscles(g, masks, disc, DISCS, water=water, fat=fat)}
    # The fat band lies along the muscle's edge: its rim row, read from the row inside, still counts.
    assert dixon[("MF_R", "L4L5")].fat_fraction == pytest.approx(0.25 * 0.9 + 0.75 * 0.1)
    assert dixon[("MF_R", "L4L5")].fat_infiltration is None


def test_one_slice_per_disc_level_gives_midplane_csa_but_no_volume():
    g = _geometry(np.array([40.0, 0.0]))
    mask = np.zeros((2, ROWS, COLS), bool)
    mask[:, 40:60, 10:30] = True
    disc = np.zeros_like(mask)
    disc[0, 10:30, 40:60] = True  # the L4L5 slice shows no disc
    out = {m.level.name: m for m in measure_muscles(g, {"MF_R": mask}, disc, DISCS)}
    assert set(out) == {"L3L4", "L4L5"}
    assert out["L3L4"].csa_midplane_cm2 == pytest.approx(1.0) and out["L3L4"].volume_ml is None
    assert out["L3L4"].rcsa == pytest.approx(1.0)
    assert out["L4L5"].rcsa is None and FLAG_NO_DISC_ON_MIDPLANE in out["L4L5"].flags


def test_without_sagittal_series_discs_are_counted_up_from_the_lowest():
    g = _geometry()
    disc = np.zeros((N, ROWS, COLS), bool)
    for k in (1, 2, 3, 11, 12, 13):  # two runs of disc sections
        disc[k, 10:30, 40:60] = True
    named = disc_centroids_from_axial(g, disc)
    assert set(named) == {"L5S1", "L4L5"}
    assert named["L5S1"][2] == pytest.approx(40.0 - 12 * SLICE_MM)
    assert named["L4L5"][2] == pytest.approx(40.0 - 2 * SLICE_MM)
    mask = _box(N, 40, 60, 10, 30)
    out = measure_muscles(g, {"MF_R": mask}, disc, named, flags=(FLAG_LEVELS_FROM_AXIAL,))
    assert {m.level.name for m in out} == {"L4L5", "L5S1"}
    assert all(FLAG_LEVELS_FROM_AXIAL in m.flags for m in out)


def test_model_input_is_the_largest_level_mean_per_group_and_side():
    g = _geometry()
    small = _box(N, 40, 50, 10, 30, slices=slice(0, 6))
    big = _box(N, 40, 60, 10, 30, slices=slice(6, 16))
    mask = small | big
    out = measure_muscles(g, {"ES_R": mask}, np.zeros_like(mask), DISCS)
    assert model_acsa_cm2(out) == {("erector_spinae", "r"): pytest.approx(1.0)}


def test_one_slice_per_disc_without_sagittal_series_names_every_disc():
    z = np.array([40.0, 0.0, -40.0])  # 40 mm apart: every slice is its own run
    g = _geometry(z)
    disc = np.zeros((3, ROWS, COLS), bool)
    disc[:, 10:30, 40:60] = True
    named = disc_centroids_from_axial(g, disc)
    assert {k: round(float(v[2])) for k, v in named.items()} == {"L5S1": -40, "L4L5": 0, "L3L4": 40}
