"""Train the sagittal spine network and export it to ONNX.

Four stages produced the committed model, each starting from the last
one's weights (the commands are in the README, "The sagittal model", and
the model card); ``--init`` also takes an exported ``.onnx`` model, so a
further stage can start from the committed weights (``--bf16`` runs the
forward pass in bfloat16 autocast, 1.7x faster on CPUs with AMX). Such a
fifth stage was tried and is recorded, not adopted, in the training record:

    python -m inference.train --data ../shared/data/lumbar_mri --out runs/stage5 --context 1 \
        --init inference/models/sagittal_spine.onnx --iterations 5000 --lr 3e-4 --seed 20261204 --bf16

``--context`` and ``--channels`` above an ``--init`` network's own widen it
(more neighbour slices, more feature maps per level) so that it computes the
same function until trained; both were tried from stage 4 and are recorded,
as was ``--global-context --train-only-context`` (whole-slice class offsets,
`network.GlobalContextBias`, trained alone with the rest frozen).

Reproducible: one seed drives numpy, torch and the batch sampler; torch runs
deterministic algorithms on 2 CPU threads. The split is `training_data.SPLIT`.
Outputs ``sagittal_spine.onnx`` and ``sagittal_spine.training.json`` (the
exact settings, split and loss curve) next to the model card.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from dicom_io.phantom import Weighting
from inference.network import DEFAULT_CHANNELS, ResidualUNet2D, from_weights, load_from_onnx
from inference.training_data import (
    CLASS_NAMES,
    SPLIT,
    TrainingCase,
    load_real_case,
    make_phantom_case,
    training_stems,
)

log = logging.getLogger("inference.train")

PATCH = (192, 160)  # rows × columns at the training spacing (240 × 200 mm)


def slab_targets(planes: np.ndarray, centre: int, rule: str) -> np.ndarray:
    """Allowed-class mask of a thick slab from its planes' masks.

    ``centre``: the centre plane's mask. ``union``: where the planes
    disagree (partial volume at a structure's lateral edge), every class any
    plane allows. ``majority``: a class known in at least half of the planes
    is the slab's class, one known in fewer is excluded (how a thick slice
    is read, and how the validation labels are made); the rest allows the
    union.
    """
    mask = planes[centre]
    if rule == "centre" or len(planes) == 1:
        return mask
    union = np.bitwise_or.reduce(planes, axis=0)
    out = np.where((planes == mask).all(axis=0), mask, union).astype(np.uint8)
    if rule == "majority":
        minority = np.zeros_like(out)
        for bit in (1, 2, 4, 8):
            count = (planes == bit).sum(axis=0)
            minority |= np.where((count > 0) & (count * 2 < len(planes)), bit, 0).astype(np.uint8)
        # A class known in fewer than half of the planes is not the slab's
        # (unless nothing else would be left).
        narrowed = out & ~minority
        out = np.where(narrowed > 0, narrowed, out).astype(np.uint8)
        for bit in (1, 2, 4, 8):
            out[(planes == bit).sum(axis=0) * 2 >= len(planes)] = bit
    return out


def _slab(case: TrainingCase, centre: int, half: int) -> np.ndarray:
    lo, hi = max(0, centre - half), min(case.image.shape[0], centre + half + 1)
    return case.image[lo:hi].mean(axis=0)


def _sample(case: TrainingCase, rng: np.random.Generator, augment: bool, slab_labels: str = "union",
            context: int = 0, thickness_mm_range: tuple[float, float] = (1.0, 5.0),
            end_plane_share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One augmented example: a slab of 1-5 mm (``thickness_mm_range``)
    averaged across planes (thick clinical slices) and, with ``context`` > 0,
    that many neighbouring slabs on each side as extra channels (slice gap
    0-25 % of the thickness; edge slabs repeat at the end of the volume, as
    at inference); then random scale/rotation, gamma and noise. With
    ``end_plane_share`` > 0 that share of the slabs is centred on the
    lateral ends of the labelled structures (`TrainingCase.end_planes`),
    where partial volume makes thick slabs hardest. Returns (channels, rows,
    cols) image and the centre slab's allowed-class mask."""
    n_planes = case.image.shape[0]
    # (extra random draws only when asked for: earlier runs reproduce as before)
    if end_plane_share > 0 and rng.random() < end_plane_share and case.end_planes.size:
        centre = int(rng.choice(case.end_planes))
    else:
        centre = int(rng.choice(case.labelled_planes))
    thickness_mm = float(rng.uniform(*thickness_mm_range)) if augment else 1.0
    half = max(0, int(round(thickness_mm / case.plane_spacing_mm / 2 - 0.5)))
    offsets = np.zeros(1, int)
    if context:  # (extra random draws only here: plain 2D runs reproduce as before)
        spacing_mm = thickness_mm * (rng.uniform(1.0, 1.25) if augment else 1.0)
        step = max(1, int(round(spacing_mm / case.plane_spacing_mm)))
        offsets = np.arange(-context, context + 1) * step
        if augment and rng.random() < 0.5:
            offsets = offsets[::-1]  # left/right order carries no meaning
    image = np.stack([_slab(case, int(np.clip(centre + o, 0, n_planes - 1)), half) for o in offsets])
    lo, hi = max(0, centre - half), min(n_planes, centre + half + 1)
    allowed = slab_targets(case.allowed[lo:hi], centre - lo, slab_labels)
    pr, pc = PATCH
    if augment:
        angle = np.deg2rad(rng.uniform(-12, 12))
        scale = rng.uniform(0.85, 1.2)
    else:
        angle, scale = 0.0, 1.0
    # Output patch centre maps to a random point near the labelled spine.
    fg = np.argwhere(allowed != allowed.max()) if (allowed != allowed.max()).any() else np.argwhere(allowed > 0)
    anchor = fg[rng.integers(len(fg))] + rng.normal(0, 20, 2)
    c, s = np.cos(angle), np.sin(angle)
    mat = np.array([[c, -s], [s, c]]) / scale
    offset = anchor - mat @ np.array([pr / 2, pc / 2])
    img = np.stack([ndimage.affine_transform(ch, mat, offset, output_shape=PATCH, order=1, mode="constant", cval=0.0)
                    for ch in image])
    alw = ndimage.affine_transform(allowed, mat, offset, output_shape=PATCH, order=0, mode="constant",
                                   cval=int(allowed.max()))
    if augment:
        img = np.clip(img, 0, 1) ** rng.uniform(0.6, 1.6)
        img = img * rng.uniform(0.8, 1.2) + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return img.astype(np.float32), alw.astype(np.uint8)


