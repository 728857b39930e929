"""The studies the conformance suite sends: one phantom study for every
storage SOP class × transfer syntax the statement claims, plus whole
studies (sagittal T1 + T2 with loads, axial with sagittal, axial alone),
with patient names in each character set a sender may use."""
from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, JPEGBaseline8Bit, MRImageStorage

from conformance.encode import encode, to_8bit
from spinegate.dicom_io.mr_writer import MultiFrameClass, SeriesSpec, StudyInfo, write_mr_series, write_multiframe_mr
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.phantom.study import write_axial_phantom_study, write_phantom_study
from spinegate.dicom_io.uids import derive_uid

__all__ = ["MATRIX_IMAGE", "NAMES", "StatusCase", "StudyCase", "matrix_case", "status_cases", "storescu_proposal",
           "whole_study_cases"]

# (label, (0008,0005) the sources declare, patient name): a plain-ASCII
# scanner that declares nothing, Latin-1, and UTF-8.
NAMES = (
    ("no (0008,0005)", None, "PHANTOM^ASCII"),
    ("ISO_IR 100", "ISO_IR 100", "Müller^Jürgen"),
    ("ISO_IR 192", "ISO_IR 192", "Παπαδόπουλος^Γιώργος"),
)

# storescu's option proposing each transfer syntax (dcmtk 3.6.7); with -R
# it proposes only what the files need, so nothing is converted on the way.
_PROPOSAL = {
    "1.2.840.10008.1.2.1": (),
    "1.2.840.10008.1.2": ("-xi",),
    "1.2.840.10008.1.2.1.99": ("-xd",),
    "1.2.840.10008.1.2.4.50": ("-xy",),
    "1.2.840.10008.1.2.4.70": ("-xs",),
    "1.2.840.10008.1.2.4.80": ("-xt",),
    "1.2.840.10008.1.2.4.81": ("-xu",),
    "1.2.840.10008.1.2.4.90": ("-xv",),
    "1.2.840.10008.1.2.4.91": ("-xw",),
    "1.2.840.10008.1.2.5": ("-xr",),
}


def storescu_proposal(ts: UID) -> tuple[str, ...]:
    """storescu options that propose exactly ``ts``."""
    if str(ts) not in _PROPOSAL:
        raise ValueError(f"storescu cannot propose transfer syntax {ts}")
    return ("-R", *_PROPOSAL[str(ts)])


@dataclass(frozen=True)
class StudyCase:
    """One study to send and what must come back for it."""

    case_id: str
    description: str
    files: tuple[Path, ...]
    study_uid: str
    storescu_options: tuple[str, ...]
    seg_count: int
    patient_name: str
    source_character_set: str | None
    loads: bool | None  # None: not asserted
    multiframe: bool = False
    transfer_syntax: str = ExplicitVRLittleEndian
    # The rendered image the study's one series carries, where other studies
    # carry the same one in another encoding (None: a study of its own).
    image: str | None = None

    @property
    def output_character_set(self) -> str | None:
        """What every returned object must declare: nothing for ASCII text."""
        return None if self.patient_name.isascii() else "ISO_IR 192"


MATRIX_IMAGE = "sagittal T2 phantom, seed 301"


@functools.lru_cache(maxsize=1)
def _sagittal_t2() -> tuple[np.ndarray, np.ndarray]:
    """One rendered sagittal T2 phantom series (15 x 256 x 256 at 1.2 mm),
    shared by the matrix studies: they differ in UIDs, names and encoding."""
    grid = sagittal_grid(15, 256, 256, 1.2, 4.0)
    image, _ = render_phantom(make_spine_phantom(301), grid, "T2")
    return image, grid.affine


def matrix_case(work: Path, index: int, storage_class: UID, ts: UID) -> StudyCase:
    """A single-series sagittal T2 study of ``storage_class`` in ``ts``."""
    label, character_set, name = NAMES[index % len(NAMES)]
    uid_seed = f"conformance-matrix-{index}"
    study = StudyInfo(uid_seed, patient_name=name, character_set=character_set,
                      patient_id=f"SGC{index:04d}", accession_number=f"SGC{index:04d}")
    image, affine = _sagittal_t2()
    folder = work / f"case{index:02d}"
    files = write_mr_series(image, affine, study, SeriesSpec(3, "SAG T2 TSE", 3500, 100, 4.0), folder / "src")
    multiframe = storage_class != MRImageStorage
    if multiframe:
        files = [write_multiframe_mr(files, folder / "src" / "multiframe.dcm", MultiFrameClass(storage_class), 30,
                                     uid_seed)]
    if ts == JPEGBaseline8Bit:
        for f in files:
            to_8bit(f)
    if ts != ExplicitVRLittleEndian:
        files = [encode(f, ts, folder / "sent" / f.name) for f in files]
    return StudyCase(f"M{index:02d}", f"{UID(storage_class).name}, {UID(ts).name}, names {label}", tuple(files),
                     study.study_instance_uid, storescu_proposal(ts), 1, name, character_set, None, multiframe,
                     UID(ts), MATRIX_IMAGE)


