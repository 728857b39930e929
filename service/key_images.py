"""Key images of an analysed series (`dicom_io.key_images`): what each
shows is chosen here, from the series' measurements.

- sagittal series: the slices where the heights were measured (the
  structures' centroid slices, at most three — the mid-sagittal ones), with
  every body and disc outlined and named, the height lines, and a legend of
  heights and volumes;
- axial series: per disc level, the slice nearest the disc mid-plane with
  the muscles outlined by side and the disc, and a legend of areas and fat.

One Secondary Capture per image, all of a series' key images in one
series of their own ("spinegate key images: <source description>").
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.key_images import (KeyImageContent, LegendRow, MeasurementLine, Outline, build_key_image,
                                           edge_letters, render_key_image)
from spinegate.dicom_io.levels import StructureKind, structure_by_name
from spinegate.dicom_io.measurements import MuscleLevelMeasurements, StructureMeasurements
from spinegate.dicom_io.muscles import MuscleStructure
from spinegate.dicom_io.seg import structure_of_label
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.level_naming import naming_unverified
from spinegate.service.series_stages import RoutedSeries, SeriesAnalysis
from spinegate.service.version import __version__

__all__ = ["KEY_IMAGE_SERIES_NUMBER_OFFSET", "MAX_SAGITTAL_KEY_IMAGES", "key_image_contents", "write_key_images"]

log = logging.getLogger(__name__)

KEY_IMAGE_SERIES_NUMBER_OFFSET = 8000
MAX_SAGITTAL_KEY_IMAGES = 3


def _needs_review(flags: Sequence[str], series_flags: Sequence[str]) -> bool:
    return bool(sg_codes.review_flags(list(flags) + list(series_flags)))


def _base(volume: SeriesVolume, k: int) -> tuple[np.ndarray, tuple[float, float], tuple[str, str, str, str]]:
    _, row_mm, col_mm = volume.spacing_mm
    return volume.array[k], (row_mm, col_mm), edge_letters(volume.affine[:3, 1], volume.affine[:3, 2])


def _sagittal(volume: SeriesVolume, label_map: np.ndarray, structures: Sequence[StructureMeasurements],
              flags: Sequence[str], description: str) -> list[tuple[int, KeyImageContent]]:
    counts = Counter(m.height_line.slice_index for m in structures)
    # The slices where most heights were measured; one holding only a stray
    # line or two (a structure cut at the field's edge) is not a key image.
    ranked = counts.most_common(MAX_SAGITTAL_KEY_IMAGES)
    slices = sorted(k for k, n in ranked if n == ranked[0][1] or n >= 0.25 * len(structures))
    unverified = naming_unverified(flags)
    notes = [f"Level names unverified: {unverified}"] if unverified else []
    legend = []
    for m in structures:
        what = "disc" if m.structure.kind is StructureKind.DISC else "body"
        legend.append(LegendRow(m.structure.colour_rgb,
                                f"{m.structure.short_name} {what}: height {m.height_mm:.1f} mm, {m.volume_cm3:.1f} cm³",
                                _needs_review(m.flags, flags)))
    out = []
    for k in slices:
        pixels, spacing, edges = _base(volume, k)
        outlines = [Outline(label_map[k] == m.structure.label, m.structure.colour_rgb, m.structure.short_name)
                    for m in structures if (label_map[k] == m.structure.label).any()]
        lines = [MeasurementLine(m.height_line.points_rc) for m in structures if m.height_line.slice_index == k]
        out.append((k, KeyImageContent(pixels, spacing, outlines, lines, legend, edges,
                                       f"{description}, slice {k + 1} of {len(label_map)}, spinegate {__version__}",
                                       notes)))
    return out


def _axial(volume: SeriesVolume, label_map: np.ndarray, muscles: Sequence[MuscleLevelMeasurements],
           flags: Sequence[str], description: str) -> list[tuple[int, KeyImageContent]]:
    out = []
    for level in sorted({m.level.name for m in muscles}, key=lambda n: structure_by_name(n).label):
        at_level = [m for m in muscles if m.level.name == level]
        k = Counter(m.slice_index for m in at_level).most_common(1)[0][0]
        pixels, spacing, edges = _base(volume, k)
        outlines = []
        for value in np.unique(label_map[k]):
            if not value:
                continue
            s = structure_of_label(int(value))
            name = f"{s.muscle} {s.side}" if isinstance(s, MuscleStructure) else s.short_name
            outlines.append(Outline(label_map[k] == value, s.colour_rgb, name))
        legend = []
        for m in at_level:
            fat = (f", FF {100 * m.fat_fraction:.0f} %" if m.fat_fraction is not None else
                   f", FI {100 * m.fat_infiltration:.0f} %" if m.fat_infiltration is not None else "")
            csa = m.csa_midplane_cm2 if m.csa_midplane_cm2 is not None else m.csa_mean_cm2
            legend.append(LegendRow(m.muscle.colour_rgb, f"{m.muscle.display_name}: CSA {csa:.1f} cm²{fat}",
                                    _needs_review(m.flags, flags)))
        out.append((k, KeyImageContent(pixels, spacing, outlines, [], legend, edges,
                                       f"{description}, {structure_by_name(level).short_name} level, "
                                       f"slice {k + 1}, spinegate {__version__}")))
    return out


def key_image_contents(volume: SeriesVolume, analysis: SeriesAnalysis, description: str
                       ) -> list[tuple[int, KeyImageContent]]:
    """(source slice index, what its key image shows) for an analysed series."""
    if analysis.structures:
        return _sagittal(volume, analysis.label_map, analysis.structures, analysis.flags, description)
    if analysis.muscles:
        return _axial(volume, analysis.label_map, analysis.muscles, analysis.flags, description)
    return []


def write_key_images(series: RoutedSeries, analysis: SeriesAnalysis, digest: str, out_dir: Path) -> list[Path]:
    """The series' key images on disk (``key_<series UID>_<n>.dcm``)."""
    volume = analysis.volume
    by_uid = {ds.SOPInstanceUID: ds for ds in series.headers.datasets}
    series_uid = derive_uid(digest, series.series_uid, "key-images")
    number = KEY_IMAGE_SERIES_NUMBER_OFFSET + int(series.headers.datasets[0].get("SeriesNumber") or 0)
    paths = []
    for n, (k, content) in enumerate(key_image_contents(volume, analysis, series.description), start=1):
        ref = volume.slice_refs[k]
        sc = build_key_image(render_key_image(content), by_uid[ref.sop_instance_uid], ref.frame_number, content.edges,
                             series_uid,
                             derive_uid(digest, series.series_uid, "key-image", str(k)), number, n,
                             f"spinegate key images: {series.description}", __version__)
        path = out_dir / f"key_{series.series_uid}_{n}.dcm"
        sc.save_as(path, enforce_file_format=True)
        paths.append(path)
    log.info("key images written series_uid=%s images=%d", series.series_uid, len(paths))
    return paths
