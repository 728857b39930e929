"""Training data for the sagittal spine network: cached 2D slices with
partial-label targets.

Every case becomes arrays of sagittal planes in display orientation (rows
superior→inferior, columns anterior→posterior) at ``TRAINING_SPACING_MM``,
intensities normalised per volume, plus a per-pixel *allowed-class mask*:
bit ``c`` is set when class ``c`` is consistent with the manual labels. A
fully labelled pixel allows one class; a pixel whose structure was not
annotated allows every class it might be (e.g. "background or disc" in the
vertebral-body datasets, which have no disc labels), and a pixel outside the
annotated extent allows all classes, so it adds nothing to the loss.

Subjects, not volumes, are split: duplicate volumes and exams of one patient
stay together (see ../shared/data/lumbar_mri/README.md).
"""
from __future__ import annotations

import csv
import io
import logging
import lzma
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage

from spinegate.dicom_io.levels import StructureKind, structure_by_label
from spinegate.dicom_io.classify import Weighting
from spinegate.dicom_io.phantom import SliceGrid, make_spine_phantom, render_phantom
from spinegate.inference.backends import Backend
from spinegate.inference.engine import with_neighbours
from spinegate.inference.level_naming import MIN_BODY_MM3
from spinegate.inference.preprocessing import TRAINING_SPACING_MM, normalise_intensity, to_training_grid

__all__ = [
    "CLASS_NAMES",
    "TrainingCase",
    "SPLIT",
    "list_real_stems",
    "load_real_case",
    "make_phantom_case",
    "pack_cases",
    "teacher_classes",
    "with_teacher_s1",
    "with_open_body_rim",
    "with_nearest_slice_labels",
    "dataset_of",
    "unpack_cases",
    "training_stems",
    "allowed_all",
    "acquired_plane_phase",
]

log = logging.getLogger(__name__)

# Network output classes.
CLASS_NAMES = ("background", "vertebral_body", "s1", "disc")
BG, VB, S1, DISC = 1, 2, 4, 8
allowed_all = BG | VB | S1 | DISC
# A plane whose labelled area is under this fraction of the largest plane's
# lies at the lateral end of the structures (partial volume in thick slabs).
END_PLANE_AREA_FRACTION = 0.5
# Acquired slice spacings (in 1 mm planes) looked for in interpolated volumes:
# clinical sagittal lumbar series are 3-6 mm. Widest first: a 6-plane grid
# also shows a kink on every other plane of a 3-plane one.
ACQUIRED_SPACINGS_PLANES = (6, 5, 4, 3)

# Real-data label values (../shared/data/lumbar_mri/README.md tables).
_VB_TABLE_S1 = 6
_EXCLUDED = {"VB3_19": "byte-identical duplicate of VB3_18", "VB3_33": "byte-identical duplicate of VB3_32",
             "VB3_36": "L4 mask belongs to VB3_35 and does not fit the image"}

# Validation subjects (never trained on). Same-patient exams are kept together:
# VB1_10/11 are one subject.
SPLIT = {
    "validation": ["VB3_05", "VB3_12", "VB3_20", "VB3_28", "VB3_37", "VB2_06", "VB2_14", "VB1_10", "VB1_11",
                   "VB1_16", "IVD_42"],
    "validation_phantom_seeds": [1000, 1001, 1002, 1003],
    "excluded": sorted(_EXCLUDED),
}


