"""The biomechanics stage: measured centroids + patient size → spinal loads.

Shared by the pipeline (after segmentation) and ``spinegate loads`` (from a
``measurements.json`` alone). Chooses the sagittal series with the most
spine levels, reads height/weight/sex from the DICOM header (defaults are
flagged), runs `biomech.study.run_biomechanics` and converts the result for
the SR writer.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
from spinegate.dicom_io.study import Header

from spinegate.biomech.anthropometry import Subject
from spinegate.biomech.spine_geometry import CHAIN, JOINTS, LUMBAR
from spinegate.biomech.study import StudyBiomechanics, run_biomechanics
from spinegate.biomech.trunk_model import MODEL_NAME, MODEL_VERSION
from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.measurements import LoadReport, StructureMeasurements, TaskLoadReport

__all__ = ["BiomechSolver", "subject_from_header", "subject_from_document", "centroids_from_document",
           "choose_centroids", "run_stage", "load_report", "loads_table"]

log = logging.getLogger(__name__)


def subject_from_header(ds: Header) -> Subject:
    """Height (PatientSize, m), weight (PatientWeight, kg), sex (PatientSex)."""
    return Subject.from_dicom_values(ds.get("PatientSize"), ds.get("PatientWeight"), ds.get("PatientSex"))


def subject_from_document(doc: Mapping[str, Any], height_m: float | None = None, mass_kg: float | None = None,
                          sex: str | None = None) -> Subject:
    """The subject recorded in a measurements.json (recorded defaults count
    as absent, so they are flagged again), with the given values overriding
    it."""
    recorded = (doc.get("biomechanics") or {}).get("subject") or {}
    defaults = set(recorded.get("defaults_used") or ())

    def pick(override: Any, key: str, flag: str) -> Any:
        return override if override is not None else None if flag in defaults else recorded.get(key)

    return Subject.from_dicom_values(pick(height_m, "height_m", "default_height_used"),
                                     pick(mass_kg, "mass_kg", "default_weight_used"),
                                     pick(sex, "sex", "default_sex_used"))


# A structure this much smaller than the median of its kind (bodies, discs)
# in the same series is under-segmented or cut: its centroid is not a joint
# centre (field: an L3L4 disc of 2.9 cm3 beside neighbours of 10-15 cm3).
SMALL_FRACTION_OF_MEDIAN = 0.4
EDGE_FLAG = "touches_field_of_view_edge"


def _chain(per_series: Iterable[Sequence[tuple[str, Any, float, Sequence[str]]]]
           ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Centroids of the series covering most of the modelled spine, and the
    structures among them whose centroids are not to be joint centres."""
    chains = [[r for r in records if r[0] in CHAIN] for records in per_series]
    chosen = max(chains, key=len, default=[])
    distrusted: dict[str, str] = {}
    for kind in (set(JOINTS), set(CHAIN) - set(JOINTS)):
        volumes = [volume for name, _, volume, _ in chosen if name in kind]
        median = float(np.median(volumes)) if len(volumes) >= 3 else 0.0
        for name, _, volume, flags in chosen:
            if name in kind and EDGE_FLAG in flags:
                distrusted[name] = "field_of_view_edge"
            elif name in kind and volume < SMALL_FRACTION_OF_MEDIAN * median:
                distrusted[name] = "implausibly_small"
    return {name: np.asarray(c, float) for name, c, _, _ in chosen}, distrusted


