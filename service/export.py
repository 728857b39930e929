"""Export of results to the configured destinations, with retries and
exponential backoff. Inputs are deleted (when configured) only after every
destination confirmed every object."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from spinegate.dicom_io.send import SendError, send_files
from spinegate.service.config import Destination, ExportConfig

__all__ = ["ExportOutcome", "export_outputs"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportOutcome:
    destination: Destination
    confirmed: bool
    attempts: int
    error: str = ""


def export_outputs(
    paths: Sequence[Path], config: ExportConfig, sleep: Callable[[float], None] = time.sleep
) -> list[ExportOutcome]:
    """Send ``paths`` to every destination, retrying each with backoff."""
    outcomes = []
    for dest in config.destinations:
        delay = config.backoff_initial_s
        error = ""
        for attempt in range(1, config.attempts + 1):
            try:
                send_files(paths, dest.ae_title, dest.host, dest.port, dest.calling_ae_title or config.calling_ae_title)
                log.info("exported objects=%d destination=%s attempt=%d", len(paths), dest.ae_title, attempt)
                outcomes.append(ExportOutcome(dest, True, attempt))
                break
            except (SendError, OSError, RuntimeError) as e:
                error = str(e)
                log.warning("export failed destination=%s attempt=%d/%d: %s", dest.ae_title, attempt,
                            config.attempts, error)
                if attempt < config.attempts:
                    sleep(delay)
                    delay = min(delay * 2, config.backoff_max_s)
        else:
            outcomes.append(ExportOutcome(dest, False, config.attempts, error))
    return outcomes
