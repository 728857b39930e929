"""The PACS loop with the Debian Orthanc: MR instances stored into Orthanc
are auto-forwarded to spinegate by deploy/orthanc/autoforward.lua when the
study is stable; spinegate's SEG, SR, key images and PDF report come back
into Orthanc and are found through its REST API under the same study, and
the study is not forwarded again."""
from __future__ import annotations

import time

import pytest

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from peers import Orthanc, Spinegate, free_port, storescu_to

pytestmark = pytest.mark.integration


def test_orthanc_forwards_stable_mr_study_and_receives_seg_and_sr(tmp_path):
    sg_port = free_port()
    orthanc = Orthanc.start(tmp_path / "orthanc", sg_port)
    sg = Spinegate.start(tmp_path / "sg", orthanc.dicom_port, quiet_period_s=1.0, port=sg_port)
    try:
        truth = write_phantom_study(tmp_path / "study", seed=77, rows=128, columns=128, pixel_spacing_mm=2.4,
                                    study=StudyInfo(uid_seed="orthanc-loop"))
        storescu_to(truth["files"], orthanc.dicom_port, "PACS")  # the scanner sends to the PACS only
        uid = truth["study_instance_uid"]
        deadline = time.monotonic() + 240
        modalities: list[str] = []
        while time.monotonic() < deadline:
            found = orthanc.rest("/tools/lookup", uid.encode()) or []
            study = next((f["ID"] for f in found if f["Type"] == "Study"), None)
            if study:
                series = orthanc.rest(f"/studies/{study}/series") or []
                modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
                if modalities.count("SEG") == 2 and "SR" in modalities:
                    break
            time.sleep(1.0)
        # Per sagittal series a SEG and a key-image series (OT), per study the PDF report (DOC) and the SR (sent last).
        assert modalities == ["DOC", "MR", "MR", "OT", "OT", "SEG", "SEG", "SR"], orthanc.log_path.read_text()[-3000:]
        # When the results made the study stable again, the script saw them
        # and did not forward a second time.
        deadline = time.monotonic() + 60
        while "not sent again" not in orthanc.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        log = orthanc.log_path.read_text()
        assert "holds spinegate results, not sent again" in log, log[-3000:]
        assert log.count("MR series") == 1
        assert sg.log_text().count("study exported") == 1
    finally:
        sg.stop()
        orthanc.stop()
