"""Extra receiver processes sharing the SCP port (``network.receiver_processes``).

One Python process receives at most one instance at a time (the GIL), so
parallel senders wait on each other. With N > 1, ``spinegate serve`` starts
N − 1 receive-only processes that open the same port with SO_REUSEPORT; the
kernel hands each new association to one of the N listeners. Each receiver
writes to the shared spool and state store (SQLite in WAL mode, or Redis)
and schedules the quiet-period check on the shared queue exactly as the
main process does, so a study whose instances arrive on several
associations is assembled and processed once. Their metric increments are
relayed to the main process, which alone serves ``/metrics``.

A receiver process exits when asked (SIGTERM from the main process on
shutdown) and by itself when the main process is gone.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass, field
from typing import Any

from spinegate.service.config import SpinegateConfig
from spinegate.service.logging_setup import configure_logging
from spinegate.service.metrics import Metrics
from spinegate.service.scp import Receiver, start_scp
from spinegate.service.worker import build_worker

__all__ = ["MetricsRelay", "ReceiverProcesses", "RELAYED_COUNTERS"]

log = logging.getLogger(__name__)

# The Metrics counters a Receiver increments.
RELAYED_COUNTERS = ("associations", "instances", "received_bytes", "quarantined")


class _RelayedCounter:
    def __init__(self, name: str, sink: Any, labels: tuple[str, ...] = ()) -> None:
        self._name, self._sink, self._labels = name, sink, labels

    def labels(self, *values: str) -> _RelayedCounter:
        return _RelayedCounter(self._name, self._sink, tuple(values))

    def inc(self, amount: float = 1.0) -> None:
        self._sink.put((self._name, self._labels, amount))


class MetricsRelay:
    """Stands in for `service.metrics.Metrics` in a receiver process: each
    counter increment goes to ``sink`` (a multiprocessing queue) for the
    main process to apply (`ReceiverProcesses`)."""

    def __init__(self, sink: Any) -> None:
        for name in RELAYED_COUNTERS:
            setattr(self, name, _RelayedCounter(name, sink))


def _receive(config: SpinegateConfig, sink: Any, parent_pid: int, log_level: str) -> None:
    """Body of a receiver process: SCP only, until SIGTERM or the parent is gone."""
    configure_logging(log_level)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides (a terminal's ^C reaches all)
    store, worker = build_worker(config)
    scp = start_scp(config, Receiver(config, store, worker.on_instance_stored, MetricsRelay(sink)))
    log.info("receiver process started pid=%d", os.getpid())
    try:
        while not stop.wait(1.0) and os.getppid() == parent_pid:
            pass
    finally:
        scp.shutdown()
        store.close()
        log.info("receiver process stopped pid=%d", os.getpid())


@dataclass
class ReceiverProcesses:
    """The extra receiver processes of one ``spinegate serve`` and the thread
    applying their metric increments to ``metrics``."""

    config: SpinegateConfig
    metrics: Metrics
    log_level: str = "INFO"
    processes: list[Any] = field(default_factory=list)
    _sink: Any = field(default=None, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _relay: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        """Start ``receiver_processes − 1`` receivers (spawned: no state is
        inherited from this process's threads)."""
        ctx = multiprocessing.get_context("spawn")
        self._sink = ctx.Queue()
        self._relay = threading.Thread(target=self._apply_relayed, name="metrics-relay", daemon=True)
        self._relay.start()
        for _ in range(self.config.network.receiver_processes - 1):
            p = ctx.Process(target=_receive, args=(self.config, self._sink, os.getpid(), self.log_level),
                            name="spinegate-receiver", daemon=True)
            p.start()
            self.processes.append(p)
        log.info("receiver processes started pids=%s", ",".join(str(p.pid) for p in self.processes))

    def _apply_relayed(self) -> None:
        while True:
            try:
                name, labels, amount = self._sink.get(timeout=0.5)
            except queue.Empty:
                if self._stop.is_set():  # stopped and drained
                    return
                continue
            counter = getattr(self.metrics, name)
            (counter.labels(*labels) if labels else counter).inc(amount)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM each receiver, wait, kill what is left."""
        for p in self.processes:
            if p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join(timeout_s)
            if p.is_alive():
                log.warning("receiver process did not stop pid=%d; killing it", p.pid)
                p.kill()
                p.join(timeout_s)
        self._stop.set()
        if self._relay is not None:
            self._relay.join(timeout_s)
