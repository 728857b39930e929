"""Coded concepts spinegate writes that pydicom's dictionaries lack.

Declared once, here, under spinegate's private coding scheme "99SPINEGATE"
(PS3.3 8.2: a local scheme designator starts with "99"). Everything else
comes from ``pydicom.sr.codedict.codes``.
"""
from __future__ import annotations

from typing import Sequence

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.coding import Code

__all__ = [
    "SCHEME", "SCHEME_IDENTIFICATION", "CENTROID_L", "CENTROID_P", "CENTROID_S", "NEEDS_REVIEW", "REVIEW_REASON", "ASSUMED_INPUT",
    "ASSUMPTIONS", "is_assumption", "review_flags", "reason_codes", "UCUM_NEWTON",
    "UCUM_NEWTON_METRE", "UCUM_KILOGRAM", "UCUM_DEGREE", "UCUM_METRE", "BODY_HEIGHT", "BODY_WEIGHT", "SUBJECT_SEX",
    "SEX", "SPINAL_LOAD", "DISC_COMPRESSION", "DISC_ANTERIOR_SHEAR", "VERTEBRAL_BODY_COMPRESSION",
    "LUMBAR_LORDOSIS", "SACRAL_SLOPE", "TASK", "REASON", "UCUM_SQUARE_CENTIMETRE", "UCUM_MILLILITRE", "UCUM_PERCENT",
    "UCUM_RATIO", "RELATIVE_CSA", "FAT_INFILTRATION", "FAT_FRACTION", "CSA_ASYMMETRY", "PARASPINAL_MUSCLE",
    "RADIOMICS_WHOLE_STRUCTURE", "RADIOMICS_CENTRAL_SLICE", "MEAN_OF_POSITIVE_INTENSITIES", "INTENSITY_P10",
    "INTENSITY_P90", "INTENSITY_IQR", "T2_FIT", "UCUM_ARBITRARY_UNIT", "UCUM_NO_UNIT", "UCUM_BIT",
]

SCHEME = "99SPINEGATE"
# The Coding Scheme Identification Sequence item of every object that uses
# the private scheme (PS3.3 C.12.1.1.5: a private designator is identified).
SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator=SCHEME, name="spinegate local codes", version="1",
    responsible_organization="spinegate project (dicom_io/codes.py, conformance/CONFORMANCE.md)")

# Centre of mass (DCM 128138) split into its patient-coordinate components.
CENTROID_L = Code("SG0001", SCHEME, "Centre of mass, patient x (LPS)")
CENTROID_P = Code("SG0002", SCHEME, "Centre of mass, patient y (LPS)")
CENTROID_S = Code("SG0003", SCHEME, "Centre of mass, patient z (LPS)")
NEEDS_REVIEW = Code("SG0010", SCHEME, "Result needs human review")
REVIEW_REASON = Code("SG0011", SCHEME, "Review reason")
# An input the model assumed (a default, not the subject's): said, but no
# reason for a person to look at the images.
ASSUMED_INPUT = Code("SG0012", SCHEME, "Model input assumed")

UCUM_NEWTON = Code("N", "UCUM", "newton")
UCUM_NEWTON_METRE = Code("N.m", "UCUM", "newton meter")
UCUM_KILOGRAM = Code("kg", "UCUM", "kilogram")
UCUM_DEGREE = Code("deg", "UCUM", "degree")
UCUM_METRE = Code("m", "UCUM", "meter")
UCUM_SQUARE_CENTIMETRE = Code("cm2", "UCUM", "square centimeter")
UCUM_MILLILITRE = Code("mL", "UCUM", "milliliter")
UCUM_PERCENT = Code("%", "UCUM", "percent")
UCUM_RATIO = Code("{ratio}", "UCUM", "ratio")

