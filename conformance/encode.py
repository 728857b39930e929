"""Re-encode DICOM files in each accepted transfer syntax, the way real
senders do: with dcmtk's own tools wherever dcmtk has an encoder
(dcmconv, dcmcjpeg, dcmcjpls, dcmcrle), with pydicom's encoders
(pylibjpeg-openjpeg) for JPEG 2000, which dcmtk lacks."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import (
    UID,
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

__all__ = ["DCMTK_ENCODERS", "LOSSY", "EncodingError", "encode", "encoder_name", "to_8bit"]

DCMTK_ENCODERS: dict[UID, tuple[str, ...]] = {
    ExplicitVRLittleEndian: ("dcmconv", "+te"),
    ImplicitVRLittleEndian: ("dcmconv", "+ti"),
    DeflatedExplicitVRLittleEndian: ("dcmconv", "+td"),
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    JPEGLSNearLossless: ("dcmcjpls", "+en"),
    RLELossless: ("dcmcrle",),
}
# pydicom encoder options for what dcmtk cannot write (compression ratio 4
# for lossy JPEG 2000).
PYDICOM_ENCODERS: dict[UID, dict] = {JPEG2000Lossless: {}, JPEG2000: {"j2k_cr": [4]}}
LOSSY = frozenset({JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000})


class EncodingError(RuntimeError):
    """A file could not be written in the requested transfer syntax."""


def encoder_name(ts: UID) -> str:
    """Which tool writes ``ts``, for reports."""
    if ts in DCMTK_ENCODERS:
        return " ".join(DCMTK_ENCODERS[ts])
    if ts in PYDICOM_ENCODERS:
        return "pydicom Dataset.compress (pylibjpeg-openjpeg)"
    raise EncodingError(f"no encoder for transfer syntax {ts} ({UID(ts).name})")


def to_8bit(path: Path) -> None:
    """Rewrite ``path`` in place with 8-bit pixels (JPEG baseline takes no
    more); values above 255 are scaled so the brightest becomes 255."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.astype(np.float64)
    scale = 255.0 / float(pixels.max()) if pixels.max() > 255 else 1.0
    scaled = np.round(pixels * scale).astype(np.uint8)
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = scaled.tobytes()
    ds.save_as(path, enforce_file_format=True)


def encode(path: Path, ts: UID, out_path: Path) -> Path:
    """Write ``path`` re-encoded in transfer syntax ``ts`` to ``out_path``.

    Raises
    ------
    EncodingError
        If no encoder exists for ``ts``, a dcmtk tool is missing or fails,
        or the result is not in ``ts``.
    """
    ts = UID(ts)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if ts in DCMTK_ENCODERS:
        tool, *options = DCMTK_ENCODERS[ts]
        exe = shutil.which(tool)
        if exe is None:
            raise EncodingError(f"'{tool}' is not installed (Debian package dcmtk)")
        proc = subprocess.run([exe, *options, str(path), str(out_path)], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise EncodingError(f"{tool} {' '.join(options)} failed on {path.name}: {proc.stderr.strip()[-500:]}")
    elif ts in PYDICOM_ENCODERS:
        ds = pydicom.dcmread(path)
        ds.compress(ts, **PYDICOM_ENCODERS[ts])
        ds.save_as(out_path, enforce_file_format=True)
    else:
        encoder_name(ts)  # raises
    written = pydicom.dcmread(out_path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if written != ts:
        raise EncodingError(f"{out_path.name} came out as {written.name}, not {ts.name}")
    return out_path
