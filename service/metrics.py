"""Prometheus metrics (prometheus-client), named by Prometheus conventions:
base units, ``_total`` counters, ``_seconds`` histograms, ``_bytes``.

Labels carry only operational values — SOP class and transfer syntax UIDs,
AE titles of configured destinations, reasons, stages, engines, states —
never a patient or study identifier (no PHI, bounded cardinality).
Study counts by state and queue depth are read from the state store and
the queue when Prometheus scrapes (`StateCollector`), so several processes
sharing one store report the same truth.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics", "StateCollector"]

# Seconds: from sub-second stages to slow studies.
_STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 40, 80, 160, 320)
_TURNAROUND_BUCKETS = (5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200, 3600)


class Metrics:
    """Every metric spinegate exports, on one registry.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        A fresh registry per service (tests build several in one process).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.associations = Counter("spinegate_associations_total", "DICOM associations requested of the SCP",
                                    ["result", "reason"], registry=r)
        self.instances = Counter("spinegate_instances_received_total", "C-STORE requests by outcome",
                                 ["sop_class", "transfer_syntax", "status"], registry=r)
        self.received_bytes = Counter("spinegate_received_bytes_total", "bytes of instances received (stored or not)",
                                      registry=r)
        self.quarantined = Counter("spinegate_quarantined_total", "instances refused and quarantined", ["reason"],
                                   registry=r)
        self.stage_seconds = Histogram("spinegate_stage_duration_seconds", "time per pipeline stage",
                                       ["stage", "engine", "backend"], buckets=_STAGE_BUCKETS, registry=r)
        self.turnaround_seconds = Histogram("spinegate_study_turnaround_seconds",
                                            "last instance received to every output confirmed by the destinations",
                                            buckets=_TURNAROUND_BUCKETS, registry=r)
        self.studies_finished = Counter("spinegate_studies_finished_total", "studies leaving processing",
                                        ["outcome", "reason"], registry=r)
        self.export_attempts = Counter("spinegate_export_attempts_total", "C-STORE associations to a destination",
                                       ["destination"], registry=r)
        self.export_retries = Counter("spinegate_export_retries_total", "export attempts after a failed one",
                                      ["destination"], registry=r)
        self.export_failures = Counter("spinegate_export_failures_total",
                                       "exports abandoned after the last attempt", ["destination"], registry=r)
        self.level_naming_unverified = Counter(
            "spinegate_level_naming_unverified_total",
            "analysed series whose level names rest on an assumption (every level marked unverified)", registry=r)
        self.studies_needing_review = Counter(
            "spinegate_studies_needing_review_total",
            "analysed studies with at least one result that needs a person's look (the review worklist)", registry=r)
        self.review_reasons = Counter(
            "spinegate_review_reasons_total",
            "results needing review, by coded reason (99SPINEGATE code value, docs/outputs.md)", ["reason"],
            registry=r)
        self.model_info = Gauge("spinegate_model_info", "loaded model (value 1)",
                                ["name", "version", "sha256", "backend"], registry=r)
        self.gpu_memory_bytes = Gauge("spinegate_gpu_memory_used_bytes", "GPU memory in use (GPU backends only)",
                                      ["device"], registry=r)
        self.up_since = Gauge("spinegate_start_time_seconds", "process start, Unix time", registry=r)
        self.up_since.set(time.time())

    def observe_stage(self, stage: str, seconds: float, engine: str = "", backend: str = "") -> None:
        self.stage_seconds.labels(stage, engine, backend).observe(max(seconds, 0.0))


class StateCollector(Collector):
    """Study counts by state and queue backlog, read at scrape time.

    ``study_counts()`` → {state: count}; ``queue_depth()`` → pending jobs;
    ``oldest_waiting_s()`` → age of the oldest study waiting to be processed;
    optional ``storage_free_bytes()`` and ``ready()`` (the /readyz verdict).
    """

    def __init__(self, study_counts: Callable[[], dict[str, int]], queue_depth: Callable[[], int],
                 oldest_waiting_s: Callable[[], float], states: Iterable[str],
                 storage_free_bytes: Callable[[], float] | None = None, ready: Callable[[], bool] | None = None) -> None:
        self._counts, self._depth, self._oldest = study_counts, queue_depth, oldest_waiting_s
        self._states = tuple(states)
        self._free, self._ready = storage_free_bytes, ready

    def collect(self) -> Iterable[Any]:
        studies = GaugeMetricFamily("spinegate_studies", "studies in the state store by state", labels=["state"])
        counts = self._counts()
        for state in self._states:
            studies.add_metric([state], counts.get(state, 0))
        yield studies
        yield GaugeMetricFamily("spinegate_queue_depth", "jobs waiting in the task queue", value=self._depth())
        yield GaugeMetricFamily("spinegate_queue_oldest_waiting_seconds",
                                "age of the oldest complete study not yet being processed", value=self._oldest())
        if self._free is not None:
            yield GaugeMetricFamily("spinegate_storage_free_bytes", "free space on the storage volume",
                                    value=self._free())
        if self._ready is not None:
            yield GaugeMetricFamily("spinegate_ready", "1 when every /readyz check passes", value=int(self._ready()))
