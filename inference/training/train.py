"""Train the sagittal spine network and export it to ONNX.

The committed model was trained in two stages on a lent GPU (the commands
are in docs/models.md, "The sagittal model", and the model card): the real
cases packed into one file (the ``pack`` command) travel to a machine
without the shared data (``fit --cases``), worker processes draw the batches
(``--workers``; `training_samples.SampleStream`), and ``--time-budget-s``
fits a run to the time there is. ``--init`` continues a saved state dict
or an exported ``.onnx`` model; ``--context`` and ``--channels`` above an
``--init`` network's own widen it (more neighbour slices, more feature maps
per level) so that it computes the same function until trained;
``--global-context``, ``--s1-teacher`` and the previous model's four CPU
stages were tried and are recorded in the training record.

Reproducible: one seed drives numpy, torch and the batch sampler (each
worker draws from a generator seeded by the seed and its number); on a CPU
torch runs deterministic algorithms, on a GPU some kernels have no
deterministic form. The split is `training_data.SPLIT`. Outputs
``sagittal_spine.onnx`` and ``sagittal_spine.training.json`` (the exact
settings, split and loss curve) next to the model card.
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spinegate.dicom_io.classify import Weighting
from spinegate.inference.backends import make_backend
from spinegate.inference.training.network import DEFAULT_CHANNELS, ResidualUNet2D, from_weights, load_from_onnx
from spinegate.inference.training.training_data import (
    CLASS_NAMES,
    SPLIT,
    TrainingCase,
    dataset_of,
    load_real_case,
    make_phantom_case,
    pack_cases,
    teacher_classes,
    training_stems,
    unpack_cases,
    with_nearest_slice_labels,
    with_open_body_rim,
    with_teacher_s1,
)
from spinegate.inference.training.ivd_discs import with_source_size_discs, with_uncertain_disc_rim
from spinegate.inference.training.training_samples import PATCH, SampleStream, draw_batch
from spinegate.inference.training.training_steps import export_onnx, optimisation_step

log = logging.getLogger("spinegate.inference.training.train")

# How the IVD volumes' dilated disc masks are used (ivd_discs).
DISC_RIMS = ("strict", "source-size", "uncertain")
# Label sets whose body outlines may be left open (--open-body-rim).
OPEN_BODY_RIM_DATASETS = ("VB1", "VB2", "VB3", "phantom")
# A time-budgeted run measures its speed over this many iterations.
_BUDGET_START_ITERATIONS = 100
# A training record's ``real_cases`` when the real cases were read from the
# shared data (full precision) rather than a packed cases file.
REAL_CASES_FROM_DATA = "shared data"


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
    model = load_from_onnx(init) if init.suffix == ".onnx" else from_weights(torch.load(init, map_location="cpu"), f"{init}")
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


def _phantom_case(args: tuple[int, Weighting]) -> TrainingCase:
    return make_phantom_case(*args)


def apply_s1_teacher(cases: list[TrainingCase], teacher: Path | None,
                     datasets: list[str] | None) -> list[TrainingCase]:
    """Cases with their unlabelled S1 taken from ``teacher`` (an exported
    model; `training_data.with_teacher_s1`), for the cases of ``datasets``
    (name prefixes such as VB3; all when None)."""
    if teacher is None:
        return cases
    backend = make_backend("onnxruntime", teacher)  # one session for every case
    chosen = [dataset_of(c.name) in datasets if datasets else True for c in cases]
    out = [with_teacher_s1(c, teacher_classes(c, backend)) if pick else c for c, pick in zip(cases, chosen)]
    log.info("S1 from %s on %d of %d cases", teacher.name, sum(o is not c for o, c in zip(out, cases)), len(cases))
    return out


def load_training_cases(data: Path | None, cases_file: Path | None, n_phantoms: int, processes: int,
                        s1_teacher: Path | None = None, s1_teacher_datasets: list[str] | None = None,
                        disc_rim: str = "strict", open_body_rim: tuple[str, ...] = (),
                        nearest_slice_labels: tuple[str, ...] = ()
                        ) -> tuple[list[str], list[TrainingCase], list[TrainingCase]]:
    """The training stems, real cases (from the shared data, or a file made
    by the ``pack`` command; with ``s1_teacher``, see `apply_s1_teacher`;
    with ``disc_rim`` "source-size" or "uncertain", `ivd_discs`; the label
    sets in ``open_body_rim`` with `with_open_body_rim`, those in
    ``nearest_slice_labels`` with `with_nearest_slice_labels`) and phantom cases
    (rendered in ``processes`` processes when above 1)."""
    if cases_file is not None:
        cases = unpack_cases(cases_file)
        stems = [c.name for c in cases]
    else:
        stems = training_stems(data)
        cases = [load_real_case(data, s) for s in stems]
    cases = apply_s1_teacher(cases, s1_teacher, s1_teacher_datasets)
    if disc_rim == "source-size":
        cases = [with_source_size_discs(c) for c in cases]
    elif disc_rim == "uncertain":
        cases = [with_uncertain_disc_rim(c) for c in cases]
    jobs = [(seed, w) for seed in range(n_phantoms) for w in (Weighting.T1, Weighting.T2)]
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(processes) as pool:
            phantoms = pool.map(_phantom_case, jobs)
    else:
        phantoms = [_phantom_case(j) for j in jobs]
    cases = [with_nearest_slice_labels(c) if dataset_of(c.name) in nearest_slice_labels else c for c in cases]
    cases, phantoms = ([with_open_body_rim(c) if dataset_of(c.name) in open_body_rim else c for c in group]
                       for group in (cases, phantoms))
    return stems, cases, phantoms


@dataclass(frozen=True)
class SagittalTrainingConfig:
    """Every setting of one training run (``fit``), recorded with its model.

    Exactly one of ``data`` (the shared lumbar_mri NIfTI folder) and
    ``cases`` (a file written by the ``pack`` command) gives the real cases.
    """

    out: Path = Path("inference/models")
    data: Path | None = None
    cases: Path | None = None
    iterations: int = 3500
    time_budget_s: float | None = None
    start_iterations: int = 0
    batch: int = 8
    lr: float = 1e-3
    seed: int = 20261121
    phantoms: int = 20
    threads: int = 2
    device: str = "cpu"
    workers: int = 0
    export_onnx: bool = True
    init: Path | None = None
    context: int = 0
    channels: tuple[int, ...] | None = None
    thickness_mm: tuple[float, float] = (1.0, 5.0)
    exact_planes: bool = False
    end_plane_share: float = 0.0
    acquired_share: float = 0.0
    intensity_field_sd: float = 0.0
    slab_labels: str = "union"
    disc_rim: str = "strict"
    open_body_rim: tuple[str, ...] = ()
    nearest_slice_labels: tuple[str, ...] = ()
    s1_teacher: Path | None = None
    s1_teacher_datasets: tuple[str, ...] | None = None
    balance_datasets: bool = False
    global_context: bool = False
    train_only_context: bool = False
    bf16: bool = False

    def __post_init__(self) -> None:
        if (self.data is None) == (self.cases is None):
            raise ValueError("give the shared data (--data) or a packed cases file (--cases), not both")
        if self.iterations < 1 or self.batch < 1 or self.phantoms < 0 or self.workers < 0 or self.context < 0:
            raise ValueError("iterations and batch must be positive; phantoms, workers and context not negative")
        if self.slab_labels not in ("union", "centre", "majority"):
            raise ValueError(f"slab_labels {self.slab_labels!r} is not union, centre or majority")
        if self.disc_rim not in DISC_RIMS:
            raise ValueError(f"disc_rim {self.disc_rim!r} is not one of {', '.join(DISC_RIMS)}")
        if not set(self.open_body_rim) <= set(OPEN_BODY_RIM_DATASETS):
            raise ValueError(f"open_body_rim {self.open_body_rim} names a label set not in "
                             f"{', '.join(OPEN_BODY_RIM_DATASETS)}")
        for name in ("end_plane_share", "acquired_share", "intensity_field_sd"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} {getattr(self, name)} is not within 0-1")

    @classmethod
    def from_arguments(cls, args: argparse.Namespace) -> SagittalTrainingConfig:
        """The configuration of the ``fit`` command's arguments."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        values["export_onnx"] = not args.no_onnx
        for name in ("channels", "thickness_mm", "s1_teacher_datasets", "open_body_rim", "nearest_slice_labels"):
            if values.get(name) is not None:
                values[name] = tuple(values[name])
        return cls(**values)


