"""The axial area calibration: offsets fitted to known areas, applied as
documented, and carried into the model identity."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODEL_DIR
from spinegate.inference.training.axial_calibration import fit_class_offsets, undecided_pixels
from spinegate.inference.class_offsets import ClassOffsets, load_class_offsets
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES


def test_offset_reaches_the_true_area_exactly():
    # Two classes; class 1 beats class 0 by d, d evenly spaced in [-1, 1):
    # 300 true class-1 pixels need d + b > 0 for exactly the top 300, b = -0.4.
    d = np.linspace(-1, 1, 1000, endpoint=False)
    log_probs = np.stack([np.zeros_like(d), d])
    offsets = fit_class_offsets(log_probs, np.zeros(2, int), np.array([700, 300]), classes=(1,))
    assert offsets[0] == 0.0
    assert offsets[1] == pytest.approx(-0.4, abs=2e-3)
    assert np.count_nonzero((log_probs + offsets[:, None]).argmax(axis=0) == 1) == 300


def test_fixed_pixels_count_toward_the_area():
    d = np.linspace(-1, 1, 1000, endpoint=False)
    log_probs = np.stack([np.zeros_like(d), d])
    # 100 class-1 pixels are already certain: only 200 more may be added.
    offsets = fit_class_offsets(log_probs, np.array([600, 100]), np.array([800, 300]), classes=(1,))
    assert offsets[1] == pytest.approx(-0.6, abs=2e-3)


def test_undecided_pixels_are_those_an_offset_can_move():
    log_probs = np.log(np.array([[0.5, 1e-6], [0.5, 1 - 1e-6]]))
    assert undecided_pixels(log_probs).tolist() == [True, False]


def test_offsets_shift_the_argmax():
    probs = np.zeros((1, len(AXIAL_CLASS_NAMES), 1, 2), np.float32)
    probs[0, 0] = 0.55
    probs[0, 3] = 0.45
    assert ClassOffsets(np.zeros(len(AXIAL_CLASS_NAMES))).classes(probs).ravel().tolist() == [0, 0]
    raised = np.zeros(len(AXIAL_CLASS_NAMES))
    raised[3] = 0.3  # log(0.45) + 0.3 > log(0.55)
    assert ClassOffsets(raised).classes(probs).ravel().tolist() == [3, 3]


def test_malformed_offsets_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="11 finite values"):
        ClassOffsets(np.zeros(3))
    with pytest.raises(ValueError, match="finite"):
        ClassOffsets(np.full(len(AXIAL_CLASS_NAMES), np.nan))


def test_committed_calibration_is_small_and_joins_the_model_version():
    record = json.loads((MODEL_DIR / "axial_muscle.calibration.json").read_text())
    # A large offset would mean the model is wrong, not slightly biased.
    assert all(abs(v) < 1.0 for v in record["offsets"].values())
    assert all(abs(v) < 0.005 for v in record["area_error_after"].values())
    from spinegate.inference.axial_engine import AxialMuscleEngine

    engine = AxialMuscleEngine(MODEL_DIR)
    assert record["model_sha256"] == engine.info.sha256
    offsets = load_class_offsets(MODEL_DIR, "axial_muscle", engine.info.sha256)
    assert engine.info.version == AxialMuscleEngine(MODEL_DIR, calibrated=False).info.version + "+" + offsets.tag
    # The cross-validation fold models have none.
    assert load_class_offsets(MODEL_DIR, "axial_muscle.fold0", "any") is None


def test_a_stale_calibration_is_refused(tmp_path):
    """A model retrained without re-calibrating must not run with the old
    offsets."""
    from spinegate.inference.axial_engine import AxialMuscleEngine
    from spinegate.inference.engine import EngineError

    for name in ("axial_muscle.onnx", "axial_muscle.training.json"):
        (tmp_path / name).write_bytes((MODEL_DIR / name).read_bytes())
    record = json.loads((MODEL_DIR / "axial_muscle.calibration.json").read_text())
    record["model_sha256"] = "0" * 64
    (tmp_path / "axial_muscle.calibration.json").write_text(json.dumps(record))
    with pytest.raises(EngineError, match="fitted for model sha256 000000000000.*inference.training.axial_calibration"):
        AxialMuscleEngine(tmp_path)
