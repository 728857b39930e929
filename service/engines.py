"""The engines a process runs, by the names routing rules use.

Each engine is loaded on first use and kept for the life of the process
(loading a model per study would dominate turnaround).
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable

from spinegate.inference.axial_engine import AxialMuscleEngine
from spinegate.inference.backends import BackendUnavailable
from spinegate.inference.engine import EngineError, ModelInfo, SagittalSpineEngine, SegmentationEngine, load_model_info
from spinegate.service.config import AxialPrecision, EngineName

log = logging.getLogger(__name__)

__all__ = ["Engines", "ENGINE_MODELS", "model_stem"]

# Routing engine name → model file stem in the model folder.
ENGINE_MODELS = {EngineName.SAGITTAL_SPINE: "sagittal_spine", EngineName.AXIAL_MUSCLE: "axial_muscle"}
# inference.axial_precision → suffix of the axial model's file stem
# (fp32 is the trained model itself; others are derived from it).
_AXIAL_PRECISION_SUFFIX = {AxialPrecision.FP32: "", AxialPrecision.INT8: ".int8"}


def _engine_name(name: EngineName | str) -> EngineName:
    try:
        return EngineName(name)
    except ValueError:
        raise EngineError(f"no engine named {name!r}; known engines: {', '.join(e.value for e in EngineName)}") from None


def model_stem(name: EngineName | str, axial_precision: AxialPrecision | str = AxialPrecision.INT8) -> str:
    """The model file stem an engine runs (the axial one by precision)."""
    engine = _engine_name(name)
    if engine is EngineName.AXIAL_MUSCLE:
        return ENGINE_MODELS[engine] + _AXIAL_PRECISION_SUFFIX[AxialPrecision(axial_precision)]
    return ENGINE_MODELS[engine]


def _construct(name: EngineName, model_dir: Path, threads: int, axial_precision: AxialPrecision,
               backend: str) -> SegmentationEngine[Any]:
    if name is EngineName.SAGITTAL_SPINE:
        return SagittalSpineEngine(model_dir, threads, backend=backend)
    # The axial engine runs in the pipeline's second lane, beside the
    # sagittal stage: half the threads, so the two lanes do not oversubscribe
    # the cores. Measured on 2 cores, standard study, FP32 axial model,
    # sagittal + axial threads: 2 + 2 14.2-15.3 s, 2 + 1 13.7-14.0 s, 1 + 1 13.0-13.3 s; a
    # sagittal-only study takes 7.5 s with 2 threads, 8.0 s with 1.
    engine = AxialMuscleEngine(model_dir, max(1, threads // 2), model_name=model_stem(name, axial_precision),
                               backend=backend)
    if engine.backend.name.endswith("-cuda") and axial_precision is not AxialPrecision.FP32:
        # The INT8 model is the CPU's speed-up (ONNX Runtime's CPU kernels);
        # on a GPU the float model is the fast and the exact one.
        log.info("axial model on a GPU runs fp32 instead of %s backend=%s", axial_precision.value, engine.backend.name)
        engine = AxialMuscleEngine(model_dir, max(1, threads // 2), model_name=model_stem(name, AxialPrecision.FP32),
                                   backend=backend)
    return engine


class Engines:
    """Lazily loaded engines.

    Parameters
    ----------
    model_dir : pathlib.Path
        Folder of the committed ONNX models.
    threads : int
        ONNX Runtime intra-op threads of the sagittal engine (the
        pipeline's main lane); the axial engine, in the second lane, gets
        half.
    on_load : callable, optional
        Called with each engine's `ModelInfo` once it is loaded (metrics).
    axial_precision : AxialPrecision or str
        ``"int8"`` (the quantised axial model, the CPU default) or ``"fp32"``
        (what a GPU backend always runs).
    backend : str
        ``inference.backend``: one of `spinegate.inference.backends.BACKENDS`
        (``"auto"``: a GPU where one works, else the CPU, logged).
    """

    def __init__(self, model_dir: Path, threads: int = 2, on_load: Callable[[ModelInfo], None] | None = None,
                 axial_precision: AxialPrecision | str = AxialPrecision.INT8, backend: str = "onnxruntime") -> None:
        try:
            self.axial_precision = AxialPrecision(axial_precision)
        except ValueError:
            raise EngineError(f"axial precision {axial_precision!r} is not one of "
                              f"{', '.join(p.value for p in AxialPrecision)}") from None
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.backend = str(getattr(backend, "value", backend))
        self._on_load = on_load
        self._loaded: dict[EngineName, SegmentationEngine[Any]] = {}
        self._lock = threading.Lock()

    def get(self, name: EngineName | str) -> SegmentationEngine[Any]:
        """The engine called ``name`` (loaded now if needed).

        Raises
        ------
        EngineError
            If no engine has that name or its model is missing.
        """
        engine_name = _engine_name(name)  # unknown names fail here, before the lock
        with self._lock:
            if engine_name not in self._loaded:
                try:
                    engine = _construct(engine_name, self.model_dir, self.threads, self.axial_precision, self.backend)
                except BackendUnavailable as e:
                    raise EngineError(f"inference.backend {self.backend!r} cannot run here: {e}") from None
                self._loaded[engine_name] = engine
                if self._on_load:
                    self._on_load(engine.info)
            return self._loaded[engine_name]

    def load(self, names: list[str] | tuple[str, ...] | list[EngineName]) -> None:
        """Load every named engine now (start-up check of the models)."""
        for name in dict.fromkeys(names):
            self.get(name)

    @property
    def loaded(self) -> bool:
        return bool(self._loaded)

    def device_memory_bytes(self) -> int | None:
        """GPU memory held by the loaded engines' backends, or None when
        none runs on a GPU (the metric is then left unset)."""
        held = [b for e in list(self._loaded.values()) if (b := e.backend.device_memory_bytes()) is not None]
        return max(held) if held else None

    def model_info(self, name: EngineName | str) -> ModelInfo:
        """Identity of an engine's model without loading it."""
        engine_name = _engine_name(name)
        if engine_name in self._loaded:
            return self._loaded[engine_name].info
        return load_model_info(self.model_dir, model_stem(name, self.axial_precision))
