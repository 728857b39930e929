"""Disc T2 through the pipeline: a multi-echo phantom with a known T2 per
disc, as one multi-echo series and as one series per echo time. The
series is segmented (one echo), each disc's T2 is reported in
measurements.json, the SR and the batch CSV, and the map is a valid DICOM
Parametric Map holding the exact T2 inside the discs."""
from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest

from conftest import dciodvfy_errors
from spinegate.dicom_io.phantom import make_spine_phantom
from spinegate.dicom_io.phantom.multi_echo import write_multi_echo_phantom_study
from spinegate.dicom_io.volume import read_series
from spinegate.service.batch import long_rows
from spinegate.service.config import OutputKind, OutputsConfig, load_config
from spinegate.service.export import output_kind
from spinegate.service.pipeline import analyze_study

RULES = load_config(environ={}).routing
FAST = dict(biomechanics=False, outputs=OutputsConfig(key_images=False, pdf_report=False))


@pytest.fixture(scope="module")
def multi_echo(engines, tmp_path_factory):
    work = tmp_path_factory.mktemp("multi_echo")
    truth = write_multi_echo_phantom_study(work / "src", seed=11)
    result = analyze_study(truth["files"], engines, RULES, work / "out", **FAST)
    return truth, result, json.loads(result.measurements_path.read_text())


def test_each_disc_gets_its_t2(multi_echo):
    truth, result, doc = multi_echo
    (series,) = doc["series"]
    assert series["error"] is None and series["relaxometry"]["echo_times_ms"] == [20.0, 40.0, 60.0, 80.0, 100.0]
    discs = {s["level"]: s["t2_ms"] for s in series["structures"] if s["kind"] == "disc"}
    for level in ("L1L2", "L2L3", "L3L4", "L4L5", "L5S1"):
        # The median is the disc's own T2; the mean also holds the model's boundary voxels.
        assert discs[level]["median"] == pytest.approx(truth["disc_t2_ms"][level], rel=0.01), (level, discs[level])
        assert abs(discs[level]["mean"] - truth["disc_t2_ms"][level]) < 12
    assert not any("t2_ms" in s for s in series["structures"] if s["kind"] != "disc")
    rows = [r for r in long_rows(doc) if r["measurement"] == "t2_mean_ms"]
    assert {r["level"] for r in rows} == set(discs) and {r["unit"] for r in rows} == {"ms"}


def test_the_t2_map_is_a_parametric_map_with_the_exact_t2_in_the_discs(multi_echo):
    truth, result, doc = multi_echo
    (path,) = [p for p in result.outputs if p.name.startswith("t2map_")]
    assert output_kind(path) is OutputKind.PARAMETRIC_MAP
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPInstanceUID == doc["series"][0]["relaxometry"]["t2_map_sop_instance_uid"]
    mapping = ds.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "ms"
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "113065"
    frames = ds.pixel_array
    # Frame k derives from source instance k: bring it onto the truth's grid by position.
    sources = [pydicom.dcmread(f) for f in truth["files"] if pydicom.dcmread(f, stop_before_pixels=True).EchoTime
               == 80]
    grid = read_series(sources)
    by_uid = {ref.sop_instance_uid: k for k, ref in enumerate(grid.slice_refs)}
    t2 = np.zeros(grid.array.shape, np.float32)
    for i, f in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        t2[by_uid[uid]] = frames[i]
    if not np.allclose(grid.affine, truth["affine"], atol=1e-3):  # read_series stacks the slices the other way
        assert np.allclose(grid.affine[:3, 0], -truth["affine"][:3, 0])
        t2 = t2[::-1]
    labels = {e.name: e.label for e in make_spine_phantom(11).elements}
    for level, expected in truth["disc_t2_ms"].items():
        inside = t2[truth["labels"] == labels[level]]
        assert np.median(inside) == pytest.approx(expected, rel=1e-3)


def test_the_sr_carries_each_discs_t2(multi_echo):
    _, result, doc = multi_echo
    sr = pydicom.dcmread(result.sr_path)
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    t2_groups = [g for g in imaging.ContentSequence
                 if any(i.ConceptNameCodeSequence[0].CodeValue == "370129005" and
                        i.ConceptCodeSequence[0].CodeValue == "SG0096" for i in g.ContentSequence)]
    n_discs = sum("t2_ms" in s for s in doc["series"][0]["structures"])
    assert len(t2_groups) == n_discs > 0
    nums = [i for i in t2_groups[0].ContentSequence if i.ValueType == "NUM"]
    assert {i.ConceptNameCodeSequence[0].CodeValue for i in nums} == {"113065"}
    assert {i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue for i in nums} == {"ms"}
    assert dciodvfy_errors(result.sr_path) == []


def test_one_series_per_echo_time_segments_one_and_fits_all(engines, tmp_path):
    truth = write_multi_echo_phantom_study(tmp_path / "src", seed=11, one_series=False, n_slices=11)
    result = analyze_study(truth["files"], engines, RULES, tmp_path / "out", **FAST)
    doc = json.loads(result.measurements_path.read_text())
    analysed = [s for s in doc["series"] if s["engine"]]
    skipped = [s for s in doc["series"] if s["skipped_reason"]]
    assert [s["description"] for s in analysed] == ["SAG T2 TE80"] and len(skipped) == 4
    assert all(s["skipped_reason"].startswith("echo_of_stack_segmented_in_series_") for s in skipped)
    l4l5 = next(s for s in analysed[0]["structures"] if s["level"] == "L4L5")
    assert l4l5["t2_ms"]["median"] == pytest.approx(truth["disc_t2_ms"]["L4L5"], rel=0.01)


def test_without_relaxometry_the_multi_echo_series_is_still_segmented(engines, tmp_path):
    truth = write_multi_echo_phantom_study(tmp_path / "src", seed=11, n_slices=11)
    outputs = OutputsConfig(key_images=False, pdf_report=False, relaxometry=False)
    result = analyze_study(truth["files"], engines, RULES, tmp_path / "out", biomechanics=False, outputs=outputs)
    doc = json.loads(result.measurements_path.read_text())
    assert doc["series"][0]["structures"] and "relaxometry" not in doc["series"][0]
    assert not any(p.name.startswith("t2map_") for p in result.outputs)
