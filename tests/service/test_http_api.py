"""The operations endpoint in-process with the real SCP, store, queue and
metrics: /metrics names and values, /healthz, /readyz checks, the study
list and detail, re-processing, and no identifier of a patient anywhere."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pydicom
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid
from spinegate.service.app import start_service
from spinegate.service.config import load_config
from spinegate.service.demo import free_port


TOKEN = "s3cr3t-token-0123456789"


@pytest.fixture
def service(tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    cfg = load_config(overrides={"network": {"port": free_port()},
                                 "http": {"port": free_port(), "auth_token_file": token, "readiness_cache_s": 0},
                                 "storage": {"root": tmp_path / "var"}, "assembly": {"quiet_period_s": 3600}},
                      environ={})
    svc = start_service(cfg, load_model=False)
    yield cfg, svc.worker
    svc.shutdown()


def _get(cfg, path, method="GET", token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(f"http://127.0.0.1:{cfg.http.port}{path}", method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _send_series(cfg, tmp_path, extra_bad: bool = False):
    grid = sagittal_grid(3, 16, 16, 2.0, 4.0)
    study = StudyInfo("http", patient_name="Doe^Jane", patient_id="PID-4711")
    paths = write_mr_series(np.full((3, 16, 16), 100, np.uint16), grid.affine, study,
                            SeriesSpec(2, "SAG T2", 3500, 100, 4.0), tmp_path / "in")
    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(MRImageStorage)
    assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title=cfg.network.ae_title)
    for ds in datasets:
        assoc.send_c_store(ds)
    bad = datasets[0].copy()
    bad.SOPInstanceUID = "1.2.3.999"
    bad.Modality = "CT"
    assoc.send_c_store(bad)
    assoc.release()
    return datasets


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_follow_conventions_and_count_what_happened(service, tmp_path):
    cfg, _ = service
    datasets = _send_series(cfg, tmp_path)
    status, text = _get(cfg, "/metrics")
    assert status == 200
    s = _samples(text)
    mr, ts = str(datasets[0].SOPClassUID), str(datasets[0].file_meta.TransferSyntaxUID)
    assert s[("spinegate_instances_received_total", (("sop_class", mr), ("status", "stored"),
                                                     ("transfer_syntax", ts)))] == 3
    assert s[("spinegate_quarantined_total", (("reason", "wrong_modality"),))] == 1
    assert s[("spinegate_associations_total", (("reason", ""), ("result", "accepted")))] == 1
    assert s[("spinegate_received_bytes_total", ())] > 3 * 16 * 16 * 2
    assert s[("spinegate_studies", (("state", "received"),))] == 1
    assert ("spinegate_queue_depth", ()) in s and ("spinegate_queue_oldest_waiting_seconds", ()) in s
    assert s[("spinegate_ready", ())] == 0  # the model is not loaded in this fixture
    assert s[("spinegate_storage_free_bytes", ())] > 0
    for name in {k[0] for k in s}:
        assert name.startswith("spinegate_")
    # No patient name or ID in any label or value line.
    assert "Doe" not in text and "PID-4711" not in text


def test_health_readiness_and_study_api(service, tmp_path):
    cfg, worker = service
    assert _get(cfg, "/healthz")[0] == 200
    status, body = _get(cfg, "/readyz")
    checks = json.loads(body)["checks"]
    assert status == 503 and checks["model_loaded"]["ok"] is False  # not loaded yet
    assert checks["scp_listening"]["ok"] and checks["spool_writable"]["ok"] and checks["queue_reachable"]["ok"]
    worker.load_engines()
    status, body = _get(cfg, "/readyz")
    assert status == 200, body
    datasets = _send_series(cfg, tmp_path)
    uid = str(datasets[0].StudyInstanceUID)
    status, body = _get(cfg, "/api/studies")
    listed = json.loads(body)["studies"]
    assert status == 200 and [x["study_uid"] for x in listed] == [uid] and listed[0]["state"] == "received"
    assert "Doe" not in body and "PID-4711" not in body
    assert json.loads(_get(cfg, "/api/studies?state=exported")[1])["studies"] == []
    status, body = _get(cfg, "/api/studies?state=bogus")
    assert status == 400 and "unknown state" in body
    assert _get(cfg, "/api/studies?limit=ten")[0] == 400
    # Queries are URL-decoded: %2C is the comma between states.
    status, body = _get(cfg, "/api/studies?state=received%2Cexported&limit=%31")
    assert status == 200 and [x["study_uid"] for x in json.loads(body)["studies"]] == [uid]
    status, body = _get(cfg, f"/api/studies/{uid}")
    assert status == 200 and json.loads(body)["instances"] == 3
    status, body = _get(cfg, f"/api/studies/{uid}/reprocess", "POST", token=None)
    assert status == 401 and "bearer token" in body
    assert _get(cfg, f"/api/studies/{uid}/reprocess", "POST", token="s3cr3t-token-0123456788")[0] == 401
    assert json.loads(_get(cfg, f"/api/studies/{uid}")[1])["state"] == "received"  # nothing queued
    assert _get(cfg, f"/api/studies/{uid}/reprocess", "POST")[0] == 202
    assert json.loads(_get(cfg, f"/api/studies/{uid}")[1])["state"] == "complete"
    assert _get(cfg, f"/api/studies/{uid}/reprocess", "POST")[0] == 409  # already queued
    assert _get(cfg, f"/api/studies/{uid}/resend", "POST", token=None)[0] == 401
    status, body = _get(cfg, f"/api/studies/{uid}/resend", "POST")  # nothing delivered to re-send yet
    assert status == 409 and json.loads(body)["action"] == "resend"
    assert _get(cfg, "/api/studies/1.2.3/reprocess", "POST")[0] == 404
    assert _get(cfg, "/nope")[0] == 404
    s = _samples(_get(cfg, "/metrics")[1])
    assert s[("spinegate_queue_depth", ())] >= 1
    info = [k for k in s if k[0] == "spinegate_model_info"]
    assert info and dict(info[0][1])["backend"] == "onnxruntime-cpu"


def test_receive_only_process_is_ready_without_a_model(tmp_path):
    cfg = load_config(overrides={"network": {"port": free_port()}, "http": {"port": free_port()},
                                 "storage": {"root": tmp_path / "var"}, "queue": {"consume_in_serve": False}},
                      environ={})
    svc = start_service(cfg, load_model=False)
    try:
        status, body = _get(cfg, "/readyz")
        assert status == 200, body
        assert "receive-only" in json.loads(body)["checks"]["model_loaded"]["detail"]
    finally:
        svc.shutdown()


def test_without_a_token_file_state_changing_calls_are_refused(tmp_path):
    cfg = load_config(overrides={"network": {"port": free_port()}, "http": {"port": free_port()},
                                 "storage": {"root": tmp_path / "var"}}, environ={})
    svc = start_service(cfg, load_model=False)
    try:
        status, body = _get(cfg, "/api/studies/1.2.3/reprocess", "POST")
        assert status == 403 and "auth_token_file" in body
        assert _get(cfg, "/api/studies")[0] == 200  # reading stays open
    finally:
        svc.shutdown()


def test_a_weak_or_unreadable_token_file_is_a_configuration_error(tmp_path):
    from spinegate.service.config import ConfigError

    weak = tmp_path / "weak"
    weak.write_text("short")
    for path in (weak, tmp_path / "missing"):
        with pytest.raises(ConfigError, match="http.auth_token_file"):
            load_config(overrides={"http": {"auth_token_file": path}}, environ={})


def test_scrapes_and_probes_reuse_one_readiness_evaluation(tmp_path):
    """Each evaluation writes a probe file to the spool: a scrape every
    second must not do that every second."""
    cfg = load_config(overrides={"network": {"port": free_port()}, "http": {"port": free_port(), "readiness_cache_s": 60},
                                 "storage": {"root": tmp_path / "var"}}, environ={})
    svc = start_service(cfg, load_model=False)
    evaluations = []
    evaluate = svc.probe._evaluate
    svc.probe._evaluate = lambda: evaluations.append(1) or evaluate()
    try:
        for _ in range(5):
            assert "spinegate_ready" in _get(cfg, "/metrics")[1]
        _get(cfg, "/readyz")
        assert len(evaluations) == 1
    finally:
        svc.shutdown()
