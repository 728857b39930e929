"""The SR's radiomics groups: two TID 1411 volumetric groups per vertebral
body and disc, each referencing its SEG segment, told apart by their
measurement method: the whole structure (intensity and shape features) and
the structure on its central sagittal slice (intensity features). A
group-level method is what readers such as dcmqi's tid1500reader interpret.

Also the T2 group of a disc whose stack was imaged at several echo times
(`relaxation_group`): NUMs "T2" (DCM 113065) in ms with derivation Mean,
Median and Standard Deviation, method SG0096 "Mono-exponential T2 fit,
multi-echo".

For the intensity statistics each NUM has the concept "MR signal intensity" with the
statistic as derivation (CID 7464); IBSI features that DICOM codes (CID
7477/7478: histogram entropy, voxel-counting volume, axis lengths,
elongation, flatness) use the IBSI codes; percentiles, the interquartile
range and the mean of positive values use spinegate's codes, each naming
its IBSI identifier. Intensities are in arbitrary units ([arb'U]).
"""
from __future__ import annotations

import math
from typing import Sequence

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.measurements import (FirstOrderFeatures, RelaxationSummary, ShapeFeatures,
                                             StructureMeasurements, StructureRadiomics)
from spinegate.dicom_io.uids import derive_uid

__all__ = ["radiomics_groups", "relaxation_group"]

# (feature, concept name, derivation, unit)
_FIRST_ORDER: tuple[tuple[str, Code, Code | None, Code], ...] = (
    ("mean", codes.DCM.MRSignalIntensity, codes.SCT.Mean, sg_codes.UCUM_ARBITRARY_UNIT),
    ("standard_deviation", codes.DCM.MRSignalIntensity, codes.SCT.StandardDeviation, sg_codes.UCUM_ARBITRARY_UNIT),
    ("skewness", codes.DCM.MRSignalIntensity, codes.DCM.Skewness, sg_codes.UCUM_NO_UNIT),
    ("kurtosis", codes.DCM.MRSignalIntensity, codes.DCM.Kurtosis, sg_codes.UCUM_NO_UNIT),
    ("minimum", codes.DCM.MRSignalIntensity, codes.SCT.Minimum, sg_codes.UCUM_ARBITRARY_UNIT),
    ("median", codes.DCM.MRSignalIntensity, codes.SCT.Median, sg_codes.UCUM_ARBITRARY_UNIT),
    ("maximum", codes.DCM.MRSignalIntensity, codes.SCT.Maximum, sg_codes.UCUM_ARBITRARY_UNIT),
    ("p10", sg_codes.INTENSITY_P10, None, sg_codes.UCUM_ARBITRARY_UNIT),
    ("p90", sg_codes.INTENSITY_P90, None, sg_codes.UCUM_ARBITRARY_UNIT),
    ("interquartile_range", sg_codes.INTENSITY_IQR, None, sg_codes.UCUM_ARBITRARY_UNIT),
    ("mean_positive", sg_codes.MEAN_OF_POSITIVE_INTENSITIES, None, sg_codes.UCUM_ARBITRARY_UNIT),
    ("entropy_bits", codes.IBSI.IntensityHistogramEntropy, None, sg_codes.UCUM_BIT),
)
_SHAPE: tuple[tuple[str, Code, Code], ...] = (
    ("volume_cm3", codes.IBSI.VolumeFromVoxelSummation, codes.UCUM.CubicCentimeter),
    ("major_axis_mm", codes.IBSI.MajorAxisIn3DLength, codes.UCUM.Millimeter),
    ("minor_axis_mm", codes.IBSI.MinorAxisIn3DLength, codes.UCUM.Millimeter),
    ("least_axis_mm", codes.IBSI.LeastAxisIn3DLength, codes.UCUM.Millimeter),
    ("elongation", codes.IBSI.Elongation, sg_codes.UCUM_NO_UNIT),
    ("flatness", codes.IBSI.Flatness, sg_codes.UCUM_NO_UNIT),
)


def _first_order(features: FirstOrderFeatures) -> list[hd.sr.Measurement]:
    values = []
    for key, name, derivation, unit in _FIRST_ORDER:
        value = float(getattr(features, key))
        if math.isfinite(value):  # e.g. no skewness of a constant region, no positive intensity
            values.append(hd.sr.Measurement(name, round(value, 4), unit, derivation=derivation))
    return values


def _shape(features: ShapeFeatures) -> list[hd.sr.Measurement]:
    return [hd.sr.Measurement(name, round(float(getattr(features, key)), 4), unit)
            for key, name, unit in _SHAPE if math.isfinite(float(getattr(features, key)))]


def radiomics_groups(m: StructureMeasurements, features: StructureRadiomics, series_uid: str, description: str,
                     referenced_segment: hd.sr.ReferencedSegment, algorithm_id: hd.sr.AlgorithmIdentification,
                     review: Sequence[hd.sr.QualitativeEvaluation], uid_seed: str
                     ) -> list[hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations]:
    """The whole-structure and central-slice radiomics groups of structure ``m``."""
    s = m.structure
    regions = (("whole structure", sg_codes.RADIOMICS_WHOLE_STRUCTURE, _first_order(features.whole)
                + _shape(features.shape)),
               ("central sagittal slice", sg_codes.RADIOMICS_CENTRAL_SLICE, _first_order(features.central_slice)))
    return [hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(derive_uid(uid_seed, series_uid, s.name, "radiomics", region)),
            identifier=f"{s.display_name} ({description}) radiomics, {region}"),
        referenced_segment=referenced_segment,
        finding_type=s.property_type,
        finding_sites=[hd.sr.FindingSite(anatomic_location=s.property_type)],
        method=method,
        algorithm_id=algorithm_id,
        measurements=values,
        qualitative_evaluations=list(review),
    ) for region, method, values in regions]


def relaxation_group(m: StructureMeasurements, t2: RelaxationSummary, series_uid: str, description: str,
                     referenced_segment: hd.sr.ReferencedSegment, algorithm_id: hd.sr.AlgorithmIdentification,
                     review: Sequence[hd.sr.QualitativeEvaluation], uid_seed: str
                     ) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """The T2 group of disc ``m``: mean, median and SD of its fitted voxels."""
    s = m.structure
    values = [hd.sr.Measurement(codes.DCM.T2, round(v, 2), codes.UCUM.Millisecond, derivation=d)
              for v, d in ((t2.mean_ms, codes.SCT.Mean), (t2.median_ms, codes.SCT.Median),
                           (t2.sd_ms, codes.SCT.StandardDeviation))]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(derive_uid(uid_seed, series_uid, s.name, "t2")),
            identifier=f"{s.display_name} ({description}) T2"),
        referenced_segment=referenced_segment,
        finding_type=s.property_type,
        finding_sites=[hd.sr.FindingSite(anatomic_location=s.property_type)],
        method=sg_codes.T2_FIT,
        algorithm_id=algorithm_id,
        measurements=values,
        qualitative_evaluations=list(review),
    )
