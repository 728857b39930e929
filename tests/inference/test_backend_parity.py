"""ONNX Runtime (the product backend) against PyTorch (the reference) on the
same committed models: every structure's Dice ≥ 0.99 between the two, on a
held-out phantom and, when the shared data is present, a real volume; and
the GPU backends (ONNX Runtime's CUDA provider, PyTorch CUDA) against the
CPU, skipped on a machine without a CUDA device.

There is no TensorRT backend to compare: TensorRT cannot be installed in
this workplace (bench/README.md, "TensorRT")."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import MODEL_DIR, require_shared_data
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.training.validation import dice

pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

pytestmark = pytest.mark.heavy(seconds=75)

MIN_DICE = 0.99


def _pair(engine_cls, **kwargs):
    return engine_cls(MODEL_DIR, backend="onnxruntime", **kwargs), engine_cls(MODEL_DIR, backend="torch", **kwargs)


def _assert_parity(a: np.ndarray, b: np.ndarray) -> None:
    for value in np.unique(np.concatenate([np.unique(a), np.unique(b)])):
        if value == 0:
            continue
        assert dice(a == value, b == value) >= MIN_DICE, f"label {value}"


def _sagittal_labels(engine, volume):
    return engine.segment(volume).named.label_map


def test_sagittal_onnxruntime_matches_torch_on_a_held_out_phantom():
    from spinegate.inference.engine import SagittalSpineEngine

    ort_engine, torch_engine = _pair(SagittalSpineEngine)
    grid = sagittal_grid(12, 256, 256, 1.2, 4.0)
    image, _ = render_phantom(make_spine_phantom(1003), grid, Weighting.T1, subplanes=2)
    volume = SeriesVolume.from_array(image.astype(np.float32), grid.affine, 4.0)
    scores_ort, scores_torch = ort_engine.scores(volume), torch_engine.scores(volume)
    assert np.abs(scores_ort - scores_torch).max() < 1e-3
    _assert_parity(_sagittal_labels(ort_engine, volume), _sagittal_labels(torch_engine, volume))


def test_axial_onnxruntime_matches_torch_on_a_held_out_phantom():
    from spinegate.inference.training.axial_data import canonical_axial_volume, phantom_axial_series
    from spinegate.inference.axial_engine import AxialMuscleEngine

    ort_engine, torch_engine = _pair(AxialMuscleEngine)
    image, _, spacing = phantom_axial_series(1002, Weighting.T2)
    volume = canonical_axial_volume(image[::4], spacing)
    _assert_parity(ort_engine.segment(volume).classes, torch_engine.segment(volume).classes)


@pytest.mark.shared_data
def test_sagittal_onnxruntime_matches_torch_on_a_real_volume():
    import nibabel as nib

    from spinegate.inference.engine import SagittalSpineEngine
    from spinegate.inference.training.validation import thick_slice_series

    data = require_shared_data()
    img = nib.load(str(data / "VB3_05_image.nii.gz"))
    pixels, affine, _ = thick_slice_series(np.asarray(img.dataobj), img.affine)
    volume = SeriesVolume.from_array(pixels.astype(np.float32), affine, 4.0)
    ort_engine, torch_engine = _pair(SagittalSpineEngine)
    _assert_parity(_sagittal_labels(ort_engine, volume), _sagittal_labels(torch_engine, volume))


@pytest.mark.shared_data
def test_axial_onnxruntime_matches_torch_on_the_real_subject():
    from spinegate.inference.training.axial_data import canonical_axial_volume, load_tum_planes
    from spinegate.inference.axial_engine import AxialMuscleEngine

    water, _, _, spacing = load_tum_planes(require_shared_data("axial_muscle"))
    volume = canonical_axial_volume(water[::2], (spacing, spacing))
    ort_engine, torch_engine = _pair(AxialMuscleEngine)
    _assert_parity(ort_engine.segment(volume).classes, torch_engine.segment(volume).classes)


def _gpu_engine(engine_cls, backend: str):
    from spinegate.inference.backends import BackendUnavailable

    try:
        return engine_cls(MODEL_DIR, backend=backend)
    except BackendUnavailable as e:
        pytest.skip(f"{backend} cannot run here: {e}")


@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "torch-cuda"])
def test_sagittal_gpu_backend_matches_the_cpu_on_a_held_out_phantom(backend):
    """The GPU backends (FP16 autocast and CUDA graphs for PyTorch) against
    the product's CPU backend; skipped without a CUDA device."""
    from spinegate.inference.engine import SagittalSpineEngine

    gpu_engine = _gpu_engine(SagittalSpineEngine, backend)
    cpu_engine = SagittalSpineEngine(MODEL_DIR, backend="onnxruntime")
    grid = sagittal_grid(12, 256, 256, 1.2, 4.0)
    image, _ = render_phantom(make_spine_phantom(1003), grid, Weighting.T1, subplanes=2)
    volume = SeriesVolume.from_array(image.astype(np.float32), grid.affine, 4.0)
    for _ in range(2):  # the second run replays the captured CUDA graphs
        assert np.abs(gpu_engine.scores(volume) - cpu_engine.scores(volume)).max() < 0.05  # FP16
        _assert_parity(_sagittal_labels(gpu_engine, volume), _sagittal_labels(cpu_engine, volume))
    assert gpu_engine.backend.device_memory_bytes() is None or gpu_engine.backend.device_memory_bytes() > 0


@pytest.mark.parametrize("backend", ["onnxruntime-cuda", "torch-cuda"])
def test_axial_gpu_backend_matches_the_cpu_on_a_held_out_phantom(backend):
    from spinegate.inference.axial_engine import AxialMuscleEngine
    from spinegate.inference.training.axial_data import canonical_axial_volume, phantom_axial_series

    gpu_engine = _gpu_engine(AxialMuscleEngine, backend)
    image, _, spacing = phantom_axial_series(1002, Weighting.T2)
    volume = canonical_axial_volume(image[::4], spacing)
    cpu_engine = AxialMuscleEngine(MODEL_DIR, backend="onnxruntime")
    _assert_parity(gpu_engine.segment(volume).classes, cpu_engine.segment(volume).classes)
