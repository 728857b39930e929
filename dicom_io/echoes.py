"""Stacks imaged at several echo times, as scanners send them: one
multi-echo series (every slice position once per echo, told apart by Echo
Time), or single-echo series of one geometry and repetition time with
different echo times.

A multi-echo series is split into its echoes: one echo goes down the
usual path (segmented, SEG, SR) and all feed the relaxometry. Enhanced MR
multi-frame multi-echo objects are not split (their echoes are frames of
one instance); they fail as today with ``duplicate_position``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from spinegate.dicom_io.study import Header, SeriesHeaders

__all__ = ["SEGMENTATION_ECHO_TIME_MS", "MIN_ECHOES", "EchoSet", "echo_time_ms", "split_echoes", "find_echo_sets"]

# The echo segmented: the one nearest the echo time of the T2-weighted
# series the sagittal model learnt from.
SEGMENTATION_ECHO_TIME_MS = 90.0
MIN_ECHOES = 3


@dataclass(frozen=True)
class EchoSet:
    """One stack at several echo times, echoes in increasing echo time.

    ``echoes[k]`` are the instances of echo ``k`` (each a whole stack on one
    grid); ``series_uids[k]`` the series it came from (all the same for a
    multi-echo series).
    """

    series_uids: tuple[str, ...]
    echo_times_ms: tuple[float, ...]
    echoes: tuple[tuple[Header, ...], ...]

    def segmentation_echo(self) -> int:
        """Index of the echo to segment (`SEGMENTATION_ECHO_TIME_MS`)."""
        return min(range(len(self.echo_times_ms)),
                   key=lambda k: abs(self.echo_times_ms[k] - SEGMENTATION_ECHO_TIME_MS))


def echo_time_ms(ds: Header) -> float | None:
    value = ds.get("EchoTime")
    try:
        return None if value in (None, "") else round(float(value), 3)
    except (TypeError, ValueError):
        return None


def _positions(datasets: Sequence[Header]) -> tuple[tuple[float, ...], ...]:
    return tuple(sorted(tuple(round(float(v), 2) for v in ds.ImagePositionPatient) for ds in datasets))


def _geometry(datasets: Sequence[Header]) -> tuple[object, ...] | None:
    """What two stacks must share to be echoes of one acquisition."""
    first = datasets[0]
    try:
        return (str(first.get("FrameOfReferenceUID", "")),
                tuple(round(float(v), 4) for v in first.ImageOrientationPatient), int(first.Rows), int(first.Columns),
                tuple(round(float(v), 4) for v in first.PixelSpacing), _positions(datasets))
    except (AttributeError, TypeError, ValueError):
        return None


def split_echoes(series: SeriesHeaders) -> dict[float, tuple[Header, ...]] | None:
    """A multi-echo series' instances by echo time, or None when the series
    is not one (one echo time, or echoes that are not each a whole stack of
    the same positions)."""
    by_te: dict[float, list[Header]] = {}
    for ds in series.datasets:
        te = echo_time_ms(ds)
        if te is None:
            return None
        by_te.setdefault(te, []).append(ds)
    if len(by_te) < 2:
        return None
    geometries = {_geometry(v) for v in by_te.values()}
    if len(geometries) != 1 or None in geometries:
        return None
    if any(len(set(_positions(v))) != len(v) for v in by_te.values()):
        return None  # a position twice within one echo: not a clean multi-echo stack
    return {te: tuple(v) for te, v in sorted(by_te.items())}


def find_echo_sets(series: Sequence[SeriesHeaders], min_echoes: int = MIN_ECHOES) -> list[EchoSet]:
    """Every stack with at least ``min_echoes`` echo times: each multi-echo
    series, and single-echo series sharing geometry and repetition time."""
    sets: list[EchoSet] = []
    singles: dict[tuple[object, ...], list[tuple[float, SeriesHeaders]]] = {}
    for s in series:
        split = split_echoes(s)
        if split is not None:
            if len(split) >= min_echoes:
                sets.append(EchoSet((s.series_uid,) * len(split), tuple(split), tuple(split.values())))
            continue
        tes = {echo_time_ms(ds) for ds in s.datasets}
        geometry = _geometry(s.datasets)
        if len(tes) != 1 or None in tes or geometry is None:
            continue
        try:
            tr = round(float(s.first.RepetitionTime) / 50.0)  # the same TR within ~50 ms
        except (AttributeError, TypeError, ValueError):
            continue
        te = tes.pop()
        assert te is not None
        singles.setdefault((geometry, tr), []).append((te, s))
    for group in singles.values():
        by_te: dict[float, SeriesHeaders] = {}
        for te, s in sorted(group, key=lambda g: (g[0], g[1].series_number)):
            by_te.setdefault(te, s)  # one series per echo time
        if len(by_te) >= min_echoes:
            sets.append(EchoSet(tuple(s.series_uid for s in by_te.values()), tuple(by_te),
                                tuple(s.datasets for s in by_te.values())))
    return sets
