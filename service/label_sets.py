"""Label sets for ``spinegate evaluate``: manual and automatic labels read
as named masks (DICOM SEG, NIfTI with a label table) and brought onto one
grid.

The grid is the automatic SEG's (the source series'), grown where the
manual labels reach beyond it; a manual structure drawn on a finer grid
belongs to a voxel when it covers at least half of it (sampled several
times per voxel along each axis where the manual grid is finer).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Union

import highdicom as hd
import numpy as np
import SimpleITK as sitk
import yaml

from spinegate.dicom_io.levels import SpineStructure, structure_by_name
from spinegate.dicom_io.muscles import MUSCLE_STRUCTURES, MuscleStructure, muscle_by_name
from spinegate.dicom_io.seg import structure_of_label
from spinegate.service.agreement import label_image

__all__ = ["EvaluationError", "LabelSet", "Structure", "resolve_structure", "structure_named", "read_label_table",
           "read_seg_labels", "read_nifti_labels", "on_reference_grid"]

Structure = Union[SpineStructure, MuscleStructure]
class EvaluationError(ValueError):
    """The inputs cannot be evaluated as given; the message says why."""


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
    EvaluationError
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
        raise EvaluationError(f"label {text!r} names no spine level or muscle (e.g. 'L3', 'L4-L5', 'MF_R')") from None


def read_label_table(path: Path) -> dict[int | str, Structure]:
    """A label table (YAML or JSON mapping label value or segment label to a
    structure name).

    Raises
    ------
    EvaluationError
        If the file cannot be read or a name is unknown.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise EvaluationError(f"cannot read the label table {path}: {type(e).__name__}: {e}") from None
    if isinstance(raw, Mapping) and isinstance(raw.get("labels"), Mapping):
        raw = raw["labels"]
    if not isinstance(raw, Mapping) or not raw:
        raise EvaluationError(f"the label table {path} must map label values to structure names, e.g. '4: L4'")
    table: dict[int | str, Structure] = {}
    bad = []
    for key, name in raw.items():
        try:
            table[int(key) if str(key).strip().isdigit() else str(key)] = resolve_structure(str(name))
        except EvaluationError:
            bad.append(f"{key}: {name}")
    if bad:
        raise EvaluationError(f"the label table {path} names unknown structures: {', '.join(bad)}")
    return table


def read_seg_labels(path: Path, table: Mapping[int | str, Structure] | None = None) -> tuple[LabelSet, str, str]:
    """A DICOM SEG's segments as masks; also the series it references and its study.

    A segment is named by ``table`` (by segment label or number) or, failing
    that, by its label read as a level name.

    Raises
    ------
    EvaluationError
        If the file is not a readable SEG or a segment cannot be named.
    """
    try:
        seg = hd.seg.segread(str(path))
        volume = seg.get_volume(combine_segments=False)
        series_uid = str(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)
    except Exception as e:  # pydicom/highdicom raise many kinds on bad files
        raise EvaluationError(f"{path.name}: not a readable DICOM SEG ({type(e).__name__}: {e})") from None
    array = volume.array if volume.array.ndim == 4 else volume.array[..., None]
    masks: dict[str, np.ndarray] = {}
    for index, description in enumerate(seg.SegmentSequence):
        number, label = int(description.SegmentNumber), str(description.SegmentLabel)
        named = (table or {}).get(label) or (table or {}).get(number)
        structure = named if named is not None else resolve_structure(label)
        mask = array[..., index] > 0
        masks[structure.name] = masks[structure.name] | mask if structure.name in masks else mask
    return LabelSet(masks, volume.affine, path.name), series_uid, str(seg.StudyInstanceUID)


def read_nifti_labels(path: Path, table: Mapping[int | str, Structure] | None = None) -> LabelSet:
    """A NIfTI label image as masks named by ``table`` (integer keys), or by
    spinegate's own label values without one.

    Raises
    ------
    EvaluationError
        If the file is unreadable, not integer-valued, or holds a value the
        table does not name.
    """
    try:
        volume = hd.Volume.from_simpleitk(sitk.ReadImage(str(path)))
    except RuntimeError as e:
        raise EvaluationError(f"{path.name}: not a readable NIfTI image ({str(e).strip().splitlines()[-1]})") from None
    array = np.squeeze(volume.array)
    if array.ndim != 3 or not np.array_equal(array, np.round(array)):
        raise EvaluationError(f"{path.name}: a label image must be 3D with integer values")
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
        raise EvaluationError(f"{path.name}: label values {unnamed} are not in the label table"
                              + ("" if table is not None else " (none given: give one with --labels)"))
    return LabelSet(masks, volume.affine, path.name)


