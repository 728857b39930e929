"""Counting levels across the column: body-to-body pitches against the
median, exact on constructed pitches."""
from __future__ import annotations

import pytest

from spinegate.inference.level_naming import (FLAG_BODY_MISSED, FLAG_PITCH_UNCOUNTABLE, FLAG_UNANCHORED,
                                              level_steps, naming_unverified)


@pytest.mark.parametrize("pitches, from_s1, steps, flags", [
    ([30, 31, 29, 30], False, [1, 1, 1, 1], []),
    ([30, 60, 29, 31], False, [1, 2, 1, 1], [FLAG_BODY_MISSED]),  # a body blanked inside the column
    ([23, 30, 31, 29], True, [1, 1, 1, 1], []),  # S1 to L5 is shorter than a lumbar pitch
    ([54, 30, 31, 29], True, [2, 1, 1, 1], [FLAG_BODY_MISSED]),  # L5 missed above S1
    ([30, 47, 30, 31], False, [1, 1, 1, 1], [FLAG_PITCH_UNCOUNTABLE]),  # 1.55 pitches: neither one nor two
    ([30, 100, 30, 31], False, [1, 1, 1, 1], [FLAG_PITCH_UNCOUNTABLE]),
    ([30, 60], False, [1, 1], []),  # no median to count against
])
def test_steps_between_bodies_count_missed_levels_or_flag_what_cannot_be_counted(pitches, from_s1, steps, flags):
    assert level_steps(pitches, from_s1) == (steps, flags)


def test_only_assumed_naming_is_unverified():
    assert naming_unverified([FLAG_BODY_MISSED, "off_column_components_dropped"]) == ""
    assert naming_unverified([FLAG_UNANCHORED, FLAG_PITCH_UNCOUNTABLE]) == (
        "no S1 in view, lowest body taken as L5; a step between bodies cannot be counted")


def test_every_unverified_naming_has_its_own_coded_review_reason():
    from spinegate.dicom_io.codes import reason_codes
    from spinegate.inference.level_naming import UNVERIFIED_FLAGS

    codes = [reason_codes([flag]) for flag in UNVERIFIED_FLAGS]
    assert all(len(c) == 1 for c in codes), dict(zip(UNVERIFIED_FLAGS, codes))
    assert len({c[0].value for c in codes}) == len(UNVERIFIED_FLAGS)
