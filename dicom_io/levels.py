"""The spine structures spinegate names, with their label values and codes.

One table serves the phantom generator, the level-naming post-processing, the
SEG writer (segment labels, SNOMED CT codes, display colours) and the SR.
Codes come from pydicom's SNOMED CT dictionary (``codes.SCT``).
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

__all__ = [
    "StructureKind",
    "SpineStructure",
    "SPINE_STRUCTURES",
    "VERTEBRAL_BODY_LEVELS",
    "DISC_LEVELS",
    "structure_by_label",
    "structure_by_name",
    "disc_between",
]


class StructureKind(str, enum.Enum):
    """Kinds of sagittal structure; values are the words used in labels."""

    VERTEBRAL_BODY = "vertebral body"
    DISC = "intervertebral disc"


@dataclass(frozen=True)
class SpineStructure:
    """One named structure of the lumbar spine.

    Parameters
    ----------
    name : str
        Level name, e.g. ``"L3"`` or ``"L4L5"`` (no separators, as in the
        training data tables).
    kind : StructureKind
        Vertebral body or intervertebral disc.
    label : int
        Value in spinegate label maps (1-based, stable across versions).
    property_type : pydicom.sr.coding.Code
        SNOMED CT code of the structure (SEG Segmented Property Type).
    colour_rgb : tuple of int
        Recommended display colour (sRGB, 0-255).
    """

    name: str
    kind: StructureKind
    label: int
    property_type: Code
    colour_rgb: tuple[int, int, int]

    @property
    def short_name(self) -> str:
        """The level as a reader writes it: ``"L3"``, ``"L4-L5"``."""
        if self.kind is StructureKind.DISC:
            upper, lower = _split_disc(self.name)
            return f"{upper}-{lower}"
        return self.name

    @property
    def display_name(self) -> str:
        """Human label: ``"L3 vertebral body"``, ``"L4-L5 intervertebral disc"``."""
        return f"{self.short_name} {self.kind.value}"


def _split_disc(name: str) -> tuple[str, str]:
    # "T12L1" -> ("T12", "L1"); "L5S1" -> ("L5", "S1")
    for i in range(1, len(name)):
        if name[i].isalpha():
            return name[:i], name[i:]
    raise ValueError(f"'name' {name!r} is not a disc level such as 'L4L5'")


# Superior → inferior. S1 uses the SNOMED CT "Sacrum" concept: pydicom's
# dictionary has no code for the first sacral vertebra alone.
VERTEBRAL_BODY_LEVELS: tuple[str, ...] = ("T10", "T11", "T12", "L1", "L2", "L3", "L4", "L5", "S1")
DISC_LEVELS: tuple[str, ...] = tuple(
    f"{a}{b}" for a, b in zip(VERTEBRAL_BODY_LEVELS[:-1], VERTEBRAL_BODY_LEVELS[1:])
)

_BODY_CODES = {
    "T10": codes.SCT.T10Vertebra,
    "T11": codes.SCT.T11Vertebra,
    "T12": codes.SCT.T12Vertebra,
    "L1": codes.SCT.L1Vertebra,
    "L2": codes.SCT.L2Vertebra,
    "L3": codes.SCT.L3Vertebra,
    "L4": codes.SCT.L4Vertebra,
    "L5": codes.SCT.L5Vertebra,
    "S1": codes.SCT.Sacrum,
}
# SNOMED CT names a disc by the vertebra above it.
_DISC_CODES = {
    "T10T11": codes.SCT.IntervertebralDiscStructureOfTenthThoracicVertebra,
    "T11T12": codes.SCT.IntervertebralDiscStructureOfEleventhThoracicVertebra,
    "T12L1": codes.SCT.IntervertebralDiscStructureOfTwelfthThoracicVertebra,
    "L1L2": codes.SCT.IntervertebralDiscStructureOfFirstLumbarVertebra,
    "L2L3": codes.SCT.IntervertebralDiscStructureOfSecondLumbarVertebra,
    "L3L4": codes.SCT.IntervertebralDiscStructureOfThirdLumbarVertebra,
    "L4L5": codes.SCT.IntervertebralDiscStructureOfFourthLumbarVertebra,
    "L5S1": codes.SCT.IntervertebralDiscStructureOfFifthLumbarVertebra,
}
# SNOMED CT's disc meanings exceed the 64 characters a DICOM Code Meaning
# may hold (LO); keep the code value and shorten the meaning.
_DISC_CODES = {
    k: Code(c.value, c.scheme_designator, c.meaning.replace(" (body structure)", "").replace(" structure", ""))
    for k, c in _DISC_CODES.items()
}
# Bodies in warm tones alternating in lightness, discs in cool tones, so
# neighbouring levels stay distinguishable in an overlay.
_BODY_COLOURS = [
    (230, 159, 0), (240, 228, 66), (213, 94, 0), (255, 180, 120), (204, 121, 167),
    (255, 120, 80), (200, 170, 40), (255, 200, 0), (170, 110, 60),
]
_DISC_COLOURS = [
    (0, 114, 178), (86, 180, 233), (0, 158, 115), (60, 220, 200), (40, 90, 255),
    (120, 200, 255), (0, 200, 120), (150, 120, 255),
]

SPINE_STRUCTURES: tuple[SpineStructure, ...] = tuple(
    [
        SpineStructure(n, StructureKind.VERTEBRAL_BODY, i + 1, _BODY_CODES[n], _BODY_COLOURS[i])
        for i, n in enumerate(VERTEBRAL_BODY_LEVELS)
    ]
    + [
        SpineStructure(n, StructureKind.DISC, 20 + i + 1, _DISC_CODES[n], _DISC_COLOURS[i])
        for i, n in enumerate(DISC_LEVELS)
    ]
)
_BY_LABEL = {s.label: s for s in SPINE_STRUCTURES}
_BY_NAME = {s.name: s for s in SPINE_STRUCTURES}


def structure_by_label(label: int) -> SpineStructure:
    """Return the structure with label value ``label``.

    Raises
    ------
    ValueError
        If no structure has that label value.
    """
    try:
        return _BY_LABEL[int(label)]
    except KeyError as e:
        raise ValueError(f"'label' {label!r} is not a spinegate spine label") from e


def structure_by_name(name: str) -> SpineStructure:
    """Return the structure named ``name`` (e.g. ``"L3"`` or ``"L4L5"``).

    Raises
    ------
    ValueError
        If the name is not a known level.
    """
    try:
        return _BY_NAME[name]
    except KeyError as e:
        raise ValueError(f"'name' {name!r} is not a known spine level") from e


def disc_between(upper_body: str) -> str:
    """Name of the disc directly below vertebral body ``upper_body``.

    Raises
    ------
    ValueError
        If ``upper_body`` is S1 or unknown.
    """
    if upper_body not in VERTEBRAL_BODY_LEVELS[:-1]:
        raise ValueError(f"'upper_body' {upper_body!r} has no disc below it in the table")
    i = VERTEBRAL_BODY_LEVELS.index(upper_body)
    return f"{upper_body}{VERTEBRAL_BODY_LEVELS[i + 1]}"
