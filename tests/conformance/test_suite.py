"""The conformance suite (conformance/run) against a locally started
``spinegate serve``: every claim of CONFORMANCE.md holds, and the suite
reads its claims from the statement itself."""
from __future__ import annotations

import json
import subprocess

import pydicom
import pytest
from pydicom import Dataset, FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)

from conformance.cases import MATRIX_IMAGE, StudyCase, storescu_proposal
from conformance.suite import _alike_checks, measured_values, read_claims
from conftest import REPO
from spinegate.dicom_io.uids import ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_SOP_CLASSES
from peers import Spinegate, free_port

pytestmark = pytest.mark.heavy(seconds=320)


def test_statement_claims_what_the_scp_accepts():
    claims = read_claims()
    assert set(claims.storage_classes) == set(MR_STORAGE_SOP_CLASSES)
    assert set(claims.transfer_syntaxes) == set(ACCEPTED_TRANSFER_SYNTAXES)
    assert MRImageStorage in claims.storage_classes and len(claims.transfer_syntaxes) == 10


def test_statement_without_tables_is_an_error(tmp_path):
    empty = tmp_path / "CONFORMANCE.md"
    empty.write_text("# A statement\n\nno tables\n")
    with pytest.raises(ValueError, match="no storage SOP class table"):
        read_claims(empty)


def test_storescu_proposes_exactly_each_transfer_syntax():
    assert storescu_proposal(JPEGBaseline8Bit) == ("-R", "-xy")
    assert {storescu_proposal(ts)[0] for ts in ACCEPTED_TRANSFER_SYNTAXES} == {"-R"}
    with pytest.raises(ValueError, match="cannot propose"):
        storescu_proposal("1.2.840.10008.1.2.2")  # explicit big endian: not claimed


def _sr_with_values(path, values):
    ds = Dataset()
    ds.ContentSequence = [Dataset()]
    group = ds.ContentSequence[0]
    group.ValueType, group.ContentSequence = "CONTAINER", []
    for meaning, value in values:
        item = Dataset()
        item.ValueType = "NUM"
        item.ConceptNameCodeSequence = [Dataset()]
        item.ConceptNameCodeSequence[0].CodeMeaning = meaning
        item.MeasuredValueSequence = [Dataset()]
        item.MeasuredValueSequence[0].NumericValue = value
        group.ContentSequence.append(item)
    ds.SOPClassUID, ds.SOPInstanceUID = Comprehensive3DSRStorage, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    return path


def test_a_lossless_encoding_that_measures_otherwise_fails_the_alike_check(tmp_path):
    def case(case_id, ts, multiframe=False):
        return StudyCase(case_id, "", (), "1.2.3", (), 1, "A^B", None, None, multiframe, ts, MATRIX_IMAGE)

    reference, lossless, lossy, multiframe = (case("M00", ExplicitVRLittleEndian), case("M01", JPEGLSLossless),
                                             case("M02", JPEGBaseline8Bit), case("M03", RLELossless, True))
    srs = {"M00": _sr_with_values(tmp_path / "0.dcm", [("Height", "8.25"), ("Volume", "12.5")]),
           "M01": _sr_with_values(tmp_path / "1.dcm", [("Height", "8.25"), ("Volume", "12.75")]),
           "M02": _sr_with_values(tmp_path / "2.dcm", [("Height", "7.0"), ("Volume", "11.0")]),
           "M03": _sr_with_values(tmp_path / "3.dcm", [("Height", "8.25"), ("Volume", "12.5")])}
    assert measured_values(pydicom.dcmread(srs["M01"])) == [("Height", "8.25"), ("Volume", "12.75")]
    checks = {c.subject: c for c in _alike_checks([reference, lossless, lossy, multiframe], srs)}
    assert set(checks) == {"M01 SR", "M03 SR"}  # the reference itself and lossy JPEG are not compared
    assert not checks["M01 SR"].passed and "Volume 12.75 (reference 12.5)" in checks["M01 SR"].observed
    assert checks["M03 SR"].passed
    del srs["M03"]  # no SR came back: fails here as well as in the outputs section
    assert not _alike_checks([reference, multiframe], srs)[0].passed


@pytest.mark.integration
def test_conformance_suite_passes_against_spinegate(tmp_path):
    pacs_port = free_port()
    destination = {"ae_title": "SGCONFORMPACS", "host": "127.0.0.1", "port": pacs_port}
    sg = Spinegate.start(tmp_path / "sg", pacs_port, quiet_period_s=1.0,
                         extra={"export": {"destinations": [destination]}})
    try:
        proc = subprocess.run([str(REPO / "conformance" / "run"), "--host", "127.0.0.1", "--port", str(sg.port),
                               "--ae", "SPINEGATE", "--pacs-port", str(pacs_port), "--out", str(tmp_path / "report"),
                               "--timeout-s", "1200", "--study-timeout-s", "180"],
                              capture_output=True, text=True, timeout=1500)
    finally:
        sg.stop()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["summary"]["failed"] == 0
    sections = {c["section"] for c in report["checks"]}
    assert sections == {"association", "storage", "C-STORE statuses", "outputs", "objects", "content"}
    # 3 storage classes x 10 transfer syntaxes + 3 whole studies sent and answered.
    assert sum(c["section"] == "storage" for c in report["checks"]) == 33
    assert sum(c["section"] == "outputs" and c["passed"] for c in report["checks"]) == 33
    # Lossless encodings and multi-frame forms of the matrix image (3 classes x 7 lossless syntaxes, less the
    # single-frame Explicit VR Little Endian reference) measure exactly as the reference.
    alike = [c for c in report["checks"] if c["name"] == "measures as uncompressed"]
    assert len(alike) == 20 and all(c["passed"] for c in alike)
    names = {c["name"] for c in report["checks"] if c["section"] == "objects"}
    assert names == {"dciodvfy", "dcmdump", "dsr2xml (strict)", "dcmqi tid1500reader", "dcmqi segimage2itkimage",
                     "highdicom re-read"}
    assert (tmp_path / "report" / "REPORT.md").read_text().count("**FAIL**") == 0
