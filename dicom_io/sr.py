"""The study's DICOM SR: a TID 1500 Measurement Report (highdicom).

One volumetric measurement group per segmented structure and series, each
with tracking identifiers, a reference to its SEG segment, finding site,
UCUM units, and the algorithm identification (name, version, model
checksum). Each height carries an INFERRED FROM two-point POLYLINE on the
source slice where it was measured, so viewers draw it (DICOM_OUTPUTS.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.charset import declare_character_set
from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.measurements import (LoadReport, MuscleLevelMeasurements, RelaxationSummary,
                                             StructureMeasurements, StructureRadiomics)
from spinegate.dicom_io.seg import AlgorithmInfo
from spinegate.dicom_io.sr_radiomics import radiomics_groups, relaxation_group
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesVolume

# A TID 1500 measurement group of any of highdicom's three kinds.
MeasurementGroup = (hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
                    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations)

__all__ = ["MeasurementGroup", "SeriesReport", "build_measurement_report", "report_measurement_groups",
           "series_measurement_groups"]


@dataclass(frozen=True)
class SeriesReport:
    """What the SR needs from one analysed series.

    ``segment_numbers`` maps structure label values to SEG segment numbers.
    ``flags`` apply to every structure of the series (e.g. level naming not
    anchored at S1).
    """

    volume: SeriesVolume
    source_images: Sequence[Dataset]
    segmentation: Dataset
    segment_numbers: dict[int, int]
    measurements: Sequence[StructureMeasurements]
    description: str
    flags: tuple[str, ...] = field(default_factory=tuple)
    muscles: Sequence[MuscleLevelMeasurements] = ()
    algorithm: AlgorithmInfo | None = None
    # Structure kind value → {"height_mae_mm", "volume_mae_cm3", …}: the
    # model's validated accuracy, written as each measurement's uncertainty.
    accuracy: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # Structure name → radiomics features: one more group per structure.
    radiomics: Mapping[str, StructureRadiomics] = field(default_factory=dict)
    # Disc name → T2 from a multi-echo fit: one more group per disc.
    relaxation: Mapping[str, RelaxationSummary] = field(default_factory=dict)


def _algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name, version=algorithm.version,
        parameters=[f"{key}={value}" for key, value in algorithm.parameters().items()]
    )


def _segment_reference(report: SeriesReport, label: int) -> hd.sr.ReferencedSegment:
    """The SEG segment of a structure, with its source series. TID 1411 takes
    the source series or every source image; one series reference keeps the
    report small (listing the images added ~35 items per group, 40 % of the
    content tree, and most of the SR's build and write time)."""
    return hd.sr.ReferencedSegment(
        sop_class_uid=report.segmentation.SOPClassUID, sop_instance_uid=report.segmentation.SOPInstanceUID,
        segment_number=report.segment_numbers[label],
        source_series=hd.sr.SourceSeriesForSegmentation(report.volume.series_instance_uid))


def _centroid_measurements(lps_mm) -> list[hd.sr.Measurement]:
    """Centre of mass as three NUMs, patient x/y/z (LPS) in mm."""
    return [hd.sr.Measurement(code, round(float(v), 2), codes.UCUM.Millimeter)
            for code, v in zip((sg_codes.CENTROID_L, sg_codes.CENTROID_P, sg_codes.CENTROID_S), lps_mm)]


def _uncertainty(mae: float | None) -> hd.sr.MeasurementProperties | None:
    """The model's validation MAE as the measurement's symmetric uncertainty
    (TID 310 upper/lower measurement uncertainty)."""
    return None if mae is None else hd.sr.MeasurementProperties(upper_measurement_uncertainty=float(mae),
                                                                lower_measurement_uncertainty=float(mae))


def _review(flags: Sequence[str]) -> list[hd.sr.QualitativeEvaluation]:
    """NEEDS_REVIEW (yes when a flag other than an assumed input applies),
    the coded reasons, then the assumed inputs."""
    review = sg_codes.review_flags(flags)
    assumed = [f for f in flags if sg_codes.is_assumption(f)]
    return ([hd.sr.QualitativeEvaluation(sg_codes.NEEDS_REVIEW, codes.SCT.Yes if review else codes.SCT.No)]
            + [hd.sr.QualitativeEvaluation(sg_codes.REVIEW_REASON, c) for c in sg_codes.reason_codes(review)]
            + [hd.sr.QualitativeEvaluation(sg_codes.ASSUMED_INPUT, c) for c in sg_codes.reason_codes(assumed)])


def _groups(
    report: SeriesReport, m: StructureMeasurements, algorithm: AlgorithmInfo, uid_seed: str
) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations | hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """Two groups per structure: volumetric (segment reference, volume,
    centroid) and planar (height drawn as a two-point polyline; highdicom,
    like TID 1411, allows no image coordinates inside a volumetric group)."""
    s = m.structure
    algo = _algorithm_id(algorithm)
    by_uid = {ds.SOPInstanceUID: ds for ds in report.source_images}
    ref = report.volume.slice_refs[m.height_line.slice_index]
    source = by_uid[ref.sop_instance_uid]
    # SCOORD image coordinates are (column, row) with the top-left pixel's
    # centre at (0.5, 0.5) (PS3.3 C.18.6.1.1).
    (r0, c0), (r1, c1) = m.height_line.points_rc
    line = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=np.array([[c0 + 0.5, r0 + 0.5], [c1 + 0.5, r1 + 0.5]]),
        source_image=hd.sr.SourceImageForRegion(
            source.SOPClassUID, source.SOPInstanceUID,
            referenced_frame_numbers=[ref.frame_number] if ref.frame_number else None,
        ),
    )
    flags = tuple(report.flags) + tuple(m.flags)
    review = _review(flags)
    accuracy = report.accuracy.get(s.kind.value, {})
    finding_sites = [hd.sr.FindingSite(anatomic_location=s.property_type)]
    label = f"{s.display_name} ({report.description})"
    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(derive_uid(uid_seed, report.volume.series_instance_uid, s.name)), identifier=label
        ),
        referenced_segment=_segment_reference(report, s.label),
        finding_type=s.property_type,
        finding_sites=finding_sites,
        algorithm_id=algo,
        measurements=[hd.sr.Measurement(codes.SCT.Volume, round(m.volume_cm3, 3), codes.UCUM.CubicCentimeter,
                                        properties=_uncertainty(accuracy.get("volume_mae_cm3"))),
                      *_centroid_measurements(m.centroid_lps_mm)],
        qualitative_evaluations=review,
    )
    planar = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(derive_uid(uid_seed, report.volume.series_instance_uid, s.name, "height")),
            identifier=f"{label} height",
        ),
        referenced_region=line,
        finding_type=s.property_type,
        finding_sites=finding_sites,
        algorithm_id=algo,
        measurements=[
            hd.sr.Measurement(codes.DCM.Height, round(m.height_mm, 2), codes.UCUM.Millimeter,
                              properties=_uncertainty(accuracy.get("height_mae_mm")))
        ],
        qualitative_evaluations=review,
    )
    return [volumetric, planar]


