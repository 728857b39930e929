"""Train the axial paraspinal-muscle network and export it to ONNX.

Data: axial phantoms (every class: vertebral body, disc, left/right MF, ES,
PM, QL; T1, T2 and Dixon-water contrast, 0.5-0.8 mm pixels, 3-5 mm slices)
and the real labelled subject TUM01 (Dixon water image; erector spinae and
multifidus only, so its unlabelled pixels allow background, vertebral body,
disc, psoas and quadratus lumborum: `inference.training.training_steps.partial_label_loss`).

The committed model and its cross-validation come from one command
(docs/models.md, "The axial model")::

    python -m spinegate.inference.training.train_axial --data ../shared/data/axial_muscle --out inference/models --all

which trains a phantom-only base, then fine-tunes it once per held-out block
of TUM01 slices (``axial_muscle.fold{k}.onnx``, scored in
`inference.training.axial_validation`) and once on every slice (``axial_muscle.onnx``),
whose area calibration (`inference.training.axial_calibration`) it then fits, and
whose INT8 version (`inference.training.quantize`, with its own calibration) it writes.
Reproducible: one seed drives numpy, torch and the sampler; torch runs
deterministic algorithms on 2 CPU threads.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom.paraspinal import FASCIA_FAT_FRACTION
from spinegate.inference.training.axial_calibration import calibrate
from spinegate.inference.training.quantize import build_int8
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES, AXIAL_SPACING_MM, AXIAL_TILE, MUSCLE_CLASSES
from spinegate.inference.training.axial_data import (PHANTOM_CACHE, REAL_FOLDS, TUM_LABELS, load_tum_planes,
                                                     phantom_training_planes, training_planes, tum_classes)
from spinegate.inference.training.network import ResidualUNet2D
from spinegate.inference.preprocessing import normalise_intensity
from spinegate.inference.training.training_steps import averaged_weights, export_onnx, optimisation_step

log = logging.getLogger("spinegate.inference.training.train_axial")

MODEL_NAME = "axial_muscle"
CHANNELS = (16, 32, 64, 128)
PATCH = AXIAL_TILE  # 192 mm at AXIAL_SPACING_MM; inference tiles are the same size
TRAINING_PHANTOM_SEEDS = tuple(range(24))
CONTRASTS = (Weighting.T1, Weighting.T2, Weighting.WATER)
ALL_BITS = (1 << len(AXIAL_CLASS_NAMES)) - 1


@dataclass(frozen=True)
class AxialCase:
    """Axial slices at ``AXIAL_SPACING_MM`` in canonical orientation (rows
    anterior→posterior, columns patient right→left), intensities normalised
    per series, with per-pixel allowed-class bitmasks."""

    name: str
    image: np.ndarray  # float32 (n, rows, cols)
    allowed: np.ndarray  # int32 (n, rows, cols)


def make_phantom_case(seed: int, weighting: Weighting, cache_dir: Path | None = None,
                      multifidus_scale: float = 1.0, fascia_fat_fraction: float = FASCIA_FAT_FRACTION) -> AxialCase:
    """A fully labelled phantom series as a training case (cached as .npz)."""
    varied = (multifidus_scale, fascia_fat_fraction) != (1.0, FASCIA_FAT_FRACTION)
    suffix = f"_mf{multifidus_scale:.3f}_fa{fascia_fat_fraction:.3f}" if varied else ""
    return AxialCase(f"phantom_{seed}_{weighting.name}{suffix}",
                     *phantom_training_planes(seed, weighting, cache_dir, multifidus_scale, fascia_fat_fraction))


def stratified_values(n_seeds: int, value_range: tuple[float, float], stream: int) -> list[float]:
    """One value per phantom seed 0..n-1: evenly spread over ``value_range``
    (stratified, so a dozen seeds cover its ends) and assigned to the seeds
    in an order shuffled by ``stream``, so that it does not follow the
    seed's other anatomy or another drawn value."""
    low, high = value_range
    order = np.random.default_rng(stream).permutation(n_seeds)
    return [round(low + (high - low) * (int(k) + 0.5) / n_seeds, 4) for k in order]


def varied_phantoms(n_seeds: int, multifidus_scale: tuple[float, float] | None,
                    fascia_fat_fraction: tuple[float, float] | None, cache_dir: Path | None) -> list[AxialCase]:
    """Phantom seeds 0..n-1 in every training contrast with their multifidus
    scale and fascia fat fraction drawn from the given ranges (the
    phantom's own value where a range is None)."""
    scales = stratified_values(n_seeds, multifidus_scale, 70_000) if multifidus_scale else [1.0] * n_seeds
    fascia = (stratified_values(n_seeds, fascia_fat_fraction, 71_000) if fascia_fat_fraction
              else [FASCIA_FAT_FRACTION] * n_seeds)
    return [make_phantom_case(s, w, cache_dir, scales[s], fascia[s]) for s in range(n_seeds) for w in CONTRASTS]


