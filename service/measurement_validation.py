"""Measurement accuracy of the sagittal path against manual labels.

Every labelled validation volume (`inference.training.training_data.SPLIT`)
is sent as a 3, 4 and 5 mm sagittal DICOM series, segmented, and measured
with the pipeline's own functions (`biomech.morphometry.measure_structure`:
volume, and height on the centroid slice, DOMAIN.md §6); the same functions
run on the manual labels resampled to the same slabs (a voxel belongs to a
level when at least half of its slab does). Per structure kind and slab
thickness: MAE, bias and Bland-Altman 95 % limits of the height (mm), MAE,
bias, MAPE and 95 % limits (in % of the manual value) of the volume;
against what was drawn (VB3 against its acquired slices, whose 1 mm labels
join two slices' outlines: `against_what_was_drawn`) and so per level as
well — also against the labels as drawn (1 mm),
which shows what the slab grid itself changes — and per label set (VB1,
VB2, VB3, IVD, phantom), with where the outlines differ: the area ratio on
the central planes (the in-plane contour) and the volume share on the
lateral planes (`outline_split`), and the volume error taken apart by
how far the two outlines lie from each other in-plane (`volume_error_split`:
a one-pixel rim, a convention, against misses and excess further out).
Discs come from the disc-labelled subject
(IVD) and the held-out phantoms (exact labels), bodies from the VB volumes
and the phantoms. The IVD discs above L5S1 are compared with their outlines
at the source's size (`inference.training.ivd_discs`); rows against the
dilated masks as drawn are kept (``reference``) and summarised apart.
How much the body figures follow the way the series is made is checked at
4 mm (`presentation_checks`): the slab grid started 1-3 mm further along,
and, for volumes interpolated from acquired 4 mm slices (VB3), those
slices themselves and the planes midway between them.

    python -m spinegate.service.measurement_validation --data ../shared/data/lumbar_mri

writes ``inference/models/sagittal_spine.measurement_accuracy.json`` (the
4 mm MAEs against what was drawn, `against_what_was_drawn`, are what the SR
and measurements.json state as each measurement's uncertainty) and
``bland_altman.png`` (heights and volumes) beside it; ``--models DIR``
validates another model folder (a training candidate) into that folder.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from spinegate.biomech.morphometry import measure_structure
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.levels import StructureKind, structure_by_name
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.inference.engine import SagittalSpineEngine
from spinegate.inference.training.training_data import dataset_of
from spinegate.service.agreement import Agreement, agreement

__all__ = ["measurement_rows", "outline_split", "volume_error_split", "summarise", "against_what_was_drawn",
           "summaries", "presentation_checks", "main"]

SLABS_MM = (3, 4, 5)
MIN_VOXELS = 50
# In-plane distance (pixels) within which two outlines count as one boundary
# drawn a pixel apart: the 8-neighbour ring around an outline.
RIM_PX = 1.5
VOLUME_ERROR_PARTS = ("missed_rim_pct", "missed_far_pct", "excess_rim_pct", "excess_far_pct")
OUTLINE_FIGURES = ("central_area_ratio", "lateral_share_manual", "lateral_share_auto", *VOLUME_ERROR_PARTS)


def measurement_rows(pred: np.ndarray, truth: np.ndarray, affine: np.ndarray, table: dict[int, str],
                     source: str, slab_mm: int, native: tuple[np.ndarray, np.ndarray] | None = None,
                     drawn_slices: tuple[np.ndarray, np.ndarray] | None = None) -> list[dict[str, Any]]:
    """One row per level labelled in ``truth`` and found in ``pred``:
    manual and automatic height (mm) and volume (cm³) on the slab grid and,
    with ``native`` (labels, affine as labelled, sagittal slices first), the
    manual ones on the labels as drawn."""
    rows = []
    for value, level in table.items():
        structure = structure_by_name(level)
        manual, auto = truth == value, pred == structure.label
        if manual.sum() < MIN_VOXELS or auto.sum() < MIN_VOXELS:
            continue
        m, a = measure_structure(manual, affine, structure), measure_structure(auto, affine, structure)
        row = {"source": source, "slab_mm": slab_mm, "level": level, "kind": structure.kind.value,
               "height_manual_mm": round(m.height_mm, 2), "height_auto_mm": round(a.height_mm, 2),
               "volume_manual_cm3": round(m.volume_cm3, 3), "volume_auto_cm3": round(a.volume_cm3, 3),
               **outline_split(manual, auto), **volume_error_split(manual, auto)}
        for suffix, reference in (("native", native), ("drawn_slices", drawn_slices)):
            if reference is not None and (reference[0] == value).any():
                drawn = measure_structure(reference[0] == value, reference[1], structure)
                row.update({f"height_manual_{suffix}_mm": round(drawn.height_mm, 2),
                            f"volume_manual_{suffix}_cm3": round(drawn.volume_cm3, 3)})
        rows.append(row)
    return rows


def outline_split(manual: np.ndarray, auto: np.ndarray) -> dict[str, float]:
    """Where two masks of one structure (sagittal planes first) differ: the
    ratio of their areas on the central planes (those where the manual area
    is at least half its largest: the contour drawn in-plane) and the share
    of each volume on the other, lateral planes (how far to the sides each
    reaches)."""
    manual_area = manual.sum(axis=(1, 2)).astype(float)
    auto_area = auto.sum(axis=(1, 2)).astype(float)
    central = manual_area >= 0.5 * manual_area.max()
    return {"central_area_ratio": round(float(auto_area[central].sum() / manual_area[central].sum()), 4),
            "lateral_share_manual": round(float(manual_area[~central].sum() / manual_area.sum()), 4),
            "lateral_share_auto": round(float(auto_area[~central].sum() / auto_area.sum()), 4)}


def volume_error_split(manual: np.ndarray, auto: np.ndarray) -> dict[str, float]:
    """The volume error of ``auto`` against ``manual`` (masks of one
    structure, sagittal planes first) as four parts, each in per cent of the
    manual volume, that add up to it: excess minus missed. Voxels of one
    mask outside the other count as *rim* when they lie within `RIM_PX`
    pixels, in their plane, of the other mask (two outlines a pixel apart:
    where an annotator or a network puts the boundary), otherwise *far*
    (further out, or on a plane where the other mask is empty: whole parts
    missed or added)."""
    def beyond(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
        outside = a & ~b
        rim = 0
        for i in np.nonzero(outside.any(axis=(1, 2)))[0]:
            if b[i].any():
                rim += int((ndi.distance_transform_edt(~b[i])[outside[i]] <= RIM_PX).sum())
        return rim, int(outside.sum()) - rim

    volume = float(manual.sum())
    (missed_rim, missed_far), (excess_rim, excess_far) = beyond(manual, auto), beyond(auto, manual)
    return dict(zip(VOLUME_ERROR_PARTS, (round(100 * v / volume, 2)
                                         for v in (-missed_rim, -missed_far, excess_rim, excess_far))))


def summarise(rows: list[dict[str, Any]], manual: str = "") -> dict[str, Any]:
    """Per kind and slab: n, height MAE/bias/limits of agreement, volume
    MAE/bias (%)/MAPE; ``manual="_native"`` compares with the labels as
    drawn (1 mm) instead of on the slab grid, ``"_drawn_slices"`` with the
    acquired slices' own outlines where the 1 mm labels were interpolated
    from them."""
    rows = [r for r in rows if f"height_manual{manual}_mm" in r]
    out: dict[str, Any] = {}
    for kind in sorted({r["kind"] for r in rows}):
        for slab in sorted({r["slab_mm"] for r in rows}):
            sel = [r for r in rows if r["kind"] == kind and r["slab_mm"] == slab]
            if not sel:
                continue
            manual_height = np.array([r[f"height_manual{manual}_mm"] for r in sel])
            height = agreement(np.array([r["height_auto_mm"] for r in sel]), manual_height)
            vm = np.array([r[f"volume_manual{manual}_cm3"] for r in sel])
            volume_auto = np.array([r["volume_auto_cm3"] for r in sel])
            volume = agreement(volume_auto, vm)
            # Volume error grows with the volume (a rim is a share of it), so
            # its Bland-Altman limits are on the difference in % of the manual value.
            volume_pct = agreement(100 * (volume_auto - vm) / vm, np.zeros(len(sel)))
            out.setdefault(kind, {})[f"{slab}mm"] = {
                "n": len(sel),
                "height_mae_mm": round(height.mae, 2),
                "height_bias_mm": round(height.bias, 2),
                "height_limits_of_agreement_mm": _limits(height, 2),
                "volume_mae_cm3": round(volume.mae, 3),
                "volume_bias_pct": round(volume_pct.bias, 1),
                "volume_mape_pct": round(volume.mape_pct, 1),
                "volume_limits_of_agreement_pct": _limits(volume_pct, 1),
            }
            split = [r for r in sel if "central_area_ratio" in r]
            if split and not manual:
                out[kind][f"{slab}mm"].update({
                    key: round(float(np.mean([r[key] for r in split])), 3)
                    for key in ("central_area_ratio", "lateral_share_manual", "lateral_share_auto")})
            parts = [r for r in sel if VOLUME_ERROR_PARTS[0] in r]
            if parts and not manual:
                out[kind][f"{slab}mm"]["volume_error_parts_pct"] = {
                    key: round(float(np.mean([r[key] for r in parts])), 2) for key in VOLUME_ERROR_PARTS}
    return out


def _limits(a: Agreement, digits: int) -> list[float]:
    """Bland-Altman 95 % limits; a single pair's difference for both when n = 1."""
    return [round(v, digits) for v in (a.limits_of_agreement if a.n > 1 else (a.bias, a.bias))]


