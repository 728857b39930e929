"""The sagittal vertebral-body/disc engine on ONNX Runtime.

Pre-processing is `inference.preprocessing` (the same code as training):
slices turned to the training orientation (rows superior→inferior, columns
anterior→posterior), intensity-normalised per series, resampled to the
training pixel spacing; softmax scores are resampled back to the native grid
before the argmax, then `inference.postprocess` cleans the components and
`inference.level_naming` names the levels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np

from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.backends import Backend, make_backend
from spinegate.dicom_io.levels import StructureKind, structure_by_label, structure_by_name
from spinegate.inference.level_naming import CLASS_DISC, CLASS_S1, CLASS_VB, NamedLabels, name_levels
from spinegate.inference.preprocessing import from_training_grid, normalise_intensity, to_training_grid

__all__ = ["ModelInfo", "SegmentationEngine", "SagittalSpineEngine", "EngineError", "load_model_info",
           "with_neighbours", "canonical_planes", "to_canonical",
           "structure_confidence", "with_confidence_flags", "LOW_CONFIDENCE", "FLAG_LOW_CONFIDENCE"]

log = logging.getLogger(__name__)

MODEL_NAME = "sagittal_spine"

# A structure whose voxels the network gives their class a mean softmax
# score below this is one it hesitated over. On the validation volumes and
# their hard cases (docs/models.md) intact lumbar bodies score 0.89-0.96 and
# discs 0.79-0.92; under these bounds fell an L5 of Dice 0.58, an S1 of
# Dice 0.13, cut thoracic bodies and discs at the top of the field.
LOW_CONFIDENCE = {StructureKind.VERTEBRAL_BODY: 0.85, StructureKind.DISC: 0.78}
FLAG_LOW_CONFIDENCE = "low_model_confidence"


class EngineError(RuntimeError):
    """The engine cannot run (model missing or unreadable)."""


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a committed model file."""

    name: str
    version: str
    path: Path
    sha256: str
    backend: str = ""  # the inference backend running it, once loaded (`backends.BACKENDS`)


SegmentationT_co = TypeVar("SegmentationT_co", covariant=True)


class SegmentationEngine(Protocol[SegmentationT_co]):
    """What every engine offers: the identity of its model, and one series'
    segmentation (`SpineSegmentation`, `AxialSegmentation`). Engines are
    thread-safe: several series may be segmented at once."""

    info: ModelInfo
    backend: Backend

    def segment(self, volume: SeriesVolume) -> SegmentationT_co: ...


def _check_source(model_dir: Path, record: dict, path: Path) -> None:
    """A derived model must come from the model file now beside it (a
    retrained model makes its quantised version stale)."""
    source = record.get("source_model")
    if not source or not (model_dir / source).exists():
        return
    if hashlib.sha256((model_dir / source).read_bytes()).hexdigest() != record.get("source_sha256"):
        raise EngineError(f"{path} was derived from another version of {source}; re-run "
                          f"'python -m spinegate.inference.training.quantize --out {model_dir}' (docs/models.md, the axial model)")


def load_model_info(model_dir: Path, name: str = MODEL_NAME) -> ModelInfo:
    """Read a model's identity (version from its training record).

    Raises
    ------
    EngineError
        If the ONNX file is missing.
    """
    path = model_dir / f"{name}.onnx"
    if not path.exists():
        command = {"sagittal_spine": "python -m spinegate.inference.training.train fit",
                   "axial_muscle": "python -m spinegate.inference.training.train_axial",
                   "axial_muscle.int8": "python -m spinegate.inference.training.quantize"}
        how = command.get(name, command.get(name.split(".")[0], "the training command in docs/models.md"))
        raise EngineError(f"model file {path} is missing; train it with '{how}' (docs/models.md)")
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    version = "unversioned"
    # A trained model's record, or a derived (quantised) model's.
    for record_path in (model_dir / f"{name}.training.json", model_dir / f"{name}.quantization.json"):
        if record_path.exists():
            record = json.loads(record_path.read_text())
            version = str(record.get("version", f"seed{record.get('seed', '?')}"))
            _check_source(model_dir, record, path)
            break
    return ModelInfo(name, version, path, sha)


@dataclass
class SpineSegmentation:
    """Result of the sagittal engine for one series."""

    named: NamedLabels
    inference_s: float
    timings_s: dict[str, float] = field(default_factory=dict)


def _canonical_axes(affine: np.ndarray) -> tuple[bool, bool, bool]:
    """(transpose, flip_rows, flip_cols) turning slices into training
    orientation: rows toward inferior (−z), columns toward posterior (+y)."""
    row_step, col_step = affine[:3, 1], affine[:3, 2]
    transpose = abs(row_step[2]) < abs(col_step[2])
    if transpose:
        row_step, col_step = col_step, row_step
    return transpose, bool(row_step[2] > 0), bool(col_step[1] < 0)


def to_canonical(a: np.ndarray, axes: tuple[bool, bool, bool]) -> np.ndarray:
    """``a`` (…, rows, columns) turned into training orientation (`canonical_planes`)."""
    transpose, fr, fc = axes
    if transpose:
        a = np.swapaxes(a, -1, -2)
    if fr:
        a = a[..., ::-1, :]
    if fc:
        a = a[..., ::-1]
    return np.ascontiguousarray(a)


