"""The long-running service: SCP + queue consumer + HTTP, with a clean lifecycle.

``run(config)`` loads the model, starts the SCP and the HTTP endpoint
(non-blocking) and any extra receiver processes (`service.receivers`),
re-queues interrupted work, then runs the Huey consumer in
the main thread: SIGINT drains the running job, SIGTERM stops at once (the
job is re-queued at the next start). SCP and HTTP are shut down on the way
out.
"""
from __future__ import annotations

import json
import logging
import signal
import threading
from dataclasses import dataclass
from typing import Any

from spinegate.service.config import SpinegateConfig
from spinegate.service.http_api import ReadinessProbe, StatusApi, start_http
from spinegate.service.metrics import Metrics, StateCollector
from spinegate.service.receivers import ReceiverProcesses
from spinegate.service.scp import Receiver, start_scp
from spinegate.service.store import StateStore, StudyState
from spinegate.service.worker import StudyWorker, build_worker

__all__ = ["run", "run_worker", "start_service", "Service", "queue_depth"]

log = logging.getLogger(__name__)


def queue_depth(worker: StudyWorker) -> int:
    return int(worker.huey.pending_count()) + int(worker.huey.scheduled_count())


@dataclass
class Service:
    """The running parts of one spinegate process (the consumer aside)."""

    config: SpinegateConfig
    metrics: Metrics
    store: StateStore
    worker: StudyWorker
    scp: Any
    probe: ReadinessProbe
    http: Any

    def shutdown(self) -> None:
        if self.http is not None:
            self.http.shutdown()
        self.scp.shutdown()
        self.worker.close()
        self.store.close()


def _operations_endpoint(config: SpinegateConfig, metrics: Metrics, store: StateStore, worker: StudyWorker,
                         probe: ReadinessProbe) -> Any:
    """The state collector on the metrics, and the HTTP endpoint (when
    enabled): /metrics, /healthz, /readyz and the status API."""
    metrics.registry.register(StateCollector(store.count_by_state, lambda: queue_depth(worker),
                                             store.oldest_waiting_s, [s.value for s in StudyState],
                                             probe.free_bytes, probe.ready))
    return start_http(config, StatusApi(store, metrics, probe, worker.request_processing, config.storage.outputs,
                                        config.http.auth_token(), worker.request_resend)) \
        if config.http.enabled else None


def start_service(config: SpinegateConfig, load_model: bool = True) -> Service:
    """Metrics, store, worker, then the SCP and the HTTP endpoint.

    With ``load_model`` the model is loaded before the SCP listens, so a
    missing model stops start-up (`inference.engine.EngineError`).
    """
    metrics = Metrics()
    store, worker = build_worker(config, metrics)
    if load_model:
        worker.load_engines()
    scp = start_scp(config, Receiver(config, store, worker.on_instance_stored, metrics))
    probe = ReadinessProbe(config, lambda: scp.server_address[1], lambda: queue_depth(worker),
                           lambda: worker.engine_loaded, needs_model=config.queue.consume_in_serve)
    http = _operations_endpoint(config, metrics, store, worker, probe)
    return Service(config, metrics, store, worker, scp, probe, http)


def _consume(worker: StudyWorker) -> None:
    """Run the Huey consumer in this thread until SIGINT/SIGTERM."""
    worker.recover()
    consumer = worker.huey.create_consumer(workers=1, worker_type="thread", periodic=False, initial_delay=0.05,
                                           max_delay=0.5, backoff=1.3, check_worker_health=False)
    consumer.run()


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass


def run(config: SpinegateConfig) -> int:
    """``spinegate serve``: receive (SCP + HTTP) and, unless
    ``queue.consume_in_serve`` is off, process in this process too."""
    log.info("effective configuration %s", json.dumps(config.redacted(), sort_keys=True))
    service = start_service(config, load_model=config.queue.consume_in_serve)
    receivers = None
    if config.network.receiver_processes > 1:
        receivers = ReceiverProcesses(config, service.metrics,
                                      logging.getLevelName(logging.getLogger().getEffectiveLevel()))
        receivers.start()
    try:
        if config.queue.consume_in_serve:
            _consume(service.worker)
        else:
            log.info("receive-only: studies are processed by 'spinegate worker' processes")
            _wait_for_signal()
    finally:
        if receivers is not None:
            receivers.stop()
        service.shutdown()
        log.info("stopped")
    return 0


def run_worker(config: SpinegateConfig) -> int:
    """``spinegate worker``: process studies from the shared queue (no SCP);
    the spool and state store are the receivers'. Its own HTTP endpoint
    (``http.port``, one per worker) serves the stage, turnaround and export
    metrics of the studies it processes, with /healthz and /readyz."""
    log.info("effective configuration %s", json.dumps(config.redacted(), sort_keys=True))
    metrics = Metrics()
    store, worker = build_worker(config, metrics)
    worker.load_engines()
    probe = ReadinessProbe(config, None, lambda: queue_depth(worker), lambda: worker.engine_loaded)
    http = _operations_endpoint(config, metrics, store, worker, probe)
    try:
        _consume(worker)
    finally:
        if http is not None:
            http.shutdown()
        worker.close()
        store.close()
        log.info("worker stopped")
    return 0
