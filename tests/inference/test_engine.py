"""The committed sagittal model on held-out phantoms and (when present) a
real validation subject presented as thick slices through DICOM."""
from __future__ import annotations

import json
import subprocess
import sys

import highdicom as hd
import numpy as np
import pytest

from conftest import MODEL_DIR, REPO, require_shared_data
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import SliceGrid, make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.training.validation import dice, validate_volume

pytestmark = pytest.mark.heavy(seconds=55)

LUMBAR = ("L1", "L2", "L3", "L4", "L5")


def _volume(image: np.ndarray, grid: SliceGrid) -> SeriesVolume:
    return SeriesVolume.from_array(image, grid.affine, grid.slice_thickness_mm)


@pytest.mark.parametrize("seed, weighting", [(1002, Weighting.T1), (1003, Weighting.T2)])
def test_held_out_phantom_levels_are_segmented_and_named(engine, seed, weighting):
    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(15, 320, 320, 0.9, 4.0)
    image, truth = render_phantom(phantom, grid, weighting)
    named = engine.segment(_volume(image, grid)).named
    for level in LUMBAR:
        label = phantom.element(level).label
        assert dice(named.label_map == label, truth == label) >= 0.85, level
    for level in ("L3L4", "L4L5"):
        label = phantom.element(level).label
        assert dice(named.label_map == label, truth == label) >= 0.6, level


def test_in_plane_orientation_does_not_change_the_result(engine):
    phantom = make_spine_phantom(1004)
    grid = sagittal_grid(9, 192, 192, 1.5, 4.0)
    image, _ = render_phantom(phantom, grid, Weighting.T2)
    reference = engine.segment(_volume(image, grid)).named.label_map
    # The same anatomy stored with rows and columns swapped and flipped.
    aff = grid.affine.copy()
    aff[:3, 1], aff[:3, 2] = -grid.affine[:3, 2], grid.affine[:3, 1]
    aff[:3, 3] = grid.affine[:3, :3] @ np.array([0, 0, 191]) + grid.affine[:3, 3]
    swapped = np.ascontiguousarray(np.swapaxes(image, 1, 2)[:, ::-1, :])
    other = engine.segment(_volume(swapped, SliceGrid(grid.shape, aff, 4.0))).named.label_map
    back = np.swapaxes(other[:, ::-1, :], 1, 2)
    assert (back == reference).mean() > 0.995


@pytest.mark.shared_data
def test_real_validation_subject_through_spinegate_analyze(tmp_path):
    """VB3_05 (held out) as a 4 mm sagittal series, through the CLI."""
    data = require_shared_data()
    import nibabel as nib

    from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
    from spinegate.inference.training.validation import VB_TABLE, slab_labels, thick_slice_series

    img = nib.load(str(data / "VB3_05_image.nii.gz"))
    lab = nib.load(str(data / "VB3_05_label.nii.gz"))
    pixels, affine, _ = thick_slice_series(np.asarray(img.dataobj), img.affine)
    truth = slab_labels(np.asarray(lab.dataobj).astype(np.uint8))
    files = write_mr_series(pixels, affine, StudyInfo("shared-VB3_05"), SeriesSpec(2, "SAG T2", 3500, 100, 4.0),
                            tmp_path / "in")
    subprocess.run([sys.executable, "-m", "spinegate.service.cli", "analyze", str(tmp_path / "in"), "--out", str(tmp_path / "out")],
                   cwd=REPO, check=True, timeout=300)
    seg = hd.seg.segread(next((tmp_path / "out").glob("seg_*.dcm")))
    uids = [f.stem for f in files]
    import pydicom

    uids = [pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in files]
    # VB3 is water-fat, where S1 is often missed or a sliver; whether the levels are unverified, the SEG says.
    doc = json.loads((tmp_path / "out" / "measurements.json").read_text())
    unverified = doc["series"][0]["levels_unverified"]
    # The T12 cut by the field of view is not a joint centre, and the loads still come.
    assert doc["biomechanics"]["error"] is None and len(doc["biomechanics"]["tasks"]) == 2
    assert "centroid_not_used_T12_field_of_view_edge" in doc["biomechanics"]["flags"]
    suffix = " (level unverified)"
    assert all(d.SegmentLabel.endswith(suffix) == bool(unverified) for d in seg.SegmentSequence)
    labels = {d.SegmentLabel.removesuffix(suffix): d.SegmentNumber for d in seg.SegmentSequence}
    scores = {}
    for value, level in VB_TABLE.items():
        t = truth == value
        if not t.any():
            continue
        number = labels.get(f"{level} vertebral body")
        assert number is not None, f"{level} not named in the SEG"
        arr = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[number])[..., 0]
        scores[level] = dice(arr > 0, t)
    print("VB3_05 Dice per level:", {k: round(v, 3) for k, v in scores.items()})
    # A floor, not the target: the model card reports VB3_05 at 0.891 (stage 4); the issue asks 0.90.
    assert np.mean(list(scores.values())) >= 0.85
    assert min(scores.values()) >= 0.80


