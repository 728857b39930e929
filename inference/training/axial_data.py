"""Axial training and validation data without torch: the held-out blocks
of the real subject, its loader, and the axial phantom series renderer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from spinegate.dicom_io.levels import StructureKind, structure_by_label
from spinegate.dicom_io.phantom.paraspinal import (FASCIA_FAT_FRACTION, MUSCLE_LABELS, PHANTOM_REVISION, axial_grid,
                                                   make_paraspinal_anatomy, muscle_field)
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.axial_classes import AXIAL_SPACING_MM, DISC_CLASS, MUSCLE_CLASSES, VB_CLASS
from spinegate.inference.preprocessing import normalise_intensity, to_training_grid

__all__ = ["REAL_FOLDS", "VALIDATION_PHANTOM_SEEDS", "TUM_LABELS", "class_map_of_phantom_labels",
           "phantom_axial_series", "load_tum_planes", "tum_classes", "canonical_axial_volume",
           "PHANTOM_CACHE", "training_planes", "phantom_training_planes"]

# Contiguous blocks of TUM01's 29 slices held out in turn (cross-validation).
REAL_FOLDS = ((0, 10), (10, 20), (20, 29))
VALIDATION_PHANTOM_SEEDS = (1000, 1001, 1002, 1003)
# Rendered phantom series on the training grid (`phantom_training_planes`).
PHANTOM_CACHE = Path(".cache/axial_training")
# TUM01 label values (../shared/data/axial_muscle/README.md).
TUM_LABELS = {1: ("ES", "R"), 2: ("MF", "R"), 3: ("MF", "L"), 4: ("ES", "L")}


def class_map_of_phantom_labels(labels: np.ndarray) -> np.ndarray:
    """Phantom label values → network classes (0 background)."""
    lut = np.zeros(256, np.uint8)
    for value in range(1, 256):
        if value in MUSCLE_LABELS.values():
            key = next(k for k, v in MUSCLE_LABELS.items() if v == value)
            lut[value] = MUSCLE_CLASSES[key]
            continue
        try:
            s = structure_by_label(value)
        except (KeyError, ValueError):
            continue
        lut[value] = DISC_CLASS if s.kind is StructureKind.DISC else VB_CLASS
    return lut[labels]


def phantom_axial_series(seed: int, weighting: Weighting, multifidus_scale: float = 1.0,
                         fascia_fat_fraction: float = FASCIA_FAT_FRACTION,
                         ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """Render one axial phantom series (L1 top to S1) on a per-seed random
    grid, its multifidi scaled by ``multifidus_scale`` and its fascia as
    fatty as ``fascia_fat_fraction`` (`make_paraspinal_anatomy`). Returns
    image (n, rows, cols), class map and pixel spacing."""
    rng = np.random.default_rng(50_000 + seed)
    spacing = float(rng.uniform(0.5, 0.8))
    size = int(round(rng.uniform(200, 250) / spacing))
    slice_mm = float(rng.uniform(3.0, 5.0))
    ph = make_spine_phantom(seed)
    field = muscle_field(ph, make_paraspinal_anatomy(seed, multifidus_scale, fascia_fat_fraction))
    z_top = ph.element("L1").centre_lps[2] + ph.element("L1").height_mm / 2
    grid = axial_grid(z_top, ph.element("S1").centre_lps[2], slice_mm, size, size, spacing,
                      centre_xy_mm=(rng.uniform(-10, 10), field.view_centre_y_mm() + rng.uniform(-10, 10)))
    image, labels = render_phantom(ph, grid, weighting, noise_fraction=float(rng.uniform(0.01, 0.05)), subplanes=3,
                                   muscles=field, seed=seed)
    return image, class_map_of_phantom_labels(labels), (spacing, spacing)


def training_planes(normalised: np.ndarray, classes: np.ndarray, allowed_unlabelled: int,
                    spacing: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Normalised planes and their class map (0 = unlabelled) on the
    training grid: the image and per-pixel allowed-class bitmasks."""
    x, (r, c) = to_training_grid(normalised, spacing, AXIAL_SPACING_MM)
    zoom = (1.0, r / classes.shape[1], c / classes.shape[2])
    cls = ndimage.zoom(classes, zoom, order=0, grid_mode=True, mode="nearest")[:, :r, :c]
    allowed = np.where(cls > 0, 1 << cls.astype(np.int32), allowed_unlabelled).astype(np.int32)
    return x[:, :r, :c].astype(np.float32), allowed


def phantom_training_planes(seed: int, weighting: Weighting, cache_dir: Path | None = PHANTOM_CACHE,
                            multifidus_scale: float = 1.0,
                            fascia_fat_fraction: float = FASCIA_FAT_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """`training_planes` of a fully labelled phantom series, rendered once
    and cached as .npz in ``cache_dir`` (named by the phantom revision and
    any multifidus scale or fascia fat fraction)."""
    variant = "" if multifidus_scale == 1.0 else f"_mf{multifidus_scale:.4f}"
    if fascia_fat_fraction != FASCIA_FAT_FRACTION:
        variant += f"_fa{fascia_fat_fraction:.4f}"
    path = cache_dir / f"axial_phantom_r{PHANTOM_REVISION}_{seed}_{weighting.name}{variant}.npz" if cache_dir else None
    if path is not None and path.exists():
        z = np.load(path)
        return z["image"], z["allowed"]
    image, classes, spacing = phantom_axial_series(seed, weighting, multifidus_scale, fascia_fat_fraction)
    planes, allowed = training_planes(normalise_intensity(image), classes, 1, spacing)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, image=planes, allowed=allowed)
    return planes, allowed


def load_tum_planes(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """TUM01 water and fat images and the manual labels as canonical axial
    planes (n, rows A→P, cols R→L), with the pixel spacing (mm)."""
    import nibabel as nib  # training-only dependency

    def planes(name: str) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(str(data_dir / f"TUM01_{name}.nii.gz"))
        # File axes: i toward the subject's left, j toward posterior, k slices.
        return np.ascontiguousarray(np.transpose(np.asarray(img.dataobj), (2, 1, 0))), img.affine

    water, affine = planes("water_image")
    fat, _ = planes("fat_image")
    labels, _ = planes("label")
    return water.astype(np.float32), fat.astype(np.float32), labels.astype(np.uint8), float(abs(affine[0, 0]))


def tum_classes(labels: np.ndarray) -> np.ndarray:
    """TUM01 label values → network classes."""
    out = np.zeros(labels.shape, np.uint8)
    for value, key in TUM_LABELS.items():
        out[labels == value] = MUSCLE_CLASSES[key]
    return out


def canonical_axial_volume(planes: np.ndarray, pixel_spacing_mm: tuple[float, float],
                           slice_mm: float = 4.0) -> SeriesVolume:
    """Planes already in training orientation (rows anterior→posterior,
    columns patient right→left, slices superior→inferior) as an in-memory
    axial volume: the phantom series and TUM01 as the engine sees them."""
    aff = np.eye(4)
    aff[:3, 0] = (0.0, 0.0, -slice_mm)
    aff[:3, 1] = (0.0, pixel_spacing_mm[0], 0.0)
    aff[:3, 2] = (pixel_spacing_mm[1], 0.0, 0.0)
    return SeriesVolume.from_array(np.asarray(planes, np.float32), aff, slice_mm)
