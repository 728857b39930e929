"""``spinegate train --reproduce-committed``: a committed model trained
again from the shared data. The sagittal one stage by stage, with the
settings its training record holds (``sagittal_spine.training.json``: ``stage_g1``,
``stage_g2``, ...), then validated as it was and compared with it.

The record is the recipe: each stage's configuration is built from the
recorded values (seed, iterations, the iterations at the starting rate,
batch, learning rate, batch workers, slab rules, context, feature maps,
bfloat16), the real cases are packed from the data as the record says they
were (6-bit images), and each stage continues the one before. The batches
repeat with the seed and the number of workers; on a GPU some kernels are
not deterministic, so the weights repeat closely rather than bit for bit
(the record's ``reproducibility``), which the validation comparison shows.
The axial one by its own single, CPU-deterministic command
(`reproduce_committed_axial`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from spinegate.inference.training.site_engines import committed_models
from spinegate.inference.training.train import REAL_CASES_FROM_DATA, SagittalTrainingConfig, fit
from spinegate.inference.training.training_data import SPLIT, load_real_case, pack_cases, training_stems

__all__ = ["committed_record", "stage_configs", "reproduce_committed", "reproduce_committed_axial"]

log = logging.getLogger(__name__)


def committed_record() -> dict[str, Any]:
    """The committed sagittal model's training record."""
    path = committed_models() / "sagittal_spine.training.json"
    return json.loads(path.read_text())


def stage_configs(record: dict[str, Any], data: Path, cases: Path, out: Path, device: str,
                  threads: int = 1) -> list[SagittalTrainingConfig]:
    """One `SagittalTrainingConfig` per recorded stage, in order: the first
    from scratch (or its recorded init), each later one from the state the
    stage before saved; the last exports the ONNX model into ``out``. A
    stage recorded as reading the shared data (``real_cases``) reads it
    from ``data`` at full precision, the others the 6-bit ``cases`` file;
    every stage trains on ``device``.

    Raises
    ------
    ValueError
        If the record has no stages or a stage lacks a setting.
    """
    names = sorted(k for k in record if k.startswith("stage_"))
    if not names:
        raise ValueError("the training record lists no stages (stage_*)")
    configs, previous = [], None
    for i, name in enumerate(names):
        s = record[name]
        last = i == len(names) - 1
        stage_out = out if last else out / name.removeprefix("stage_")
        from_data = str(s.get("real_cases", "")).startswith(REAL_CASES_FROM_DATA)
        try:
            configs.append(SagittalTrainingConfig(
                out=stage_out, data=data if from_data else None, cases=None if from_data else cases,
                iterations=int(s["iterations"]),
                start_iterations=int(s.get("start_iterations", 0)), batch=int(s["batch"]), lr=float(s["lr"]),
                seed=int(s["seed"]), phantoms=len(s["phantom_seeds"]) if "phantom_seeds" in s else 20,
                threads=threads, device=device, workers=int(s["workers"]), export_onnx=last,
                init=None if previous is None else previous.out / "sagittal_spine.pt",
                context=int(s["context_slices_each_side"]), channels=tuple(s["channels"]),
                thickness_mm=tuple(s["thickness_mm"]), exact_planes=bool(s["exact_planes"]),
                end_plane_share=float(s["end_plane_share"]), slab_labels=str(s["slab_labels"]),
                disc_rim=str(s.get("disc_rim", "strict")), open_body_rim=tuple(s.get("open_body_rim", ())),
                nearest_slice_labels=tuple(s.get("nearest_slice_labels", ())),
                acquired_share=float(s.get("acquired_share", 0.0)),
                intensity_field_sd=float(s.get("intensity_field_sd", 0.0)),
                balance_datasets=bool(s["balance_datasets"]), global_context=bool(s["global_context"]),
                train_only_context=s.get("trained") == "global context bias only", bf16=bool(s["bf16_autocast"])))
        except KeyError as e:
            raise ValueError(f"{name} of the training record lacks {e}") from None
        if i == 0 and s.get("init"):
            raise ValueError(f"{name} starts from {s['init']}, which the record does not rebuild")
        previous = configs[-1]
    return configs


