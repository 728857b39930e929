"""Study jobs with Huey in immediate mode (tasks run synchronously)."""
from __future__ import annotations

import pydicom

from spinegate.service.config import load_config
from spinegate.service.store import InstanceRecord, StateStore, StudyState
from spinegate.service.worker import StudyWorker, build_queue


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
