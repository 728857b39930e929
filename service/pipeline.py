"""The path of one study, as stages with typed inputs and outputs.

select (classify + route) → segment → measure → report (SEG per series, one
SR) → write outputs. Each stage only unpacks values and calls the pure
functions of dicom_io / inference / biomech. Used identically by the queue
worker and by ``spinegate analyze``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from spinegate.biomech.axial_measurements import model_acsa_cm2
from spinegate.biomech.morphometry import measure_structure
from spinegate.dicom_io.classify import Plane, SeriesClass, Weighting, classify_series
from spinegate.dicom_io.levels import StructureKind
from spinegate.dicom_io.measurements import MuscleLevelMeasurements, StructureMeasurements
from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation, segment_numbers
from spinegate.dicom_io.sr import SeriesReport, build_measurement_report, series_measurement_groups
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesError, SeriesVolume, read_series
from spinegate.service.axial_stage import (AxialResult, dixon_partner, measure_axial_series, sagittal_disc_centroids,
                                 segment_axial_series)
from spinegate.service.biomech_stage import BiomechSolver, choose_centroids, load_report, subject_from_header
from spinegate.service.config import RoutingRule
from spinegate.service.engines import Engines
from spinegate.service.routing import RoutingDecision, route
from spinegate.service.version import __version__

__all__ = ["StudyFailed", "SeriesOutcome", "StudyResult", "analyze_study", "measurements_document"]

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER_OFFSET = 9000
SR_SERIES_NUMBER = 9999


class StudyFailed(RuntimeError):
    """The study produced no result; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class SeriesOutcome:
    """What happened to one series: routing, and results if analysed."""

    series_uid: str
    description: str
    series_class: SeriesClass
    decision: RoutingDecision
    error: str = ""
    measurements: list[StructureMeasurements] = field(default_factory=list)
    muscles: list[MuscleLevelMeasurements] = field(default_factory=list)
    flags: tuple[str, ...] = ()
    seg_path: Path | None = None
    seg_sop_instance_uid: str = ""
    timings_s: dict[str, float] = field(default_factory=dict)
    dixon_noise_sigma: float | None = None


@dataclass
class StudyResult:
    study_uid: str
    series: list[SeriesOutcome]
    sr_path: Path | None
    measurements_path: Path
    outputs: list[Path]
    timings_s: dict[str, float]
    biomechanics: dict[str, Any] | None = None


def _read_headers(paths: Sequence[Path]) -> dict[str, list[tuple[Path, Dataset]]]:
    by_series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for p in paths:
        try:
            # Large values (Pixel Data) stay on disk until a routed series is
            # decoded, so each file is parsed once for routing and analysis.
            ds = pydicom.dcmread(p, defer_size="64 KB")
            by_series[str(ds.SeriesInstanceUID)].append((p, ds))
        except Exception as e:  # unreadable files are reported, not fatal
            log.warning("unreadable input file=%s: %s", p.name, e)
    return by_series


def _input_digest(by_series: dict[str, list[tuple[Path, Dataset]]], model_shas: Sequence[str]) -> str:
    uids = sorted(str(ds.SOPInstanceUID) for items in by_series.values() for _, ds in items)
    return hashlib.sha256(("\n".join(uids + sorted(model_shas))).encode()).hexdigest()[:32]


def _algorithm(engine: Any) -> AlgorithmInfo:
    return AlgorithmInfo(engine.info.name, engine.info.version, engine.info.sha256)