# Paraspinal-muscle measurements (DOMAIN.md §6). CSA and volume use SNOMED
# CT Area / Volume; these have no standard code.
PARASPINAL_MUSCLE = Code("SG0060", SCHEME, "Paraspinal muscle measurements")
RELATIVE_CSA = Code("SG0061", SCHEME, "Muscle CSA / disc CSA at the same level")
FAT_INFILTRATION = Code("SG0062", SCHEME, "Fat infiltration, thresholded area fraction")
FAT_FRACTION = Code("SG0063", SCHEME, "Fat fraction, Dixon fat/(water+fat)")
CSA_ASYMMETRY = Code("SG0064", SCHEME, "CSA asymmetry, (right-left)/mean")

# Biomechanical model inputs (LOINC / DCM / SNOMED CT).
BODY_HEIGHT = Code("8302-2", "LN", "Body height")
BODY_WEIGHT = Code("29463-7", "LN", "Body weight")
SUBJECT_SEX = Code("121032", "DCM", "Subject Sex")
SEX = {"M": Code("248153007", "SCT", "Male"), "F": Code("248152002", "SCT", "Female")}

# Spinal loads from the OpenSim model (no standard codes exist for these).
SPINAL_LOAD = Code("SG0020", SCHEME, "Spinal load estimate, musculoskeletal model")
DISC_COMPRESSION = Code("SG0021", SCHEME, "Compressive force along disc axis")
DISC_ANTERIOR_SHEAR = Code("SG0022", SCHEME, "Anterior shear force on superior vertebra")
VERTEBRAL_BODY_COMPRESSION = Code("SG0023", SCHEME, "Vertebral body compressive force")
LUMBAR_LORDOSIS = Code("SG0024", SCHEME, "Lordosis angle between L5S1 and T12L1 disc axes")
SACRAL_SLOPE = Code("SG0025", SCHEME, "L5S1 disc axis inclination, upright model")
TASK = {
    "upright_standing": Code("SG0030", SCHEME, "Static upright standing"),
    "flexion_60deg_5kg_each_hand": Code("SG0031", SCHEME, "Static 60 deg trunk flexion, 5 kg in each hand"),
}

