"""The axial path through the pipeline on a held-out phantom study (never
trained on): CSA and fat fraction from the network against the exact truth,
level assignment, SEG and SR, and every bad axial input handled with a
stated reason."""
from __future__ import annotations

import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from spinegate.biomech.axial_measurements import FLAG_SMALL_SECTION
from conftest import dciodvfy_errors
from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.muscles import MUSCLE_GROUPS
from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.service.config import OutputsConfig, load_config
from spinegate.service.pipeline import analyze_study

pytestmark = pytest.mark.heavy(seconds=200)

RULES = load_config(environ={}).routing
# Neither the loads nor the key images and PDF are under test here: off, to save the suite's time.
FAST = {"biomechanics": False, "outputs": OutputsConfig(key_images=False, pdf_report=False)}
SEED = 1000  # inference.training.train_axial.VALIDATION_PHANTOM_SEEDS
CSA_TOL = 0.05  # relative, level mean, muscles of >= 2 cm² (issue 3's figure)
FF_TOL = 0.03  # absolute Dixon fat fraction (issue 3's figure)
# What the committed INT8 model reaches on the two held-out subjects below
# (docs/models.md, "The axial model"), with a little room.
CSA_MEAN_MAX, CSA_WITHIN_MIN, CSA_WORST_MAX = 0.025, 0.85, 0.10
FF_MEAN_MAX, FF_WITHIN_MIN, FF_WORST_MAX = 0.012, 0.95, 0.10


@pytest.fixture(scope="module")
def axial_study(tmp_path_factory):
    from spinegate.dicom_io.phantom.study import write_axial_phantom_study

    out = tmp_path_factory.mktemp("axial_study")
    truth = write_axial_phantom_study(out, seed=SEED, rows=256, columns=256, pixel_spacing_mm=0.8, dixon=True,
                                      study=StudyInfo(uid_seed="axial-pipeline"))
    truth["by_series"] = {n: sorted(p for p in truth["files"] if p.name.startswith(f"{n:03d}_")) for n in range(2, 8)}
    return truth


