"""The disc masks of the IVD volumes: why most are too large, and the
outlines at the size their source drew them.

The shared data's L5S1 masks match the source's volume table; L1L2–L4L5
are about +10 to +28 % larger (../shared/data/lumbar_mri/README.md). The
pattern is what a label map coded by level (51·k, k = 1 for L5S1 … 5 for
L1L2) does when it is interpolated linearly from the native grid to 1 mm and
thresholded at half of L5S1's code: across an edge from code 51·k to 0,
such a threshold lies (k − 1)/(2k) of a native spacing beyond the midpoint
where the source's own outline lies — nothing for L5S1, a quarter of a
spacing for L4L5, two fifths for L1L2. The native grid is 16 sagittal
sections over the volume's 67 mm (4.19 mm apart) and a 256 × 256 matrix
over 221 mm (0.86 mm pixels), so the upper discs reach 1.0–1.7 mm further
to each side and 0.2–0.35 mm further at each end plate.

Two independent checks agree with that model (docs/models.md, "Disc
outlines"): eroding the four volumes' discs by it removes about the
README's excess; and on the images, the upper discs' end-plate boundaries
lie further beyond the intensity edge than L5S1's by about the predicted
0.2–0.35 mm. Both are printed by

    python -m spinegate.inference.training.ivd_discs --data ../shared/data/lumbar_mri
"""
from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from spinegate.inference.preprocessing import TRAINING_SPACING_MM
from spinegate.inference.training.training_data import BG, DISC, S1, VB, TrainingCase

__all__ = ["IVD_NATIVE_SPACING_MM", "IVD_TABLE", "IVD_LEVEL_CODES", "level_code_overshoot", "erode_mm",
           "end_plate_offsets_mm", "source_size_disc_labels", "source_size_label_file", "with_source_size_discs",
           "with_uncertain_disc_rim", "main"]

# Native grid of the IVD study, (left-right, in-plane, in-plane), from the
# volume's 67 mm in 16 sections and its 221 mm field in 256 pixels.
IVD_NATIVE_SPACING_MM = (67 / 16, 221 / 256, 221 / 256)
# Shared-data label value -> level (the data README's disc table), and ->
# the source's level code multiple k (code 51·k).
IVD_TABLE = {1: "L1L2", 2: "L2L3", 3: "L3L4", 4: "L4L5", 5: "L5S1"}
IVD_LEVEL_CODES = {1: 5, 2: 4, 3: 3, 4: 2, 5: 1}


def level_code_overshoot(code: int) -> float:
    """How far, in native spacings, a level coded ``code``·51 reaches beyond
    its drawn outline after linear interpolation and a threshold at half
    the lowest code: (k − 1) / (2k)."""
    if code < 1:
        raise ValueError(f"level code {code} is not a positive multiple")
    return (code - 1) / (2 * code)


