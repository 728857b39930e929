"""``spinegate evaluate``: automatic results against manual labels.

The automatic side is spinegate's DICOM SEG objects under ``AUTO`` (an
``analyze`` output folder or a ``batch`` OUT_DIR). The manual side, under
``MANUAL`` (a folder or one file), is DICOM SEG (paired with spinegate's
SEG of the series it references) or NIfTI label images (named
``<SeriesInstanceUID>.nii[.gz]``, or paired in a CSV given with
``--pairs``: columns ``manual`` and ``series_instance_uid``). A label
table (``--labels``, YAML or JSON) names the label values of a NIfTI
(``4: L4``, ``10: L4-L5``, ``41: MF_R``) or the segment labels of a manual
SEG that are not level names; without one, NIfTI values are spinegate's
own and SEG labels are read as level names ("L4-L5 intervertebral disc",
"L3", "Right multifidus"). Both sides are compared on the automatic grid
(`service.label_sets`; the files are read by `dicom_io.label_files`).

Per labelled structure: Dice, Jaccard, sensitivity, precision, volumes,
mean and 95 % surface distance, Hausdorff distance (`service.agreement`).
Per vertebral body and disc of a sagittal series: height and volume with
the pipeline's own function (`biomech.morphometry.measure_structure`) on
both masks. Over all pairs, per kind and per level: Pearson r, ICC(2,1),
MAE, MAPE, Bland-Altman bias and limits. A structure the manual labels
lack is not scored (partial labels are fine); one they have and spinegate
missed scores Dice 0.

Writes ``overlap.csv``, ``measurements.csv``, ``summary.json``,
``dice_per_level.png`` and ``bland_altman.png`` into ``OUT``.
"""
from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from spinegate.biomech.morphometry import measure_structure
from spinegate.dicom_io.levels import DISC_LEVELS, VERTEBRAL_BODY_LEVELS, SpineStructure, structure_by_name
from spinegate.dicom_io.muscles import MUSCLE_STRUCTURES
from spinegate.service.agreement import agreement, overlap
from spinegate.dicom_io.label_files import (LabelFileError, LabelSet, Structure, read_label_table,
                                            read_nifti_labels, read_seg_labels, seg_referenced_series,
                                            structure_named)
from spinegate.service.label_sets import EvaluationError, on_reference_grid

__all__ = ["EvaluationError", "LabelFileError", "evaluate_pair", "find_automatic_segs", "pair_manual_labels",
           "summarise", "run_evaluation"]

log = logging.getLogger(__name__)

OVERLAP_COLUMNS = ("study_instance_uid", "series_instance_uid", "manual", "level", "structure", "kind", "found",
                   "dice", "jaccard", "sensitivity", "precision", "volume_auto_cm3", "volume_manual_cm3",
                   "volume_difference_cm3", "volume_difference_pct", "mean_surface_distance_mm", "hd95_mm",
                   "hausdorff_mm")
MEASUREMENT_COLUMNS = ("study_instance_uid", "series_instance_uid", "manual", "level", "structure", "kind",
                       "measurement", "unit", "auto", "manual_value", "difference")
_OVERLAP_STATS = ("dice", "jaccard", "sensitivity", "precision", "mean_surface_distance_mm", "hd95_mm",
                  "hausdorff_mm", "volume_difference_pct")
_MEASUREMENTS = (("height_mm", "mm"), ("volume_cm3", "cm3"))
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Head to foot, each body followed by the disc below it, then the muscles.
_LEVEL_ORDER = [structure_by_name(n).short_name for pair in zip(VERTEBRAL_BODY_LEVELS, DISC_LEVELS + ("",))
                for n in pair if n] + [m.name for m in MUSCLE_STRUCTURES]


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _nifti_stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]


def find_automatic_segs(auto_dir: Path) -> dict[str, Path]:
    """spinegate's SEG objects under ``auto_dir``, by referenced series UID.

    Raises
    ------
    EvaluationError
        If there is none, or two reference one series.
    """
    found: dict[str, Path] = {}
    for path in sorted(p for p in Path(auto_dir).rglob("*.dcm") if ".extracted" not in p.parts):
        series = seg_referenced_series(path)
        if not series:
            continue
        if series in found:
            raise EvaluationError(f"two SEG objects under {auto_dir} segment series {series}: {found[series]} and "
                                  f"{path}; evaluate one analysis at a time")
        found[series] = path
    if not found:
        raise EvaluationError(f"no DICOM SEG under {auto_dir}: give the folder 'spinegate analyze' or 'batch' wrote")
    return found


