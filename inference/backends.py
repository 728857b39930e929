"""Inference backends behind the engines: ONNX Runtime (the product's
backend, on the CPU or on a CUDA device) and PyTorch (the reference for
parity tests on the CPU, and the GPU backend where ONNX Runtime has no CUDA
provider).

All run the same committed ONNX file: the PyTorch backend rebuilds the
residual U-Net from the file's weights (the ONNX initializers keep the
network's parameter names), so a parity test compares two runtimes on one
model rather than two models.

``"auto"`` (`resolve_backend`) takes the first that works of ONNX Runtime's
CUDA provider, PyTorch on CUDA (FP16 autocast, one CUDA graph per batch
shape), and ONNX Runtime on the CPU, and logs why it fell back.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = ["Backend", "BackendUnavailable", "OnnxRuntimeBackend", "TorchBackend", "make_backend", "resolve_backend",
           "BACKENDS"]

log = logging.getLogger(__name__)

# Names a configuration may give: a runtime on the CPU, a runtime on CUDA,
# or "auto" (the first GPU backend that works, else the CPU).
BACKENDS = ("onnxruntime", "torch", "onnxruntime-cuda", "torch-cuda", "auto")


class BackendUnavailable(RuntimeError):
    """The backend cannot run on this machine (no CUDA device, no CUDA build)."""


class Backend(Protocol):
    """Runs a segmentation network: (batch, channels, rows, cols) float32
    image → (batch, classes, rows, cols) logits."""

    name: str
    input_channels: int
    output_classes: int

    def run(self, batch: np.ndarray) -> np.ndarray: ...

    def device_memory_bytes(self) -> int | None:
        """GPU memory this process holds, or None (CPU backends)."""
        ...


class OnnxRuntimeBackend:
    """ONNX Runtime: on the CPU every graph optimisation, ``threads``
    intra-op threads and one inter-op thread (the pipeline runs one series
    at a time); on ``device="cuda"`` the CUDA execution provider.

    Raises
    ------
    BackendUnavailable
        If ``device="cuda"`` and this ONNX Runtime build or machine has no
        CUDA provider (ONNX Runtime would otherwise fall back silently).
    """

    def __init__(self, path: Path, threads: int = 2, device: str = "cpu") -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise BackendUnavailable("this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        self._session = ort.InferenceSession(str(path), opts, providers=providers)
        if device == "cuda" and self._session.get_providers()[0] != "CUDAExecutionProvider":
            raise BackendUnavailable("the CUDA provider did not start (no CUDA device or CUDA libraries)")
        self.name = f"onnxruntime-{device}"
        self._input = self._session.get_inputs()[0].name
        self.input_channels = int(self._session.get_inputs()[0].shape[1])
        self.output_classes = int(self._session.get_outputs()[0].shape[1])

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.ascontiguousarray(batch, np.float32)})[0]

    def device_memory_bytes(self) -> int | None:
        return _nvml_process_memory() if self.name.endswith("cuda") else None


class TorchBackend:
    """PyTorch, the network rebuilt from the ONNX file's weights: on the CPU
    in float32 (the parity reference); on ``device="cuda"`` with FP16
    autocast and one captured CUDA graph per batch shape (a study has two or
    three shapes: full batches and the last).

    Raises
    ------
    BackendUnavailable
        If ``device="cuda"`` and PyTorch is missing or sees no CUDA device.
    """

    def __init__(self, path: Path, threads: int = 2, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError as e:
            raise BackendUnavailable(f"PyTorch is not installed ({e})") from None
        if device == "cuda" and not torch.cuda.is_available():
            raise BackendUnavailable("PyTorch sees no CUDA device")

        from spinegate.inference.training.network import load_from_onnx

        model = load_from_onnx(path)
        self.input_channels = model.in_channels
        self.output_classes = int(model.head.out_channels)
        self.name = f"torch-{device}"
        self._device = torch.device(device)
        self._model = model.to(self._device).eval()
        self._torch = torch
        self._graphs: dict[tuple[int, ...], tuple[Any, Any, Any]] = {}
        if device == "cpu":
            torch.set_num_threads(threads)

    def _forward(self, x: Any) -> Any:
        if self._device.type == "cuda":
            # No autocast cache: a CUDA graph capture must not keep cast weights.
            with self._torch.autocast("cuda", dtype=self._torch.float16, cache_enabled=False):
                return self._model(x)
        return self._model(x)

    def _graph(self, shape: tuple[int, ...]) -> tuple[Any, Any, Any]:
        """The CUDA graph of one batch shape, captured on first use after a
        warm-up on a side stream (as PyTorch's CUDA graph notes require)."""
        if shape not in self._graphs:
            torch = self._torch
            static_in = torch.zeros(shape, device=self._device)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):
                    self._forward(static_in)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
            self._graphs[shape] = (graph, static_in, static_out)
        return self._graphs[shape]

    def run(self, batch: np.ndarray) -> np.ndarray:
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(batch, np.float32))
        with torch.inference_mode():
            if self._device.type == "cuda":
                graph, static_in, static_out = self._graph(tuple(x.shape))
                static_in.copy_(x)
                graph.replay()
                out = static_out
            else:
                out = self._forward(x)
            return out.float().cpu().numpy()

    def device_memory_bytes(self) -> int | None:
        return int(self._torch.cuda.memory_reserved(self._device)) if self._device.type == "cuda" else None


def _nvml_process_memory() -> int | None:
    """GPU memory used by this process (NVML), or None without pynvml."""
    try:
        import pynvml  # nvidia-ml-py, installed beside onnxruntime-gpu in the GPU image

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        used = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == os.getpid()]
        return int(used[0]) if used and used[0] is not None else None
    except Exception:  # no NVML library, no permission, no device: the gauge stays unset
        return None


def make_backend(name: str, path: Path, threads: int = 2) -> Backend:
    """The backend called ``name`` (one of ``BACKENDS``; "auto" resolves)
    on the model file ``path``.

    Raises
    ------
    ValueError
        If the name is unknown.
    BackendUnavailable
        If a named CUDA backend cannot run here.
    """
    if name == "auto":
        return resolve_backend(path, threads)
    runtime, _, device = name.partition("-")
    if runtime == "onnxruntime" and device in ("", "cuda"):
        return OnnxRuntimeBackend(path, threads, device or "cpu")
    if runtime == "torch" and device in ("", "cuda"):
        return TorchBackend(path, threads, device or "cpu")
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def resolve_backend(path: Path, threads: int = 2) -> Backend:
    """The first backend that runs here, of ONNX Runtime's CUDA provider,
    PyTorch on CUDA and ONNX Runtime on the CPU; each fallback is logged
    with its reason."""
    for name in ("onnxruntime-cuda", "torch-cuda"):
        try:
            backend = make_backend(name, path, threads)
        except BackendUnavailable as e:
            log.info("inference backend unavailable backend=%s reason=%s", name, e)
            continue
        log.info("inference backend chosen backend=%s model=%s", backend.name, path.name)
        return backend
    log.warning("no GPU inference backend; running on the CPU backend=onnxruntime-cpu model=%s", path.name)
    return OnnxRuntimeBackend(path, threads)
