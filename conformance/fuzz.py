"""Malformed and adversarial MR instances for the receive path, and a raw
sender that puts their bytes on the wire unchanged.

Each `Mutation` starts from one valid MR instance and breaks one thing the
way broken senders and attackers do: truncated streams, flipped bytes, huge
element lengths, values that do not fit their VR, deep sequences, invalid
or path-like UIDs, pixel data of the wrong size, a transfer syntax that does
not match the data, compressed pixel data that does not decode. The test
suite draws them with hypothesis (`tests/service/test_fuzz_receive.py`);
``bench/fuzz_receive.py`` runs many more from a seed.
"""
from __future__ import annotations

import io
import re
import random
import struct
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLosslessSV1,
                         JPEGLSLossless, RLELossless)
from pynetdicom import AE, _config

__all__ = ["Mutation", "KINDS", "DCMTK_MANGLINGS", "base_instance", "mutate", "random_mutation", "dcmtk_mangled",
           "RawSender", "SENT_SYNTAXES", "resident_mb"]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SENT_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit, JPEGLSLossless, JPEGLosslessSV1,
                 RLELossless)
KINDS = ("truncate", "flip_bytes", "huge_length", "bad_value", "bad_uid", "deep_sequence", "pixel_size",
         "syntax_mismatch", "undecodable_compressed")
BAD_UIDS = ("", "../../etc/passwd", "1.2.abc", "1." * 40 + "1", "1.2.3\x00.4", "9" * 70, "1..2", " 1.2",
            "1.2.840.10008.5.1.4.1.1.4/../x")
BAD_VALUES = (("Rows", "US", b"\xff"), ("SliceThickness", "DS", b"thick"), ("EchoTime", "DS", b"1e999999"),
              ("PatientName", "PN", b"A" * 60000), ("ImageOrientationPatient", "DS", b"1\\0\\0"),
              ("PixelSpacing", "DS", b"-1\\nan"), ("BitsAllocated", "US", b"\x07\x00"),
              ("NumberOfFrames", "IS", b"-3"), ("SeriesNumber", "IS", b"x" * 20))


@dataclass(frozen=True)
class Mutation:
    """One broken instance: its transfer syntax (as the file meta and the
    presentation context state it), its encoded dataset, and what was done."""

    kind: str
    detail: str
    transfer_syntax: str
    body: bytes
    sop_instance_uid: str


def base_instance(index: int = 0) -> Dataset:
    """A valid 16×16 single-frame MR image (Explicit VR Little Endian)."""
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.511.9.{index}"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.10.511.9.1000"
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.10.511.9.1001"
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.10.511.9.1002"
    ds.Modality = "MR"
    ds.PatientName, ds.PatientID = "FUZZ^CASE", "FUZZ-1"
    ds.SeriesNumber, ds.InstanceNumber = 2, index + 1
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.ImagePositionPatient = [0, -100, 100]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 4.0
    ds.RepetitionTime, ds.EchoTime = 3500, 100
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 7).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _encode(ds: Dataset, implicit: bool = False) -> bytes:
    """The dataset's encoding (no file meta), whatever its values."""
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, implicit
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the invalid values are the point
        pydicom.filewriter.write_dataset(out, ds)
    return out.getvalue()


def _with_raw_value(ds: Dataset, keyword: str, vr: str, raw: bytes) -> bytes:
    """``ds`` encoded with ``keyword``'s value replaced by ``raw`` as it is
    (pydicom would not write a value that does not fit its VR)."""
    ds[keyword] = pydicom.DataElement(pydicom.datadict.tag_for_keyword(keyword), vr, 1 if vr in ("US", "IS") else "1")
    body = _encode(ds)
    at = _element_offset(body, pydicom.datadict.tag_for_keyword(keyword))
    length = struct.unpack("<H", body[at + 6: at + 8])[0]
    return body[: at + 6] + struct.pack("<H", len(raw)) + raw + body[at + 8 + length:]


def _element_offset(body: bytes, tag: int) -> int:
    """Offset of an explicit-VR element header in ``body`` (-1 if absent)."""
    return body.find(struct.pack("<HH", tag >> 16, tag & 0xFFFF))


