"""Level names carried between the sagittal series of one study.

A series whose count S1 anchors names its levels for every other sagittal
series in the same frame of reference: radiologists count on the series
that shows the sacrum and carry the names across by position. Two series'
bodies are paired by their centroids in patient coordinates; a body of one
lies within a fraction of the column's pitch of the same body in the
other, a level away lies a whole pitch off. The pairs either agree on a
constant shift of the names (`naming_shift`), which `shifted_level` applies
to every body and disc, or they disagree among themselves, and neither
series' count can be carried over.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from spinegate.dicom_io.levels import VERTEBRAL_BODY_LEVELS, disc_between

__all__ = ["NamingShift", "naming_shift", "shifted_level", "PAIR_FRACTION_OF_PITCH", "MIN_PAIRS"]

# Two bodies are one when their centroids lie closer than this share of the
# reference column's median pitch (bodies and discs ~35-40 mm a level; the
# same body seen in two series of one sitting lies a few mm apart, more when
# one series' field of view cuts it).
PAIR_FRACTION_OF_PITCH = 0.35
# Fewer pairs than this carry no names: one body alone may be paired by chance.
MIN_PAIRS = 2


@dataclass(frozen=True)
class NamingShift:
    """How the body names of one series relate to a reference series'.

    ``shift`` is the number of levels to add to each name (0: the two
    agree), ``None`` when the pairs disagree among themselves or are fewer
    than `MIN_PAIRS`; ``pairs`` is the number of bodies paired.
    """

    shift: int | None
    pairs: int

    @property
    def conflicting(self) -> bool:
        """Enough pairs, but no single shift explains them."""
        return self.shift is None and self.pairs >= MIN_PAIRS


def naming_shift(reference: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray]) -> NamingShift:
    """The shift that turns ``other``'s body names into ``reference``'s.

    Parameters
    ----------
    reference, other : Mapping[str, numpy.ndarray]
        Body level name (`dicom_io.levels.VERTEBRAL_BODY_LEVELS`, S1
        included) → centroid in patient coordinates (LPS, mm), of two series
        in one frame of reference.
    """
    for name in (*reference, *other):
        if name not in VERTEBRAL_BODY_LEVELS:
            raise ValueError(f"{name!r} is not a vertebral body level")
    if len(reference) < 2 or not other:
        return NamingShift(None, 0)
    ref_names = list(reference)
    ref = np.array([reference[n] for n in ref_names], float)
    ordered = ref[np.argsort(ref[:, 2])]
    pitch = float(np.median(np.linalg.norm(np.diff(ordered, axis=0), axis=1)))
    shifts = []
    for name, centroid in other.items():
        distance = np.linalg.norm(ref - np.asarray(centroid, float), axis=1)
        nearest = int(np.argmin(distance))
        if distance[nearest] <= PAIR_FRACTION_OF_PITCH * pitch:
            shifts.append(VERTEBRAL_BODY_LEVELS.index(ref_names[nearest]) - VERTEBRAL_BODY_LEVELS.index(name))
    if len(shifts) < MIN_PAIRS or len(set(shifts)) != 1:
        return NamingShift(None, len(shifts))
    return NamingShift(shifts[0], len(shifts))


def shifted_level(name: str, shift: int) -> str | None:
    """The body or disc ``shift`` levels from ``name`` (positive: caudal,
    towards S1), or ``None`` where the table has no such level (above T10,
    below S1, or a disc below S1)."""
    if name in VERTEBRAL_BODY_LEVELS:
        i = VERTEBRAL_BODY_LEVELS.index(name) + shift
        return VERTEBRAL_BODY_LEVELS[i] if 0 <= i < len(VERTEBRAL_BODY_LEVELS) else None
    upper = next((b for b in VERTEBRAL_BODY_LEVELS[:-1] if disc_between(b) == name), None)
    if upper is None:
        raise ValueError(f"{name!r} is neither a vertebral body nor a disc level")
    moved = shifted_level(upper, shift)
    return disc_between(moved) if moved is not None and moved != "S1" else None
