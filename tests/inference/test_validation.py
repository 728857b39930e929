"""The validation record's naming summary: how far an image reaches below
L5, and per family how often the naming is right and verified; the
helpers that make a series from a 1 mm volume another way (its acquired
slices, a slab grid started further along)."""
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


def _interpolated_from_slices(spacing: float, first: float, n_planes: int = 60) -> np.ndarray:
    """A 1 mm volume interpolated linearly along i from random slices ``spacing`` mm apart, the first at ``first``."""
    rng = np.random.default_rng(3)
    positions = np.arange(first - spacing, n_planes + spacing, spacing)
    slices = rng.uniform(0, 1000, (len(positions), 12, 10))
    i = np.arange(n_planes)
    return np.stack([np.stack([np.interp(i, positions, slices[:, r, c]) for c in range(10)], axis=1)
                     for r in range(12)], axis=1)


def test_the_acquired_slices_of_an_interpolated_volume_are_found():
    from spinegate.inference.training.training_data import acquired_plane_phase

    assert acquired_plane_phase(_interpolated_from_slices(4.0, 1.0), 4) == 1
    assert acquired_plane_phase(_interpolated_from_slices(4.0, 3.0), 4) == 3
    assert acquired_plane_phase(_interpolated_from_slices(4.0, 3.0), 2) is None  # not 2 mm apart
    # slices 4.2 mm apart drift through the phases of a 4 mm grid; slices 1 mm apart are not interpolated
    assert acquired_plane_phase(_interpolated_from_slices(4.2, 0.0), 4) is None
    assert acquired_plane_phase(np.random.default_rng(4).uniform(0, 1000, (60, 12, 10)), 4) is None


def test_sagittal_planes_keep_each_plane_where_it_was():
    from spinegate.inference.training.validation import sagittal_planes

    affine = np.array([[0.9, 0, 0, -30], [0, 1.1, 0, 5], [0, 0, 1.2, 7], [0, 0, 0, 1]])
    volume = np.arange(20 * 3 * 2).reshape(20, 3, 2)
    taken, taken_affine = sagittal_planes(volume, affine, 2, 4)
    assert [int(p[0, 0]) for p in taken] == [int(volume[i, 0, 0]) for i in (2, 6, 10, 14, 18)]
    for k, i in enumerate((2, 6, 10, 14, 18)):
        np.testing.assert_allclose(taken_affine @ [k, 1, 1, 1], affine @ [i, 1, 1, 1])


def test_each_slab_is_compared_with_the_acquired_slice_it_holds():
    from spinegate.inference.training.validation import drawn_slice_labels, slab_labels

    labels = np.broadcast_to(np.arange(1, 15, dtype=np.uint8)[:, None, None], (14, 3, 2)).copy()
    # slabs of planes 0-3, 4-7, 8-11 hold the acquired planes 1, 5, 9
    got = drawn_slice_labels(labels, 0, 4, 1)
    assert [int(p.max()) for p in got] == [2, 6, 10]
    assert got.shape == slab_labels(labels, 4).shape  # the slab grid's orientation and count
    # slabs from plane 2 (planes 2-5, 6-9, 10-13) hold planes 5, 9 and 13
    assert [int(p.max()) for p in drawn_slice_labels(labels, 2, 4, 1)] == [6, 10, 14]


def test_a_volume_not_interpolated_from_acquired_slices_is_not_sent_as_them(tmp_path):
    import nibabel as nib

    from spinegate.inference.training.validation import validate_acquired_slices

    image = np.random.default_rng(5).uniform(0, 1000, (40, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "VB3_99_image.nii.gz"))
    assert validate_acquired_slices(None, tmp_path, "VB3_99") is None  # type: ignore[arg-type]  (no engine needed)


@pytest.mark.shared_data
def test_the_record_of_a_held_out_volume_sent_as_its_acquired_slices_is_reproduced(engine):
    import json

    from conftest import MODEL_DIR, require_shared_data
    from spinegate.inference.training.validation import validate_acquired_slices

    record = json.loads((MODEL_DIR / "sagittal_spine.validation.json").read_text())["acquired_slices"]["volumes"]
    got = validate_acquired_slices(engine, require_shared_data(), "VB3_05")
    assert got is not None and record["VB3_05"]["held_out"]
    assert got["mean_dice"] == pytest.approx(record["VB3_05"]["mean_dice"], abs=0.002)
    assert (got["levels_named_correctly"], got["flags"]) == (record["VB3_05"]["levels_named_correctly"],
                                                             record["VB3_05"]["flags"])


@pytest.mark.shared_data
def test_vb3_labels_between_acquired_slices_are_the_union_of_their_outlines():
    """Why VB3's 1 mm labels are larger than its drawn slices (model card,
    "Measurement accuracy"): every plane between two acquired slices holds
    the union of the two slices' outlines."""
    import nibabel as nib

    from conftest import require_shared_data
    from spinegate.inference.training.training_data import acquired_plane_phase

    data = require_shared_data()
    image = np.asarray(nib.load(str(data / "VB3_05_image.nii.gz")).dataobj)
    labels = np.asarray(nib.load(str(data / "VB3_05_label.nii.gz")).dataobj)
    phase = acquired_plane_phase(image, 4)
    assert phase == 0
    grown = 0
    for k in range(phase, labels.shape[0] - 4, 4):
        union = np.where(labels[k] > 0, labels[k], labels[k + 4])
        for between in (k + 1, k + 2, k + 3):
            assert ((labels[between] > 0) == ((labels[k] > 0) | (labels[k + 4] > 0))).all()
        grown += int((union > 0).sum()) - int((labels[k] > 0).sum())
    assert grown > 0