def _muscle_group(report: SeriesReport, m: MuscleLevelMeasurements, algorithm: AlgorithmInfo,
                  uid_seed: str) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One group per muscle, side and level: finding sites are the muscle
    with its laterality and the disc level; the group references the
    muscle's SEG segment."""
    algo = _algorithm_id(algorithm)
    level = structure_by_name(m.level.name)
    sites = [hd.sr.FindingSite(anatomic_location=m.muscle.property_type, laterality=m.muscle.laterality),
             hd.sr.FindingSite(anatomic_location=level.property_type)]

    values = [hd.sr.Measurement(codes.SCT.Area, round(m.csa_mean_cm2, 3), sg_codes.UCUM_SQUARE_CENTIMETRE,
                                derivation=codes.SCT.Mean)]
    if m.csa_midplane_cm2 is not None:
        values.append(hd.sr.Measurement(codes.SCT.Area, round(m.csa_midplane_cm2, 3), sg_codes.UCUM_SQUARE_CENTIMETRE))
    optional = [(sg_codes.RELATIVE_CSA, m.rcsa, sg_codes.UCUM_RATIO, 1.0, 4),
                (sg_codes.FAT_INFILTRATION, m.fat_infiltration, sg_codes.UCUM_PERCENT, 100.0, 2),
                (sg_codes.FAT_FRACTION, m.fat_fraction, sg_codes.UCUM_PERCENT, 100.0, 2),
                (codes.SCT.Volume, m.volume_ml, sg_codes.UCUM_MILLILITRE, 1.0, 2),
                (sg_codes.CSA_ASYMMETRY, m.asymmetry, sg_codes.UCUM_PERCENT, 100.0, 2)]
    values += [hd.sr.Measurement(name, round(v * scale, digits), unit) for name, v, unit, scale, digits in optional
               if v is not None]
    values += _centroid_measurements(m.centroid_lps_mm)
    flags = tuple(report.flags) + tuple(m.flags)
    label = f"{m.muscle.display_name}, {level.display_name.replace(' intervertebral disc', '')} level ({report.description})"
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(derive_uid(uid_seed, report.volume.series_instance_uid, m.muscle.name, m.level.name)),
            identifier=label),
        referenced_segment=_segment_reference(report, m.muscle.label),
        finding_type=m.muscle.property_type, finding_category=sg_codes.PARASPINAL_MUSCLE, finding_sites=sites,
        algorithm_id=algo, measurements=values, qualitative_evaluations=_review(flags),
    )


