"""The paraspinal muscles spinegate segments on axial series, with their
label values, SNOMED CT codes, laterality and display colours.

One table serves the phantom, the axial engine, the SEG writer and the SR,
as `dicom_io.levels` does for vertebral bodies and discs. pydicom's
dictionary lacks three of the four muscle concepts; their SNOMED CT codes
are declared here.
"""
from __future__ import annotations

from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["MuscleStructure", "MUSCLE_STRUCTURES", "MUSCLE_LABELS", "MUSCLE_GROUPS", "LATERALITY", "muscle_by_label",
           "muscle_by_name"]

# Muscle abbreviation → (SNOMED CT concept, words used in labels).
MUSCLE_GROUPS: dict[str, tuple[Code, str]] = {
    "MF": (Code("5709001", "SCT", "Multifidus muscles"), "multifidus"),
    "ES": (codes.SCT.ErectorSpinaeMuscle, "erector spinae"),
    "PM": (Code("64038003", "SCT", "Psoas major muscle"), "psoas major"),
    "QL": (Code("6001004", "SCT", "Quadratus lumborum muscle"), "quadratus lumborum"),
}
LATERALITY = {"R": codes.SCT.Right, "L": codes.SCT.Left}
# (muscle, side) → label value in spinegate label maps (after the spine's 1-29).
MUSCLE_LABELS = {("MF", "R"): 41, ("MF", "L"): 42, ("ES", "R"): 43, ("ES", "L"): 44, ("PM", "R"): 45,
                 ("PM", "L"): 46, ("QL", "R"): 47, ("QL", "L"): 48}
# Right side a shade darker than the left so an overlay tells them apart.
_COLOURS = {"MF": ((180, 30, 45), (230, 60, 80)), "ES": ((40, 120, 40), (90, 190, 90)),
            "PM": ((120, 60, 170), (170, 110, 220)), "QL": ((150, 110, 20), (215, 170, 60))}


@dataclass(frozen=True)
class MuscleStructure:
    """One muscle of one side.

    Parameters
    ----------
    muscle : str
        ``"MF"``, ``"ES"``, ``"PM"`` or ``"QL"``.
    side : str
        ``"R"`` or ``"L"`` (the patient's).
    label : int
        Value in spinegate label maps.
    property_type : pydicom.sr.coding.Code
        SNOMED CT code of the muscle (SEG Segmented Property Type).
    laterality : pydicom.sr.coding.Code
        SNOMED CT Right / Left (property type modifier, SR finding site).
    colour_rgb : tuple of int
        Recommended display colour (sRGB, 0-255).
    """

    muscle: str
    side: str
    label: int
    property_type: Code
    laterality: Code
    colour_rgb: tuple[int, int, int]

    @property
    def name(self) -> str:
        """``"MF_R"`` … (the key in measurements.json and the phantom truth)."""
        return f"{self.muscle}_{self.side}"

    @property
    def display_name(self) -> str:
        """``"Right multifidus"`` …"""
        return f"{'Right' if self.side == 'R' else 'Left'} {MUSCLE_GROUPS[self.muscle][1]}"


MUSCLE_STRUCTURES: tuple[MuscleStructure, ...] = tuple(
    MuscleStructure(m, s, label, MUSCLE_GROUPS[m][0], LATERALITY[s], _COLOURS[m][0 if s == "R" else 1])
    for (m, s), label in MUSCLE_LABELS.items()
)
_BY_LABEL = {m.label: m for m in MUSCLE_STRUCTURES}
_BY_NAME = {m.name: m for m in MUSCLE_STRUCTURES}


def muscle_by_label(label: int) -> MuscleStructure:
    """The muscle with label value ``label``.

    Raises
    ------
    ValueError
        If no muscle has that label value.
    """
    try:
        return _BY_LABEL[int(label)]
    except KeyError as e:
        raise ValueError(f"'label' {label!r} is not a spinegate muscle label") from e


def muscle_by_name(name: str) -> MuscleStructure:
    """The muscle named ``name`` (``"MF_R"`` …).

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    try:
        return _BY_NAME[name]
    except KeyError as e:
        raise ValueError(f"'name' {name!r} is not a known muscle (e.g. 'MF_R')") from e
