"""``spinegate train``: the sagittal or the axial network trained (or
fine-tuned) on a site's labelled images, validated on its held-out
subjects, exported to ONNX with its model card.

One seed drives numpy (the batch sampler), torch and the subject split; a
checkpoint (network, optimiser, schedule, both generators' states, the
loss curve) is written every ``checkpoint_every`` iterations, and
``resume`` continues from it to the same weights an uninterrupted run
reaches (CPU: bit for bit with one thread, within a float's last bit with more; on a
GPU some kernels are not deterministic). The partial
labels of `site_data` train through the marginal loss of `train`; what
differs per engine is in `site_engines`.

Writes into ``out``: ``<model>.onnx``, ``<model>.training.json`` (every
setting, the split, the loss curve), ``<model>.validation.json`` (Dice per
structure and subject; when it started from an exported model, that
model's too), ``MODEL_CARD.md`` and ``checkpoint.pt``; with the other
engine's committed files beside them, ``out`` is a whole
``inference.model_dir``.
"""
from __future__ import annotations

import json
import logging
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from spinegate.dicom_io.label_files import structure_named
from spinegate.dicom_io.levels import SpineStructure
from spinegate.inference.training.site_data import TrainingSpec, label_table_of, split_by_subject
from spinegate.inference.training.site_engines import RECIPES, EngineRecipe, HeldOut, committed_models
from spinegate.inference.training.training_steps import export_onnx, optimisation_step

__all__ = ["train_site", "one_cycle", "CHECKPOINT"]

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


def _package_version() -> str:
    try:
        return metadata.version("spinegate")
    except metadata.PackageNotFoundError:
        return "unknown"


def _init_path(spec: TrainingSpec, recipe: EngineRecipe) -> Path | None:
    if spec.init == "none":
        return None
    if spec.init == "committed":
        return committed_models() / f"{recipe.model_name}.onnx"
    return Path(spec.init)


def _count(items: list[str], noun: str) -> str:
    return f"{len(items)} {noun}{'' if len(items) == 1 else 's'}"


