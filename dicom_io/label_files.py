"""Label files read as named masks: DICOM SEG (segments named by their
labels or a table) and NIfTI label images (values named by a label table,
or spinegate's own values), and the label tables themselves (YAML/JSON:
value or segment label → level or muscle). ``spinegate evaluate`` and
``spinegate train`` read manual labels through them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import highdicom as hd
import numpy as np
import SimpleITK as sitk
import pydicom
import yaml

from spinegate.dicom_io.levels import SpineStructure, structure_by_name
from spinegate.dicom_io.muscles import MUSCLE_STRUCTURES, MuscleStructure, muscle_by_name
from spinegate.dicom_io.seg import structure_of_label
from spinegate.dicom_io.uids import SEG_SOP_CLASS
from spinegate.dicom_io.volume import SeriesVolume

__all__ = ["LabelFileError", "LabelSet", "Structure", "resolve_structure", "structure_named", "read_label_table",
           "read_seg_labels", "read_nifti_labels", "label_image", "label_image_array", "seg_referenced_series"]

Structure = Union[SpineStructure, MuscleStructure]
class LabelFileError(ValueError):
    """A label file or table cannot be used as given; the message says why."""


@dataclass(frozen=True)
class LabelSet:
    """Masks of named structures on one grid.

    Parameters
    ----------
    masks : mapping of str to numpy.ndarray
        Structure name (``SpineStructure.name`` or ``MuscleStructure.name``)
        to a boolean mask, all of one shape.
    affine : numpy.ndarray
        4×4 map of array indices to LPS mm.
    source : str
        Where the labels came from (a file name), for messages and CSVs.
    """

    masks: Mapping[str, np.ndarray]
    affine: np.ndarray
    source: str

    @property
    def shape(self) -> tuple[int, ...]:
        return next(iter(self.masks.values())).shape if self.masks else (0, 0, 0)


def resolve_structure(text: str) -> Structure:
    """The structure a label names: ``"L4-L5"``, ``"L4/L5"``, ``"L4L5"``,
    ``"L4-L5 intervertebral disc"``, ``"L3 vertebral body"``, ``"MF_R"``,
    ``"Right multifidus"`` (case and ``"(level unverified)"`` ignored).

    Raises
    ------
    LabelFileError
        If the text names no spine level or muscle spinegate knows.
    """
    cleaned = re.sub(r"\(level unverified\)", "", str(text), flags=re.I).strip()
    for muscle in MUSCLE_STRUCTURES:
        if cleaned.lower() in (muscle.name.lower(), muscle.display_name.lower()):
            return muscle
    level = re.sub(r"(intervertebral disc|vertebral body|vertebra|disc|body)", "", cleaned, flags=re.I)
    level = re.sub(r"[\s\-/_]", "", level).upper()
    try:
        return structure_by_name(level)
    except ValueError:
        raise LabelFileError(f"label {text!r} names no spine level or muscle (e.g. 'L3', 'L4-L5', 'MF_R')") from None


def read_label_table(path: Path) -> dict[int | str, Structure]:
    """A label table (YAML or JSON mapping label value or segment label to a
    structure name).

    Raises
    ------
    LabelFileError
        If the file cannot be read or a name is unknown.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise LabelFileError(f"cannot read the label table {path}: {type(e).__name__}: {e}") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("labels"), Mapping):
        raw = raw["labels"]
    if not isinstance(raw, Mapping) or not raw:
        raise LabelFileError(f"the label table {path} must map label values to structure names, e.g. '4: L4'")
    table: dict[int | str, Structure] = {}
    bad = []
    for key, name in raw.items():
        try:
            table[int(key) if str(key).strip().isdigit() else str(key)] = resolve_structure(str(name))
        except LabelFileError:
            bad.append(f"{key}: {name}")
    if bad:
        raise LabelFileError(f"the label table {path} names unknown structures: {', '.join(bad)}")
    return table