# TUM01's Dixon images from its water and fat magnitudes: the in-phase
# (water + fat) and opposed-phase (|water - fat|) images the pair was
# separated from show the same anatomy in T1-like contrast (fat bright) and
# with dark water-fat boundaries.
_DIXON_IMAGES = {"water": lambda water, fat: water, "in_phase": lambda water, fat: water + fat,
                 "opposed_phase": lambda water, fat: np.abs(water - fat), "fat": lambda water, fat: fat}
REAL_IMAGES = tuple(_DIXON_IMAGES)


def dixon_image(water: np.ndarray, fat: np.ndarray, kind: str) -> np.ndarray:
    """One of ``REAL_IMAGES`` built from TUM01's water and fat magnitudes."""
    if kind not in _DIXON_IMAGES:
        raise ValueError(f"unknown Dixon image {kind!r}; expected one of {REAL_IMAGES}")
    return _DIXON_IMAGES[kind](water, fat).astype(np.float32)


def load_real_cases(data_dir: Path, slices: np.ndarray, images: tuple[str, ...] = ("water",)) -> list[AxialCase]:
    """TUM01's given slices, one case per Dixon image named (`dixon_image`).
    Unlabelled pixels may be any class the labels do not cover (not erector
    spinae, not multifidus)."""
    water, fat, labels, spacing = load_tum_planes(data_dir)
    covered = sum(1 << MUSCLE_CLASSES[k] for k in TUM_LABELS.values())
    classes = tum_classes(labels[slices])
    # Intensity scaling over the whole series, as inference sees it.
    return [AxialCase(f"TUM01_{kind}", *training_planes(normalise_intensity(dixon_image(water, fat, kind))[slices],
                                                        classes, ALL_BITS & ~covered, (spacing, spacing)))
            for kind in images]