def _index_bounds(mask: np.ndarray, affine: np.ndarray, reference_affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference-grid index box (inclusive) covering ``mask``'s voxels."""
    where = np.argwhere(mask)
    lo, hi = where.min(axis=0) - 0.5, where.max(axis=0) + 0.5
    corners = np.array([[a, b, c, 1.0] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    ref = (np.linalg.inv(reference_affine) @ (np.asarray(affine, float) @ corners.T)).T[:, :3]
    return np.floor(ref.min(axis=0) + 0.5).astype(int), np.ceil(ref.max(axis=0) - 0.5).astype(int)


def _fraction_on_grid(mask: np.ndarray, affine: np.ndarray, grid_affine: np.ndarray, start: np.ndarray,
                      stop: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """The fraction of each grid voxel in [start, stop) that ``mask`` covers,
    sampled ``factors`` times per axis (nearest neighbour)."""
    sub_affine = np.array(grid_affine, float)
    sub_affine[:3, :3] = grid_affine[:3, :3] / factors[None, :]
    sub_affine[:3, 3] = (grid_affine @ np.append(start - 0.5 + 0.5 / factors, 1.0))[:3]
    shape = (stop - start) * factors
    reference = label_image(np.zeros(tuple(shape), np.uint8), sub_affine)
    moving = label_image(mask, affine)
    sampled = sitk.Resample(moving, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    values = hd.Volume.from_simpleitk(sampled).array.astype(np.float32)  # back in (sub_affine) index order
    n = stop - start
    return values.reshape(n[0], factors[0], n[1], factors[1], n[2], factors[2]).mean(axis=(1, 3, 5))


def on_reference_grid(auto: LabelSet, manual: LabelSet) -> tuple[LabelSet, LabelSet]:
    """Both label sets on the automatic grid, grown to cover the manual labels.

    Raises
    ------
    EvaluationError
        If the manual labels do not overlap the automatic grid's space at all.
    """
    ref = np.asarray(auto.affine, float)
    lo, hi = np.zeros(3, int), np.array(auto.shape) - 1
    boxes = {}
    for name, mask in manual.masks.items():
        if mask.any():
            boxes[name] = _index_bounds(mask, manual.affine, ref)
            lo, hi = np.minimum(lo, boxes[name][0]), np.maximum(hi, boxes[name][1])
    shape = hi - lo + 1
    if np.any(shape > 4 * np.array(auto.shape) + 64):
        raise EvaluationError(f"{manual.source} lies far outside the space of the automatic SEG {auto.source}: "
                              "are they of the same series?")
    grid = ref.copy()
    grid[:3, 3] = (ref @ np.append(lo, 1.0))[:3]
    offset = -lo
    auto_masks = {}
    for name, mask in auto.masks.items():
        grown = np.zeros(tuple(shape), bool)
        grown[offset[0]:offset[0] + mask.shape[0], offset[1]:offset[1] + mask.shape[1],
              offset[2]:offset[2] + mask.shape[2]] = mask
        auto_masks[name] = grown
    spacing = np.linalg.norm(ref[:3, :3], axis=0)
    manual_spacing = np.linalg.norm(np.asarray(manual.affine, float)[:3, :3], axis=0)
    # Supersample along an axis as often as the manual grid is finer than the
    # reference along the nearest manual axis.
    factors = np.ones(3, int)
    for axis in range(3):
        direction = ref[:3, axis] / spacing[axis]
        cosines = np.abs(direction @ (np.asarray(manual.affine, float)[:3, :3] / manual_spacing))
        factors[axis] = max(1, int(round(spacing[axis] / manual_spacing[int(np.argmax(cosines))])))
    manual_masks = {}
    for name, (box_lo, box_hi) in boxes.items():
        start, stop = np.maximum(box_lo - lo, 0), np.minimum(box_hi - lo + 1, shape)
        fraction = _fraction_on_grid(manual.masks[name], manual.affine, grid, start, stop, factors)
        full = np.zeros(tuple(shape), bool)
        full[start[0]:stop[0], start[1]:stop[1], start[2]:stop[2]] = fraction >= 0.5
        if full.any():
            manual_masks[name] = full
    return LabelSet(auto_masks, grid, auto.source), LabelSet(manual_masks, grid, manual.source)


def structure_named(name: str) -> Structure:
    """The structure whose ``name`` is ``name`` (``"L4L5"``, ``"MF_R"``)."""
    try:
        return structure_by_name(name)
    except ValueError:
        return muscle_by_name(name)