def read_seg_labels(path: Path, table: Mapping[int | str, Structure] | None = None,
                    source: SeriesVolume | None = None) -> tuple[LabelSet, str, str]:
    """A DICOM SEG's segments as masks; also the series it references and its study.

    A segment is named by ``table`` (by segment label or number) or, failing
    that, by its label read as a level name. The masks are on the SEG's own
    volume, or with ``source`` on that volume's grid (slice by slice from
    the source instances each frame derives from; slices without a frame
    are empty).

    Raises
    ------
    LabelFileError
        If the file is not a readable SEG, does not segment ``source``, or a
        segment cannot be named.
    """
    try:
        seg = hd.seg.segread(str(path))
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
        if source is None:
            volume = seg.get_volume(combine_segments=False)
            array, affine = volume.array, volume.affine
        else:
            array = seg.get_pixels_by_source_instance([r.sop_instance_uid for r in source.slice_refs],
                                                      assert_missing_frames_are_empty=True)
            affine = source.affine
    except Exception as e:  # pydicom/highdicom raise many kinds on bad files
        raise LabelFileError(f"{path.name}: not a readable DICOM SEG of these images ({type(e).__name__}: {e})") \
            from None
    array = array if array.ndim == 4 else array[..., None]
    masks: dict[str, np.ndarray] = {}
    for index, description in enumerate(seg.SegmentSequence):
        number, label = int(description.SegmentNumber), str(description.SegmentLabel)
        named = (table or {}).get(label) or (table or {}).get(number)
        structure = named if named is not None else resolve_structure(label)
        mask = array[..., index] > 0
        masks[structure.name] = masks[structure.name] | mask if structure.name in masks else mask
    return LabelSet(masks, affine, path.name), series_uid, str(seg.StudyInstanceUID)


def read_nifti_labels(path: Path, table: Mapping[int | str, Structure] | None = None) -> LabelSet:
    """A NIfTI label image as masks named by ``table`` (integer keys), or by
    spinegate's own label values without one.

    Raises
    ------
    LabelFileError
        If the file is unreadable, not integer-valued, or holds a value the
        table does not name.
    """
    try:
        volume = hd.Volume.from_simpleitk(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise LabelFileError(f"{path.name}: not a readable NIfTI image ({str(e).strip().splitlines()[-1]})") from None
    array = np.squeeze(volume.array)
    if array.ndim != 3 or not np.array_equal(array, np.round(array)):
        raise LabelFileError(f"{path.name}: a label image must be 3D with integer values")
    values = [int(v) for v in np.unique(array) if v != 0]
    masks: dict[str, np.ndarray] = {}
    unnamed = []
    for value in values:
        try:
            structure = table[value] if table is not None else structure_of_label(value)
        except (KeyError, ValueError):
            unnamed.append(value)
            continue
        mask = array == value
        masks[structure.name] = masks[structure.name] | mask if structure.name in masks else mask
    if unnamed:
        raise LabelFileError(f"{path.name}: label values {unnamed} are not in the label table"
                              + ("" if table is not None else " (none given: give one with --labels)"))
    return LabelSet(masks, volume.affine, path.name)


def structure_named(name: str) -> Structure:
    """The structure whose ``name`` is ``name`` (``"L4L5"``, ``"MF_R"``)."""
    try:
        return structure_by_name(name)
    except ValueError:
        return muscle_by_name(name)


def label_image(mask: np.ndarray, affine: np.ndarray) -> sitk.Image:
    """A mask as a SimpleITK image in LPS mm (via highdicom's ``Volume``).

    ``affine`` maps array indices to LPS mm (voxel centres).
    """
    affine = np.asarray(affine, float)
    if mask.ndim != 3 or affine.shape != (4, 4):
        raise ValueError(f"'mask' must be 3D and 'affine' 4x4, got shapes {mask.shape} and {affine.shape}")
    return hd.Volume(np.ascontiguousarray(mask, dtype=np.uint8), affine, coordinate_system="PATIENT").to_simpleitk()


def label_image_array(image: sitk.Image) -> np.ndarray:
    """A SimpleITK label image's voxels in the index order `label_image`
    takes (the inverse of it)."""
    return hd.Volume.from_simpleitk(image).array


def seg_referenced_series(path: Path) -> str | None:
    """The Series Instance UID a DICOM SEG file segments ("" when it names
    none), or None when the file is not a DICOM SEG (not DICOM, another
    object, truncated). Reads the header only."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID", "ReferencedSeriesSequence"])
    except Exception:  # not DICOM, truncated: not a SEG either
        return None
    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        return None
    return str(ds.ReferencedSeriesSequence[0].SeriesInstanceUID) if "ReferencedSeriesSequence" in ds else ""
