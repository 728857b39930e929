"""Validate the sagittal engine through the DICOM path, as clinics send it.

Each validation volume (1 mm isotropic, RAS) is turned into a thick-slice
sagittal MR series — 4 mm slabs averaged from the 1 mm planes — written as
DICOM files, read back with `dicom_io.volume.read_series`, segmented by the
engine, and compared per level with the manual labels on the same slab grid
(a voxel belongs to a level when at least half of its slab does). Volumes
interpolated from acquired 4 mm slices (VB3, whose 1 mm planes between two
slices hold the union of their outlines) are also compared with what was
drawn: each slab with the acquired slice it holds (`drawn_slice_labels`).

``python -m spinegate.inference.training.validation --data ../shared/data/lumbar_mri`` writes
``inference/models/sagittal_spine.validation.json`` (used by the model card);
``--training-volumes`` adds a naming check on every training volume.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.study import read_study_headers
from spinegate.dicom_io.volume import read_series
from spinegate.inference.engine import SagittalSpineEngine
from spinegate.inference.level_naming import naming_unverified
from spinegate.inference.postprocess import z_extent_mm
from spinegate.inference.training.ivd_discs import IVD_TABLE, source_size_label_file
from spinegate.inference.training.training_data import SPLIT, acquired_plane_phase, training_stems

__all__ = ["dice", "thick_slice_series", "slab_labels", "drawn_slice_labels", "crop_bottom", "sagittal_planes",
           "presented_series",
           "run_dicom_path", "validate_volume", "validate_acquired_slices",
           "validate_phantom", "field_below_mm", "naming_by_family", "main", "VB_TABLE", "IVD_TABLE"]

log = logging.getLogger(__name__)

# The acquired slice spacing of the shared data's interpolated volumes (VB3; VB1_02-08).
ACQUIRED_SPACING_MM = 4

# Shared-data label values → level names (../shared/data/lumbar_mri/README.md).
VB_TABLE = {1: "L1", 2: "L2", 3: "L3", 4: "L4", 5: "L5", 6: "S1", 7: "T12", 8: "T11", 9: "T10"}


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """2|A∩B| / (|A|+|B|); 1.0 when both are empty."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def field_below_mm(mask: np.ndarray, affine: np.ndarray) -> float:
    """How far (patient z, mm) the image reaches below a structure: from its
    lowest voxel to the lowest voxel of the grid."""
    corners = np.array([[i, j, k] for i in (0, mask.shape[0] - 1) for j in (0, mask.shape[1] - 1)
                        for k in (0, mask.shape[2] - 1)], float)
    grid_lowest_mm = float((corners @ affine[2, :3] + affine[2, 3]).min())
    return z_extent_mm(mask, affine)[0] - grid_lowest_mm


