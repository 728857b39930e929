"""Study jobs on the Huey task queue (SqliteHuey: embedded and durable).

Two tasks: ``check_study`` decides whether the quiet period has passed since
the last instance (re-scheduling itself until it has), ``process_study``
runs the pipeline and the export. The study state in `StateStore` is the
source of truth, so duplicate or replayed tasks are harmless: a task only
proceeds if its compare-and-set state transition succeeds. On start-up,
`recover` re-queues whatever a restart interrupted.
"""
from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from huey import SqliteHuey
from huey.api import Huey

from spinegate.service.config import SpinegateConfig
from spinegate.service.export import export_outputs
from spinegate.service.metrics import Metrics
from spinegate.service.biomech_stage import BiomechSolver
from spinegate.service.engines import Engines
from spinegate.service.pipeline import StudyFailed, analyze_study
from spinegate.service.store import StateStore, StudyState
from spinegate.service.store_redis import RedisStateStore

__all__ = ["StudyWorker", "build_queue", "build_worker", "open_store"]

log = logging.getLogger(__name__)

BACKEND = "onnxruntime-cpu"


def build_queue(config: SpinegateConfig) -> Huey:
    """The queue: embedded SQLite beside the state store, or Redis shared by
    receivers and workers (``queue.backend``)."""
    config.storage.root.mkdir(parents=True, exist_ok=True)
    if config.queue.backend == "redis":
        from huey import RedisHuey

        return RedisHuey(config.queue.name, url=config.queue.redis_url.get_secret_value(), results=False, utc=True)
    return SqliteHuey(config.queue.name, filename=str(config.storage.queue_db), results=False, utc=True)