def mutate(kind: str, index: int, a: int, b: int) -> Mutation:
    """The ``kind`` of damage to base instance ``index``; ``a`` and ``b``
    (any non-negative integers) choose where and how."""
    ds = base_instance(index)
    uid = str(ds.SOPInstanceUID)
    ts = str(ExplicitVRLittleEndian)
    if kind == "truncate":
        body = _encode(ds)
        return Mutation(kind, f"at {a % len(body)}", ts, body[: a % len(body)], uid)
    if kind == "flip_bytes":
        body = bytearray(_encode(ds))
        for k in range(1 + b % 8):
            body[(a + 977 * k) % len(body)] ^= 1 + (b + k) % 255
        return Mutation(kind, f"{1 + b % 8} bytes from {a % len(body)}", ts, bytes(body), uid)
    if kind == "huge_length":
        body = bytearray(_encode(ds))
        targets = [0x00100010, 0x00080060, 0x00280010, 0x7FE00010, 0x00180050]
        at = _element_offset(bytes(body), targets[a % len(targets)])
        if targets[a % len(targets)] == 0x7FE00010:  # OW: 4-byte length after 2 reserved bytes
            body[at + 8: at + 12] = struct.pack("<I", 0xFFFFFFF0 - (b % 16) * 2)
        else:
            body[at + 6: at + 8] = struct.pack("<H", 0xFFFF - (b % 8) * 2)
        return Mutation(kind, f"tag {targets[a % len(targets)]:08X}", ts, bytes(body), uid)
    if kind == "bad_value":
        keyword, vr, raw = BAD_VALUES[a % len(BAD_VALUES)]
        return Mutation(kind, keyword, ts, _with_raw_value(ds, keyword, vr, raw), uid)
    if kind == "bad_uid":
        keyword = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")[b % 3]
        bad = BAD_UIDS[a % len(BAD_UIDS)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            setattr(ds, keyword, bad)
        return Mutation(kind, f"{keyword}={bad[:30]!r}", ts, _encode(ds), bad if keyword == "SOPInstanceUID" else uid)
    if kind == "deep_sequence":
        # Written by hand: pydicom's own writer gives up long before a
        # hostile sender would (undefined-length items nest without limit).
        depth = 20 + a % 3000
        implicit = b % 2 == 1
        body = _encode(ds, implicit)
        vr = b"" if implicit else b"SQ\0\0"
        open_seq = struct.pack("<HH", 0x0040, 0xA730) + vr + struct.pack("<I", 0xFFFFFFFF)
        item = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
        closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
        at = body.find(struct.pack("<HH", 0x7FE0, 0x0010))
        body = body[:at] + (open_seq + item) * depth + closing * depth + body[at:]
        return Mutation(kind, f"depth {depth}{' implicit VR' if implicit else ''}",
                        str(ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian), body, uid)
    if kind == "pixel_size":
        ds.Rows, ds.Columns = 16 + a % 5000, 16 + b % 5000
        return Mutation(kind, f"{ds.Rows}x{ds.Columns} for 256 pixels", ts, _encode(ds), uid)
    if kind == "syntax_mismatch":
        stated = (JPEGBaseline8Bit, JPEGLSLossless, ImplicitVRLittleEndian)[a % 3]
        return Mutation(kind, f"native data stated as {stated.name}", str(stated), _encode(ds), uid)
    if kind == "undecodable_compressed":
        rng = random.Random(a)
        fragments = [bytes(rng.randrange(256) for _ in range(8 + b % 300))]
        ds.PixelData = encapsulate(fragments)
        ds["PixelData"].VR = "OB"
        stated = (JPEGBaseline8Bit, JPEGLSLossless)[b % 2]
        if stated == JPEGBaseline8Bit:
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        body = _encode(ds)
        return Mutation(kind, f"{len(fragments[0])} random bytes as {stated.name}", str(stated), body, uid)
    raise ValueError(f"unknown mutation kind {kind!r}; kinds: {', '.join(KINDS)}")


# Files broken with dcmtk's own tools, as a misbehaving DICOM toolchain
# breaks them: (name, tool and arguments before the file, bytes to cut from
# the end / positions to flip after the tool ran).
DCMTK_MANGLINGS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("rows_not_matching_pixels", ("dcmodify", "-nb", "-m", "(0028,0010)=999"), ""),
    ("columns_zero", ("dcmodify", "-nb", "-m", "(0028,0011)=0"), ""),
    ("pixel_data_removed", ("dcmodify", "-nb", "-ea", "(7fe0,0010)"), ""),
    ("bits_allocated_8", ("dcmodify", "-nb", "-m", "(0028,0100)=8"), ""),
    ("samples_per_pixel_3", ("dcmodify", "-nb", "-m", "(0028,0002)=3"), ""),
    ("photometric_palette", ("dcmodify", "-nb", "-m", "(0028,0004)=PALETTE COLOR"), ""),
    ("slice_thickness_text", ("dcmodify", "-nb", "-m", "(0018,0050)=thick"), ""),
    ("orientation_two_values", ("dcmodify", "-nb", "-m", "(0020,0037)=1\\0"), ""),
    ("study_uid_path_like", ("dcmodify", "-nb", "-m", "(0020,000d)=../../../etc"), ""),
    ("sop_uid_empty", ("dcmodify", "-nb", "-m", "(0008,0018)="), ""),
    ("sop_uid_removed", ("dcmodify", "-nb", "-ea", "(0008,0018)"), ""),
    ("series_uid_too_long", ("dcmodify", "-nb", "-m", "(0020,000e)=" + "1." * 40 + "1"), ""),
    ("sop_class_not_mr", ("dcmodify", "-nb", "-m", "(0008,0016)=1.2.840.10008.5.1.4.1.1.2"), ""),
    ("rle_truncated", ("dcmcrle",), "cut"),
    ("rle_flipped", ("dcmcrle",), "flip"),
    ("jpeg_truncated", ("dcmcjpeg",), "cut"),
    ("jpeg_flipped", ("dcmcjpeg",), "flip"),
    ("jpegls_truncated", ("dcmcjpls",), "cut"),
    ("jpegls_flipped", ("dcmcjpls",), "flip"),
    ("rows_huge", ("dcmodify", "-nb", "-m", "(0028,0010)=65535"), ""),
)


