"""Site data for ``spinegate train``: a training specification (YAML) and
its cases as `TrainingCase` values.

A case is a sagittal image with manual labels, given as a NIfTI image and
a NIfTI label image on the same grid, or as a folder holding one sagittal
DICOM series and a DICOM SEG of it. A label table (`dicom_io.label_files`)
names the label values or segments; without one, NIfTI values are
spinegate's own and segment labels are read as level names.

Partial labels are the rule, not the exception: a case teaches the classes
it labels (vertebral body, S1, disc), and an unlabelled pixel is told "not
this class" only on the planes that label the class, between the most
superior and the most inferior row labelled with it there. Elsewhere it may
be any class, which the marginal loss (`training_steps.partial_label_loss`) turns
into no supervision: a site that traced the discs on the mid-sagittal slice
alone teaches discs there and nothing wrong anywhere else.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from scipy import ndimage

from spinegate.dicom_io.label_files import LabelFileError, LabelSet, Structure, read_label_table, structure_named
from spinegate.dicom_io.labelled_images import read_labelled_nifti, read_labelled_series
from spinegate.dicom_io.levels import SpineStructure, StructureKind
from spinegate.dicom_io.volume import SeriesVolume
from spinegate.inference.axial_classes import AXIAL_CLASS_NAMES
from spinegate.inference.axial_engine import axial_canonical_planes, to_axial_canonical
from spinegate.inference.engine import EngineError, canonical_planes, to_canonical
from spinegate.inference.preprocessing import TRAINING_SPACING_MM, normalise_intensity
from spinegate.inference.axial_classes import DISC_CLASS, VB_CLASS
from spinegate.inference.training.axial_data import training_planes
from spinegate.inference.training.train_axial import ALL_BITS as AXIAL_ALL_BITS
from spinegate.inference.training.train_axial import AxialCase
from spinegate.inference.training.training_data import DISC, S1, VB, TrainingCase, allowed_all

__all__ = ["SiteCase", "TrainingSpec", "SpecError", "read_spec", "load_site_case", "load_axial_site_case",
           "split_by_subject", "class_bit", "axial_class", "label_table_of"]


LabelTable = Mapping[int | str, Structure]


class SpecError(ValueError):
    """The training specification or one of its cases cannot be used; the
    message says which and why."""


class SiteCase(BaseModel):
    """One labelled sagittal image: ``image`` + ``labels`` (NIfTI),
    ``dicom`` (a study folder) + ``seg`` (a DICOM SEG of one of its
    series), or ``dicom`` + ``labels`` (a NIfTI label image on the grid of
    one of its series, as ITK-SNAP or 3D Slicer save a reader's outlines;
    ``series_instance_uid`` names the series when several share the grid
    and the file is not named by its UID)."""

    model_config = ConfigDict(extra="forbid")
    subject: str = Field(min_length=1)
    image: Path | None = None
    labels: Path | None = None
    dicom: Path | None = None
    seg: Path | None = None

    series_instance_uid: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SiteCase:
        given = tuple(v is not None for v in (self.image, self.labels, self.dicom, self.seg))
        if given not in ((True, True, False, False), (False, False, True, True), (False, True, True, False)):
            raise ValueError("give 'image' and 'labels' (NIfTI), 'dicom' and 'seg' (a series and its SEG), or "
                             "'dicom' and 'labels' (a series and a NIfTI label image on its grid)")
        if self.series_instance_uid is not None and self.dicom is None:
            raise ValueError("'series_instance_uid' picks a series in 'dicom'")
        return self

    @property
    def name(self) -> str:
        return (self.image or self.dicom).name  # type: ignore[union-attr]


class TrainingSpec(BaseModel):
    """What ``spinegate train`` trains on and how; paths are relative to
    the specification file.

    ``init``: ``committed`` fine-tunes the model shipped with spinegate,
    ``none`` trains from scratch, a path continues that ``.onnx`` model or
    saved state dict. ``validation_subjects`` are held out whole; without
    them ``validation_fraction`` of the subjects are, drawn with ``seed``.
    ``phantoms`` synthetic subjects (T1 and T2 each) are mixed into
    ``phantom_share`` of the examples (they keep S1 and every disc
    labelled). ``context``, ``channels``, ``slab_labels``, ``exact_planes``
    and ``bf16`` are those of the committed model's recipe
    (`train.SagittalTrainingConfig`): one neighbouring slice on each side,
    thick-slab targets by majority, the thickness's own number of planes.

    ``engine: axial`` trains the paraspinal-muscle model instead: its cases
    are axial series labelled with muscles (``MF_R`` ... ``QL_L``) and
    optionally vertebral bodies and discs; its phantoms render T1, T2 and
    Dixon water each; the sagittal-only settings above do not apply.
    ``calibrate`` (axial) fits the area calibration and builds the INT8
    model of the result, as for the committed model (minutes on a CPU).
    """

    model_config = ConfigDict(extra="forbid")
    engine: Literal["sagittal", "axial"] = "sagittal"
    cases: list[SiteCase] = Field(min_length=2)
    label_table: Path | None = None
    validation_subjects: list[str] = Field(default_factory=list)
    validation_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 20261121
    iterations: int = Field(2000, ge=1)
    batch: int = Field(8, ge=1)
    lr: float = Field(3e-4, gt=0)
    init: str = "committed"
    phantoms: int = Field(10, ge=0)
    phantom_share: float = Field(0.3, ge=0, lt=1)
    checkpoint_every: int = Field(250, ge=1)
    thickness_mm: tuple[float, float] = (1.0, 5.0)
    context: int = Field(1, ge=0, le=3)
    channels: tuple[int, ...] | None = None
    slab_labels: Literal["union", "centre", "majority"] = "majority"
    exact_planes: bool = True
    bf16: bool = False
    calibrate: bool = True

    @model_validator(mode="after")
    def _subjects(self) -> TrainingSpec:
        subjects = {c.subject for c in self.cases}
        unknown = sorted(set(self.validation_subjects) - subjects)
        if unknown:
            raise ValueError(f"validation_subjects {unknown} have no case")
        if len(subjects) < 2:
            raise ValueError("the cases must come from at least two subjects (one to train on, one to validate)")
        if self.phantoms == 0 and self.phantom_share > 0:
            raise ValueError("phantom_share needs phantoms > 0 (or set it to 0)")
        return self

    def digest(self) -> str:
        """Identifies the run's settings (a checkpoint resumes only its own)."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]