def reproduce_committed(data: Path, out: Path, device: str = "cuda", threads: int = 1) -> dict[str, Any]:
    """Pack the data's training cases, train every stage, validate the
    result as the committed model was, and write ``reproduction.json``
    (committed against reproduced vertebral-body Dice per volume).

    Raises
    ------
    ValueError
        If ``data`` is not the shared data or its training volumes are not
        the record's.
    """
    from spinegate.inference.training import validation

    record = committed_record()
    if not (data / "manifest.csv").is_file():
        raise ValueError(f"{data} is not the shared lumbar_mri folder (no manifest.csv)")
    stems = training_stems(data)
    recorded = record[sorted(k for k in record if k.startswith("stage_"))[0]].get("training_volumes", stems)
    if stems != recorded:
        raise ValueError(f"{data} holds other training volumes than the committed model's record "
                         f"(missing {sorted(set(recorded) - set(stems))}, extra {sorted(set(stems) - set(recorded))})")
    out.mkdir(parents=True, exist_ok=True)
    cases = out / "cases.xz"
    if not cases.exists():  # the stages recorded as trained on packed cases read these
        pack_cases([load_real_case(data, s) for s in stems], cases)
    for config in stage_configs(record, data, cases, out, device, threads):
        log.info("training stage into %s (%d iterations)", config.out, config.iterations)
        fit(config)
    validation.main(["--data", str(data), "--models", str(out)])
    committed = json.loads((committed_models() / "sagittal_spine.validation.json").read_text())
    reproduced = json.loads((out / "sagittal_spine.validation.json").read_text())
    comparison = {
        "validation_volumes": SPLIT["validation"],
        "committed_vertebral_body_mean_dice": committed["vertebral_body_mean_dice"],
        "reproduced_vertebral_body_mean_dice": reproduced["vertebral_body_mean_dice"],
        "per_volume": {stem: {"committed": committed["vertebral_body_mean_dice_per_volume"].get(stem), "reproduced": v}
                       for stem, v in reproduced["vertebral_body_mean_dice_per_volume"].items()},
        "device": device,
    }
    (out / "reproduction.json").write_text(json.dumps(comparison, indent=1))
    return comparison


def reproduce_committed_axial(data: Path, out: Path, threads: int = 2) -> dict[str, Any]:
    """The committed axial model trained again from the shared data by its
    one command (`train_axial`: phantom base, the real subject's three
    cross-validation folds, the final model, its area calibration and INT8
    version; deterministic on the CPU, about 2 h on 2 cores), validated as it
    was; writes ``reproduction.json`` (committed against reproduced pooled
    real-subject and phantom Dice, and whether the model file is the same).

    Raises
    ------
    ValueError
        If ``data`` is not the shared axial_muscle folder.
    """
    from spinegate.inference.training import axial_validation, train_axial

    if not (data / "TUM01_water_image.nii.gz").is_file():
        raise ValueError(f"{data} is not the shared axial_muscle folder (no TUM01_water_image.nii.gz)")
    out.mkdir(parents=True, exist_ok=True)
    train_axial.main(["--data", str(data), "--out", str(out), "--threads", str(threads)])
    axial_validation.main(["--data", str(data), "--out", str(out)])
    committed = json.loads((committed_models() / "axial_muscle.validation.json").read_text())
    reproduced = json.loads((out / "axial_muscle.validation.json").read_text())
    comparison = {
        "committed_real_mean_pooled_dice": committed["real_subject_cross_validation"].get("mean_pooled_dice"),
        "reproduced_real_mean_pooled_dice": reproduced["real_subject_cross_validation"].get("mean_pooled_dice"),
        "committed_real_pooled_dice": committed["real_subject_cross_validation"].get("pooled_dice"),
        "reproduced_real_pooled_dice": reproduced["real_subject_cross_validation"].get("pooled_dice"),
        "committed_phantom_mean_dice": committed["held_out_phantoms"]["mean_dice"],
        "reproduced_phantom_mean_dice": reproduced["held_out_phantoms"]["mean_dice"],
        "same_model_file": committed["model_sha256"] == reproduced["model_sha256"],
    }
    (out / "reproduction.json").write_text(json.dumps(comparison, indent=1))
    return comparison