def _from_canonical(a: np.ndarray, axes: tuple[bool, bool, bool]) -> np.ndarray:
    transpose, fr, fc = axes
    if fc:
        a = a[..., ::-1]
    if fr:
        a = a[..., ::-1, :]
    if transpose:
        a = np.swapaxes(a, -1, -2)
    return np.ascontiguousarray(a)


def canonical_planes(volume: SeriesVolume) -> tuple[np.ndarray, tuple[float, float], tuple[bool, bool, bool]]:
    """A sagittal volume's slices in training orientation, their (row,
    column) pixel spacing in mm, and the axes to turn results back with
    (training, `spinegate train`, and inference share it)."""
    axes = _canonical_axes(volume.affine)
    spacing = volume.spacing_mm
    return (to_canonical(volume.array, axes), (spacing[2], spacing[1]) if axes[0] else (spacing[1], spacing[2]),
            axes)


def with_neighbours(n_slices: int, input_slices: int) -> np.ndarray:
    """Slice indices (n_slices, input_slices) feeding each slice with its
    neighbours in series order; the first and last slices repeat themselves
    where a neighbour is missing (as in training)."""
    if input_slices < 1 or input_slices % 2 == 0:
        raise EngineError(f"model input must take an odd number of slices, it takes {input_slices}")
    half = input_slices // 2
    return np.clip(np.arange(n_slices)[:, None] + np.arange(-half, half + 1)[None, :], 0, n_slices - 1)


class SagittalSpineEngine:
    """Segments vertebral bodies and discs of a sagittal series.

    Parameters
    ----------
    model_dir : pathlib.Path
        Folder holding ``sagittal_spine.onnx``.
    threads : int
        ONNX Runtime intra-op threads.
    batch_slices : int
        Slices per inference call.
    backend : str
        One of `backends.BACKENDS`: ``"onnxruntime"`` (the product on the
        CPU), ``"auto"`` (a GPU where one works), ``"torch"`` (reference,
        parity tests), or a named CUDA backend.
    """

    def __init__(self, model_dir: Path, threads: int = 2, batch_slices: int = 8, backend: str = "onnxruntime") -> None:
        self.info = load_model_info(model_dir)
        self.backend = make_backend(backend, self.info.path, threads)
        self.info = replace(self.info, backend=self.backend.name)
        self._batch = batch_slices
        # 1: single slices; 3: each slice with its two neighbours (2.5D).
        self.input_slices = self.backend.input_channels
        log.info("loaded model name=%s version=%s sha256=%s backend=%s", self.info.name, self.info.version,
                 self.info.sha256[:12], self.backend.name)

    def scores(self, volume: SeriesVolume) -> np.ndarray:
        """Softmax class scores (slices, classes, rows, cols) on the native grid."""
        planes, ps, axes = canonical_planes(volume)
        x, valid = to_training_grid(normalise_intensity(planes), ps)
        stacks = with_neighbours(len(x), self.input_slices)
        outs = []
        for i in range(0, len(x), self._batch):
            batch = x[stacks[i : i + self._batch]].astype(np.float32)
            logits = self.backend.run(batch)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            outs.append(e / e.sum(axis=1, keepdims=True))
        probs = from_training_grid(np.concatenate(outs), valid, planes.shape[1:])
        return _from_canonical(probs, axes)

    def segment(self, volume: SeriesVolume) -> SpineSegmentation:
        """Classes, post-processing and level names for one series."""
        t0 = time.perf_counter()
        probs = self.scores(volume)
        t1 = time.perf_counter()
        named = name_levels(probs.argmax(axis=1).astype(np.uint8), volume.affine, volume.voxel_volume_mm3)
        named = with_confidence_flags(named, structure_confidence(probs, named.label_map))
        t2 = time.perf_counter()
        return SpineSegmentation(named, t1 - t0, {"inference": t1 - t0, "postprocess": t2 - t1})


def _class_of(label: int) -> int:
    s = structure_by_label(label)
    if s.kind is StructureKind.DISC:
        return CLASS_DISC
    return CLASS_S1 if s.name == "S1" else CLASS_VB


def structure_confidence(probs: np.ndarray, label_map: np.ndarray) -> dict[str, float]:
    """Level name → the mean softmax score of its class over its voxels.

    Parameters
    ----------
    probs : numpy.ndarray
        (slices, classes, rows, cols) softmax scores on the label map's grid.
    label_map : numpy.ndarray
        (slices, rows, cols) spinegate labels (`dicom_io.levels`).
    """
    if probs.shape[0] != label_map.shape[0] or probs.shape[2:] != label_map.shape[1:]:
        raise ValueError(f"'probs' {probs.shape} and 'label_map' {label_map.shape} are not on one grid")
    out = {}
    for label in np.unique(label_map):
        if label:
            mask = label_map == label
            out[structure_by_label(int(label)).name] = float(probs[:, _class_of(int(label))][mask].mean())
    return out


def with_confidence_flags(named: NamedLabels, confidence: dict[str, float]) -> NamedLabels:
    """``named`` with ``low_model_confidence_<score>`` on each structure
    scored under its kind's `LOW_CONFIDENCE`."""
    flags = dict(named.structure_flags)
    for name, score in confidence.items():
        if score < LOW_CONFIDENCE[structure_by_name(name).kind]:
            flags[name] = tuple(flags.get(name, ())) + (f"{FLAG_LOW_CONFIDENCE}_{score:.2f}",)
    return NamedLabels(named.label_map, named.series_flags, flags)