def pair_manual_labels(manual: Path, automatic: Mapping[str, Path], pairs_csv: Path | None = None
                       ) -> tuple[list[tuple[Path, str]], list[str]]:
    """(manual file, series UID) pairs, and the manual files left unpaired
    with the reason.

    Raises
    ------
    EvaluationError
        If the pairs CSV is malformed or names a missing file.
    """
    files = [manual] if manual.is_file() else sorted(p for p in manual.rglob("*") if p.is_file())
    explicit: dict[Path, str] = {}
    if pairs_csv is not None:
        try:
            with pairs_csv.open(newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, UnicodeDecodeError, csv.Error) as e:
            raise EvaluationError(f"cannot read {pairs_csv}: {e}") from None
        if not rows or not {"manual", "series_instance_uid"} <= set(rows[0]):
            raise EvaluationError(f"{pairs_csv} needs the columns 'manual' and 'series_instance_uid'")
        for row in rows:
            path = (pairs_csv.parent / row["manual"]).resolve()
            if not path.is_file():
                raise EvaluationError(f"{pairs_csv} names {row['manual']}, which does not exist")
            explicit[path] = row["series_instance_uid"].strip()
        files = sorted(set(files) | set(explicit)) if manual.exists() else sorted(explicit)
    pairs: list[tuple[Path, str]] = []
    unpaired: list[str] = []
    for path in files:
        series = explicit.get(path.resolve())
        if series is None and _is_nifti(path):
            series = _nifti_stem(path)
        elif series is None:
            series = seg_referenced_series(path)
            if series is None:
                continue  # not a label file (a README, the source images)
        if series in automatic:
            pairs.append((path, series))
        else:
            unpaired.append(f"{path.name}: no spinegate SEG of series {series or '(none referenced)'}")
    return pairs, unpaired


def _is_sagittal(affine: np.ndarray) -> bool:
    slice_axis = np.asarray(affine, float)[:3, 0]
    return abs(slice_axis[0]) > 0.7 * np.linalg.norm(slice_axis)


def _level(structure: Structure) -> str:
    return structure.short_name if isinstance(structure, SpineStructure) else structure.name


def _kind(structure: Structure) -> str:
    return structure.kind.value if isinstance(structure, SpineStructure) else "muscle"


def evaluate_pair(auto: LabelSet, manual: LabelSet, study_uid: str, series_uid: str
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Overlap rows and measurement rows of one manual label set against
    spinegate's SEG of the same series, both on one grid."""
    overlaps: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    sagittal = _is_sagittal(auto.affine)
    for name, manual_mask in manual.masks.items():
        structure = structure_named(name)
        auto_mask = auto.masks.get(name, np.zeros_like(manual_mask))
        o = overlap(auto_mask, manual_mask, auto.affine)
        base = {"study_instance_uid": study_uid, "series_instance_uid": series_uid, "manual": manual.source,
                "level": _level(structure), "structure": structure.display_name, "kind": _kind(structure)}
        overlaps.append({**base, "found": bool(auto_mask.any()), "dice": o.dice, "jaccard": o.jaccard,
                         "sensitivity": o.sensitivity, "precision": o.precision,
                         "volume_auto_cm3": o.volume_auto_cm3, "volume_manual_cm3": o.volume_manual_cm3,
                         "volume_difference_cm3": o.volume_difference_cm3,
                         "volume_difference_pct": o.volume_difference_pct,
                         "mean_surface_distance_mm": o.mean_surface_distance_mm, "hd95_mm": o.hd95_mm,
                         "hausdorff_mm": o.hausdorff_mm})
        if not (sagittal and isinstance(structure, SpineStructure) and auto_mask.any()):
            continue  # heights are defined on the sagittal centroid slice (DOMAIN.md §6)
        a = measure_structure(auto_mask, auto.affine, structure)
        m = measure_structure(manual_mask, auto.affine, structure)
        for key, unit in _MEASUREMENTS:
            value_a, value_m = float(getattr(a, key)), float(getattr(m, key))
            measurements.append({**base, "measurement": key, "unit": unit, "auto": value_a, "manual_value": value_m,
                                 "difference": value_a - value_m})
    return overlaps, measurements


def _finite(values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), float)
    return array[np.isfinite(array)]


def _overlap_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": len(rows), "missed": sum(not r["found"] for r in rows)}
    for key in _OVERLAP_STATS:
        values = _finite(r[key] for r in rows)
        out[key] = {"mean": _round(values.mean()) if values.size else None,
                    "sd": _round(values.std(ddof=1)) if values.size > 1 else None}
    return out


def _agreement_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    a = agreement([r["auto"] for r in rows], [r["manual_value"] for r in rows])
    return {"n": a.n, "unit": rows[0]["unit"], "pearson_r": _round(a.pearson_r), "icc_2_1": _round(a.icc_2_1),
            "mae": _round(a.mae), "mape_pct": _round(a.mape_pct), "bias": _round(a.bias),
            "limits_of_agreement": [_round(v) for v in a.limits_of_agreement]}


def _round(value: float, digits: int = 4) -> float | None:
    return None if value is None or not math.isfinite(value) else round(float(value), digits)


def _level_order(level: str) -> tuple[int, str]:
    return (_LEVEL_ORDER.index(level) if level in _LEVEL_ORDER else len(_LEVEL_ORDER), level)