def choose_centroids(series_measurements: Sequence[Sequence[StructureMeasurements]]
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Centroids of the analysed series covering most of the modelled spine,
    and why some of them are not to be joint centres (cut by the field of
    view, implausibly small beside their neighbours)."""
    return _chain([(m.structure.name, m.centroid_lps_mm, m.volume_cm3, m.flags) for m in ms]
                  for ms in series_measurements)


def centroids_from_document(doc: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The same from a measurements.json (schema spinegate.measurements/1)."""
    return _chain([(s["level"], s["centroid_lps_mm"], float(s.get("volume_cm3") or 0.0), s.get("flags") or ())
                   for s in series.get("structures") or ()] for series in doc.get("series") or ())


def run_stage(centroids: Mapping[str, np.ndarray], subject: Subject, out_dir: Path,
              measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None,
              distrusted: Mapping[str, str] | None = None) -> StudyBiomechanics:
    result = run_biomechanics(centroids, subject, out_dir, measured_acsa_cm2, distrusted)
    log.info("biomechanics done tasks=%d flags=%s solve_s=%.2f", len(result.tasks), ",".join(result.flags),
             result.solve_s)
    return result


def _import_solver() -> None:
    import opensim  # noqa: F401  (the child's first study should not pay for the import)


def _solver_process_init(parent_pid: int) -> None:
    """In the solver's child: ^C is the parent's to handle, and the child
    ends when the parent is gone (even killed), never left as an orphan."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class BiomechSolver:
    """Runs `run_stage` in a child process of its own.

    OpenSim holds the GIL for the whole solve (measured: a thread gains
    nothing), so in the pipeline's process it would stop the SEG and SR
    writing that can go on beside it. One spawned child (not forked: the
    parent runs ONNX Runtime and network threads) is started on first use
    and kept; if it dies, the study is solved in this process and the
    child is started again for the next one.

    Parameters
    ----------
    process : bool
        False: solve in the calling thread when the result is asked for
        (`in_process`; ``spinegate analyze`` of one study, tests).
    """

    def __init__(self, process: bool = True) -> None:
        self.process = process
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def in_process(cls) -> "BiomechSolver":
        return cls(process=False)

    def start(self) -> None:
        """Start the child now and import OpenSim in it (service start-up)."""
        if self.process:
            self._executor().submit(_import_solver)

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_solver_process_init, initargs=(os.getpid(),))
            return self._pool

    def _drop(self, wait: bool) -> None:
        """Forget the child (the next study starts another)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)

    def solve(self, centroids: Mapping[str, np.ndarray], subject: Subject, out_dir: Path,
              measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None,
              distrusted: Mapping[str, str] | None = None) -> Callable[[], StudyBiomechanics]:
        """Start solving; returns a function that waits for the result."""
        args = (dict(centroids), subject, out_dir, dict(measured_acsa_cm2) if measured_acsa_cm2 else None,
                dict(distrusted or {}))
        if not self.process:
            return lambda: run_stage(*args)
        try:
            future: Future[StudyBiomechanics] | None = self._executor().submit(run_stage, *args)
        except (BrokenProcessPool, RuntimeError, OSError) as e:
            log.warning("biomechanics process unavailable, solving here: %s", e)
            self._drop(wait=False)
            future = None

        def result() -> StudyBiomechanics:
            if future is not None:
                try:
                    return future.result()
                except BrokenProcessPool as e:
                    log.warning("biomechanics process died, solving here: %s", e)
                    self._drop(wait=False)
            return run_stage(*args)

        return result

    def close(self) -> None:
        self._drop(wait=True)


def load_report(result: StudyBiomechanics) -> LoadReport:
    """The SR's view of the biomechanics result."""
    tasks = []
    for t in result.tasks:
        discs = tuple((structure_by_name(j), t.joints[j].compression_n, t.joints[j].anterior_shear_n) for j in JOINTS)
        bodies = tuple((structure_by_name(b), t.vertebral_body_compression_n[b]) for b in reversed(LUMBAR))
        tasks.append(TaskLoadReport(t.task.name, t.task.description, discs, bodies, t.flags))
    g = result.geometry
    s = result.subject
    return LoadReport(s.height_m, s.mass_kg, s.sex.value, tuple(tasks), result.flags,
                      g.lordosis_deg if g else None, g.sacral_slope_deg if g else None, MODEL_NAME, MODEL_VERSION)


def loads_table(block: Mapping[str, Any]) -> str:
    """Plain-text table of a ``biomechanics`` block (for the CLI)."""
    subject = block["subject"]
    lines = [f"subject: {subject['height_m']} m, {subject['mass_kg']} kg, sex {subject['sex']}"
             + (f" (defaults: {', '.join(subject['defaults_used'])})" if subject["defaults_used"] else "")]
    if block.get("error"):
        lines.append(f"biomechanics not run: {block['error']}")
    for task in block.get("tasks") or ():
        lines.append(f"\n{task['description']}" + ("" if task["feasible"] else "  ** INFEASIBLE: muscles too weak **"))
        lines.append(f"  {'joint':<6} {'compression N':>13} {'ant. shear N':>12}")
        for joint, v in task["joints"].items():
            lines.append(f"  {joint:<6} {v['compression_n']:>13.0f} {v['anterior_shear_n']:>12.0f}")
        bodies = ", ".join(f"{b} {v:.0f}" for b, v in task["vertebral_body_compression_n"].items())
        lines.append(f"  vertebral bodies (N): {bodies}")
    if block.get("flags"):
        lines.append(f"\nflags: {', '.join(block['flags'])}")
    return "\n".join(lines)