def sample(case: AxialCase, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (1, rows, cols) image and its allowed mask: rotation
    ±10°, scale 0.85-1.15, crop centred near a muscle, gamma, gain, noise,
    sometimes blur (in-plane resampling from coarser pixels). No left/right
    flip: laterality is what the classes encode."""
    k = int(rng.integers(case.image.shape[0]))
    image, allowed = case.image[k], case.allowed[k]
    angle = np.deg2rad(rng.uniform(-10, 10))
    scale = rng.uniform(0.85, 1.15)
    single = (allowed & (allowed - 1)) == 0  # exactly one class allowed
    fg = np.argwhere(single & (allowed > 1))
    anchor = (fg[rng.integers(len(fg))] if len(fg) else np.array(image.shape) / 2) + rng.normal(0, 15, 2)
    c, s = np.cos(angle), np.sin(angle)
    mat = np.array([[c, -s], [s, c]]) / scale
    offset = anchor - mat @ (np.array(PATCH) / 2)
    img = ndimage.affine_transform(image, mat, offset, output_shape=PATCH, order=1, mode="constant", cval=0.0)
    alw = ndimage.affine_transform(allowed, mat, offset, output_shape=PATCH, order=0, mode="constant", cval=1)
    if rng.random() < 0.3:
        img = ndimage.gaussian_filter(img, rng.uniform(0.3, 0.9))
    img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
    img = img * rng.uniform(0.85, 1.15) + rng.normal(0, rng.uniform(0, 0.03), img.shape)
    return img[None].astype(np.float32), alw.astype(np.int32)


def train(cases: list[tuple[list[AxialCase], float]], iterations: int, batch: int, lr: float, seed: int,
          init: Path | None, checkpoint: Path) -> tuple[ResidualUNet2D, list[float]]:
    """Train (or fine-tune from ``init``) on pools of cases with sampling
    weights; returns the model and the loss per iteration."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ResidualUNet2D(len(AXIAL_CLASS_NAMES), channels=CHANNELS)
    if init is not None:
        model.load_state_dict(torch.load(init))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations, pct_start=0.05)
    weights = np.array([w for _, w in cases]) / sum(w for _, w in cases)
    curve: list[float] = []
    t0 = time.time()
    model.train()
    for it in range(1, iterations + 1):
        xs, als = [], []
        for _ in range(batch):
            pool = cases[rng.choice(len(cases), p=weights)][0]
            x, a = sample(pool[rng.integers(len(pool))], rng)
            xs.append(x)
            als.append(a)
        curve.append(optimisation_step(model, opt, sched, torch.from_numpy(np.stack(xs)),
                                       torch.from_numpy(np.stack(als)).long()))
        if it % 50 == 0:
            log.info("%s iteration %d loss %.4f (%.0f s)", checkpoint.stem, it, np.mean(curve[-50:]), time.time() - t0)
        if it % 250 == 0 or it == iterations:
            torch.save(model.state_dict(), checkpoint)
    return model, curve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with the shared axial_muscle NIfTI files")
    ap.add_argument("--out", type=Path, default=Path("inference/models"))
    ap.add_argument("--cache", type=Path, default=PHANTOM_CACHE, help="rendered phantom cache")
    ap.add_argument("--base-iterations", type=int, default=2400)
    ap.add_argument("--tune-iterations", type=int, default=500)
    ap.add_argument("--batch", type=int, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tune-multifidus-scale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="fine-tune on phantoms (--tune-varied-seeds) whose multifidi are scaled by a per-seed "
                         "factor in this range, instead of the base's phantoms")
    ap.add_argument("--tune-fascia-fat-fraction", type=float, nargs=2, metavar=("LOW", "HIGH"),
                    help="the same with the fascia sheets' fat fraction drawn per seed in this range")
    ap.add_argument("--tune-varied-seeds", type=int, default=12, help="how many phantom seeds (from 0) are varied")
    ap.add_argument("--tune-seeds", type=int, nargs="+", metavar="SEED",
                    help="fine-tune once per seed and average the weights (default: one fine-tuning, seed + 1)")
    ap.add_argument("--tune-real-images", nargs="+", choices=REAL_IMAGES, default=["water"],
                    help="which of TUM01's Dixon images the fine-tuning sees (default: water)")
    ap.add_argument("--step", choices=("cache", "base", "fold0", "fold1", "fold2", "final", "all"), default="all")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    phantoms = [make_phantom_case(s, w, args.cache) for s in TRAINING_PHANTOM_SEEDS for w in CONTRASTS]
    tune_phantoms = phantoms
    if args.tune_multifidus_scale or args.tune_fascia_fat_fraction:
        tune_phantoms = varied_phantoms(args.tune_varied_seeds, args.tune_multifidus_scale,
                                        args.tune_fascia_fat_fraction, args.cache)
    log.info("%d phantom series ready, %d varied (%.0f s)", len(phantoms),
             0 if tune_phantoms is phantoms else len(tune_phantoms), time.time() - t0)
    if args.step == "cache":
        return 0
    base_pt = args.out / f"{MODEL_NAME}.base.pt"
    record_path = args.out / f"{MODEL_NAME}.training.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    record.update({
        "seed": args.seed, "batch": args.batch, "lr": args.lr, "channels": CHANNELS, "patch_rows_cols": PATCH,
        "spacing_mm": AXIAL_SPACING_MM, "classes": AXIAL_CLASS_NAMES, "phantom_seeds": TRAINING_PHANTOM_SEEDS,
        "version": "2026.11.21-ax3", "phantom_contrasts": [w.name for w in CONTRASTS], "real_folds_slices": REAL_FOLDS,
        "torch": torch.__version__,
    })
    if args.step in ("base", "all"):
        _, curve = train([(phantoms, 1.0)], args.base_iterations, args.batch, args.lr, args.seed, None, base_pt)
        record["base"] = {"iterations": args.base_iterations, "loss_every_50": _every_50(curve)}
    steps = [f"fold{k}" for k in range(len(REAL_FOLDS))] + ["final"] if args.step == "all" else [args.step]
    for step in (s for s in steps if s != "base"):
        n_real = 29
        held = np.arange(*REAL_FOLDS[int(step[-1])]) if step.startswith("fold") else np.array([], int)
        train_slices = np.setdiff1d(np.arange(n_real), held)
        real = load_real_cases(args.data, train_slices, tuple(args.tune_real_images))
        name = MODEL_NAME if step == "final" else f"{MODEL_NAME}.{step}"
        tune_seeds = args.tune_seeds or [args.seed + 1]
        states, curves = [], []
        for tune_seed in tune_seeds:
            checkpoint = args.out / (f"{name}.pt" if len(tune_seeds) == 1 else f"{name}.seed{tune_seed}.pt")
            model, curve = train([(tune_phantoms, 0.6), (real, 0.4)], args.tune_iterations, args.batch, args.lr / 2,
                                 tune_seed, base_pt, checkpoint)
            states.append(model.state_dict())
            curves.append(curve)
        if len(states) > 1:
            model.load_state_dict(averaged_weights(states))
            torch.save(model.state_dict(), args.out / f"{name}.pt")
        curve = list(np.mean(curves, axis=0))
        export_onnx(model, args.out / f"{name}.onnx")
        record[step] = {"iterations": args.tune_iterations, "init": base_pt.name, "real_slices": train_slices.tolist(),
                        "multifidus_scale_range": args.tune_multifidus_scale,
                        "fascia_fat_fraction_range": args.tune_fascia_fat_fraction,
                        "varied_phantom_seeds": args.tune_varied_seeds if tune_phantoms is not phantoms else None,
                        "held_out_real_slices": held.tolist(), "tune_seeds": tune_seeds,
                        "real_images": list(args.tune_real_images), "loss_every_50": _every_50(curve)}
        record_path.write_text(json.dumps(record, indent=1))
        log.info("wrote %s", args.out / f"{name}.onnx")
        if step == "final":  # a new model needs its own area calibration, and its INT8 version
            calibrate(args.out)
            build_int8(args.out, MODEL_NAME, args.cache)
    record["seconds_last_run"] = time.time() - t0
    record_path.write_text(json.dumps(record, indent=1))
    return 0


def _every_50(curve: list[float]) -> list[float]:
    return [round(float(np.mean(curve[i : i + 50])), 4) for i in range(0, len(curve), 50)]


if __name__ == "__main__":
    raise SystemExit(main())