def _batches(config: SagittalTrainingConfig, pools, rng: np.random.Generator, device: torch.device):
    """Training batches on ``device``: drawn in-process from ``rng`` (as
    every committed stage was), or with ``workers`` by a DataLoader."""
    options = dict(slab_labels=config.slab_labels, context=config.context, thickness_mm_range=config.thickness_mm,
                   end_plane_share=config.end_plane_share, exact_planes=config.exact_planes,
                   acquired_share=config.acquired_share, intensity_field_sd=config.intensity_field_sd)
    if config.workers:
        stream = SampleStream(pools, config.batch, config.seed, config.balance_datasets, **options)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=config.workers,
                                             pin_memory=device.type == "cuda", prefetch_factor=4,
                                             persistent_workers=True)
        for x, a in loader:
            yield x.to(device, non_blocking=True), a.to(device, non_blocking=True)
    while True:
        x, a = draw_batch(pools, config.batch, rng, config.balance_datasets, **options)
        yield x.to(device), a.to(device)


def fit(config: SagittalTrainingConfig) -> dict[str, Any]:
    """Train (and export) the sagittal network; returns the training record
    also written beside the model."""
    device = torch.device(config.device)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    # Some CUDA kernels (e.g. transposed convolutions' backward) have no
    # deterministic form; there the run warns instead of stopping.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    rng = np.random.default_rng(config.seed)

    t0 = time.time()
    stems, cases, phantoms = load_training_cases(config.data, config.cases, config.phantoms, max(1, config.workers),
                                                 config.s1_teacher, _listed(config.s1_teacher_datasets),
                                                 config.disc_rim, config.open_body_rim, config.nearest_slice_labels)
    log.info("cached %d real + %d phantom volumes in %.0f s", len(cases), len(phantoms), time.time() - t0)
    ivd = [c for c in cases if c.name.startswith("IVD")]
    vb = [c for c in cases if not c.name.startswith("IVD")]
    # Sampling weights: real vertebral-body data dominates; discs and S1 come
    # from the few disc volumes and the phantoms.
    pools = [(vb, 0.55), (ivd, 0.15), (phantoms, 0.30)]

    in_channels = 1 + 2 * config.context
    model = initial_model(config.init, in_channels, config.channels, config.global_context).to(device)
    opt = torch.optim.AdamW(trainable_parameters(model, config.train_only_context), lr=config.lr, weight_decay=1e-4)
    iterations = config.iterations
    start = _BUDGET_START_ITERATIONS if config.time_budget_s else config.start_iterations
    if start:  # OneCycle's starting rate until the schedule begins
        for group in opt.param_groups:
            group["lr"] = config.lr / 25
    sched = None if start else torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=iterations,
                                                                   pct_start=0.05)
    curve = []
    # A frozen network runs as at inference (no dropout); the context bias
    # has no dropout or normalisation, so its mode does not matter.
    model.train(not config.train_only_context)
    batches = _batches(config, pools, rng, device)
    config.out.mkdir(parents=True, exist_ok=True)
    t_train = time.time()
    it = 0
    while it < iterations:  # (a time budget fixes ``iterations`` at ``start``)
        it += 1
        x, a = next(batches)
        curve.append(optimisation_step(model, opt, sched, x, a, bf16=config.bf16))
        if it == start:
            if config.time_budget_s:
                per_it = (time.time() - t_train) / start
                iterations = start + max(1, int((config.time_budget_s - (time.time() - t0)) / per_it * 0.95))
                log.info("%.3f s per iteration: the run will take %d iterations", per_it, iterations)
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=iterations - start,
                                                        pct_start=0.05)
        if it % 50 == 0:
            log.info("iteration %d loss %.4f (%.0f s)", it, float(np.mean(curve[-50:])), time.time() - t0)
        if it % 500 == 0 or it == iterations:
            torch.save(model.state_dict(), config.out / "sagittal_spine.pt")
    model = model.to("cpu")
    if config.export_onnx:
        export_onnx(model, config.out / "sagittal_spine.onnx")
    record = {
        "seed": config.seed, "iterations": iterations, "start_iterations": start,
        "init": str(config.init) if config.init else None, "slab_labels": config.slab_labels,
        "disc_rim": config.disc_rim, "open_body_rim": list(config.open_body_rim),
        "nearest_slice_labels": list(config.nearest_slice_labels),
        "context_slices_each_side": config.context, "channels": list(model.channels),
        "thickness_mm": list(config.thickness_mm), "exact_planes": config.exact_planes,
        "end_plane_share": config.end_plane_share, "acquired_share": config.acquired_share,
        "intensity_field_sd": config.intensity_field_sd,
        "bf16_autocast": config.bf16,
        "balance_datasets": config.balance_datasets, "global_context": model.context is not None,
        "trained": "global context bias only" if config.train_only_context else "all weights",
        "batch": config.batch, "lr": config.lr, "device": str(device), "workers": config.workers,
        "time_budget_s": config.time_budget_s,
        "s1_teacher": str(config.s1_teacher) if config.s1_teacher else None,
        "s1_teacher_datasets": _listed(config.s1_teacher_datasets),
        "real_cases": str(config.cases) if config.cases else REAL_CASES_FROM_DATA,
        "patch_rows_cols": PATCH, "classes": CLASS_NAMES, "training_volumes": stems,
        "phantom_seeds": list(range(config.phantoms)), "split": SPLIT, "pool_weights": [w for _, w in pools],
        "loss_every_50": [float(np.mean(curve[i : i + 50])) for i in range(0, len(curve), 50)],
        "seconds": time.time() - t0, "torch": torch.__version__,
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
    (config.out / "sagittal_spine.training.json").write_text(json.dumps(record, indent=1))
    log.info("wrote %s", config.out)
    return record


def _listed(values: tuple[str, ...] | None) -> list[str] | None:
    return list(values) if values is not None else None


def _fit_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--data", type=Path, help="folder with the shared lumbar_mri NIfTI files")
    ap.add_argument("--cases", type=Path, help="train on the real cases of a 'pack' file instead of --data")
    ap.add_argument("--out", type=Path, default=Path("inference/models"))
    ap.add_argument("--iterations", type=int, default=3500)
    ap.add_argument("--time-budget-s", type=float,
                    help=f"fit the run to this many seconds: after {_BUDGET_START_ITERATIONS} iterations at the starting "
                         "rate the run's length is fixed from their speed (recorded under 'iterations'; rerun with "
                         f"--iterations N --start-iterations {_BUDGET_START_ITERATIONS}); overrides --iterations")
    ap.add_argument("--start-iterations", type=int, default=0,
                    help="iterations at the starting rate (lr/25) before the one-cycle schedule over the rest")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=20261121)
    ap.add_argument("--phantoms", type=int, default=20, help="training phantom subjects (each T1 and T2)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device to train on: cpu, cuda, cuda:1…")
    ap.add_argument("--workers", type=int, default=0,
                    help="processes drawing the batches (0: in this process, as the committed stages did)")
    ap.add_argument("--no-onnx", action="store_true", help="keep the state dict only (then the 'export' command)")
    ap.add_argument("--init", type=Path,
                    help="start from this saved state dict or exported .onnx model (fine-tuning stage)")
    ap.add_argument("--context", type=int, default=0,
                    help="neighbouring slices on each side given as extra input channels (0: plain 2D); "
                         "an --init network taking fewer is widened, its new neighbours at zero weight")
    ap.add_argument("--channels", type=int, nargs="+", metavar="MAPS",
                    help=f"feature maps per level (default {' '.join(map(str, DEFAULT_CHANNELS))}); an --init network "
                         "with fewer is widened, its new maps feeding nothing until trained")
    ap.add_argument("--thickness-mm", type=float, nargs=2, default=(1.0, 5.0), metavar=("MIN", "MAX"),
                    help="range of the simulated slice thickness")
    ap.add_argument("--exact-planes", action="store_true",
                    help="average the thickness's own number of planes, even counts too (see sample_example)")
    ap.add_argument("--end-plane-share", type=float, default=0.0,
                    help="share of slabs centred on the lateral ends of the labelled structures")
    ap.add_argument("--acquired-share", type=float, default=0.0,
                    help="share of the examples from volumes interpolated from acquired slices that are those "
                         "slices as acquired, not averages of the interpolated planes (see sample_example)")
    ap.add_argument("--intensity-field", dest="intensity_field_sd", type=float, default=0.0, metavar="SD",
                    help="multiply each example by a smooth random field, receive-coil shading (standard "
                         "deviation of its log; see training_samples.intensity_field)")
    ap.add_argument("--slab-labels", choices=("union", "centre", "majority"), default="union",
                    help="thick-slab targets: the centre plane's classes, the union where the slab's planes "
                         "disagree, or the class of at least half of the planes (see slab_targets)")
    ap.add_argument("--disc-rim", choices=DISC_RIMS, default="strict",
                    help="the IVD volumes' dilated L1L2-L4L5 masks: as drawn (strict), eroded back to the "
                         "source's outlines (source-size), or open to disc, body or background on their rim "
                         "(uncertain); see ivd_discs")
    ap.add_argument("--open-body-rim", nargs="+", choices=OPEN_BODY_RIM_DATASETS, default=(),
                    help="label sets whose body and S1 outlines are left open by a pixel's rim, so that the "
                         "others set where a contour lies (training_data.with_open_body_rim)")
    ap.add_argument("--nearest-slice-labels", nargs="+", choices=("VB1", "VB2", "VB3"), default=(),
                    help="label sets whose planes between acquired slices take the nearer slice's outline, not "
                         "the union the source interpolated (training_data.with_nearest_slice_labels)")
    _teacher_arguments(ap)
    ap.add_argument("--balance-datasets", action="store_true",
                    help="draw each dataset (VB1, VB2, VB3) equally often, not each volume")
    ap.add_argument("--global-context", action="store_true",
                    help="give the network whole-slice class offsets (GlobalContextBias; zero until trained)")
    ap.add_argument("--train-only-context", action="store_true",
                    help="train the global context bias alone, the rest of the network frozen (in eval mode)")
    ap.add_argument("--bf16", action="store_true",
                    help="forward pass in bfloat16 autocast (fast on GPUs and on CPUs with AMX/AVX-512 BF16)")