def _part10_body(data: bytes) -> tuple[str, bytes]:
    """(transfer syntax, dataset bytes) of a Part 10 file."""
    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) UL, after preamble, 'DICM' and its header
    meta = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return str(meta.TransferSyntaxUID), data[144 + meta_length:]


def dcmtk_mangled(folder: Path, index: int = 0) -> list[Mutation]:
    """`DCMTK_MANGLINGS` applied to a valid 64×64 MR instance with dcmtk's
    tools (dcmodify, dcmcrle, dcmcjpeg, dcmcjpls); each file's damage after
    the tool ran: ``cut`` drops the last 200 bytes, ``flip`` inverts 64 bytes
    in the middle of the pixel data."""
    import shutil
    import subprocess

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number, (name, command, damage) in enumerate(DCMTK_MANGLINGS):
        ds = base_instance(index + number)
        ds.Rows = ds.Columns = 64
        ds.PixelData = (np.add.outer(np.arange(64), np.arange(64)).astype(np.uint16) * 31).tobytes()
        ds.BitsStored, ds.HighBit = 12, 11
        source = folder / f"{name}.src.dcm"
        ds.save_as(source, enforce_file_format=True)
        target = folder / f"{name}.dcm"
        tool = shutil.which(command[0]) or command[0]
        if command[0] == "dcmodify":
            shutil.copy(source, target)
            subprocess.run([tool, *command[1:], str(target)], check=True, capture_output=True, timeout=60)
        else:
            subprocess.run([tool, str(source), str(target)], check=True, capture_output=True, timeout=60)
        syntax, body = _part10_body(target.read_bytes())
        if damage == "cut":
            body = body[:-200]
        elif damage == "flip":
            middle = len(body) - len(body) // 4
            body = body[:middle] + bytes(b ^ 0xFF for b in body[middle:middle + 64]) + body[middle + 64:]
        sop = str(pydicom.dcmread(target, stop_before_pixels=True).get("SOPInstanceUID", ""))
        out.append(Mutation(f"dcmtk:{name}", " ".join(command), syntax, body, sop))
    return out


def resident_mb(pid: int | str = "self") -> float:
    """Resident memory of a process now (VmRSS), MiB: the receiver's bound."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def random_mutation(rng: random.Random, index: int) -> Mutation:
    return mutate(rng.choice(KINDS), index, rng.randrange(1 << 20), rng.randrange(1 << 20))


class RawSender:
    """One association to an SCP offering MR Image Storage in
    `SENT_SYNTAXES`; each instance's bytes go on the wire as they are
    (pynetdicom's chunked sending of a Part 10 file: nothing is decoded)."""

    def __init__(self, port: int, called_ae: str = "SPINEGATE", calling_ae: str = "FUZZER") -> None:
        _config.STORE_SEND_CHUNKED_DATASET = True
        self._ae = AE(ae_title=calling_ae)
        self._ae.acse_timeout = self._ae.dimse_timeout = self._ae.network_timeout = 30
        for ts in SENT_SYNTAXES:
            self._ae.add_requested_context(MR_IMAGE_STORAGE, ts)
        self._port, self._called = port, called_ae
        self._dir = Path(tempfile.mkdtemp(prefix="spinegate-fuzz-"))
        self._assoc = None

    def send(self, m: Mutation) -> int | None:
        """The C-STORE status (None if the association was lost)."""
        if self._assoc is None or not self._assoc.is_established:
            self._assoc = self._ae.associate("127.0.0.1", self._port, ae_title=self._called)
            if not self._assoc.is_established:
                return None
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
        # The file meta must be writable; the dataset keeps the bad UID.
        meta.MediaStorageSOPInstanceUID = (m.sop_instance_uid if re.fullmatch(r"[0-9.]{1,64}", m.sop_instance_uid)
                                           else "1.2.3.4")
        meta.TransferSyntaxUID = m.transfer_syntax
        out = io.BytesIO()
        out.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
        path = self._dir / "case.dcm"
        path.write_bytes(out.getvalue() + m.body)
        try:
            status = self._assoc.send_c_store(path)
        except (ValueError, AttributeError, RuntimeError):
            return None
        return getattr(status, "Status", None)

    def close(self) -> None:
        if self._assoc is not None and self._assoc.is_established:
            self._assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = False
