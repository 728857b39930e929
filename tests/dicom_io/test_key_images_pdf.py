"""Key images (Secondary Capture) and the Encapsulated PDF: drawing with
exact answers, the objects' attributes, character sets as scanners send
them, dciodvfy with zero errors, and precise errors for bad input."""
from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest

from conftest import dciodvfy_errors
from spinegate.dicom_io.encapsulated_pdf import ENCAPSULATED_PDF_STORAGE, build_encapsulated_pdf
from spinegate.dicom_io.key_images import (KeyImageContent, LegendRow, MeasurementLine, Outline, build_key_image,
                                           edge_letters, render_key_image)
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid

NAMES = {"no_character_set": (None, "PHANTOM^LUMBAR", None), "latin1": ("ISO_IR 100", "Müller^Jürgen", "ISO_IR 192"),
         "utf8": ("ISO_IR 192", "山田^太郎", "ISO_IR 192")}
MINIMAL_PDF = b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Count 0/Kids[]>>endobj\n" \
              b"trailer<</Root 1 0 R>>\n%%EOF"


@pytest.fixture(scope="module", params=list(NAMES), ids=list(NAMES))
def source(request, tmp_path_factory):
    declared, name, expected = NAMES[request.param]
    grid = sagittal_grid(3, 32, 32, 2.0, 4.0)
    paths = write_mr_series(np.full((3, 32, 32), 100, np.uint16), grid.affine,
                            StudyInfo(f"keyimg-{request.param}", patient_name=name, character_set=declared),
                            SeriesSpec(3, "SAG T2", 3500, 100, 4.0), tmp_path_factory.mktemp(request.param))
    return [pydicom.dcmread(p) for p in paths], name, expected


def _content(mask_colour=(0, 200, 90)) -> KeyImageContent:
    pixels = np.linspace(0, 1000, 32 * 32).reshape(32, 32)
    mask = np.zeros((32, 32), bool)
    mask[8:24, 10:20] = True
    return KeyImageContent(pixels, (2.0, 2.0), [Outline(mask, mask_colour, "L4")],
                           [MeasurementLine(((8.0, 15.0), (23.0, 15.0)), (255, 0, 255))],
                           [LegendRow(mask_colour, "L4 body: height 30.0 mm", review=True)],
                           edge_letters((0, 0, -2.0), (0, 2.0, 0)), "SAG T2, slice 2 of 3")


def test_edge_letters_follow_the_patient_directions():
    # Sagittal: rows toward the feet, columns toward posterior.
    assert edge_letters((0, 0, -1.0), (0, 1.0, 0)) == ("A", "P", "H", "F")
    # Axial as usually displayed: columns toward the patient's left.
    assert edge_letters((0, 1.0, 0), (1.0, 0, 0)) == ("R", "L", "A", "P")


def test_outline_line_and_banner_are_drawn_in_their_colours():
    rgb = render_key_image(_content())
    assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
    colours = {tuple(c) for c in rgb.reshape(-1, 3)}
    assert (0, 200, 90) in colours  # the outline
    assert (255, 0, 255) in colours  # the height line
    assert (255, 210, 0) in {tuple(c) for c in rgb[:30].reshape(-1, 3)}  # the warning in the banner
    # Square pixels: 32 rows × 2 mm are 640 display pixels, so 1 mm is 10 pixels; the slice is as wide as tall.
    assert rgb.shape[0] == 640 + 56 and rgb.shape[1] == 640 + 360


def test_bad_content_fails_with_a_precise_message():
    c = _content()
    with pytest.raises(ValueError, match="outline 'L4' has shape"):
        KeyImageContent(c.pixels[:16], c.pixel_spacing_mm, c.outlines, (), (), c.edges, "x")
    with pytest.raises(ValueError, match="'pixel_spacing_mm' must be positive"):
        KeyImageContent(c.pixels, (0.0, 1.0), (), (), (), c.edges, "x")
    with pytest.raises(ValueError, match=r"'rgb' must be \(rows, cols, 3\) uint8"):
        build_key_image(np.zeros((4, 4), np.uint8), pydicom.Dataset(), None, c.edges, "1.2.3", "1.2.4", 1, 1, "x", "1")


def test_key_image_is_a_derived_secondary_capture_of_the_source(source, tmp_path):
    datasets, name, expected = source
    src = datasets[1]
    sc = build_key_image(render_key_image(_content()), src, None, ("A", "P", "H", "F"), "1.2.826.0.1.3680043.8.498.1",
                         "1.2.826.0.1.3680043.8.498.2", 8003, 1, "spinegate key images: SAG T2", "0.1.0")
    path = tmp_path / "key.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.PhotometricInterpretation == "RGB"
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.BurnedInAnnotation == "YES"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.SeriesInstanceUID != src.SeriesInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert ds.get("SpecificCharacterSet") == expected and str(ds.PatientName) == name


def test_encapsulated_pdf_of_the_study(source, tmp_path):
    datasets, name, expected = source
    doc = build_encapsulated_pdf(MINIMAL_PDF, datasets, "1.2.826.0.1.3680043.8.498.3", "1.2.826.0.1.3680043.8.498.4",
                                 9998, "spinegate lumbar spine MRI measurements", "spinegate report", "0.1.0")
    path = tmp_path / "pdf.dcm"
    doc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE and ds.Modality == "DOC"
    assert ds.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert ds.ConceptNameCodeSequence[0].CodeValue == "18756-7"  # LOINC MRI Spine Report
    assert ds.EncapsulatedDocument[:ds.EncapsulatedDocumentLength] == MINIMAL_PDF  # odd length, padded
    assert len(ds.SourceInstanceSequence) == len(datasets)
    assert ds.get("SpecificCharacterSet") == expected and str(ds.PatientName) == name


def test_encapsulated_pdf_refuses_what_is_not_a_report_of_one_study(source):
    datasets = source[0]
    with pytest.raises(ValueError, match="does not start with a PDF header"):
        build_encapsulated_pdf(b"<html>", datasets, "1.2.3", "1.2.4", 1, "t", "d", "v")
    with pytest.raises(ValueError, match="'sources' is empty"):
        build_encapsulated_pdf(MINIMAL_PDF, [], "1.2.3", "1.2.4", 1, "t", "d", "v")
    other = copy.deepcopy(datasets[0])
    other.StudyInstanceUID = "1.2.3.4"
    with pytest.raises(ValueError, match="span 2 studies"):
        build_encapsulated_pdf(MINIMAL_PDF, [datasets[0], other], "1.2.3", "1.2.4", 1, "t", "d", "v")
