"""Radiomics through the pipeline (``outputs.radiomics``): measurements.json
holds what the features compute on the SEG's segment and the source
pixels; the SR carries two coded groups per structure (valid DICOM, read
back by dcmqi); the batch CSV has a row per feature."""
from __future__ import annotations

import json
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from conformance.checks import tool
from conftest import dciodvfy_errors
from spinegate.biomech.radiomics import structure_radiomics
from spinegate.dicom_io.volume import read_series
from spinegate.service.batch import long_rows
from spinegate.service.config import OutputsConfig, load_config
from spinegate.service.pipeline import analyze_study

RULES = load_config(environ={}).routing


@pytest.fixture(scope="module")
def analysed(phantom_study, engines, tmp_path_factory):
    out = tmp_path_factory.mktemp("radiomics")
    t2 = [f for f in phantom_study["files"] if f.name.startswith("003_")]
    result = analyze_study(t2, engines, RULES, out, biomechanics=False,
                           outputs=OutputsConfig(key_images=False, pdf_report=False, radiomics=True))
    return result, json.loads(result.measurements_path.read_text()), t2


def test_the_json_features_are_those_of_the_seg_segment_on_the_source_pixels(analysed):
    result, doc, t2 = analysed
    series = doc["series"][0]
    assert all("radiomics" in s for s in series["structures"])
    volume = read_series([pydicom.dcmread(f) for f in t2])
    seg = hd.seg.segread(str(result.series[0].seg_path))
    numbers = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
    entry = next(s for s in series["structures"] if s["level"] == "L3")
    segment = seg.get_volume(segment_numbers=[numbers[entry["label"]]], combine_segments=True)
    # highdicom orders the SEG's frames its own way: brought onto the source grid
    source = hd.Volume(volume.array, volume.affine, "PATIENT")
    mask = segment.match_geometry(source).array > 0
    assert mask.shape == volume.array.shape and np.allclose(segment.match_geometry(source).affine, volume.affine)
    expected = structure_radiomics(volume.array, mask, volume.affine, entry["radiomics"]["central_slice_index"])
    got = entry["radiomics"]
    assert got["whole_structure"] == expected.whole.as_dict()
    assert got["central_slice"] == expected.central_slice.as_dict()
    assert got["shape"]["volume_cm3"] == pytest.approx(entry["volume_cm3"], abs=1e-3)
    assert got["whole_structure"]["n_voxels"] > got["central_slice"]["n_voxels"] > 0
    assert 0 < got["shape"]["flatness"] <= got["shape"]["elongation"] <= 1
    assert series["timings_s"]["radiomics"] > 0


def test_the_sr_has_two_coded_groups_per_structure(analysed):
    result, doc, _ = analysed
    sr = pydicom.dcmread(result.sr_path)
    assert dciodvfy_errors(result.sr_path) == []
    imaging = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    groups = [g for g in imaging.ContentSequence if g.ConceptNameCodeSequence[0].CodeValue == "125007"]
    methods: dict[str, int] = {}
    units: set[tuple[str, str]] = set()
    for g in groups:
        for item in g.ContentSequence:
            code = item.ConceptNameCodeSequence[0].CodeValue
            if code == "370129005":  # Measurement Method
                method = item.ConceptCodeSequence[0].CodeValue
                methods[method] = methods.get(method, 0) + 1
            if item.ValueType == "NUM":
                concept = item.ConceptNameCodeSequence[0]
                units.add((f"{concept.CodingSchemeDesignator}:{concept.CodeValue}",
                           item.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue))
    n = len(doc["series"][0]["structures"])
    assert methods == {"SG0090": n, "SG0091": n}
    assert ("DCM:110852", "[arb'U]") in units and ("IBSI:TLU2", "bit") in units
    assert ("IBSI:YEKZ", "cm3") in units and ("IBSI:Q3CK", "1") in units and ("99SPINEGATE:SG0093", "[arb'U]") in units
    exe = tool("tid1500reader")  # dcmqi's reader, installed beside this Python
    subprocess.run([exe, "--inputDICOM", str(result.sr_path), "--outputMetadata", str(result.sr_path) + ".json"],
                   check=True, capture_output=True, timeout=120)
    read = json.loads(open(str(result.sr_path) + ".json").read())["Measurements"]
    central = [g for g in read if g["TrackingIdentifier"].endswith("radiomics, central sagittal slice")]
    assert len(central) == n and all(g["measurementMethod"]["CodeValue"] == "SG0091" for g in central)


def test_the_batch_csv_has_a_row_per_feature(analysed):
    _, doc, _ = analysed
    rows = [r for r in long_rows(doc) if r["level"] == "L3"]
    by_name = {r["measurement"]: r for r in rows}
    assert by_name["radiomics_whole_mean"]["unit"] == "arb"
    assert by_name["radiomics_central_slice_entropy_bits"]["unit"] == "bit"
    assert by_name["radiomics_shape_major_axis_mm"]["unit"] == "mm"
    assert by_name["radiomics_whole_skewness"]["value"] == doc["series"][0]["structures"][
        [s["level"] for s in doc["series"][0]["structures"]].index("L3")]["radiomics"]["whole_structure"]["skewness"]
    assert sum(r["measurement"].startswith("radiomics_") for r in rows) == 13 + 13 + 6


def test_radiomics_are_off_by_default():
    assert OutputsConfig().radiomics is False
    assert load_config(environ={"SPINEGATE_OUTPUTS__RADIOMICS": "true"}).outputs.radiomics is True