def _compared(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows the accuracy is stated from: IVD discs at the source's size."""
    return [r for r in rows if r.get("reference") != "as_drawn"]


def against_what_was_drawn(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows with each manual height and volume taken from the acquired
    slices as drawn where the 1 mm labels were interpolated from them (VB3:
    the planes between two slices hold the union of their outlines, about a
    tenth more volume than drawn); other rows as they are. The outline
    figures of the rows so changed, made against the 1 mm labels, are left out."""
    out = []
    for r in rows:
        if "volume_manual_drawn_slices_cm3" not in r:
            out.append(r)
            continue
        kept = {k: v for k, v in r.items() if k not in OUTLINE_FIGURES}
        out.append({**kept, "height_manual_mm": r["height_manual_drawn_slices_mm"],
                    "volume_manual_cm3": r["volume_manual_drawn_slices_cm3"], "reference": "drawn_slices"})
    return out


def summaries(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The record's summaries (`summarise`): all compared rows, the real
    ones only, the real ones against what was drawn (what the SR states)
    and so per level, against the labels as drawn (1 mm), per label set,
    and the IVD discs against their dilated masks as drawn."""
    compared = _compared(rows)
    real = [r for r in compared if dataset_of(r["source"]) != "phantom"]
    drawn = against_what_was_drawn(real)
    return {"summary": summarise(compared),
            "summary_real_only": summarise(real),
            "summary_real_against_what_was_drawn": summarise(drawn),
            "summary_real_by_level": {level: summarise([r for r in drawn if r["level"] == level])
                                      for level in sorted({r["level"] for r in drawn},
                                                          key=lambda name: structure_by_name(name).label)},
            "summary_real_against_labels_as_drawn": summarise(compared, "_native"),
            "summary_by_label_set_against_drawn_slices": {
                f: summarise([r for r in compared if dataset_of(r["source"]) == f], "_drawn_slices")
                for f in sorted({dataset_of(r["source"]) for r in compared if "volume_manual_drawn_slices_cm3" in r})},
            "summary_by_label_set": {**{f: summarise([r for r in compared if dataset_of(r["source"]) == f])
                                        for f in sorted({dataset_of(r["source"]) for r in compared})},
                                     "IVD as drawn": summarise([r for r in rows if r.get("reference") == "as_drawn"])}}


def _load(data: Path, stem: str) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    import nibabel as nib

    img: Any = nib.load(str(data / f"{stem}_image.nii.gz"))  # a Nifti1Image; nibabel types it as any file image
    lab: Any = nib.load(str(data / f"{stem}_label.nii.gz"))
    return img, lab, np.asarray(img.dataobj), np.asarray(lab.dataobj).astype(np.uint8)


def _body_table() -> dict[int, str]:
    from spinegate.inference.training.validation import VB_TABLE

    # VB1's most superior body is only partly traced (data README): T10-T12 are not compared.
    return {v: n for v, n in VB_TABLE.items() if n.startswith(("L", "S"))}


def _weighting(stem: str) -> str:
    return "T1" if stem == "VB1_10" else "T2"


def _real_rows(engine: SagittalSpineEngine, data: Path, stem: str, slab: int) -> list[dict[str, Any]]:
    from spinegate.inference.training.ivd_discs import source_size_label_file
    from spinegate.inference.training.training_data import acquired_plane_phase
    from spinegate.inference.training.validation import (ACQUIRED_SPACING_MM, IVD_TABLE, presented_series,
                                                         run_dicom_path, sagittal_planes, slab_labels)

    img, lab, image, labels = _load(data, stem)
    pixels, affine, truth = presented_series(image, labels, img.affine, (0, 1, slab))
    pred, _ = run_dicom_path(engine, pixels, affine, f"{stem}-{slab}mm", _weighting(stem), float(slab))
    if not stem.startswith("IVD"):
        # Where the 1 mm labels were interpolated from acquired slices (VB3:
        # each plane between two slices is the union of their outlines), the
        # slices as drawn are a reference of their own.
        phase = acquired_plane_phase(image, ACQUIRED_SPACING_MM)
        drawn_slices = None if phase is None else sagittal_planes(labels, lab.affine, phase, ACQUIRED_SPACING_MM)
        return measurement_rows(pred, truth, affine, _body_table(), stem, slab, native=(labels, lab.affine),
                                drawn_slices=drawn_slices)
    # The IVD masks above L5S1 are dilated (ivd_discs): compare with the
    # outlines at the source's size, and show the masks as drawn beside them.
    source_size = source_size_label_file(data / f"{stem}_label.nii.gz")
    rows = [{**r, "reference": "as_drawn"}
            for r in measurement_rows(pred, truth, affine, IVD_TABLE, stem, slab, native=(labels, lab.affine))]
    return rows + [{**r, "reference": "source_size"}
                   for r in measurement_rows(pred, slab_labels(source_size, slab), affine, IVD_TABLE, stem, slab,
                                             native=(source_size, lab.affine))]


def _presentation_rows(engine: SagittalSpineEngine, data: Path, stem: str) -> list[dict[str, Any]]:
    """The 4 mm body rows of one VB volume with the series made otherwise:
    the slab grid started 1-3 mm further along, and, where the 1 mm volume
    was interpolated from acquired 4 mm slices, those slices themselves and
    the planes midway between them (labels on the same planes)."""
    from spinegate.inference.training.training_data import acquired_plane_phase
    from spinegate.inference.training.validation import ACQUIRED_SPACING_MM, presented_series, run_dicom_path

    img, _, image, labels = _load(data, stem)
    ways = [(f"slab_grid_{first}mm_further", first, 1, 4) for first in (1, 2, 3)]
    phase = acquired_plane_phase(image, ACQUIRED_SPACING_MM)
    if phase is not None:
        ways += [("acquired_slices", phase, ACQUIRED_SPACING_MM, 1),
                 ("midway_between_acquired_slices", phase + ACQUIRED_SPACING_MM // 2, ACQUIRED_SPACING_MM, 1)]
    rows = []
    for name, first, step, slab in ways:
        pixels, series_affine, truth = presented_series(image, labels, img.affine, (first, step, slab))
        pred, _ = run_dicom_path(engine, pixels, series_affine, f"{stem}-{name}", _weighting(stem), 4.0)
        rows += [{**r, "presentation": name}
                 for r in measurement_rows(pred, truth, series_affine, _body_table(), stem, 4)]
    return rows


def presentation_checks(rows: list[dict[str, Any]], presented: list[dict[str, Any]]) -> dict[str, Any]:
    """Body figures at 4 mm per label set for each way of making the series
    (``presented``, from `_presentation_rows`) beside the standard one (the
    4-plane averages from the volume's first plane, ``rows``)."""
    standard = [{**r, "presentation": "slab_average"} for r in rows if r["slab_mm"] == 4
                and r["kind"] == StructureKind.VERTEBRAL_BODY.value and dataset_of(r["source"]) != "phantom"]
    out: dict[str, Any] = {}
    for r in standard + presented:
        out.setdefault(r["presentation"], {}).setdefault(dataset_of(r["source"]), []).append(r)
    keys = ("n", "height_mae_mm", "height_bias_mm", "volume_bias_pct", "volume_mape_pct")

    def figures(sel: list[dict[str, Any]]) -> dict[str, Any]:
        bodies = summarise(sel)[StructureKind.VERTEBRAL_BODY.value]["4mm"]
        return {k: bodies[k] for k in keys}

    return {way: {label_set: figures(sel) for label_set, sel in sorted(by_set.items())} for way, by_set in out.items()}


def _phantom_rows(engine: SagittalSpineEngine, seed: int, slab: int) -> list[dict[str, Any]]:
    from spinegate.inference.training.validation import run_dicom_path

    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(max(9, round(60 / slab)), 384, 384, 0.8, float(slab))
    image, truth = render_phantom(phantom, grid, Weighting.T2)
    pred, _ = run_dicom_path(engine, image, grid.affine, f"phantom{seed}-{slab}mm", "T2", float(slab))
    table = {e.label: e.name for e in phantom.elements if e.name.startswith(("L", "S"))}
    return measurement_rows(pred, truth, grid.affine, table, f"phantom_{seed}", slab)


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    """Bland-Altman plots at 4 mm (rows `against_what_was_drawn`): heights
    in mm, volumes in % of the manual value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for column, kind in enumerate((StructureKind.VERTEBRAL_BODY.value, StructureKind.DISC.value)):
        sel = [r for r in rows if r["kind"] == kind and r["slab_mm"] == 4]
        label_set = np.array([dataset_of(r["source"]) for r in sel])
        real = label_set != "phantom"
        for ax, measure, unit in ((axes[0, column], "height", "mm"), (axes[1, column], "volume", "cm3")):
            auto = np.array([r[f"{measure}_auto_{unit}"] for r in sel])
            manual = np.array([r[f"{measure}_manual_{unit}"] for r in sel])
            mean = (auto + manual) / 2
            diff = auto - manual if measure == "height" else 100 * (auto - manual) / manual
            # Colour by label set: their outline conventions differ (model card).
            drawn_slices = {dataset_of(r["source"]) for r in sel if r.get("reference") == "drawn_slices"}
            for name in sorted(set(label_set)):
                shown = label_set == name
                what = ("exact labels" if name == "phantom" else
                        "acquired slices as drawn" if name in drawn_slices else "manual labels")
                ax.scatter(mean[shown], diff[shown], s=14, marker="x" if name == "phantom" else "o",
                           label=f"{name} ({what})")
            if real.sum() > 1:  # bias and limits of the real rows, as the tables state them
                a = agreement(diff[real], np.zeros(int(real.sum())))
                for y, style in ((a.bias, "-"), (a.limits_of_agreement[0], "--"), (a.limits_of_agreement[1], "--")):
                    ax.axhline(y, color="grey", linestyle=style, linewidth=1)
            shown_unit = "cm$^3$" if unit == "cm3" else unit
            ax.set_title(f"{kind} {measure}, 4 mm slabs ({int(real.sum())} real, {int((~real).sum())} phantom)",
                         fontsize=10)
            ax.set_xlabel(f"mean of spinegate and manual ({shown_unit})")
            ax.set_ylabel("spinegate - manual (mm)" if measure == "height" else "spinegate - manual (% of manual)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    from spinegate.inference.training.training_data import SPLIT

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="../shared/data/lumbar_mri")
    ap.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "inference" / "models",
                    help="the model folder to validate (a candidate's, say); the committed one by default")
    ap.add_argument("--out", type=Path, help="default: sagittal_spine.measurement_accuracy.json in --models")
    args = ap.parse_args(argv)
    args.out = args.out or args.models / "sagittal_spine.measurement_accuracy.json"
    engine = SagittalSpineEngine(args.models)
    rows: list[dict[str, Any]] = []
    for slab in SLABS_MM:
        for stem in SPLIT["validation"]:
            rows += _real_rows(engine, args.data, stem, slab)
        for seed in SPLIT["validation_phantom_seeds"]:
            rows += _phantom_rows(engine, seed, slab)
    presented = [r for stem in SPLIT["validation"] if not stem.startswith("IVD")
                 for r in _presentation_rows(engine, args.data, stem)]
    record = {"model_version": engine.info.version, "command": "python -m spinegate.service.measurement_validation "
              "--data ../shared/data/lumbar_mri", **summaries(rows),
              "presentation_checks_4mm": presentation_checks(rows, presented), "rows": rows}
    args.out.write_text(json.dumps(record, indent=1))
    _plot(against_what_was_drawn(_compared(rows)), args.out.parent / "bland_altman.png")
    print(json.dumps({k: record[k] for k in ("summary", "summary_real_against_what_was_drawn",
                                             "summary_real_against_labels_as_drawn")},
                     indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
