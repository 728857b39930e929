"""Area calibration of the axial model: one log-score offset per muscle class.

    python -m spinegate.inference.training.axial_calibration --out inference/models [--model axial_muscle.int8]

The network's boundaries lie slightly outside the muscles on held-out
phantoms (2–7 % too much area, mostly a one-pixel rim against background),
and the CSA is a pixel count, so that bias goes straight into every
measurement. An offset per class is added to the log softmax scores before
the arg-max; the offsets are chosen so that, pooled over calibration
series, each muscle's segmented area equals its true area. Calibration
series are phantom seeds kept out of both training and validation
(`CALIBRATION_PHANTOM_SEEDS`), in T1, T2 and Dixon water contrast, so the
validation numbers stay honest. Writes ``axial_muscle.calibration.json``
(``--model axial_muscle.int8``: ``axial_muscle.int8.calibration.json`` for
the INT8 model, `inference.training.quantize`), which the engine applies
(`inference.class_offsets`, the runtime side) and whose checksum joins the
model version.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Callable

import numpy as np

from spinegate.dicom_io.classify import Weighting
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES, MUSCLE_CLASSES
from spinegate.inference.training.axial_data import canonical_axial_volume, phantom_axial_series
from spinegate.inference.axial_engine import AxialMuscleEngine

__all__ = ["CALIBRATION_PHANTOM_SEEDS", "calibrate", "fit_class_offsets", "undecided_pixels"]

log = logging.getLogger("spinegate.inference.training.axial_calibration")

# inference.training.axial_data.VALIDATION_PHANTOM_SEEDS holds 1000-1003; validation
# scores 1000 and 1001, the pipeline test 1000; calibration takes 1002-1005
# (never trained on, never scored).
CALIBRATION_PHANTOM_SEEDS = (1002, 1003, 1004, 1005)
# A pixel whose top score beats the runner-up by more than this (log units)
# cannot change class under offsets within ±_MAX_OFFSET.
_MAX_OFFSET = 2.0
_DECIDED_MARGIN = 2 * _MAX_OFFSET + 0.5


def undecided_pixels(log_probs: np.ndarray) -> np.ndarray:
    """Pixels (classes first) whose class an offset within bounds can change."""
    top2 = np.partition(log_probs, -2, axis=0)[-2:]
    return (top2[1] - top2[0]) < _DECIDED_MARGIN


def fit_class_offsets(log_probs: np.ndarray, fixed_area: np.ndarray, true_area: np.ndarray,
                      classes: tuple[int, ...], rounds: int = 4) -> np.ndarray:
    """Offsets making the arg-max area of each class in ``classes`` equal
    its true area.

    Parameters
    ----------
    log_probs : numpy.ndarray
        (classes, pixels) log softmax scores of the pixels an offset can
        move (see `undecided_pixels`).
    fixed_area : numpy.ndarray
        Pixels per class that no offset within bounds moves.
    true_area : numpy.ndarray
        True pixels per class over all pixels.
    classes : tuple of int
        Classes to calibrate; the others keep offset 0.
    rounds : int
        Coordinate passes (classes share borders, so each pass re-balances).

    Returns
    -------
    numpy.ndarray
        One offset per class, within ±2 log units.
    """
    offsets = np.zeros(log_probs.shape[0])
    for _ in range(rounds):
        for c in classes:
            lo, hi = -_MAX_OFFSET, _MAX_OFFSET
            for _ in range(30):  # bisection: the area grows with the offset
                offsets[c] = 0.5 * (lo + hi)
                area = fixed_area[c] + np.count_nonzero((log_probs + offsets[:, None]).argmax(axis=0) == c)
                lo, hi = (offsets[c], hi) if area < true_area[c] else (lo, offsets[c])
            offsets[c] = hi  # the smallest offset found that reaches the true area
    return offsets


def _calibration_pixels(model_dir: Path, model_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict], str]:
    """Movable pixels' log scores, the fixed and the true area per class,
    over every calibration series."""
    n = len(AXIAL_CLASS_NAMES)
    engine = AxialMuscleEngine(model_dir, model_name=model_name, calibrated=False)
    movable, fixed, true_area, series = [], np.zeros(n, np.int64), np.zeros(n, np.int64), []
    for seed in CALIBRATION_PHANTOM_SEEDS:
        for weighting in (Weighting.T1, Weighting.T2, Weighting.WATER):
            image, classes, spacing = phantom_axial_series(seed, weighting)
            probs = engine.scores(canonical_axial_volume(image, spacing))
            log_probs = np.log(np.maximum(np.moveaxis(probs, 1, 0).reshape(n, -1), 1e-12)).astype(np.float32)
            keep = undecided_pixels(log_probs)
            movable.append(log_probs[:, keep])
            fixed += np.bincount(log_probs[:, ~keep].argmax(axis=0), minlength=n)
            true_area += np.bincount(classes.reshape(-1), minlength=n)
            series.append({"seed": seed, "weighting": weighting.name, "shape": list(image.shape),
                           "pixel_spacing_mm": round(spacing[0], 4)})
            log.info("calibration series seed=%d weighting=%s movable_pixels=%d", seed, weighting.name, keep.sum())
    return np.concatenate(movable, axis=1), fixed, true_area, series, engine.info.sha256


def calibrate(model_dir: Path, model_name: str = "axial_muscle") -> dict:
    """Fit the offsets for the model ``model_name`` in ``model_dir`` and
    write ``{model_name}.calibration.json`` there; return the record."""
    log_probs, fixed, target, series, model_sha256 = _calibration_pixels(model_dir, model_name)
    muscles = tuple(sorted(MUSCLE_CLASSES.values()))
    offsets = fit_class_offsets(log_probs, fixed, target, muscles)
    n = len(AXIAL_CLASS_NAMES)
    before = fixed + np.bincount(log_probs.argmax(axis=0), minlength=n)
    after = fixed + np.bincount((log_probs + offsets[:, None]).argmax(axis=0), minlength=n)
    record = {
        "model_sha256": model_sha256,
        "method": "log-score offset per muscle class, fitted so the pooled arg-max area equals the true area",
        "phantom_seeds": list(CALIBRATION_PHANTOM_SEEDS), "series": series,
        "offsets": {AXIAL_CLASS_NAMES[c]: round(float(offsets[c]), 4) for c in range(len(AXIAL_CLASS_NAMES))},
        "area_error_before": {AXIAL_CLASS_NAMES[c]: round(float(before[c] / target[c] - 1), 4) for c in muscles},
        "area_error_after": {AXIAL_CLASS_NAMES[c]: round(float(after[c] / target[c] - 1), 4) for c in muscles},
    }
    path = model_dir / f"{model_name}.calibration.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    log.info("wrote %s offsets=%s", path, record["offsets"])
    return record


def run_model_command(argv: list[str] | None, module: str, doc: str, run: Callable[[Path, str], object],
                      model_help: str) -> int:
    """The command line of a step run on one model of a model folder
    (``--out`` folder, ``--model`` file stem): this module's and
    `inference.training.quantize`'s."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("inference/models"), help="model folder")
    parser.add_argument("--model", default="axial_muscle", help=model_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run(args.out, args.model)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_model_command(argv, "spinegate.inference.training.axial_calibration", __doc__ or "", calibrate,
                             "model file stem (axial_muscle or axial_muscle.int8)")


if __name__ == "__main__":
    raise SystemExit(main())
