"""The axial path of one series: segment → assign levels → measure → SEG.

Levels come from the sagittal series' disc centroids when one shares the
axial series' frame of reference, else from the order of the axial disc
sections (flagged for review). A Dixon water series is measured with its
fat partner (same grid) for fat fraction, with the magnitude noise floor
estimated on the water image's lean muscle and removed; T1/T2 series get fat
infiltration by thresholding.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
from spinegate.dicom_io.study import Header

from spinegate.biomech.axial_measurements import (
    FLAG_LEVELS_FROM_AXIAL,
    AxialGeometry,
    axial_spine_labels,
    disc_centroids_from_axial,
    measure_muscles,
    nearest_disc_levels,
)
from spinegate.biomech.axial_levels import level_disagreements
from spinegate.biomech.muscle_morphometry import magnitude_noise_sigma
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.levels import StructureKind
from spinegate.dicom_io.measurements import MuscleLevelMeasurements
from spinegate.dicom_io.muscles import MUSCLE_LABELS
from spinegate.dicom_io.volume import SeriesError, SeriesVolume, read_series
from spinegate.inference.axial_classes import DISC_CLASS, MUSCLE_CLASSES, VB_CLASS
from spinegate.inference.axial_engine import LOW_MUSCLE_CONFIDENCE, AxialSegmentation, mean_class_score
from spinegate.inference.engine import FLAG_LOW_CONFIDENCE, EngineError, SegmentationEngine

__all__ = ["AxialResult", "SegmentedAxialSeries", "dixon_partner", "measure_axial_series", "segment_axial_series",
           "sagittal_disc_centroids", "FLAG_DIXON_MISMATCH", "FLAG_DIXON_NOISE_UNKNOWN"]

log = logging.getLogger(__name__)

FLAG_DIXON_MISMATCH = "dixon_fat_geometry_mismatch"
# Too few uniform muscle pixels to estimate the Dixon noise: fat fractions
# keep the magnitude noise floor (read high in lean muscle).
FLAG_DIXON_NOISE_UNKNOWN = "dixon_noise_floor_not_removed"
# The axial model finds no disc where the sagittal series puts one: the
# levels assigned from the sagittal centroids may be off.
FLAG_LEVEL_DISAGREEMENT = "sagittal_axial_level_disagreement"


@dataclass(frozen=True)
class AxialResult:
    """Everything the pipeline keeps from one axial series: the volume, its
    spinegate label map (muscles and named levels), the measurements, the
    series' review flags and per-stage seconds."""

    volume: SeriesVolume
    label_map: np.ndarray
    measurements: list[MuscleLevelMeasurements]
    flags: tuple[str, ...]
    timings_s: dict[str, float]
    dixon_noise_sigma: float | None = None


@dataclass(frozen=True)
class SegmentedAxialSeries:
    """The segmentation of an axial series (classes per native pixel, area
    calibration and clean-up applied): it needs nothing from the other
    series, so it runs beside the sagittal stage."""

    volume: SeriesVolume
    classes: np.ndarray
    timings_s: dict[str, float]
    class_scores: np.ndarray | None = None  # the network's score of each pixel's class


def _same_grid(a: SeriesVolume, b: SeriesVolume) -> str:
    """Why two volumes are not on one grid ('' when they are)."""
    if a.array.shape != b.array.shape:
        return f"shape {a.array.shape} vs {b.array.shape}"
    if a.frame_of_reference_uid != b.frame_of_reference_uid:
        return "different frames of reference"
    if not np.allclose(a.affine[:3, 1:3], b.affine[:3, 1:3], atol=1e-3):
        return "different orientation or pixel spacing"
    if not np.allclose(a.positions_lps, b.positions_lps, atol=0.05):
        return "different slice positions"
    return ""


def dixon_partner(water: Sequence[Header], fat_series: Mapping[str, Sequence[Header]]) -> tuple[str, Sequence[Header]] | None:
    """The fat series acquired with a water series: same frame of reference
    and acquisition (same slice count, nearest series number)."""
    w = water[0]
    candidates = [(uid, items) for uid, items in fat_series.items()
                  if str(items[0].get("FrameOfReferenceUID", "")) == str(w.get("FrameOfReferenceUID", ""))]
    if not candidates:
        return None
    number = int(w.get("SeriesNumber") or 0)
    return min(candidates, key=lambda c: (len(c[1]) != len(water), abs(int(c[1][0].get("SeriesNumber") or 0) - number)))


def segment_axial_series(datasets: Sequence[Header], engine: SegmentationEngine[AxialSegmentation]
                         ) -> SegmentedAxialSeries:
    """Read an axial series and segment it (network, calibration,
    post-processing); `measure_axial_series` names the levels and measures.

    Raises
    ------
    SeriesError
        From `read_series`, or ``not_axial_grid`` when the in-plane axes are
        not patient x/y.
    """
    t0 = time.perf_counter()
    volume = read_series(datasets, min_slices=1, allow_gaps=True)
    t1 = time.perf_counter()
    try:
        seg = engine.segment(volume)
    except EngineError as e:
        raise SeriesError("not_axial_grid", str(e)) from e
    return SegmentedAxialSeries(volume, seg.classes, {"load": t1 - t0, "segment": seg.timings_s["inference"],
                                                    "postprocess": seg.timings_s["postprocess"]}, seg.class_scores)