def naming_by_family(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per dataset family (the stem's prefix): series, levels named right,
    naming verified (no flag puts it in doubt), and how far the images reach
    below L5 (median, range): where the sacrum is outside the field, S1
    cannot anchor the count and the naming stays unverified."""
    out: dict[str, dict[str, Any]] = {}
    for family in sorted({r["stem"].split("_")[0] for r in results}):
        rs = [r for r in results if r["stem"].split("_")[0] == family]
        below = [r["field_below_l5_mm"] for r in rs if r.get("field_below_l5_mm") is not None]
        out[family] = {"series": len(rs), "named_correctly": sum(r["levels_named_correctly"] for r in rs),
                       "naming_verified": sum(r["naming_verified"] for r in rs),
                       "verified_and_named_correctly": sum(r["naming_verified"] and r["levels_named_correctly"]
                                                           for r in rs)}
        if below:
            out[family]["field_below_l5_mm"] = {"median": round(float(np.median(below)), 1),
                                                "min": round(min(below), 1), "max": round(max(below), 1)}
    return out


def thick_slice_series(image_ras: np.ndarray, affine_ras: np.ndarray, slab: int = 4) -> tuple[np.ndarray, np.ndarray, int]:
    """Average ``slab`` consecutive sagittal planes of a RAS volume.

    Returns (pixels (n, rows, cols) uint16 in display orientation, LPS affine,
    number of slabs). Rows run superior→inferior, columns anterior→posterior.
    """
    ni, nj, nk = image_ras.shape
    n = ni // slab
    planes = image_ras[: n * slab].reshape(n, slab, nj, nk).astype(np.float32).mean(axis=1)
    planes = np.transpose(planes, (0, 2, 1))[:, ::-1, ::-1]  # (n, k reversed, j reversed)
    scale = 4000.0 / max(float(np.percentile(planes, 99.9)), 1.0)
    pixels = np.clip(planes * scale, 0, 65535).astype(np.uint16)

    def lps(s: float, r: float, c: float) -> np.ndarray:
        ijk = np.array([s * slab + (slab - 1) / 2.0, nj - 1 - c, nk - 1 - r, 1.0])
        ras = affine_ras @ ijk
        return np.array([-ras[0], -ras[1], ras[2]])

    origin = lps(0, 0, 0)
    aff = np.eye(4)
    aff[:3, 0] = lps(1, 0, 0) - origin
    aff[:3, 1] = lps(0, 1, 0) - origin
    aff[:3, 2] = lps(0, 0, 1) - origin
    aff[:3, 3] = origin
    return np.ascontiguousarray(pixels), aff, n


def crop_bottom(image_ras: np.ndarray, labels_ras: np.ndarray, affine_ras: np.ndarray, mm: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1 mm RAS volume and its labels with the bottom ``mm`` planes (k runs
    inferior → superior) cropped away, and the affine of what is left: a
    field of view that ends higher (the hard cases)."""
    shifted = affine_ras.copy()
    shifted[:3, 3] = (affine_ras @ np.array([0, 0, mm, 1.0]))[:3]
    return image_ras[:, :, mm:], labels_ras[:, :, mm:], shifted


def sagittal_planes(image_ras: np.ndarray, affine_ras: np.ndarray, first: int, step: int = 1
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Every ``step``-th sagittal (i) plane of a RAS volume from ``first`` on,
    and the affine of what is taken: a slab grid started further along, or
    one plane of each acquired slice (`training_data.acquired_plane_phase`)."""
    taken = affine_ras.copy()
    taken[:3, 0] = affine_ras[:3, 0] * step
    taken[:3, 3] = (affine_ras @ np.array([first, 0, 0, 1.0]))[:3]
    return image_ras[first::step], taken


def presented_series(image_ras: np.ndarray, labels_ras: np.ndarray, affine_ras: np.ndarray,
                     planes: tuple[int, int, int] = (0, 1, 4)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 1 mm RAS volume as a series: ``planes`` (first, step, slab) takes
    every ``step``-th plane from ``first`` and averages ``slab`` of them at
    a time (by default 4 mm slabs of all planes; (phase, 4, 1) the acquired
    slices). Returns (pixels, LPS affine, the labels on the same slabs)."""
    first, step, slab = planes
    taken, taken_affine = sagittal_planes(image_ras, affine_ras, first, step)
    pixels, affine, _ = thick_slice_series(taken, taken_affine, slab)
    return pixels, affine, slab_labels(sagittal_planes(labels_ras, affine_ras, first, step)[0], slab)


def slab_labels(labels_ras: np.ndarray, slab: int = 4) -> np.ndarray:
    """Per-level majority (≥ half the slab) label map on the slab grid."""
    ni, nj, nk = labels_ras.shape
    n = ni // slab
    lab = labels_ras[: n * slab].reshape(n, slab, nj, nk)
    out = np.zeros((n, nj, nk), np.uint8)
    for v in np.unique(lab[lab > 0]):
        out[(lab == v).sum(axis=1) * 2 >= slab] = v
    return np.ascontiguousarray(np.transpose(out, (0, 2, 1))[:, ::-1, ::-1])


def drawn_slice_labels(labels_ras: np.ndarray, first: int, slab: int, phase: int) -> np.ndarray:
    """The labels of the one acquired slice inside each ``slab``-plane slab
    from plane ``first`` on, where acquired slices lie ``slab`` planes apart
    from plane ``phase`` (`training_data.acquired_plane_phase`); in
    `slab_labels`' orientation.

    What an annotator drew for that slab: VB3's 1 mm planes between two
    acquired slices hold the union of their outlines, about a tenth more
    than either slice (model card, "Measurement accuracy").
    """
    n = (labels_ras.shape[0] - first) // slab
    inside = first + (phase - first) % slab
    return slab_labels(labels_ras[inside: inside + n * slab: slab], 1)


def _dice_per_level(pred: np.ndarray, truth: np.ndarray, table: dict[int, str]) -> dict[str, float]:
    """Dice per level labelled in ``truth`` (its values named by ``table``)."""
    return {level: round(dice(pred == structure_by_name(level).label, truth == value), 4)
            for value, level in table.items() if (truth == value).any()}


def _mean(per_level: dict[str, float]) -> float | None:
    return round(float(np.mean(list(per_level.values()))), 4) if per_level else None


def run_dicom_path(engine: SagittalSpineEngine, pixels: np.ndarray, affine: np.ndarray, name: str,
                   weighting: str, thickness_mm: float = 4.0) -> tuple[np.ndarray, Any]:
    """Write the series as DICOM, read it back, segment; return label map in
    the written slice order and the named result."""
    tr, te = (600, 12) if weighting == "T1" else (3500, 100)
    with tempfile.TemporaryDirectory() as d:
        paths = write_mr_series(pixels, affine, StudyInfo(uid_seed=f"validation-{name}"),
                                SeriesSpec(1, f"SAG {weighting} {name}", tr, te, thickness_mm), Path(d))
        volume = read_series(read_study_headers(paths).series[0].datasets)
    seg = engine.segment(volume)
    label_map = seg.named.label_map
    # read_series sorts along the normal; map back to the written order.
    if not np.allclose(volume.affine[:3, 3], affine[:3, 3]):
        label_map = label_map[::-1]
    return label_map, seg


def validate_volume(engine: SagittalSpineEngine, data_dir: Path, stem: str,
                    planes: tuple[int, int, int] = (0, 1, 4)) -> dict[str, Any]:
    """Dice per level for one shared-data volume presented as 4 mm slabs.

    ``planes`` (first, step, slab): the 1 mm planes taken, from ``first``
    every ``step``-th, averaged ``slab`` at a time; by default 4 mm slabs of
    all planes (`validate_acquired_slices` takes a volume's acquired slices).
    Where the 1 mm volume was interpolated from acquired 4 mm slices, 4 mm
    slabs are also compared with the slice each slab holds as it was drawn
    (``dice_per_level_drawn_slices``, `drawn_slice_labels`).
    """
    import nibabel as nib

    img: Any = nib.load(str(data_dir / f"{stem}_image.nii.gz"))  # a Nifti1Image; nibabel types it as any file image
    lab: Any = nib.load(str(data_dir / f"{stem}_label.nii.gz"))
    first, step, slab = planes
    image, labels = np.asarray(img.dataobj), np.asarray(lab.dataobj).astype(np.uint8)
    pixels, affine, truth = presented_series(image, labels, img.affine, planes)
    weighting = "T1" if stem in ("VB1_10",) else "T2"
    pred, seg = run_dicom_path(engine, pixels, affine, stem, weighting)
    table = IVD_TABLE if stem.startswith("IVD") else VB_TABLE
    # VB1's most superior body is only partly traced (data README).
    per_level = _dice_per_level(pred, truth, table)
    kind_levels = [lv for lv in per_level if (lv in IVD_TABLE.values()) == stem.startswith("IVD")]
    named_correctly = all(per_level[lv] > 0.5 for lv in kind_levels)
    result = {"stem": stem, "dice_per_level": per_level, "mean_dice": _mean(per_level),
              "levels_named_correctly": named_correctly, "flags": list(seg.named.series_flags),
              "naming_verified": not naming_unverified(seg.named.series_flags)}
    l5 = truth == next(v for v, level in VB_TABLE.items() if level == "L5") if table is VB_TABLE else None
    if l5 is not None and l5.any():
        result["field_below_l5_mm"] = round(field_below_mm(l5, affine), 1)
    if stem.startswith("IVD"):
        # The masks above L5S1 are dilated; also against the outlines at the source's size (ivd_discs).
        source_size = slab_labels(sagittal_planes(source_size_label_file(data_dir / f"{stem}_label.nii.gz"),
                                                  img.affine, first, step)[0], slab)
        at_source_size = _dice_per_level(pred, source_size, IVD_TABLE)
        result.update(dice_per_level_source_size=at_source_size, mean_dice_source_size=_mean(at_source_size))
    elif step == 1 and slab == ACQUIRED_SPACING_MM:
        phase = acquired_plane_phase(image, ACQUIRED_SPACING_MM)
        if phase is not None:
            # Interpolated from acquired slices: also against the slice each slab holds, as drawn.
            drawn = _dice_per_level(pred, drawn_slice_labels(labels, first, slab, phase), table)
            result.update(dice_per_level_drawn_slices=drawn, mean_dice_drawn_slices=_mean(drawn))
    return result


def validate_acquired_slices(engine: SagittalSpineEngine, data_dir: Path, stem: str) -> dict[str, Any] | None:
    """`validate_volume` with the volume sent as the sagittal slices it was
    acquired as, 4 mm apart (each one 1 mm plane, nothing averaged: what a
    scanner sends); None when the 1 mm volume was not interpolated from
    such slices (`training_data.acquired_plane_phase`)."""
    import nibabel as nib

    image: Any = nib.load(str(data_dir / f"{stem}_image.nii.gz"))
    phase = acquired_plane_phase(np.asarray(image.dataobj), ACQUIRED_SPACING_MM)
    return None if phase is None else validate_volume(engine, data_dir, stem, (phase, ACQUIRED_SPACING_MM, 1))


def validate_phantom(engine: SagittalSpineEngine, seed: int, weighting: Weighting) -> dict[str, Any]:
    """Dice per level on a held-out phantom (4 mm slices, 0.8 mm pixels)."""
    phantom = make_spine_phantom(seed)
    grid = sagittal_grid(15, 384, 384, 0.8, 4.0)
    image, truth = render_phantom(phantom, grid, weighting)
    pred, seg = run_dicom_path(engine, image, grid.affine, f"phantom{seed}", weighting.name)
    per_level = {}
    for e in phantom.elements:
        t = truth == e.label
        if t.sum() > 50:
            per_level[e.name] = round(dice(pred == e.label, t), 4)
    return {"stem": f"phantom_{seed}_{weighting.name}", "dice_per_level": per_level,
            "mean_dice": round(float(np.mean(list(per_level.values()))), 4),
            "levels_named_correctly": all(v > 0.5 for v in per_level.values()), "flags": list(seg.named.series_flags),
            "naming_verified": not naming_unverified(seg.named.series_flags)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="validate the sagittal engine on held-out subjects via DICOM")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", type=Path, default=Path("inference/models"))
    ap.add_argument("--training-volumes", action="store_true",
                    help="also present every labelled training volume the same way and report whether its levels "
                         "are named correctly (a robustness check of the naming, not a held-out metric)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    engine = SagittalSpineEngine(args.models)
    results = [validate_volume(engine, args.data, s) for s in SPLIT["validation"]]
    results += [validate_phantom(engine, s, w) for s in SPLIT["validation_phantom_seeds"][:2]
                for w in (Weighting.T1, Weighting.T2)]
    vb = [r for r in results if r["stem"].startswith("VB")]
    # VB3's between-planes are the union of two drawn outlines: against
    # what was drawn, each VB3 slab is compared with the slice it holds.
    against_drawn = {r["stem"]: r.get("mean_dice_drawn_slices", r["mean_dice"]) for r in vb}
    summary = {
        "model_sha256": engine.info.sha256,
        "presentation": "4 mm sagittal slabs averaged from 1 mm planes, through DICOM files",
        "vertebral_body_mean_dice_per_volume": {r["stem"]: r["mean_dice"] for r in vb},
        "vertebral_body_mean_dice": round(float(np.mean([r["mean_dice"] for r in vb])), 4),
        "vertebral_body_mean_dice_against_what_was_drawn_per_volume": against_drawn,
        "vertebral_body_mean_dice_against_what_was_drawn": round(float(np.mean(list(against_drawn.values()))), 4),
        "all_vb_levels_named_correctly": all(r["levels_named_correctly"] for r in vb),
        "results": results,
    }
    if args.training_volumes:
        # Naming counts bodies, so one merged or broken body renames every
        # level above it; the training volumes add 53 more spines to check.
        training = [validate_volume(engine, args.data, st) for st in training_stems(args.data) if st.startswith("VB")]
        keep = ("mean_dice", "mean_dice_drawn_slices", "levels_named_correctly", "naming_verified", "flags",
                "field_below_l5_mm")
        summary["training_volumes"] = {r["stem"]: {k: r[k] for k in keep if k in r} for r in training}
        summary["all_training_vb_levels_named_correctly"] = all(r["levels_named_correctly"] for r in training)
        # Every labelled VB volume, held out or not: how often S1 can anchor the count.
        summary["vb_naming_by_family"] = naming_by_family(vb + training)
        misnamed = [r["stem"] for r in training if not r["levels_named_correctly"]]
        print(f"training volumes: {len(training)}, levels misnamed on {misnamed or 'none'}")
        # The volumes interpolated from acquired slices, sent as those slices.
        acquired = [r for r in (validate_acquired_slices(engine, args.data, st)
                                for st in [r["stem"] for r in vb] + [r["stem"] for r in training]) if r]
        summary["acquired_slices"] = {
            "presentation": "each acquired 4 mm slice as one DICOM slice, labels on the same planes",
            "volumes": {r["stem"]: {**{k: r[k] for k in keep if k in r}, "held_out": r["stem"] in SPLIT["validation"]}
                        for r in acquired},
            "by_family": {family: {**counts, "mean_dice": round(float(np.mean(
                [r["mean_dice"] for r in acquired if r["stem"].startswith(family)])), 4)}
                for family, counts in naming_by_family(acquired).items()}}
    out = args.models / "sagittal_spine.validation.json"
    out.write_text(json.dumps(summary, indent=1))
    for r in results:
        print(f"{r['stem']:<18} mean Dice {r['mean_dice']:.3f} named {r['levels_named_correctly']} "
              f"{r['dice_per_level']} {r['flags']}")
        if "mean_dice_source_size" in r:
            print(f"{'':<18} against the outlines at the source's size: {r['mean_dice_source_size']:.3f} "
                  f"{r['dice_per_level_source_size']}")
        if "mean_dice_drawn_slices" in r:
            print(f"{'':<18} against the acquired slices as drawn: {r['mean_dice_drawn_slices']:.3f} "
                  f"{r['dice_per_level_drawn_slices']}")
    print(f"VB mean Dice {summary['vertebral_body_mean_dice']:.3f} (against what was drawn "
          f"{summary['vertebral_body_mean_dice_against_what_was_drawn']:.3f}); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
