"""Write a volume as a standard MR Image Storage series.

Used by the phantom demo and to present real NIfTI volumes to the DICOM path
in tests and validation. UIDs derive deterministically from ``uid_seed`` so a
regenerated study is the same study.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    LegacyConvertedEnhancedMRImageStorage,
    MRImageStorage,
)

from spinegate.dicom_io.uids import derive_uid

__all__ = ["StudyInfo", "SeriesSpec", "MultiFrameClass", "write_mr_series", "write_multiframe_mr"]


@dataclass(frozen=True)
class StudyInfo:
    """Patient/study attributes shared by every series of a synthetic study.

    ``patient_size_m``/``patient_weight_kg``/``patient_sex`` feed the
    biomechanics; ``None`` leaves the attribute out. ``character_set`` is
    the Specific Character Set (0008,0005) the series declares; ``None``
    leaves it out, as plain-ASCII scanners do (the default repertoire).
    """

    uid_seed: str
    patient_name: str = "PHANTOM^LUMBAR"
    patient_id: str = "SG-PHANTOM"
    patient_birth_date: str = "19610704"
    patient_sex: str | None = "M"
    patient_size_m: float | None = 1.78
    patient_weight_kg: float | None = 79.6
    study_date: str = "20261121"
    accession_number: str = "SG0001"
    character_set: str | None = "ISO_IR 100"

    @property
    def study_instance_uid(self) -> str:
        return derive_uid(self.uid_seed, "study")

    @property
    def frame_of_reference_uid(self) -> str:
        return derive_uid(self.uid_seed, "for")


@dataclass(frozen=True)
class SeriesSpec:
    """Acquisition attributes of one series (TR/TE in ms)."""

    series_number: int
    description: str
    repetition_time_ms: float
    echo_time_ms: float
    slice_thickness_mm: float
    modality: str = "MR"
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "OTHER")


def _base_dataset(study: StudyInfo, spec: SeriesSpec, series_uid: str) -> Dataset:
    ds = Dataset()
    if study.character_set is not None:
        ds.SpecificCharacterSet = study.character_set
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = study.patient_birth_date
    ds.PatientSex = study.patient_sex or ""
    if study.patient_size_m is not None:
        ds.PatientSize = f"{study.patient_size_m:.2f}"
    if study.patient_weight_kg is not None:
        ds.PatientWeight = f"{study.patient_weight_kg:.1f}"
    ds.StudyInstanceUID = study.study_instance_uid
    ds.StudyDate = study.study_date
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = "MRI LUMBAR SPINE"
    ds.Modality = spec.modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = spec.series_number
    ds.SeriesDescription = spec.description
    ds.SeriesDate = study.study_date
    ds.SeriesTime = "120000"
    ds.BodyPartExamined = "LSPINE"
    ds.PatientPosition = "HFS"
    ds.FrameOfReferenceUID = study.frame_of_reference_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "spinegate phantom"
    ds.ImageType = list(spec.image_type)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.ScanningSequence = "SE"
    ds.SequenceVariant = "SK"
    ds.ScanOptions = ""
    ds.MRAcquisitionType = "2D"
    ds.RepetitionTime = f"{spec.repetition_time_ms:g}"
    ds.EchoTime = f"{spec.echo_time_ms:g}"
    ds.EchoTrainLength = 1
    ds.MagneticFieldStrength = "1.5"
    ds.SliceThickness = f"{spec.slice_thickness_mm:g}"
    return ds


def write_mr_series(
    pixels: np.ndarray,
    affine: np.ndarray,
    study: StudyInfo,
    spec: SeriesSpec,
    out_dir: Path,
) -> list[Path]:
    """Write (slices, rows, columns) ``pixels`` as one single-frame MR series.

    Parameters
    ----------
    pixels : numpy.ndarray
        Unsigned 16-bit stored values.
    affine : numpy.ndarray
        4×4 (slice, row, column) → LPS mm map of voxel centres.

    Returns
    -------
    list of pathlib.Path
        One Explicit VR Little Endian file per slice, named by instance number.

    Raises
    ------
    ValueError
        If ``pixels`` is not 3D uint16 or the affine's in-plane axes are not
        orthogonal.
    """
    if pixels.ndim != 3 or pixels.dtype != np.uint16:
        raise ValueError(f"'pixels' must be 3D uint16, got {pixels.ndim}D {pixels.dtype}")
    col_step, row_step = affine[:3, 1], affine[:3, 2]
    if abs(float(np.dot(col_step, row_step))) > 1e-6 * np.linalg.norm(col_step) * np.linalg.norm(row_step):
        raise ValueError("'affine' row and column axes are not orthogonal")
    out_dir.mkdir(parents=True, exist_ok=True)
    series_uid = derive_uid(study.uid_seed, "series", spec.series_number)
    row_spacing = float(np.linalg.norm(col_step))
    col_spacing = float(np.linalg.norm(row_step))
    iop = list(row_step / col_spacing) + list(col_step / row_spacing)
    paths = []
    for k in range(pixels.shape[0]):
        ds = _base_dataset(study, spec, series_uid)
        ds.SOPInstanceUID = derive_uid(study.uid_seed, "instance", spec.series_number, k)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in affine[:3, :3] @ np.array([k, 0, 0]) + affine[:3, 3]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
        ds.PixelSpacing = [f"{row_spacing:.6g}", f"{col_spacing:.6g}"]
        ds.SpacingBetweenSlices = f"{np.linalg.norm(affine[:3, 0]):.6g}"
        ds.SliceLocation = f"{float(ds.ImagePositionPatient[0]):.4f}"
        ds.Rows, ds.Columns = int(pixels.shape[1]), int(pixels.shape[2])
        ds.PixelData = np.ascontiguousarray(pixels[k]).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"{spec.series_number:03d}_{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


class MultiFrameClass(str, enum.Enum):
    """The multi-frame MR storage classes spinegate accepts."""

    LEGACY_CONVERTED = LegacyConvertedEnhancedMRImageStorage
    ENHANCED = EnhancedMRImageStorage


# What an Enhanced MR object states about its acquisition beyond the legacy
# conversion (PS3.3 C.8.13): the MR functional-group macros shared by all
# frames, and the image-level attributes of the MR Pulse Sequence and MR
# Image and Spectroscopy Instance modules, as for a 2D spin-echo series.
_SHARED_MR_MACROS: dict[str, dict[str, Any]] = {
    "MRModifierSequence": dict(InversionRecovery="NO", FlowCompensation="NONE", T2Preparation="NO",
                               SpectrallySelectedExcitation="NONE", SpatialPresaturation="NONE",
                               PartialFourier="NO", ParallelAcquisition="NO"),
    "MRImagingModifierSequence": dict(MagnetizationTransfer="NONE", BloodSignalNulling="NO", Tagging="NONE",
                                      TransmitterFrequency=63.87, PixelBandwidth=200.0),
    "MRReceiveCoilSequence": dict(ReceiveCoilName="SPINE", ReceiveCoilType="SURFACE", QuadratureReceiveCoil="NO",
                                  ReceiveCoilManufacturerName=""),
    "MRTransmitCoilSequence": dict(TransmitCoilName="BODY", TransmitCoilType="BODY", TransmitCoilManufacturerName=""),
    "MRAveragesSequence": dict(NumberOfAverages=1.0),
    "MRFOVGeometrySequence": dict(InPlanePhaseEncodingDirection="COLUMN", MRAcquisitionFrequencyEncodingSteps=256,
                                  MRAcquisitionPhaseEncodingStepsInPlane=256, PercentSampling=100.0,
                                  PercentPhaseFieldOfView=100.0),
}
_IMAGE_LEVEL = dict(
    PulseSequenceName="SE2D", MRAcquisitionType="2D", EchoPulseSequence="SPIN", MultipleSpinEcho="NO",
    MultiPlanarExcitation="NO", PhaseContrast="NO", TimeOfFlightContrast="NO", SteadyStatePulseSequence="NONE",
    EchoPlanarPulseSequence="NO", SaturationRecovery="NO", SpectrallySelectedSuppression="NONE",
    OversamplingPhase="NONE", GeometryOfKSpaceTraversal="RECTILINEAR", SegmentedKSpaceTraversal="SINGLE",
    RectilinearPhaseEncodeReordering="LINEAR",
    NumberOfKSpaceTrajectories=1, ResonantNucleus="1H", KSpaceFiltering="NONE",
    ApplicableSafetyStandardAgency="IEC", ComplexImageComponent="MAGNITUDE", AcquisitionContrast="UNKNOWN",
    LossyImageCompression="00", BurnedInAnnotation="NO", ManufacturerModelName="spinegate phantom",
    DeviceSerialNumber="0", SoftwareVersions="spinegate phantom", AcquisitionDuration=60.0,
)


def _item(**values: object) -> Dataset:
    item = Dataset()
    for keyword, value in values.items():
        setattr(item, keyword, value)
    return item


def _as_enhanced_mr(mf: Dataset, repetition_time_ms: float, echo_time_ms: float) -> None:
    """Turn a Legacy Converted Enhanced MR object into an Enhanced MR one, in
    place: the timing moves from the converted attributes into the MR
    Timing and Related Parameters and MR Echo functional groups (where a
    scanner writes it), the conversion's own sequences go, and the MR
    acquisition attributes the IOD requires are stated."""
    mf.SOPClassUID = EnhancedMRImageStorage
    shared = mf.SharedFunctionalGroupsSequence[0]
    del shared.UnassignedSharedConvertedAttributesSequence
    acquired = f"{mf.StudyDate}{mf.StudyTime}"
    for frame in mf.PerFrameFunctionalGroupsSequence:
        for name in ("UnassignedPerFrameConvertedAttributesSequence", "ConversionSourceAttributesSequence"):
            if name in frame:
                del frame[name]
        content = frame.FrameContentSequence[0]
        content.FrameReferenceDateTime = content.FrameAcquisitionDateTime = acquired
        content.FrameAcquisitionDuration = 4000.0
    shared.MRTimingAndRelatedParametersSequence = [_item(
        RepetitionTime=repetition_time_ms, EchoTrainLength=1, RFEchoTrainLength=1, GradientEchoTrainLength=0,
        FlipAngle=90.0,
        OperatingModeSequence=[_item(OperatingModeType="STATIC FIELD", OperatingMode="IEC_NORMAL")],
        SpecificAbsorptionRateSequence=[_item(SpecificAbsorptionRateDefinition="IEC_WHOLE_BODY",
                                              SpecificAbsorptionRateValue=0.5)])]
    shared.MREchoSequence = [_item(EffectiveEchoTime=echo_time_ms)]
    for name, values in _SHARED_MR_MACROS.items():
        setattr(shared, name, [_item(**values)])
    frame_type = shared.MRImageFrameTypeSequence[0]
    frame_type.ComplexImageComponent = "MAGNITUDE"
    frame_type.AcquisitionContrast = "UNKNOWN"
    for keyword, value in _IMAGE_LEVEL.items():
        setattr(mf, keyword, value)
    mf.AcquisitionDateTime = acquired
    del mf.ContributingEquipmentSequence


def write_multiframe_mr(
    paths: Sequence[Path],
    out_path: Path,
    storage_class: MultiFrameClass,
    series_number: int,
    uid_seed: str,
    series_description: str | None = None,
) -> Path:
    """Write a single-frame MR series (as `write_mr_series` writes it) as one
    multi-frame object of ``storage_class`` (highdicom's legacy conversion;
    Enhanced MR with its timing in the MR functional groups).

    ``series_description`` replaces the sources' (e.g. one without weighting
    words, so a reader must use the functional groups).

    Raises
    ------
    ValueError
        If ``paths`` is empty or holds more than one series.
    """
    singles = [pydicom.dcmread(p) for p in paths]
    if not singles or len({ds.SeriesInstanceUID for ds in singles}) != 1:
        raise ValueError("'paths' must hold the instances of exactly one series")
    storage_class = MultiFrameClass(storage_class)
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        singles, series_instance_uid=derive_uid(uid_seed, "multiframe-series", series_number),
        series_number=series_number, sop_instance_uid=derive_uid(uid_seed, "multiframe", series_number),
        instance_number=1)
    # The legacy conversion cannot derive a window from single frames that
    # carry none, and lists the source series without instances.
    voi = mf.SharedFunctionalGroupsSequence[0].FrameVOILUTSequence[0]
    voi.WindowCenter, voi.WindowWidth = 2048.0, 4096.0
    del mf.ReferencedSeriesSequence
    if storage_class is MultiFrameClass.ENHANCED:
        _as_enhanced_mr(mf, float(singles[0].RepetitionTime), float(singles[0].EchoTime))
    if series_description is not None:
        mf.SeriesDescription = series_description
    if "SpecificCharacterSet" not in singles[0] and "SpecificCharacterSet" in mf:
        del mf.SpecificCharacterSet
    out_path.parent.mkdir(parents=True, exist_ok=True)
    mf.save_as(out_path, enforce_file_format=True)
    return out_path
