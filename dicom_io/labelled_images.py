"""Labelled images as a site brings them for training: a NIfTI image with a
NIfTI label image, or a DICOM study folder with a reader's DICOM SEG or a
NIfTI label image saved over one of its series (ITK-SNAP, 3D Slicer).

Each reader returns the image as a sagittal `SeriesVolume` (slices first)
and the labels as a `LabelSet` on its voxels, or raises `LabelFileError`
naming the file and what does not fit.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk

from spinegate.dicom_io.label_files import LabelFileError, LabelSet, Structure, read_nifti_labels, read_seg_labels
from spinegate.dicom_io.study import read_study_headers
from spinegate.dicom_io.volume import SeriesError, SeriesVolume, read_series

__all__ = ["labels_on_image_grid", "read_labelled_nifti", "read_labelled_series"]

LabelTable = Mapping[int | str, Structure]

# Files in a study folder that are not DICOM (labels, tables) are skipped
# unread rather than logged as unreadable.
_NOT_DICOM = {".nii", ".gz", ".yaml", ".yml", ".json", ".csv", ".txt", ".md"}


def labels_on_image_grid(labels: LabelSet, affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """The masks on the image's voxels when the label image holds the same
    voxels stored in another axis order or direction (tools differ in how
    they write a NIfTI), else None."""
    index_map = np.linalg.solve(affine, labels.affine)  # label voxel index -> image voxel index
    linear, offset = index_map[:3, :3], index_map[:3, 3]
    signed = np.round(linear)
    if not (np.allclose(linear, signed, atol=1e-3) and np.allclose(offset, np.round(offset), atol=1e-3)
            and (np.abs(signed).sum(axis=0) == 1).all() and (np.abs(signed).sum(axis=1) == 1).all()):
        return None
    corners = np.stack([offset, signed @ (np.array(labels.shape, float) - 1) + offset])
    if not (np.allclose(corners.min(axis=0), 0, atol=1e-3)
            and np.allclose(corners.max(axis=0), np.array(shape) - 1, atol=1e-3)):
        return None  # other voxels (shifted, cropped or larger)
    order = [int(np.flatnonzero(signed[:, axis])[0]) for axis in range(3)]  # image axis of each label axis
    flips = tuple(slice(None, None, -1) if signed[order[axis], axis] < 0 else slice(None) for axis in range(3))
    return {name: np.transpose(mask[flips], np.argsort(order)) for name, mask in labels.masks.items()}


def read_labelled_nifti(image_path: Path, labels_path: Path, table: LabelTable | None = None,
                        stack_axis_lps: int = 0) -> tuple[SeriesVolume, LabelSet]:
    """A NIfTI image and its label image (the same voxels, in any axis
    order), slices first: the image axis nearest the patient axis
    ``stack_axis_lps`` (0: left-right, a sagittal stack; 2: foot-head, an
    axial one). An isotropic image is taken in that plane; thick slices
    must be in it.

    Raises
    ------
    LabelFileError
        If either file is unreadable or the labels are on other voxels.
    """
    try:
        image = hd.Volume.from_simpleitk(sitk.ReadImage(str(image_path)))
    except RuntimeError as e:
        raise LabelFileError(f"{image_path.name}: not a readable NIfTI image "
                             f"({str(e).strip().splitlines()[-1]})") from None
    labels = read_nifti_labels(labels_path, table)
    array = np.squeeze(image.array)
    masks = labels_on_image_grid(labels, image.affine, array.shape)
    if masks is None:
        raise LabelFileError(f"{labels_path.name} is not on the grid of {image_path.name} (shapes {labels.shape} "
                             f"and {array.shape}; the voxels must be the same, in any axis order)")
    spacing = np.linalg.norm(image.affine[:3, :3], axis=0)
    axis = int(np.argmax(np.abs(image.affine[stack_axis_lps, :3]) / spacing))
    thick = int(np.argmax(spacing))
    if thick != axis and spacing[thick] > 1.5 * spacing.min():  # thick slices of another plane: not resliced
        raise LabelFileError(f"{image_path.name}: its slices ({spacing[thick]:.1f} mm apart) are not "
                             f"{('sagittal', 'coronal', 'axial')[stack_axis_lps]}")
    order = [axis] + [a for a in range(3) if a != axis]
    affine = np.eye(4)
    affine[:3, :3] = image.affine[:3, order]
    affine[:3, 3] = image.affine[:3, 3]
    volume = SeriesVolume.from_array(np.transpose(array, order), affine, float(np.linalg.norm(affine[:3, 0])))
    return volume, LabelSet({name: np.transpose(m, order) for name, m in masks.items()}, affine, labels.source)


def read_labelled_series(folder: Path, seg: Path | None = None, labels: Path | None = None,
                         table: LabelTable | None = None, series_instance_uid: str | None = None
                         ) -> tuple[SeriesVolume, LabelSet]:
    """The series of a DICOM folder that ``seg`` (a DICOM SEG) references,
    or whose grid ``labels`` (a NIfTI label image) is on, with its labels.
    When several series share that grid, the one named by
    ``series_instance_uid`` or by the label file's name is taken.

    Raises
    ------
    LabelFileError
        If no series fits, several do and none is named, or a file is
        unreadable.
    """
    if (seg is None) == (labels is None):
        raise ValueError("give 'seg' or 'labels'")
    files = sorted(p for p in folder.rglob("*")
                   if p.is_file() and p not in (seg, labels) and p.suffix.lower() not in _NOT_DICOM)
    study = read_study_headers(files)
    wanted = series_instance_uid
    if seg is not None:
        try:
            wanted = str(pydicom.dcmread(seg, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID)
        except Exception as e:  # pydicom raises many kinds on bad files
            raise LabelFileError(f"{seg.name}: not a readable DICOM SEG ({type(e).__name__})") from None
    candidates = [s for s in study.series if wanted is None or s.series_uid == wanted]
    if not candidates:
        raise LabelFileError(f"{folder}: no DICOM series" if wanted is None else
                             f"{folder}: no instance of the series {wanted}"
                             + (f" that {seg.name} segments" if seg is not None else ""))
    volumes = []
    for s in candidates:
        try:
            volumes.append(read_series(s.datasets))
        except SeriesError as e:
            if len(candidates) == 1:
                raise LabelFileError(f"{folder}: {e.reason}: {e}") from None
    if seg is not None:
        seg_labels, _, _ = read_seg_labels(seg, table, source=volumes[0])
        return volumes[0], seg_labels
    assert labels is not None
    nifti = read_nifti_labels(labels, table)
    fits = [(v, m) for v in volumes if (m := labels_on_image_grid(nifti, v.affine, v.array.shape)) is not None]
    if len(fits) > 1:
        named = [(v, m) for v, m in fits if labels.name.split(".nii")[0] == v.series_instance_uid]
        if len(named) != 1:
            raise LabelFileError(f"{labels.name} fits {len(fits)} series of {folder}; name one with "
                                 f"series_instance_uid ({', '.join(v.series_instance_uid for v, _ in fits)})")
        fits = named
    if not fits:
        raise LabelFileError(f"{labels.name} is on the grid of no series in {folder}")
    volume, masks = fits[0]
    return volume, LabelSet(masks, volume.affine, nifti.source)
