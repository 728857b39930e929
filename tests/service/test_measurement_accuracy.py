"""Measurement accuracy: the validation summary is exact on constructed
rows, the model's record is read at the nearest validated slice thickness,
and every height and volume in the SR and measurements.json carries the
validation MAE of its structure kind."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from spinegate.inference.training.training_data import dataset_of
from spinegate.service.measurement_validation import (against_what_was_drawn, outline_split, presentation_checks,
                                                      summarise, summaries, volume_error_split)
from spinegate.service.measurements_doc import measurement_accuracy


def _row(kind, slab, h_manual, h_auto, v_manual, v_auto):
    return {"source": "x", "slab_mm": slab, "level": "L3", "kind": kind, "height_manual_mm": h_manual,
            "height_auto_mm": h_auto, "volume_manual_cm3": v_manual, "volume_auto_cm3": v_auto}


def test_summary_is_exact_on_constructed_rows():
    rows = [_row("disc", 4, 10.0, 11.0, 10.0, 12.0), _row("disc", 4, 10.0, 9.0, 10.0, 9.0),
            _row("disc", 4, 8.0, 9.0, 5.0, 5.0)]
    s = summarise(rows)["disc"]["4mm"]
    assert s["n"] == 3 and s["height_mae_mm"] == 1.0 and s["height_bias_mm"] == pytest.approx(0.33, abs=0.01)
    # differences +1, -1, +1: sd = 1.1547, limits = bias -/+ 1.96 sd
    assert s["height_limits_of_agreement_mm"] == [pytest.approx(-1.93, abs=0.01), pytest.approx(2.60, abs=0.01)]
    assert s["volume_mae_cm3"] == 1.0 and s["volume_bias_pct"] == pytest.approx(3.3, abs=0.05)
    assert s["volume_mape_pct"] == pytest.approx(10.0, abs=0.05)
    # volume differences +20 %, -10 %, 0 %: mean 3.33, sd 15.275, limits = mean -/+ 1.96 sd, in %
    assert s["volume_limits_of_agreement_pct"] == [pytest.approx(-26.6, abs=0.05), pytest.approx(33.3, abs=0.05)]


def test_a_single_pair_gives_its_own_difference_as_both_limits():
    s = summarise([_row("disc", 4, 10.0, 11.0, 10.0, 12.0)])["disc"]["4mm"]
    assert s["height_limits_of_agreement_mm"] == [1.0, 1.0] and s["volume_limits_of_agreement_pct"] == [20.0, 20.0]


def test_the_real_rows_are_summarised_per_level_in_anatomical_order():
    rows = [{**_row("vertebral body", 4, 25.0, 24.0, 30.0, 27.0), "source": "VB2_06", "level": level}
            for level in ("S1", "L5", "L1")]
    rows += [{**_row("disc", 4, 9.0, 10.0, 10.0, 11.0), "source": "IVD_42", "level": "L4L5"},
             {**_row("vertebral body", 4, 25.0, 20.0, 30.0, 20.0), "source": "phantom_1000", "level": "L1"}]
    by_level = summaries(rows)["summary_real_by_level"]
    assert list(by_level) == ["L1", "L5", "S1", "L4L5"]
    assert by_level["L1"]["vertebral body"]["4mm"]["n"] == 1  # the phantom's L1 is not a real row
    assert by_level["L1"]["vertebral body"]["4mm"]["volume_bias_pct"] == -10.0
    assert by_level["L4L5"]["disc"]["4mm"]["height_bias_mm"] == 1.0


def test_outline_split_separates_the_in_plane_contour_from_the_lateral_reach():
    manual = np.zeros((6, 20, 20), bool)
    manual[1:4, 5:15, 5:15] = True  # central planes: 100 pixels each
    manual[4, 8:12, 8:12] = True  # a lateral plane under half the largest: 16
    auto = np.zeros_like(manual)
    auto[1:4, 5:15, 5:16] = True  # 110 on each central plane
    auto[4:6, 8:12, 8:12] = True  # reaches one plane further: 16 + 16
    split = outline_split(manual, auto)
    assert split["central_area_ratio"] == 1.1
    assert split["lateral_share_manual"] == round(16 / 316, 4)
    assert split["lateral_share_auto"] == round(32 / 362, 4)
    rows = [{**_row("vertebral body", 4, 20.0, 20.0, 30.0, 33.0), **split}]
    assert summarise(rows)["vertebral body"]["4mm"]["central_area_ratio"] == 1.1


def test_volume_error_split_adds_up_to_the_volume_error_and_tells_a_rim_from_a_missed_plane():
    manual = np.zeros((6, 20, 20), bool)
    manual[1:5, 5:15, 5:15] = True  # 4 planes of 100 pixels: 400
    auto = np.zeros_like(manual)
    auto[1:4, 6:15, 5:15] = True  # three planes lose their top row (30, a pixel from auto), the 4th all (100)
    auto[1:4, 8:12, 15] = True  # 12 added next to the manual outline
    auto[1:4, 8:12, 17] = True  # 12 added three pixels beyond it
    split = volume_error_split(manual, auto)
    assert split == {"missed_rim_pct": -7.5, "missed_far_pct": -25.0, "excess_rim_pct": 3.0, "excess_far_pct": 3.0}
    assert sum(split.values()) == 100 * (auto.sum() - manual.sum()) / manual.sum()
    rows = [{**_row("vertebral body", 4, 20.0, 20.0, 30.0, 30.0), **split}]
    assert summarise(rows)["vertebral body"]["4mm"]["volume_error_parts_pct"] == split


def test_rows_also_compare_with_the_acquired_slices_as_drawn_where_given():
    from spinegate.dicom_io.levels import structure_by_name
    from spinegate.service.measurement_validation import measurement_rows

    affine = np.eye(4)
    affine[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]  # slices along x, rows down z, columns along y
    truth = np.zeros((16, 60, 60), np.uint8)
    truth[2:14, 10:40, 10:50] = 3  # 12 planes of 30 x 40 mm: 14.4 cm3
    pred = np.where(truth == 3, structure_by_name("L3").label, 0).astype(np.uint8)
    drawn_affine = affine.copy()
    drawn_affine[:3, 0] = [4, 0, 0]
    drawn = truth[2::4].copy()  # planes 2, 6, 10, 14 of which three hold the body: 3 x 4 mm x 1200 mm2
    drawn[1, 10:40, 45:50] = 0  # one slice drawn 5 mm narrower
    (row,) = measurement_rows(pred, truth, affine, {3: "L3"}, "VB3_90", 4, drawn_slices=(drawn, drawn_affine))
    assert row["volume_manual_cm3"] == pytest.approx(14.4) and row["volume_auto_cm3"] == pytest.approx(14.4)
    assert row["volume_manual_drawn_slices_cm3"] == pytest.approx((3 * 1200 - 150) * 4 / 1000)
    assert row["height_manual_drawn_slices_mm"] == pytest.approx(row["height_manual_mm"], abs=0.5)
    s = summarise([row], "_drawn_slices")["vertebral body"]["4mm"]
    assert s["volume_bias_pct"] == pytest.approx(100 * (14.4 / 13.8 - 1), abs=0.05)
    assert "volume_manual_drawn_slices_cm3" not in measurement_rows(pred, truth, affine, {3: "L3"}, "VB2_90", 4)[0]


def test_against_what_was_drawn_takes_the_drawn_slices_where_a_row_has_them():
    vb3 = {**_row("vertebral body", 4, 25.0, 24.0, 30.0, 27.0), "source": "VB3_05",
           "height_manual_drawn_slices_mm": 24.5, "volume_manual_drawn_slices_cm3": 27.0, "central_area_ratio": 0.9, "lateral_share_manual": 0.1,
           "lateral_share_auto": 0.1}
    vb2 = {**_row("vertebral body", 4, 25.0, 24.0, 30.0, 27.0), "source": "VB2_06"}
    changed, kept = against_what_was_drawn([vb3, vb2])
    assert (changed["height_manual_mm"], changed["volume_manual_cm3"], changed["reference"]) == (24.5, 27.0,
                                                                                               "drawn_slices")
    assert "central_area_ratio" not in changed and "lateral_share_auto" not in changed  # made against the 1 mm labels
    assert kept == vb2
    s = summaries([vb3, vb2])
    assert s["summary_real_against_what_was_drawn"]["vertebral body"]["4mm"]["volume_bias_pct"] == -5.0  # 0 and -10 %
    assert s["summary_real_by_level"]["L3"]["vertebral body"]["4mm"]["volume_bias_pct"] == -5.0
    assert s["summary_real_only"]["vertebral body"]["4mm"]["volume_bias_pct"] == -10.0


def test_the_sr_states_the_accuracy_against_what_was_drawn_where_the_record_has_it(tmp_path):
    def by_slab(mae):
        return {"vertebral body": {"4mm": {"n": 5, "height_mae_mm": mae, "volume_mae_cm3": mae}}}

    record = {"summary_real_only": by_slab(2.0), "summary_real_against_what_was_drawn": by_slab(1.0)}
    (tmp_path / "a.measurement_accuracy.json").write_text(json.dumps(record))
    assert measurement_accuracy(tmp_path / "a.onnx", "a", 4.0)["vertebral body"]["height_mae_mm"] == 1.0
    (tmp_path / "b.measurement_accuracy.json").write_text(json.dumps({"summary_real_only": by_slab(2.0)}))
    assert measurement_accuracy(tmp_path / "b.onnx", "b", 4.0)["vertebral body"]["height_mae_mm"] == 2.0


def test_rows_are_grouped_by_the_label_set_they_come_from():
    assert [dataset_of(s) for s in ("VB1_10", "VB3_05", "IVD_42", "phantom_1000")] == ["VB1", "VB3", "IVD", "phantom"]


def test_the_ivd_discs_are_stated_at_the_source_size_and_shown_as_drawn_apart():
    drawn = {**_row("disc", 4, 9.0, 9.0, 12.0, 12.0), "source": "IVD_42", "reference": "as_drawn"}
    source_size = {**drawn, "volume_manual_cm3": 10.0, "reference": "source_size"}
    body = {**_row("vertebral body", 4, 25.0, 24.0, 30.0, 30.0), "source": "VB2_06"}
    phantom = {**_row("disc", 4, 9.0, 10.0, 10.0, 10.0), "source": "phantom_1000"}
    s = summaries([drawn, source_size, body, phantom])
    assert s["summary_real_only"]["disc"]["4mm"]["volume_bias_pct"] == 20.0  # 12 against 10, not 12
    assert s["summary"]["disc"]["4mm"]["n"] == 2 and s["summary_real_only"]["vertebral body"]["4mm"]["n"] == 1
    by_set = s["summary_by_label_set"]
    assert set(by_set) == {"IVD", "IVD as drawn", "VB2", "phantom"}
    assert (by_set["IVD"]["disc"]["4mm"]["volume_bias_pct"], by_set["IVD as drawn"]["disc"]["4mm"]["volume_bias_pct"]) \
        == (20.0, 0.0)


def test_presentation_checks_set_each_way_of_making_the_series_beside_the_standard_one():
    standard = [{**_row("vertebral body", 4, 25.0, 24.0, 30.0, 27.0), "source": "VB3_05"},
                {**_row("vertebral body", 3, 25.0, 24.0, 30.0, 33.0), "source": "VB3_05"},  # another thickness
                {**_row("vertebral body", 4, 25.0, 25.0, 30.0, 30.0), "source": "phantom_1000"},
                {**_row("disc", 4, 9.0, 9.0, 10.0, 10.0), "source": "IVD_42"}]
    presented = [{**_row("vertebral body", 4, 25.0, 25.5, 30.0, 33.0), "source": "VB3_05",
                  "presentation": "acquired_slices"},
                 {**_row("vertebral body", 4, 20.0, 20.0, 20.0, 19.0), "source": "VB2_06",
                  "presentation": "slab_grid_1mm_further"}]
    checks = presentation_checks(standard, presented)
    assert checks == {
        "slab_average": {"VB3": {"n": 1, "height_mae_mm": 1.0, "height_bias_mm": -1.0, "volume_bias_pct": -10.0,
                                 "volume_mape_pct": 10.0}},
        "acquired_slices": {"VB3": {"n": 1, "height_mae_mm": 0.5, "height_bias_mm": 0.5, "volume_bias_pct": 10.0,
                                    "volume_mape_pct": 10.0}},
        "slab_grid_1mm_further": {"VB2": {"n": 1, "height_mae_mm": 0.0, "height_bias_mm": 0.0,
                                          "volume_bias_pct": -5.0, "volume_mape_pct": 5.0}}}


def test_the_record_is_read_at_the_nearest_validated_thickness(tmp_path):
    record = {"summary_real_only": {"vertebral body": {
        f"{t}mm": {"n": 10, "height_mae_mm": float(t), "volume_mae_cm3": 2.0 * t} for t in (3, 4, 5)}}}
    (tmp_path / "m.measurement_accuracy.json").write_text(json.dumps(record))
    got = measurement_accuracy(tmp_path / "m.onnx", "m", 4.4)
    assert got == {"vertebral body": {"height_mae_mm": 4.0, "volume_mae_cm3": 8.0, "n": 10, "slab_mm": 4.0}}
    assert measurement_accuracy(tmp_path / "m.onnx", "m", 6.0)["vertebral body"]["slab_mm"] == 5.0
    assert measurement_accuracy(tmp_path / "none.onnx", "none", 4.0) == {}


def test_heights_and_volumes_carry_the_validation_mae_in_the_sr_and_json(tmp_path, phantom_study, engines):
    from spinegate.service.config import load_config
    from spinegate.service.pipeline import analyze_study

    cfg = load_config(environ={})
    result = analyze_study(phantom_study["files"], engines, cfg.routing, tmp_path / "out", False)
    info = engines.model_info("sagittal_spine")
    expected = measurement_accuracy(info.path, info.name, 4.0)
    assert set(expected) == {"vertebral body", "intervertebral disc"}  # the committed record
    doc = json.loads(result.measurements_path.read_text())
    for series in doc["series"]:
        for s in series["structures"]:
            kind = "intervertebral disc" if s["kind"] == "disc" else "vertebral body"
            assert (s["height_mae_mm"], s["volume_mae_cm3"]) == (expected[kind]["height_mae_mm"],
                                                                 expected[kind]["volume_mae_cm3"])
    sr = pydicom.dcmread(result.sr_path)
    upper = [float(item.MeasuredValueSequence[0].NumericValue) for item in _items(sr)
             if "ConceptNameCodeSequence" in item and item.ConceptNameCodeSequence[0].CodeValue == "371886008"]
    maes = {v for k in expected.values() for v in (k["height_mae_mm"], k["volume_mae_cm3"])}
    n_structures = sum(len(series["structures"]) for series in doc["series"])
    assert len(upper) == 2 * n_structures and set(upper) <= maes


def _items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _items(item)


@pytest.mark.shared_data
def test_the_committed_record_is_reproduced_for_the_disc_labelled_subject(engine):
    """The model card's disc rows at 4 mm, recomputed (`--data` run of one volume)."""
    from conftest import MODEL_DIR, require_shared_data
    from spinegate.service.measurement_validation import _real_rows

    data = require_shared_data()
    record = json.loads((MODEL_DIR / "sagittal_spine.measurement_accuracy.json").read_text())
    committed = [r for r in record["rows"] if r["source"] == "IVD_42" and r["slab_mm"] == 4]
    rows = _real_rows(engine, data, "IVD_42", 4)
    assert len(rows) == len(committed) == 10  # against the masks as drawn, and at the source's size
    for got, want in zip(rows, committed):
        assert (got["level"], got["reference"]) == (want["level"], want["reference"])
        for key in ("height_auto_mm", "height_manual_mm", "volume_auto_cm3", "volume_manual_cm3", "central_area_ratio"):
            assert got[key] == pytest.approx(want[key], abs=0.02), (got["level"], key)
        for key in ("missed_rim_pct", "missed_far_pct", "excess_rim_pct", "excess_far_pct"):
            assert got[key] == pytest.approx(want[key], abs=0.1), (got["level"], key)
    drawn = {r["level"]: r["volume_manual_native_cm3"] for r in rows if r["reference"] == "as_drawn"}
    source_size = {r["level"]: r["volume_manual_native_cm3"] for r in rows if r["reference"] == "source_size"}
    assert source_size["L5S1"] == drawn["L5S1"]  # L5S1 matches the source's table (data README)
    # the README's excess on the 1 mm masks: about +10 % (L4L5) up to +28 % (L1L2)
    assert 1.05 < drawn["L4L5"] / source_size["L4L5"] < drawn["L1L2"] / source_size["L1L2"] < 1.35
