"""dcmtk's storescp as the PACS that spinegate exports to, and dcmtk's
echoscu/storescu as the sender: the conformance suite's peers, also used by
the integration tests. Bounded waits, no fixed sleeps."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.errors

from conformance.checks import tool

__all__ = ["DCMTK_ENV", "StoreResult", "StoreSCP", "echoscu", "storescu_statuses"]

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk 3.6.7 stalls ~45 ms/instance without it
_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")


def echoscu(host: str, port: int, called_ae: str, calling_ae: str = "ECHOSCU",
            timeout_s: float = 30) -> subprocess.CompletedProcess:
    """One C-ECHO with dcmtk's echoscu (ACSE timeout 5 s)."""
    return subprocess.run([tool("echoscu"), "-to", "5", "-ta", "5", "-aet", calling_ae, "-aec", called_ae, host,
                           str(port)], env=DCMTK_ENV, capture_output=True, text=True, timeout=timeout_s)


@dataclass(frozen=True)
class StoreResult:
    """What storescu saw: its exit code, one DIMSE status per C-STORE sent,
    and its diagnostics."""

    returncode: int
    statuses: tuple[int, ...]
    output: str

    def negotiation_failed(self) -> bool:
        return "No presentation context" in self.output or "Association Rejected" in self.output


def storescu_statuses(files: list[Path], host: str, port: int, called_ae: str, calling_ae: str,
                      options: list[str] | tuple[str, ...] = (), timeout_s: float = 300) -> StoreResult:
    """Send ``files`` over one association with dcmtk's storescu (debug
    output, from which each response's DIMSE status is read)."""
    proc = subprocess.run([tool("storescu"), "-d", *options, "-aet", calling_ae, "-aec", called_ae, host, str(port),
                           *map(str, files)], env=DCMTK_ENV, capture_output=True, text=True, errors="replace",
                          timeout=timeout_s)
    text = proc.stdout + proc.stderr
    statuses = tuple(int(m, 16) for m in _STATUS.findall(text))
    diagnostics = "\n".join(line for line in text.splitlines() if line.startswith(("E:", "F:", "W:")))
    return StoreResult(proc.returncode, statuses, diagnostics)


@dataclass
class StoreSCP:
    """dcmtk storescp accepting every transfer syntax into ``folder``."""

    folder: Path
    port: int
    proc: subprocess.Popen
    # (StudyInstanceUID, Modality) of each file already read: the header
    # does not change while storescp appends the rest, so each file is
    # parsed once, not on every poll.
    _seen: dict[Path, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def start(cls, folder: Path, port: int, ae_title: str = "PACS", timeout_s: float = 20) -> "StoreSCP":
        folder.mkdir(parents=True, exist_ok=True)
        with socket.socket() as probe:  # another storescp would answer the readiness echo below
            # Reuse: a listener still blocks the bind; connections of an
            # earlier storescp left in TIME_WAIT do not.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("", port))
            except OSError as e:
                raise RuntimeError(f"port {port} is in use: cannot start the PACS there ({e})") from e
        proc = subprocess.Popen([tool("storescp"), "-aet", ae_title, "+xa", "-od", str(folder), str(port)],
                                env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"storescp exited with code {proc.returncode} (port {port} in use?)")
            if echoscu("127.0.0.1", port, ae_title, timeout_s=10).returncode == 0:
                return cls(folder, port, proc)
            time.sleep(0.2)
        proc.kill()
        raise TimeoutError(f"storescp did not answer C-ECHO on port {port} within {timeout_s} s")

    def objects(self, study_uid: str) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {"SEG": [], "SR": [], "OT": [], "DOC": []}
        for p in self.folder.iterdir():
            if p.name.startswith("."):
                continue
            if p not in self._seen:
                try:
                    ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "Modality"])
                    self._seen[p] = (str(ds.StudyInstanceUID), str(ds.Modality))
                except (pydicom.errors.InvalidDicomError, EOFError, OSError, ValueError, AttributeError):
                    continue  # storescp is still writing it: read it on the next poll
            study, modality = self._seen[p]
            if study == study_uid and modality in found:
                found[modality].append(p)
        return found

    def wait_for(self, study_uid: str, n_seg: int, timeout_s: float = 240, n_key_images: int = 0,
                 n_pdf: int = 0) -> dict[str, list[Path]]:
        """The study's objects by modality (SEG, SR, OT: key images, DOC:
        the PDF report) once the SR and the counts asked for are there."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            objs = self.objects(study_uid)
            if (len(objs["SR"]) >= 1 and len(objs["SEG"]) >= n_seg and len(objs["OT"]) >= n_key_images
                    and len(objs["DOC"]) >= n_pdf):
                # Complete once no file grows between two polls (storescp
                # writes in place, not by rename).
                sizes = {p: p.stat().st_size for paths in objs.values() for p in paths}
                time.sleep(0.5)
                if all(p.stat().st_size == n for p, n in sizes.items()):
                    return objs
                continue
            time.sleep(0.5)
        raise TimeoutError(f"PACS did not receive SEG+SR for {study_uid} within {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)
