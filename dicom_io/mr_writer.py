"""Write a volume as a standard MR Image Storage series.

Used by the phantom demo and to present real NIfTI volumes to the DICOM path
in tests and validation. UIDs derive deterministically from ``uid_seed`` so a
regenerated study is the same study.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

from dicom_io.uids import derive_uid

__all__ = ["StudyInfo", "SeriesSpec", "write_mr_series"]


@dataclass(frozen=True)
class StudyInfo:
    """Patient/study attributes shared by every series of a synthetic study.

    ``patient_size_m``/``patient_weight_kg``/``patient_sex`` feed the
    biomechanics; ``None`` leaves the attribute out.
    """

    uid_seed: str
    patient_name: str = "PHANTOM^LUMBAR"
    patient_id: str = "SG-PHANTOM"
    patient_sex: str | None = "M"
    patient_size_m: float | None = 1.78
    patient_weight_kg: float | None = 79.6
    study_date: str = "20261121"
    accession_number: str = "SG0001"

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
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.PatientBirthDate = ""
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