def _model_card(spec: TrainingSpec, recipe: EngineRecipe, record: dict[str, Any], validation: dict[str, Any]) -> str:
    phantoms = {"sagittal": "T1 and T2", "axial": "T1, T2 and Dixon water"}[spec.engine]
    what = {"sagittal": "lumbar vertebral bodies and discs on sagittal T1/T2 MRI",
            "axial": "paraspinal muscles (and vertebral bodies and discs) on axial lumbar MRI"}[spec.engine]
    other = {"sagittal": "axial (muscle)", "axial": "sagittal (vertebral body and disc)"}[spec.engine]
    lines = [
        f"# Model card: {recipe.model_name} (site-trained)", "",
        f"Trained with `spinegate train` (spinegate {record['software_version']}) on {record['trained_at']}; "
        f"{'fine-tuned from ' + record['init'] if record['init'] else 'trained from scratch'}.", "",
        "## Data", "",
        f"- Training: {_count(record['split']['training'], 'case')} of "
        f"{_count(record['split']['training_subjects'], 'subject')}; "
        + (f"{spec.phantoms} phantom subjects ({phantoms}) in {spec.phantom_share:.0%} of the examples."
           if spec.phantoms else "no phantoms."),
        f"- Validation (held out by subject): {_count(record['split']['validation'], 'case')} of "
        f"{_count(record['split']['validation_subjects'], 'subject')}: "
        f"{', '.join(record['split']['validation_subjects'])}.",
        f"- Labelled classes per case: {', '.join(f'{c}: ' + '/'.join(v) for c, v in record['labelled'].items())}.",
        "", "## Training", "",
        f"Seed {spec.seed}, {record['iterations']} iterations: {recipe.describe(spec)}; {record['seconds']:.0f} s on "
        f"{record['device']}.", "",
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
              f"Research measurements of {what} like the training "
              "images (their scanners, contrasts and slice thickness); not a medical device. Validated on "
              f"{_count(record['split']['validation_subjects'], 'held-out subject')} only: a small validation set "
              "gives a wide uncertainty. Check the levels' names and the measurements on new data "
              f"(`spinegate evaluate`) before relying on them. The {other} model in this folder is the "
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
        If a case or the init model cannot be read.
    ValueError
        If ``resume`` finds a checkpoint of other settings.
    """
    t0 = time.time()
    recipe = RECIPES[spec.engine]
    torch.manual_seed(spec.seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=device != "cpu")
    rng = np.random.default_rng(spec.seed)
    table = label_table_of(spec)
    train_cases, validation_cases = split_by_subject(spec)
    training, labelled = [], {}
    for c in train_cases:
        case, _, labels = recipe.load(c, table)
        training.append(case)
        labelled[case.name] = sorted({_kind(n) for n in labels.masks})
    held_out: HeldOut = []
    for c in validation_cases:
        case, volume, labels = recipe.load(c, table)
        held_out.append((case.name, volume, labels))
    phantoms = recipe.phantoms(spec)
    pools = [(training, 1.0 - spec.phantom_share)] + ([(phantoms, spec.phantom_share)] if phantoms else [])
    init = _init_path(spec, recipe)
    model = recipe.initial_model(init, spec).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=1e-4)
    sched = one_cycle(opt, spec.lr, spec.iterations)
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
    bar = tqdm(total=spec.iterations, initial=start, disable=not progress, unit="it", desc="training")
    for it in range(start + 1, spec.iterations + 1):
        x, allowed = recipe.draw(pools, spec, rng)
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
    name = recipe.model_name
    export_onnx(model, out / f"{name}.onnx")
    recipe.copy_other_models(out)
    record = {
        "version": f"site-seed{spec.seed}", "engine": spec.engine, "model": name, "seed": spec.seed,
        "iterations": spec.iterations, "batch": spec.batch, "lr": spec.lr, "init": str(init) if init else None,
        "phantoms": spec.phantoms, "phantom_share": spec.phantom_share, "classes": recipe.classes,
        "channels": list(model.channels),
        **({"thickness_mm": list(spec.thickness_mm), "context_slices_each_side": spec.context,
            "slab_labels": spec.slab_labels, "exact_planes": spec.exact_planes, "bf16_autocast": spec.bf16}
           if spec.engine == "sagittal" else
           # The INT8 model's calibration tiles come from these phantoms (`quantize`): the run's own, or four.
           {"calibrated": spec.calibrate, "phantom_seeds": list(range(spec.phantoms or 4))}),
        "split": {"training": [c.name for c in training], "validation": [n for n, _, _ in held_out],
                  "training_subjects": sorted({c.subject for c in train_cases}),
                  "validation_subjects": sorted({c.subject for c in validation_cases})},
        "labelled": labelled, "loss_every_50": [float(np.mean(curve[i:i + 50])) for i in range(0, len(curve), 50)],
        "device": device, "seconds": time.time() - t0, "torch": torch.__version__,
        "software_version": _package_version(),
        "trained_at": time.strftime("%Y-%m-%d"), "spec": spec.model_dump(mode="json"),
    }
    (out / f"{name}.training.json").write_text(json.dumps(record, indent=1))
    if spec.engine == "axial" and spec.calibrate:  # the service runs the calibrated INT8 model by default
        from spinegate.inference.training.axial_data import PHANTOM_CACHE
        from spinegate.inference.training.quantize import build_int8
        from spinegate.inference.training.axial_calibration import calibrate

        calibrate(out, name)
        build_int8(out, name, PHANTOM_CACHE)
    validation = recipe.validate(out, held_out)
    if init is not None and init.name == f"{name}.onnx":  # what the training changed, on the same cases
        validation["before_training"] = {k: v for k, v in recipe.validate(init.parent, held_out).items()
                                         if k != "per_case"}
    (out / f"{name}.validation.json").write_text(json.dumps(validation, indent=1))
    (out / "MODEL_CARD.md").write_text(_model_card(spec, recipe, record, validation))
    log.info("trained %s in %.0f s; validation Dice by kind %s", out, time.time() - t0, validation["per_kind"])
    return record


def one_cycle(opt: torch.optim.Optimizer, lr: float, iterations: int) -> torch.optim.lr_scheduler.OneCycleLR:
    """The one-cycle schedule of the committed models (5 % warm-up), its
    warm-up kept at two steps or more: torch's schedule divides by zero
    when the warm-up ends on its first step (e.g. 20 iterations)."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=iterations,
                                               pct_start=min(0.3, max(0.05, 2.0 / iterations)))


def _kind(structure_name: str) -> str:
    s = structure_named(structure_name)
    return s.kind.value if isinstance(s, SpineStructure) else "muscle"
