"""The phantom's paraspinal muscles: level-dependent sizes as anatomy has
them (also as rendered: no muscle cut off by the trunk), fascia between
muscles, left/right asymmetry, exact fat truth, and an unchanged sagittal
rendering when no muscles are asked for."""
import numpy as np
import pytest

from spinegate.dicom_io.phantom.paraspinal import (
    BLOB_FAT_FRACTION,
    FASCIA_FAT_FRACTION,
    LEAN_FAT_FRACTION,
    MUSCLE_LABELS,
    axial_grid,
    make_paraspinal_anatomy,
    muscle_field,
    slice_muscle_truth,
)
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, render_phantom_weightings


@pytest.fixture(scope="module")
def subject():
    ph = make_spine_phantom(3)
    an = make_paraspinal_anatomy(3)
    return ph, an, muscle_field(ph, an)


def _area_mm2(field, z, label, spacing=0.5):
    xs = np.arange(-120, 120, spacing)
    ys = np.arange(-80, 140, spacing)
    xx, yy = np.meshgrid(xs, ys, indexing="ij")
    p = np.stack([xx, yy, np.full_like(xx, z)], -1)
    lab, _ = field(p)
    return float((lab == label).sum()) * spacing**2


def test_muscle_sizes_change_with_level_like_anatomy(subject):
    ph, an, field = subject
    z = {n: ph.element(n).centre_lps[2] for n in ("L1", "L3", "L5", "S1")}
    for side in "RL":
        pm = [_area_mm2(field, z[n], MUSCLE_LABELS[("PM", side)]) for n in ("L1", "L3", "L5")]
        mf = [_area_mm2(field, z[n], MUSCLE_LABELS[("MF", side)]) for n in ("L1", "L3", "L5")]
        es = [_area_mm2(field, z[n], MUSCLE_LABELS[("ES", side)]) for n in ("L1", "L3", "L5", "S1")]
        assert pm[0] < pm[1] < pm[2] and mf[0] < mf[1] < mf[2]  # grow caudally
        assert es[1] > es[2] > es[3]  # shrink toward S1
        assert _area_mm2(field, z["L3"], MUSCLE_LABELS[("QL", side)]) > 100
        assert _area_mm2(field, z["S1"], MUSCLE_LABELS[("QL", side)]) == 0  # no QL below L5
    right = _area_mm2(field, z["L3"], MUSCLE_LABELS[("ES", "R")])
    left = _area_mm2(field, z["L3"], MUSCLE_LABELS[("ES", "L")])
    # Asymmetry as drawn (area ∝ size²; the multifidus overlaps the erector's medial edge a little).
    assert right / left == pytest.approx(an.size[("ES", "R")] ** 2 / an.size[("ES", "L")] ** 2, rel=0.06)


def _rendered_cm2(ph, field, level):
    z = ph.element(level).centre_lps[2]
    grid = axial_grid(z + 0.5, z - 0.5, 1.0, 240, 240, 1.0, centre_xy_mm=(0.0, field.view_centre_y_mm()))
    _, lab = render_phantom(ph, grid, Weighting.T1, subplanes=1, muscles=field)
    return {key: float((lab[0] == v).sum()) / 100.0 for key, v in MUSCLE_LABELS.items()}


def test_rendered_muscles_keep_their_anatomical_sizes_down_to_s1(subject):
    # The back follows the spine: where lordosis carries the spine backwards
    # the multifidus is not cut off by the trunk, and it keeps growing.
    ph, an, field = subject
    levels = ("L1", "L2", "L3", "L4", "L5", "S1")
    areas = {n: _rendered_cm2(ph, field, n) for n in levels}
    for side in "RL":
        mf = [areas[n][("MF", side)] for n in levels]
        assert all(b > a for a, b in zip(mf[:-2], mf[1:-1])) and mf[-1] > 5.0, mf  # grows to L5, large at S1
        es = [areas[n][("ES", side)] for n in levels]
        assert 14.0 < max(es[:3]) < 26.0, es  # adult erector spinae (maximal CSA ~20 cm² a side)
        assert es[3] > es[4] > es[5], es


