"""Delivery of a study's outputs to the configured destinations.

One delivery round tries every destination that has not yet confirmed the
outputs, once; the worker runs rounds as their own queued task, so a
destination that is down delays only its own study (`retry_delay_s` between
rounds, never a sleep in the queue consumer). Progress per destination is
plain data (`DeliveryStatus`), kept in the study's state record, so a
restart resumes where delivery stood and the same files — the same SOP
Instance UIDs — are sent again rather than re-analysed.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from spinegate.dicom_io.send import SendError, send_files, sop_class_uid
from spinegate.service.config import Destination, ExportConfig, OutputKind

__all__ = ["DeliveryStatus", "deliver_round", "retry_delay_s", "initial_status", "statuses_from_detail",
           "output_kind", "objects_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryStatus:
    """One destination's delivery of one study's outputs.

    Attributes
    ----------
    destination : str
        The destination's AE title.
    confirmed : bool
        Every object was acknowledged with a success status.
    attempts : int
        Associations tried so far.
    error : str
        The last attempt's failure ('' when none).
    """

    destination: str
    confirmed: bool = False
    attempts: int = 0
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def initial_status(config: ExportConfig) -> list[DeliveryStatus]:
    """Nothing delivered yet, one entry per configured destination."""
    return [DeliveryStatus(d.ae_title) for d in config.destinations]


def statuses_from_detail(entries: Sequence[dict[str, Any]]) -> list[DeliveryStatus]:
    return [DeliveryStatus(e["destination"], bool(e["confirmed"]), int(e["attempts"]), e.get("error", ""))
            for e in entries]


def retry_delay_s(config: ExportConfig, rounds_done: int) -> float:
    """Wait before the next round: exponential from ``backoff_initial_s``,
    capped at ``backoff_max_s``."""
    return min(config.backoff_initial_s * 2 ** max(rounds_done - 1, 0), config.backoff_max_s)


# SOP classes of the outputs the pipeline writes → their kind.
_KINDS = {"1.2.840.10008.5.1.4.1.1.66.4": OutputKind.SEG, "1.2.840.10008.5.1.4.1.1.88.34": OutputKind.SR,
          "1.2.840.10008.5.1.4.1.1.7": OutputKind.KEY_IMAGES, "1.2.840.10008.5.1.4.1.1.104.1": OutputKind.PDF_REPORT,
          "1.2.840.10008.5.1.4.1.1.30": OutputKind.PARAMETRIC_MAP}


def output_kind(path: Path) -> OutputKind | None:
    """The kind of an output, from its SOP class (None: not one spinegate
    writes).

    Raises
    ------
    ValueError
        If ``path`` is not a readable DICOM file.
    """
    return _KINDS.get(sop_class_uid(path))


def objects_for(paths: Sequence[Path], dest: Destination) -> list[Path]:
    """The outputs ``dest`` is configured to receive (``objects``); an
    object of no known kind goes only to a destination that takes every kind."""
    every = set(dest.objects) == set(OutputKind)
    out = []
    for p in paths:
        kind = output_kind(p)
        if (kind in dest.objects) if kind is not None else every:
            out.append(p)
    return out


def _send(paths: Sequence[Path], dest: Destination, config: ExportConfig) -> str:
    try:
        send_files(paths, dest.ae_title, dest.host, dest.port, dest.calling_ae_title or config.calling_ae_title,
                   tls_args=dest.tls_args())
    except (SendError, OSError, RuntimeError, ValueError) as e:
        return str(e) or type(e).__name__
    return ""


def deliver_round(
    paths: Sequence[Path], config: ExportConfig, statuses: Sequence[DeliveryStatus],
    send: Callable[[Sequence[Path], Destination, ExportConfig], str] = _send,
) -> list[DeliveryStatus]:
    """Send ``paths`` once to every destination not yet confirmed.

    Parameters
    ----------
    paths : sequence of Path
        The study's output objects.
    config : ExportConfig
        The destinations; a status whose destination is no longer configured
        is kept as it is.
    statuses : sequence of DeliveryStatus
        Where delivery stands (`initial_status` before the first round).
    send : callable, optional
        ``send(paths, destination, config) -> error`` ('' on success).

    Returns
    -------
    list of DeliveryStatus
        The statuses after this round.
    """
    by_title = {d.ae_title: d for d in config.destinations}
    out = []
    for status in statuses:
        dest = by_title.get(status.destination)
        if status.confirmed or dest is None:
            out.append(status)
            continue
        try:
            error = send(objects_for(paths, dest), dest, config)
        except ValueError as e:  # an output that is no longer a readable DICOM file
            error = str(e)
        attempt = status.attempts + 1
        if error:
            log.warning("export failed destination=%s attempt=%d/%d: %s", dest.ae_title, attempt, config.attempts,
                        error)
        else:
            log.info("exported objects=%d destination=%s attempt=%d", len(paths), dest.ae_title, attempt)
        out.append(replace(status, confirmed=not error, attempts=attempt, error=error))
    return out
