"""A synthetic lumbar MR study on disk: sagittal T1 and T2 series of one
phantom subject, plus the exact truth of every structure."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from dicom_io.phantom import Weighting, make_spine_phantom, render_phantom, sagittal_grid

__all__ = ["write_phantom_study"]


def write_phantom_study(
    out_dir: Path, seed: int = 7, rows: int = 384, columns: int = 384, pixel_spacing_mm: float = 0.8,
    n_slices: int = 15, slice_spacing_mm: float = 4.0, study: StudyInfo | None = None,
) -> dict[str, Any]:
    """Write sagittal T1 (series 2) and T2 (series 3); return the truth.

    Returns
    -------
    dict
        ``study_instance_uid``, ``files`` (paths) and ``structures``: per
        level its analytic ``height_mm`` and ``volume_cm3``.
    """
    study = study or StudyInfo(uid_seed=f"spinegate-phantom-{seed}")
    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(n_slices, rows, columns, pixel_spacing_mm, slice_spacing_mm)
    files = []
    for number, weighting, desc, tr, te in ((2, Weighting.T1, "SAG T1 TSE", 600, 12),
                                            (3, Weighting.T2, "SAG T2 TSE", 3500, 100)):
        image, _ = render_phantom(phantom, grid, weighting)
        files += write_mr_series(image, grid.affine, study, SeriesSpec(number, desc, tr, te, slice_spacing_mm), out_dir)
    return {
        "study_instance_uid": study.study_instance_uid,
        "files": files,
        "structures": {e.name: {"height_mm": e.height_mm, "volume_cm3": e.volume_cm3} for e in phantom.elements},
    }
