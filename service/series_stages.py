"""How the pipeline segments and measures a routed series, one stage per
engine behind the `SeriesStage` protocol (the pipeline never branches on an
engine's name).

A stage splits its work in two: ``segment`` needs nothing but the series, so
the pipeline may run it in a second lane; ``measure`` may use the rest of the
study (`StudyContext`), which exists once every stage that does not need it
(``uses_study_context`` false) has measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from spinegate.biomech.morphometry import measure_structure
from spinegate.biomech.plausibility import with_review_flags
from spinegate.dicom_io.classify import Plane, SeriesClass, Weighting
from spinegate.dicom_io.measurements import (MuscleLevelMeasurements, RelaxationSummary, StructureMeasurements,
                                             StructureRadiomics)
from spinegate.dicom_io.seg import segment_numbers
from spinegate.dicom_io.study import Header, SeriesHeaders
from spinegate.dicom_io.volume import SeriesError, SeriesVolume, read_series
from spinegate.inference.axial_engine import AxialSegmentation
from spinegate.inference.engine import ModelInfo, SegmentationEngine, SpineSegmentation
from spinegate.service.axial_stage import (SegmentedAxialSeries, dixon_partner, measure_axial_series,
                                           sagittal_disc_centroids, segment_axial_series)
from spinegate.service.config import EngineName
from spinegate.service.routing import RoutingDecision

__all__ = ["RoutedSeries", "SeriesAnalysis", "StudyContext", "SeriesStage", "SagittalSpineStage", "AxialMuscleStage",
           "stage_for", "study_context"]


@dataclass(frozen=True)
class RoutedSeries:
    """One series of the study, classified and routed."""

    headers: SeriesHeaders
    series_class: SeriesClass
    decision: RoutingDecision

    @property
    def series_uid(self) -> str:
        return self.headers.series_uid

    @property
    def description(self) -> str:
        return self.headers.description


@dataclass(frozen=True)
class StudyContext:
    """What a series' measurement may use from the rest of the study.

    ``sagittal_disc_centroids``: frame of reference UID → {disc level →
    centroid (LPS mm)} from the series that measured discs.
    ``dixon_fat_series``: series UID → headers of the study's axial Dixon
    fat images (measured with their water partner)."""

    sagittal_disc_centroids: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)
    dixon_fat_series: Mapping[str, Sequence[Header]] = field(default_factory=dict)


@dataclass(frozen=True)
class SeriesAnalysis:
    """A measured series: its volume and spinegate label map (for the SEG),
    its measurements, review flags and per-step seconds.
    ``measured_with_series_uid`` names a second series this one's
    measurement consumed (a Dixon fat partner)."""

    volume: SeriesVolume
    label_map: np.ndarray
    structures: tuple[StructureMeasurements, ...] = ()
    muscles: tuple[MuscleLevelMeasurements, ...] = ()
    flags: tuple[str, ...] = ()
    timings_s: Mapping[str, float] = field(default_factory=dict)
    dixon_noise_sigma: float | None = None
    measured_with_series_uid: str | None = None
    # Structure name → its radiomics features (`with_radiomics`).
    radiomics: Mapping[str, StructureRadiomics] = field(default_factory=dict)
    # Disc name → its T2 from the study's echoes of this stack (`service.relaxometry_stage`).
    relaxation: Mapping[str, RelaxationSummary] = field(default_factory=dict)
    echo_times_ms: tuple[float, ...] = ()
    # The sagittal series whose S1-anchored count named this one's levels
    # (`service.study_naming`).
    levels_anchored_by_series_uid: str | None = None


class SeriesStage(Protocol):
    """One engine's path through the pipeline."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def uses_study_context(self) -> bool: ...

    def segment(self, series: RoutedSeries) -> Any:
        """Segment the series (thread-safe; needs no other series).

        Raises
        ------
        SeriesError
            When the series cannot be read or segmented.
        """

    def measure(self, series: RoutedSeries, segmented: Any, context: StudyContext) -> SeriesAnalysis:
        """Name the structures of a segmented series and measure them.

        Raises
        ------
        SeriesError
            ``nothing_segmented`` and other reasons the series has no result.
        """