@pytest.mark.shared_data
def test_model_card_validation_numbers_are_reproduced():
    data = require_shared_data()
    from spinegate.inference.engine import SagittalSpineEngine

    record = json.loads((MODEL_DIR / "sagittal_spine.validation.json").read_text())
    engine = SagittalSpineEngine(MODEL_DIR)
    assert record["model_sha256"] == engine.info.sha256
    for stem in ("VB3_05", "IVD_42"):
        reported = next(r for r in record["results"] if r["stem"] == stem)
        again = validate_volume(engine, data, stem)
        assert again["dice_per_level"] == pytest.approx(reported["dice_per_level"], abs=0.002)
        assert again["naming_verified"] == reported["naming_verified"]
        assert again.get("field_below_l5_mm") == reported.get("field_below_l5_mm")
        if stem == "VB3_05":  # interpolated from acquired slices: also against the slices as drawn
            assert again["dice_per_level_drawn_slices"] == pytest.approx(reported["dice_per_level_drawn_slices"],
                                                                         abs=0.002)
    # the disc-labelled subject also against its outlines at the source's size (its masks are dilated)
    assert again["dice_per_level_source_size"] == pytest.approx(reported["dice_per_level_source_size"], abs=0.002)


@pytest.mark.shared_data
def test_a_merged_and_a_broken_body_do_not_rename_the_levels_above():
    """Two training volumes whose bodies the network merges (VB3_35: L4
    with L5, the disc missed) or breaks in two (VB1_12: L3); counting
    them as they came renamed every level above (Dice 0.10 and 0.35)."""
    data = require_shared_data()
    from spinegate.inference.engine import SagittalSpineEngine

    engine = SagittalSpineEngine(MODEL_DIR)
    for stem in ("VB3_35", "VB1_12"):
        result = validate_volume(engine, data, stem)
        assert result["levels_named_correctly"], result
        assert result["mean_dice"] >= 0.85, result
        assert result.get("mean_dice_drawn_slices", 1.0) >= 0.85, result


def test_each_slice_is_fed_with_its_neighbours_and_edges_repeat():
    from spinegate.inference.engine import EngineError, with_neighbours

    np.testing.assert_array_equal(with_neighbours(4, 3), [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3]])
    np.testing.assert_array_equal(with_neighbours(2, 1), [[0], [1]])
    np.testing.assert_array_equal(with_neighbours(1, 3), [[0, 0, 0]])
    with pytest.raises(EngineError, match="odd number"):
        with_neighbours(4, 2)


def test_structure_confidence_is_the_mean_class_score_and_low_ones_are_flagged():
    from spinegate.dicom_io.levels import structure_by_name
    from spinegate.inference.engine import structure_confidence, with_confidence_flags
    from spinegate.inference.level_naming import CLASS_DISC, CLASS_VB, NamedLabels

    probs = np.zeros((1, 4, 2, 4), np.float32)
    labels = np.zeros((1, 2, 4), np.uint8)
    l4, l4l5 = structure_by_name("L4").label, structure_by_name("L4L5").label
    labels[0, 0, :2], labels[0, 1, :] = l4, l4l5
    probs[0, CLASS_VB, 0, :2] = (0.9, 0.7)  # mean 0.8: under the bodies' 0.85
    probs[0, CLASS_DISC, 1, :] = 0.8  # above the discs' 0.78
    scores = structure_confidence(probs, labels)
    assert scores == pytest.approx({"L4": 0.8, "L4L5": 0.8})
    named = with_confidence_flags(NamedLabels(labels, (), {"L4": ("touches_field_of_view_edge",)}), scores)
    assert named.structure_flags == {"L4": ("touches_field_of_view_edge", "low_model_confidence_0.80")}
    with pytest.raises(ValueError, match="not on one grid"):
        structure_confidence(probs[:, :, :1], labels)
