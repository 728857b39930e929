"""Score the axial model: the real subject by cross-validation over slice
blocks, and held-out phantoms, as the model card reports them.

    python -m spinegate.inference.training.axial_validation --data ../shared/data/axial_muscle --out inference/models
    python -m spinegate.inference.training.axial_validation --out inference/models --model axial_muscle.int8

Real subject (TUM01, erector spinae and multifidus labelled): each fold
model (``axial_muscle.fold{k}.onnx``, trained without that block of slices)
segments its held-out block; Dice per muscle is pooled over the folds.
Phantoms (seeds never trained on, T1, T2 and Dixon water): Dice per class
of the committed model on the native grid, and the relative error of each
muscle's mean CSA per slice. Writes ``axial_muscle.validation.json``.
With ``--model axial_muscle.int8`` the INT8 model (`inference.training.quantize`) is
scored on the phantoms only (the fold models are the FP32 ones) into
``axial_muscle.int8.validation.json``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES, MUSCLE_CLASSES
from spinegate.inference.training.axial_data import REAL_FOLDS, canonical_axial_volume, load_tum_planes, phantom_axial_series, tum_classes
from spinegate.inference.axial_engine import MODEL_NAME, AxialMuscleEngine, clean_axial_classes

__all__ = ["dice", "real_fold_dice", "phantom_scores"]

log = logging.getLogger("spinegate.inference.training.axial_validation")

REAL_MUSCLES = ("ES_R", "MF_R", "MF_L", "ES_L")


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A| + |B|); 1 when both are empty."""
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * float(np.logical_and(a, b).sum()) / total


def real_fold_dice(data_dir: Path, model_dir: Path) -> dict:
    """Dice per labelled muscle on held-out TUM01 slice blocks, per fold and
    pooled (sums of overlaps and sizes over the folds)."""
    water, _, labels, spacing = load_tum_planes(data_dir)
    truth = tum_classes(labels)
    sums = {m: [0, 0] for m in REAL_MUSCLES}
    folds = []
    for k, (lo, hi) in enumerate(REAL_FOLDS):
        engine = AxialMuscleEngine(model_dir, model_name=f"{MODEL_NAME}.fold{k}")
        # Intensity scaling over the whole series, as for any series at inference.
        probs = engine.scores(canonical_axial_volume(water, (spacing, spacing)), slice(lo, hi))
        pred = clean_axial_classes(probs.argmax(axis=1).astype(np.uint8), spacing * spacing)
        per = {}
        for name in REAL_MUSCLES:
            c = MUSCLE_CLASSES[(name[:2], name[3])]
            a, b = pred == c, truth[lo:hi] == c
            per[name] = round(dice(a, b), 4)
            sums[name][0] += 2 * int(np.logical_and(a, b).sum())
            sums[name][1] += int(a.sum()) + int(b.sum())
        folds.append({"slices": [lo, hi], "model_sha256": engine.info.sha256, "dice": per})
    pooled = {m: round(s[0] / s[1], 4) for m, s in sums.items()}
    return {"folds": folds, "pooled_dice": pooled, "mean_pooled_dice": round(float(np.mean(list(pooled.values()))), 4)}


def phantom_scores(model_dir: Path, seeds: tuple[int, ...], model_name: str = MODEL_NAME) -> dict:
    """Dice per class and per-slice CSA error of a committed model on
    held-out phantom series."""
    from spinegate.dicom_io.classify import Weighting

    engine = AxialMuscleEngine(model_dir, model_name=model_name)
    per_series = []
    for seed in seeds:
        for weighting in (Weighting.T1, Weighting.T2, Weighting.WATER):
            image, classes, spacing = phantom_axial_series(seed, weighting)
            pred = engine.segment(canonical_axial_volume(image, spacing)).classes
            d = {AXIAL_CLASS_NAMES[c]: round(dice(pred == c, classes == c), 4) for c in range(1, len(AXIAL_CLASS_NAMES))}
            csa_err = {}
            for (m, s), c in MUSCLE_CLASSES.items():
                t = (classes == c).sum(axis=(1, 2)).astype(float)
                p = (pred == c).sum(axis=(1, 2)).astype(float)
                shown = t > 0
                csa_err[f"{m}_{s}"] = round(float(np.mean(np.abs(p[shown] - t[shown]) / t[shown])), 4)
            per_series.append({"seed": seed, "weighting": weighting.name, "dice": d,
                               "mean_abs_rel_csa_error_per_slice": csa_err})
            log.info("phantom seed %d %s: %s", seed, weighting.name, d)
    names = AXIAL_CLASS_NAMES[1:]
    mean = {n: round(float(np.mean([s["dice"][n] for s in per_series])), 4) for n in names}
    return {"series": per_series, "mean_dice": mean}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, help="folder with the shared axial_muscle NIfTI files (FP32 model)")
    ap.add_argument("--out", type=Path, default=Path("inference/models"))
    ap.add_argument("--model", default=MODEL_NAME, help="model file stem (axial_muscle.int8: phantoms only)")
    ap.add_argument("--phantom-seeds", type=int, nargs="*", default=[1000, 1001])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.model == MODEL_NAME and args.data is None:
        ap.error("--data is needed to score the real subject's fold models")
    record = {"held_out_phantoms": phantom_scores(args.out, tuple(args.phantom_seeds), args.model),
              "model_sha256": AxialMuscleEngine(args.out, model_name=args.model).info.sha256}
    if args.model == MODEL_NAME:
        record = {"real_subject_cross_validation": real_fold_dice(args.data, args.out), **record}
    (args.out / f"{args.model}.validation.json").write_text(json.dumps(record, indent=1))
    print(json.dumps({"real": record.get("real_subject_cross_validation", {}).get("pooled_dice"),
                      "phantom": record["held_out_phantoms"]["mean_dice"]}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
