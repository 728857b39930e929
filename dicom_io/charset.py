"""The Specific Character Set (0008,0005) of the objects spinegate writes.

highdicom copies (0008,0005) from the first source image, but the text of a
SEG or SR is not only the source's: our own descriptions, codes and
tracking identifiers join it. A source without (0008,0005) (plain-ASCII
scanners) then yields an object whose non-ASCII text is written in a
repertoire it does not declare, which dciodvfy, dcmtk and dcmqi refuse.

The rule: an object declares nothing (the default repertoire, ISO-IR 6)
when all its text is ASCII, and ``ISO_IR 192`` (UTF-8) otherwise. Values
copied from the sources are already decoded by pydicom in the sources'
declared set, so re-declaring re-encodes them correctly on write (pydicom
re-encodes a PersonName whose encodings differ from the target's).
"""
from __future__ import annotations

from enum import Enum
from typing import Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import PersonName

__all__ = ["CharacterSet", "TEXT_VRS", "declare_character_set", "required_character_set"]

# VRs whose values are subject to (0008,0005) (PS3.5 6.1.2.3); AE, AS, CS,
# DA, DS, DT, IS, TM, UI, UR are restricted to the default repertoire.
TEXT_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "PN", "UC"})


class CharacterSet(Enum):
    """The two repertoires spinegate writes."""

    DEFAULT = None  # ISO-IR 6 (ASCII): (0008,0005) absent
    UTF8 = "ISO_IR 192"


def _as_strings(value: object) -> Iterator[str]:
    if value is None:
        return
    if isinstance(value, (str, PersonName)):
        yield str(value)
    elif isinstance(value, (list, tuple, MultiValue)):
        for v in value:
            yield from _as_strings(v)
    elif isinstance(value, bytes):
        # Undecoded bytes would be written as they are: count any byte
        # outside ASCII as needing more than the default repertoire.
        yield value.decode("latin-1")


def _walk(ds: Dataset, drop_item_declarations: bool) -> bool:
    """Whether any text of ``ds`` (sequence items included) is not ASCII;
    with ``drop_item_declarations`` each item's own (0008,0005) goes on the
    way, so one pass serves both."""
    non_ascii = False
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                if drop_item_declarations and "SpecificCharacterSet" in item:
                    del item.SpecificCharacterSet
                non_ascii = _walk(item, drop_item_declarations) or non_ascii
        elif not non_ascii and elem.VR in TEXT_VRS:
            non_ascii = any(not text.isascii() for text in _as_strings(elem.value))
    return non_ascii


def required_character_set(ds: Dataset) -> CharacterSet:
    """The smallest repertoire that holds all of ``ds``'s text."""
    return CharacterSet.UTF8 if _walk(ds, drop_item_declarations=False) else CharacterSet.DEFAULT


def declare_character_set(ds: Dataset) -> CharacterSet:
    """Set (0008,0005) of ``ds`` to what its text needs; returns the choice.

    Items of sequences inherit the top-level declaration, so any (0008,0005)
    an item carried over from a source is removed.
    """
    needed = CharacterSet.UTF8 if _walk(ds, drop_item_declarations=True) else CharacterSet.DEFAULT
    if needed is CharacterSet.DEFAULT:
        if "SpecificCharacterSet" in ds:
            del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = needed.value
    return needed
