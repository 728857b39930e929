"""A real Prometheus (Debian package) scrapes a real `spinegate serve`; a
phantom study goes through; the Prometheus query API returns the expected
series, and spinegate's alert rules are loaded and healthy."""
from __future__ import annotations

import pytest

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from peers import Prometheus, Spinegate, StoreSCP, storescu

pytestmark = pytest.mark.integration


def test_prometheus_scrapes_spinegate_through_a_study(tmp_path):
    pacs = StoreSCP.start(tmp_path / "pacs")
    sg = Spinegate.start(tmp_path / "sg", pacs.port, quiet_period_s=1.0)
    prom = Prometheus.start(tmp_path / "prom", sg.http_port)
    try:
        prom.wait_until(lambda: prom.query('up{job="spinegate"} == 1'), 60, "spinegate target up")
        truth = write_phantom_study(tmp_path / "study", seed=31, rows=128, columns=128, pixel_spacing_mm=2.4,
                                    study=StudyInfo(uid_seed="prometheus"))
        storescu(truth["files"], sg.port)
        pacs.wait_for(truth["study_instance_uid"], n_seg=2)
        stored = prom.wait_until(
            lambda: prom.query('sum(spinegate_instances_received_total{status="stored"}) >= 30'), 60,
            "instances counted")
        assert float(stored[0]["value"][1]) == len(truth["files"])
        prom.wait_until(lambda: prom.query("spinegate_study_turnaround_seconds_count >= 1"), 60, "turnaround seen")
        stages = {r["metric"]["stage"] for r in prom.query("spinegate_stage_duration_seconds_count")}
        assert {"assembly_wait", "segmentation", "measurement", "biomechanics", "report", "export"} <= stages
        exported = prom.query('spinegate_studies{state="exported"}')
        assert exported and float(exported[0]["value"][1]) == 1
        assert prom.query('spinegate_model_info{name="sagittal_spine",backend="onnxruntime-cpu"} == 1')
        assert prom.query("spinegate_ready == 1")
        attempts = prom.query('spinegate_export_attempts_total{destination="PACS"}')
        assert attempts and float(attempts[0]["value"][1]) >= 1
        rules = prom.api("/api/v1/rules")["data"]["groups"][0]["rules"]
        assert {r["name"] for r in rules} >= {"SpinegateExportFailing", "SpinegateNotReady"}
        assert all(r["health"] == "ok" for r in rules)
    finally:
        prom.stop()
        sg.stop()
        pacs.stop()
