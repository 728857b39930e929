"""Body size of the subject and the segment parameters derived from it.

Sources (BIOMECH.md):

- Segment mass fractions: de Leva 1996 (J Biomech 29:1223) for the arms;
  per-level lumbar masses and "everything above L5/S1 = 48.2 % of body mass"
  from the Bruno-lineage thoracolumbar model (79.6 kg male); the remainder
  above L1 (thorax, head, neck) is what is left of that 48.2 %. For women the
  trunk fractions are scaled by de Leva's female/male trunk ratio
  (0.4257 / 0.4346) and the arm fractions are de Leva's female values.
- Centre-of-mass offsets of each level anterior to its vertebral body
  (+1.4 cm at L5 … +4.1 cm at L1, +5.2 cm at T12) from the same model.
- Segment lengths as fractions of stature: Drillis & Contini 1966, as
  tabulated by Winter (Biomechanics and Motor Control of Human Movement):
  upper arm 0.186 H, forearm 0.146 H, hand 0.108 H; shoulder height 0.818 H.

Defaults, used when the DICOM header has no PatientSize/PatientWeight/
PatientSex, are the reference subject of BIOMECH.md (male, 79.6 kg) with the
stature of a median adult man (1.75 m); each default used is reported as a
flag so the SR can say so.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "Sex",
    "Subject",
    "SegmentMasses",
    "segment_masses",
    "DEFAULT_HEIGHT_M",
    "DEFAULT_MASS_KG",
    "DEFAULT_SEX",
    "LEVEL_COM_ANTERIOR_MM",
    "arm_reach_m",
    "arm_com_from_shoulder_m",
    "shoulder_above_t12l1_m",
]


class Sex(str, enum.Enum):
    """Patient sex as DICOM PatientSex codes it (O → the male default table)."""

    MALE = "M"
    FEMALE = "F"


DEFAULT_HEIGHT_M = 1.75
DEFAULT_MASS_KG = 79.6
DEFAULT_SEX = Sex.MALE

FLAG_DEFAULT_HEIGHT = "default_height_used"
FLAG_DEFAULT_MASS = "default_weight_used"
FLAG_DEFAULT_SEX = "default_sex_used"


@dataclass(frozen=True)
class Subject:
    """Stature, mass and sex of the subject, and which were defaulted.

    Parameters
    ----------
    height_m : float
        Stature (DICOM PatientSize is in metres).
    mass_kg : float
        Body mass (DICOM PatientWeight, kg).
    sex : Sex
        Selects the segment-mass table.
    defaults_used : tuple of str
        Flags naming the values that came from defaults.
    """

    height_m: float = DEFAULT_HEIGHT_M
    mass_kg: float = DEFAULT_MASS_KG
    sex: Sex = DEFAULT_SEX
    defaults_used: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1.0 <= self.height_m <= 2.5:
            raise ValueError(f"'height_m' must be 1.0-2.5 m, got {self.height_m}")
        if not 25.0 <= self.mass_kg <= 250.0:
            raise ValueError(f"'mass_kg' must be 25-250 kg, got {self.mass_kg}")
        if not isinstance(self.sex, Sex):
            raise TypeError(f"'sex' must be a Sex, got {type(self.sex).__name__}")

    @classmethod
    def from_dicom_values(cls, patient_size_m: float | None, patient_weight_kg: float | None,
                          patient_sex: str | None) -> "Subject":
        """Build from header values, defaulting (and flagging) what is
        missing or implausible. Never raises for absent or odd values: a
        study is still analysed, with the defaults stated."""
        flags = []
        height = _plausible(patient_size_m, 1.0, 2.5)
        if height is None:
            height = DEFAULT_HEIGHT_M
            flags.append(FLAG_DEFAULT_HEIGHT)
        mass = _plausible(patient_weight_kg, 25.0, 250.0)
        if mass is None:
            mass = DEFAULT_MASS_KG
            flags.append(FLAG_DEFAULT_MASS)
        code = str(patient_sex or "").strip().upper()
        if code in ("M", "F"):
            sex = Sex(code)
        else:
            sex = DEFAULT_SEX
            flags.append(FLAG_DEFAULT_SEX)
        return cls(height, mass, sex, tuple(flags))


def _plausible(value: float | None, low: float, high: float) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if low <= v <= high else None


# Per-level masses of the Bruno-lineage model divided by its 79.6 kg.
_LEVEL_MASS_FRACTION = {"L5": 2.20 / 79.6, "L4": 2.08 / 79.6, "L3": 2.03 / 79.6, "L2": 1.98 / 79.6,
                        "L1": 2.01 / 79.6}
_ABOVE_L5S1_FRACTION = 0.482
# de Leva 1996: upper arm + forearm + hand.
_ARM_FRACTION = {Sex.MALE: 0.0271 + 0.0162 + 0.0061, Sex.FEMALE: 0.0255 + 0.0138 + 0.0056}
_TRUNK_FEMALE_OVER_MALE = 0.4257 / 0.4346

# Centre of mass of each level's slice of the body, anterior to its
# vertebral-body centroid (mm, reference stature); L4/L2 interpolated.
LEVEL_COM_ANTERIOR_MM = {"L5": 14.0, "L4": 20.5, "L3": 27.0, "L2": 34.0, "L1": 41.0, "T12": 52.0}


@dataclass(frozen=True)
class SegmentMasses:
    """Masses (kg) of the model's segments above the sacrum."""

    lumbar_kg: dict[str, float]
    upper_body_kg: float  # T12 and everything above it except the arms
    arm_kg: float  # one arm: upper arm, forearm, hand

    @property
    def above_l5s1_kg(self) -> float:
        return sum(self.lumbar_kg.values()) + self.upper_body_kg + 2 * self.arm_kg


def segment_masses(subject: Subject) -> SegmentMasses:
    """Segment masses scaled to the subject's body mass and sex."""
    trunk_scale = 1.0 if subject.sex is Sex.MALE else _TRUNK_FEMALE_OVER_MALE
    lumbar = {lv: f * trunk_scale * subject.mass_kg for lv, f in _LEVEL_MASS_FRACTION.items()}
    arm = _ARM_FRACTION[subject.sex] * subject.mass_kg
    above = _ABOVE_L5S1_FRACTION * trunk_scale * subject.mass_kg
    upper = above - sum(lumbar.values()) - 2 * arm
    return SegmentMasses(lumbar, upper, arm)


def arm_reach_m(subject: Subject) -> float:
    """Shoulder joint to the centre of the grip: upper arm + forearm + half the hand."""
    return (0.186 + 0.146 + 0.108 / 2) * subject.height_m


def arm_com_from_shoulder_m(subject: Subject) -> float:
    """Distance of the whole arm's centre of mass from the shoulder: 0.530 of
    the shoulder-to-wrist length (Winter's "total arm" segment)."""
    return 0.530 * (0.186 + 0.146) * subject.height_m


def shoulder_above_t12l1_m(subject: Subject) -> float:
    """Vertical distance from T12L1 to the shoulder joint centre in upright
    stance: shoulder height 0.818 H less ~0.02 H to the joint centre, less
    the T12L1 height (L5/S1 at ~0.575 H plus the lumbar spine, ~0.1 H)."""
    return (0.818 - 0.02 - 0.575 - 0.10) * subject.height_m
