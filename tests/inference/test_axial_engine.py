"""The committed axial model: laterality from the image grid, refusal of
non-axial grids, held-out phantom Dice and the real subject's
cross-validated Dice as the model card reports them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODEL_DIR, require_shared_data
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES, MUSCLE_CLASSES
from spinegate.inference.training.axial_data import canonical_axial_volume, phantom_axial_series
from spinegate.inference.training.axial_validation import dice, real_fold_dice

pytestmark = pytest.mark.heavy(seconds=45)

RECORD = json.loads((MODEL_DIR / "axial_muscle.validation.json").read_text())


@pytest.fixture(scope="module")
def axial_engine():
    from spinegate.inference.axial_engine import AxialMuscleEngine

    return AxialMuscleEngine(MODEL_DIR)


@pytest.fixture(scope="module")
def held_out():
    image, classes, spacing = phantom_axial_series(1001, Weighting.T2)
    return image[::3].astype(np.float32), classes[::3], canonical_axial_volume(image[:1], spacing).affine


def test_held_out_phantom_classes_are_segmented(axial_engine, held_out):
    image, classes, aff = held_out
    pred = axial_engine.segment(SeriesVolume.from_array(image, aff, 4.0)).classes
    for c in range(1, len(AXIAL_CLASS_NAMES)):
        assert dice(pred == c, classes == c) > 0.85, AXIAL_CLASS_NAMES[c]


def test_some_slices_score_as_in_the_whole_series(axial_engine, held_out):
    """Scoring only a block of slices (the cross-validation's held-out
    blocks) scales them by the whole series and gives their scores exactly."""
    image, _, aff = held_out
    volume = SeriesVolume.from_array(image[:7], aff, 4.0)
    whole = axial_engine.scores(volume)
    np.testing.assert_array_equal(axial_engine.scores(volume, slice(2, 5)), whole[2:5])
    # alone, the block would be scaled by its own intensities: not the same scores
    assert not np.array_equal(axial_engine.scores(SeriesVolume.from_array(image[2:5], aff, 4.0)), whole[2:5])


def test_laterality_follows_patient_coordinates_not_the_image_grid(axial_engine, held_out):
    """The same slices stored with columns running toward the patient's right
    (and rows transposed) give the same left and right muscles."""
    image, classes, aff = held_out
    reference = axial_engine.segment(SeriesVolume.from_array(image, aff, 4.0)).classes
    flipped = np.ascontiguousarray(np.swapaxes(image[:, :, ::-1], 1, 2))
    other = np.eye(4)
    other[:3, 0] = aff[:3, 0]
    other[:3, 1] = -aff[:3, 2]  # rows now step toward the patient's right
    other[:3, 2] = aff[:3, 1]
    other[:3, 3] = aff[:3, 3] + aff[:3, 2] * (image.shape[2] - 1)
    result = axial_engine.segment(SeriesVolume.from_array(flipped, other, 4.0)).classes
    back = np.swapaxes(result, 1, 2)[:, :, ::-1]
    for key, c in MUSCLE_CLASSES.items():
        assert dice(back == c, reference == c) > 0.97, key


def test_non_axial_grid_is_refused(axial_engine, held_out):
    from spinegate.inference.engine import EngineError

    image, _, aff = held_out
    sagittal = np.eye(4)
    sagittal[:3, 0], sagittal[:3, 1], sagittal[:3, 2] = (4.0, 0, 0), (0, 0, -0.8), (0, 0.8, 0)
    with pytest.raises(EngineError, match="not an axial stack"):
        axial_engine.segment(SeriesVolume.from_array(image, sagittal, 4.0))


def test_model_card_real_subject_dice_is_reproduced():
    """The cross-validated Dice per muscle on TUM01 (fold models, each on the
    slice block it never saw) is what the model card and validation record say."""
    data = require_shared_data("axial_muscle")
    again = real_fold_dice(data, MODEL_DIR)
    recorded = RECORD["real_subject_cross_validation"]
    for name, value in recorded["pooled_dice"].items():
        assert again["pooled_dice"][name] == pytest.approx(value, abs=0.002), name
    card = (MODEL_DIR / "AXIAL_MODEL_CARD.md").read_text()
    for value in recorded["pooled_dice"].values():
        assert f"{value:.3f}" in card


def test_validation_record_belongs_to_the_committed_model(axial_engine):
    assert RECORD["model_sha256"] == axial_engine.info.sha256
