"""Level names across the sagittal series of one study.

A study often holds two sagittal series whose fields of view differ (a T1
reaching the sacrum, a water-fat series ending above it). Each is named on
its own (`inference.level_naming`); then a series whose naming rests on an
assumption takes its names from one that S1 anchors, in the same frame of
reference (`inference.study_naming`): confirmed, it loses its "level
unverified" mark; shifted, its bodies and discs are renamed and flagged
`FLAG_FROM_OTHER_SERIES` for a look; where the two cannot be paired
consistently it says so (`FLAG_SERIES_DISAGREE`, unverified), and two
anchored series that place the levels differently both do.
"""
from __future__ import annotations

import logging
from dataclasses import replace
from typing import Mapping

import numpy as np

from spinegate.biomech.plausibility import FLAG_IMPLAUSIBLE_SIZE, FLAG_LEVEL_MISSING, with_review_flags
from spinegate.dicom_io.levels import SPINE_STRUCTURES, StructureKind, structure_by_name
from spinegate.inference.level_naming import (FLAG_FROM_OTHER_SERIES, FLAG_SERIES_DISAGREE, FLAG_TOO_MANY_BODIES,
                                              UNVERIFIED_FLAGS, naming_unverified)
from spinegate.inference.study_naming import naming_shift, shifted_level
from spinegate.service.series_stages import SeriesAnalysis

__all__ = ["with_study_naming", "renamed"]

log = logging.getLogger(__name__)


def _body_centroids(a: SeriesAnalysis) -> dict[str, np.ndarray]:
    return {m.structure.name: np.asarray(m.centroid_lps_mm, float) for m in a.structures
            if m.structure.kind is StructureKind.VERTEBRAL_BODY}


def _anchored_by_s1(a: SeriesAnalysis) -> bool:
    return not naming_unverified(a.flags) and any(m.structure.name == "S1" for m in a.structures)


def renamed(a: SeriesAnalysis, shift: int) -> SeriesAnalysis | None:
    """``a`` with every body and disc ``shift`` levels along the column
    (`inference.study_naming.shifted_level`), its label map relabelled and
    the name-dependent review flags (missing levels, sizes beside the
    lumbar neighbours) found again. Structures moved above the table's
    highest level are left out, as the naming leaves out bodies above T10
    (`FLAG_TOO_MANY_BODIES`); ``None`` when one would move below S1."""
    names = {m.structure.name: shifted_level(m.structure.name, shift) for m in a.structures}
    if shift > 0 and None in names.values():
        return None
    lut = np.arange(max(s.label for s in SPINE_STRUCTURES) + 1, dtype=a.label_map.dtype)
    for old, new in names.items():
        lut[structure_by_name(old).label] = structure_by_name(new).label if new else 0
    stale = (FLAG_LEVEL_MISSING, FLAG_IMPLAUSIBLE_SIZE)
    structures = with_review_flags([replace(m, structure=structure_by_name(new),
                                            flags=tuple(f for f in m.flags if not f.startswith(stale)))
                                    for m in a.structures if (new := names[m.structure.name])])
    left_out = None in names.values() and FLAG_TOO_MANY_BODIES not in a.flags
    return replace(a, label_map=lut[a.label_map], structures=structures,
                   flags=tuple(a.flags) + ((FLAG_TOO_MANY_BODIES,) if left_out else ()))


def with_study_naming(analyses: Mapping[str, SeriesAnalysis | str]) -> dict[str, SeriesAnalysis | str]:
    """The series analyses (series UID → analysis, or why it has none) with
    the sagittal level names made consistent across the study.

    Each sagittal series whose naming is unverified is paired, body by body,
    with every series S1 anchors in its frame of reference; the anchored
    series with most pairs gives the names. Confirmed names lose their
    unverified flags; shifted ones are renamed (`renamed`) and gain
    `FLAG_FROM_OTHER_SERIES`; both record the anchoring series
    (``levels_anchored_by_series_uid``). A pairing that no single shift
    explains marks the unverified series `FLAG_SERIES_DISAGREE`; two
    anchored series that pair inconsistently or place the levels
    differently are both marked.
    """
    out = dict(analyses)
    bodies = {uid: _body_centroids(a) for uid, a in analyses.items()
              if isinstance(a, SeriesAnalysis) and a.volume.frame_of_reference_uid}
    spine = {uid: a for uid, a in analyses.items() if isinstance(a, SeriesAnalysis) and len(bodies.get(uid, ())) >= 2}
    anchored = {uid for uid, a in spine.items() if _anchored_by_s1(a)}
    shifts = {uid: {r: naming_shift(bodies[r], bodies[uid]) for r in sorted(anchored)
                    if r != uid and spine[r].volume.frame_of_reference_uid == a.volume.frame_of_reference_uid}
              for uid, a in spine.items()}
    # An unverified series that cannot be paired consistently does not make
    # its anchor doubtful; two anchored series that disagree are both in doubt.
    disagree = {u for uid, by_ref in shifts.items() for r, s in by_ref.items()
                if s.conflicting or (s.shift and uid in anchored) for u in ((uid, r) if uid in anchored else (uid,))}
    for uid, a in spine.items():
        usable = [(s.pairs, r, s.shift) for r, s in shifts[uid].items() if s.shift is not None and r not in disagree]
        if uid in anchored or uid in disagree or not usable:
            continue
        pairs, ref, shift = max(usable)
        assert shift is not None
        moved = a if shift == 0 else renamed(a, shift)
        if moved is None:  # a structure the anchor puts beyond the table (below S1)
            disagree.add(uid)
            continue
        flags = tuple(f for f in moved.flags if f not in UNVERIFIED_FLAGS)
        out[uid] = replace(moved, flags=flags + ((FLAG_FROM_OTHER_SERIES,) if shift else ()),
                           levels_anchored_by_series_uid=ref)
        log.info("level names from another series series_uid=%s anchor_series_uid=%s shift=%d pairs=%d",
                 uid, ref, shift, pairs)
    for uid in sorted(disagree):
        a = spine[uid]
        out[uid] = replace(a, flags=tuple(a.flags) + (FLAG_SERIES_DISAGREE,))
        log.warning("level names disagree across series series_uid=%s", uid)
    return out
