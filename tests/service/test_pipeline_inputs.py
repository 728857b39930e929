"""Series the pipeline must skip or reject with a clear reason, never crash."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import SliceGrid, make_spine_phantom, render_phantom, sagittal_grid
from spinegate.service.config import OutputsConfig, load_config
from spinegate.service.pipeline import StudyFailed, analyze_study

RULES = load_config(environ={}).routing
# Neither the loads nor the key images and PDF are under test here: off, to save the suite's time.
FAST = {"biomechanics": False, "outputs": OutputsConfig(key_images=False, pdf_report=False)}
STUDY = StudyInfo("pipeline-inputs")


def _grid(kind: str) -> SliceGrid:
    g = sagittal_grid(8, 96, 96, 3.0, 4.0)
    aff = g.affine.copy()
    if kind == "coronal":
        aff[:3, 0] = (0, 4.0, 0)  # slices along y, rows along -z, columns along x
        aff[:3, 2] = (3.0, 0, 0)
    elif kind == "oblique":
        t = np.deg2rad(45)
        aff[:3, 0] = 4.0 * np.array([np.cos(t), np.sin(t), 0])
        aff[:3, 2] = 3.0 * np.array([-np.sin(t), np.cos(t), 0])
    return SliceGrid(g.shape, aff, 4.0)


def _write(tmp_path, kind: str, number: int, n_slices: int | None = None):
    grid = _grid(kind)
    if n_slices:
        grid = SliceGrid((n_slices,) + grid.shape[1:], grid.affine, 4.0)
    image, _ = render_phantom(make_spine_phantom(4), grid, "T2", subplanes=1)
    return write_mr_series(image, grid.affine, STUDY, SeriesSpec(number, f"{kind} T2", 3500, 100, 4.0),
                           tmp_path / "in")


def test_coronal_and_oblique_series_are_skipped_with_reason(tmp_path, engines):
    files = _write(tmp_path, "coronal", 4) + _write(tmp_path, "oblique", 5)
    with pytest.raises(StudyFailed) as e:
        analyze_study(files, engines, RULES, tmp_path / "out", **FAST)
    assert e.value.reason == "no_analysable_series"
    doc = json.loads((tmp_path / "out" / "measurements.json").read_text())
    reasons = {s["description"]: s["skipped_reason"] for s in doc["series"]}
    assert reasons == {"coronal T2": "no_rule_for_coronal_T2", "oblique T2": "no_rule_for_oblique_T2"}


def test_one_slice_and_mixed_size_series_fail_alone(tmp_path, engines, phantom_study):
    one = _write(tmp_path, "sagittal", 6, n_slices=1)
    mixed = _write(tmp_path, "sagittal", 7)
    ds = pydicom.dcmread(mixed[2])
    ds.Rows, ds.Columns = 48, 48
    ds.PixelData = np.zeros((48, 48), np.uint16).tobytes()
    ds.save_as(mixed[2])
    # Same study as the good phantom series so that one result still comes out.
    for f in one + mixed:
        d = pydicom.dcmread(f)
        d.StudyInstanceUID = phantom_study["study_instance_uid"]
        d.save_as(f)
    result = analyze_study(phantom_study["files"] + one + mixed, engines, RULES, tmp_path / "out", **FAST)
    errors = {o.description: o.error for o in result.series}
    assert errors["sagittal T2"].startswith(("too_few_slices", "mixed_size"))
    by_number = {o.description: o for o in result.series}
    assert by_number["SAG T2 TSE"].measurements and by_number["SAG T1 TSE"].measurements
    assert sum(1 for o in result.series if o.error.startswith("too_few_slices")) == 1
    assert sum(1 for o in result.series if o.error.startswith("mixed_size")) == 1
    assert result.sr_path is not None


def test_study_without_sagittal_series_fails_clearly(tmp_path, engines):
    files = _write(tmp_path, "coronal", 8)
    with pytest.raises(StudyFailed, match="no_rule_for_coronal_T2"):
        analyze_study(files, engines, RULES, tmp_path / "out", **FAST)


def test_unreadable_files_are_reported_not_fatal(tmp_path, engines, phantom_study):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(phantom_study["files"][0].read_bytes()[:300])
    result = analyze_study(phantom_study["files"] + [junk, truncated], engines, RULES, tmp_path / "out", **FAST)
    assert result.sr_path is not None and len(result.outputs) >= 2
    with pytest.raises(StudyFailed) as e:
        analyze_study([junk], engines, RULES, tmp_path / "out2", **FAST)
    assert e.value.reason == "no_readable_instances"


def test_reprocessing_same_input_gives_same_uids_new_input_new_uids(tmp_path, engines, phantom_study):
    first = analyze_study(phantom_study["files"], engines, RULES, tmp_path / "a", **FAST)
    again = analyze_study(phantom_study["files"], engines, RULES, tmp_path / "b", **FAST)
    uid = lambda r: pydicom.dcmread(r.sr_path, stop_before_pixels=True).SOPInstanceUID  # noqa: E731
    assert uid(first) == uid(again)
    fewer = analyze_study([f for f in phantom_study["files"] if f.name.startswith("003_")], engines, RULES,
                          tmp_path / "c", **FAST)
    assert uid(fewer) != uid(first)
