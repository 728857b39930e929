"""What the pipeline writes for one analysed series, and when.

Each series gets its radiomics (when asked for), its DICOM SEG, its key
images and its share of the SR's measurement groups in one step,
`finish_series`. The pipeline runs that step for the series measured
without the study context while the side lanes still segment the others
(on 2 cores the main lane would otherwise wait idle for the axial lane),
and for the rest once the loads are under way.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping

import numpy as np

from spinegate.biomech.radiomics import structure_radiomics
from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation, segment_numbers
from spinegate.dicom_io.sr import MeasurementGroup, SeriesReport, report_measurement_groups
from spinegate.dicom_io.uids import derive_uid
from spinegate.inference.engine import ModelInfo
from spinegate.inference.level_naming import naming_unverified
from spinegate.service.config import OutputsConfig
from spinegate.service.key_images import write_key_images
from spinegate.service.measurements_doc import measurement_accuracy
from spinegate.service.series_stages import RoutedSeries, SeriesAnalysis
from spinegate.service.version import __version__

__all__ = ["SEG_SERIES_NUMBER_OFFSET", "SeriesOutputs", "algorithm_of", "finish_series", "with_radiomics", "write_seg"]

log = logging.getLogger(__name__)

SEG_SERIES_NUMBER_OFFSET = 9000


def algorithm_of(info: ModelInfo) -> AlgorithmInfo:
    return AlgorithmInfo(info.name, info.version, info.sha256, info.backend)


@dataclass(frozen=True)
class SeriesOutputs:
    """One series, finished: its analysis (with radiomics when asked for),
    its SEG, its key images and its SR measurement groups by kind
    (`dicom_io.sr.report_measurement_groups`)."""

    analysis: SeriesAnalysis
    report: SeriesReport
    seg_path: Path
    seg_write_s: float
    key_images: tuple[Path, ...]
    key_images_s: float
    sr_groups: tuple[list[MeasurementGroup], ...]
    sr_groups_s: float


def finish_series(series: RoutedSeries, analysis: SeriesAnalysis, info: ModelInfo, primary: ModelInfo, digest: str,
                  out_dir: Path, outputs: OutputsConfig) -> SeriesOutputs:
    """Radiomics (when ``outputs`` asks), SEG, key images (when asked) and
    SR groups of one measured series; ``info`` is the model that segmented
    it, ``primary`` the study's main model (the SR's device)."""
    if outputs.radiomics:
        analysis = with_radiomics(analysis)
    t0 = time.perf_counter()
    slab_mm = float(np.linalg.norm(analysis.volume.affine[:3, 0]))
    report, path = write_seg(series, analysis, algorithm_of(info), digest, out_dir,
                             measurement_accuracy(info.path, info.name, slab_mm) if analysis.structures else None)
    t1 = time.perf_counter()
    keys = tuple(write_key_images(series, analysis, digest, out_dir)) if outputs.key_images else ()
    t2 = time.perf_counter()
    groups = report_measurement_groups(report, algorithm_of(primary), derive_uid(digest, "sr"))
    return SeriesOutputs(analysis, report, path, t1 - t0, keys, t2 - t1, groups, time.perf_counter() - t2)


def write_seg(series: RoutedSeries, analysis: SeriesAnalysis, algorithm: AlgorithmInfo, digest: str,
              out_dir: Path, accuracy: Mapping[str, Mapping[str, float]] | None = None) -> tuple[SeriesReport, Path]:
    """The series' DICOM SEG on disk, and what the SR needs of it
    (``accuracy``: the model's validated accuracy per structure kind)."""
    t0 = time.perf_counter()
    datasets = series.headers.datasets
    seg = build_segmentation(
        analysis.volume, datasets, analysis.label_map, algorithm, derive_uid(digest, series.series_uid, "seg-series"),
        derive_uid(digest, series.series_uid, "seg"),
        SEG_SERIES_NUMBER_OFFSET + int(datasets[0].get("SeriesNumber") or 0), __version__,
        level_unverified=naming_unverified(analysis.flags),
    )
    path = out_dir / f"seg_{series.series_uid}.dcm"
    seg.save_as(path, enforce_file_format=True)
    numbers = {s.label: i + 1 for i, s in enumerate(segment_numbers(analysis.label_map))}
    report = SeriesReport(analysis.volume, datasets, seg, numbers, list(analysis.structures), series.description,
                          analysis.flags, muscles=list(analysis.muscles), algorithm=algorithm,
                          accuracy=dict(accuracy or {}), radiomics=dict(analysis.radiomics),
                          relaxation=dict(analysis.relaxation))
    log.info("seg written series_uid=%s seconds=%.3f", series.series_uid, time.perf_counter() - t0)
    return report, path


def with_radiomics(analysis: SeriesAnalysis) -> SeriesAnalysis:
    """The analysis with the radiomics features of each vertebral body and
    disc (central slice: the one its height was measured on)."""
    t0 = time.perf_counter()
    features = {}
    for m in analysis.structures:
        try:
            features[m.structure.name] = structure_radiomics(
                analysis.volume.array, analysis.label_map == m.structure.label, analysis.volume.affine,
                m.height_line.slice_index)
        except ValueError as e:  # a structure too thin on its height slice: its measurements say so already
            log.warning("no radiomics structure=%s reason=%s", m.structure.name, e)
    return replace(analysis, radiomics=features,
                   timings_s={**analysis.timings_s, "radiomics": time.perf_counter() - t0})
