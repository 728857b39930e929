"""The headers of one study's files, grouped by series: what the pipeline
routes and analyses, read once (pixel data stays on disk until a routed
series is decoded).

The service handles DICOM datasets only through this package; `Header` is
the type it passes around.
"""
from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pydicom
from pydicom.dataset import Dataset

__all__ = ["Header", "SeriesHeaders", "StudyHeaders", "files_by_study", "parse_instance", "read_header",
           "read_study_headers"]

log = logging.getLogger(__name__)

# A parsed DICOM instance (pixel data deferred or absent).
Header = Dataset

# Values above this size (Pixel Data) are read from the file when used.
_DEFER_BYTES = "64 KB"


@dataclass(frozen=True)
class SeriesHeaders:
    """The instances of one series, in the order their files were given."""

    series_uid: str
    datasets: tuple[Header, ...]

    @property
    def first(self) -> Header:
        return self.datasets[0]

    @property
    def series_number(self) -> int:
        return int(self.first.get("SeriesNumber") or 0)

    @property
    def description(self) -> str:
        """SeriesDescription, or "series N" when it is empty."""
        return str(self.first.get("SeriesDescription", "") or f"series {self.first.get('SeriesNumber', '')}")


@dataclass(frozen=True)
class StudyHeaders:
    """Every readable instance of a set of files, by series (ordered by
    SeriesNumber, then by first appearance)."""

    series: tuple[SeriesHeaders, ...]

    @property
    def study_uids(self) -> frozenset[str]:
        return frozenset(str(s.first.StudyInstanceUID) for s in self.series)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(ds.SOPInstanceUID) for s in self.series for ds in s.datasets)


def read_study_headers(paths: Sequence[Path]) -> StudyHeaders:
    """Parse each file once; unreadable files are logged, not fatal."""
    grouped: dict[str, list[Header]] = {}
    for path in paths:
        try:
            ds = pydicom.dcmread(path, defer_size=_DEFER_BYTES)
            grouped.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
        except Exception as e:  # pydicom raises many types for malformed input
            # The type only: pydicom's text may quote element values (PHI).
            log.warning("unreadable input file=%s: %s", Path(path).name, type(e).__name__)
    series = [SeriesHeaders(uid, tuple(datasets)) for uid, datasets in grouped.items()]
    return StudyHeaders(tuple(sorted(series, key=lambda s: s.series_number)))


def files_by_study(paths: Sequence[Path]) -> tuple[dict[str, list[Path]], list[Path]]:
    """Study Instance UID → its files, reading each header's UID only; and
    the files that are not readable DICOM (logged by name, not fatal)."""
    studies: dict[str, list[Path]] = {}
    unreadable = []
    for path in paths:
        try:
            uid = str(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"]).StudyInstanceUID)
        except Exception as e:  # pydicom raises many types for malformed input
            log.warning("unreadable input file=%s: %s", Path(path).name, type(e).__name__)
            unreadable.append(path)
            continue
        studies.setdefault(uid, []).append(path)
    return studies, unreadable


def read_header(path: Path) -> Header:
    """One file's header, without its pixel data."""
    return pydicom.dcmread(path, stop_before_pixels=True)


def parse_instance(data: bytes) -> Header:
    """A received instance from its encoded bytes (a Part 10 file)."""
    return pydicom.dcmread(io.BytesIO(data))