@dataclass(frozen=True)
class TrainingCase:
    """One volume as normalised sagittal planes with allowed-class masks.

    ``image``: float32 (planes, rows, columns) in [0, 1]; ``allowed``: uint8
    bitmask per pixel (bit order = ``CLASS_NAMES``); ``plane_spacing_mm``: the
    left-right distance between planes (1 mm for the shared data), used to
    average thick slabs during augmentation.
    """

    name: str
    image: np.ndarray
    allowed: np.ndarray
    plane_spacing_mm: float
    labelled_planes: np.ndarray

    def __post_init__(self) -> None:
        if self.image.shape != self.allowed.shape:
            raise ValueError(f"'image' {self.image.shape} and 'allowed' {self.allowed.shape} differ")

    @cached_property
    def acquired_grid(self) -> tuple[int, int] | None:
        """(first plane, planes apart) of the slices the volume was acquired
        as, when its planes were interpolated from slices 3-6 planes apart
        (`acquired_plane_phase`); None otherwise."""
        for apart in ACQUIRED_SPACINGS_PLANES:
            phase = acquired_plane_phase(self.image, apart)
            if phase is not None:
                return phase, apart
        return None

    @cached_property
    def end_planes(self) -> np.ndarray:
        """Labelled planes at the lateral ends of the structures: those whose
        labelled area (pixels of one known foreground class) is under
        ``END_PLANE_AREA_FRACTION`` of the largest plane's."""
        known_foreground = np.isin(self.allowed, (VB, S1, DISC))
        area = known_foreground.sum(axis=(1, 2))
        if area.max() == 0:
            return np.zeros(0, int)
        return np.nonzero((area > 0) & (area < END_PLANE_AREA_FRACTION * area.max()))[0]


def acquired_plane_phase(image_ras: np.ndarray, spacing: int) -> int | None:
    """Where the acquired slices lie in a volume resampled to 1 mm by linear
    interpolation from sagittal slices ``spacing`` planes apart.

    Between two acquired slices the interpolated intensities change at a
    constant rate, so the second difference along i is near zero there and
    jumps on every acquired plane. Returns the first acquired plane's index
    modulo ``spacing``, or None when the jumps do not recur with that period
    (the volume was acquired on another grid, or not interpolated so).
    """
    if spacing < 2 or image_ras.shape[0] < 3 * spacing:
        return None
    curvature = np.abs(np.diff(image_ras.astype(np.float32), n=2, axis=0)).mean(axis=(1, 2))
    on_phase = [np.arange((phase - 1) % spacing, len(curvature), spacing) for phase in range(spacing)]
    phase = int(np.argmax([np.median(curvature[k]) for k in on_phase]))
    off = np.delete(curvature, on_phase[phase])
    # Every kink on the grid, and almost none between (a grid a fraction of a
    # millimetre off drifts through the phases: no single phase holds it).
    return phase if float(np.median(curvature[on_phase[phase]])) > 3 * max(float(np.quantile(off, 0.95)), 1e-6) \
        else None


def dataset_of(name: str) -> str:
    """The dataset (label set) a case or row name comes from: the part
    before the first ``_`` (VB1, VB2, VB3, IVD, phantom); each dataset has
    its own contouring convention."""
    return name.split("_")[0]


def _to_display_planes(ras: np.ndarray) -> np.ndarray:
    """RAS array (i L→R, j P→A, k I→S) → (i, rows S→I, columns A→P)."""
    return np.ascontiguousarray(np.transpose(ras, (0, 2, 1))[:, ::-1, ::-1])


def _resample_planes(planes: np.ndarray, spacing_mm: float, order: int) -> np.ndarray:
    zoom = spacing_mm / TRAINING_SPACING_MM
    return np.stack([ndimage.zoom(p, zoom, order=order, prefilter=False) for p in planes])


def _rows_of(labels: np.ndarray, value: int) -> np.ndarray:
    return np.where((labels == value).any(axis=(0, 2)))[0]