def _teacher_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--s1-teacher", type=Path, metavar="MODEL",
                    help="take the unlabelled S1 of the real cases from this exported model's classes "
                         "(training_data.with_teacher_s1)")
    ap.add_argument("--s1-teacher-datasets", nargs="+", metavar="PREFIX",
                    help="only for the cases of these datasets (VB2, VB3 ...; default: all)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m spinegate.inference.training.train",
                                 description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    _fit_arguments(sub.add_parser("fit", help="train the network (and export it to ONNX)"))
    pack = sub.add_parser("pack", help="write the training cases of the shared data to one file (6-bit images, xz), "
                                       "for 'fit --cases' on a machine without the data")
    pack.add_argument("--data", type=Path, required=True, help="folder with the shared lumbar_mri NIfTI files")
    pack.add_argument("--out", type=Path, required=True, metavar="FILE")
    _teacher_arguments(pack)
    export = sub.add_parser("export", help="export a saved state dict (fit --no-onnx) to ONNX")
    export.add_argument("checkpoint", type=Path)
    export.add_argument("--out", type=Path, default=Path("inference/models"), help="folder for sagittal_spine.onnx")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.command == "export":
        model = from_weights(torch.load(args.checkpoint, map_location="cpu"), f"{args.checkpoint}")
        args.out.mkdir(parents=True, exist_ok=True)
        export_onnx(model, args.out / "sagittal_spine.onnx")
        return 0
    if args.command == "pack":
        cases = [load_real_case(args.data, s) for s in training_stems(args.data)]
        pack_cases(apply_s1_teacher(cases, args.s1_teacher, args.s1_teacher_datasets), args.out)
        log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)
        return 0
    try:
        config = SagittalTrainingConfig.from_arguments(args)
    except ValueError as e:
        ap.error(str(e))
    fit(config)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
