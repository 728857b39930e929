"""Trunk muscle groups of the model: fascicle layout and strength.

Strength: each fascicle's maximum isometric force is its cross-sectional
area × `SPECIFIC_TENSION_N_PER_CM2` (100 N/cm², as in the Bruno-family spine
models; subject fits span 40–130 N/cm², Burkhart 2017). A group's default
area is the reference model's summed maximum force (BIOMECH.md, both sides)
divided by that tension, halved per side, shared equally by the group's
fascicles, and scaled to the subject by (body mass / 79.6 kg)^(2/3)
(geometric similarity: area ∝ length², mass ∝ length³).

Where the axial engine measured a group's cross-sectional area on one side,
that side's group area is scaled by measured / `REFERENCE_ACSA_CM2` — the
typical maximum anatomical CSA of the group in an adult man of the reference
size (approximate literature values for lumbar MRI, *unverified* here; the
ratio, not the absolute value, carries the subject's information).

Geometry: each fascicle runs from its origin to its insertion through one
via point per joint it crosses. The via point sits at the joint's level, on
the body above the joint, offset along the disc's posterior direction by the
group's moment arm at that joint (BIOMECH.md, neutral posture, + extensor),
so the model's moment arms are the published ones whatever the subject's
lordosis.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Mapping

__all__ = [
    "SPECIFIC_TENSION_N_PER_CM2",
    "MuscleGroup",
    "Fascicle",
    "REFERENCE_ACSA_CM2",
    "GROUP_MAX_FORCE_BOTH_SIDES_N",
    "MOMENT_ARM_MM",
    "fascicles",
]

SPECIFIC_TENSION_N_PER_CM2 = 100.0
REFERENCE_MASS_KG = 79.6


class MuscleGroup(str, enum.Enum):
    """Trunk muscle groups (value: the short name used in fascicle names)."""

    ILIOCOSTALIS = "IL"
    LONGISSIMUS_THORACIS = "LTpT"
    LONGISSIMUS_LUMBORUM = "LTpL"
    MULTIFIDUS = "MF"
    QUADRATUS_LUMBORUM = "QL"
    PSOAS = "PS"
    RECTUS_ABDOMINIS = "RA"
    EXTERNAL_OBLIQUE = "EO"
    INTERNAL_OBLIQUE = "IO"


# Reference model, both sides, at 100 N/cm² (BIOMECH.md "Parameters").
GROUP_MAX_FORCE_BOTH_SIDES_N = {
    MuscleGroup.ILIOCOSTALIS: 9658.0,
    MuscleGroup.LONGISSIMUS_LUMBORUM: 4524.0,
    MuscleGroup.LONGISSIMUS_THORACIS: 3852.0,
    MuscleGroup.MULTIFIDUS: 3265.0,
    MuscleGroup.QUADRATUS_LUMBORUM: 2723.0,
    MuscleGroup.PSOAS: 4470.0,
    MuscleGroup.RECTUS_ABDOMINIS: 1412.0,
    MuscleGroup.EXTERNAL_OBLIQUE: 5120.0,
    MuscleGroup.INTERNAL_OBLIQUE: 2067.0,
}

# Moment arms in neutral posture (mm, + extensor) at L5S1, L4L5, L3L4, L2L3,
# L1L2, T12L1. BIOMECH.md gives L5S1/L4L5/L3L4/L1L2; L2L3 is the mean of its
# neighbours and T12L1 repeats L1L2 (marked values are ours).
MOMENT_ARM_MM = {
    MuscleGroup.MULTIFIDUS: (48, 57, 54, 50.5, 47, 47),
    MuscleGroup.ILIOCOSTALIS: (41, 57, 62, 60.5, 59, 59),
    MuscleGroup.LONGISSIMUS_THORACIS: (59, 70, 66, 59.5, 53, 53),
    MuscleGroup.LONGISSIMUS_LUMBORUM: (45, 55, 54, 47.5, 41, 41),
    MuscleGroup.QUADRATUS_LUMBORUM: (1, 22, 30, 33.5, 37, 37),
    MuscleGroup.PSOAS: (-31, -10, 2, 6, 10, 10),
    MuscleGroup.RECTUS_ABDOMINIS: (-155, -139, -135, -140, -145, -145),
    MuscleGroup.EXTERNAL_OBLIQUE: (-71, -48, -35, -28.5, -22, -22),
    # Not tabulated in BIOMECH.md: taken equal to the external oblique.
    MuscleGroup.INTERNAL_OBLIQUE: (-71, -48, -35, -28.5, -22, -22),
}

# Typical maximum anatomical CSA per side (cm²), adult man of ~80 kg, lumbar
# MRI. Approximate, unverified: used only as the denominator of the
# subject/reference ratio. Erector spinae = iliocostalis + longissimus.
REFERENCE_ACSA_CM2 = {"erector_spinae": 22.0, "multifidus": 9.0, "psoas": 16.0, "quadratus_lumborum": 6.0}
_MEASURED_GROUPS = {
    "erector_spinae": (MuscleGroup.ILIOCOSTALIS, MuscleGroup.LONGISSIMUS_THORACIS, MuscleGroup.LONGISSIMUS_LUMBORUM),
    "multifidus": (MuscleGroup.MULTIFIDUS,),
    "psoas": (MuscleGroup.PSOAS,),
    "quadratus_lumborum": (MuscleGroup.QUADRATUS_LUMBORUM,),
}

# Lateral distance of each group from the midline (m, reference stature).
LATERAL_M = {
    MuscleGroup.MULTIFIDUS: 0.02, MuscleGroup.LONGISSIMUS_LUMBORUM: 0.035, MuscleGroup.LONGISSIMUS_THORACIS: 0.04,
    MuscleGroup.ILIOCOSTALIS: 0.06, MuscleGroup.QUADRATUS_LUMBORUM: 0.06, MuscleGroup.PSOAS: 0.04,
    MuscleGroup.RECTUS_ABDOMINIS: 0.04, MuscleGroup.EXTERNAL_OBLIQUE: 0.12, MuscleGroup.INTERNAL_OBLIQUE: 0.11,
}

# Which bodies each group's fascicles join (origin → insertion), per side.
# "pelvis" covers sacrum and ilium; "thorax" the ribs and thoracic spine.
_LAYOUT = {
    MuscleGroup.ILIOCOSTALIS: [("pelvis", "thorax"), ("pelvis", "L1"), ("pelvis", "L2"), ("pelvis", "L3"),
                               ("pelvis", "L4")],
    MuscleGroup.LONGISSIMUS_THORACIS: [("pelvis", "thorax")],
    MuscleGroup.LONGISSIMUS_LUMBORUM: [("pelvis", lv) for lv in ("L1", "L2", "L3", "L4", "L5")],
    # Multifidus also spans the thoracolumbar junction (lumbar origins,
    # insertions on the lower thoracic spinous processes).
    MuscleGroup.MULTIFIDUS: [("pelvis", lv) for lv in ("L1", "L2", "L3", "L4", "L5")] + [("L2", "thorax"),
                                                                                        ("L1", "thorax")],
    MuscleGroup.QUADRATUS_LUMBORUM: [("pelvis", lv) for lv in ("L1", "L2", "L3", "L4")] + [("pelvis", "thorax")],
    MuscleGroup.PSOAS: [("pelvis", lv) for lv in ("L1", "L2", "L3", "L4", "L5")],
    MuscleGroup.RECTUS_ABDOMINIS: [("pelvis", "thorax")],
    MuscleGroup.EXTERNAL_OBLIQUE: [("pelvis", "thorax")],
    MuscleGroup.INTERNAL_OBLIQUE: [("pelvis", "thorax")],
}


@dataclass(frozen=True)
class Fascicle:
    """One muscle fascicle on one side."""

    name: str
    group: MuscleGroup
    side: str  # "r" or "l"
    origin_body: str
    insertion_body: str
    csa_cm2: float

    @property
    def max_isometric_force_n(self) -> float:
        return self.csa_cm2 * SPECIFIC_TENSION_N_PER_CM2


def fascicles(mass_kg: float, measured_acsa_cm2: Mapping[tuple[str, str], float] | None = None) -> list[Fascicle]:
    """All fascicles of both sides with their areas.

    Parameters
    ----------
    mass_kg : float
        Body mass, for the size scaling of the default areas.
    measured_acsa_cm2 : mapping, optional
        (measured group, side) → maximum CSA over the measured levels, for
        groups in `REFERENCE_ACSA_CM2` and side ``"r"``/``"l"``.

    Raises
    ------
    ValueError
        For an unknown group or side, or a non-positive area.
    """
    measured = dict(measured_acsa_cm2 or {})
    factor: dict[tuple[MuscleGroup, str], float] = {}
    for (name, side), area in measured.items():
        if name not in REFERENCE_ACSA_CM2 or side not in ("r", "l"):
            raise ValueError(f"unknown measured muscle group {(name, side)!r}; groups: {sorted(REFERENCE_ACSA_CM2)}")
        if not area > 0:
            raise ValueError(f"measured CSA of {name} ({side}) must be > 0, got {area}")
        for g in _MEASURED_GROUPS[name]:
            factor[(g, side)] = area / REFERENCE_ACSA_CM2[name]
    size = (mass_kg / REFERENCE_MASS_KG) ** (2.0 / 3.0)
    out = []
    for group, layout in _LAYOUT.items():
        per_side_cm2 = GROUP_MAX_FORCE_BOTH_SIDES_N[group] / 2 / SPECIFIC_TENSION_N_PER_CM2
        for side in ("r", "l"):
            scale = factor.get((group, side), size)
            for origin, insertion in layout:
                label = insertion if origin == "pelvis" else f"{origin}_{insertion}"
                out.append(Fascicle(f"{group.value}_{label}_{side}", group, side, origin, insertion,
                                    per_side_cm2 / len(layout) * scale))
    return out