@pytest.fixture(scope="module")
def analysed(axial_study, engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("axial_out")
    result = analyze_study(axial_study["files"], engines, RULES, out)
    return result, json.loads(result.measurements_path.read_text())


def _series(doc, description):
    return next(s for s in doc["series"] if s["description"] == description)


def _truth_slices(truth, measured):
    """The truth entries of a muscle-level's slices, matched by position
    (the service orders slices along the stack normal, the writer did not)."""
    z = np.array([t["z_mm"] for t in truth["axial"]])
    return [int(np.argmin(np.abs(z - x["centroid_lps_mm"][2]))) for x in measured["slices"]]


def _truth_mean(truth, name, slices, key):
    values = [truth["axial"][k]["muscles"].get(name, {}) for k in slices]
    if key == "csa_cm2":
        return float(np.mean([v.get("csa_cm2", 0.0) for v in values]))
    area = np.array([v.get("csa_cm2", 0.0) for v in values])
    return float(np.sum(area * np.array([v.get(key, 0.0) for v in values])) / area.sum())


def _accuracy(doc, truth):
    """Errors against the exact truth over the same slices: level-mean CSA
    (relative, every muscle-level of >= 2 cm², T1, T2 and Dixon water) and
    per muscle, Dixon fat fraction and thresholded fat infiltration
    (absolute, every muscle-level not flagged as a section under 1 cm²,
    where partial volume dominates; those flagged are truly that small)."""
    csa_errors, fi_errors, small_ff_errors = [], [], []
    by_muscle: dict[str, list[float]] = {}
    ff_by_muscle: dict[str, list[float]] = {}
    for description in ("AX T1 TSE", "AX T2 TSE", "AX DIXON W"):
        s = _series(doc, description)
        assert s["error"] is None and s["muscles"], s
        assert {m["level"] for m in s["muscles"]} >= {"L1L2", "L2L3", "L3L4", "L4L5", "L5S1"}
        n_before = len(csa_errors)
        for m in s["muscles"]:
            slices = _truth_slices(truth, m)
            area = _truth_mean(truth, m["muscle"], slices, "csa_cm2")
            if area >= 2.0:
                csa_errors.append(abs(m["csa_mean_cm2"] - area) / area)
                by_muscle.setdefault(m["muscle"], []).append(csa_errors[-1])
            small = FLAG_SMALL_SECTION in m["flags"]
            if small:
                assert area < 1.5, (m, area)
            if description == "AX DIXON W":
                error = abs(m["fat_fraction"] - _truth_mean(truth, m["muscle"], slices, "fat_fraction"))
                if small:
                    small_ff_errors.append(error)
                else:
                    ff_by_muscle.setdefault(m["muscle"], []).append(error)
            else:
                assert m["fat_fraction"] is None
                share = _truth_mean(truth, m["muscle"], slices, "fat_area_share")
                if m["fat_infiltration"] is not None and not small:
                    fi_errors.append(abs(m["fat_infiltration"] - share))
        assert len(csa_errors) - n_before >= 25, description
    per_muscle = {name: float(np.mean(e)) for name, e in sorted(by_muscle.items())}
    ff_per_muscle = {name: float(np.mean(e)) for name, e in sorted(ff_by_muscle.items())}
    csa, ff = np.array(csa_errors), np.concatenate([np.array(e) for e in ff_by_muscle.values()])
    print(f"CSA: mean {csa.mean():.3f}, median {np.median(csa):.3f}, max {csa.max():.3f}, "
          f"within 5 %: {np.mean(csa <= CSA_TOL):.2f}; per muscle { {k: round(v, 3) for k, v in per_muscle.items()} }; "
          f"FF: mean {ff.mean():.3f}, within 0.03: {np.mean(ff <= FF_TOL):.2f}, max {ff.max():.3f} "
          f"(sections under 1 cm²: {np.round(small_ff_errors, 3).tolist()}), per muscle "
          f"{ {k: round(v, 3) for k, v in ff_per_muscle.items()} }; "
          f"FI: median {np.median(fi_errors):.3f}")
    return csa, per_muscle, ff, ff_per_muscle, np.array(fi_errors)


def _assert_issue_3_accuracy(doc, truth):
    """What the calibrated model reaches on held-out subjects (docs/models.md, "The
    axial model"); the issue's figures are ≤ 5 % CSA and ≤ 0.03 fat fraction."""
    csa, per_muscle, ff, ff_per_muscle, fi = _accuracy(doc, truth)
    assert csa.mean() <= CSA_MEAN_MAX and np.mean(csa <= CSA_TOL) >= CSA_WITHIN_MIN and csa.max() <= CSA_WORST_MAX
    # Every muscle's mean error is within the issue's 5 % (at most 3.4 % here).
    assert max(per_muscle.values()) <= CSA_TOL, per_muscle
    assert ff.mean() <= FF_MEAN_MAX and np.mean(ff <= FF_TOL) >= FF_WITHIN_MIN and ff.max() <= FF_WORST_MAX
    assert max(ff_per_muscle.values()) <= FF_TOL, ff_per_muscle
    assert np.median(fi) <= 0.03 and fi.mean() <= 0.05


def test_network_csa_and_fat_fraction_against_the_truth(analysed, axial_study):
    _assert_issue_3_accuracy(analysed[1], axial_study)


def test_a_second_held_out_subject_on_another_grid(engines, tmp_path):
    """Seed 1001 (never trained on) at 0.7 mm pixels and 5 mm slices."""
    from spinegate.dicom_io.phantom.study import write_axial_phantom_study

    truth = write_axial_phantom_study(tmp_path / "in", seed=SEED + 1, rows=288, columns=288, pixel_spacing_mm=0.7,
                                      slice_spacing_mm=5.0, dixon=True, study=StudyInfo(uid_seed="axial-pipeline-2"))
    result = analyze_study(truth["files"], engines, RULES, tmp_path / "out", **FAST)
    _assert_issue_3_accuracy(json.loads(result.measurements_path.read_text()), truth)


def test_fat_image_is_paired_and_levels_come_from_the_sagittal_series(analysed):
    _, doc = analysed
    fat = _series(doc, "AX DIXON F")
    assert fat["skipped_reason"].startswith("dixon_fat_image_measured_with_water_series_")
    # The phantom's Rician noise: 0.03 of full scale, stored as 2000 / 1.1 (dicom_io.phantom.render_phantom).
    assert _series(doc, "AX DIXON W")["dixon_noise_sigma"] == pytest.approx(0.03 * 2000 / 1.1, rel=0.15)
    t2 = _series(doc, "AX T2 TSE")
    assert t2["dixon_noise_sigma"] is None
    assert not any(f.startswith("levels_from_axial") for f in t2["flags"])
    by = {(m["muscle"], m["level"]): m for m in t2["muscles"]}
    assert ("QL_R", "L5S1") not in by or by[("QL_R", "L5S1")]["csa_mean_cm2"] < 1.0  # QL ends at L5
    assert by[("PM_L", "L4L5")]["csa_mean_cm2"] > by[("PM_L", "L1L2")]["csa_mean_cm2"]  # psoas grows caudally
    for m in t2["muscles"]:
        if m["rcsa"] is not None:
            # 0: the muscle is absent on the mid-plane slice; large where a straight
            # axial slice cuts only part of a tilted disc (L5S1).
            assert 0.0 <= m["rcsa"] < 10.0
        other = by.get((m["muscle"][:3] + ("L" if m["muscle"].endswith("R") else "R"), m["level"]))
        if other and min(m["csa_mean_cm2"], other["csa_mean_cm2"]) >= 2.0:  # not where a muscle tapers out
            assert abs(m["asymmetry"]) < 0.5, (m["muscle"], m["level"], m["asymmetry"])


def test_axial_seg_and_sr_carry_codes_laterality_and_pass_dciodvfy(analysed):
    result, doc = analysed
    for path in result.outputs:
        assert dciodvfy_errors(path) == [], path
    seg = pydicom.dcmread(result.outputs[[o.name for o in result.outputs].index(
        f"seg_{_series(doc, 'AX T2 TSE')['series_instance_uid']}.dcm")])
    by_label = {s.SegmentLabel: s for s in seg.SegmentSequence}
    mf = by_label["Right multifidus"]
    assert mf.SegmentedPropertyTypeCodeSequence[0].CodeValue == MUSCLE_GROUPS["MF"][0].value
    assert mf.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == \
        codes.SCT.Right.value
    assert "L4-L5 intervertebral disc" in by_label  # axial disc sections named by level
    sr = hd.sr.srread(result.sr_path)
    groups = [g for g in sr.content.get_volumetric_roi_measurement_groups()
              if g.finding_category is not None and g.finding_category.value == sg_codes.PARASPINAL_MUSCLE.value]
    assert len(groups) == sum(len(s["muscles"]) for s in doc["series"])
    g = next(g for g in groups if g.tracking_identifier.startswith("Left psoas major, L3-L4 level (AX T2 TSE)"))
    sites = g.finding_sites
    assert sites[0].value.value == MUSCLE_GROUPS["PM"][0].value
    assert sites[0].laterality.value == codes.SCT.Left.value
    assert g.get_measurements(name=codes.SCT.Area)
    assert g.get_measurements(name=sg_codes.FAT_INFILTRATION)[0].unit.value == "%"
    # Measured muscle areas replace the literature defaults in the loads.
    assert "muscle_strength_from_literature_defaults" not in doc["biomechanics"]["flags"]


def _copy(paths, dst, edit=None):
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for k, p in enumerate(paths):
        ds = pydicom.dcmread(p)
        if edit:
            edit(k, ds)
        ds.save_as(dst / p.name, enforce_file_format=True)
        out.append(dst / p.name)
    return out


def test_one_slice_per_disc_in_any_order_without_sagittal_series(axial_study, engines, tmp_path):
    """A gapped T2 series (one slice nearest each disc), unsorted, no
    sagittal series: levels from the axial disc order, flagged; no volume."""
    z = np.array([s["z_mm"] for s in axial_study["axial"]])
    from spinegate.dicom_io.phantom import make_spine_phantom

    ph = make_spine_phantom(SEED)
    picks = sorted({int(np.argmin(np.abs(z - ph.element(d).centre_lps[2])))
                    for d in ("L1L2", "L2L3", "L3L4", "L4L5", "L5S1")})
    files = [axial_study["by_series"][5][k] for k in picks][::-1]
    result = analyze_study(files, engines, RULES, tmp_path / "out", **FAST)
    s = json.loads(result.measurements_path.read_text())["series"][0]
    assert s["error"] is None and "levels_from_axial_disc_order_lowest_assumed_L5S1" in s["flags"]
    assert {m["level"] for m in s["muscles"]} == {"L1L2", "L2L3", "L3L4", "L4L5", "L5S1"}
    assert all(m["n_slices"] == 1 and m["volume_ml"] is None for m in s["muscles"])
    with_sagittal = analyze_study(files + axial_study["by_series"][3], engines, RULES, tmp_path / "out2", **FAST)
    doc = json.loads(with_sagittal.measurements_path.read_text())
    ax = _series(doc, "AX T2 TSE")
    assert {m["level"] for m in ax["muscles"]} == {"L1L2", "L2L3", "L3L4", "L4L5", "L5S1"}
    assert all(m["csa_midplane_cm2"] is not None for m in ax["muscles"])


@pytest.mark.parametrize("fault, reason", [
    ("mixed_spacing", "mixed_spacing"),
    ("gantry_tilt", "gantry_tilt"),
])
def test_broken_axial_geometry_fails_the_series_with_its_reason(axial_study, engines, tmp_path, fault, reason):
    def edit(k, ds):
        if fault == "mixed_spacing" and k == 3:
            ds.PixelSpacing = [0.7, 0.7]
        if fault == "gantry_tilt":
            ipp = [float(v) for v in ds.ImagePositionPatient]
            ds.ImagePositionPatient = [ipp[0], ipp[1] + 0.35 * 4.0 * k, ipp[2]]  # ~19° shear

    files = _copy(axial_study["by_series"][5], tmp_path / "in", edit) + axial_study["by_series"][3]
    result = analyze_study(files, engines, RULES, tmp_path / "out", **FAST)
    ax = _series(json.loads(result.measurements_path.read_text()), "AX T2 TSE")
    assert ax["error"].startswith(reason + ":") and not ax["muscles"]


@pytest.mark.parametrize("tilt_deg, analysed_", [(12.0, True), (35.0, False)])
def test_tilted_axial_stacks(axial_study, engines, tmp_path, tilt_deg, analysed_):
    """Disc-parallel stacks (tilted < 20°) are analysed in their own plane;
    steeper ones are oblique and skipped with the reason."""
    t = np.deg2rad(tilt_deg)
    col = np.array([0.0, np.cos(t), -np.sin(t)])

    def edit(k, ds):
        ds.ImageOrientationPatient = [1, 0, 0] + [round(float(v), 6) for v in col]
        ds.ImagePositionPatient = list(np.array([-100.0, -100.0, 0.0]) + k * 4.0 * np.cross([1, 0, 0], col))

    # Every second slice, re-placed 4 mm apart: the geometry, not the anatomy, is under test.
    files = _copy(axial_study["by_series"][5][::2], tmp_path / "in", edit)
    # The moved stack no longer lies where the sagittal series saw the spine:
    # levels come from its own disc sections (a skipped series alone would
    # fail the study, so the sagittal series comes along there).
    extra = [] if analysed_ else axial_study["by_series"][3]
    result = analyze_study(files + extra, engines, RULES, tmp_path / "out", **FAST)
    ax = _series(json.loads(result.measurements_path.read_text()), "AX T2 TSE")
    if analysed_:
        assert ax["plane"] == "axial" and ax["error"] is None and ax["muscles"]
    else:
        assert ax["plane"] == "oblique" and ax["skipped_reason"] == "no_rule_for_oblique_T2"


def test_dixon_pair_with_mismatched_geometry_is_flagged_not_measured(axial_study, engines, tmp_path):
    def shift(k, ds):
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1], ipp[2] + 2.0]

    files = axial_study["by_series"][6][::3] + _copy(axial_study["by_series"][7][::3], tmp_path / "fat", shift)
    result = analyze_study(files + axial_study["by_series"][3], engines, RULES, tmp_path / "out", **FAST)
    water = _series(json.loads(result.measurements_path.read_text()), "AX DIXON W")
    assert any(f.startswith("dixon_fat_geometry_mismatch: different slice positions") for f in water["flags"])
    assert water["muscles"] and all(m["fat_fraction"] is None for m in water["muscles"])


