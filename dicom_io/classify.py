"""Series classification: plane from ImageOrientationPatient, weighting from
RepetitionTime/EchoTime (SeriesDescription when they are absent or
inconclusive), localisers and derived images excluded. Vendor-neutral.

Multi-frame objects carry the timing in functional groups: Enhanced MR in
MR Timing and Related Parameters (TR) and MR Echo (effective TE), Legacy
Converted Enhanced MR in the Unassigned Shared Converted Attributes."""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from spinegate.dicom_io.volume import SeriesError, frame_geometry

__all__ = ["Plane", "Weighting", "SeriesClass", "classify_series", "plane_from_orientation"]


class Plane(str, enum.Enum):
    SAGITTAL = "sagittal"
    AXIAL = "axial"
    CORONAL = "coronal"
    OBLIQUE = "oblique"


class Weighting(str, enum.Enum):
    T1 = "T1"
    T2 = "T2"
    WATER = "water"  # Dixon water image
    FAT = "fat"  # Dixon fat image
    OTHER = "other"


@dataclass(frozen=True)
class SeriesClass:
    """Classification of one series; ``excluded`` names why it cannot be
    analysed at all (localiser, derived, …), else is empty."""

    plane: Plane
    weighting: Weighting
    excluded: str = ""


# Within ~20° of a patient axis counts as that plane.
_AXIS_COS = float(np.cos(np.deg2rad(20)))
_LOCALISER = re.compile(r"\b(loc|locali[sz]er|scout|survey|3[- ]?plane|tri[- ]?pilot)\b", re.I)
_T1_WORDS = re.compile(r"t1", re.I)
_T2_WORDS = re.compile(r"t2", re.I)
# Dixon images: Siemens and GE put WATER/FAT in ImageType (DERIVED\PRIMARY\
# DIXON\WATER), Philips W/F; descriptions vary ("DIXON W", "t1_vibe_W").
_WATER_WORDS = re.compile(r"\bwater\b|dixon[ _-]?w\b|[ _]w$", re.I)
_FAT_WORDS = re.compile(r"(?<!no )\bfat\b(?![ _-]?(sat|supp))|dixon[ _-]?f\b|[ _]f$", re.I)
_OTHER_WORDS = re.compile(r"stir|tirm|flair|dwi|diffusion|adc|dixon|fat|water|t2\*|swi|pd\b", re.I)


def plane_from_orientation(iop: np.ndarray) -> Plane:
    """The slice plane of ImageOrientationPatient (6 values)."""
    normal = np.cross(np.asarray(iop[:3], float), np.asarray(iop[3:], float))
    normal = normal / np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < _AXIS_COS:
        return Plane.OBLIQUE
    return (Plane.SAGITTAL, Plane.CORONAL, Plane.AXIAL)[axis]


def _dixon(ds: Dataset) -> Weighting | None:
    tokens = {str(v).upper() for v in (ds.get("ImageType") or [])[2:]}
    desc = str(ds.get("SeriesDescription", "") or "")
    if tokens & {"WATER", "W"} or _WATER_WORDS.search(desc):
        return Weighting.WATER
    if tokens & {"FAT", "F"} or _FAT_WORDS.search(desc):
        return Weighting.FAT
    return None


def _functional_groups(ds: Dataset) -> list[Dataset]:
    """The shared functional groups, then the first frame's."""
    groups = []
    for name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        if ds.get(name):
            groups.append(ds[name].value[0])
    return groups


def _timing(ds: Dataset, keyword: str, macro: str, macro_keyword: str) -> Any:
    """``keyword`` at the top level, else ``macro_keyword`` in the ``macro``
    functional group, else ``keyword`` among the converted attributes."""
    if ds.get(keyword) not in (None, ""):
        return ds.get(keyword)
    for group in _functional_groups(ds):
        for name, key in ((macro, macro_keyword), ("UnassignedSharedConvertedAttributesSequence", keyword)):
            items = group.get(name)
            if items and items[0].get(key) not in (None, ""):
                return items[0].get(key)
    return None


def _weighting(ds: Dataset) -> Weighting:
    dixon = _dixon(ds)
    if dixon is not None:
        return dixon
    desc = str(ds.get("SeriesDescription", "") or "")
    tr = _timing(ds, "RepetitionTime", "MRTimingAndRelatedParametersSequence", "RepetitionTime")
    te = _timing(ds, "EchoTime", "MREchoSequence", "EffectiveEchoTime")
    if _OTHER_WORDS.search(desc):
        return Weighting.OTHER
    if tr not in (None, "") and te not in (None, ""):
        tr, te = float(tr), float(te)
        if tr <= 1000 and te <= 30:
            return Weighting.T1
        if tr >= 1500 and te >= 60:
            return Weighting.T2
    if _T2_WORDS.search(desc):
        return Weighting.T2
    if _T1_WORDS.search(desc):
        return Weighting.T1
    return Weighting.OTHER


_LOSSY_COMPRESSION = "113040"  # DCM "Lossy Compression"


def _derived_only_by_compression(ds: Dataset) -> bool:
    """Lossy compression turns ORIGINAL into DERIVED (PS3.3 C.7.6.1.1.2;
    dcmtk's and many PACS's encoders do it) with the derivation coded as
    DCM 113040: the pixels are still the acquisition, not a reformat."""
    codes = {str(item.get("CodeValue", "")) for item in ds.get("DerivationCodeSequence") or []}
    return str(ds.get("LossyImageCompression", "")) == "01" and codes == {_LOSSY_COMPRESSION}


def classify_series(headers: list[Dataset]) -> SeriesClass:
    """Classify a series from its instance headers (pixel data not needed)."""
    first = headers[0]
    desc = str(first.get("SeriesDescription", "") or "")
    image_type = [str(v).upper() for v in (first.get("ImageType") or [])]
    try:
        iop = frame_geometry(first)[0][1]
        plane = plane_from_orientation(iop)
    except (SeriesError, AttributeError, KeyError, ValueError, IndexError):
        return SeriesClass(Plane.OBLIQUE, Weighting.OTHER, "no_geometry")
    weighting = _weighting(first)
    if "LOCALIZER" in image_type or _LOCALISER.search(desc):
        return SeriesClass(plane, weighting, "localiser")
    if (image_type and image_type[0] == "DERIVED" and weighting not in (Weighting.WATER, Weighting.FAT)
            and not _derived_only_by_compression(first)):
        return SeriesClass(plane, weighting, "derived_image")
    if first.get("Modality") != "MR":
        return SeriesClass(plane, weighting, "not_mr")
    return SeriesClass(plane, weighting)
