"""Checks on a received instance before it is accepted (no pixel decoding)."""
from __future__ import annotations

import math

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from spinegate.dicom_io.uids import MR_STORAGE_SOP_CLASSES

__all__ = ["InstanceProblem", "check_received_instance"]

_REQUIRED = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns")
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2"}


class InstanceProblem(ValueError):
    """An instance that spinegate must refuse; ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_received_instance(ds: Dataset, transfer_syntax_uid: str) -> None:
    """Raise `InstanceProblem` unless ``ds`` is an MR image spinegate can use.

    Raises
    ------
    InstanceProblem
        ``missing_attribute`` (a required attribute is absent or empty),
        ``unsupported_sop_class``, ``wrong_modality`` (not MR),
        ``missing_pixel_data``, ``empty_image`` (no rows or columns),
        ``unsupported_bits_allocated``, ``malformed_geometry`` (orientation,
        position or pixel spacing present but not 6, 3 or 2 finite numbers,
        spacing positive), ``truncated_pixel_data`` (uncompressed pixel data
        shorter than Rows × Columns × samples × bytes × frames) or
        ``pixel_data_size_mismatch`` (a frame or more beyond that: the header
        does not describe the data).
    """
    for keyword in _REQUIRED:
        try:
            value = ds.get(keyword)
        except Exception as e:  # a malformed element raises on access
            # The exception type only: pydicom's text may quote the value.
            raise InstanceProblem("malformed_element", f"{keyword} cannot be parsed ({type(e).__name__})") from e
        if value in (None, ""):
            raise InstanceProblem("missing_attribute", f"required attribute {keyword} is missing or empty")
    if ds.SOPClassUID not in MR_STORAGE_SOP_CLASSES:
        raise InstanceProblem("unsupported_sop_class", f"SOP class {ds.SOPClassUID} is not an MR image storage class")
    if ds.Modality != "MR":
        raise InstanceProblem("wrong_modality", f"Modality is {ds.Modality!r}, expected 'MR'")
    if int(ds.Rows) < 1 or int(ds.Columns) < 1:
        raise InstanceProblem("empty_image", f"the image is {ds.Rows} x {ds.Columns} pixels")
    if int(ds.get("BitsAllocated", 16) or 0) not in (8, 16, 32):
        raise InstanceProblem("unsupported_bits_allocated", f"Bits Allocated is {ds.get('BitsAllocated')}, "
                              "expected 8, 16 or 32")
    _check_geometry(ds)
    if "PixelData" not in ds:
        raise InstanceProblem("missing_pixel_data", "the instance has no Pixel Data")
    encapsulated = ds["PixelData"].is_undefined_length
    if encapsulated == (transfer_syntax_uid in _UNCOMPRESSED):
        # Compressed data sent as native, or native data as compressed: no
        # decoder would read it, and the pipeline would fail on it later.
        raise InstanceProblem("pixel_data_does_not_match_transfer_syntax",
                              f"Pixel Data is {'encapsulated' if encapsulated else 'native'} but the transfer syntax "
                              f"{transfer_syntax_uid} is {'native' if encapsulated else 'compressed'}")
    if transfer_syntax_uid in _UNCOMPRESSED:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        expected = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * frames
        expected *= max(1, int(ds.get("BitsAllocated", 16)) // 8)
        actual = len(ds.PixelData)
        if actual < expected:
            raise InstanceProblem("truncated_pixel_data", f"Pixel Data holds {actual} bytes, {expected} expected")
        if actual - expected >= max(expected // frames, 2):  # beyond the even-length pad byte
            raise InstanceProblem("pixel_data_size_mismatch", f"Pixel Data holds {actual} bytes, {expected} expected "
                                  "(rows, columns, bits allocated or frames do not describe it)")


def _check_geometry(ds: Dataset) -> None:
    """Top-level geometry, where present (Enhanced MR keeps it per frame)."""
    for keyword, count in (("ImageOrientationPatient", 6), ("ImagePositionPatient", 3), ("PixelSpacing", 2)):
        if keyword not in ds:
            continue
        try:
            raw = ds.get(keyword)
            values = [float(v) for v in (raw if isinstance(raw, (list, tuple, MultiValue)) else [raw])]
        except (TypeError, ValueError, OverflowError) as e:
            raise InstanceProblem("malformed_geometry", f"{keyword} is not numeric ({type(e).__name__})") from e
        if len(values) != count or not all(math.isfinite(v) for v in values):
            raise InstanceProblem("malformed_geometry", f"{keyword} holds {len(values)} values, {count} finite "
                                  "numbers expected")
        if keyword == "PixelSpacing" and min(values) <= 0:
            raise InstanceProblem("malformed_geometry", "PixelSpacing must be positive")
