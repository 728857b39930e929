"""Study jobs with Huey in immediate mode (tasks run synchronously)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from spinegate.service.config import load_config
from spinegate.service.store import InstanceRecord, StateStore, StudyState
from spinegate.service.worker import StudyWorker, build_queue

pytestmark = pytest.mark.heavy(seconds=40)


def _worker(tmp_path, quiet: float = 0.0):
    cfg = load_config(overrides={"storage": {"root": tmp_path / "var"}, "assembly": {"quiet_period_s": quiet}},
                      environ={})
    store = StateStore(cfg.storage.state_db)
    huey = build_queue(cfg)
    huey.immediate = True
    return cfg, store, StudyWorker(cfg, store, huey)


def _record_all(store, files):
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        store.record_instance(InstanceRecord(ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                             ds.SOPClassUID, f))
    return ds.StudyInstanceUID


def test_study_interrupted_while_processing_is_processed_on_recovery(tmp_path, phantom_study, engines):
    cfg, store, worker = _worker(tmp_path)
    worker._engines = engines  # the session's loaded engines, not a second load
    uid = _record_all(store, phantom_study["files"])
    store.transition(uid, StudyState.COMPLETE)
    store.transition(uid, StudyState.PROCESSING)  # as if the process died mid-study
    worker.recover()
    rec = store.study(uid)
    assert rec.state is StudyState.EXPORTED, rec.reason
    assert (cfg.storage.outputs / uid / "sr.dcm").exists()
    assert rec.detail["exports"] == []  # no destination configured


def test_quiet_period_check_and_failure_reason(tmp_path, engines):
    cfg, store, worker = _worker(tmp_path, quiet=3600)
    worker._engines = engines  # the session's loaded engines, not a second load
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk")
    store.record_instance(InstanceRecord("1.2.3.4.5", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", junk))
    worker.check_study("1.2.3")  # quiet period not over: stays received (re-scheduled)
    assert store.study("1.2.3").state is StudyState.RECEIVED
    assert worker.request_processing("1.2.3")
    rec = store.study("1.2.3")
    assert rec.state is StudyState.FAILED and rec.reason.startswith("no_readable_instances")


def test_a_failed_schedule_does_not_stop_the_next_instance_from_scheduling(tmp_path):
    """A queue blip while scheduling a study's check (Redis unreachable)
    must not leave the study marked as having one: the next instance (or
    the same one re-sent) schedules it."""
    import pytest

    cfg, store, worker = _worker(tmp_path, quiet=3600)
    scheduled, schedule = [], worker.check_task.schedule

    def flaky(*args, **kwargs):
        if not scheduled:
            scheduled.append("failed")
            raise ConnectionError("queue unreachable")
        scheduled.append("ok")
        return schedule(*args, **kwargs)

    worker.check_task.schedule = flaky
    with pytest.raises(ConnectionError):
        worker.on_instance_stored("1.2.3")
    worker.on_instance_stored("1.2.3")
    assert scheduled == ["failed", "ok"]
    worker.on_instance_stored("1.2.3")  # one pending check per study
    assert scheduled == ["failed", "ok"]


def _delivery_worker(tmp_path, port, **export):
    cfg = load_config(overrides={
        "storage": {"root": tmp_path / "var"}, "assembly": {"quiet_period_s": 0},
        "export": {"destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": port}], "attempts": 3,
                   "backoff_initial_s": 5.0, "backoff_max_s": 20.0, **export}}, environ={})
    store = StateStore(cfg.storage.state_db)
    huey = build_queue(cfg)
    huey.immediate = True
    return cfg, store, StudyWorker(cfg, store, huey)


def test_a_pacs_that_is_down_delays_only_its_study_then_dead_letter_and_resend_without_reanalysis(
        tmp_path, phantom_study, engines):
    """Delivery runs as its own queued task: a failed round schedules the
    next after its back-off instead of sleeping in the consumer; exhausted
    retries leave the study undelivered; a re-send delivers the very same
    objects (same SOP Instance UIDs, files untouched: no re-analysis)."""
    from peers import StoreSCP, free_port

    port = free_port()  # nothing listens here yet
    cfg, store, worker = _delivery_worker(tmp_path, port)
    worker._engines = engines
    uid = _record_all(store, phantom_study["files"])
    assert worker.request_processing(uid)
    rec = store.study(uid)
    assert rec.state is StudyState.EXPORTING
    assert rec.detail["exports"] == [{"destination": "PACS", "confirmed": False, "attempts": 1,
                                      "error": rec.detail["exports"][0]["error"]}]
    scheduled = worker.huey.scheduled()
    assert [t.name for t in scheduled] == ["export_study"] and scheduled[0].args[2] == 1
    delay_s = (scheduled[0].eta - scheduled[0].eta.now(scheduled[0].eta.tzinfo)).total_seconds()
    assert 3.0 < delay_s <= 5.0  # the back-off waits in the queue, not in the consumer
    delivery = rec.detail["delivery"]
    worker.export_study(uid, delivery["id"], 1)
    worker.export_study(uid, delivery["id"], 1)  # a stale duplicate of that round: no attempt
    assert store.study(uid).detail["exports"][0]["attempts"] == 2
    worker.export_study(uid, delivery["id"], 2)
    rec = store.study(uid)
    assert rec.state is StudyState.UNDELIVERED and rec.reason.startswith("export_failed: PACS:")
    assert rec.detail["exports"][0]["attempts"] == 3 and not rec.detail["exports"][0]["confirmed"]
    sr = cfg.storage.outputs / uid / "sr.dcm"
    written = {p: p.stat().st_mtime_ns for p in map(Path, rec.detail["outputs"])}
    pacs = StoreSCP.start(tmp_path / "pacs", port=port)
    try:
        assert worker.request_resend(uid)
        rec = store.study(uid)
        assert rec.state is StudyState.EXPORTED, rec.reason
        assert rec.detail["exports"][0]["confirmed"] and rec.detail["exports"][0]["attempts"] == 1
        objs = pacs.wait_for(uid, n_seg=2)
        assert [pydicom.dcmread(p).SOPInstanceUID for p in objs["SR"]] == [pydicom.dcmread(sr).SOPInstanceUID]
    finally:
        pacs.stop()
    assert {p: p.stat().st_mtime_ns for p in written} == written
    assert not worker.request_resend("1.2.3.999")


def test_deleted_inputs_leave_no_index_rows_so_a_resent_instance_is_stored_again(tmp_path, phantom_study, engines):
    cfg = load_config(overrides={"storage": {"root": tmp_path / "var", "delete_inputs_after_export": True},
                                 "assembly": {"quiet_period_s": 0}}, environ={})
    store = StateStore(cfg.storage.state_db)
    huey = build_queue(cfg)
    huey.immediate = True
    worker = StudyWorker(cfg, store, huey)
    worker._engines = engines
    spool = cfg.storage.spool
    copies = []
    for f in phantom_study["files"]:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        dst = spool / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(Path(f).read_bytes())
        copies.append(dst)
    uid = _record_all(store, copies)
    assert worker.request_processing(uid)
    rec = store.study(uid)
    assert rec.state is StudyState.EXPORTED and rec.detail["inputs_deleted"]
    assert not (spool / uid).exists() and store.instances(uid) == []
    assert worker.request_processing(uid)  # nothing left to analyse: said so, not silently empty
    rec = store.study(uid)
    assert rec.state is StudyState.FAILED and rec.reason.startswith("inputs_deleted")
    ds = pydicom.dcmread(phantom_study["files"][0], stop_before_pixels=True)
    assert store.record_instance(InstanceRecord(ds.SOPInstanceUID, uid, ds.SeriesInstanceUID, ds.SOPClassUID,
                                                copies[0]))  # stored again, not acknowledged as a duplicate


def test_inputs_are_kept_when_an_instance_arrived_after_the_analysis(tmp_path):
    store = StateStore(tmp_path / "state.sqlite")
    store.record_instance(InstanceRecord("1.2.3.1", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.4", tmp_path / "a"))
    version = store.study("1.2.3").version
    store.record_instance(InstanceRecord("1.2.3.2", "1.2.3", "1.2.3.9", "1.2.840.10008.5.1.4.1.1.4", tmp_path / "b"))
    assert not store.forget_instances("1.2.3", ["1.2.3.1"], version)
    assert len(store.instances("1.2.3")) == 2
    assert store.forget_instances("1.2.3", ["1.2.3.1"], version + 1)
    assert [i.sop_instance_uid for i in store.instances("1.2.3")] == ["1.2.3.2"]


def test_a_file_resent_to_the_same_path_while_inputs_are_deleted_is_kept(tmp_path):
    from spinegate.service.spool import durable_write, file_identity, remove_unless_replaced

    path = durable_write(tmp_path / "1.2.3.dcm", b"first copy")
    seen = file_identity(path)
    durable_write(path, b"re-sent copy")  # the receiver stores a re-sent instance meanwhile
    assert not remove_unless_replaced(path, seen)
    assert path.read_bytes() == b"re-sent copy" and [p.name for p in tmp_path.iterdir()] == ["1.2.3.dcm"]
    assert remove_unless_replaced(path, file_identity(path)) and not path.exists()


def test_a_restart_gives_an_interrupted_sender_a_whole_quiet_period(tmp_path):
    """Instances received long before a restart: the study is not assembled
    at once (a partial study whose sender was cut off by the restart), but
    one quiet period after the restart."""
    import time

    cfg, store, worker = _worker(tmp_path, quiet=60)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"junk")
    store.record_instance(InstanceRecord("1.2.3.4.5", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.4", junk),
                          now=time.time() - 3600)
    worker.recover()
    worker.check_study("1.2.3")
    assert store.study("1.2.3").state is StudyState.RECEIVED
    worker._started -= 61
    worker.check_study("1.2.3")
    assert store.study("1.2.3").state is not StudyState.RECEIVED


def test_delivery_outlasts_a_pacs_that_refuses_then_fails_then_recovers(tmp_path, phantom_study):
    """The PACS (a pynetdicom Storage SCP) first rejects the association,
    then answers 0xA700 (out of resources), then stores: each round fails
    with its own reason, the next round is scheduled, and the third
    delivers every object."""
    from pynetdicom import AE, evt

    from peers import free_port
    from spinegate.dicom_io.uids import MR_STORAGE_SOP_CLASSES

    received, mode = [], {"now": "refuse"}

    def on_store(event):
        if mode["now"] == "fail":
            return 0xA700
        received.append(event.request.AffectedSOPInstanceUID)
        return 0x0000

    pacs_ae = AE(ae_title="PACS")
    for sop in MR_STORAGE_SOP_CLASSES:
        pacs_ae.add_supported_context(sop)
    port = free_port()
    server = pacs_ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        cfg, store, worker = _delivery_worker(tmp_path, port, attempts=5)
        uid = _record_all(store, phantom_study["files"][:2])
        outputs = [str(p) for p in phantom_study["files"][:2]]
        pacs_ae.require_calling_aet = ["SOMEONE_ELSE"]  # rejects spinegate's association
        assert worker._start_delivery(uid, {"outputs": outputs}, store.study(uid).version, (StudyState.RECEIVED,))
        rec = store.study(uid)
        assert rec.state is StudyState.EXPORTING and "not established" in rec.detail["exports"][0]["error"]
        pacs_ae.require_calling_aet = []
        mode["now"] = "fail"
        worker.export_study(uid, rec.detail["delivery"]["id"], 1)
        rec = store.study(uid)
        assert rec.state is StudyState.EXPORTING and "0xA700" in rec.detail["exports"][0]["error"]
        mode["now"] = "store"
        worker.export_study(uid, rec.detail["delivery"]["id"], 2)
        rec = store.study(uid)
        assert rec.state is StudyState.EXPORTED and rec.detail["exports"][0]["attempts"] == 3
        assert sorted(received) == sorted(pydicom.dcmread(p).SOPInstanceUID for p in outputs)
    finally:
        server.shutdown()


def test_a_series_whose_levels_are_unverified_is_marked_in_the_seg_the_status_and_a_metric(tmp_path, engines):
    """A phantom study with the bottom of the field of view cropped through
    S1: the naming is unverified, and the SEG labels, the study's status
    and the metric say so."""
    import highdicom as hd

    from spinegate.dicom_io.classify import Weighting
    from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
    from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
    from spinegate.service.http_api import _summary
    from spinegate.service.metrics import Metrics

    grid = sagittal_grid(15, 256, 256, 1.2, 4.0)
    image, _ = render_phantom(make_spine_phantom(1001), grid, Weighting.T2)
    cropped = np.ascontiguousarray(image[:, :220, :])  # rows run superior to inferior: S1 is cut
    files = write_mr_series(cropped, grid.affine, StudyInfo("unverified-levels"),
                            SeriesSpec(3, "SAG T2", 3500, 100, 4.0), tmp_path / "in")
    cfg, store, worker = _worker(tmp_path)
    worker._engines, worker.metrics = engines, Metrics()
    uid = _record_all(store, files)
    assert worker.request_processing(uid)
    rec = store.study(uid)
    assert rec.state is StudyState.EXPORTED, rec.reason
    assert rec.detail["series"][0]["level_unverified"] and _summary(rec)["series_with_levels_unverified"] == 1
    assert worker.metrics.level_naming_unverified._value.get() == 1
    seg = hd.seg.segread(next((cfg.storage.outputs / uid).glob("seg_*.dcm")))
    spine = [d for d in seg.SegmentSequence if "vertebral body" in d.SegmentLabel]
    assert spine and all(d.SegmentLabel.endswith("(level unverified)") for d in spine)
    assert all(d.SegmentDescription.startswith("Level unverified: ") for d in spine)
