"""The engines a process runs, by the names routing rules use.

Each engine is loaded on first use and kept for the life of the process
(loading a model per study would dominate turnaround).
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from spinegate.inference.engine import EngineError, ModelInfo, load_model_info
from spinegate.service.config import AXIAL_PRECISIONS

__all__ = ["Engines", "ENGINE_MODELS", "model_stem"]

# Routing engine name → model file stem in the model folder.
ENGINE_MODELS = {"sagittal_spine": "sagittal_spine", "axial_muscle": "axial_muscle"}
# inference.axial_precision → suffix of the axial model's file stem
# (fp32 is the trained model itself; others are derived from it).
_AXIAL_PRECISION_SUFFIX = {p: "" if p == "fp32" else f".{p}" for p in AXIAL_PRECISIONS}


def model_stem(name: str, axial_precision: str = "int8") -> str:
    """The model file stem an engine runs (the axial one by precision)."""
    if name not in ENGINE_MODELS:
        raise EngineError(f"no engine named {name!r}; known engines: {', '.join(ENGINE_MODELS)}")
    if name == "axial_muscle":
        return ENGINE_MODELS[name] + _AXIAL_PRECISION_SUFFIX[axial_precision]
    return ENGINE_MODELS[name]


def _construct(name: str, model_dir: Path, threads: int, axial_precision: str) -> Any:
    if name == "sagittal_spine":
        from spinegate.inference.engine import SagittalSpineEngine

        return SagittalSpineEngine(model_dir, threads)
    from spinegate.inference.axial_engine import AxialMuscleEngine

    # The axial engine runs in the pipeline's second lane, beside the
    # sagittal stage: half the threads, so the two lanes do not oversubscribe
    # the cores. Measured on 2 cores, standard study, FP32 axial model,
    # sagittal + axial threads: 2 + 2 14.2-15.3 s, 2 + 1 13.7-14.0 s, 1 + 1 13.0-13.3 s; a
    # sagittal-only study takes 7.5 s with 2 threads, 8.0 s with 1.
    return AxialMuscleEngine(model_dir, max(1, threads // 2), model_name=model_stem(name, axial_precision))


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
    axial_precision : str
        ``"int8"`` (the quantised axial model, the CPU default) or ``"fp32"``.
    """

    def __init__(self, model_dir: Path, threads: int = 2, on_load: Callable[[ModelInfo], None] | None = None,
                 axial_precision: str = "int8") -> None:
        if axial_precision not in _AXIAL_PRECISION_SUFFIX:
            raise EngineError(f"axial precision {axial_precision!r} is not one of {', '.join(_AXIAL_PRECISION_SUFFIX)}")
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.axial_precision = axial_precision
        self._on_load = on_load
        self._loaded: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Any:
        """The engine called ``name`` (loaded now if needed).

        Raises
        ------
        EngineError
            If no engine has that name or its model is missing.
        """
        model_stem(name)  # unknown names fail here, before the lock
        with self._lock:
            if name not in self._loaded:
                engine = _construct(name, self.model_dir, self.threads, self.axial_precision)
                self._loaded[name] = engine
                if self._on_load:
                    self._on_load(engine.info)
            return self._loaded[name]

    def load(self, names: list[str] | tuple[str, ...]) -> None:
        """Load every named engine now (start-up check of the models)."""
        for name in dict.fromkeys(names):
            self.get(name)

    @property
    def loaded(self) -> bool:
        return bool(self._loaded)

    def model_info(self, name: str) -> ModelInfo:
        """Identity of an engine's model without loading it."""
        if name in self._loaded:
            return self._loaded[name].info
        return load_model_info(self.model_dir, model_stem(name, self.axial_precision))
