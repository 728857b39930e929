"""UIDs and SOP classes spinegate uses (one place)."""
from __future__ import annotations

from pydicom.uid import generate_uid
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

__all__ = ["derive_uid", "SPINEGATE_UID_ROOT", "MR_STORAGE_SOP_CLASSES", "ACCEPTED_TRANSFER_SYNTAXES", "SEG_SOP_CLASS",
           "COMPREHENSIVE_3D_SR_SOP_CLASS"]

# pydicom's documented example root for generated UIDs ("1.2.826.0.1.3680043.8.498."):
# deterministic UIDs are derived under it until spinegate registers its own root.
SPINEGATE_UID_ROOT = "1.2.826.0.1.3680043.8.498."

MR_STORAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
    "1.2.840.10008.5.1.4.1.1.4.4": "Legacy Converted Enhanced MR Image Storage",
}
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"  # C-ECHO

# Every syntax listed here decodes through pydicom + pylibjpeg plugins.
ACCEPTED_TRANSFER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]


def derive_uid(*parts: object) -> str:
    """A UID under spinegate's root, fixed by ``parts`` (same parts, same UID)."""
    return generate_uid(prefix=SPINEGATE_UID_ROOT, entropy_srcs=[str(p) for p in parts])
