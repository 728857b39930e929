"""Choosing the inference backend: ``inference.backend: auto`` takes a GPU
backend where one runs and otherwise the CPU, logged and reported; a named
CUDA backend that cannot run is a start-up error, never a silent CPU run.

These run on whatever machine the suite runs on: on a CPU-only machine they
check the fallback; on a CUDA machine the GPU choice (the GPU/CPU parity is
tests/inference/test_backend_parity.py)."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from conftest import MODEL_DIR
from spinegate.inference.backends import BackendUnavailable, make_backend, resolve_backend


def _ort_has_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _torch_has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def test_auto_runs_a_gpu_where_one_works_else_the_cpu_with_the_reasons_logged(caplog):
    caplog.set_level(logging.INFO, "spinegate.inference.backends")
    backend = resolve_backend(MODEL_DIR / "sagittal_spine.onnx")
    if _ort_has_cuda():
        assert backend.name == "onnxruntime-cuda"
    elif _torch_has_cuda():
        assert backend.name == "torch-cuda"
    else:
        assert backend.name == "onnxruntime-cpu"
        assert backend.device_memory_bytes() is None
        messages = [r.getMessage() for r in caplog.records]
        assert any("backend=onnxruntime-cuda reason=" in m for m in messages), messages
        assert any("backend=torch-cuda reason=" in m for m in messages), messages
        assert any(r.levelno == logging.WARNING and "running on the CPU" in r.getMessage() for r in caplog.records)
    out = backend.run(np.zeros((1, backend.input_channels, 64, 64), np.float32))
    assert out.shape == (1, backend.output_classes, 64, 64) and np.isfinite(out).all()


@pytest.mark.parametrize("name, available", [("onnxruntime-cuda", _ort_has_cuda), ("torch-cuda", _torch_has_cuda)])
def test_a_named_cuda_backend_without_a_gpu_is_an_error_that_says_why(name, available):
    if available():
        pytest.skip(f"{name} runs on this machine")
    with pytest.raises(BackendUnavailable, match="CUDA|PyTorch"):
        make_backend(name, MODEL_DIR / "sagittal_spine.onnx")


def test_an_unknown_backend_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="choose one of onnxruntime, torch, onnxruntime-cuda, torch-cuda, auto"):
        make_backend("tensorrt", MODEL_DIR / "sagittal_spine.onnx")


def test_the_configuration_accepts_the_backends_and_refuses_others():
    from spinegate.service.config import ConfigError, load_config

    for name in ("onnxruntime", "auto", "onnxruntime-cuda", "torch-cuda"):
        assert load_config(environ={"SPINEGATE_INFERENCE__BACKEND": name}).inference.backend.value == name
    with pytest.raises(ConfigError, match="'inference.backend' value 'tensorrt'.*'torch-cuda'"):
        load_config(environ={"SPINEGATE_INFERENCE__BACKEND": "tensorrt"})