def analyze_study(
    paths: Sequence[Path],
    engines: Engines,
    rules: tuple[RoutingRule, ...],
    out_dir: Path,
    biomechanics: bool = True,
    biomech_solver: BiomechSolver | None = None,
) -> StudyResult:
    """Run the whole pipeline on the files of one study; with
    ``biomechanics`` the spinal loads too (files under ``out_dir/biomech``),
    solved by ``biomech_solver`` (its own process; default: this thread).

    Sagittal series run first: their disc centroids name the levels of the
    axial series in the same frame of reference, and the axial muscle
    areas set the strength of the biomechanical model.

    Raises
    ------
    StudyFailed
        ``no_readable_instances``, ``multiple_studies``, ``no_analysable_series``
        (nothing routed to an engine, or every routed series failed).
    """
    t_start = time.perf_counter()
    by_series = _read_headers(paths)
    if not by_series:
        raise StudyFailed("no_readable_instances", "no readable DICOM instance in the study")
    studies = {str(items[0][1].StudyInstanceUID) for items in by_series.values()}
    if len(studies) != 1:
        raise StudyFailed("multiple_studies", f"inputs hold {len(studies)} studies")
    study_uid = studies.pop()
    routed = []
    for series_uid, items in sorted(by_series.items(), key=lambda kv: int(kv[1][0][1].get("SeriesNumber") or 0)):
        headers = [ds for _, ds in items]
        cls = classify_series(headers)
        desc = str(headers[0].get("SeriesDescription", "") or f"series {headers[0].get('SeriesNumber', '')}")
        routed.append(SeriesOutcome(series_uid, desc, cls, route(cls, rules)))
    headers_of = {uid: [ds for _, ds in items] for uid, items in by_series.items()}
    engine_names = sorted({o.decision.engine for o in routed if o.decision.engine})
    digest = _input_digest(by_series, [engines.model_info(n).sha256 for n in engine_names])
    fat_series = {o.series_uid: headers_of[o.series_uid] for o in routed
                  if o.series_class.plane is Plane.AXIAL and o.series_class.weighting is Weighting.FAT}
    out_dir.mkdir(parents=True, exist_ok=True)
    reports: list[SeriesReport] = []
    outputs: list[Path] = []
    sagittal: list[tuple[SeriesVolume, list[StructureMeasurements]]] = []
    axial: list[tuple[SeriesOutcome, list[Dataset], AxialResult]] = []
    timings: dict[str, float] = {}
    # The axial segmentation needs nothing from the sagittal series, so it
    # runs in a second thread while this one segments, measures and writes
    # the sagittal series (ONNX Runtime and the large numpy operations
    # release the GIL): on 2 cores that fills the core the single-threaded
    # stages leave idle. Level assignment and measurement (which need the
    # sagittal disc centroids) then run here. Several axial series get a
    # lane each, up to the core count.
    axial_routed = [o for o in routed if o.decision.engine == "axial_muscle"]
    lanes = max(1, min(len(axial_routed), os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="axial-inference") as pool:
        axial_jobs = {o.series_uid: pool.submit(segment_axial_series, headers_of[o.series_uid],
                                                engines.get(o.decision.engine)) for o in axial_routed}
        # Sagittal before axial (stable within each group: series number order).
        for outcome in sorted(routed, key=lambda o: o.decision.engine == "axial_muscle"):
            cls, decision = outcome.series_class, outcome.decision
            log.info("series routed series_uid=%s plane=%s weighting=%s rule=%s engine=%s skipped=%s",
                     outcome.series_uid, cls.plane.value, cls.weighting.value, decision.rule, decision.engine,
                     decision.skipped_reason)
            if decision.engine is None:
                continue
            engine = engines.get(decision.engine)
            headers = headers_of[outcome.series_uid]
            try:
                if decision.engine == "axial_muscle":
                    partner = dixon_partner(headers, fat_series) if cls.weighting is Weighting.WATER else None
                    if partner is not None:
                        _mark_fat_partner(routed, partner[0], outcome.series_uid)
                    res = measure_axial_series(axial_jobs[outcome.series_uid].result(), cls.weighting,
                                               sagittal_disc_centroids(sagittal), partner[1] if partner else None)
                    outcome.muscles, outcome.flags = res.measurements, res.flags
                    outcome.dixon_noise_sigma = res.dixon_noise_sigma
                    axial.append((outcome, headers, res))
                    continue
                report = _analyse_series(outcome, headers, engine, _algorithm(engine), digest, out_dir)
            except SeriesError as e:
                outcome.error = f"{e.reason}: {e}"
                log.warning("series failed series_uid=%s reason=%s", outcome.series_uid, e.reason)
                continue
            if report is not None:
                sagittal.append((report.volume, outcome.measurements))
                reports.append(report)
                outputs.append(outcome.seg_path)  # type: ignore[arg-type]
    outcomes = routed
    sagittal_reports = list(reports)
    # The loads need only the measurements: they are solved (in the
    # solver's process when one is given) while the axial SEGs and the
    # SR's series groups are written here.
    loads_of = None
    if sagittal_reports and biomechanics:
        t_bio = time.perf_counter()
        muscles = max((res.measurements for _, _, res in axial), key=lambda ms: len({m.level.name for m in ms}),
                      default=[])
        loads_of = (biomech_solver or BiomechSolver.in_process()).solve(
            choose_centroids([r.measurements for r in sagittal_reports]),
            subject_from_header(reports[0].source_images[0]), out_dir / "biomech", model_acsa_cm2(muscles) or None)
    for outcome, headers, res in axial:
        reports.append(_write_axial_seg(outcome, headers, res, engines.get("axial_muscle"), digest, out_dir))
        outputs.append(outcome.seg_path)  # type: ignore[arg-type]
    primary = "sagittal_spine" if "sagittal_spine" in engine_names else (engine_names or [None])[0]
    algorithm = _algorithm(engines.get(primary)) if primary else None
    sr_path = None
    sr_uid = derive_uid(digest, "sr")
    if reports:
        assert algorithm is not None
        t0 = time.perf_counter()
        groups = series_measurement_groups(reports, algorithm, sr_uid)
        timings["sr_groups"] = time.perf_counter() - t0
    loads = biomech_doc = None
    if loads_of is not None:
        t0 = time.perf_counter()
        bio = loads_of()
        log.info("biomechanics done study_uid=%s tasks=%d flags=%s solve_s=%.2f", study_uid, len(bio.tasks),
                 ",".join(bio.flags), bio.solve_s)
        loads, biomech_doc = load_report(bio), bio.document()
        timings["biomechanics"] = bio.solve_s
        timings["biomechanics_wait"] = time.perf_counter() - t0
        timings["biomechanics_start_to_result"] = time.perf_counter() - t_bio
    if reports:
        t0 = time.perf_counter()
        sr = build_measurement_report(
            reports, algorithm, derive_uid(digest, "sr-series"), sr_uid, SR_SERIES_NUMBER,
            __version__, loads, groups,
        )
        sr_path = out_dir / "sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        outputs.append(sr_path)
        log.info("sr written study_uid=%s sop_instance_uid=%s groups=%d", study_uid, sr.SOPInstanceUID,
                 sum(len(r.measurements) + len(r.muscles) for r in reports))
        timings["sr"] = time.perf_counter() - t0 + timings["sr_groups"]
    timings["total"] = time.perf_counter() - t_start
    result = StudyResult(study_uid, outcomes, sr_path, out_dir / "measurements.json", outputs, timings, biomech_doc)
    models = [engines.model_info(n) for n in sorted(engine_names, key=lambda n: n != primary)]
    result.measurements_path.write_text(json.dumps(measurements_document(result, models), indent=1))
    if not reports:
        reasons = sorted({o.error or o.decision.skipped_reason for o in outcomes})
        raise StudyFailed("no_analysable_series", f"no series could be analysed ({', '.join(reasons)})")
    return result


def _mark_fat_partner(outcomes: list[SeriesOutcome], fat_uid: str, water_uid: str) -> None:
    for o in outcomes:
        if o.series_uid == fat_uid:
            o.decision = RoutingDecision(None, None, f"dixon_fat_image_measured_with_water_series_{water_uid}")


def _write_seg(outcome: SeriesOutcome, volume: SeriesVolume, datasets: list[Dataset], label_map: np.ndarray,
               algorithm: AlgorithmInfo, digest: str, out_dir: Path) -> Dataset:
    series_number = SEG_SERIES_NUMBER_OFFSET + int(datasets[0].get("SeriesNumber") or 0)
    seg_ds = build_segmentation(
        volume, datasets, label_map, algorithm, derive_uid(digest, outcome.series_uid, "seg-series"),
        derive_uid(digest, outcome.series_uid, "seg"), series_number, __version__,
    )
    outcome.seg_sop_instance_uid = str(seg_ds.SOPInstanceUID)
    outcome.seg_path = out_dir / f"seg_{outcome.series_uid}.dcm"
    seg_ds.save_as(outcome.seg_path, enforce_file_format=True)
    return seg_ds


def _write_axial_seg(outcome: SeriesOutcome, datasets: list[Dataset], res: AxialResult, engine: Any, digest: str,
                     out_dir: Path) -> SeriesReport:
    t0 = time.perf_counter()
    algorithm = _algorithm(engine)
    seg_ds = _write_seg(outcome, res.volume, datasets, res.label_map, algorithm, digest, out_dir)
    outcome.timings_s = {**res.timings_s, "seg_write": time.perf_counter() - t0}
    numbers = {s.label: i + 1 for i, s in enumerate(segment_numbers(res.label_map))}
    return SeriesReport(res.volume, datasets, seg_ds, numbers, [], outcome.description, outcome.flags,
                        muscles=res.measurements, algorithm=algorithm)


def _analyse_series(
    outcome: SeriesOutcome, datasets: list[Dataset], engine: Any, algorithm: AlgorithmInfo,
    digest: str, out_dir: Path,
) -> SeriesReport | None:
    t0 = time.perf_counter()
    volume = read_series(datasets)
    t1 = time.perf_counter()
    seg = engine.segment(volume)
    t2 = time.perf_counter()
    label_map = seg.named.label_map
    outcome.flags = seg.named.series_flags
    present = segment_numbers(label_map)
    if not present:
        outcome.error = "nothing_segmented: the model found no vertebral body or disc"
        return None
    outcome.measurements = [
        measure_structure(label_map == s.label, volume.affine, s, seg.named.structure_flags.get(s.name, ()))
        for s in present
    ]
    t3 = time.perf_counter()
    seg_ds = _write_seg(outcome, volume, datasets, label_map, algorithm, digest, out_dir)
    t4 = time.perf_counter()
    outcome.timings_s = {"load": t1 - t0, "segment": t2 - t1, "measure": t3 - t2, "seg_write": t4 - t3}
    numbers = {s.label: i + 1 for i, s in enumerate(present)}
    return SeriesReport(volume, datasets, seg_ds, numbers, outcome.measurements, outcome.description, outcome.flags)


def _rounded(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _muscle_entry(m: MuscleLevelMeasurements) -> dict[str, Any]:
    return {
        "muscle": m.muscle.name,
        "label": m.muscle.display_name,
        "level": m.level.name,
        "csa_midplane_cm2": _rounded(m.csa_midplane_cm2, 3),
        "csa_mean_cm2": round(m.csa_mean_cm2, 3),
        "n_slices": m.n_slices,
        "rcsa": _rounded(m.rcsa, 3),
        "fat_infiltration": _rounded(m.fat_infiltration, 4),
        "fat_fraction": _rounded(m.fat_fraction, 4),
        "volume_ml": _rounded(m.volume_ml, 2),
        "asymmetry": _rounded(m.asymmetry, 4),
        "centroid_lps_mm": [round(float(v), 2) for v in np.asarray(m.centroid_lps_mm)],
        "reference_slice_index": m.slice_index,
        "slices": [{"index": k, "csa_cm2": round(a, 3), "centroid_lps_mm": [round(v, 2) for v in c]}
                   for k, a, c in m.per_slice],
        "flags": list(m.flags),
    }


def measurements_document(result: StudyResult, models: Sequence[Any]) -> dict[str, Any]:
    """The documented ``measurements.json`` (see docs/outputs.md, "measurements.json");
    ``models`` are the `ModelInfo` of the engines used, the study's main one
    first."""
    series = []
    for o in result.series:
        entry: dict[str, Any] = {
            "series_instance_uid": o.series_uid,
            "description": o.description,
            "plane": o.series_class.plane.value,
            "weighting": o.series_class.weighting.value,
            "rule": o.decision.rule,
            "engine": o.decision.engine,
            "skipped_reason": o.decision.skipped_reason or None,
            "error": o.error or None,
            "flags": list(o.flags),
            "seg_sop_instance_uid": o.seg_sop_instance_uid or None,
            "timings_s": {k: round(v, 3) for k, v in o.timings_s.items()},
            "structures": [
                {
                    "level": m.structure.name,
                    "label": m.structure.display_name,
                    "kind": "disc" if m.structure.kind is StructureKind.DISC else "vertebral_body",
                    "volume_cm3": round(m.volume_cm3, 3),
                    "height_mm": round(m.height_mm, 2),
                    "centroid_lps_mm": [round(float(v), 2) for v in np.asarray(m.centroid_lps_mm)],
                    "flags": list(m.flags),
                }
                for m in o.measurements
            ],
            "muscles": [_muscle_entry(m) for m in o.muscles],
            "dixon_noise_sigma": _rounded(o.dixon_noise_sigma, 3),
        }
        series.append(entry)
    return {
        "schema": "spinegate.measurements/1",
        "study_instance_uid": result.study_uid,
        "software_version": __version__,
        "model": ({"name": models[0].name, "version": models[0].version, "sha256": models[0].sha256}
                  if models else None),
        "models": [{"name": m.name, "version": m.version, "sha256": m.sha256} for m in models],
        "series": series,
        "biomechanics": result.biomechanics,
        "outputs": [p.name for p in result.outputs],
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
    }


def structure_table(doc: dict[str, Any]) -> str:
    """A plain-text table of the measurements (for the CLI)."""
    lines = [f"{'series':<22} {'structure':<28} {'height mm':>9} {'volume cm3':>10}  centroid LPS mm"]
    for s in doc["series"]:
        for m in s["structures"]:
            c = ", ".join(f"{v:7.1f}" for v in m["centroid_lps_mm"])
            lines.append(f"{s['description'][:22]:<22} {m['label']:<28} {m['height_mm']:>9.1f} {m['volume_cm3']:>10.2f}  ({c})")
        if s["skipped_reason"] or s["error"]:
            lines.append(f"{s['description'][:22]:<22} skipped: {s['skipped_reason'] or s['error']}")
    muscles = [(s["description"], m) for s in doc["series"] for m in s.get("muscles") or ()]
    if muscles:
        lines.append(f"\n{'series':<22} {'muscle':<26} {'level':<6} {'CSA mid':>7} {'CSA mean':>8} {'rCSA':>5} "
                     f"{'FI %':>5} {'FF %':>5}")

        def fmt(v: float | None, scale: float = 1.0, spec: str = ".2f") -> str:
            return "-" if v is None else format(v * scale, spec)

        for desc, m in muscles:
            lines.append(f"{desc[:22]:<22} {m['label']:<26} {m['level']:<6} {fmt(m['csa_midplane_cm2']):>7} "
                         f"{fmt(m['csa_mean_cm2']):>8} {fmt(m['rcsa']):>5} {fmt(m['fat_infiltration'], 100, '.1f'):>5} "
                         f"{fmt(m['fat_fraction'], 100, '.1f'):>5}")
    return "\n".join(lines)
