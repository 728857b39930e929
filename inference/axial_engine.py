"""The axial paraspinal-muscle engine on ONNX Runtime.

Each axial slice is segmented on its own (2D): series with gaps, or one
slice per disc level, are as good as contiguous stacks. Pre-processing is
`inference.preprocessing` with the axial network's pixel spacing; slices
are turned to the training orientation (rows anterior→posterior, columns
patient right→left), so laterality is read from the image grid, never
guessed. The network runs on overlapping tiles of its training patch size
(`inference.tiling`). Post-processing per slice: each muscle keeps its largest
connected component with holes filled (intramuscular fat belongs to the
muscle's area), vertebral body and disc their largest component. Before the
arg-max the area calibration (`inference.class_offsets`, fitted by
`inference.training.axial_calibration`) shifts each muscle's log score, so CSAs
come out unbiased on held-out phantoms.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage

from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.class_offsets import load_class_offsets
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES, AXIAL_SPACING_MM, AXIAL_TILE
from spinegate.inference.backends import make_backend
from spinegate.inference.engine import EngineError, load_model_info
from spinegate.inference.postprocess import component_sizes, fill_holes_2d
from spinegate.inference.preprocessing import from_training_grid, normalise_intensity, to_training_grid
from spinegate.inference.tiling import sliding_window_softmax

__all__ = ["AxialMuscleEngine", "AxialSegmentation", "MODEL_NAME", "axial_canonical_axes", "axial_canonical_planes",
           "to_axial_canonical", "clean_axial_classes", "LOW_MUSCLE_CONFIDENCE", "mean_class_score"]

log = logging.getLogger(__name__)

MODEL_NAME = "axial_muscle"
# A muscle whose voxels at a level the network gives their class a mean
# softmax score below this is one it hesitated over: on the real subject's
# held-out slice blocks, slices scored under 0.90 had a mean Dice of 0.58
# (0.83 above); on held-out phantoms 0.7 % of slices score under it
# (docs/outputs.md, "Review worklist").
LOW_MUSCLE_CONFIDENCE = 0.90


@dataclass
class AxialSegmentation:
    """Result of the axial engine for one series: per-slice network classes
    (`inference.axial_classes` order) after post-processing."""

    classes: np.ndarray
    inference_s: float
    timings_s: dict[str, float] = field(default_factory=dict)
    # The softmax score of each pixel's final class (float16, like classes).
    class_scores: np.ndarray | None = None


def axial_canonical_axes(affine: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip_rows, flip_cols) turning axial slices into training
    orientation: rows toward posterior (+y), columns toward patient left (+x).

    Raises
    ------
    EngineError
        If the in-plane axes are not close to x and y (not an axial stack).
    """
    row_step, col_step = affine[:3, 1], affine[:3, 2]
    transpose = abs(row_step[0]) > abs(row_step[1])
    if transpose:
        row_step, col_step = col_step, row_step
    if abs(row_step[1]) < 0.5 * np.linalg.norm(row_step) or abs(col_step[0]) < 0.5 * np.linalg.norm(col_step):
        raise EngineError("the series' in-plane axes are not patient x and y; it is not an axial stack")
    return transpose, bool(row_step[1] < 0), bool(col_step[0] < 0)


def _apply(a: np.ndarray, axes: tuple[bool, bool, bool], inverse: bool = False) -> np.ndarray:
    transpose, fr, fc = axes
    if transpose and not inverse:
        a = np.swapaxes(a, -1, -2)
    if fr:
        a = a[..., ::-1, :]
    if fc:
        a = a[..., ::-1]
    if transpose and inverse:
        a = np.swapaxes(a, -1, -2)
    return np.ascontiguousarray(a)


def axial_canonical_planes(volume: SeriesVolume) -> tuple[np.ndarray, tuple[float, float], tuple[bool, bool, bool]]:
    """An axial volume's slices in training orientation, their (row, column)
    pixel spacing in mm, and the axes that turned them (inference and
    `spinegate train` share it)."""
    axes = axial_canonical_axes(volume.affine)
    spacing = volume.spacing_mm
    return _apply(volume.array, axes), ((spacing[2], spacing[1]) if axes[0] else (spacing[1], spacing[2])), axes


def to_axial_canonical(a: np.ndarray, axes: tuple[bool, bool, bool]) -> np.ndarray:
    """``a`` (…, rows, columns) turned as `axial_canonical_planes` turns the
    slices."""
    return _apply(a, axes)