def _load_groups(loads: LoadReport, uid_seed: str) -> list[hd.sr.MeasurementsAndQualitativeEvaluations]:
    """One group with the model's inputs and flags, then per task one group
    per disc (compression, shear) and per vertebral body (compression)."""
    algo = hd.sr.AlgorithmIdentification(name=loads.model_name, version=loads.model_version)
    inputs = [
        hd.sr.Measurement(sg_codes.BODY_HEIGHT, round(loads.height_m, 3), sg_codes.UCUM_METRE),
        hd.sr.Measurement(sg_codes.BODY_WEIGHT, round(loads.mass_kg, 2), sg_codes.UCUM_KILOGRAM),
    ]
    if loads.lordosis_deg is not None and loads.sacral_slope_deg is not None:
        inputs += [hd.sr.Measurement(sg_codes.LUMBAR_LORDOSIS, round(loads.lordosis_deg, 1), sg_codes.UCUM_DEGREE),
                   hd.sr.Measurement(sg_codes.SACRAL_SLOPE, round(loads.sacral_slope_deg, 1), sg_codes.UCUM_DEGREE)]
    evaluations = [hd.sr.QualitativeEvaluation(sg_codes.SUBJECT_SEX, sg_codes.SEX[loads.sex])]
    evaluations += _review(loads.flags)
    groups = [hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(derive_uid(uid_seed, "loads", "inputs")),
                                                     identifier="Spinal load model inputs"),
        finding_type=sg_codes.SPINAL_LOAD, algorithm_id=algo, measurements=inputs,
        qualitative_evaluations=evaluations,
    )]
    for task in loads.tasks:
        method = sg_codes.TASK[task.task_name]
        review = _review(task.flags)

        def group(structure, measurements, what: str) -> hd.sr.MeasurementsAndQualitativeEvaluations:
            return hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=hd.UID(derive_uid(uid_seed, "loads", task.task_name, structure.name)),
                    identifier=f"{structure.display_name} {what}, {task.description}"),
                finding_type=sg_codes.SPINAL_LOAD, method=method, algorithm_id=algo,
                finding_sites=[hd.sr.FindingSite(anatomic_location=structure.property_type)],
                measurements=measurements, qualitative_evaluations=review,
            )

        for disc, compression, shear in task.discs:
            groups.append(group(disc, [
                hd.sr.Measurement(sg_codes.DISC_COMPRESSION, round(compression, 1), sg_codes.UCUM_NEWTON, method=method),
                hd.sr.Measurement(sg_codes.DISC_ANTERIOR_SHEAR, round(shear, 1), sg_codes.UCUM_NEWTON, method=method),
            ], "load"))
        for body, compression in task.bodies:
            groups.append(group(body, [hd.sr.Measurement(sg_codes.VERTEBRAL_BODY_COMPRESSION, round(compression, 1),
                                                         sg_codes.UCUM_NEWTON, method=method)], "load"))
    return groups