def erode_mm(mask: np.ndarray, spacing_mm: tuple[float, float, float], radius_mm: tuple[float, float, float],
             upsample: tuple[int, int, int] = (8, 8, 8)) -> np.ndarray:
    """``mask`` eroded by an ellipsoid of ``radius_mm`` (per axis), to a
    fraction of a voxel: done on a grid ``upsample`` times finer, each
    voxel kept when at least half of it survives.

    Raises
    ------
    ValueError
        If a radius is not positive or the shapes of the arguments differ.
    """
    if len(spacing_mm) != mask.ndim or len(radius_mm) != mask.ndim or len(upsample) != mask.ndim:
        raise ValueError(f"spacing, radius and upsampling need {mask.ndim} values each")
    if min(radius_mm) <= 0:
        raise ValueError(f"radius {radius_mm} must be positive on every axis")
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in ndimage.find_objects(mask.astype(np.uint8))[0])
    part = mask[box]
    fine = part
    for axis, factor in enumerate(upsample):
        fine = fine.repeat(factor, axis=axis)
    fine = np.pad(fine, 1)  # the box may end at the array's edge
    # Distances in units of the radius, so the ellipsoid becomes the unit ball.
    sampling = np.array([s / f / r for s, f, r in zip(spacing_mm, upsample, radius_mm)])
    depth, nearest = ndimage.distance_transform_edt(fine, sampling=sampling, return_indices=True)
    # The outline runs half a fine voxel short of the nearest outside
    # voxel's centre, along the direction towards it.
    half_step = np.zeros(fine.shape, np.float32)
    for axis in range(3):
        position = np.arange(fine.shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
        half_step += np.abs(nearest[axis] - position).astype(np.float32) * np.float32(0.5 * sampling[axis] ** 2)
    kept = (depth - half_step / np.maximum(depth, 1e-9) > 1.0)[1:-1, 1:-1, 1:-1]
    blocks = kept.reshape(part.shape[0], upsample[0], part.shape[1], upsample[1], part.shape[2], upsample[2])
    out = np.zeros_like(mask)
    out[box] = part & (blocks.mean(axis=(1, 3, 5)) >= 0.5)
    return out


def _overshoot_mm(code: int, native_spacing_mm: tuple[float, float, float]) -> tuple[float, float, float]:
    fraction = level_code_overshoot(code)
    return (fraction * native_spacing_mm[0], fraction * native_spacing_mm[1], fraction * native_spacing_mm[2])


def source_size_disc_labels(labels: np.ndarray, spacing_mm: Sequence[float] = (1.0, 1.0, 1.0),
                            codes: dict[int, int] | None = None,
                            native_spacing_mm: tuple[float, float, float] = IVD_NATIVE_SPACING_MM) -> np.ndarray:
    """IVD disc labels (sagittal planes on the first axis) with each level
    eroded back to its drawn outline (module docstring); voxels it loses
    become 0. ``spacing_mm``: the voxel size per axis (e.g. nibabel's
    ``affines.voxel_sizes``); ``codes`` maps label value to the source's code
    multiple (`IVD_LEVEL_CODES` by default)."""
    spacing = (float(spacing_mm[0]), float(spacing_mm[1]), float(spacing_mm[2]))
    out = np.array(labels, copy=True)
    for value, code in (codes or IVD_LEVEL_CODES).items():
        mask = labels == value
        if code == 1 or not mask.any():
            continue
        kept = erode_mm(mask, spacing, _overshoot_mm(code, native_spacing_mm))
        out[mask & ~kept] = 0
    return out


@functools.lru_cache(maxsize=4)
def source_size_label_file(label_path: Path) -> np.ndarray:
    """`source_size_disc_labels` of an IVD label file (NIfTI), computed once
    per file and process (the validations ask for it per slab thickness);
    read-only."""
    import nibabel as nib  # training-only dependency

    lab: Any = nib.load(str(label_path))  # a Nifti1Image; nibabel types it as any file image
    labels = source_size_disc_labels(np.asarray(lab.dataobj).astype(np.uint8), nib.affines.voxel_sizes(lab.affine))
    labels.setflags(write=False)
    return labels


def _disc_components(case: TrainingCase) -> tuple[np.ndarray, list[int]]:
    """The case's labelled discs as components, ordered superior to inferior."""
    components, n = ndimage.label(case.allowed == DISC)
    rows = ndimage.center_of_mass(case.allowed == DISC, components, range(1, n + 1)) if n else []
    return components, [1 + int(i) for i in np.argsort([r[1] for r in rows])]  # rows run superior→inferior


def with_source_size_discs(case: TrainingCase,
                           native_spacing_mm: tuple[float, float, float] = IVD_NATIVE_SPACING_MM) -> TrainingCase:
    """An IVD case whose five discs are eroded back to their drawn outline
    (`source_size_disc_labels` on the training grid); what they lose may be
    body, S1 or background, like the rest of the labelled extent. Other
    cases are returned unchanged.

    Raises
    ------
    ValueError
        If an IVD case does not hold exactly five separate discs (the
        codes follow their order).
    """
    if not case.name.startswith("IVD") or not (case.allowed == DISC).any():
        return case
    components, order = _disc_components(case)
    if len(order) != len(IVD_LEVEL_CODES):
        raise ValueError(f"{case.name}: {len(order)} separate discs, expected {len(IVD_LEVEL_CODES)}")
    labels = np.zeros(case.allowed.shape, np.uint8)
    for value, component in zip(IVD_TABLE, order):  # both run superior to inferior
        labels[components == component] = value
    kept = source_size_disc_labels(labels, (case.plane_spacing_mm, TRAINING_SPACING_MM, TRAINING_SPACING_MM),
                                   native_spacing_mm=native_spacing_mm)
    allowed = case.allowed.copy()
    allowed[(labels > 0) & (kept == 0)] = BG | VB | S1
    return TrainingCase(case.name, case.image, allowed, case.plane_spacing_mm, case.labelled_planes)


def with_uncertain_disc_rim(case: TrainingCase, lateral_planes: int = 2, in_plane_pixels: int = 1) -> TrainingCase:
    """An IVD case whose dilated disc outlines are left open.

    Every disc but the lowest (L5S1) keeps its interior as disc, while its
    outermost ``lateral_planes`` planes on each side and its in-plane rim of
    ``in_plane_pixels`` may be disc, body or background: the marginal loss
    then takes the boundary from L5S1 and the phantoms' exact discs. Wider
    than the dilation on the end plates (module docstring); other cases are
    returned unchanged.
    """
    if not case.name.startswith("IVD"):
        return case
    components, order = _disc_components(case)
    if len(order) < 2:
        return case
    box = np.ones((2 * lateral_planes + 1, 2 * in_plane_pixels + 1, 2 * in_plane_pixels + 1), bool)
    upper = (components > 0) & (components != order[-1])
    rim = upper & ~ndimage.binary_erosion(upper, structure=box)
    allowed = case.allowed.copy()
    allowed[rim] = DISC | VB | BG
    return TrainingCase(case.name, case.image, allowed, case.plane_spacing_mm, case.labelled_planes)


def end_plate_offsets_mm(image: np.ndarray, mask: np.ndarray, spacing_mm: float = 1.0) -> tuple[float, float]:
    """How far a disc mask's boundary lies beyond the image's edge at its
    inferior and superior end plate (median, mm; positive: outside the
    edge), along the last axis (inferior→superior, as in RAS arrays).

    On the planes of the first axis holding at least half the mask's largest
    area, and the middle 60 % of its extent along the second axis, each
    column through one unbroken run of disc is followed outwards from three
    voxels inside the boundary to four beyond it; the edge is the steepest
    fall of the image there, to a fraction of a voxel (parabola through the
    largest fall and its neighbours). The dark end plate beside a bright
    disc gives the edge; where a mask ends is the annotator's convention,
    so compare offsets between discs of one image, not with zero.

    Raises
    ------
    ValueError
        If the image and mask differ in shape or no column can be followed.
    """
    if image.shape != mask.shape:
        raise ValueError(f"image {image.shape} and mask {mask.shape} differ")
    area = mask.sum(axis=(1, 2))
    offsets: dict[int, list[float]] = {-1: [], 1: []}
    for plane in np.nonzero(area >= 0.5 * area.max())[0] if area.any() else []:
        rows = np.nonzero(mask[plane].any(axis=1))[0]
        first, extent = rows.min(), rows.max() - rows.min()
        for row in range(int(first + 0.2 * extent), int(first + 0.8 * extent) + 1):
            run = np.nonzero(mask[plane, row])[0]
            if len(run) < 3 or (np.diff(run) != 1).any():
                continue
            profile = image[plane, row].astype(float)
            for step, end in ((-1, run.min()), (1, run.max())):
                positions = end + step * np.arange(-3, 5)
                if positions.min() < 0 or positions.max() >= len(profile):
                    continue
                fall = -np.diff(profile[positions])  # between positions i and i + 1
                i = int(np.argmax(fall))
                if fall[i] <= 0:
                    continue
                shift = 0.0
                if 0 < i < len(fall) - 1:
                    curvature = fall[i - 1] - 2 * fall[i] + fall[i + 1]
                    shift = 0.5 * (fall[i - 1] - fall[i + 1]) / curvature if curvature else 0.0
                edge = -3 + i + 0.5 + shift  # voxels outwards from the last disc voxel
                offsets[step].append((0.5 - edge) * spacing_mm)
    if not offsets[-1] or not offsets[1]:
        raise ValueError("no column through the disc could be followed to both end plates")
    return float(np.median(offsets[-1])), float(np.median(offsets[1]))


def main(argv: list[str] | None = None) -> int:
    """Print both checks of the dilation model on the shared IVD volumes."""
    import nibabel as nib  # training-only dependency

    ap = argparse.ArgumentParser(description="check the IVD disc-mask dilation model on the shared data")
    ap.add_argument("--data", type=Path, required=True, help="../shared/data/lumbar_mri")
    args = ap.parse_args(argv)
    stems = sorted(p.name.removesuffix("_label.nii.gz") for p in args.data.glob("IVD_*_label.nii.gz"))
    if not stems:
        raise SystemExit(f"no IVD volumes in {args.data}")
    print("volume  level  drawn/source-size  end-plate offset beyond the edge minus L5S1's (predicted)")
    excess: dict[str, list[float]] = {level: [] for level in IVD_TABLE.values()}
    offset: dict[str, list[float]] = {level: [] for level in IVD_TABLE.values()}
    for stem in stems:
        label_img: Any = nib.load(str(args.data / f"{stem}_label.nii.gz"))  # nibabel types it as any file image
        image_img: Any = nib.load(str(args.data / f"{stem}_image.nii.gz"))
        labels = np.asarray(label_img.dataobj).astype(np.uint8)
        image = np.asarray(image_img.dataobj).astype(float)
        spacing = nib.affines.voxel_sizes(label_img.affine)
        source_size = source_size_disc_labels(labels, spacing)
        mean_offset = {v: float(np.mean(end_plate_offsets_mm(image, labels == v, float(spacing[2]))))
                       for v in IVD_TABLE}
        for value, level in IVD_TABLE.items():
            excess[level].append((labels == value).sum() / (source_size == value).sum() - 1)
            offset[level].append(mean_offset[value] - mean_offset[5])
            predicted = level_code_overshoot(IVD_LEVEL_CODES[value]) * IVD_NATIVE_SPACING_MM[1]
            print(f"{stem:<7} {level:<6} {excess[level][-1]:+7.1%}            {offset[level][-1]:+.2f} mm "
                  f"({predicted:.2f})")
    for level in IVD_TABLE.values():
        print(f"{'mean':<7} {level:<6} {np.mean(excess[level]):+7.1%}            {np.mean(offset[level]):+.2f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
