"""The validation record's naming summary: how far an image reaches below
L5, and per family how often the naming is right and verified."""
import numpy as np
import pytest

from spinegate.inference.training.validation import field_below_mm, naming_by_family


def _sagittal_affine(row_mm: float = 1.0, rows_run_inferior: bool = True) -> np.ndarray:
    """(slices, rows, cols) → LPS: slices along x, rows along z, cols along y."""
    aff = np.eye(4)
    aff[:3, 0] = [4.0, 0, 0]
    aff[:3, 1] = [0, 0, -row_mm if rows_run_inferior else row_mm]
    aff[:3, 2] = [0, 0.5, 0]
    aff[:3, 3] = [0, 0, 100.0]
    return aff


@pytest.mark.parametrize("rows_run_inferior", [True, False])
def test_field_below_is_the_distance_from_the_lowest_voxel_to_the_grids_lowest_row(rows_run_inferior):
    mask = np.zeros((3, 50, 20), bool)
    lowest_row = 39 if rows_run_inferior else 10  # 10 rows above the inferior edge either way
    mask[1, (30 if rows_run_inferior else 10):(lowest_row + 1 if rows_run_inferior else 20), 5:10] = True
    assert field_below_mm(mask, _sagittal_affine(1.5, rows_run_inferior)) == pytest.approx(10 * 1.5)


def test_a_structure_on_the_last_row_has_nothing_below_it():
    mask = np.zeros((3, 50, 20), bool)
    mask[0, 45:, 3] = True
    assert field_below_mm(mask, _sagittal_affine()) == 0.0


def test_naming_by_family_counts_right_and_verified_series_and_the_field_below_l5():
    results = [
        {"stem": "VB3_01", "levels_named_correctly": True, "naming_verified": False, "field_below_l5_mm": 12.0},
        {"stem": "VB3_02", "levels_named_correctly": True, "naming_verified": True, "field_below_l5_mm": 30.0},
        {"stem": "VB3_03", "levels_named_correctly": False, "naming_verified": True, "field_below_l5_mm": 20.0},
        {"stem": "VB1_02", "levels_named_correctly": True, "naming_verified": True},
    ]
    summary = naming_by_family(results)
    assert summary["VB3"] == {"series": 3, "named_correctly": 2, "naming_verified": 2,
                              "verified_and_named_correctly": 1,
                              "field_below_l5_mm": {"median": 20.0, "min": 12.0, "max": 30.0}}
    assert summary["VB1"] == {"series": 1, "named_correctly": 1, "naming_verified": 1,
                              "verified_and_named_correctly": 1}
