"""Scale-out with a real redis-server: one receive-only `spinegate serve`
and two `spinegate worker` processes share the Redis queue, the spool and
the state store; a batch of phantom studies is processed with no study lost
and none processed twice, and a real Prometheus scraping all three
processes sees the workers' stage, turnaround and export metrics."""
from __future__ import annotations

import re

import pytest

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from spinegate.service.demo import free_port
from peers import Prometheus, RedisServer, Spinegate, StoreSCP, save_metrics, start_worker, stop_process, storescu

pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=40)]

N_STUDIES = 4
SAGITTAL_SERIES_PER_STUDY = 2


def _total(prom: Prometheus, promql: str) -> float | None:
    result = prom.query(promql)
    return float(result[0]["value"][1]) if result else None


def test_two_workers_process_a_batch_once_each_and_report_to_prometheus(tmp_path):
    redis = RedisServer.start(tmp_path / "redis")
    pacs = StoreSCP.start(tmp_path / "pacs")
    queue = {"backend": "redis", "redis_url": redis.url, "consume_in_serve": False}
    sg = Spinegate.start(tmp_path / "sg", pacs.port, quiet_period_s=1.0, extra={"queue": queue})
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    worker_ports = [free_port(), free_port()]
    workers = [start_worker(sg.config_path, log, port) for log, port in zip(logs, worker_ports)]
    prom = Prometheus.start(tmp_path / "prometheus", [sg.http_port, *worker_ports])
    try:
        # Both workers are up (models loaded, /readyz passing) before the batch.
        prom.wait_until(lambda: _total(prom, 'sum(spinegate_ready{instance!~".*:%d"})' % sg.http_port) == 2, 120,
                        "both workers ready")
        studies = []
        for i in range(N_STUDIES):
            truth = write_phantom_study(tmp_path / f"s{i}", seed=40 + i, rows=128, columns=128, pixel_spacing_mm=2.4,
                                        study=StudyInfo(uid_seed=f"scale-out-{i}"))
            storescu(truth["files"], sg.port)
            studies.append(truth["study_instance_uid"])
        for uid in studies:
            objs = pacs.wait_for(uid, n_seg=2, timeout_s=300)
            assert len(objs["SR"]) == 1
        # Settled: every study exported, none processing, no job left in the
        # queue (pending or scheduled): nothing can process a study again.
        exported = 'max(spinegate_studies{state="exported"})'
        settled = (f'{exported} == {N_STUDIES} and on() max(spinegate_studies{{state="processing"}}) == 0 '
                   'and on() max(spinegate_queue_depth) == 0')
        prom.wait_until(lambda: prom.query(settled), 60, "every study exported and the queue empty")
        finished = 'sum(spinegate_studies_finished_total{outcome="exported"})'
        prom.wait_until(lambda: _total(prom, finished) == N_STUDIES, 30, "the workers' exports scraped")

        found: dict[str, list[int]] = {uid: [] for uid in studies}
        for i, log in enumerate(logs):
            for uid in re.findall(r"study exported study_uid=([0-9.]+)", log.read_text()):
                found[uid].append(i)
        assert all(len(w) == 1 for w in found.values()), found  # each exactly once
        assert "study exported" not in sg.log_text()  # the receiver only receives
        # The metrics are the workers': per worker, what it did; summed, the batch.
        per_worker = prom.query('sum by (instance) (spinegate_studies_finished_total{outcome="exported"})')
        by_instance = {r["metric"]["instance"]: float(r["value"][1]) for r in per_worker}
        assert by_instance.get(f"127.0.0.1:{sg.http_port}", 0.0) == 0.0
        assert sorted(by_instance.get(f"127.0.0.1:{p}", 0.0) for p in worker_ports) == \
            sorted(float(sum(1 for w in found.values() if w == [i])) for i in range(2))
        assert _total(prom, "sum(spinegate_study_turnaround_seconds_count)") == N_STUDIES
        assert _total(prom, 'sum(spinegate_stage_duration_seconds_count{stage="segmentation"})') == \
            N_STUDIES * SAGITTAL_SERIES_PER_STUDY
        assert _total(prom, "sum(spinegate_export_attempts_total)") >= N_STUDIES
        assert _total(prom, "sum(spinegate_export_failures_total)") in (None, 0.0)
        assert _total(prom, "count(spinegate_model_info)") >= 2  # each worker names its loaded model
        assert all(w.poll() is None for w in workers)
    finally:
        prom.stop()
        for i, port in enumerate(worker_ports):
            save_metrics(port, tmp_path / f"worker{i + 1}.metrics.prom")
        stop_process(*workers)
        sg.stop()
        pacs.stop()
        redis.stop()