def clean_axial_classes(classes: np.ndarray, pixel_area_mm2: float = 1.0, min_area_mm2: float = 15.0) -> np.ndarray:
    """Per slice and class: the largest 2D connected component, holes
    filled; a largest component under ``min_area_mm2`` is dropped (a muscle
    tapering out of the slice is not measured from a few stray pixels).
    Returns a new class map (uint8)."""
    out = np.zeros_like(classes, dtype=np.uint8)
    for k in range(classes.shape[0]):
        for c in range(1, len(AXIAL_CLASS_NAMES)):
            mask = classes[k] == c
            if not mask.any():
                continue
            comps, n = ndimage.label(mask)
            sizes = component_sizes(comps, n)
            if sizes.max() * pixel_area_mm2 < min_area_mm2:
                continue
            mask = fill_holes_2d(comps == (1 + int(np.argmax(sizes))))
            # Filling never takes pixels already given to another class.
            out[k][mask & ((out[k] == 0) | (classes[k] == c))] = c
    return out


class AxialMuscleEngine:
    """Segments paraspinal muscles, vertebral body and disc on axial slices.

    Parameters
    ----------
    model_dir : pathlib.Path
        Folder holding ``axial_muscle.onnx``.
    threads : int
        ONNX Runtime intra-op threads.
    batch_slices : int
        Slices per inference call.
    model_name : str
        Model file stem (the cross-validation folds use others).
    backend : str
        One of `backends.BACKENDS` (as for `SagittalSpineEngine`).
    calibrated : bool
        Apply the area calibration written beside the model
        (`inference.training.axial_calibration`), when there is one; its checksum
        joins the model version.
    """

    def __init__(self, model_dir: Path, threads: int = 2, batch_slices: int = 8, model_name: str = MODEL_NAME,
                 backend: str = "onnxruntime", calibrated: bool = True) -> None:
        self.info = load_model_info(model_dir, model_name)
        try:
            self.offsets = load_class_offsets(model_dir, model_name, self.info.sha256) if calibrated else None
        except ValueError as exc:
            raise EngineError(str(exc)) from exc
        if self.offsets is not None:
            self.info = replace(self.info, version=f"{self.info.version}+{self.offsets.tag}")
        self.backend = make_backend(backend, self.info.path, threads)
        self.info = replace(self.info, backend=self.backend.name)
        self._batch = batch_slices
        outputs = self.backend.output_classes
        if outputs != len(AXIAL_CLASS_NAMES):
            raise EngineError(f"{self.info.path} has {outputs} output classes, the axial engine needs "
                              f"{len(AXIAL_CLASS_NAMES)}")
        log.info("loaded model name=%s version=%s sha256=%s backend=%s", self.info.name, self.info.version,
                 self.info.sha256[:12], self.backend.name)

    def scores(self, volume: SeriesVolume, slices: slice | None = None) -> np.ndarray:
        """Softmax class scores (slices, classes, rows, cols) on the native grid,
        of every slice or only of ``slices`` (scaled by the whole series'
        intensities either way, so a slice scores the same in both)."""
        planes, ps, axes = axial_canonical_planes(volume)
        normalised = normalise_intensity(planes)
        x, valid = to_training_grid(normalised if slices is None else normalised[slices], ps, AXIAL_SPACING_MM)
        probs = sliding_window_softmax(self.backend.run, x[:, None], AXIAL_TILE, batch=self._batch)
        return _apply(from_training_grid(probs, valid, planes.shape[1:]), axes, inverse=True)

    def segment(self, volume: SeriesVolume) -> AxialSegmentation:
        """Network classes per slice (area calibration applied), post-processed."""
        t0 = time.perf_counter()
        probs = self.scores(volume)
        t1 = time.perf_counter()
        raw = self.offsets.classes(probs) if self.offsets is not None else probs.argmax(axis=1).astype(np.uint8)
        spacing = volume.spacing_mm
        classes = clean_axial_classes(raw, spacing[1] * spacing[2])
        scores = np.take_along_axis(probs, classes[:, None].astype(np.intp), axis=1)[:, 0].astype(np.float16)
        return AxialSegmentation(classes, t1 - t0, {"inference": t1 - t0, "postprocess": time.perf_counter() - t1},
                                 scores)


def mean_class_score(class_scores: np.ndarray, mask: np.ndarray) -> float:
    """Mean of the per-pixel class scores over ``mask`` (NaN when empty).

    Raises
    ------
    ValueError
        If the arrays are not on one grid.
    """
    if class_scores.shape != mask.shape:
        raise ValueError(f"'class_scores' {class_scores.shape} and 'mask' {mask.shape} are not on one grid")
    return float(class_scores[mask].astype(np.float32).mean()) if mask.any() else float("nan")
