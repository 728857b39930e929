"""The path of one study, as stages that take and return frozen values.

read headers → select (classify + route) → analyse (segment + measure, per
engine through `SeriesStage`) → loads (OpenSim, in the background) → SEG
per series → SR → ``measurements.json``. Each stage only unpacks values and
calls the pure functions of dicom_io / inference / biomech. Used identically
by the queue worker and by ``spinegate analyze``.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from threadpoolctl import threadpool_limits

from spinegate.biomech.axial_measurements import model_acsa_cm2
from spinegate.dicom_io.classify import classify_series
from spinegate.dicom_io.echoes import EchoSet, find_echo_sets
from spinegate.dicom_io.sr import build_measurement_report, series_measurement_groups
from spinegate.dicom_io.study import StudyHeaders, read_study_headers
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesError
from spinegate.inference.engine import ModelInfo
from spinegate.biomech.study import StudyBiomechanics
from spinegate.service.biomech_stage import BiomechSolver, choose_centroids, load_report, subject_from_header
from spinegate.dicom_io.encapsulated_pdf import build_encapsulated_pdf
from spinegate.service.config import OutputsConfig, RoutingRule
from spinegate.service.pdf_report import DOCUMENT_TITLE, render_pdf_report
from spinegate.service.engines import Engines
from spinegate.service.measurements_doc import measurements_document, structure_table
from spinegate.service.relaxometry_stage import fit_echo_sets, segmentation_echo, write_t2_map
from spinegate.service.routing import RoutingDecision, route
from spinegate.service.series_outputs import SeriesOutputs, algorithm_of, finish_series
from spinegate.service.series_stages import (RoutedSeries, SeriesAnalysis, SeriesStage, StudyContext, stage_for,
                                             study_context)
from spinegate.service.study_naming import with_study_naming
from spinegate.service.study_result import SeriesOutcome, StudyFailed, StudyResult
from spinegate.service.version import __version__

__all__ = ["StudyFailed", "SeriesOutcome", "StudyResult", "StudySelection", "analyze_study", "select_series",
           "analyse_series", "start_loads", "measurements_document", "structure_table"]

log = logging.getLogger(__name__)

SR_SERIES_NUMBER = 9999
PDF_SERIES_NUMBER = 9998
PDF_FILE = "report_pdf.dcm"  # the DICOM object; report.pdf beside it is the same document


@dataclass(frozen=True)
class StudySelection:
    """The routed series of one study, the stage of each routed one and the
    digest that seeds every UID spinegate derives for it."""

    study_uid: str
    routed: tuple[RoutedSeries, ...]
    stages: Mapping[str, SeriesStage]  # series UID → stage (routed series only)
    primary: ModelInfo | None  # the engine the SR names as its device
    models: tuple[ModelInfo, ...]  # primary first
    digest: str
    echo_sets: tuple[EchoSet, ...] = ()  # stacks at several echo times (relaxometry)


def select_series(study: StudyHeaders, engines: Engines, rules: Sequence[RoutingRule]) -> StudySelection:
    """Classify and route every series; load the stages they need.

    Raises
    ------
    StudyFailed
        ``no_readable_instances`` or ``multiple_studies``.
    """
    if not study.series:
        raise StudyFailed("no_readable_instances", "no readable DICOM instance in the study")
    if len(study.study_uids) != 1:
        raise StudyFailed("multiple_studies", f"inputs hold {len(study.study_uids)} studies")
    echo_sets = tuple(find_echo_sets(study.series))
    # Single-echo series of one stack: only the echo to segment is segmented.
    other_echoes = {uid: es.series_uids[es.segmentation_echo()] for es in echo_sets for uid in es.series_uids
                    if uid != es.series_uids[es.segmentation_echo()]}
    routed = []
    for headers in study.series:
        headers = segmentation_echo(headers)  # a multi-echo series: the echo to segment
        cls = classify_series(headers.datasets)
        decision = route(cls, tuple(rules))
        if headers.series_uid in other_echoes and decision.engine is not None:
            decision = RoutingDecision(None, None,
                                       f"echo_of_stack_segmented_in_series_{other_echoes[headers.series_uid]}")
        log.info("series routed series_uid=%s plane=%s weighting=%s rule=%s engine=%s skipped=%s",
                 headers.series_uid, cls.plane.value, cls.weighting.value, decision.rule, decision.engine,
                 decision.skipped_reason)
        routed.append(RoutedSeries(headers, cls, decision))
    stages: dict[str, SeriesStage] = {}
    uses_context: dict[str, bool] = {}
    for r in routed:
        if r.decision.engine:
            stages[r.series_uid] = stage_for(r.decision.engine, engines.get(r.decision.engine))
            uses_context[r.decision.engine] = stages[r.series_uid].uses_study_context
    # The study's main engine (the SR's device) is the first, by name, of
    # those that measure without the rest of the study.
    ranked = sorted(uses_context, key=lambda name: (uses_context[name], name))
    infos = {name: engines.model_info(name) for name in ranked}
    digest = hashlib.sha256("\n".join(sorted(study.sop_instance_uids) + sorted(i.sha256 for i in infos.values()))
                            .encode()).hexdigest()[:32]
    return StudySelection(next(iter(study.study_uids)), tuple(routed), stages, infos[ranked[0]] if ranked else None,
                          tuple(infos[n] for n in ranked[:1] + sorted(ranked[1:])), digest, echo_sets)


def _pairs(routed: Sequence[RoutedSeries], stages: Mapping[str, SeriesStage]) -> list[tuple[RoutedSeries, SeriesStage]]:
    return [(r, stages[r.series_uid]) for r in routed if r.series_uid in stages]


def _attempt(series: RoutedSeries, work: Callable[[], SeriesAnalysis]) -> SeriesAnalysis | str:
    """The series' analysis, or why it has none (``reason: message``)."""
    try:
        return work()
    except SeriesError as e:
        log.warning("series failed series_uid=%s reason=%s", series.series_uid, e.reason)
        return f"{e.reason}: {e}"