def test_dixon_water_without_uniform_muscle_keeps_the_noise_floor_and_says_so(axial_study, engines, tmp_path):
    """A water image with no uniform muscle to read the noise from (a
    checkerboard of ±50 % over the whole image): the fat fraction is still
    measured, uncorrected, and every result says so."""
    def checkerboard(k, ds):
        pixels = ds.pixel_array.astype(np.float64)
        rows, cols = np.indices(pixels.shape)
        ds.PixelData = np.clip(pixels * np.where((rows + cols) % 2, 1.5, 0.5), 0, 65535).astype(np.uint16).tobytes()

    files = _copy(axial_study["by_series"][6][::3], tmp_path / "water", checkerboard) + axial_study["by_series"][7][::3]
    result = analyze_study(files + axial_study["by_series"][3], engines, RULES, tmp_path / "out", **FAST)
    water = _series(json.loads(result.measurements_path.read_text()), "AX DIXON W")
    assert "dixon_noise_floor_not_removed" in water["flags"] and water["dixon_noise_sigma"] == 0.0
    assert water["muscles"] and all(m["fat_fraction"] is not None and "dixon_noise_floor_not_removed" in m["flags"]
                                    for m in water["muscles"])


def test_a_muscle_the_network_hesitated_over_is_flagged_at_each_of_its_levels(axial_study, engines, analysed):
    """Low model confidence on the axial path: the network's own scores of
    the held-out phantom are confident (no flag); the same segmentation with
    the left multifidus' scores lowered to 0.8 flags exactly that muscle."""
    from dataclasses import replace

    from spinegate.dicom_io.classify import Weighting
    from spinegate.dicom_io.study import read_study_headers
    from spinegate.inference.axial_classes import MUSCLE_CLASSES
    from spinegate.inference.axial_engine import mean_class_score
    from spinegate.service.axial_stage import measure_axial_series, segment_axial_series

    _, doc = analysed
    assert not any(f.startswith("low_model_confidence") for m in _series(doc, "AX T2 TSE")["muscles"] for f in m["flags"])
    study = read_study_headers(axial_study["files"])
    t2 = next(s for s in study.series if s.description == "AX T2 TSE")
    segmented = segment_axial_series(t2.datasets, engines.get("axial_muscle"))
    mf_l = segmented.classes == MUSCLE_CLASSES[("MF", "L")]
    scores = segmented.class_scores.copy()
    scores[mf_l] = 0.8
    assert mean_class_score(scores, mf_l) == pytest.approx(0.8, abs=1e-3)
    sagittal = {m["level"]: np.array(m["centroid_lps_mm"]) for s in doc["series"] for m in s["structures"]
                if m["kind"] == "disc" and s["description"] == "SAG T2 TSE"}
    result = measure_axial_series(replace(segmented, class_scores=scores), Weighting.T2,
                                  {segmented.volume.frame_of_reference_uid: sagittal})
    flagged = {m.muscle.name for m in result.measurements if any(f.startswith("low_model_confidence_0.80")
                                                                   for f in m.flags)}
    assert flagged == {"MF_L"}
    with pytest.raises(ValueError, match="not on one grid"):
        mean_class_score(scores[:1], mf_l)
