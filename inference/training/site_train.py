"""``spinegate train``: the sagittal network trained (or fine-tuned) on a
site's labelled images, validated on its held-out subjects, exported to
ONNX with its model card.

One seed drives numpy (the batch sampler), torch and the subject split; a
checkpoint (network, optimiser, schedule, both generators' states, the
loss curve) is written every ``checkpoint_every`` iterations, and
``resume`` continues from it to the same weights an uninterrupted run
reaches (CPU; on a GPU some kernels are not deterministic). The partial
labels of `site_data` train through the marginal loss of `train`.

Writes into ``out``: ``sagittal_spine.onnx``,
``sagittal_spine.training.json`` (every setting, the split, the loss
curve), ``sagittal_spine.validation.json`` (Dice per structure and
subject; when it started from an exported model, that model's too), ``MODEL_CARD.md`` and ``checkpoint.pt``; with the committed axial
model's files beside them, ``out`` is a whole ``inference.model_dir``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from spinegate.dicom_io.label_files import LabelSet, structure_named
from spinegate.inference.engine import SagittalSpineEngine
from spinegate.inference.training.site_data import (SpecError, TrainingSpec, label_table_of, load_site_case,
                                                    split_by_subject)
from spinegate.inference.training.train import export_onnx, initial_model, optimisation_step
from spinegate.inference.training.training_data import CLASS_NAMES, TrainingCase, make_phantom_case
from spinegate.inference.training.training_samples import PATCH, draw_batch
from spinegate.inference.training.validation import dice
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.volume import SeriesVolume

__all__ = ["train_site", "CHECKPOINT"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
MODEL = "sagittal_spine"
# What the service loads of the axial model (the folds are cross-validation
# records only); copied so that ``out`` is a whole ``inference.model_dir``.
_AXIAL_FILES = ("axial_muscle.onnx", "axial_muscle.training.json", "axial_muscle.calibration.json",
                "axial_muscle.int8.onnx", "axial_muscle.int8.quantization.json", "axial_muscle.int8.calibration.json")


def _committed_models() -> Path:
    return Path(str(resources.files("spinegate.inference") / "models"))


def _with_committed_axial_model(out: Path) -> None:
    for name in _AXIAL_FILES:
        if (_committed_models() / name).exists():
            shutil.copyfile(_committed_models() / name, out / name)


def _package_version() -> str:
    try:
        return metadata.version("spinegate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _init_path(spec: TrainingSpec) -> Path | None:
    if spec.init == "none":
        return None
    if spec.init == "committed":
        return _committed_models() / f"{MODEL}.onnx"
    return Path(spec.init)


def _validate(model_dir: Path, cases: list[tuple[str, SeriesVolume, LabelSet]]) -> dict[str, Any]:
    """Dice per structure of a model folder's sagittal model on each
    held-out case."""
    engine = SagittalSpineEngine(model_dir)
    rows = []
    for name, volume, labels in cases:
        named = engine.segment(volume).named.label_map
        for structure_name, truth in labels.masks.items():
            s = structure_named(structure_name)
            rows.append({"case": name, "structure": s.display_name, "kind": s.kind.value,
                         "dice": round(dice(named == s.label, truth), 4)})
    by_structure: dict[str, list[float]] = {}
    for r in rows:
        by_structure.setdefault(r["structure"], []).append(r["dice"])
    kinds: dict[str, list[float]] = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r["dice"])

    def summary(groups: dict[str, list[float]]) -> dict[str, dict[str, float]]:
        return {k: {"n": len(v), "mean_dice": round(float(np.mean(v)), 4)} for k, v in groups.items()}

    return {"per_case": rows, "per_structure": summary(by_structure), "per_kind": summary(kinds)}


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _model_card(spec: TrainingSpec, record: dict[str, Any], validation: dict[str, Any]) -> str:
    lines = [
        "# Model card: sagittal_spine (site-trained)", "",
        f"Trained with `spinegate train` (spinegate {record['software_version']}) on {record['trained_at']}; "
        f"{'fine-tuned from ' + record['init'] if record['init'] else 'trained from scratch'}.", "",
        "## Data", "",
        f"- Training: {_count(record['split']['training'], 'case')} of "
        f"{_count(record['split']['training_subjects'], 'subject')}; "
        + (f"{spec.phantoms} phantom subjects (T1 and T2) in {spec.phantom_share:.0%} of the examples."
           if spec.phantoms else "no phantoms."),
        f"- Validation (held out by subject): {_count(record['split']['validation'], 'case')} of "
        f"{_count(record['split']['validation_subjects'], 'subject')}: "
        f"{', '.join(record['split']['validation_subjects'])}.",
        f"- Labelled classes per case: {', '.join(f'{c}: ' + '/'.join(v) for c, v in record['labelled'].items())}.",
        "", "## Training", "",
        f"Seed {spec.seed}, {record['iterations']} iterations of {spec.batch} patches {PATCH[0]}×{PATCH[1]} at "
        f"1.25 mm, AdamW lr {spec.lr} (one-cycle), slab thickness {spec.thickness_mm[0]:g}–{spec.thickness_mm[1]:g} "
        f"mm ({'the thickness’s own number of planes' if spec.exact_planes else 'odd plane counts'}, "
        f"{spec.slab_labels} slab targets), {spec.context} neighbouring slice(s) each side as input, partial-label "
        f"marginal loss; {record['seconds']:.0f} s on {record['device']}.", "",
        "## Validation: Dice per structure (held-out subjects)", "",
    ]
    before = validation.get("before_training")
    if before is not None:
        lines += ["The model it started from, on the same cases, in the last column.", ""]
    for group, title in (("per_structure", "structure"), ("per_kind", "kind")):
        lines += [f"| {title} | n | mean Dice |" + (" before training |" if before else ""),
                  "|---|---|---|" + ("---|" if before else "")]
        for k, v in sorted(validation[group].items()):
            was = before[group].get(k, {}).get("mean_dice") if before else None
            lines.append(f"| {k} | {v['n']} | {v['mean_dice']:.3f} |"
                         + ("" if not before else f" {was:.3f} |" if was is not None else " – |"))
        lines.append("")
    lines.pop()
    lines += ["", "## Intended use and limits", "",
              "Research measurements of lumbar vertebral bodies and discs on sagittal T1/T2 MRI like the training "
              "images (their scanners, contrasts and slice thickness); not a medical device. Validated on "
              f"{_count(record['split']['validation_subjects'], 'held-out subject')} only: a small validation set "
              "gives a wide uncertainty. Check the levels' names and the measurements on new data "
              "(`spinegate evaluate`) before relying on them. The axial (muscle) model in this folder is the "
              "committed one, unchanged (docs/models.md).", ""]
    return "\n".join(lines)


def train_site(spec: TrainingSpec, out: Path, resume: bool = False, device: str = "cpu", threads: int = 2,
               progress: bool = False, stop_after: int | None = None,
               on_iteration: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train on the spec's cases, validate, export; returns the training record.

    ``stop_after`` ends the run after that iteration with its checkpoint
    written (an interruption, for tests and time-limited machines).

    Raises
    ------
    SpecError
        If a case cannot be read.
    ValueError
        If ``resume`` finds a checkpoint of other settings.
    """
    t0 = time.time()
    torch.manual_seed(spec.seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    rng = np.random.default_rng(spec.seed)
    table = label_table_of(spec)
    train_cases, validation_cases = split_by_subject(spec)
    training: list[TrainingCase] = []
    labelled: dict[str, list[str]] = {}
    for c in train_cases:
        case, _, labels = load_site_case(c, table)
        training.append(case)
        labelled[case.name] = sorted({structure_named(n).kind.value for n in labels.masks})
    held_out = []
    for c in validation_cases:
        case, volume, labels = load_site_case(c, table)
        held_out.append((case.name, volume, labels))
    phantoms = [make_phantom_case(seed, w) for seed in range(spec.phantoms) for w in (Weighting.T1, Weighting.T2)]
    pools = [(training, 1.0 - spec.phantom_share)] + ([(phantoms, spec.phantom_share)] if phantoms else [])
    init = _init_path(spec)
    try:
        model = initial_model(init, 1 + 2 * spec.context, spec.channels).to(device)
    except SystemExit as e:  # the shared-data command's way of refusing an init model
        raise SpecError(f"init: {e}") from None
    except Exception as e:  # onnx/torch raise many kinds on a file that is not a model
        raise SpecError(f"init: {init} is not a readable model ({type(e).__name__}: {e})") from None
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.iterations, pct_start=0.05)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, start, curve = out / CHECKPOINT, 0, []
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=False)
        if state["spec"] != spec.digest():
            raise ValueError(f"{checkpoint} belongs to a run with other settings; remove it or use those settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimiser"])
        sched.load_state_dict(state["schedule"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])
        start, curve = state["iteration"], state["curve"]
        log.info("resumed from %s at iteration %d", checkpoint, start)
    model.train()
    options = dict(thickness_mm_range=spec.thickness_mm, context=spec.context, slab_labels=spec.slab_labels,
                   exact_planes=spec.exact_planes)
    bar = tqdm(total=spec.iterations, initial=start, disable=not progress, unit="it", desc="training")
    for it in range(start + 1, spec.iterations + 1):
        x, allowed = draw_batch(pools, spec.batch, rng, **options)
        curve.append(optimisation_step(model, opt, sched, x.to(device), allowed.to(device), bf16=spec.bf16))
        bar.update(1)
        bar.set_postfix(loss=f"{np.mean(curve[-20:]):.3f}")
        if on_iteration is not None:
            on_iteration(it, curve[-1])
        if it % spec.checkpoint_every == 0 or it == spec.iterations or it == stop_after:
            torch.save({"spec": spec.digest(), "iteration": it, "model": model.state_dict(),
                        "optimiser": opt.state_dict(), "schedule": sched.state_dict(),
                        "numpy_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(), "curve": curve},
                       checkpoint)
        if it == stop_after:
            bar.close()
            return {"stopped_at": it}
    bar.close()
    model = model.to("cpu")
    export_onnx(model, out / f"{MODEL}.onnx")
    _with_committed_axial_model(out)
    record = {
        "version": f"site-seed{spec.seed}", "seed": spec.seed, "iterations": spec.iterations, "batch": spec.batch,
        "lr": spec.lr, "init": str(init) if init else None, "phantoms": spec.phantoms,
        "phantom_share": spec.phantom_share, "thickness_mm": list(spec.thickness_mm), "classes": CLASS_NAMES,
        "context_slices_each_side": spec.context, "channels": list(model.channels), "slab_labels": spec.slab_labels,
        "exact_planes": spec.exact_planes, "bf16_autocast": spec.bf16,
        "split": {"training": [c.name for c in training], "validation": [n for n, _, _ in held_out],
                  "training_subjects": sorted({c.subject for c in train_cases}),
                  "validation_subjects": sorted({c.subject for c in validation_cases})},
        "labelled": labelled, "loss_every_50": [float(np.mean(curve[i:i + 50])) for i in range(0, len(curve), 50)],
        "device": device, "seconds": time.time() - t0, "torch": torch.__version__,
        "software_version": _package_version(),
        "trained_at": time.strftime("%Y-%m-%d"), "spec": spec.model_dump(mode="json"),
    }
    (out / f"{MODEL}.training.json").write_text(json.dumps(record, indent=1))
    validation = _validate(out, held_out)
    if init is not None and init.name == f"{MODEL}.onnx":  # what the training changed, on the same cases
        validation["before_training"] = {k: v for k, v in _validate(init.parent, held_out).items() if k != "per_case"}
    (out / f"{MODEL}.validation.json").write_text(json.dumps(validation, indent=1))
    (out / "MODEL_CARD.md").write_text(_model_card(spec, record, validation))
    log.info("trained %s in %.0f s; validation Dice by kind %s", out, time.time() - t0, validation["per_kind"])
    return record