@dataclass
class StudyWorker:
    """Registers the study tasks on ``huey`` and runs them.

    Each engine is loaded once per process, on first use, and reused.
    """

    config: SpinegateConfig
    store: StateStore
    huey: Huey
    metrics: Metrics | None = None
    _engines: Any = None
    _solver: BiomechSolver = field(default_factory=BiomechSolver)
    _pending: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.check_task = self.huey.task(name="check_study")(self.check_study)
        self.process_task = self.huey.task(name="process_study")(self.process_study)

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            def on_load(info: Any) -> None:
                if self.metrics:
                    self.metrics.model_info.labels(info.name, info.version, info.sha256, BACKEND).set(1)

            self._engines = Engines(self.config.inference.model_dir, self.config.inference.threads, on_load,
                                    self.config.inference.axial_precision)
        return self._engines

    def load_engines(self) -> None:
        """Load every engine the routing rules name (start-up model check),
        and start the biomechanics solver's process."""
        self.engines.load([r.engine for r in self.config.routing])
        if self.config.biomechanics.enabled:
            self._solver.start()

    def close(self) -> None:
        """Stop the biomechanics solver's process."""
        self._solver.close()

    @property
    def engine_loaded(self) -> bool:
        return self._engines is not None and self._engines.loaded

    # -- triggers ---------------------------------------------------------
    def on_instance_stored(self, study_uid: str) -> None:
        """Schedule one quiet-period check per study (not one per instance).

        Raises
        ------
        Exception
            From the queue when the check cannot be scheduled (e.g. Redis
            unreachable); the study is then not marked as having a check, so
            the next instance, or the same one sent again, schedules it.
        """
        with self._lock:
            if study_uid in self._pending:
                return
            self._pending.add(study_uid)
        self._schedule_check(study_uid, self.config.assembly.quiet_period_s)

    def _schedule_check(self, study_uid: str, delay_s: float) -> None:
        try:
            self.check_task.schedule(args=(study_uid,), delay=delay_s)
        except BaseException:
            with self._lock:
                self._pending.discard(study_uid)
            raise

    def request_processing(self, study_uid: str) -> bool:
        """Explicit trigger (``spinegate process``): skip the quiet period."""
        ok = self.store.transition(study_uid, StudyState.COMPLETE,
                                   (StudyState.RECEIVED, StudyState.EXPORTED, StudyState.FAILED))
        if ok:
            self.process_task(study_uid)
        return ok

    def recover(self) -> None:
        """Re-queue studies a restart interrupted.

        With the embedded queue this process is the only worker, so every
        study left 'processing' was interrupted. With a shared queue other
        workers may be busy with theirs: only studies processing for longer
        than ``queue.processing_lease_s`` are taken back.
        """
        shared = self.config.queue.backend != "sqlite"
        for rec in self.store.studies((StudyState.PROCESSING,)):
            if shared and time.time() - rec.updated < self.config.queue.processing_lease_s:
                continue
            if self.store.transition(rec.study_uid, StudyState.COMPLETE, (StudyState.PROCESSING,),
                                     version=rec.version):
                log.info("re-queued interrupted study study_uid=%s", rec.study_uid)
                self.process_task(rec.study_uid)
        for rec in self.store.studies((StudyState.COMPLETE,)):
            self.process_task(rec.study_uid)
        for rec in self.store.studies((StudyState.RECEIVED,)):
            self.on_instance_stored(rec.study_uid)

    # -- tasks ----------------------------------------------------------------
    def check_study(self, study_uid: str) -> None:
        rec = self.store.study(study_uid)
        with self._lock:
            self._pending.discard(study_uid)
        if rec is None or rec.state is not StudyState.RECEIVED:
            return
        waited = time.time() - rec.last_received
        quiet = self.config.assembly.quiet_period_s
        if waited + 0.05 < quiet:
            with self._lock:
                self._pending.add(study_uid)
            self._schedule_check(study_uid, max(quiet - waited, 0.5))
            return
        if self.store.transition(study_uid, StudyState.COMPLETE, (StudyState.RECEIVED,), version=rec.version):
            log.info("study complete study_uid=%s instances=%d", study_uid, rec.n_instances)
            self.process_task(study_uid)

    def process_study(self, study_uid: str) -> None:
        rec = self.store.study(study_uid)
        if rec is None or not self.store.transition(study_uid, StudyState.PROCESSING, (StudyState.COMPLETE,)):
            return
        version = rec.version
        started = time.time()
        out_dir = self.config.storage.outputs / study_uid
        paths = [i.path for i in self.store.instances(study_uid)]
        detail: dict[str, Any] = {"started": started}
        if self.metrics:
            self.metrics.observe_stage("assembly_wait", started - rec.last_received)
        try:
            result = analyze_study(paths, self.engines, self.config.routing, out_dir, self.config.biomechanics.enabled,
                                   self._solver)
        except StudyFailed as e:
            self._finish(study_uid, StudyState.FAILED, e.reason + ": " + str(e), {**detail, "reason": e.reason},
                         version)
            return
        except Exception as e:  # the boundary of a job: record, never crash the worker
            log.exception("study failed study_uid=%s", study_uid)
            self._finish(study_uid, StudyState.FAILED, f"internal_error: {type(e).__name__}: {e}", detail, version)
            return
        detail.update(outputs=[str(p) for p in result.outputs], timings_s=result.timings_s,
                      series=[{"series_uid": o.series_uid, "rule": o.decision.rule,
                               "skipped": o.decision.skipped_reason, "error": o.error} for o in result.series])
        self._observe_pipeline(result)
        t_export = time.time()
        outcomes = export_outputs(result.outputs, self.config.export)
        if self.metrics:
            self.metrics.observe_stage("export", time.time() - t_export)
            for o in outcomes:
                dest = o.destination.ae_title
                self.metrics.export_attempts.labels(dest).inc(o.attempts)
                self.metrics.export_retries.labels(dest).inc(o.attempts - 1)
                if not o.confirmed:
                    self.metrics.export_failures.labels(dest).inc()
        detail["exports"] = [{"destination": o.destination.ae_title, "confirmed": o.confirmed,
                              "attempts": o.attempts, "error": o.error} for o in outcomes]
        detail["finished"] = time.time()
        failed = [o for o in outcomes if not o.confirmed]
        if failed:
            self._finish(study_uid, StudyState.FAILED, "export_failed: " + "; ".join(o.error for o in failed),
                         detail, version)
            return
        if self._finish(study_uid, StudyState.EXPORTED, "", detail, version):
            if self.metrics:
                self.metrics.turnaround_seconds.observe(detail["finished"] - rec.last_received)
            if self.config.storage.delete_inputs_after_export:
                shutil.rmtree(self.config.storage.spool / study_uid, ignore_errors=True)

    def _observe_pipeline(self, result: Any) -> None:
        if not self.metrics:
            return
        for o in result.series:
            t = o.timings_s
            if "segment" in t:
                self.metrics.observe_stage("segmentation", t["segment"], o.decision.engine or "", BACKEND)
                self.metrics.observe_stage("measurement", t.get("measure", 0.0))
                self.metrics.observe_stage("report", t.get("seg_write", 0.0))
        if "biomechanics" in result.timings_s:
            self.metrics.observe_stage("biomechanics", result.timings_s["biomechanics"])
        if "sr" in result.timings_s:
            self.metrics.observe_stage("report", result.timings_s["sr"])

    def _finish(self, study_uid: str, state: StudyState, reason: str, detail: dict[str, Any], version: int) -> bool:
        """Record the outcome unless instances arrived meanwhile (then the
        study goes back to received and is assembled again)."""
        if self.store.transition(study_uid, state, (StudyState.PROCESSING,), reason, detail, version=version):
            log.info("study %s study_uid=%s %s", state.value, study_uid, reason)
            if self.metrics:
                self.metrics.studies_finished.labels(state.value, reason.split(":", 1)[0]).inc()
            return True
        self.store.transition(study_uid, StudyState.RECEIVED, (StudyState.PROCESSING,), "", detail)
        log.info("study changed while processing, re-assembling study_uid=%s", study_uid)
        self.on_instance_stored(study_uid)
        return False


def open_store(config: SpinegateConfig) -> StateStore:
    """SQLite under the storage root, or Redis beside the queue (scale-out:
    receivers then keep nothing but the spool)."""
    if config.queue.backend == "redis":
        return RedisStateStore(config.queue.redis_url.get_secret_value(), config.queue.name)
    return StateStore(config.storage.state_db)


def build_worker(config: SpinegateConfig, metrics: Metrics | None = None) -> tuple[StateStore, StudyWorker]:
    """The state store and a study worker on the configured queue (for
    `serve`, `worker`, `process` and the receiver processes alike)."""
    store = open_store(config)
    return store, StudyWorker(config, store, build_queue(config), metrics)
