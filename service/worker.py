"""Study jobs on the Huey task queue (SqliteHuey: embedded and durable).

Three tasks: ``check_study`` decides whether the quiet period has passed
since the last instance (re-scheduling itself until it has),
``process_study`` runs the pipeline, ``export_study`` runs one delivery
round and schedules the next after a back-off (so a destination that is down
never blocks the analysis of other studies). The study state in `StateStore`
is the source of truth, so duplicate or replayed tasks are harmless: a task
only proceeds if its compare-and-set state transition succeeds, and a
delivery round only if it is the round the study waits for. On start-up,
`recover` re-queues whatever a restart interrupted.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

from huey import SqliteHuey
from huey.api import Huey

from spinegate.service.config import SpinegateConfig
from spinegate.service.export import DeliveryStatus, deliver_round, initial_status, retry_delay_s, \
    statuses_from_detail
from spinegate.inference.level_naming import naming_unverified
from spinegate.service.metrics import Metrics
from spinegate.service.biomech_stage import BiomechSolver
from spinegate.service.engines import Engines
from spinegate.service.pipeline import StudyFailed, analyze_study
from spinegate.service.spool import file_identity, remove_empty_folders, remove_unless_replaced
from spinegate.service.store import StateStore, StudyState
from spinegate.service.store_redis import RedisStateStore

__all__ = ["StudyWorker", "build_queue", "build_worker", "open_store"]

log = logging.getLogger(__name__)

EXPORT_PRIORITY = 10


def build_queue(config: SpinegateConfig) -> Huey:
    """The queue: embedded SQLite beside the state store, or Redis shared by
    receivers and workers (``queue.backend``)."""
    config.storage.root.mkdir(parents=True, exist_ok=True)
    if config.queue.backend == "redis":
        from huey import PriorityRedisHuey

        return PriorityRedisHuey(config.queue.name, url=config.queue.redis_url.get_secret_value(), results=False,
                                 utc=True)
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
    # Quiet periods count from the later of the last instance and this
    # process's start: a sender whose association a restart broke gets a
    # whole quiet period to send the rest before the study is assembled.
    _started: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        self.check_task = self.huey.task(name="check_study")(self.check_study)
        self.process_task = self.huey.task(name="process_study")(self.process_study)
        # Delivery first: a study that is analysed reaches the PACS before
        # the next one is analysed (the queue is otherwise first in, first out).
        self.export_task = self.huey.task(name="export_study", priority=EXPORT_PRIORITY)(self.export_study)

    @property
    def engines(self) -> Engines:
        if self._engines is None:
            def on_load(info: Any) -> None:
                if self.metrics:
                    self.metrics.model_info.labels(info.name, info.version, info.sha256, info.backend).set(1)

            self._engines = Engines(self.config.inference.model_dir, self.config.inference.threads, on_load,
                                    self.config.inference.axial_precision, self.config.inference.backend)
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
        ok = self.store.transition(study_uid, StudyState.COMPLETE, (StudyState.RECEIVED, StudyState.EXPORTED,
                                                                    StudyState.UNDELIVERED, StudyState.FAILED))
        if ok:
            self.process_task(study_uid)
        return ok

    def request_resend(self, study_uid: str) -> bool:
        """Deliver an undelivered (or already exported) study's outputs
        again, without re-analysis (``spinegate resend``, the status API).
        False when the study is in another state or its outputs are gone."""
        rec = self.store.study(study_uid)
        if rec is None or rec.state not in (StudyState.UNDELIVERED, StudyState.EXPORTED):
            return False
        if not rec.detail.get("outputs") or not all(Path(p).exists() for p in rec.detail["outputs"]):
            return False
        return self._start_delivery(study_uid, rec.detail, rec.version, (StudyState.UNDELIVERED, StudyState.EXPORTED),
                                    resend=True)

    def _start_delivery(self, study_uid: str, detail: dict[str, Any], version: int,
                        from_states: tuple[StudyState, ...], resend: bool = False) -> bool:
        """Move the study to exporting with fresh delivery statuses and queue
        its first round (an id per delivery tells stale rounds apart)."""
        delivery = {"id": uuid.uuid4().hex, "round": 0, "resend": resend}
        detail = {**detail, "exports": [s.as_dict() for s in initial_status(self.config.export)],
                  "delivery": delivery}
        if not self.store.transition(study_uid, StudyState.EXPORTING, from_states, "", detail, version=version):
            return False
        self.export_task(study_uid, delivery["id"], 0)
        return True

    def recover(self) -> None:
        """Re-queue studies a restart interrupted.

        With the embedded queue this process is the only worker, so every
        study left 'processing' was interrupted. With a shared queue other
        workers may be busy with theirs: only studies processing for longer
        than ``queue.processing_lease_s`` are taken back.
        """
        shared = self.config.queue.backend != "sqlite"
        self._started = time.time()
        for rec in self.store.studies((StudyState.PROCESSING,)):
            if shared and time.time() - rec.updated < self.config.queue.processing_lease_s:
                continue
            if self.store.transition(rec.study_uid, StudyState.COMPLETE, (StudyState.PROCESSING,),
                                     version=rec.version):
                log.info("re-queued interrupted study study_uid=%s", rec.study_uid)
                self.process_task(rec.study_uid)
        # A round that was running when the process died is gone from the
        # queue; one that waits for its back-off may still be there, and the
        # round check makes the second copy a no-op.
        lease = self.config.queue.processing_lease_s + self.config.export.backoff_max_s
        for rec in self.store.studies((StudyState.EXPORTING,)):
            delivery = rec.detail.get("delivery") or {}
            if "id" not in delivery or (shared and time.time() - rec.updated < lease):
                continue
            log.info("resuming delivery study_uid=%s round=%d", rec.study_uid, delivery["round"])
            self.export_task(rec.study_uid, delivery["id"], delivery["round"])
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
        waited = time.time() - max(rec.last_received, self._started)
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
        if not paths and rec.detail.get("inputs_deleted"):
            self._finish(study_uid, StudyState.FAILED, "inputs_deleted: the inputs were deleted after export "
                         "(storage.delete_inputs_after_export); send the study again to re-analyse it",
                         {**detail, "inputs_deleted": True}, version)
            return
        try:
            result = analyze_study(paths, self.engines, self.config.routing, out_dir, self.config.biomechanics.enabled,
                                   self._solver, self.config.outputs)
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
                               "skipped": o.decision.skipped_reason, "error": o.error,
                               "level_unverified": naming_unverified(o.flags)} for o in result.series],
                      review={"needed": bool(result.review.get("needed")),
                              "reasons": dict(result.review.get("reasons", {}))})
        self._observe_pipeline(result)
        # The outputs and the intent to deliver them are recorded before the
        # first send: after a crash the same files are sent again.
        if not self._start_delivery(study_uid, detail, version, (StudyState.PROCESSING,)):
            self._reassemble(study_uid, detail)

    def export_study(self, study_uid: str, delivery_id: str, round_no: int) -> None:
        """One delivery round; then exported, the next round scheduled after
        its back-off, or — retries exhausted — undelivered (the dead letter)."""
        rec = self.store.study(study_uid)
        if rec is None or rec.state is not StudyState.EXPORTING:
            return
        delivery = rec.detail.get("delivery") or {}
        if delivery.get("id") != delivery_id or delivery.get("round") != round_no:
            return  # a stale copy of a round that already ran
        paths = [Path(p) for p in rec.detail.get("outputs", [])]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            self._finish(study_uid, StudyState.UNDELIVERED, "outputs_missing: " + ", ".join(missing) +
                         " (reprocess the study)", rec.detail, rec.version, StudyState.EXPORTING)
            return
        before = statuses_from_detail(rec.detail.get("exports", []))
        t0 = time.time()
        after = deliver_round(paths, self.config.export, before)
        self._observe_delivery(before, after, time.time() - t0)
        round_no += 1
        detail = {**rec.detail, "exports": [s.as_dict() for s in after], "delivery": {**delivery, "round": round_no}}
        waiting = [s for s in after if not s.confirmed]
        if not waiting:
            detail["finished"] = time.time()
            if self._finish(study_uid, StudyState.EXPORTED, "", detail, rec.version, StudyState.EXPORTING):
                if self.metrics and not delivery.get("resend"):  # a re-send is not a study's turnaround
                    self.metrics.turnaround_seconds.observe(detail["finished"] - rec.last_received)
                if self.config.storage.delete_inputs_after_export:
                    self._delete_inputs(study_uid, rec.version)
        elif round_no >= self.config.export.attempts:
            if self.metrics:
                for s in waiting:
                    self.metrics.export_failures.labels(s.destination).inc()
            self._finish(study_uid, StudyState.UNDELIVERED, "export_failed: " + "; ".join(
                f"{s.destination}: {s.error}" for s in waiting), detail, rec.version, StudyState.EXPORTING)
        elif self.store.transition(study_uid, StudyState.EXPORTING, (StudyState.EXPORTING,), "", detail,
                                   version=rec.version):
            delay = retry_delay_s(self.config.export, round_no)
            log.info("delivery retry scheduled study_uid=%s round=%d delay_s=%.1f", study_uid, round_no, delay)
            self.export_task.schedule(args=(study_uid, delivery_id, round_no), delay=delay)

    def _observe_delivery(self, before: list[DeliveryStatus], after: list[DeliveryStatus], seconds: float) -> None:
        if not self.metrics:
            return
        self.metrics.observe_stage("export", seconds)
        for old, new in zip(before, after):
            if new.attempts > old.attempts:
                self.metrics.export_attempts.labels(new.destination).inc()
                if old.attempts:
                    self.metrics.export_retries.labels(new.destination).inc()

    def _delete_inputs(self, study_uid: str, version: int) -> None:
        """Delete the analysed inputs and their index rows, unless an
        instance arrived since (the study is then analysed again and needs
        them). Rows go first, so a re-sent instance is stored again; a file
        re-sent to the same path meanwhile is kept (`remove_unless_replaced`)."""
        inputs = self.store.instances(study_uid)
        identities = {}
        for i in inputs:
            try:
                identities[i.path] = file_identity(i.path)
            except FileNotFoundError:
                pass
        if not self.store.forget_instances(study_uid, [i.sop_instance_uid for i in inputs], version):
            log.info("inputs kept: instances arrived after the analysis study_uid=%s", study_uid)
            return
        removed = sum(remove_unless_replaced(p, ident) for p, ident in identities.items())
        remove_empty_folders(self.config.storage.spool / study_uid)
        rec = self.store.study(study_uid)
        if rec is not None and rec.state is StudyState.EXPORTED:
            self.store.transition(study_uid, StudyState.EXPORTED, (StudyState.EXPORTED,), rec.reason,
                                  {**rec.detail, "inputs_deleted": True}, version=version)
        log.info("inputs deleted study_uid=%s files=%d", study_uid, removed)

    def _observe_pipeline(self, result: Any) -> None:
        if not self.metrics:
            return
        if result.review.get("needed"):
            self.metrics.studies_needing_review.inc()
        for reason, n in result.review.get("reasons", {}).items():
            self.metrics.review_reasons.labels(reason.split(" ", 1)[0]).inc(n)
        for o in result.series:
            if naming_unverified(o.flags):
                self.metrics.level_naming_unverified.inc()
            t = o.timings_s
            if "segment" in t:
                backend = self.engines.model_info(o.decision.engine).backend if o.decision.engine else ""
                self.metrics.observe_stage("segmentation", t["segment"], o.decision.engine or "", backend)
                self.metrics.observe_stage("measurement", t.get("measure", 0.0))
                self.metrics.observe_stage("report", t.get("seg_write", 0.0))
        if (gpu_bytes := self.engines.device_memory_bytes()) is not None:
            self.metrics.gpu_memory_bytes.labels("cuda:0").set(gpu_bytes)
        if "biomechanics" in result.timings_s:
            self.metrics.observe_stage("biomechanics", result.timings_s["biomechanics"])
        if "sr" in result.timings_s:
            self.metrics.observe_stage("report", result.timings_s["sr"])

    def _finish(self, study_uid: str, state: StudyState, reason: str, detail: dict[str, Any], version: int,
                from_state: StudyState = StudyState.PROCESSING) -> bool:
        """Record the outcome unless instances arrived meanwhile (then the
        study goes back to received and is assembled again)."""
        if self.store.transition(study_uid, state, (from_state,), reason, detail, version=version):
            log.info("study %s study_uid=%s %s", state.value, study_uid, reason)
            if self.metrics:
                self.metrics.studies_finished.labels(state.value, reason.split(":", 1)[0]).inc()
            return True
        if from_state is StudyState.PROCESSING:
            self._reassemble(study_uid, detail)
        return False

    def _reassemble(self, study_uid: str, detail: dict[str, Any]) -> None:
        """Instances arrived while the study was processed: assemble it again."""
        self.store.transition(study_uid, StudyState.RECEIVED, (StudyState.PROCESSING,), "", detail)
        log.info("study changed while processing, re-assembling study_uid=%s", study_uid)
        self.on_instance_stored(study_uid)


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