def analyse_series(selection: StudySelection,
                   finish_early: Callable[[RoutedSeries, SeriesAnalysis], SeriesAnalysis] | None = None
                   ) -> dict[str, SeriesAnalysis | str]:
    """Segment and measure every routed series (series UID → analysis, or
    the error that stopped it). ``finish_early`` is called here on each
    series measured without the study context, while the side lanes still
    run (its result replaces the analysis).

    The stages that use the study context (the axial muscles, named from
    the sagittal discs) segment in side lanes while this thread segments and
    measures the others (ONNX Runtime and the large numpy operations release
    the GIL: on 2 cores that fills the core the single-threaded steps leave
    idle); they are measured here once the context exists. While lanes run
    side by side, BLAS (the resampling's matrix products) keeps to one
    thread: its worker threads would wait on cores the lanes hold (on 2 cores
    the sagittal score resampling took 0.25-0.95 s with 2 BLAS threads
    beside a busy core, 0.13 s with one; the standard study ~1 s and ~2
    CPU-seconds less; bench/README).
    """
    pairs = _pairs(selection.routed, selection.stages)
    first = [(r, s) for r, s in pairs if not s.uses_study_context]
    later = [(r, s) for r, s in pairs if s.uses_study_context]
    results: dict[str, SeriesAnalysis | str] = {}
    lanes = max(1, min(len(later), os.cpu_count() or 1))
    blas = threadpool_limits(limits=1, user_api="blas") if later else nullcontext()
    with blas, ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="series-lane") as pool:
        pending: dict[str, Future[Any]] = {r.series_uid: pool.submit(s.segment, r) for r, s in later}
        for r, s in first:
            results[r.series_uid] = _attempt(r, partial(_segment_and_measure, r, s))
        results = with_study_naming(results)
        context = study_context(selection.routed, [a for a in results.values() if isinstance(a, SeriesAnalysis)])
        for r, _ in first:
            if finish_early is not None and isinstance(a := results[r.series_uid], SeriesAnalysis):
                results[r.series_uid] = finish_early(r, a)
        for r, s in later:
            results[r.series_uid] = _attempt(r, partial(_measure_segmented, r, s, pending[r.series_uid], context))
    return results


def _segment_and_measure(series: RoutedSeries, stage: SeriesStage) -> SeriesAnalysis:
    return stage.measure(series, stage.segment(series), StudyContext())


def _measure_segmented(series: RoutedSeries, stage: SeriesStage, segmented: Future[Any],
                       context: StudyContext) -> SeriesAnalysis:
    return stage.measure(series, segmented.result(), context)


