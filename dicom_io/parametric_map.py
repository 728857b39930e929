"""DICOM Parametric Map of a T2 (or T1ρ) map (highdicom), on the grid of
the echo it was segmented on.

32-bit float pixels in ms (Float Pixel Data), a Real World Value Mapping
with quantity DCM 113065 "T2" and unit UCUM ms, identity slope/intercept,
content qualification RESEARCH, a default window of 0–200 ms; the source
images are the segmented echo's instances (per-frame derivation
references), 0 where a voxel was not fitted.
"""
from __future__ import annotations

from typing import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from spinegate.dicom_io.charset import declare_character_set
from spinegate.dicom_io.seg import frames_in_source_order
from spinegate.dicom_io.volume import SeriesVolume

__all__ = ["build_t2_map"]


def build_t2_map(volume: SeriesVolume, source_images: Sequence[Dataset], t2_ms: np.ndarray, echo_times_ms:
                 Sequence[float], series_instance_uid: str, sop_instance_uid: str, series_number: int,
                 software_version: str, max_t2_ms: float) -> hd.pm.ParametricMap:
    """The Parametric Map of ``t2_ms`` (same shape and slice order as ``volume``).

    Raises
    ------
    ValueError
        If the map does not match the volume's shape.
    """
    if t2_ms.shape != volume.array.shape:
        raise ValueError(f"'t2_ms' {t2_ms.shape} does not match the volume {volume.array.shape}")
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="T2",
        lut_explanation=f"T2, mono-exponential fit of {len(echo_times_ms)} echoes",
        unit=codes.UCUM.Millisecond,
        value_range=(0.0, float(max_t2_ms)),
        slope=1,
        intercept=0,
        quantity_definition=codes.DCM.T2,
    )
    frames = frames_in_source_order(volume, source_images, np.asarray(t2_ms, np.float32))
    pm = hd.pm.ParametricMap(
        source_images=list(source_images),
        pixel_array=frames,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer="spinegate",
        manufacturer_model_name="spinegate relaxometry",
        software_versions=software_version,
        device_serial_number="spinegate",
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=100.0, window_width=200.0)],
        content_label="T2_MAP",
        content_description="T2 map (ms), spinegate, research use",
    )
    pm.SeriesDescription = "spinegate T2 map (research use)"
    # A paired structure without Laterality needs the body part (General Series, Type 2C).
    pm.BodyPartExamined = source_images[0].get("BodyPartExamined") or "LSPINE"
    declare_character_set(pm)
    return pm
