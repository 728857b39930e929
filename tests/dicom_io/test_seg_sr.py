"""SEG and SR built from the phantom's exact labels: content, round trip
through bytes, and dciodvfy with zero errors."""
import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from conftest import dciodvfy_errors, write_seg_and_sr
from spinegate.dicom_io.levels import structure_by_label
from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation

ALGO = AlgorithmInfo("sagittal_spine", "test", "0" * 64, "onnxruntime-cpu")


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    return write_seg_and_sr(tmp_path_factory.mktemp("segsr"), StudyInfo("segsr"), 11, (9, 128, 128, 2.4, 4.0))


def test_seg_round_trip_matches_labels_and_geometry(written):
    seg = hd.seg.segread(written["seg_path"])
    assert seg.SegmentationType == "BINARY"
    assert seg.FrameOfReferenceUID == written["datasets"][0].FrameOfReferenceUID
    ref = seg.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == written["volume"].series_instance_uid
    assert len(ref.ReferencedInstanceSequence) == len(written["datasets"])
    labels = [d.SegmentLabel for d in seg.SegmentSequence]
    assert labels == [s.display_name for s in written["present"]]
    assert "L4-L5 intervertebral disc" in labels and "L3 vertebral body" in labels
    for desc, s in zip(seg.SegmentSequence, written["present"]):
        assert desc.SegmentedPropertyTypeCodeSequence[0].CodeValue == s.property_type.value
        assert desc.SegmentAlgorithmType == "AUTOMATIC"
        assert "RecommendedDisplayCIELabValue" in desc
    # Every source frame is present and the pixels equal the label map per segment.
    uids = [r.sop_instance_uid for r in written["volume"].slice_refs]
    arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids,
                                             segment_numbers=list(range(1, len(written["present"]) + 1)))
    for i, s in enumerate(written["present"]):
        assert np.array_equal(arr[..., i] > 0, written["label_map"] == s.label)


def test_sr_is_tid1500_with_tracking_segments_and_polylines(written):
    sr = hd.sr.srread(written["sr_path"])
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurementReport.value
    volumetric = sr.content.get_volumetric_roi_measurement_groups()
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(volumetric) == len(planar) == len(written["present"])
    by_label = {m.structure.label: m for m in written["measurements"]}
    for group in volumetric:
        assert group.tracking_uid and group.tracking_identifier
        seg_ref = group.referenced_segment
        assert seg_ref is not None
        # The segment is referenced with its source series (TID 1411), not image by image.
        assert not seg_ref.has_source_images()
        assert seg_ref.source_series_for_segmentation.value == written["volume"].series_instance_uid
        # Algorithm identification once per group: name, version, model checksum, backend.
        items = {i.ConceptNameCodeSequence[0].CodeMeaning: i for i in group[0].ContentSequence if "TextValue" in i}
        assert items["Algorithm Name"].TextValue == ALGO.name and items["Algorithm Version"].TextValue == ALGO.version
        assert [i.TextValue for i in group[0].ContentSequence if "TextValue" in i
                and i.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"] == \
            [f"model_sha256={ALGO.model_sha256}", "inference_backend=onnxruntime-cpu"]
        vol = group.get_measurements(name=codes.SCT.Volume)[0]
        assert vol.unit.value == "cm3"
    for group in planar:
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        assert region.value.shape == (2, 2)
        height = group.get_measurements(name=codes.DCM.Height)[0]
        assert height.unit.value == "mm"
    heights = sorted(float(g.get_measurements(name=codes.DCM.Height)[0].value) for g in planar)
    assert heights == pytest.approx(sorted(round(m.height_mm, 2) for m in by_label.values()), abs=0.01)


@pytest.mark.integration
def test_seg_and_sr_pass_dciodvfy(written):
    assert dciodvfy_errors(written["seg_path"]) == []
    assert dciodvfy_errors(written["sr_path"]) == []


def test_build_segmentation_validates_inputs(written):
    with pytest.raises(ValueError, match="shape"):
        build_segmentation(written["volume"], written["datasets"], written["label_map"][:, :10], ALGO, "1.2.3", "1.2.4", 1, "t")
    with pytest.raises(ValueError, match="no segmented structure"):
        build_segmentation(written["volume"], written["datasets"], np.zeros_like(written["label_map"]), ALGO, "1.2.3",
                           "1.2.4", 1, "t")
    with pytest.raises(ValueError, match="64 hex"):
        AlgorithmInfo("x", "1", "abc")
    assert structure_by_label(28).display_name == "L5-S1 intervertebral disc"


def test_sr_identifies_the_private_coding_scheme(written):
    sr = pydicom.dcmread(written["sr_path"])
    assert b"99SPINEGATE" in written["sr_path"].read_bytes()  # the scheme is used ...
    schemes = {i.CodingSchemeDesignator: i for i in sr.CodingSchemeIdentificationSequence}
    assert schemes["99SPINEGATE"].CodingSchemeName == "spinegate local codes"  # ... and identified
    assert schemes["99SPINEGATE"].CodingSchemeResponsibleOrganization.startswith("spinegate project")


def test_every_private_code_value_means_one_thing():
    """A code value of the private scheme names one concept: two meanings
    under one value would make a reader's lookup ambiguous."""
    from pydicom.sr.coding import Code

    from spinegate.dicom_io import codes as sg_codes

    found: dict[str, str] = {}
    values = [v for v in vars(sg_codes).values()]
    values += [c for v in vars(sg_codes).values() if isinstance(v, dict) for c in v.values()]
    for code in values:
        if isinstance(code, Code) and code.scheme_designator == sg_codes.SCHEME:
            assert found.setdefault(code.value, code.meaning) == code.meaning, code.value
    assert len(found) > 40