def _vb_allowed(labels: np.ndarray, top_body_partial: bool) -> np.ndarray:
    """Allowed-class mask for a vertebral-body-only labelled volume.

    Inside the labelled extent unlabelled pixels are background or disc.
    Below the most inferior labelled body nothing is a lumbar/thoracic body:
    it is sacrum (S1 when S1 is not labelled), disc or background. Rows that
    L5 shares with the sacral promontory may hold S1 when S1 is unlabelled.
    """
    allowed = np.full(labels.shape, allowed_all, np.uint8)
    rows = np.where(labels.any(axis=(0, 2)))[0]
    top, bottom = rows.min(), rows.max()
    if top_body_partial:
        # The most superior body was only partly traced: start the trusted
        # extent below it.
        top_label = labels[:, top, :][labels[:, top, :] > 0][0]
        top = _rows_of(labels, int(top_label)).max() + 1
    s1_labelled = bool((labels == _VB_TABLE_S1).any())
    allowed[:, top : bottom + 1, :] = BG | DISC
    if s1_labelled:
        allowed[:, bottom + 1 :, :] = BG | DISC
    else:
        l5_rows = _rows_of(labels, 5)
        if l5_rows.size:
            allowed[:, l5_rows.min() : bottom + 1, :] = BG | DISC | S1
        allowed[:, bottom + 1 :, :] = BG | DISC | S1
    allowed[(labels > 0) & (labels != _VB_TABLE_S1)] = VB
    allowed[labels == _VB_TABLE_S1] = S1
    return allowed


def with_nearest_slice_labels(case: TrainingCase) -> TrainingCase:
    """The case with each plane between two acquired slices labelled as the
    nearer slice was drawn, and the plane midway allowing what either slice
    allows; unchanged without an acquired grid (`TrainingCase.acquired_grid`).

    VB3's source interpolated its labels to 1 mm so that every plane between
    two acquired slices holds the union of the two outlines (model card,
    "Measurement accuracy"): bodies 10 % larger than drawn, reaching 3 mm
    beyond the outermost drawn slice.
    """
    if case.acquired_grid is None:
        return case
    first, apart = case.acquired_grid
    allowed = case.allowed.copy()
    n = allowed.shape[0]
    for plane in range(n):
        offset = (plane - first) % apart
        if offset == 0:
            continue
        before, after = plane - offset, plane - offset + apart
        if before < 0 or after >= n:
            continue  # outside the outermost acquired slices: kept as the source gave it
        if 2 * offset < apart:
            allowed[plane] = case.allowed[before]
        elif 2 * offset > apart:
            allowed[plane] = case.allowed[after]
        else:
            allowed[plane] = case.allowed[before] | case.allowed[after]
    return TrainingCase(case.name, case.image, allowed, case.plane_spacing_mm, case.labelled_planes)


def with_open_body_rim(case: TrainingCase, in_plane_pixels: int = 1, lateral_planes: int = 1) -> TrainingCase:
    """A case whose vertebral-body and S1 outlines are left open by a rim.

    Each labelled body (and S1) keeps its interior, less ``in_plane_pixels``
    from its in-plane boundary, as its class; that inner rim may be the
    structure, background or disc, and an outer rim of ``in_plane_pixels``
    in-plane and ``lateral_planes`` planes to each side the structure or
    what the pixel allowed before. The marginal loss then takes where a
    body's contour lies from the other cases. For a label set drawn to
    another contour convention than the one measurements are compared with
    (VB1's outlines enclose about a tenth less than the network's, VB2's and
    VB3's about a twentieth more; the model card's measurement accuracy).
    """
    allowed = case.allowed.copy()
    in_plane = np.ones((1, 2 * in_plane_pixels + 1, 2 * in_plane_pixels + 1), bool)
    around = np.ones((2 * lateral_planes + 1, 2 * in_plane_pixels + 1, 2 * in_plane_pixels + 1), bool)
    for cls, other in ((VB, S1), (S1, VB)):
        structure = case.allowed == cls
        if not structure.any():
            continue
        inner_rim = structure & ~ndimage.binary_erosion(structure, structure=in_plane)
        outer_rim = ndimage.binary_dilation(structure, structure=around) & ~structure & (case.allowed != other)
        allowed[inner_rim] = cls | BG | DISC
        allowed[outer_rim] |= cls
    return TrainingCase(case.name, case.image, allowed, case.plane_spacing_mm, case.labelled_planes)


