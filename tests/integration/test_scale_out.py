"""Scale-out with a real redis-server: one receive-only `spinegate serve`
and two `spinegate worker` processes share the Redis queue, the spool and
the state store; a batch of phantom studies is processed with no study lost
and none processed twice."""
from __future__ import annotations

import re
import time

import pytest

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom_study import write_phantom_study
from peers import RedisServer, Spinegate, StoreSCP, start_worker, stop_process, storescu

pytestmark = pytest.mark.integration

N_STUDIES = 4


def test_two_workers_process_a_batch_once_each(tmp_path):
    redis = RedisServer.start(tmp_path / "redis")
    pacs = StoreSCP.start(tmp_path / "pacs")
    queue = {"backend": "redis", "redis_url": redis.url, "consume_in_serve": False}
    sg = Spinegate.start(tmp_path / "sg", pacs.port, quiet_period_s=1.0, extra={"queue": queue})
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    workers = [start_worker(sg.config_path, log) for log in logs]
    try:
        studies = []
        for i in range(N_STUDIES):
            truth = write_phantom_study(tmp_path / f"s{i}", seed=40 + i, rows=128, columns=128, pixel_spacing_mm=2.4,
                                        study=StudyInfo(uid_seed=f"scale-out-{i}"))
            storescu(truth["files"], sg.port)
            studies.append(truth["study_instance_uid"])
        for uid in studies:
            objs = pacs.wait_for(uid, n_seg=2, timeout_s=300)
            assert len(objs["SR"]) == 1
        def exported_by_worker() -> dict[str, list[int]]:
            found: dict[str, list[int]] = {uid: [] for uid in studies}
            for i, log in enumerate(logs):
                for uid in re.findall(r"study exported study_uid=([0-9.]+)", log.read_text()):
                    found[uid].append(i)
            return found

        # A worker logs "exported" just after the PACS confirmed the SR: wait for every line.
        deadline = time.monotonic() + 30
        exported = exported_by_worker()
        while any(not w for w in exported.values()) and time.monotonic() < deadline:
            time.sleep(0.5)
            exported = exported_by_worker()
        time.sleep(2.0)  # a second export of a study, if any, would show up here
        exported = exported_by_worker()
        assert all(len(w) == 1 for w in exported.values()), exported  # each exactly once
        assert "study exported" not in sg.log_text()  # the receiver only receives
        assert all(w.poll() is None for w in workers)
    finally:
        stop_process(*workers)
        sg.stop()
        pacs.stop()
        redis.stop()
