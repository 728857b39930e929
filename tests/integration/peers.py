"""Real peers for integration tests: dcmtk storescp as the PACS, and
``spinegate serve`` as a child process. Bounded waits, no fixed sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pydicom
import yaml

from conftest import REPO, require_tool
from service.demo import free_port, wait_for_echo

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk 3.6.7 stalls ~45 ms/instance without it


@dataclass
class StoreSCP:
    """dcmtk storescp accepting every transfer syntax into ``folder``."""

    folder: Path
    port: int
    proc: subprocess.Popen

    @classmethod
    def start(cls, folder: Path, port: int | None = None, ae_title: str = "PACS") -> "StoreSCP":
        folder.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        proc = subprocess.Popen([require_tool("storescp"), "-aet", ae_title, "+xa", "-od", str(folder), str(port)],
                                env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_echo("127.0.0.1", port, ae_title, 20)
        return cls(folder, port, proc)

    def objects(self, study_uid: str) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {"SEG": [], "SR": []}
        for p in self.folder.iterdir():
            if p.name.startswith("."):
                continue
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            if ds.StudyInstanceUID == study_uid and ds.Modality in found:
                found[ds.Modality].append(p)
        return found

    def wait_for(self, study_uid: str, n_seg: int, timeout_s: float = 240) -> dict[str, list[Path]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            objs = self.objects(study_uid)
            if len(objs["SR"]) >= 1 and len(objs["SEG"]) >= n_seg:
                return objs
            time.sleep(0.5)
        raise TimeoutError(f"PACS did not receive SEG+SR for {study_uid} within {timeout_s} s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@dataclass
class Spinegate:
    """``spinegate serve`` in a child process with its own storage root."""

    root: Path
    port: int
    proc: subprocess.Popen
    config_path: Path

    @classmethod
    def start(cls, root: Path, destination_port: int, quiet_period_s: float = 2.0, attempts: int = 3,
              port: int | None = None) -> "Spinegate":
        root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        cfg = {
            "network": {"ae_title": "SPINEGATE", "host": "127.0.0.1", "port": port},
            "storage": {"root": str(root / "var")},
            "assembly": {"quiet_period_s": quiet_period_s},
            "export": {"destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": destination_port}],
                       "attempts": attempts, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        }
        config_path = root / "spinegate.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        log = open(root / "serve.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "--config", str(config_path), "serve"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_echo("127.0.0.1", port, "SPINEGATE", 90, proc)
        except (TimeoutError, RuntimeError):
            proc.kill()
            raise
        return cls(root, port, proc, config_path)

    def log_text(self) -> str:
        return (self.root / "serve.log").read_text()

    def stop(self, sig: int = signal.SIGINT) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def storescu(files: list[Path], port: int, proposal: list[str] | None = None) -> None:
    """Send with dcmtk storescu over one association; raises on failure."""
    cmd = [require_tool("storescu"), "-aet", "SCANNER", "-aec", "SPINEGATE", *(proposal or []), "127.0.0.1",
           str(port), *map(str, files)]
    proc = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")


def compress(files: list[Path], out: Path, tool: str, *options: str) -> list[Path]:
    """Re-encode files with a dcmtk codec tool (dcmcjpeg, dcmcjpls, dcmcrle)."""
    out.mkdir(parents=True, exist_ok=True)
    exe = require_tool(tool)
    result = []
    for f in files:
        target = out / f.name
        subprocess.run([exe, *options, str(f), str(target)], check=True, capture_output=True, timeout=60)
        result.append(target)
    return result