def read_spec(path: Path) -> TrainingSpec:
    """The specification in ``path`` (YAML), its paths made absolute.

    Raises
    ------
    SpecError
        If the file is unreadable, a setting invalid or a named file
        missing (each named).
    """
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        spec = TrainingSpec.model_validate(raw)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise SpecError(f"cannot read {path}: {type(e).__name__}: {e}") from None
    except ValidationError as e:
        raise SpecError("; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())) \
            from None
    base = Path(path).resolve().parent

    def resolved(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    cases = [c.model_copy(update={k: resolved(getattr(c, k)) for k in ("image", "labels", "dicom", "seg")})
             for c in spec.cases]
    init = spec.init if spec.init in ("committed", "none") else str(resolved(Path(spec.init)))
    named = [p for c in cases for p in (c.image, c.labels, c.dicom, c.seg) if p is not None]
    named += [p for p in (resolved(spec.label_table), None if init in ("committed", "none") else Path(init))
              if p is not None]
    missing = [str(p) for p in named if not p.exists()]
    if missing:
        raise SpecError(f"{len(missing)} file(s) of the specification do not exist: {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else ""))
    return spec.model_copy(update={"cases": cases, "label_table": resolved(spec.label_table), "init": init})


def _spine_structure(name: str) -> SpineStructure:
    structure = structure_named(name)
    assert isinstance(structure, SpineStructure), name  # the masks were filtered to spine structures
    return structure


def class_bit(structure: SpineStructure) -> int:
    """The network class bit of a spine structure."""
    if structure.kind is StructureKind.DISC:
        return DISC
    return S1 if structure.name == "S1" else VB


def _zoom(planes: np.ndarray, spacing: tuple[float, float], order: int) -> np.ndarray:
    zoom = (1.0, spacing[0] / TRAINING_SPACING_MM, spacing[1] / TRAINING_SPACING_MM)
    return ndimage.zoom(planes, zoom, order=order, prefilter=False)


def _read_case(case: SiteCase, table: LabelTable | None, stack_axis_lps: int) -> tuple[SeriesVolume, LabelSet]:
    try:
        if case.image is not None:
            assert case.labels is not None
            return read_labelled_nifti(case.image, case.labels, table, stack_axis_lps)
        assert case.dicom is not None
        return read_labelled_series(case.dicom, seg=case.seg, labels=case.labels, table=table,
                                    series_instance_uid=case.series_instance_uid)
    except LabelFileError as e:
        raise SpecError(str(e)) from None


def axial_class(structure: Structure) -> int:
    """The axial network's class of a muscle, vertebral body or disc."""
    if isinstance(structure, SpineStructure):
        return DISC_CLASS if structure.kind is StructureKind.DISC else VB_CLASS
    return AXIAL_CLASS_NAMES.index(structure.name)


def load_axial_site_case(case: SiteCase, table: LabelTable | None = None) -> tuple[AxialCase, SeriesVolume, LabelSet]:
    """An axial case as an `AxialCase` of its labelled slices (training
    orientation and spacing), and its volume and labels as given.

    A class the case labels is ruled out on its labelled slices wherever it
    is not traced; the classes it does not label stay open there (as the
    committed model's real subject, which traces erector spinae and
    multifidus only).

    Raises
    ------
    SpecError
        If the files cannot be read, do not match, the series is not axial,
        or the labels name no muscle, vertebral body or disc.
    """
    volume, labels = _read_case(case, table, stack_axis_lps=2)
    known = {n: m for n, m in labels.masks.items() if m.any()}
    if not known:
        raise SpecError(f"{case.name}: the labels name no muscle, vertebral body or disc")
    try:
        planes, spacing, axes = axial_canonical_planes(volume)
    except EngineError as e:
        raise SpecError(f"{case.name}: {e}") from None
    classes = np.zeros(planes.shape, np.uint8)
    covered = 0
    for name, mask in known.items():
        c = axial_class(structure_named(name))
        classes[to_axial_canonical(mask, axes)] = c
        covered |= 1 << c
    slices = np.flatnonzero(classes.any(axis=(1, 2)))
    image, allowed = training_planes(normalise_intensity(planes)[slices], classes[slices], AXIAL_ALL_BITS & ~covered,
                                     spacing)
    return AxialCase(f"{case.subject}:{case.name}", image, allowed), volume, LabelSet(known, volume.affine,
                                                                                   labels.source)


def load_site_case(case: SiteCase, table: LabelTable | None = None
                   ) -> tuple[TrainingCase, SeriesVolume, LabelSet]:
    """The case as a `TrainingCase` (training orientation and spacing), and
    its volume and labels as given (for validation).

    Raises
    ------
    SpecError
        If the files cannot be read, do not match, or label no spine structure.
    """
    volume, labels = _read_case(case, table, stack_axis_lps=0)
    spine = {n: m for n, m in labels.masks.items() if isinstance(structure_named(n), SpineStructure) and m.any()}
    if not spine:
        raise SpecError(f"{case.name}: the labels name no vertebral body or disc")
    planes, spacing, axes = canonical_planes(volume)
    image = np.clip(_zoom(normalise_intensity(planes), spacing, 1), 0.0, 1.0).astype(np.float32)
    classes = np.zeros(planes.shape, np.uint8)
    for name, mask in spine.items():
        classes[to_canonical(mask, axes)] |= class_bit(_spine_structure(name))
    classes = _zoom(classes, spacing, 0)
    allowed = np.full(classes.shape, allowed_all, np.uint8)
    for bit in (VB, S1, DISC):
        has_class = (classes & bit) > 0
        for plane in np.flatnonzero(has_class.any(axis=(1, 2))):
            rows = np.flatnonzero(has_class[plane].any(axis=1))
            allowed[plane, rows.min(): rows.max() + 1, :] &= np.uint8(allowed_all & ~bit)
    labelled = classes > 0
    allowed[labelled] = classes[labelled]  # overlapping labels allow either class
    planes_with_labels = np.flatnonzero(labelled.any(axis=(1, 2)))
    case_name = f"{case.subject}:{case.name}"
    return (TrainingCase(case_name, image, allowed, float(volume.spacing_mm[0]), planes_with_labels), volume,
            LabelSet(spine, volume.affine, labels.source))


def split_by_subject(spec: TrainingSpec) -> tuple[list[SiteCase], list[SiteCase]]:
    """(training, validation) cases; no subject in both."""
    subjects = sorted({c.subject for c in spec.cases})
    if spec.validation_subjects:
        held = set(spec.validation_subjects)
    else:
        rng = np.random.default_rng(spec.seed)
        n = max(1, round(spec.validation_fraction * len(subjects)))
        held = set(rng.choice(subjects, size=min(n, len(subjects) - 1), replace=False).tolist())
    return [c for c in spec.cases if c.subject not in held], [c for c in spec.cases if c.subject in held]


def label_table_of(spec: TrainingSpec) -> LabelTable | None:
    """The spec's label table, read (None without one)."""
    try:
        return read_label_table(spec.label_table) if spec.label_table is not None else None
    except LabelFileError as e:
        raise SpecError(str(e)) from None
