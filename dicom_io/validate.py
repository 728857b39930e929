"""Checks on a received instance before it is accepted (no pixel decoding)."""
from __future__ import annotations

from pydicom.dataset import Dataset

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
        ``missing_pixel_data``, or ``truncated_pixel_data`` (uncompressed
        pixel data shorter than Rows × Columns × samples × bytes × frames).
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
