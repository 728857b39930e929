"""``measurements.json`` (the documented schema ``spinegate.measurements/1``,
docs/outputs.md) from a study's result, and its plain-text table for the CLI.
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spinegate.dicom_io.levels import StructureKind
from spinegate.inference.level_naming import naming_unverified
from spinegate.dicom_io.measurements import MuscleLevelMeasurements, RelaxationSummary, StructureRadiomics
from spinegate.inference.engine import ModelInfo
from spinegate.service.review import review_fields, study_review
from spinegate.service.study_result import StudyResult
from spinegate.service.version import __version__

__all__ = ["SCHEMA", "measurements_document", "structure_table"]

SCHEMA = "spinegate.measurements/1"


def _rounded(v: float | None, digits: int) -> float | None:
    return None if v is None else round(float(v), digits)


def _muscle_entry(m: MuscleLevelMeasurements) -> dict[str, Any]:
    return {
        "muscle": m.muscle.name,
        "label": m.muscle.display_name,
        "level": m.level.name,
        "csa_midplane_cm2": _rounded(m.csa_midplane_cm2, 3),
        "csa_mean_cm2": round(m.csa_mean_cm2, 3),
        "n_slices": m.n_slices,
        "rcsa": _rounded(m.rcsa, 3),
        "fat_infiltration": _rounded(m.fat_infiltration, 4),
        "fat_fraction": _rounded(m.fat_fraction, 4),
        "volume_ml": _rounded(m.volume_ml, 2),
        "asymmetry": _rounded(m.asymmetry, 4),
        "centroid_lps_mm": [round(float(v), 2) for v in np.asarray(m.centroid_lps_mm)],
        "reference_slice_index": m.slice_index,
        "slices": [{"index": k, "csa_cm2": round(a, 3), "centroid_lps_mm": [round(v, 2) for v in c]}
                   for k, a, c in m.per_slice],
        "flags": list(m.flags),
    }


def _radiomics_entry(r: StructureRadiomics | None) -> dict[str, Any]:
    """``{"radiomics": ...}`` when the features were computed (``outputs.radiomics``), else nothing."""
    if r is None:
        return {}
    return {"radiomics": {"whole_structure": r.whole.as_dict(), "central_slice": r.central_slice.as_dict(),
                          "central_slice_index": r.central_slice_index, "shape": r.shape.as_dict()}}


def _t2_entry(t2: RelaxationSummary | None) -> dict[str, Any]:
    """``{"t2_ms": ...}`` for a disc fitted from several echo times, else nothing."""
    if t2 is None:
        return {}
    return {"t2_ms": {"mean": round(t2.mean_ms, 2), "median": round(t2.median_ms, 2), "sd": round(t2.sd_ms, 2),
                      "n_voxels": t2.n_voxels, "n_structure_voxels": t2.n_structure}}


def _with_review(entry: dict[str, Any], series_flags: Sequence[str]) -> dict[str, Any]:
    """The entry with whether it needs review and why (its own and its series' flags, as in the SR)."""
    return {**entry, **review_fields(list(entry["flags"]) + [f for f in series_flags if f not in entry["flags"]])}


def _model_entry(m: ModelInfo) -> dict[str, str]:
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "inference_backend": m.backend}