def whole_study_cases(work: Path) -> list[StudyCase]:
    """Whole studies in Explicit VR Little Endian: sagittal T1 + T2 from a
    plain-ASCII scanner (loads expected), axial T2 with the sagittal pair
    in Latin-1 (loads expected), axial T2 alone in UTF-8 (no loads)."""
    plain, latin1, utf8 = NAMES
    sag = StudyInfo("conformance-sagittal", patient_name=plain[2], character_set=plain[1], patient_id="SGC0100")
    axs = StudyInfo("conformance-axial-sagittal", patient_name=latin1[2], character_set=latin1[1],
                    patient_id="SGC0101")
    ax = StudyInfo("conformance-axial", patient_name=utf8[2], character_set=utf8[1], patient_id="SGC0102")
    sagittal = write_phantom_study(work / "sagittal", seed=401, rows=256, columns=256, pixel_spacing_mm=1.2,
                                   study=sag)
    axial_sagittal = write_axial_phantom_study(work / "axial_sagittal", seed=402, rows=256, columns=256,
                                               pixel_spacing_mm=0.8, study=axs, axial_weightings=("T2",),
                                               sagittal_size=(256, 1.2))
    axial = write_axial_phantom_study(work / "axial", seed=403, rows=256, columns=256, pixel_spacing_mm=0.8,
                                      study=ax, axial_weightings=("T2",), sagittal=False)
    return [
        StudyCase("S1", f"sagittal T1 + T2, names {plain[0]}, loads", tuple(sagittal["files"]),
                  sag.study_instance_uid, (), 2, plain[2], plain[1], True),
        StudyCase("S2", f"axial T2 + sagittal T1/T2, names {latin1[0]}, loads", tuple(axial_sagittal["files"]),
                  axs.study_instance_uid, (), 3, latin1[2], latin1[1], True),
        StudyCase("S3", f"axial T2 alone, names {utf8[0]}, no loads", tuple(axial["files"]),
                  ax.study_instance_uid, (), 1, utf8[2], utf8[1], False),
    ]


@dataclass(frozen=True)
class StatusCase:
    """One instance sent alone, and the C-STORE status the statement
    promises for it (None: refused at association negotiation)."""

    case_id: str
    description: str
    path: Path
    expected_status: int | None


def status_cases(work: Path, template: Path) -> list[StatusCase]:
    """Instances that break one promise each of the statement's C-STORE
    table, made from ``template`` (a valid MR instance), each its own study
    so no refused one touches a study under analysis."""
    work.mkdir(parents=True, exist_ok=True)

    def variant(case_id: str, change) -> Path:  # type: ignore[no-untyped-def]
        ds = pydicom.dcmread(template)
        ds.StudyInstanceUID = derive_uid("conformance-status", case_id, "study")
        ds.SeriesInstanceUID = derive_uid("conformance-status", case_id, "series")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = derive_uid("conformance-status", case_id)
        change(ds)
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        path = work / f"{case_id}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    def truncate(ds) -> None:  # type: ignore[no-untyped-def]
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    cases = [
        ("ct_image_storage", "CT Image Storage (SOP class not accepted)",
         lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2"), None),
        ("unknown_sop_class", "an abstract syntax no standard defines",
         lambda ds: setattr(ds, "SOPClassUID", "1.2.826.0.1.3680043.8.498.9.9.9"), None),
        ("wrong_modality", "MR Image Storage with Modality CT", lambda ds: setattr(ds, "Modality", "CT"), 0xA900),
        ("missing_series_uid", "Series Instance UID missing", lambda ds: delattr(ds, "SeriesInstanceUID"), 0xA900),
        ("missing_pixel_data", "no Pixel Data", lambda ds: delattr(ds, "PixelData"), 0xA900),
        ("truncated_pixel_data", "Pixel Data shorter than Rows x Columns x 2", truncate, 0xC000),
        ("invalid_study_uid", "Study Instance UID '1.2.3.abc'",
         lambda ds: setattr(ds, "StudyInstanceUID", "1.2.3.abc"), 0xC000),
    ]
    with warnings.catch_warnings():  # pydicom warns of the invalid UID it is asked to write
        warnings.simplefilter("ignore", UserWarning)
        return [StatusCase(case_id, text, variant(case_id, change), expected)
                for case_id, text, change, expected in cases]
