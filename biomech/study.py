"""Biomechanics of one study: from measured centroids (and muscle areas,
when an axial series gave them) to loads for every task, with flags.

Used by the pipeline after segmentation and by ``spinegate loads`` on a
``measurements.json`` alone. Never raises for bad anatomy: a study whose
centroids cannot define a spine gets ``error`` and a flag instead of loads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from spinegate.biomech.anthropometry import Subject
from spinegate.biomech.loads import TASKS, TaskLoads, lumbopelvic_rhythm, solve_task
from spinegate.biomech.spine_geometry import GeometryError, SpineGeometry, robust_spine_geometry

__all__ = ["StudyBiomechanics", "run_biomechanics", "FLAG_LITERATURE_MUSCLES", "FLAG_NOT_RUN"]

log = logging.getLogger(__name__)

FLAG_LITERATURE_MUSCLES = "muscle_strength_from_literature_defaults"
FLAG_NOT_RUN = "biomechanics_not_run"


@dataclass
class StudyBiomechanics:
    """Loads for every task, or the reason there are none."""

    subject: Subject
    geometry: SpineGeometry | None
    tasks: list[TaskLoads] = field(default_factory=list)
    flags: tuple[str, ...] = ()
    error: str = ""
    solve_s: float = 0.0

    def document(self) -> dict[str, Any]:
        """The ``biomechanics`` block of measurements.json (docs/outputs.md)."""
        s = self.subject
        doc: dict[str, Any] = {
            "subject": {"height_m": round(s.height_m, 3), "mass_kg": round(s.mass_kg, 2), "sex": s.sex.value,
                        "defaults_used": list(s.defaults_used)},
            "flags": list(self.flags),
            "error": self.error or None,
            "solve_s": round(self.solve_s, 3),
        }
        if self.geometry is not None:
            doc["geometry"] = {"lordosis_deg": round(self.geometry.lordosis_deg, 1),
                               "sacral_slope_deg": round(self.geometry.sacral_slope_deg, 1),
                               "flags": list(self.geometry.flags)}
        doc["tasks"] = []
        for t in self.tasks:
            pelvis, levels = lumbopelvic_rhythm(t.task.trunk_flexion_deg)
            doc["tasks"].append({
                "name": t.task.name,
                "description": t.task.description,
                "trunk_flexion_deg": t.task.trunk_flexion_deg,
                "pelvis_tilt_deg": round(pelvis, 2),
                "joint_flexion_deg": {j: round(v, 2) for j, v in levels.items()},
                "hand_load_kg_each": round(t.task.hand_load_kg, 3),
                "feasible": t.feasible,
                "flags": list(t.flags),
                "joints": {j: {"compression_n": round(v.compression_n, 1),
                               "anterior_shear_n": round(v.anterior_shear_n, 1),
                               "reserve_torque_nm": round(v.reserve_torque_nm, 3)} for j, v in t.joints.items()},
                "vertebral_body_compression_n": {b: round(v, 1) for b, v in t.vertebral_body_compression_n.items()},
                "files": {k: p.name for k, p in t.files.items()},
            })
        return doc


def run_biomechanics(centroids_lps_mm: Mapping[str, np.ndarray], subject: Subject, out_dir: Path,
                     measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None,
                     distrusted: Mapping[str, str] | None = None) -> StudyBiomechanics:
    """Build the subject's model and solve every task in `biomech.loads.TASKS`.

    ``distrusted`` names structures whose centroids are not to be joint
    centres, with the reason (`robust_spine_geometry`).

    Files (one ``.osim`` model per task, the pose, muscle forces, activations
    and joint reactions as ``.sto``) are written under ``out_dir``.
    """
    t0 = time.perf_counter()
    flags = list(subject.defaults_used)
    if not measured_acsa_cm2:
        flags.append(FLAG_LITERATURE_MUSCLES)
    try:
        geometry = robust_spine_geometry(centroids_lps_mm, distrusted)
    except GeometryError as e:
        log.warning("biomechanics not run reason=%s: %s", e.reason, e)
        return StudyBiomechanics(subject, None, [], tuple(flags + [FLAG_NOT_RUN, e.reason]), f"{e.reason}: {e}",
                                 time.perf_counter() - t0)
    flags += list(geometry.flags)
    results = []
    for task in TASKS:
        try:
            results.append(solve_task(subject, geometry, task, out_dir / task.name, measured_acsa_cm2))
        except RuntimeError as e:  # solver failure: report, keep the other tasks
            log.warning("biomechanics task failed task=%s: %s", task.name, e)
            flags.append(f"solver_failed_{task.name}")
    for r in results:
        flags += [f for f in r.flags if f not in flags]
    return StudyBiomechanics(subject, geometry, results, tuple(flags), "", time.perf_counter() - t0)