@pytest.mark.parametrize("fascia_fat_fraction", [FASCIA_FAT_FRACTION, 0.2])
def test_a_fascia_sheet_separates_multifidus_from_erector_spinae(subject, fascia_fat_fraction):
    ph, _, _ = subject
    field = muscle_field(ph, make_paraspinal_anatomy(3, fascia_fat_fraction=fascia_fat_fraction))
    z = ph.element("L3").centre_lps[2]
    xs = np.arange(0.0, 80.0, 0.1)  # patient left, along the line through the multifidus centre
    lab_line = None
    for y in np.arange(-20, 120, 0.5):  # the row where the multifidus is widest
        lab, ff = field(np.stack([xs, np.full_like(xs, y), np.full_like(xs, z)], -1))
        mf = np.flatnonzero(lab == MUSCLE_LABELS[("MF", "L")])
        if mf.size and (lab_line is None or mf.size > lab_line[0].size):
            lab_line = (mf, lab, ff)
    mf, lab, ff = lab_line
    lateral = mf.max()  # last multifidus sample toward the erector spinae
    gap = np.flatnonzero(lab[lateral + 1:] != 0)[0]  # samples until the next muscle
    assert lab[lateral + 1 + gap] == MUSCLE_LABELS[("ES", "L")]
    assert 0.5 <= gap * 0.1 <= 1.3  # ~1 mm of fascia
    assert np.all(ff[lateral + 1:lateral + 1 + gap] == np.float32(fascia_fat_fraction))


def test_fat_fraction_truth_is_the_blob_mixture(subject):
    ph, an, field = subject
    z = ph.element("L3").centre_lps[2]
    xs, ys = np.meshgrid(np.arange(-120, 120, 0.5), np.arange(-80, 140, 0.5), indexing="ij")
    lab, ff = field(np.stack([xs, ys, np.full_like(xs, z)], -1))
    for key, label in MUSCLE_LABELS.items():
        inside = lab == label
        if inside.sum() < 400:
            continue
        assert set(np.unique(ff[inside])) <= {np.float32(LEAN_FAT_FRACTION), np.float32(BLOB_FAT_FRACTION)}
        # One slice holds only part of the blob pattern: its share is near the subject's.
        share = float((ff[inside] == np.float32(BLOB_FAT_FRACTION)).mean())
        assert share == pytest.approx(an.blob_share[key], abs=0.15), key


def test_axial_render_holds_every_muscle_and_sagittal_render_is_unchanged(subject):
    ph, an, field = subject
    z3 = ph.element("L3").centre_lps[2]
    grid = axial_grid(z3 + 2, z3 - 2, 4.0, 160, 160, 1.2)
    img, lab = render_phantom(ph, grid, Weighting.T1, subplanes=1, muscles=field)
    assert set(MUSCLE_LABELS.values()) <= set(np.unique(lab).tolist())
    from spinegate.dicom_io.levels import structure_by_name

    assert structure_by_name("L3").label in np.unique(lab)  # the L3 body
    from spinegate.dicom_io.phantom import sagittal_grid

    sag = sagittal_grid(3, 64, 64, 4.0, 4.0)
    a, la = render_phantom(ph, sag, Weighting.T2, subplanes=1)
    b, lb = render_phantom(ph, sag, Weighting.T2, subplanes=1, muscles=None)
    assert np.array_equal(a, b) and np.array_equal(la, lb) and la.max() < 41


def test_weightings_rendered_together_are_those_rendered_alone(subject):
    """One evaluation of the geometry for a study's series on one grid gives
    each weighting's image pixel for pixel, noise included (its own stream)."""
    ph, an, field = subject
    z3 = ph.element("L3").centre_lps[2]
    grid = axial_grid(z3 + 6, z3 - 6, 4.0, 96, 96, 2.0)
    weightings = (Weighting.T1, Weighting.T2, Weighting.WATER, Weighting.FAT)
    images, labels = render_phantom_weightings(ph, grid, weightings, subplanes=2, muscles=field, seed=3)
    assert set(images) == set(weightings)
    for w in weightings:
        alone, alone_labels = render_phantom(ph, grid, w, subplanes=2, muscles=field, seed=3)
        assert np.array_equal(images[w], alone) and np.array_equal(labels, alone_labels), w
    assert not np.array_equal(images[Weighting.T1], images[Weighting.T2])
    with pytest.raises(ValueError, match="the phantom renders"):
        render_phantom_weightings(ph, grid, (Weighting.T1, Weighting.OTHER), muscles=field)


def test_axial_grid_runs_superior_to_inferior():
    g = axial_grid(10.0, -10.0, 4.0, 8, 8, 1.0)
    assert g.shape == (6, 8, 8)
    assert g.affine[2, 0] == -4.0 and g.affine[2, 3] == 10.0
    with pytest.raises(ValueError, match="above"):
        axial_grid(-10.0, 10.0)