def partial_label_loss(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Marginal cross-entropy over the allowed classes plus soft Dice on the
    pixels whose membership of each foreground class is known.

    ``allowed`` holds per-pixel class bitmasks; a pixel allowing every class
    contributes nothing.
    """
    n_classes = logits.shape[1]
    bits = torch.stack([(allowed >> c) & 1 for c in range(n_classes)], dim=1).bool()
    logp = torch.log_softmax(logits, dim=1)
    marginal = torch.logsumexp(logp.masked_fill(~bits, -1e4), dim=1)
    informative = bits.sum(dim=1) < n_classes
    ce = -(marginal * informative).sum() / informative.sum().clamp(min=1)
    prob = logp.exp()
    dice_terms = []
    for c in range(1, n_classes):
        positive = bits[:, c] & (bits.sum(dim=1) == 1)
        known = positive | ~bits[:, c]
        if positive.sum() == 0:
            continue
        p = prob[:, c] * known
        inter = (p * positive).sum()
        dice_terms.append(1 - (2 * inter + 1) / (p.sum() + positive.sum() + 1))
    dice = torch.stack(dice_terms).mean() if dice_terms else torch.zeros((), device=logits.device)
    return ce + dice


def pick_case(pool: list[TrainingCase], rng: np.random.Generator, by_dataset: bool = False) -> TrainingCase:
    """A training volume drawn uniformly from ``pool``, or with
    ``by_dataset`` a dataset (the name before the first ``_``: VB1, VB2,
    VB3…) drawn uniformly first and then one of its volumes, so a small
    dataset whose labels follow its own contour convention weighs as much
    as a large one."""
    if not by_dataset:
        return pool[rng.integers(len(pool))]
    datasets = sorted({c.name.split("_")[0] for c in pool})
    chosen = datasets[rng.integers(len(datasets))]
    members = [c for c in pool if c.name.split("_")[0] == chosen]
    return members[rng.integers(len(members))]


def optimisation_step(model: ResidualUNet2D, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                      x: torch.Tensor, allowed: torch.Tensor, bf16: bool = False) -> float:
    """One step on a batch with partial-label targets; returns the loss.

    With ``bf16`` the forward pass runs under CPU autocast to bfloat16 (the
    weights, the optimiser and the loss stay float32); on CPUs with AMX or
    AVX-512 BF16 this is about 1.7x faster per step.
    """
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
    loss = partial_label_loss(logits.float(), allowed)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return float(loss.detach())


def initial_model(init: Path | None, in_channels: int, channels: tuple[int, ...] | None = None,
                  global_context: bool = False) -> ResidualUNet2D:
    """A fresh network, or one continued from ``init`` (a saved state dict or
    an exported ``.onnx`` model); a network taking fewer slices is widened
    to ``in_channels`` (the new neighbours' weights start at zero), and one
    with fewer feature maps than ``channels`` is given them
    (`ResidualUNet2D.widen_channels`: same function until trained); with
    ``global_context`` one without a `GlobalContextBias` is given one
    (zero offsets until trained).

    Raises
    ------
    SystemExit
        If ``init`` takes more input slices than ``in_channels`` or cannot be
        widened to ``channels``.
    """
    if init is None:
        return ResidualUNet2D(len(CLASS_NAMES), channels=channels or DEFAULT_CHANNELS, in_channels=in_channels,
                              global_context=global_context)
    model = load_from_onnx(init) if init.suffix == ".onnx" else from_weights(torch.load(init), f"{init}")
    if model.in_channels < in_channels:
        model.widen_input(in_channels)
    elif model.in_channels != in_channels:
        raise SystemExit(f"{init} takes {model.in_channels} input slices, the run needs {in_channels} (--context)")
    if channels and tuple(channels) != model.channels:
        try:
            model = model.widen_channels(tuple(channels))
        except ValueError as e:
            raise SystemExit(f"{init}: {e} (--channels)") from e
    if global_context and model.context is None:
        model.add_global_context()
    return model


def trainable_parameters(model: ResidualUNet2D, context_only: bool) -> list[torch.nn.Parameter]:
    """All parameters, or with ``context_only`` those of the global context
    bias alone (the rest frozen: no gradients are computed for it).

    Raises
    ------
    SystemExit
        If ``context_only`` and the network has no global context bias.
    """
    if not context_only:
        return list(model.parameters())
    if model.context is None:
        raise SystemExit("--train-only-context needs a network with a global context bias (--global-context)")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.context.parameters():
        p.requires_grad_(True)
    return list(model.context.parameters())


def export_onnx(model: ResidualUNet2D, path: Path) -> None:
    """Export with dynamic batch and spatial size (multiples of 16); the
    input's channel count (slices per example) is fixed by the model."""
    model.eval()
    dummy = torch.zeros(1, model.in_channels, 256, 256)
    torch.onnx.export(
        model, (dummy,), str(path), input_names=["image"], output_names=["logits"], opset_version=17,
        dynamic_axes={"image": {0: "batch", 2: "rows", 3: "columns"}, "logits": {0: "batch", 2: "rows", 3: "columns"}},
        dynamo=False,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with the shared lumbar_mri NIfTI files")
    ap.add_argument("--out", type=Path, default=Path("inference/models"))
    ap.add_argument("--iterations", type=int, default=3500)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--phantoms", type=int, default=20, help="training phantom subjects (each T1 and T2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--export-checkpoint", type=Path, help="only export this saved state dict to ONNX and stop")
    ap.add_argument("--init", type=Path,
                    help="start from this saved state dict or exported .onnx model (fine-tuning stage)")
    ap.add_argument("--context", type=int, default=0,
                    help="neighbouring slices on each side given as extra input channels (0: plain 2D); "
                         "an --init network taking fewer is widened, its new neighbours at zero weight")
    ap.add_argument("--channels", type=int, nargs="+", metavar="MAPS",
                    help=f"feature maps per level (default {' '.join(map(str, DEFAULT_CHANNELS))}); an --init network with fewer is "
                         "widened, its new maps feeding nothing until trained")
    ap.add_argument("--thickness-mm", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"),
                    help="range of the simulated slice thickness")
    ap.add_argument("--end-plane-share", type=float, default=0.0,
                    help="share of slabs centred on the lateral ends of the labelled structures")
    ap.add_argument("--slab-labels", choices=("union", "centre", "majority"), default="union",
                    help="thick-slab targets: the centre plane's classes, the union where the slab's planes "
                         "disagree, or the class of at least half of the planes (see slab_targets)")
    ap.add_argument("--balance-datasets", action="store_true",
                    help="draw each dataset (VB1, VB2, VB3) equally often, not each volume")
    ap.add_argument("--global-context", action="store_true",
                    help="give the network whole-slice class offsets (GlobalContextBias; zero until trained)")
    ap.add_argument("--train-only-context", action="store_true",
                    help="train the global context bias alone, the rest of the network frozen (in eval mode)")
    ap.add_argument("--bf16", action="store_true",
                    help="forward pass in bfloat16 autocast (fast on CPUs with AMX/AVX-512 BF16)")
    args = ap.parse_args(argv)
    if args.export_checkpoint:
        model = from_weights(torch.load(args.export_checkpoint), f"{args.export_checkpoint}")
        export_onnx(model, args.out / "sagittal_spine.onnx")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(args.seed)

    stems = training_stems(args.data)
    t0 = time.time()
    cases = [load_real_case(args.data, s) for s in stems]
    phantoms = [make_phantom_case(seed, w) for seed in range(args.phantoms) for w in (Weighting.T1, Weighting.T2)]
    log.info("cached %d real + %d phantom volumes in %.0f s", len(cases), len(phantoms), time.time() - t0)
    ivd = [c for c in cases if c.name.startswith("IVD")]
    vb = [c for c in cases if not c.name.startswith("IVD")]
    # Sampling weights: real vertebral-body data dominates; discs and S1 come
    # from the few disc volumes and the phantoms.
    pools = [(vb, 0.55), (ivd, 0.15), (phantoms, 0.30)]

    in_channels = 1 + 2 * args.context
    model = initial_model(args.init, in_channels, tuple(args.channels) if args.channels else None,
                          args.global_context)
    opt = torch.optim.AdamW(trainable_parameters(model, args.train_only_context), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.iterations, pct_start=0.05)
    curve = []
    # A frozen network runs as at inference (no dropout); the context bias
    # has no dropout or normalisation, so its mode does not matter.
    model.train(not args.train_only_context)
    for it in range(1, args.iterations + 1):
        imgs, alws = [], []
        for _ in range(args.batch):
            pool = pools[rng.choice(len(pools), p=[w for _, w in pools])][0]
            img, alw = _sample(pick_case(pool, rng, args.balance_datasets), rng, augment=True, slab_labels=args.slab_labels,
                               context=args.context, thickness_mm_range=tuple(args.thickness_mm),
                               end_plane_share=args.end_plane_share)
            imgs.append(img)
            alws.append(alw)
        x = torch.from_numpy(np.stack(imgs))
        a = torch.from_numpy(np.stack(alws).astype(np.int64))
        curve.append(optimisation_step(model, opt, sched, x, a, bf16=args.bf16))
        if it % 50 == 0:
            log.info("iteration %d loss %.4f (%.0f s)", it, float(np.mean(curve[-50:])), time.time() - t0)
        if it % 500 == 0 or it == args.iterations:
            args.out.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), args.out / "sagittal_spine.pt")
    export_onnx(model, args.out / "sagittal_spine.onnx")
    record = {
        "seed": args.seed, "iterations": args.iterations, "init": str(args.init) if args.init else None, "slab_labels": args.slab_labels,
        "context_slices_each_side": args.context, "channels": list(model.channels), "thickness_mm": list(args.thickness_mm),
        "end_plane_share": args.end_plane_share, "bf16_autocast": args.bf16, "balance_datasets": args.balance_datasets,
        "global_context": model.context is not None, "trained": "global context bias only" if args.train_only_context else "all weights",
        "batch": args.batch, "lr": args.lr,
        "patch_rows_cols": PATCH, "classes": CLASS_NAMES, "training_volumes": stems,
        "phantom_seeds": list(range(args.phantoms)), "split": SPLIT, "pool_weights": [w for _, w in pools],
        "loss_every_50": [float(np.mean(curve[i : i + 50])) for i in range(0, len(curve), 50)],
        "seconds": time.time() - t0, "torch": torch.__version__,
    }
    (args.out / "sagittal_spine.training.json").write_text(json.dumps(record, indent=1))
    log.info("wrote %s", args.out / "sagittal_spine.onnx")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