def report_measurement_groups(report: SeriesReport, algorithm: AlgorithmInfo, sop_instance_uid: str
                              ) -> tuple[list[MeasurementGroup], ...]:
    """One series' measurement groups by kind (structures, radiomics,
    relaxation, muscles): the pipeline builds a series' groups as soon as
    its SEG exists, some while other series are still being segmented."""
    return (
        [g for m in report.measurements for g in _groups(report, m, algorithm, sop_instance_uid)],
        [g for m in report.measurements if m.structure.name in report.radiomics
         for g in radiomics_groups(m, report.radiomics[m.structure.name], report.volume.series_instance_uid,
                                   report.description, _segment_reference(report, m.structure.label),
                                   _algorithm_id(algorithm), _review(tuple(report.flags) + tuple(m.flags)),
                                   sop_instance_uid)],
        [relaxation_group(m, report.relaxation[m.structure.name], report.volume.series_instance_uid,
                          report.description, _segment_reference(report, m.structure.label), _algorithm_id(algorithm),
                          _review(tuple(report.flags) + tuple(m.flags)), sop_instance_uid)
         for m in report.measurements if m.structure.name in report.relaxation],
        [_muscle_group(report, m, report.algorithm or algorithm, sop_instance_uid) for m in report.muscles],
    )


def series_measurement_groups(reports: Sequence[SeriesReport], algorithm: AlgorithmInfo, sop_instance_uid: str,
                              by_report: Sequence[tuple[list[MeasurementGroup], ...] | None] = ()
                              ) -> list[MeasurementGroup]:
    """The SR's measurement groups of the analysed series (structures, then
    radiomics, relaxation and muscles, each in report order):
    `build_measurement_report` makes them when not given, the pipeline
    builds them while the loads are still being solved. ``by_report``: the
    `report_measurement_groups` already built, per report (None where not)."""
    built = [known if known is not None else report_measurement_groups(r, algorithm, sop_instance_uid)
             for r, known in zip(reports, list(by_report) + [None] * (len(reports) - len(by_report)))]
    return [g for kind in range(4) for groups in built for g in groups[kind]]


def build_measurement_report(
    reports: Sequence[SeriesReport],
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    software_version: str,
    loads: LoadReport | None = None,
    series_groups: Sequence[MeasurementGroup] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the study's Comprehensive 3D SR holding every measurement, and
    the spinal loads when ``loads`` is given.

    ``series_groups`` are `series_measurement_groups` of the same
    ``reports``, ``algorithm`` and ``sop_instance_uid`` when already built.

    Raises
    ------
    ValueError
        If ``reports`` is empty or they come from different studies.
    """
    if not reports:
        raise ValueError("'reports' is empty: nothing to report")
    studies = {r.volume.study_instance_uid for r in reports}
    if len(studies) != 1:
        raise ValueError(f"'reports' span {len(studies)} studies")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(derive_uid("spinegate-device", algorithm.name)),
            name="spinegate",
            manufacturer_name="spinegate",
            model_name=algorithm.name,
        ),
    )
    groups = list(series_groups if series_groups is not None
                  else series_measurement_groups(reports, algorithm, sop_instance_uid))
    if loads is not None:
        groups += _load_groups(loads, sop_instance_uid)
    content = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.MRISpineReport,
        imaging_measurements=groups,
    )
    evidence = [ds for r in reports for ds in r.source_images] + [r.segmentation for r in reports]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="spinegate",
        series_description="spinegate lumbar measurements (research use, unverified)",
        is_complete=True,
        is_final=False,
        is_verified=False,
        software_versions=software_version,
        coding_schemes=[sg_codes.SCHEME_IDENTIFICATION],
    )
    declare_character_set(sr)
    return sr
