"""Inference backends behind the engines: ONNX Runtime (the product's CPU
backend) and PyTorch (the reference for parity tests, training extra).

Both run the same committed ONNX file: the PyTorch backend rebuilds the
residual U-Net from the file's weights (the ONNX initializers keep the
network's parameter names), so a parity test compares two runtimes on one
model rather than two models.
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = ["Backend", "OnnxRuntimeBackend", "TorchBackend", "make_backend", "BACKENDS"]

BACKENDS = ("onnxruntime", "torch")


class Backend(Protocol):
    """Runs a segmentation network: (batch, channels, rows, cols) float32
    image → (batch, classes, rows, cols) logits."""

    name: str
    input_channels: int
    output_classes: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...


class OnnxRuntimeBackend:
    """ONNX Runtime on CPU: every graph optimisation, ``threads`` intra-op
    threads, one inter-op thread (the pipeline runs one series at a time)."""

    name = "onnxruntime-cpu"

    def __init__(self, path: Path, threads: int = 2) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self.input_channels = int(self._session.get_inputs()[0].shape[1])
        self.output_classes = int(self._session.get_outputs()[0].shape[1])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0]


class TorchBackend:
    """PyTorch on CPU, the network rebuilt from the ONNX file's weights."""

    name = "torch-cpu"

    def __init__(self, path: Path, threads: int = 2) -> None:
        import torch

        from spinegate.inference.training.network import load_from_onnx

        model = load_from_onnx(path)
        self.input_channels = model.in_channels
        self.output_classes = int(model.head.out_channels)
        self._model = model
        self._torch = torch
        torch.set_num_threads(threads)

    def run(self, batch: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._torch.from_numpy(np.ascontiguousarray(batch, np.float32))).numpy()


def make_backend(name: str, path: Path, threads: int = 2) -> Backend:
    """The backend called ``name`` (``BACKENDS``) on the model file ``path``.

    Raises
    ------
    ValueError
        If the name is unknown.
    """
    if name == "onnxruntime":
        return OnnxRuntimeBackend(path, threads)
    if name == "torch":
        return TorchBackend(path, threads)
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