def measure_axial_series(
    segmented: SegmentedAxialSeries, weighting: Weighting,
    sagittal_disc_centroids: Mapping[str, Mapping[str, Any]], fat_datasets: Sequence[Header] | None = None,
) -> AxialResult:
    """Assign levels to a segmented axial series and measure its muscles.

    Parameters
    ----------
    sagittal_disc_centroids : mapping
        Frame of reference UID → {disc level → centroid} from the sagittal
        series of the study.
    fat_datasets : sequence, optional
        The Dixon fat partner of a water series.

    Raises
    ------
    SeriesError
        ``nothing_segmented`` (no muscle found), or from `read_series` on
        the fat partner.
    """
    t3 = time.perf_counter()
    volume, classes = segmented.volume, segmented.classes
    geometry = AxialGeometry(volume.positions_lps, volume.affine[:3, 1], volume.affine[:3, 2])
    muscles = {f"{m}_{s}": classes == c for (m, s), c in MUSCLE_CLASSES.items()}
    disc = classes == DISC_CLASS
    flags: list[str] = []
    centroids = dict(sagittal_disc_centroids.get(volume.frame_of_reference_uid) or {})
    if not centroids:
        centroids = disc_centroids_from_axial(geometry, disc)
        flags.append(FLAG_LEVELS_FROM_AXIAL)
    if not any(m.any() for m in muscles.values()):
        raise SeriesError("nothing_segmented", "the axial model found no paraspinal muscle")
    water = fat = None
    image = volume.array if weighting in (Weighting.T1, Weighting.T2) else None
    if fat_datasets is not None:
        fat_volume = read_series(fat_datasets, min_slices=1, allow_gaps=True)
        mismatch = _same_grid(volume, fat_volume)
        if mismatch:
            flags.append(f"{FLAG_DIXON_MISMATCH}: {mismatch}")
            log.warning("dixon pair not measured series_uid=%s reason=%s", volume.series_instance_uid, mismatch)
        else:
            water, fat = volume.array, fat_volume.array
    sigma = None
    if water is not None:
        try:
            sigma = magnitude_noise_sigma(water, np.any(list(muscles.values()), axis=0))
        except ValueError as e:
            sigma = 0.0
            flags.append(FLAG_DIXON_NOISE_UNKNOWN)
            log.warning("dixon noise floor not removed series_uid=%s reason=%s", volume.series_instance_uid, e)
        log.info("dixon noise series_uid=%s sigma=%.2f", volume.series_instance_uid, sigma)
    measurements = measure_muscles(geometry, muscles, disc, centroids, image=image, water=water, fat=fat,
                                   flags=tuple(f for f in flags if not f.startswith(FLAG_DIXON_MISMATCH)),
                                   dixon_noise_sigma=sigma or 0.0)
    if FLAG_LEVELS_FROM_AXIAL not in flags:
        measurements = _with_disagreements(geometry, disc, centroids, measurements)
    if segmented.class_scores is not None:
        measurements = _with_confidence(segmented.class_scores, muscles, measurements)
    levels = nearest_disc_levels(geometry, centroids)
    label_map = axial_spine_labels(geometry, classes == VB_CLASS, disc, levels)
    for key, value in MUSCLE_LABELS.items():
        label_map[muscles[f"{key[0]}_{key[1]}"]] = value
    return AxialResult(volume, label_map, measurements, tuple(flags),
                       {**segmented.timings_s, "measure": time.perf_counter() - t3}, sigma)


def _with_disagreements(geometry: AxialGeometry, disc: np.ndarray, centroids: Mapping[str, Any],
                        measurements: Sequence[MuscleLevelMeasurements]) -> list[MuscleLevelMeasurements]:
    """The muscles at a level where the axial discs disagree with the
    sagittal ones, flagged (`biomech.axial_levels.level_disagreements`)."""
    off = level_disagreements(geometry.positions @ geometry.normal, disc.any(axis=(1, 2)),
                              {k: float(np.asarray(c) @ geometry.normal) for k, c in centroids.items()},
                              geometry.slice_spacing_mm)
    why = {k: f"{d:.0f}mm_from_axial_disc" if np.isfinite(d) else "no_axial_disc" for k, d in off.items()}
    return [replace(m, flags=tuple(m.flags) + (f"{FLAG_LEVEL_DISAGREEMENT}_{m.level.name}_{why[m.level.name]}",))
            if m.level.name in off else m for m in measurements]


def _with_confidence(class_scores: np.ndarray, muscles: Mapping[str, np.ndarray],
                     measurements: Sequence[MuscleLevelMeasurements]) -> list[MuscleLevelMeasurements]:
    """Each muscle measurement whose pixels over its level's slices the
    network scored under `LOW_MUSCLE_CONFIDENCE`, flagged."""
    out = []
    for m in measurements:
        ks = [k for k, _, _ in m.per_slice]
        score = mean_class_score(class_scores[ks], muscles[m.muscle.name][ks])
        if score < LOW_MUSCLE_CONFIDENCE:
            m = replace(m, flags=tuple(m.flags) + (f"{FLAG_LOW_CONFIDENCE}_{score:.2f}",))
        out.append(m)
    return out


def sagittal_disc_centroids(volumes_and_measurements: Sequence[tuple[SeriesVolume, Sequence[Any]]]
                            ) -> dict[str, dict[str, np.ndarray]]:
    """Frame of reference → disc centroids of the sagittal series naming the
    most discs in it."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for volume, measurements in volumes_and_measurements:
        discs = {m.structure.name: np.asarray(m.centroid_lps_mm) for m in measurements
                 if m.structure.kind is StructureKind.DISC}
        key = volume.frame_of_reference_uid
        if key and len(discs) > len(out.get(key, {})):
            out[key] = discs
    return out

