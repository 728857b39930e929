"""A synthetic lumbar MR study on disk: sagittal T1 and T2 series of one
phantom subject (and, for the axial path, axial T1 and T2 series in the same
frame of reference), plus the exact truth of every structure."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import SimpleITK as sitk

from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom.anatomy import make_spine_phantom, sagittal_grid
from spinegate.dicom_io.phantom.paraspinal import axial_grid, make_paraspinal_anatomy, muscle_field, slice_muscle_truth
from spinegate.dicom_io.phantom.render import render_phantom_weightings
from spinegate.dicom_io.seg import structure_of_label

__all__ = ["write_phantom_study", "write_axial_phantom_study"]

# Planes averaged across each axial slice's thickness (partial volume).
_SUBPLANES = 3


def write_phantom_study(
    out_dir: Path, seed: int = 7, rows: int = 384, columns: int = 384, pixel_spacing_mm: float = 0.8,
    n_slices: int = 15, slice_spacing_mm: float = 4.0, study: StudyInfo | None = None, labels: bool = False,
) -> dict[str, Any]:
    """Write sagittal T1 (series 2) and T2 (series 3); return the truth.

    With ``labels``, also the exact label image of the T2 series as a
    reader's manual labels would come: ``labels/<SeriesInstanceUID>.nii.gz``
    with ``labels/labels.yaml`` naming its values (for ``spinegate
    evaluate``).

    Returns
    -------
    dict
        ``study_instance_uid``, ``files`` (paths) and ``structures``: per
        level its analytic ``height_mm`` and ``volume_cm3``; with ``labels``
        also ``label_image`` (its path).
    """
    study = study or StudyInfo(uid_seed=f"spinegate-phantom-{seed}")
    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(n_slices, rows, columns, pixel_spacing_mm, slice_spacing_mm)
    files: list[Path] = []
    truth: dict[str, Any] = {}
    images, label_map = render_phantom_weightings(phantom, grid, (Weighting.T1, Weighting.T2))
    for number, weighting, desc, tr, te in ((2, Weighting.T1, "SAG T1 TSE", 600, 12),
                                            (3, Weighting.T2, "SAG T2 TSE", 3500, 100)):
        image = images[weighting]
        written = write_mr_series(image, grid.affine, study, SeriesSpec(number, desc, tr, te, slice_spacing_mm),
                                  out_dir)
        files += written
        if labels and weighting is Weighting.T2:
            series_uid = str(pydicom.dcmread(written[0], stop_before_pixels=True).SeriesInstanceUID)
            truth["label_image"] = _write_label_image(out_dir / "labels", series_uid, label_map, grid.affine,
                                                      {e.label: e.name for e in phantom.elements})
    return {
        "study_instance_uid": study.study_instance_uid,
        "files": files,
        "structures": {e.name: {"height_mm": e.height_mm, "volume_cm3": e.volume_cm3} for e in phantom.elements},
        **truth,
    }


def _write_label_image(folder: Path, series_uid: str, label_map: np.ndarray, affine: np.ndarray,
                       names: dict[int, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{series_uid}.nii.gz"
    volume = hd.Volume(np.asarray(label_map, np.uint8), np.asarray(affine, float), coordinate_system="PATIENT")
    sitk.WriteImage(volume.to_simpleitk(), str(path))
    (folder / "labels.yaml").write_text("".join(f"{value}: {name}\n" for value, name in sorted(names.items())))
    return path


def write_axial_phantom_study(
    out_dir: Path, seed: int = 7, rows: int = 320, columns: int = 320, pixel_spacing_mm: float = 0.6,
    slice_spacing_mm: float = 4.0, study: StudyInfo | None = None, sagittal: bool = True, dixon: bool = False,
    axial_weightings: tuple[str, ...] = ("T1", "T2"), sagittal_size: tuple[int, float] = (384, 0.8),
    labels: bool = False,
) -> dict[str, Any]:
    """Axial T1 (series 4) and T2 (series 5) from above L1 down to S1 (those
    of ``axial_weightings``), with ``dixon`` also the Dixon water (6) and
    fat (7) images, plus (with ``sagittal``) the sagittal T1/T2 of
    `write_phantom_study` (``sagittal_size``: rows = columns, pixel mm), all
    in one frame of reference; return the truth. With ``labels``, the exact
    label image of the last axial series is written as
    ``labels/<SeriesInstanceUID>.nii.gz`` with ``labels/labels.yaml``
    (muscles, vertebral bodies and discs), as a reader's would come.

    Returns
    -------
    dict
        ``study_instance_uid``, ``files``, ``structures`` (sagittal truth) and
        ``axial``: per slice its ``z_mm`` and, per muscle (``"MF_R"`` …), the
        exact ``csa_cm2``, ``fat_fraction`` and ``fat_area_share`` of
        `dicom_io.phantom.paraspinal.slice_muscle_truth`; with ``labels``
        also ``axial_label_image`` (its path).
    """

    if not dixon and not set(axial_weightings) & {"T1", "T2"}:
        raise ValueError(f"no axial series to write: 'axial_weightings' is {axial_weightings!r} and 'dixon' is off")

    study = study or StudyInfo(uid_seed=f"spinegate-axial-phantom-{seed}")
    truth: dict[str, Any] = write_phantom_study(
        out_dir, seed=seed, study=study, rows=sagittal_size[0], columns=sagittal_size[0],
        pixel_spacing_mm=sagittal_size[1]) if sagittal else {
        "study_instance_uid": study.study_instance_uid, "files": [], "structures": {}}
    phantom = make_spine_phantom(seed)
    field = muscle_field(phantom, make_paraspinal_anatomy(seed))
    z_top = phantom.element("L1").centre_lps[2] + phantom.element("L1").height_mm / 2
    grid = axial_grid(z_top, phantom.element("S1").centre_lps[2], slice_spacing_mm, rows, columns, pixel_spacing_mm,
                      centre_xy_mm=(0.0, field.view_centre_y_mm()))
    files = list(truth["files"])
    plain = ("ORIGINAL", "PRIMARY", "OTHER")
    series: list[tuple[int, Weighting, str, int, int, tuple[str, ...]]] = [
        spec for spec in ((4, Weighting.T1, "AX T1 TSE", 600, 12, plain),
                          (5, Weighting.T2, "AX T2 TSE", 3800, 110, plain))
        if spec[1].value in axial_weightings]
    if dixon:  # ImageType as Siemens writes Dixon images
        series += [(6, Weighting.WATER, "AX DIXON W", 6, 2, ("DERIVED", "PRIMARY", "DIXON", "WATER")),
                   (7, Weighting.FAT, "AX DIXON F", 6, 2, ("DERIVED", "PRIMARY", "DIXON", "FAT"))]
    written: list[Path] = []
    images, label_map = render_phantom_weightings(phantom, grid, tuple(spec[1] for spec in series),
                                                  subplanes=_SUBPLANES, muscles=field)
    for number, weighting, desc, tr, te, image_type in series:
        spec = SeriesSpec(number, desc, tr, te, slice_spacing_mm, image_type=image_type)
        written = write_mr_series(images[weighting], grid.affine, study, spec, out_dir)
        files += written
    slices = [{"z_mm": float(grid.affine[2, 3] + grid.affine[2, 0] * k),
               "muscles": slice_muscle_truth(field, grid, label_map, k, _SUBPLANES)} for k in range(grid.shape[0])]
    truth.update(files=files, axial=slices, axial_grid_affine=grid.affine.tolist())
    if labels:
        series_uid = str(pydicom.dcmread(written[0], stop_before_pixels=True).SeriesInstanceUID)
        names = {int(v): structure_of_label(int(v)).name for v in np.unique(label_map) if v}
        truth["axial_label_image"] = _write_label_image(out_dir / "labels", series_uid, label_map, grid.affine, names)
    return truth
