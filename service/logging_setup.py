"""One logging configuration for spinegate processes (structured key=value
messages; library packages add no handlers)."""
from __future__ import annotations

import logging.config

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO") -> None:
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"kv": {"format": "ts=%(asctime)s level=%(levelname)s logger=%(name)s msg=%(message)s"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "kv"}},
        "root": {"level": level, "handlers": ["stderr"]},
        # pynetdicom's own INFO lines include association details; keep warnings.
        "loggers": {"pynetdicom": {"level": "WARNING"}, "huey": {"level": "WARNING"}},
    })
