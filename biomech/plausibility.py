"""Review checks on one sagittal series' measured structures: lumbar levels
that are missing, and sizes implausible beside the series' own structures
of the same kind. Pure functions of the measurements; each returns review
flags (the SR codes them by prefix, `dicom_io.codes.REASON`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from spinegate.dicom_io.levels import StructureKind
from spinegate.dicom_io.measurements import StructureMeasurements

__all__ = ["LUMBAR_LEVELS", "FLAG_LEVEL_MISSING", "FLAG_IMPLAUSIBLE_SIZE", "missing_lumbar_levels",
           "implausible_size_flags", "with_review_flags"]

# The structures the loads and a lumbar report need (T12L1 is the model's top joint).
LUMBAR_LEVELS: tuple[str, ...] = ("L1", "L2", "L3", "L4", "L5", "L1L2", "L2L3", "L3L4", "L4L5", "L5S1")
FLAG_LEVEL_MISSING = "lumbar_level_missing"
FLAG_IMPLAUSIBLE_SIZE = "implausible_size"

# Relative bounds against the median of the same kind among the series'
# lumbar structures: real lumbar bodies differ by under 40 % in volume from
# L1 to L5, discs by up to a factor 2 (L1L2 and L5S1 the smallest); beyond
# these a structure is under- or over-segmented, or a different structure.
# On the validation volumes and their hard cases (docs/models.md) these
# bounds flag merged discs, a body blanked into its neighbour disc and
# under-segmented bodies (Dice 0.58, 0.66), and no intact lumbar structure.
_VOLUME_RATIO = {StructureKind.VERTEBRAL_BODY: (0.5, 2.0), StructureKind.DISC: (0.4, 2.0)}
_HEIGHT_RATIO = (0.5, 1.8)
# Absolute bounds on adult lumbar heights (DOMAIN.md §6 definition), wide
# enough for collapsed discs and small subjects.
_HEIGHT_MM = {StructureKind.VERTEBRAL_BODY: (12.0, 45.0), StructureKind.DISC: (1.0, 20.0)}


# The column from T12 to S1, superior → inferior, bodies and discs alternating.
_CHAIN = ("T12", "T12L1", "L1", "L1L2", "L2", "L2L3", "L3", "L3L4", "L4", "L4L5", "L5", "L5S1", "S1")


def missing_lumbar_levels(present: Sequence[str]) -> dict[str, list[str]]:
    """Present structure name → ``lumbar_level_missing_<name>`` flags of the
    L1–L5 bodies and L1L2–L5S1 discs not among ``present``: a missing
    structure has no result of its own, so its nearest present neighbours
    above and below in the column carry the flag (what a reader looks at)."""
    have = set(present)
    out: dict[str, list[str]] = {}
    for name in LUMBAR_LEVELS:
        if name in have:
            continue
        i = _CHAIN.index(name)
        above = next((n for n in reversed(_CHAIN[:i]) if n in have), None)
        below = next((n for n in _CHAIN[i + 1:] if n in have), None)
        for neighbour in (above, below):
            if neighbour is not None:
                out.setdefault(neighbour, []).append(f"{FLAG_LEVEL_MISSING}_{name}")
    return out


def _ratio_flag(what: str, value: float, median: float, bounds: tuple[float, float]) -> str | None:
    ratio = value / median
    return None if bounds[0] <= ratio <= bounds[1] else f"{FLAG_IMPLAUSIBLE_SIZE}_{what}_{ratio:.2f}x_median"


def implausible_size_flags(structures: Sequence[StructureMeasurements]) -> dict[str, list[str]]:
    """Structure name → its implausible-size flags (absent when plausible).

    Lumbar structures only (`LUMBAR_LEVELS`: thoracic ones at the top of
    the field are naturally smaller and often cut, S1 is shaped unlike the
    bodies): volumes and heights are compared with the median of the
    series' lumbar structures of the same kind (at least three needed),
    heights also with absolute adult bounds.
    """
    out: dict[str, list[str]] = {}
    for kind in (StructureKind.VERTEBRAL_BODY, StructureKind.DISC):
        same = [m for m in structures if m.structure.kind is kind and m.structure.name in LUMBAR_LEVELS]
        volume_median = float(np.median([m.volume_cm3 for m in same])) if len(same) >= 3 else None
        height_median = float(np.median([m.height_mm for m in same])) if len(same) >= 3 else None
        low, high = _HEIGHT_MM[kind]
        for m in same:
            flags = []
            if volume_median:
                flags.append(_ratio_flag("volume", m.volume_cm3, volume_median, _VOLUME_RATIO[kind]))
            if height_median:
                flags.append(_ratio_flag("height", m.height_mm, height_median, _HEIGHT_RATIO))
            if not low <= m.height_mm <= high:
                flags.append(f"{FLAG_IMPLAUSIBLE_SIZE}_height_{m.height_mm:.1f}mm_outside_{low:g}_{high:g}")
            kept = [f for f in flags if f]
            if kept:
                out[m.structure.name] = kept
    return out


def with_review_flags(structures: Sequence[StructureMeasurements]) -> tuple[StructureMeasurements, ...]:
    """``structures`` with their implausible-size and missing-neighbour
    flags added."""
    size = implausible_size_flags(structures)
    missing = missing_lumbar_levels([m.structure.name for m in structures])
    return tuple(replace(m, flags=tuple(m.flags) + tuple(size.get(m.structure.name, ()))
                         + tuple(missing.get(m.structure.name, ()))) for m in structures)