def measurements_document(result: StudyResult, models: Sequence[ModelInfo]) -> dict[str, Any]:
    """The documented ``measurements.json`` (see docs/outputs.md, "measurements.json");
    ``models`` are the `ModelInfo` of the engines used, the study's main one
    first."""
    series = []
    for o in result.series:
        entry: dict[str, Any] = {
            "series_instance_uid": o.series_uid,
            "description": o.description,
            "plane": o.series_class.plane.value,
            "weighting": o.series_class.weighting.value,
            "rule": o.decision.rule,
            "engine": o.decision.engine,
            "skipped_reason": o.decision.skipped_reason or None,
            "error": o.error or None,
            "flags": list(o.flags),
            # Why the level names rest on an assumption (null: anchored and counted).
            "levels_unverified": naming_unverified(o.flags) or None,
            # The sagittal series whose S1-anchored count named these levels (null: this series' own count).
            "levels_anchored_by_series": o.levels_anchored_by_series_uid or None,
            "seg_sop_instance_uid": o.seg_sop_instance_uid or None,
            "measurement_accuracy": dict(o.accuracy) or None,
            "timings_s": {k: round(v, 3) for k, v in o.timings_s.items()},
            "structures": [
                _with_review({
                    "level": m.structure.name,
                    "label": m.structure.display_name,
                    "kind": "disc" if m.structure.kind is StructureKind.DISC else "vertebral_body",
                    "volume_cm3": round(m.volume_cm3, 3),
                    "height_mm": round(m.height_mm, 2),
                    # The model's validation MAE for this kind of structure (null: not validated).
                    "height_mae_mm": o.accuracy.get(m.structure.kind.value, {}).get("height_mae_mm"),
                    "volume_mae_cm3": o.accuracy.get(m.structure.kind.value, {}).get("volume_mae_cm3"),
                    "centroid_lps_mm": [round(float(v), 2) for v in np.asarray(m.centroid_lps_mm)],
                    "flags": list(m.flags),
                    **_radiomics_entry(o.radiomics.get(m.structure.name)),
                    **_t2_entry(o.relaxation.get(m.structure.name)),
                }, o.flags)
                for m in o.measurements
            ],
            "muscles": [_with_review(_muscle_entry(m), o.flags) for m in o.muscles],
            "dixon_noise_sigma": _rounded(o.dixon_noise_sigma, 3),
        }
        if o.echo_times_ms:  # the stack was also imaged at several echo times
            entry["relaxometry"] = {"echo_times_ms": list(o.echo_times_ms),
                                    "t2_map_sop_instance_uid": o.t2_map_sop_instance_uid or None}
        series.append(entry)
    doc = {
        "schema": SCHEMA,
        "study_instance_uid": result.study_uid,
        "software_version": __version__,
        "model": _model_entry(models[0]) if models else None,
        "models": [_model_entry(m) for m in models],
        "series": series,
        "biomechanics": result.biomechanics,
        "outputs": [p.name for p in result.outputs],
        "timings_s": {k: round(v, 3) for k, v in result.timings_s.items()},
    }
    doc["review"] = study_review(doc)
    return doc


def structure_table(doc: dict[str, Any]) -> str:
    """A plain-text table of the measurements (for the CLI)."""
    lines = [f"{'series':<22} {'structure':<28} {'height mm':>9} {'volume cm3':>10}  centroid LPS mm"]
    for s in doc["series"]:
        for m in s["structures"]:
            c = ", ".join(f"{v:7.1f}" for v in m["centroid_lps_mm"])
            lines.append(f"{s['description'][:22]:<22} {m['label']:<28} {m['height_mm']:>9.1f} {m['volume_cm3']:>10.2f}  ({c})")
        if s["skipped_reason"] or s["error"]:
            lines.append(f"{s['description'][:22]:<22} skipped: {s['skipped_reason'] or s['error']}")
    muscles = [(s["description"], m) for s in doc["series"] for m in s.get("muscles") or ()]
    if muscles:
        lines.append(f"\n{'series':<22} {'muscle':<26} {'level':<6} {'CSA mid':>7} {'CSA mean':>8} {'rCSA':>5} "
                     f"{'FI %':>5} {'FF %':>5}")

        def fmt(v: float | None, scale: float = 1.0, spec: str = ".2f") -> str:
            return "-" if v is None else format(v * scale, spec)

        for desc, m in muscles:
            lines.append(f"{desc[:22]:<22} {m['label']:<26} {m['level']:<6} {fmt(m['csa_midplane_cm2']):>7} "
                         f"{fmt(m['csa_mean_cm2']):>8} {fmt(m['rcsa']):>5} {fmt(m['fat_infiltration'], 100, '.1f'):>5} "
                         f"{fmt(m['fat_fraction'], 100, '.1f'):>5}")
    return "\n".join(lines)


@functools.lru_cache(maxsize=8)
def _accuracy_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def measurement_accuracy(model_path: Path, model_name: str, slab_mm: float) -> dict[str, dict[str, float]]:
    """Structure kind → validated accuracy of the model's measurements on
    real subjects, at the validated slice thickness nearest ``slab_mm``:
    ``height_mae_mm``, ``volume_mae_cm3``, ``n`` and ``slab_mm``; empty when
    the model has no record (``<name>.measurement_accuracy.json`` beside it,
    written by `service.measurement_validation`)."""
    record = _accuracy_record(model_path.parent / f"{model_name}.measurement_accuracy.json")
    if record is None:
        return {}
    out = {}
    # Against what was drawn where the record has it: VB3's 1 mm labels
    # join two drawn outlines (measurement_validation.against_what_was_drawn).
    stated = record.get("summary_real_against_what_was_drawn") or record.get("summary_real_only") or {}
    for kind, by_slab in stated.items():
        slab = min(by_slab, key=lambda k: abs(float(k.removesuffix("mm")) - slab_mm))
        s = by_slab[slab]
        out[kind] = {"height_mae_mm": s["height_mae_mm"], "volume_mae_cm3": s["volume_mae_cm3"], "n": s["n"],
                     "slab_mm": float(slab.removesuffix("mm"))}
    return out