def start_loads(analysed: Sequence[tuple[RoutedSeries, SeriesAnalysis]], out_dir: Path, solver: BiomechSolver | None
                ) -> Callable[[], StudyBiomechanics] | None:
    """Start the OpenSim loads from the measured spine levels (the richest
    series' centroids), the subject in the header and the axial muscle
    areas; ``None`` when no series measured the spine. The result is
    waited for with the returned callable."""
    with_spine = [(r, a) for r, a in analysed if a.structures]
    if not with_spine:
        return None
    muscles = max((a.muscles for _, a in analysed if a.muscles), key=lambda ms: len({m.level.name for m in ms}),
                  default=())
    centroids, distrusted = choose_centroids([a.structures for _, a in with_spine])
    return (solver or BiomechSolver.in_process()).solve(
        centroids, subject_from_header(with_spine[0][0].headers.first), out_dir / "biomech",
        model_acsa_cm2(list(muscles)) or None, distrusted)


def _outcome(series: RoutedSeries, result: SeriesAnalysis | str | None, done: SeriesOutputs | None,
             consumed_by: Mapping[str, str], t2_map_uid: str = "") -> SeriesOutcome:
    decision = series.decision
    if series.series_uid in consumed_by:
        decision = RoutingDecision(None, None, f"dixon_fat_image_measured_with_water_series_{consumed_by[series.series_uid]}")
    base = SeriesOutcome(series.series_uid, series.description, series.series_class, decision)
    if isinstance(result, str):
        return replace(base, error=result)
    if result is None or done is None:
        return base
    return replace(base, measurements=result.structures, muscles=result.muscles, flags=result.flags,
                   seg_path=done.seg_path, seg_sop_instance_uid=str(done.report.segmentation.SOPInstanceUID),
                   accuracy=done.report.accuracy, timings_s={**result.timings_s, "seg_write": done.seg_write_s},
                   dixon_noise_sigma=result.dixon_noise_sigma, radiomics=result.radiomics,
                   relaxation=result.relaxation, echo_times_ms=result.echo_times_ms, t2_map_sop_instance_uid=t2_map_uid,
                   levels_anchored_by_series_uid=result.levels_anchored_by_series_uid or "")


def _write_pdf_report(doc: dict[str, Any], sources: Sequence[Any], digest: str, path: Path) -> None:
    """The PDF report as an Encapsulated PDF (and as ``report.pdf`` beside it)."""
    pdf = render_pdf_report(doc, sources[0])
    path.with_name("report.pdf").write_bytes(pdf)
    obj = build_encapsulated_pdf(pdf, sources, derive_uid(digest, "pdf-series"), derive_uid(digest, "pdf"),
                                 PDF_SERIES_NUMBER, DOCUMENT_TITLE, "spinegate report (PDF, derived)", __version__)
    obj.save_as(path, enforce_file_format=True)
    log.info("pdf report written sop_instance_uid=%s bytes=%d", obj.SOPInstanceUID, len(pdf))