def test_axial_phantom_study_shares_the_frame_of_reference_and_carries_truth(tmp_path):
    import pydicom

    from spinegate.dicom_io.phantom.study import write_axial_phantom_study

    truth = write_axial_phantom_study(tmp_path, seed=5, rows=96, columns=96, pixel_spacing_mm=2.0,
                                      slice_spacing_mm=8.0, sagittal=True, dixon=True)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in truth["files"]]
    assert {h.FrameOfReferenceUID for h in headers} == {headers[0].FrameOfReferenceUID}
    assert {h.SeriesDescription for h in headers} == {"SAG T1 TSE", "SAG T2 TSE", "AX T1 TSE", "AX T2 TSE",
                                                      "AX DIXON W", "AX DIXON F"}
    axial = [h for h in headers if h.SeriesDescription.startswith("AX T")]
    assert [round(float(v), 6) for v in axial[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    slices = truth["axial"]
    assert len(slices) * 2 == len(axial)
    mid = slices[len(slices) // 2]["muscles"]
    assert {"MF_R", "MF_L", "ES_R", "ES_L", "PM_R", "PM_L"} <= set(mid)
    for m in mid.values():
        assert m["csa_cm2"] > 0 and 0.02 - 1e-6 <= m["fat_fraction"] <= 0.9 + 1e-6
        assert m["fat_fraction"] == pytest.approx(0.02 + 0.88 * m["fat_area_share"], abs=1e-5)


def test_dixon_water_and_fat_images_give_the_true_fat_fraction(subject):
    from spinegate.biomech.muscle_morphometry import fat_fraction

    ph, an, field = subject
    z3 = ph.element("L3").centre_lps[2]
    grid = axial_grid(z3 + 1, z3 - 1, 2.0, 160, 160, 1.2, slice_thickness_mm=0.5)
    water, lab = render_phantom(ph, grid, Weighting.WATER, subplanes=1, muscles=field, noise_fraction=1e-4,
                                bias_fraction=0.0)
    fat, _ = render_phantom(ph, grid, Weighting.FAT, subplanes=1, muscles=field, noise_fraction=1e-4,
                            bias_fraction=0.0)
    _, ff = field(grid.slice_centres_lps(0))
    for key, label in MUSCLE_LABELS.items():
        inside = lab[0] == label
        if inside.sum() < 50:
            continue
        truth = float(ff[inside].mean())
        assert fat_fraction(water[0].astype(float), fat[0].astype(float), inside) == pytest.approx(truth, abs=0.005), key


def test_the_slab_truth_is_the_fat_a_thick_slice_images(subject):
    """On 5 mm slices the fat of the muscle across the slab is what the
    pixels hold: read with the border from the interior, the exact label
    map gives it to 0.003 on average and within 0.02 for every section of
    >= 1 cm² (read whole, 0.006; against the centre plane's fat, 0.005)."""
    from spinegate.biomech.muscle_morphometry import fat_fraction

    ph, _, field = subject
    z4, z1 = ph.element("L4").centre_lps[2], ph.element("L1").centre_lps[2]
    grid = axial_grid(z1, z4, 10.0, 224, 224, 0.8, centre_xy_mm=(0.0, field.view_centre_y_mm()), slice_thickness_mm=5.0)
    kw = dict(subplanes=3, muscles=field, noise_fraction=1e-4, bias_fraction=0.0)
    water, lab = render_phantom(ph, grid, Weighting.WATER, **kw)
    fat, _ = render_phantom(ph, grid, Weighting.FAT, **kw)
    errors = []
    for k in range(grid.shape[0]):
        truth = slice_muscle_truth(field, grid, lab, k, subplanes=3)
        for name, t in truth.items():
            inside = lab[k] == MUSCLE_LABELS[tuple(name.split("_"))]
            assert t["csa_cm2"] == pytest.approx(inside.sum() * 0.64 / 100)
            assert t["fat_fraction"] == pytest.approx(0.02 + 0.88 * t["fat_area_share"], abs=1e-5)
            if t["csa_cm2"] >= 1.0:
                measured = fat_fraction(water[k].astype(float), fat[k].astype(float), inside, border_px=1)
                errors.append(abs(measured - t["fat_fraction"]))
    assert len(errors) >= 80 and np.mean(errors) <= 0.004 and max(errors) <= 0.02, (np.mean(errors), max(errors))


def test_multifidus_scale_scales_only_the_multifidi(subject):
    ph, an, field = subject
    scaled = make_paraspinal_anatomy(3, multifidus_scale=1.3)
    assert scaled.blob_share == an.blob_share
    for key, factor in an.size.items():
        assert scaled.size[key] == pytest.approx(factor * (1.3 if key[0] == "MF" else 1.0))
    z = ph.element("L3").centre_lps[2]
    key = MUSCLE_LABELS[("MF", "R")]
    # Area grows with the square of the scale (the ellipse is painted over its neighbour).
    ratio = _area_mm2(muscle_field(ph, scaled), z, key) / _area_mm2(field, z, key)
    assert ratio == pytest.approx(1.3**2, rel=0.03)
    with pytest.raises(ValueError, match="multifidus_scale 0.1 is outside"):
        make_paraspinal_anatomy(3, multifidus_scale=0.1)
    with pytest.raises(ValueError, match="fascia_fat_fraction 1.5 is outside"):
        make_paraspinal_anatomy(3, fascia_fat_fraction=1.5)
