"""A sagittal multi-echo T2 phantom with a known T2 per disc.

Each echo is the phantom's T2-weighted image scaled voxel by voxel by
exp(−(TE − TE_ref)/T2), with T2 taken from the voxel's structure: each
disc its own value (`DISC_T2_MS`, falling from L1-L2 to L5-S1 as in
degenerating discs), vertebral bodies `BODY_T2_MS`, everything else
`OTHER_T2_MS`. At TE_ref the echo is the ordinary T2 phantom image, so the
sagittal model segments it as usual; inside a disc the decay is exactly
mono-exponential with the disc's T2.

Written as scanners send it: one multi-echo series (every position once per
echo, Echo Time and Echo Numbers set), or one single-echo series per echo
time (same geometry and repetition time).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom.anatomy import make_spine_phantom, sagittal_grid
from spinegate.dicom_io.phantom.render import render_phantom

__all__ = ["DISC_T2_MS", "BODY_T2_MS", "OTHER_T2_MS", "write_multi_echo_phantom_study"]

DISC_T2_MS = {"T11T12": 115.0, "T12L1": 110.0, "L1L2": 105.0, "L2L3": 100.0, "L3L4": 90.0, "L4L5": 75.0,
              "L5S1": 65.0}
BODY_T2_MS = 45.0
OTHER_T2_MS = 60.0
_REFERENCE_TE_MS = 100.0  # the echo time of the phantom's T2 rendering
_TR_MS = 3000.0


def write_multi_echo_phantom_study(out_dir: Path, seed: int = 7, echo_times_ms: tuple[float, ...] = (
        20.0, 40.0, 60.0, 80.0, 100.0), one_series: bool = True, rows: int = 256, columns: int = 256,
        pixel_spacing_mm: float = 1.2, n_slices: int = 15, study: StudyInfo | None = None) -> dict[str, Any]:
    """Write the echoes; return the truth.

    Returns
    -------
    dict
        ``study_instance_uid``, ``files``, ``series_uids`` (one, or one per
        echo), ``disc_t2_ms`` (disc level → T2 of the discs present),
        ``labels`` (the phantom's label map) and ``affine``.
    """
    study = study or StudyInfo(uid_seed=f"spinegate-multi-echo-{seed}")
    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(n_slices, rows, columns, pixel_spacing_mm, 4.0)
    image, labels = render_phantom(phantom, grid, Weighting.T2)
    t2 = np.full(labels.shape, OTHER_T2_MS)
    present = {}
    for e in phantom.elements:
        inside = labels == e.label
        if e.name in DISC_T2_MS:
            t2[inside] = DISC_T2_MS[e.name]
            if inside.any():
                present[e.name] = DISC_T2_MS[e.name]
        elif re.fullmatch(r"[TLS]\d+", e.name):  # a vertebral body
            t2[inside] = BODY_T2_MS
    files: list[Path] = []
    for k, te in enumerate(echo_times_ms):
        echo = np.clip(np.round(image * np.exp(-(te - _REFERENCE_TE_MS) / t2)), 0, 65535).astype(np.uint16)
        spec = SeriesSpec(20 + k, "SAG T2 MULTI-ECHO" if one_series else f"SAG T2 TE{te:g}", _TR_MS, te, 4.0)
        files += write_mr_series(echo, grid.affine, study, spec, out_dir)
    series_uids = sorted({str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in files})
    if one_series:
        series_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
        for f in files:
            ds = pydicom.dcmread(f)
            k = int(ds.SeriesNumber) - 20
            ds.SeriesInstanceUID, ds.SeriesNumber = series_uid, 20
            ds.EchoNumbers, ds.InstanceNumber = k + 1, k * n_slices + int(ds.InstanceNumber)
            ds.save_as(f, enforce_file_format=True)
        series_uids = [series_uid]
    return {"study_instance_uid": study.study_instance_uid, "files": files, "series_uids": series_uids,
            "disc_t2_ms": present, "labels": labels, "affine": grid.affine}
