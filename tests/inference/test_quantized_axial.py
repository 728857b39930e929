"""The INT8 axial model ONNX Runtime runs on CPU: it segments like the
FP32 model it was quantised from, carries its own area calibration, is
refused when that model has changed, and is what the service selects by
default."""
from __future__ import annotations

import json

import pytest

from conftest import MODEL_DIR
from spinegate.dicom_io.classify import Weighting
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES
from spinegate.inference.engine import EngineError, load_model_info
from spinegate.inference.training.validation import dice

pytestmark = pytest.mark.heavy(seconds=45)

INT8 = "axial_muscle.int8"
# Quantisation moves boundaries by about a pixel: per class the two models
# agree to Dice 0.982-0.997 on whole held-out phantom series (measured, ax2;
# both against the truth within ±0.004 Dice).
MIN_DICE_INT8_VS_FP32 = 0.97


def test_int8_model_segments_like_the_fp32_model_on_a_held_out_phantom():
    from spinegate.inference.training.axial_data import canonical_axial_volume, phantom_axial_series
    from spinegate.inference.axial_engine import AxialMuscleEngine

    image, truth, spacing = phantom_axial_series(1002, Weighting.T2)
    volume = canonical_axial_volume(image[::4], spacing)
    fp32 = AxialMuscleEngine(MODEL_DIR).segment(volume).classes
    int8 = AxialMuscleEngine(MODEL_DIR, model_name=INT8).segment(volume).classes
    for c in range(1, len(AXIAL_CLASS_NAMES)):
        assert dice(int8 == c, fp32 == c) >= MIN_DICE_INT8_VS_FP32, AXIAL_CLASS_NAMES[c]
        # and no worse against the truth than the model it came from
        assert dice(int8 == c, truth[::4] == c) >= dice(fp32 == c, truth[::4] == c) - 0.01, AXIAL_CLASS_NAMES[c]


def test_int8_model_has_its_own_calibration_and_identity():
    from spinegate.inference.axial_engine import AxialMuscleEngine

    record = json.loads((MODEL_DIR / f"{INT8}.quantization.json").read_text())
    source = load_model_info(MODEL_DIR, "axial_muscle")
    assert record["source_sha256"] == source.sha256
    assert set(record["calibration_tiles"]["phantom_seeds"]) == set(
        json.loads((MODEL_DIR / "axial_muscle.training.json").read_text())["phantom_seeds"])
    engine = AxialMuscleEngine(MODEL_DIR, model_name=INT8)
    calibration = json.loads((MODEL_DIR / f"{INT8}.calibration.json").read_text())
    assert calibration["model_sha256"] == engine.info.sha256 != source.sha256
    assert all(abs(v) < 0.005 for v in calibration["area_error_after"].values())
    assert engine.info.version.startswith(f"{source.version}-int8+cal-")
    assert engine.offsets is not None and engine.offsets.tag in engine.info.version


def test_int8_model_of_another_fp32_model_is_refused(tmp_path):
    from spinegate.inference.axial_engine import AxialMuscleEngine

    for name in (f"{INT8}.onnx", f"{INT8}.quantization.json", f"{INT8}.calibration.json", "axial_muscle.training.json"):
        (tmp_path / name).write_bytes((MODEL_DIR / name).read_bytes())
    retrained = bytearray((MODEL_DIR / "axial_muscle.onnx").read_bytes())
    retrained[-1] ^= 1
    (tmp_path / "axial_muscle.onnx").write_bytes(bytes(retrained))
    with pytest.raises(EngineError, match="derived from another version of axial_muscle.onnx.*inference.training.quantize"):
        AxialMuscleEngine(tmp_path, model_name=INT8)


def test_service_runs_the_int8_axial_model_unless_configured_otherwise():
    from spinegate.service.engines import Engines

    assert Engines(MODEL_DIR).model_info("axial_muscle").name == INT8
    assert Engines(MODEL_DIR, axial_precision="fp32").model_info("axial_muscle").name == "axial_muscle"
    assert Engines(MODEL_DIR).model_info("sagittal_spine").name == "sagittal_spine"
    with pytest.raises(EngineError, match="axial precision 'fp16'"):
        Engines(MODEL_DIR, axial_precision="fp16")


def test_int8_validation_record_belongs_to_the_int8_model_and_the_card_reports_it():
    from spinegate.inference.axial_engine import AxialMuscleEngine

    record = json.loads((MODEL_DIR / f"{INT8}.validation.json").read_text())
    assert record["model_sha256"] == AxialMuscleEngine(MODEL_DIR, model_name=INT8).info.sha256
    card = (MODEL_DIR / "AXIAL_MODEL_CARD.md").read_text()
    for value in record["held_out_phantoms"]["mean_dice"].values():
        assert f"{value:.3f}" in card


@pytest.mark.shared_data
def test_int8_model_segments_the_real_subject_like_the_fp32_model():
    from conftest import require_shared_data
    from spinegate.inference.axial_classes import MUSCLE_CLASSES
    from spinegate.inference.training.axial_data import canonical_axial_volume, load_tum_planes
    from spinegate.inference.axial_engine import AxialMuscleEngine

    water, _, _, spacing = load_tum_planes(require_shared_data("axial_muscle"))
    volume = canonical_axial_volume(water, (spacing, spacing))
    fp32 = AxialMuscleEngine(MODEL_DIR).segment(volume).classes
    int8 = AxialMuscleEngine(MODEL_DIR, model_name=INT8).segment(volume).classes
    for key in (("ES", "R"), ("ES", "L"), ("MF", "R"), ("MF", "L")):
        c = MUSCLE_CLASSES[key]
        assert dice(int8 == c, fp32 == c) >= MIN_DICE_INT8_VS_FP32, key
