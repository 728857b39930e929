"""The conformance suite (conformance/run) against a locally started
``spinegate serve``: every claim of CONFORMANCE.md holds, and the suite
reads its claims from the statement itself."""
from __future__ import annotations

import json
import subprocess

import pytest
from pydicom.uid import JPEGBaseline8Bit, MRImageStorage

from conformance.cases import storescu_proposal
from conformance.suite import read_claims
from conftest import REPO
from spinegate.dicom_io.uids import ACCEPTED_TRANSFER_SYNTAXES, MR_STORAGE_SOP_CLASSES
from peers import Spinegate, free_port


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
    names = {c["name"] for c in report["checks"] if c["section"] == "objects"}
    assert names == {"dciodvfy", "dcmdump", "dsr2xml (strict)", "dcmqi tid1500reader", "dcmqi segimage2itkimage",
                     "highdicom re-read"}
    assert (tmp_path / "report" / "REPORT.md").read_text().count("**FAIL**") == 0
