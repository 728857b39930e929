"""What ``spinegate train`` does differently per engine: how a case is
read, which phantoms join it, the network it starts from, how a batch is
drawn, how the result is validated, and what else the model folder needs.

The sagittal recipe is the committed sagittal model's (2.5D input, thick
slabs, the marginal partial-label loss); the axial one is the committed
axial model's fine-tuning step (`train_axial`: single slices at 1 mm,
rotation/scale/contrast augmentation without left-right flips).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.label_files import LabelSet, structure_named
from spinegate.dicom_io.levels import SpineStructure
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES
from spinegate.inference.axial_engine import AxialMuscleEngine
from spinegate.inference.engine import SagittalSpineEngine
from spinegate.inference.training import train_axial
from spinegate.inference.training.axial_data import PHANTOM_CACHE
from spinegate.inference.training.network import ResidualUNet2D, from_weights, load_from_onnx
from spinegate.inference.training.site_data import (SpecError, TrainingSpec, axial_class, load_axial_site_case,
                                                    load_site_case)
from spinegate.inference.training.train import initial_model
from spinegate.inference.training.training_data import CLASS_NAMES, make_phantom_case
from spinegate.inference.training.training_samples import PATCH, draw_batch
from spinegate.inference.training.validation import dice

__all__ = ["EngineRecipe", "RECIPES", "committed_models", "HeldOut"]

HeldOut = list[tuple[str, SeriesVolume, LabelSet]]


def committed_models() -> Path:
    """The folder of the models shipped with spinegate."""
    return Path(str(resources.files("spinegate.inference") / "models"))


@dataclass(frozen=True)
class EngineRecipe:
    """One engine's part of ``spinegate train`` (see the module docstring)."""

    model_name: str
    classes: tuple[str, ...]
    load: Callable[..., tuple[Any, SeriesVolume, LabelSet]]
    phantoms: Callable[[TrainingSpec], list[Any]]
    fresh_model: Callable[[TrainingSpec], ResidualUNet2D]
    draw: Callable[[list[tuple[list[Any], float]], TrainingSpec, np.random.Generator],
                   tuple[torch.Tensor, torch.Tensor]]
    segment: Callable[[Path, SeriesVolume], np.ndarray]  # model folder, volume -> class or label map
    # that map and the labels -> (structure, kind, true mask, predicted mask) per structure compared
    compared: Callable[[np.ndarray, LabelSet], list[tuple[str, str, np.ndarray, np.ndarray]]]
    other_model_files: tuple[str, ...]  # the other engine's files, copied so the folder is whole
    describe: Callable[[TrainingSpec], str]  # the model card's training paragraph

    def initial_model(self, init: Path | None, spec: TrainingSpec) -> ResidualUNet2D:
        """The network the run starts from.

        Raises
        ------
        SpecError
            If ``init`` is not a model of this engine.
        """
        try:
            if init is None:
                return self.fresh_model(spec)
            if self.model_name == "sagittal_spine":  # may widen an init model to the spec's context and maps
                model = initial_model(init, 1 + 2 * spec.context, spec.channels)
            else:
                model = load_from_onnx(init) if init.suffix == ".onnx" else from_weights(torch.load(init), str(init))
        except SystemExit as e:  # the shared-data command's way of refusing an init model
            raise SpecError(f"init: {e}") from None
        except Exception as e:  # onnx/torch raise many kinds on a file that is not a model
            raise SpecError(f"init: {init} is not a readable model ({type(e).__name__}: {e})") from None
        if model.head.out_channels != len(self.classes):
            raise SpecError(f"init: {init} has {model.head.out_channels} output classes, the {self.model_name} "
                            f"model {len(self.classes)}")
        return model

    def validate(self, model_dir: Path, cases: HeldOut) -> dict[str, Any]:
        """Dice per structure of a model folder's model on each held-out
        case (on the slices the case labels)."""
        rows = []
        for name, volume, labels in cases:
            result = self.segment(model_dir, volume)
            labelled = np.zeros(volume.array.shape[0], bool)
            for mask in labels.masks.values():
                labelled |= mask.any(axis=(1, 2))
            for structure, kind, truth, predicted in self.compared(result, labels):
                rows.append({"case": name, "structure": structure, "kind": kind,
                             "dice": round(dice(predicted[labelled], truth[labelled]), 4)})

        def summary(key: str) -> dict[str, dict[str, float]]:
            groups: dict[str, list[float]] = {}
            for r in rows:
                groups.setdefault(r[key], []).append(r["dice"])
            return {k: {"n": len(v), "mean_dice": round(float(np.mean(v)), 4)} for k, v in groups.items()}

        return {"per_case": rows, "per_structure": summary("structure"), "per_kind": summary("kind")}

    def copy_other_models(self, out: Path) -> None:
        for name in self.other_model_files:
            if (committed_models() / name).exists():
                shutil.copyfile(committed_models() / name, out / name)