def analyze_study(
    paths: Sequence[Path],
    engines: Engines,
    rules: Sequence[RoutingRule],
    out_dir: Path,
    biomechanics: bool = True,
    biomech_solver: BiomechSolver | None = None,
    outputs: OutputsConfig = OutputsConfig(),
) -> StudyResult:
    """Run the whole pipeline on the files of one study; with
    ``biomechanics`` the spinal loads too (files under ``out_dir/biomech``),
    solved by ``biomech_solver`` (its own process; default: this thread);
    key images and the PDF report as ``outputs`` asks.

    Raises
    ------
    StudyFailed
        ``no_readable_instances``, ``multiple_studies``, ``no_analysable_series``
        (nothing routed to an engine, or every routed series failed).
    """
    t_start = time.perf_counter()
    selection = select_series(read_study_headers(paths), engines, rules)
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = selection.primary
    finished: dict[str, SeriesOutputs] = {}

    def finish(r: RoutedSeries, a: SeriesAnalysis) -> SeriesAnalysis:
        assert primary is not None  # a stage ran, so the study has a main engine
        finished[r.series_uid] = out = finish_series(r, a, selection.stages[r.series_uid].info, primary,
                                                     selection.digest, out_dir, outputs)
        return out.analysis

    # A series of an echo stack gets its discs' T2 once every series is in.
    echo_series = {uid for e in selection.echo_sets for uid in e.series_uids} if outputs.relaxometry else set()
    results = analyse_series(selection, lambda r, a: a if r.series_uid in echo_series else finish(r, a))
    fits = fit_echo_sets(selection.echo_sets, selection.routed, results) if outputs.relaxometry else []
    # SEGs in stage order (the series measured without context first), each
    # group in series-number order; the SR lists the series in that order.
    analysed = sorted(((r, a) for r in selection.routed if isinstance(a := results.get(r.series_uid), SeriesAnalysis)),
                      key=lambda ra: selection.stages[ra[0].series_uid].uses_study_context)
    timings: dict[str, float] = {}
    t_bio = time.perf_counter()
    # The loads need only the measurements: they are solved (in the solver's
    # process when one is given) while the other SEGs and SR groups are written.
    loads_of = start_loads(analysed, out_dir, biomech_solver) if biomechanics else None
    for r, a in analysed:
        if r.series_uid not in finished:
            results[r.series_uid] = finish(r, a)
    done = [finished[r.series_uid] for r, _ in analysed]
    reports = [d.report for d in done]
    t2_maps = {fit.series.series_uid: write_t2_map(fit, selection.digest, out_dir) for fit in fits}
    key_images = [p for d in done for p in d.key_images]
    timings["key_images"] = sum(d.key_images_s for d in done)
    sr_path = None
    loads = biomech_doc = None
    if reports:
        assert selection.primary is not None
        algorithm, sr_uid = algorithm_of(selection.primary), derive_uid(selection.digest, "sr")
        groups = series_measurement_groups(reports, algorithm, sr_uid, [d.sr_groups for d in done])
        timings["sr_groups"] = sum(d.sr_groups_s for d in done)
        if loads_of is not None:
            t0 = time.perf_counter()
            bio = loads_of()
            log.info("biomechanics done study_uid=%s tasks=%d flags=%s solve_s=%.2f", selection.study_uid,
                     len(bio.tasks), ",".join(bio.flags), bio.solve_s)
            loads, biomech_doc = load_report(bio), bio.document()
            timings.update(biomechanics=bio.solve_s, biomechanics_wait=time.perf_counter() - t0,
                           biomechanics_start_to_result=time.perf_counter() - t_bio)
        t0 = time.perf_counter()
        sr = build_measurement_report(reports, algorithm, derive_uid(selection.digest, "sr-series"), sr_uid,
                                      SR_SERIES_NUMBER, __version__, loads, groups)
        sr_path = out_dir / "sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        log.info("sr written study_uid=%s sop_instance_uid=%s groups=%d", selection.study_uid, sr.SOPInstanceUID,
                 sum(len(r.measurements) + len(r.muscles) for r in reports))
        timings["sr"] = time.perf_counter() - t0 + timings["sr_groups"]
    timings["total"] = time.perf_counter() - t_start
    consumed_by = {a.measured_with_series_uid: uid for uid, a in results.items()
                   if isinstance(a, SeriesAnalysis) and a.measured_with_series_uid}
    outcomes = tuple(_outcome(r, results.get(r.series_uid), finished.get(r.series_uid),
                              consumed_by, t2_maps.get(r.series_uid, (None, ""))[1]) for r in selection.routed)
    pdf_path = out_dir / PDF_FILE if outputs.pdf_report and reports else None
    # The SR last: a receiver that waits for the report has the rest by then.
    written = (tuple(d.seg_path for d in done) + tuple(p for p, _ in t2_maps.values())
               + tuple(key_images) + ((pdf_path,) if pdf_path else ()) + ((sr_path,) if sr_path else ()))
    result = StudyResult(selection.study_uid, outcomes, sr_path, out_dir / "measurements.json", written, timings,
                         biomech_doc)
    doc = measurements_document(result, selection.models)
    if pdf_path is not None:
        t0 = time.perf_counter()
        _write_pdf_report(doc, [ds for r, _ in analysed for ds in r.headers.datasets], selection.digest, pdf_path)
        timings["pdf_report"] = time.perf_counter() - t0
        doc["timings_s"]["pdf_report"] = round(timings["pdf_report"], 3)
    result.measurements_path.write_text(json.dumps(doc, indent=1))
    result = replace(result, review=doc["review"])
    if not reports:
        reasons = sorted({o.error or o.decision.skipped_reason for o in outcomes})
        raise StudyFailed("no_analysable_series", f"no series could be analysed ({', '.join(reasons)})")
    return result
