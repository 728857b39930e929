"""The axial model's area calibration at run time: one log-score offset per
class, read from the file `inference.training.axial_calibration` fits beside the
model, applied before the arg-max. The engine needs only this module; the
fitting (phantoms, the engine itself) stays in `axial_calibration`."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES

__all__ = ["ClassOffsets", "load_class_offsets"]


class ClassOffsets:
    """Log-score offsets per output class, applied before the arg-max.

    Parameters
    ----------
    offsets : numpy.ndarray
        One offset per class of `inference.axial_classes.AXIAL_CLASS_NAMES`
        (background 0).
    tag : str
        Short identity joined to the model version (checksum of the file).
    """

    def __init__(self, offsets: np.ndarray, tag: str = "") -> None:
        offsets = np.asarray(offsets, np.float32)
        if offsets.shape != (len(AXIAL_CLASS_NAMES),) or not np.all(np.isfinite(offsets)):
            raise ValueError(f"class offsets need {len(AXIAL_CLASS_NAMES)} finite values, got {offsets!r}")
        self.offsets = offsets
        self.tag = tag

    def classes(self, probs: np.ndarray, axis: int = 1) -> np.ndarray:
        """Arg-max class of ``probs`` (softmax scores) after the offsets."""
        shape = [1] * probs.ndim
        shape[axis] = -1
        scores = np.log(np.maximum(probs, 1e-12)) + self.offsets.reshape(shape)
        return scores.argmax(axis=axis).astype(np.uint8)


def load_class_offsets(model_dir: Path, model_name: str, model_sha256: str) -> ClassOffsets | None:
    """The calibration written beside a model, or None when there is none.

    Raises
    ------
    ValueError
        If the file was fitted for another model file (retrained without
        re-calibrating) or does not hold one offset per class.
    """
    path = model_dir / f"{model_name}.calibration.json"
    if not path.exists():
        return None
    raw = path.read_bytes()
    record = json.loads(raw)
    if record.get("model_sha256") != model_sha256:
        raise ValueError(f"{path} was fitted for model sha256 {str(record.get('model_sha256'))[:12]}, the model is "
                         f"{model_sha256[:12]}; re-run 'python -m spinegate.inference.training.axial_calibration --out {model_dir} "
                         f"--model {model_name}'")
    offsets = [record["offsets"].get(name, 0.0) for name in AXIAL_CLASS_NAMES]
    return ClassOffsets(np.array(offsets), "cal-" + hashlib.sha256(raw).hexdigest()[:8])