def _disc_allowed(labels: np.ndarray) -> np.ndarray:
    """Allowed-class mask for a disc-only labelled volume."""
    allowed = np.full(labels.shape, allowed_all, np.uint8)
    rows = np.where(labels.any(axis=(0, 2)))[0]
    allowed[:, rows.min() : rows.max() + 1, :] = BG | VB | S1
    # Below L5S1 (label 5) lie the sacrum and background only.
    allowed[:, rows.max() + 1 :, :] = BG | S1
    allowed[labels > 0] = DISC
    return allowed


def load_real_case(data_dir: Path, stem: str) -> TrainingCase:
    """Load one shared-data volume as a `TrainingCase`.

    Raises
    ------
    ValueError
        If ``stem`` is excluded for a documented data defect.
    FileNotFoundError
        If the image or label file is missing.
    """
    import nibabel as nib  # training-only dependency

    if stem in _EXCLUDED:
        raise ValueError(f"'{stem}' is excluded: {_EXCLUDED[stem]}")
    img = nib.load(str(data_dir / f"{stem}_image.nii.gz"))
    lab = nib.load(str(data_dir / f"{stem}_label.nii.gz"))
    spacing = float(abs(img.affine[0, 0]))
    image = _to_display_planes(np.asarray(img.dataobj).astype(np.float32))
    labels = _to_display_planes(np.asarray(lab.dataobj).astype(np.uint8))
    image = _resample_planes(normalise_intensity(image), spacing, order=1)
    labels = _resample_planes(labels, spacing, order=0)
    if stem.startswith("IVD"):
        allowed = _disc_allowed(labels)
    else:
        allowed = _vb_allowed(labels, top_body_partial=stem.startswith("VB1"))
    labelled = np.where(labels.any(axis=(1, 2)))[0]
    return TrainingCase(stem, image.astype(np.float32), allowed, spacing, labelled)


def make_phantom_case(seed: int, weighting: Weighting, plane_spacing_mm: float = 1.0) -> TrainingCase:
    """Render a fully labelled phantom as thin sagittal planes."""
    n_planes, rows, cols = 61, 240, 232
    aff = np.eye(4)
    aff[:3, 0] = (plane_spacing_mm, 0, 0)
    aff[:3, 1] = (0, 0, -TRAINING_SPACING_MM)
    aff[:3, 2] = (0, TRAINING_SPACING_MM, 0)
    rng = np.random.default_rng(seed)
    centre = np.array([0.0, rng.uniform(-40, 0), rng.uniform(-20, 20)])
    aff[:3, 3] = centre - aff[:3, :3] @ np.array([(n_planes - 1) / 2, (rows - 1) / 2, (cols - 1) / 2])
    grid = SliceGrid((n_planes, rows, cols), aff, plane_spacing_mm)
    phantom = make_spine_phantom(seed)
    image, labels = render_phantom(phantom, grid, weighting, noise_fraction=rng.uniform(0.01, 0.05), subplanes=1,
                                   seed=seed)
    allowed = np.full(labels.shape, BG, np.uint8)
    for value in np.unique(labels[labels > 0]):
        s = structure_by_label(int(value))
        bit = DISC if s.kind is StructureKind.DISC else (S1 if s.name == "S1" else VB)
        allowed[labels == value] = bit
    labelled = np.where(labels.any(axis=(1, 2)))[0]
    return TrainingCase(f"phantom_{seed}_{weighting.name}", normalise_intensity(image.astype(np.float32)), allowed,
                        plane_spacing_mm, labelled)


def list_real_stems(data_dir: Path) -> list[str]:
    """Stems listed in the shared data manifest, in file order."""
    with open(data_dir / "manifest.csv", newline="") as f:
        return [row["stem"] for row in csv.DictReader(f)]


def training_stems(data_dir: Path) -> list[str]:
    """Stems of the manifest that train the sagittal model: neither held
    out for validation nor excluded (`SPLIT`)."""
    return [s for s in list_real_stems(data_dir) if s not in SPLIT["validation"] and s not in SPLIT["excluded"]]


