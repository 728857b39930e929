"""DICOM SEG for one analysed series (highdicom), per DICOM_OUTPUTS.md.

BINARY segmentation on the source's native grid, one segment per named
structure (level in the label), SNOMED CT category/type codes, recommended
CIELab display colours, algorithm identification, and the source series in
ReferencedSeriesSequence (highdicom writes it, with per-frame derivation
references, from ``source_images``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spinegate.dicom_io.charset import declare_character_set
from spinegate.dicom_io.levels import SpineStructure, structure_by_label
from spinegate.dicom_io.muscles import MuscleStructure, muscle_by_label
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import SeriesVolume

__all__ = ["AlgorithmInfo", "build_segmentation", "frames_in_source_order", "segment_numbers", "structure_of_label"]


@dataclass(frozen=True)
class AlgorithmInfo:
    """Identifies the model that produced a result (SEG and SR)."""

    name: str
    version: str
    model_sha256: str
    backend: str = ""  # the inference backend that ran it (e.g. onnxruntime-cpu, torch-cuda)

    def __post_init__(self) -> None:
        if len(self.model_sha256) != 64:
            raise ValueError(f"'model_sha256' must be 64 hex digits, got {self.model_sha256!r}")

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        return hd.AlgorithmIdentificationSequence(
            name=self.name,
            family=codes.cid7162.ArtificialIntelligence,
            version=self.version,
            parameters=self.parameters(),
        )

    def parameters(self) -> dict[str, str]:
        """The Algorithm Parameters written with the identification."""
        return {"model_sha256": self.model_sha256, **({"inference_backend": self.backend} if self.backend else {})}


def structure_of_label(label: int) -> SpineStructure | MuscleStructure:
    """The spine structure or muscle a label value stands for.

    Raises
    ------
    ValueError
        If the value is neither.
    """
    try:
        return structure_by_label(label)
    except ValueError:
        return muscle_by_label(label)


def segment_numbers(label_map: np.ndarray) -> list[SpineStructure | MuscleStructure]:
    """Structures present in ``label_map``, in SEG segment order (1..N)."""
    return [structure_of_label(int(v)) for v in np.unique(label_map) if v != 0]


def _segment(number: int, s: SpineStructure | MuscleStructure, algorithm: AlgorithmInfo,
             sop_instance_uid: str, level_unverified: str = "") -> hd.seg.SegmentDescription:
    unverified = bool(level_unverified) and isinstance(s, SpineStructure)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"{s.display_name} (level unverified)" if unverified else s.display_name,
        segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=s.property_type,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm.identification(),
        tracking_uid=hd.UID(derive_uid(sop_instance_uid, s.name)),
        tracking_id=s.display_name,
        anatomic_regions=[codes.SCT.LumbarSpine],
        display_color=hd.color.CIELabColor.from_rgb(*s.colour_rgb),
    )
    if isinstance(s, MuscleStructure):
        # Laterality is a modifier of the property type (PS3.3 C.8.20.2,
        # CID 244); highdicom's constructor has no argument for it.
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept.from_code(s.laterality)]
    if unverified:
        # Segment Description (0062,0006), Type 3: what a viewer shows beside the label.
        description.SegmentDescription = f"Level unverified: {level_unverified}"[:64]
    return description


def frames_in_source_order(volume: SeriesVolume, source_images: Sequence[Dataset], label_map: np.ndarray) -> np.ndarray:
    """Frames of a per-slice array (a label map, a parametric map) in the
    order highdicom expects: source frame order for one multi-frame image,
    else the order of ``source_images``."""
    if len(source_images) == 1 and int(source_images[0].get("NumberOfFrames", 1)) > 1:
        n = int(source_images[0].NumberOfFrames)
        out = np.zeros((n,) + label_map.shape[1:], label_map.dtype)
        for k, ref in enumerate(volume.slice_refs):
            out[(ref.frame_number or 1) - 1] = label_map[k]
        return out
    by_uid = {ref.sop_instance_uid: k for k, ref in enumerate(volume.slice_refs)}
    return np.stack([label_map[by_uid[ds.SOPInstanceUID]] for ds in source_images])


def build_segmentation(
    volume: SeriesVolume,
    source_images: Sequence[Dataset],
    label_map: np.ndarray,
    algorithm: AlgorithmInfo,
    series_instance_uid: str,
    sop_instance_uid: str,
    series_number: int,
    software_version: str,
    level_unverified: str = "",
) -> hd.seg.Segmentation:
    """Build the SEG of one series.

    Parameters
    ----------
    volume : SeriesVolume
        The source volume (its slice order matches ``label_map``).
    source_images : sequence of pydicom.Dataset
        The source instances (headers suffice).
    label_map : numpy.ndarray
        uint8 (slices, rows, columns) spinegate label values (spine
        structures of `dicom_io.levels`, muscles of `dicom_io.muscles`).
    level_unverified : str, optional
        Why the level names rest on an assumption (e.g. "no S1 in view");
        when given, every spine segment is labelled "(level unverified)" and
        its Segment Description says why.

    Raises
    ------
    ValueError
        If ``label_map`` does not match the volume's shape or holds no
        structure.
    """
    if label_map.shape != volume.array.shape:
        raise ValueError(f"'label_map' shape {label_map.shape} differs from the volume's {volume.array.shape}")
    structures = segment_numbers(label_map)
    if not structures:
        raise ValueError("'label_map' holds no segmented structure")
    remap = np.zeros(256, np.uint8)
    descriptions = []
    for number, s in enumerate(structures, start=1):
        remap[s.label] = number
        descriptions.append(_segment(number, s, algorithm, sop_instance_uid, level_unverified))
    frames = frames_in_source_order(volume, source_images, remap[label_map])
    seg = hd.seg.Segmentation(
        source_images=list(source_images),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="spinegate",
        manufacturer_model_name=algorithm.name,
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"spinegate {algorithm.name} SEG",
        omit_empty_frames=False,
    )
    declare_character_set(seg)
    return seg