@dataclass(frozen=True)
class _SegmentedSagittal:
    volume: SeriesVolume
    segmentation: SpineSegmentation
    timings_s: Mapping[str, float]


@dataclass(frozen=True)
class SagittalSpineStage:
    """Vertebral bodies and discs of a sagittal series: heights, volumes,
    centroids per named level."""

    engine: SegmentationEngine[SpineSegmentation]
    uses_study_context: bool = False

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def segment(self, series: RoutedSeries) -> _SegmentedSagittal:
        t0 = time.perf_counter()
        volume = read_series(series.headers.datasets)
        t1 = time.perf_counter()
        segmentation = self.engine.segment(volume)
        return _SegmentedSagittal(volume, segmentation, {"load": t1 - t0, "segment": time.perf_counter() - t1})

    def measure(self, series: RoutedSeries, segmented: _SegmentedSagittal, context: StudyContext) -> SeriesAnalysis:
        t0 = time.perf_counter()
        named, volume = segmented.segmentation.named, segmented.volume
        present = segment_numbers(named.label_map)
        if not present:
            raise SeriesError("nothing_segmented", "the model found no vertebral body or disc")
        structures = with_review_flags([measure_structure(named.label_map == s.label, volume.affine, s,
                                                          named.structure_flags.get(s.name, ())) for s in present])
        return SeriesAnalysis(volume, named.label_map, structures=structures, flags=named.series_flags,
                              timings_s={**segmented.timings_s, "measure": time.perf_counter() - t0})


@dataclass(frozen=True)
class AxialMuscleStage:
    """Paraspinal muscles of an axial series: CSA, fat, per level named from
    the sagittal discs (hence ``uses_study_context``); a Dixon water series
    is measured with its fat partner."""

    engine: SegmentationEngine[AxialSegmentation]
    uses_study_context: bool = True

    @property
    def info(self) -> ModelInfo:
        return self.engine.info

    def segment(self, series: RoutedSeries) -> SegmentedAxialSeries:
        return segment_axial_series(series.headers.datasets, self.engine)

    def measure(self, series: RoutedSeries, segmented: SegmentedAxialSeries, context: StudyContext) -> SeriesAnalysis:
        weighting = series.series_class.weighting
        partner = (dixon_partner(series.headers.datasets, context.dixon_fat_series)
                   if weighting is Weighting.WATER else None)
        res = measure_axial_series(segmented, weighting, context.sagittal_disc_centroids,
                                   partner[1] if partner else None)
        return SeriesAnalysis(res.volume, res.label_map, muscles=tuple(res.measurements), flags=res.flags,
                              timings_s=res.timings_s, dixon_noise_sigma=res.dixon_noise_sigma,
                              measured_with_series_uid=partner[0] if partner else None)


_STAGES: Mapping[EngineName, Callable[[Any], SeriesStage]] = {
    EngineName.SAGITTAL_SPINE: SagittalSpineStage,
    EngineName.AXIAL_MUSCLE: AxialMuscleStage,
}


def stage_for(name: EngineName | str, engine: SegmentationEngine[Any]) -> SeriesStage:
    """The stage that drives ``engine`` (the engine routing names ``name``)."""
    return _STAGES[EngineName(name)](engine)


def study_context(routed: Sequence[RoutedSeries], analysed: Sequence[SeriesAnalysis]) -> StudyContext:
    """The context for the stages that use it, from the series measured
    before them."""
    fat = {r.series_uid: r.headers.datasets for r in routed
           if r.series_class.plane is Plane.AXIAL and r.series_class.weighting is Weighting.FAT}
    with_discs = [(a.volume, a.structures) for a in analysed if a.structures]
    return StudyContext(sagittal_disc_centroids(with_discs), fat)