# Packed images keep 6 bits: a step of 1/63 of the normalised range, under
# the noise the augmentation adds (up to 0.04) and the scans' own.
_PACK_LEVELS = 63


def pack_cases(cases: list[TrainingCase], path: Path) -> None:
    """Write cases to one xz-compressed file, images quantised to 6 bits,
    so a machine without the shared data (a lent GPU) can train on them;
    about 45 MB for the 56 training volumes."""
    arrays: dict[str, np.ndarray] = {"names": np.array([c.name for c in cases])}
    for i, c in enumerate(cases):
        arrays[f"image{i}"] = np.round(np.clip(c.image, 0, 1) * _PACK_LEVELS).astype(np.uint8)
        arrays[f"allowed{i}"] = c.allowed
        arrays[f"spacing{i}"] = np.array(c.plane_spacing_mm)
        arrays[f"labelled{i}"] = c.labelled_planes
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    with lzma.open(path, "wb", preset=6) as f:
        f.write(buffer.getvalue())


def unpack_cases(path: Path) -> list[TrainingCase]:
    """Cases written by `pack_cases` (images back in [0, 1]).

    Raises
    ------
    ValueError
        If ``path`` is not such a file.
    """
    try:
        with lzma.open(path, "rb") as f:
            arrays = np.load(io.BytesIO(f.read()), allow_pickle=False)
            names = [str(n) for n in arrays["names"]]
    except (lzma.LZMAError, OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path} is not a packed cases file: {e}") from e
    return [TrainingCase(name, arrays[f"image{i}"].astype(np.float32) / _PACK_LEVELS, arrays[f"allowed{i}"],
                         float(arrays[f"spacing{i}"]), arrays[f"labelled{i}"]) for i, name in enumerate(names)]


def teacher_classes(case: TrainingCase, teacher: Backend, batch: int = 8) -> np.ndarray:
    """Argmax classes (planes, rows, cols) of a sagittal model backend run
    on a case's 1 mm planes, each with its neighbouring planes as the
    model's extra input channels, as the engine feeds a series
    (`engine.with_neighbours`, `preprocessing.to_training_grid`)."""
    x, (rows, cols) = to_training_grid(case.image, (TRAINING_SPACING_MM, TRAINING_SPACING_MM))
    stacks = with_neighbours(len(x), teacher.input_channels)
    out = [teacher.run(x[stacks[i : i + batch]]).argmax(axis=1)[:, :rows, :cols] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.uint8)


def with_teacher_s1(case: TrainingCase, classes: np.ndarray, min_s1_mm3: float = MIN_BODY_MM3) -> TrainingCase:
    """A case whose unlabelled S1 is taken from a teacher network's classes.

    Why: VB2 and VB3 label no S1, so the loss lets the network call their
    sacrum S1 or background alike, and a network can drift to background
    there (unanchored naming, no L5S1 disc) while nothing in the loss
    objects. Where S1 is allowed but not known, the teacher's largest S1
    component (``classes`` == 2, at least ``min_s1_mm3``) becomes S1 and S1
    is ruled out everywhere else; a case with S1 labels, or whose teacher
    S1 is smaller, is returned unchanged.
    """
    if classes.shape != case.allowed.shape:
        raise ValueError(f"'classes' {classes.shape} and the case {case.allowed.shape} differ")
    open_s1 = (case.allowed & S1) > 0
    if (case.allowed == S1).any() or not open_s1.any():
        return case
    components, n = ndimage.label((classes == 2) & open_s1)
    if n == 0:
        return case
    sizes = np.bincount(components.ravel())[1:]
    if sizes.max() * case.plane_spacing_mm * TRAINING_SPACING_MM**2 < min_s1_mm3:
        return case
    allowed = case.allowed.copy()
    allowed[open_s1] &= np.uint8(~S1 & 0xFF)
    allowed[components == int(sizes.argmax()) + 1] = S1
    return TrainingCase(case.name, case.image, allowed, case.plane_spacing_mm, case.labelled_planes)