def _sagittal_draw(pools, spec: TrainingSpec, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    return draw_batch(pools, spec.batch, rng, thickness_mm_range=spec.thickness_mm, context=spec.context,
                      slab_labels=spec.slab_labels, exact_planes=spec.exact_planes)


def _axial_draw(pools, spec: TrainingSpec, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weights = np.array([w for _, w in pools]) / sum(w for _, w in pools)
    xs, als = [], []
    for _ in range(spec.batch):
        pool = pools[rng.choice(len(pools), p=weights)][0]
        x, a = train_axial.sample(pool[rng.integers(len(pool))], rng)
        xs.append(x)
        als.append(a)
    return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(als)).long()


def _sagittal_compared(label_map: np.ndarray, labels: LabelSet) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    out = []
    for name, truth in labels.masks.items():
        s = structure_named(name)
        assert isinstance(s, SpineStructure)  # the sagittal cases keep spine structures only
        out.append((s.display_name, s.kind.value, truth, label_map == s.label))
    return out


def _axial_compared(classes: np.ndarray, labels: LabelSet) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """Muscles one by one; vertebral bodies and discs as the axial network
    sees them, one class each whatever their level."""
    out: list[tuple[str, str, np.ndarray, np.ndarray]] = []
    spine: dict[int, tuple[str, np.ndarray]] = {}
    for name, truth in labels.masks.items():
        s = structure_named(name)
        c = axial_class(s)
        if isinstance(s, SpineStructure):
            spine[c] = (s.kind.value, spine[c][1] | truth if c in spine else truth)
        else:
            out.append((s.display_name, "muscle", truth, classes == c))
    out += [(kind, kind, truth, classes == c) for c, (kind, truth) in sorted(spine.items())]
    return out


def _sagittal_card(spec: TrainingSpec) -> str:
    return (f"{spec.batch} patches {PATCH[0]}×{PATCH[1]} at 1.25 mm per iteration, AdamW lr {spec.lr} (one-cycle), "
            f"slab thickness {spec.thickness_mm[0]:g}–{spec.thickness_mm[1]:g} mm "
            f"({'the thickness’s own number of planes' if spec.exact_planes else 'odd plane counts'}, "
            f"{spec.slab_labels} slab targets), {spec.context} neighbouring slice(s) each side as input, "
            "partial-label marginal loss")


def _axial_card(spec: TrainingSpec) -> str:
    return (f"{spec.batch} axial patches {train_axial.PATCH[0]}×{train_axial.PATCH[1]} at 1 mm per iteration, AdamW "
            f"lr {spec.lr} (one-cycle), rotation ±10°, scale 0.85–1.15, blur, gamma, gain and noise (no left-right "
            "flip), partial-label marginal loss; "
            + ("area calibration and INT8 model fitted afterwards" if spec.calibrate else
               "no area calibration and no INT8 model (run with inference.axial_precision: fp32)"))


RECIPES = {
    "sagittal": EngineRecipe(
        model_name="sagittal_spine", classes=CLASS_NAMES, load=load_site_case,
        phantoms=lambda spec: [make_phantom_case(seed, w) for seed in range(spec.phantoms)
                               for w in (Weighting.T1, Weighting.T2)],
        fresh_model=lambda spec: initial_model(None, 1 + 2 * spec.context, spec.channels),
        draw=_sagittal_draw,
        segment=lambda model_dir, volume: SagittalSpineEngine(model_dir).segment(volume).named.label_map,
        compared=_sagittal_compared,
        other_model_files=("axial_muscle.onnx", "axial_muscle.training.json", "axial_muscle.calibration.json",
                           "axial_muscle.int8.onnx", "axial_muscle.int8.quantization.json",
                           "axial_muscle.int8.calibration.json"),
        describe=_sagittal_card),
    "axial": EngineRecipe(
        model_name="axial_muscle", classes=AXIAL_CLASS_NAMES, load=load_axial_site_case,
        phantoms=lambda spec: [train_axial.make_phantom_case(seed, w, PHANTOM_CACHE) for seed in range(spec.phantoms)
                               for w in train_axial.CONTRASTS],
        fresh_model=lambda spec: ResidualUNet2D(len(AXIAL_CLASS_NAMES), channels=train_axial.CHANNELS),
        draw=_axial_draw,
        # Uncalibrated, so that before and after compare the networks alone.
        segment=lambda model_dir, volume: AxialMuscleEngine(model_dir, calibrated=False).segment(volume).classes,
        compared=_axial_compared,
        other_model_files=("sagittal_spine.onnx", "sagittal_spine.training.json",
                           "sagittal_spine.measurement_accuracy.json"),
        describe=_axial_card),
}