def summarise(overlaps: list[dict[str, Any]], measurements: list[dict[str, Any]]) -> dict[str, Any]:
    """Overlap statistics and measurement agreement per kind and per level."""
    summary: dict[str, Any] = {"overlap": {}, "measurements": {}}
    for kind in sorted({r["kind"] for r in overlaps}):
        rows = [r for r in overlaps if r["kind"] == kind]
        levels = sorted({r["level"] for r in rows}, key=_level_order)
        summary["overlap"][kind] = {"all": _overlap_stats(rows),
                                    "by_level": {lv: _overlap_stats([r for r in rows if r["level"] == lv])
                                                 for lv in levels}}
    for kind in sorted({r["kind"] for r in measurements}):
        for name in sorted({r["measurement"] for r in measurements if r["kind"] == kind}):
            rows = [r for r in measurements if r["kind"] == kind and r["measurement"] == name]
            levels = sorted({r["level"] for r in rows}, key=_level_order)
            summary["measurements"].setdefault(kind, {})[name] = {
                "all": _agreement_stats(rows),
                "by_level": {lv: _agreement_stats([r for r in rows if r["level"] == lv]) for lv in levels}}
    return summary


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (_round(v) if isinstance(v, float) else v) for k, v in row.items()})


def _plots(out: Path, overlaps: list[dict[str, Any]], measurements: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted({r["kind"] for r in overlaps})
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        levels = sorted({r["level"] for r in overlaps if r["kind"] == kind}, key=_level_order)
        data = [[r["dice"] for r in overlaps if r["kind"] == kind and r["level"] == lv] for lv in levels]
        ax.boxplot(data, showfliers=False)
        for x, values in enumerate(data, start=1):
            ax.scatter(np.full(len(values), x) + np.linspace(-0.12, 0.12, len(values)), values, s=10, zorder=3)
        ax.set_xticks(range(1, len(levels) + 1), levels, rotation=45 if len(levels) > 6 else 0)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"{kind} Dice per level")
        ax.set_ylabel("Dice")
    fig.tight_layout()
    fig.savefig(out / "dice_per_level.png", dpi=110)
    plt.close(fig)
    panels = sorted({(r["kind"], r["measurement"], r["unit"]) for r in measurements})
    columns = min(2, max(1, len(panels)))
    rows_n = max(1, math.ceil(len(panels) / columns))
    fig, axes = plt.subplots(rows_n, columns, figsize=(5 * columns, 3.8 * rows_n), squeeze=False)
    for ax, (kind, name, unit) in zip(axes.ravel(), panels):
        rows = [r for r in measurements if r["kind"] == kind and r["measurement"] == name]
        mean = np.array([(r["auto"] + r["manual_value"]) / 2 for r in rows])
        diff = np.array([r["difference"] for r in rows])
        ax.scatter(mean, diff, s=14)
        a = agreement([r["auto"] for r in rows], [r["manual_value"] for r in rows])
        ax.axhline(a.bias, color="grey", linewidth=1)
        if len(rows) > 1:
            for limit in a.limits_of_agreement:
                ax.axhline(limit, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{kind}: {name} (n={len(rows)})", fontsize=10)
        ax.set_xlabel(f"mean of spinegate and manual ({unit})")
        ax.set_ylabel(f"spinegate - manual ({unit})")
    if not panels:
        axes[0][0].text(0.5, 0.5, "no vertebral body or disc\nmeasured on a sagittal series", ha="center")
        axes[0][0].set_axis_off()
    fig.tight_layout()
    fig.savefig(out / "bland_altman.png", dpi=110)
    plt.close(fig)


def run_evaluation(auto_dir: Path, manual: Path, out: Path, labels: Path | None = None,
                   pairs_csv: Path | None = None) -> dict[str, Any]:
    """Evaluate every paired manual label file; write the CSVs, the summary
    and the plots into ``out``; return the summary.

    Raises
    ------
    LabelFileError
        If nothing can be paired (`EvaluationError`), or a label file or
        table cannot be read (the message names it).
    """
    automatic = find_automatic_segs(auto_dir)
    table = read_label_table(labels) if labels is not None else None
    pairs, unpaired = pair_manual_labels(manual, automatic, pairs_csv)
    if not pairs:
        raise EvaluationError("no manual label file pairs with a spinegate SEG under "
                              f"{auto_dir}: " + ("; ".join(unpaired[:5]) or f"no SEG or NIfTI under {manual}"))
    overlaps: list[dict[str, Any]] = []
    measurements: list[dict[str, Any]] = []
    for path, series in pairs:
        auto_set, _, study_uid = read_seg_labels(automatic[series])
        manual_set = (read_nifti_labels(path, table) if _is_nifti(path) else read_seg_labels(path, table)[0])
        if not manual_set.masks:
            unpaired.append(f"{path.name}: no labelled structure")
            continue
        on_auto, on_manual = on_reference_grid(auto_set, manual_set)
        o, m = evaluate_pair(on_auto, on_manual, study_uid, series)
        overlaps += o
        measurements += m
        log.info("evaluated series_uid=%s structures=%d", series, len(o))
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(out / "overlap.csv", OVERLAP_COLUMNS, overlaps)
    _write_csv(out / "measurements.csv", MEASUREMENT_COLUMNS, measurements)
    summary = {"pairs": [{"manual": p.name, "series_instance_uid": s} for p, s in pairs], "unpaired": unpaired,
               **summarise(overlaps, measurements)}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plots(out, overlaps, measurements)
    return summary
