"""Durable file storage: the spool of received instances and quarantine.

Every write goes to a temporary file in the target folder, is fsynced,
renamed into place and the folder fsynced, so a file is either whole on disk
or absent — and the C-STORE success status is only sent after this returns.
Paths are built from UIDs only (never from patient attributes).
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

__all__ = ["durable_write", "spool_path", "quarantine_write", "safe_uid", "file_identity", "remove_unless_replaced",
           "remove_empty_folders"]

_UID = re.compile(r"^[0-9.]{1,64}$")


def safe_uid(uid: str) -> str:
    """Return ``uid`` if it is a syntactically valid UID, else raise ValueError
    (a UID becomes a path component, so nothing else may pass)."""
    if not _UID.match(uid or "") or ".." in uid:
        raise ValueError(f"'uid' {uid!r} is not a valid DICOM UID")
    return uid


def durable_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably (fsync file and folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def spool_path(spool: Path, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
    return spool / safe_uid(study_uid) / safe_uid(series_uid) / f"{safe_uid(sop_instance_uid)}.dcm"


def quarantine_write(folder: Path, data: bytes, reason: str, context: dict[str, str]) -> Path:
    """Keep a rejected input with a JSON sidecar stating why (nothing is lost)."""
    stamp = f"{time.strftime('%Y%m%dT%H%M%S')}_{time.monotonic_ns()}"
    path = durable_write(folder / f"{stamp}.dcm", data)
    durable_write(folder / f"{stamp}.json", json.dumps({"reason": reason, **context}, indent=1).encode())
    return path


def file_identity(path: Path) -> tuple[int, int]:
    """(device, inode) of ``path``: tells the file seen now from a copy
    written to the same path later (`durable_write` renames a new inode
    into place)."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def remove_unless_replaced(path: Path, identity: tuple[int, int]) -> bool:
    """Delete ``path`` if it is still the file ``identity`` names.

    The file is first renamed aside (atomic), so a re-sent instance that the
    receiver writes to the same path meanwhile is never the one deleted: if
    the file set aside is not the one expected it is put back. Returns
    whether a file was deleted.
    """
    aside = path.with_name(f".{path.name}.{os.getpid()}.deleting")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if file_identity(aside) != identity:
        os.rename(aside, path)
        return False
    aside.unlink()
    return True


def remove_empty_folders(folder: Path) -> None:
    """Remove ``folder`` and its sub-folders where they are empty (a folder
    a receiver is writing into is not empty and stays)."""
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        try:
            sub.rmdir()
        except OSError:
            pass
    try:
        folder.rmdir()
    except OSError:
        pass
