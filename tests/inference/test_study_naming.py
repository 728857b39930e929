"""Pairing two series' bodies by position: the shift between their names,
exact on constructed centroids."""
from __future__ import annotations

import numpy as np
import pytest

from spinegate.inference.study_naming import MIN_PAIRS, PAIR_FRACTION_OF_PITCH, naming_shift, shifted_level

# A column at a 36 mm pitch, S1 lowest (patient z up), drifting anteriorly.
REFERENCE = {name: np.array([0.0, 3.0 * i, -36.0 * i]) for i, name in
             enumerate(("T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1"))}


def _named(names_from_top, first_reference_level, offset_mm=(0.0, 0.0, 0.0)):
    """Bodies at the reference positions from ``first_reference_level`` down, named ``names_from_top``."""
    levels = list(REFERENCE)
    start = levels.index(first_reference_level)
    return {n: REFERENCE[levels[start + i]] + np.asarray(offset_mm) for i, n in enumerate(names_from_top)}


def test_names_that_agree_shift_by_nothing():
    other = _named(("L2", "L3", "L4", "L5"), "L2", offset_mm=(2.0, -3.0, 4.0))
    assert naming_shift(REFERENCE, other).shift == 0 and naming_shift(REFERENCE, other).pairs == 4


def test_a_count_from_a_cut_lowest_body_is_shifted_onto_the_anchored_names():
    # The other series' field ends in L4, which it counted as L5 (or as S1): its names move up.
    assert naming_shift(REFERENCE, _named(("L1", "L2", "L3", "L4", "L5"), "T12")).shift == -1
    assert naming_shift(REFERENCE, _named(("L2", "L3", "L4", "L5", "S1"), "T12")).shift == -2


def test_pairs_that_no_single_shift_explains_conflict():
    other = {"L3": REFERENCE["L3"], "L4": REFERENCE["L4"], "L5": REFERENCE["S1"]}  # a level skipped below L4
    s = naming_shift(REFERENCE, other)
    assert s.shift is None and s.pairs == 3 and s.conflicting


def test_too_few_pairs_carry_nothing_and_do_not_conflict():
    pitch = 36.0 * np.hypot(1.0, 3.0 / 36.0)
    far = PAIR_FRACTION_OF_PITCH * pitch + 0.5
    other = {"L3": REFERENCE["L3"], "L4": REFERENCE["L4"] + np.array([0.0, 0.0, far])}
    s = naming_shift(REFERENCE, other)
    assert s.pairs == MIN_PAIRS - 1 and s.shift is None and not s.conflicting
    assert naming_shift({"L3": REFERENCE["L3"]}, other).pairs == 0  # one reference body has no pitch


def test_a_name_outside_the_table_is_refused():
    with pytest.raises(ValueError, match="'L6' is not a vertebral body level"):
        naming_shift(REFERENCE, {"L6": REFERENCE["L5"]})


@pytest.mark.parametrize("name,shift,expected", [
    ("L4", 1, "L5"), ("L5", 1, "S1"), ("S1", -2, "L4"), ("T10", -1, None), ("S1", 1, None),
    ("L4L5", -1, "L3L4"), ("T12L1", 2, "L2L3"), ("L4L5", 1, "L5S1"), ("L5S1", 1, None), ("T10T11", -1, None),
])
def test_shifted_level_moves_bodies_and_discs_within_the_table(name, shift, expected):
    assert shifted_level(name, shift) == expected


def test_shifted_level_refuses_what_is_no_level():
    with pytest.raises(ValueError, match="neither a vertebral body nor a disc"):
        shifted_level("C7", 1)