# Review reasons, by flag prefix (measurements.json carries the full flag).
REASON = {
    "default_height_used": Code("SG0040", SCHEME, "Body height defaulted"),
    "default_weight_used": Code("SG0041", SCHEME, "Body weight defaulted"),
    "default_sex_used": Code("SG0042", SCHEME, "Sex defaulted"),
    "muscle_strength_from_literature_defaults": Code("SG0043", SCHEME, "Muscle strength from literature defaults"),
    "level_interpolated": Code("SG0044", SCHEME, "Spine level interpolated"),
    "level_extrapolated": Code("SG0045", SCHEME, "Spine level extrapolated"),
    "pose_infeasible_muscles_too_weak": Code("SG0046", SCHEME, "Pose infeasible, muscles too weak"),
    "biomechanics_not_run": Code("SG0047", SCHEME, "Biomechanics not run"),
    "implausible_centroids": Code("SG0048", SCHEME, "Implausible vertebral centroids"),
    "too_few_levels": Code("SG0049", SCHEME, "Too few spine levels in view"),
    "solver_failed": Code("SG0050", SCHEME, "Musculoskeletal solver failed"),
    "levels_from_axial_disc_order": Code("SG0051", SCHEME, "Levels from axial disc order, lowest assumed L5S1"),
    "no_slice_at_disc_midplane": Code("SG0052", SCHEME, "No axial slice at the disc mid-plane"),
    "no_disc_on_midplane_slice": Code("SG0053", SCHEME, "No disc on the mid-plane slice"),
    "dixon_fat_geometry_mismatch": Code("SG0054", SCHEME, "Dixon fat image geometry mismatch"),
    "dixon_noise_floor_not_removed": Code("SG0055", SCHEME, "Dixon noise floor not removed"),
    "muscle_section_under_1cm2": Code("SG0056", SCHEME, "Muscle section under 1 cm2, partial volume dominates"),
    "centroid_not_used": Code("SG0057", SCHEME, "Structure centroid not used as joint centre"),
    "level_naming_unanchored_no_s1": Code("SG0058", SCHEME, "Level unverified, no S1 in view"),
    "level_naming_pitch_not_countable": Code("SG0059", SCHEME, "Level unverified, step between bodies not countable"),
    "more_bodies_than_levels": Code("SG0070", SCHEME, "More bodies than levels, the highest left out"),
    "level_naming_body_missed_in_column": Code("SG0071", SCHEME, "Body missed in the column, its level skipped"),
    "touches_field_of_view_edge": Code("SG0072", SCHEME, "Structure cut by the field of view"),
    "level_naming_s1_cut_by_field_of_view": Code("SG0073", SCHEME, "Level unverified, S1 cut by the field of view"),
    "level_naming_s1_step_ambiguous": Code("SG0074", SCHEME, "Level unverified, S1 two steps below the lowest body"),
    "level_naming_s1_only_a_sliver": Code("SG0075", SCHEME, "Level unverified, S1 only a sliver"),
    "low_model_confidence": Code("SG0076", SCHEME, "Low model confidence"),
    "implausible_size": Code("SG0077", SCHEME, "Size implausible beside its neighbours"),
    "lumbar_level_missing": Code("SG0078", SCHEME, "Neighbouring lumbar level missing"),
    "sagittal_axial_level_disagreement": Code("SG0079", SCHEME, "Sagittal and axial levels disagree"),
    "off_column_components_dropped": Code("SG0080", SCHEME, "Components off the spinal column left out"),
    "level_naming_corrected_from_other_series": Code("SG0081", SCHEME, "Level names taken from another series"),
    "level_naming_disagrees_with_other_series": Code("SG0082", SCHEME,
                                                     "Level unverified, another series places levels differently"),
    "level_naming_body_two_levels_high": Code("SG0083", SCHEME,
                                              "Level unverified, a body two levels high on some slices"),
}
# Radiomics (IBSI features): the region a group covers (its measurement
# method), and the features with no code in DICOM's IBSI or statistics
# context groups.
RADIOMICS_WHOLE_STRUCTURE = Code("SG0090", SCHEME, "IBSI radiomics over the whole structure")
RADIOMICS_CENTRAL_SLICE = Code("SG0091", SCHEME, "IBSI radiomics over the central sagittal slice")
MEAN_OF_POSITIVE_INTENSITIES = Code("SG0092", SCHEME, "Mean of the positive intensities")
INTENSITY_P10 = Code("SG0093", SCHEME, "Intensity 10th percentile (IBSI QG58)")
INTENSITY_P90 = Code("SG0094", SCHEME, "Intensity 90th percentile (IBSI 8DWT)")
INTENSITY_IQR = Code("SG0095", SCHEME, "Intensity interquartile range (IBSI SALO)")
T2_FIT = Code("SG0096", SCHEME, "Mono-exponential T2 fit, multi-echo")
UCUM_ARBITRARY_UNIT = Code("[arb'U]", "UCUM", "arbitrary unit")
UCUM_NO_UNIT = Code("1", "UCUM", "no units")
UCUM_BIT = Code("bit", "UCUM", "bit")

# Flags (by prefix) that record an assumed model input rather than a result
# to look at: coded as ASSUMED_INPUT, they do not make a result need review.
ASSUMPTIONS = ("default_height_used", "default_weight_used", "default_sex_used",
               "muscle_strength_from_literature_defaults")


def is_assumption(flag: str) -> bool:
    """Whether ``flag`` records an assumed input (`ASSUMPTIONS`)."""
    return flag.startswith(ASSUMPTIONS)


def review_flags(flags: Sequence[str]) -> list[str]:
    """The flags that make a result need a person's look (all but assumptions)."""
    return [f for f in flags if not is_assumption(f)]


def reason_codes(flags: Sequence[str]) -> list[Code]:
    """The coded reasons (`REASON`, by prefix) of ``flags``, each once, in order."""
    found: list[Code] = []
    for flag in flags:
        for prefix, code in REASON.items():
            if flag.startswith(prefix) and code not in found:
                found.append(code)
    return found
