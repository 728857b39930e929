"""What the pipeline produces for one study, as frozen values."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from spinegate.dicom_io.classify import SeriesClass
from spinegate.dicom_io.measurements import (MuscleLevelMeasurements, RelaxationSummary, StructureMeasurements,
                                             StructureRadiomics)
from spinegate.service.routing import RoutingDecision

__all__ = ["StudyFailed", "SeriesOutcome", "StudyResult"]


class StudyFailed(RuntimeError):
    """The study produced no result; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SeriesOutcome:
    """What happened to one series: routing, and results if analysed."""

    series_uid: str
    description: str
    series_class: SeriesClass
    decision: RoutingDecision
    error: str = ""
    measurements: tuple[StructureMeasurements, ...] = ()
    muscles: tuple[MuscleLevelMeasurements, ...] = ()
    flags: tuple[str, ...] = ()
    seg_path: Path | None = None
    seg_sop_instance_uid: str = ""
    timings_s: Mapping[str, float] = field(default_factory=dict)
    dixon_noise_sigma: float | None = None
    # Structure kind value → the model's validated accuracy for it
    # (`measurement_accuracy`): what a change of the measurement means.
    accuracy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Structure name → radiomics features (``outputs.radiomics``).
    radiomics: Mapping[str, StructureRadiomics] = field(default_factory=dict)
    # Disc name → T2 from the echoes of this stack, their echo times, the T2 map.
    relaxation: Mapping[str, RelaxationSummary] = field(default_factory=dict)
    echo_times_ms: tuple[float, ...] = ()
    t2_map_sop_instance_uid: str = ""
    # The sagittal series whose S1-anchored count named this one's levels.
    levels_anchored_by_series_uid: str = ""


@dataclass(frozen=True)
class StudyResult:
    """The study's series outcomes and written files (SEGs, then the SR)."""

    study_uid: str
    series: tuple[SeriesOutcome, ...]
    sr_path: Path | None
    measurements_path: Path
    outputs: tuple[Path, ...]
    timings_s: Mapping[str, float]
    biomechanics: Mapping[str, Any] | None = None
    # The review worklist entry (`service.review.study_review`).
    review: Mapping[str, Any] = field(default_factory=dict)
