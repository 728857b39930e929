"""Disc relaxometry in the pipeline.

Before routing, a multi-echo series is reduced to the echo nearest
`dicom_io.echoes.SEGMENTATION_ECHO_TIME_MS`, which is segmented like any
sagittal series. After segmentation, each stack with at least three echo
times (`dicom_io.echoes.find_echo_sets`: a multi-echo series, or
single-echo series of one geometry and TR) is fitted voxel by voxel
(`biomech.relaxometry`), its discs summarised with the segmented series'
disc labels, and the map written as a DICOM Parametric Map.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from spinegate.biomech.relaxometry import MAX_T2_MS, fit_t2_ms, summarise_t2
from spinegate.dicom_io.echoes import EchoSet, split_echoes
from spinegate.dicom_io.levels import StructureKind
from spinegate.dicom_io.measurements import RelaxationSummary
from spinegate.dicom_io.parametric_map import build_t2_map
from spinegate.dicom_io.study import SeriesHeaders
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesError, SeriesVolume, read_series
from spinegate.service.series_stages import RoutedSeries, SeriesAnalysis
from spinegate.service.version import __version__

__all__ = ["EchoFit", "segmentation_echo", "fit_echo_sets", "write_t2_map", "T2_MAP_SERIES_NUMBER_OFFSET"]

log = logging.getLogger(__name__)

T2_MAP_SERIES_NUMBER_OFFSET = 9300


@dataclass(frozen=True)
class EchoFit:
    """One fitted stack: its echoes, the segmented series whose discs are
    summarised, the T2 map (ms, on that series' grid) and the per-disc T2."""

    echo_set: EchoSet
    series: RoutedSeries
    volume: SeriesVolume
    t2_ms: np.ndarray
    discs: Mapping[str, RelaxationSummary]


def segmentation_echo(headers: SeriesHeaders) -> SeriesHeaders:
    """A multi-echo series as its echo to segment; any other series as it is."""
    echoes = split_echoes(headers)
    if echoes is None:
        return headers
    tes = list(echoes)
    chosen = EchoSet((headers.series_uid,) * len(tes), tuple(tes), tuple(echoes.values())).segmentation_echo()
    log.info("multi-echo series series_uid=%s echoes=%d segmented_echo_ms=%s", headers.series_uid, len(tes),
             tes[chosen])
    return SeriesHeaders(headers.series_uid, echoes[tes[chosen]])


def _segmented(echo_set: EchoSet, routed: Sequence[RoutedSeries], results: Mapping[str, SeriesAnalysis | str]
               ) -> tuple[RoutedSeries, SeriesAnalysis] | None:
    """The analysed series of the set with discs, nearest the segmentation echo time."""
    target = echo_set.echo_times_ms[echo_set.segmentation_echo()]
    candidates = []
    for r in routed:
        a = results.get(r.series_uid)
        if r.series_uid in echo_set.series_uids and isinstance(a, SeriesAnalysis) and any(
                m.structure.kind is StructureKind.DISC for m in a.structures):
            te = echo_set.echo_times_ms[echo_set.series_uids.index(r.series_uid)]
            candidates.append((abs(te - target), r, a))
    if not candidates:
        return None
    _, r, a = min(candidates, key=lambda c: c[0])
    return r, a


def fit_echo_sets(echo_sets: Sequence[EchoSet], routed: Sequence[RoutedSeries],
                  results: dict[str, SeriesAnalysis | str]) -> list[EchoFit]:
    """Fit each echo set whose series was segmented with discs; the
    segmented series' analysis gets its discs' T2 (``results`` updated)."""
    fits = []
    for echo_set in echo_sets:
        found = _segmented(echo_set, routed, results)
        if found is None:
            log.info("relaxometry skipped series_uids=%s reason=no_segmented_discs",
                     ",".join(sorted(set(echo_set.series_uids))))
            continue
        series, analysis = found
        t0 = time.perf_counter()
        try:
            volumes = [read_series(list(echo)) for echo in echo_set.echoes]
        except SeriesError as e:
            log.warning("relaxometry skipped series_uid=%s reason=%s", series.series_uid, e.reason)
            continue
        if any(v.array.shape != analysis.volume.array.shape or not np.allclose(v.affine, analysis.volume.affine,
                                                                                atol=1e-3) for v in volumes):
            log.warning("relaxometry skipped series_uid=%s reason=echo_geometry_mismatch", series.series_uid)
            continue
        t2 = fit_t2_ms(np.stack([v.array for v in volumes]), np.array(echo_set.echo_times_ms))
        discs = {m.structure.name: s for m in analysis.structures if m.structure.kind is StructureKind.DISC
                 if (s := summarise_t2(t2, analysis.label_map == m.structure.label)) is not None}
        results[series.series_uid] = replace(
            analysis, relaxation=discs, echo_times_ms=echo_set.echo_times_ms,
            timings_s={**analysis.timings_s, "relaxometry": time.perf_counter() - t0})
        fits.append(EchoFit(echo_set, series, analysis.volume, t2, discs))
        log.info("relaxometry done series_uid=%s echoes=%d discs=%d", series.series_uid,
                 len(echo_set.echo_times_ms), len(discs))
    return fits


def write_t2_map(fit: EchoFit, digest: str, out_dir: Path) -> tuple[Path, str]:
    """The fit's Parametric Map on disk; its path and SOP Instance UID."""
    datasets = fit.series.headers.datasets
    sop_uid = derive_uid(digest, fit.series.series_uid, "t2-map")
    pm = build_t2_map(fit.volume, datasets, fit.t2_ms, fit.echo_set.echo_times_ms,
                      derive_uid(digest, fit.series.series_uid, "t2-map-series"), sop_uid,
                      T2_MAP_SERIES_NUMBER_OFFSET + int(datasets[0].get("SeriesNumber") or 0), __version__, MAX_T2_MS)
    path = out_dir / f"t2map_{fit.series.series_uid}.dcm"
    pm.save_as(path, enforce_file_format=True)
    return path, sop_uid
