"""The zero-input demo: a phantom study through a real ``spinegate serve``.

Generates the sagittal phantom study, starts ``spinegate serve`` as a child
process (embedded SQLite queue, local spool) and a local C-STORE receiver
standing in for the PACS, sends the study over DICOM, waits for the SEG and
SR to arrive, and prints the measurements beside the phantom's truth.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pynetdicom import AE, AllStoragePresentationContexts, evt

from spinegate.dicom_io.phantom.study import write_axial_phantom_study
from spinegate.dicom_io.send import send_files
from spinegate.dicom_io.study import read_header
from spinegate.dicom_io.uids import COMPREHENSIVE_3D_SR_SOP_CLASS, SEG_SOP_CLASS, VERIFICATION_SOP_CLASS

__all__ = ["LocalReceiver", "free_port", "run_demo", "wait_for_echo"]


def stop_process(*procs: subprocess.Popen, sig: int = signal.SIGINT, timeout_s: float = 30.0) -> None:
    """Signal child processes (all at once, so they stop in parallel) and
    wait for each; kill any that does not stop in time."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(sig)
    for proc in procs:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalReceiver:
    """A minimal storage SCP that keeps what it receives (the demo's PACS)."""

    folder: Path
    ae_title: str = "DEMOPACS"
    port: int = field(default_factory=free_port)
    received: list[tuple[float, Path, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        self._server = ae.start_server(("127.0.0.1", self.port), block=False,
                                       evt_handlers=[(evt.EVT_C_STORE, self._on_store)])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        path = self.folder / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        with self._lock:
            self.received.append((time.time(), path, str(ds.SOPClassUID)))
        return 0x0000

    def wait_for_sr(self, timeout_s: float) -> float:
        """Arrival time of the first SR; raises TimeoutError."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                for t, _, sop_class in self.received:
                    if sop_class == COMPREHENSIVE_3D_SR_SOP_CLASS:
                        return t
            time.sleep(0.1)
        raise TimeoutError(f"no SR arrived within {timeout_s:.0f} s")

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()


def wait_for_echo(host: str, port: int, ae_title: str, timeout_s: float,
                  process: subprocess.Popen | None = None) -> None:
    """Poll with C-ECHO until the SCP answers; raises TimeoutError, or
    RuntimeError at once if ``process`` (the server) has exited."""
    ae = AE(ae_title="SGPROBE")
    ae.add_requested_context(VERIFICATION_SOP_CLASS)
    ae.acse_timeout = ae.network_timeout = 2
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering C-ECHO")
        assoc = ae.associate(host, port, ae_title=ae_title)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            if status and status.Status == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"{ae_title}@{host}:{port} did not answer C-ECHO within {timeout_s:.0f} s")


def run_demo(work_dir: Path | None = None, seed: int = 7, timeout_s: float = 180.0) -> int:
    work = Path(work_dir or tempfile.mkdtemp(prefix="spinegate-demo-"))
    (work / "received").mkdir(parents=True, exist_ok=True)
    print(f"[demo] working folder {work}")
    truth = write_axial_phantom_study(work / "study", seed=seed, rows=256, columns=256, pixel_spacing_mm=0.8)
    print(f"[demo] phantom study: {len(truth['files'])} instances (sagittal T1 + T2, 15 x 384x384, 4 mm slices; "
          f"axial T1 + T2, {len(truth['axial'])} x 256x256, 0.8 mm pixels, 4 mm slices)")
    receiver = LocalReceiver(work / "received")
    port = free_port()
    config = {
        "network": {"ae_title": "SPINEGATE", "host": "127.0.0.1", "port": port},
        "http": {"host": "127.0.0.1", "port": free_port()},
        "storage": {"root": str(work / "var")},
        "assembly": {"quiet_period_s": 2.0},
        "export": {"destinations": [{"ae_title": receiver.ae_title, "host": "127.0.0.1", "port": receiver.port}]},
    }
    (work / "spinegate.yaml").write_text(yaml.safe_dump(config))
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config", str(work / "spinegate.yaml"), "serve"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
    try:
        wait_for_echo("127.0.0.1", port, "SPINEGATE", 90, proc)
        print(f"[demo] spinegate serve is listening on 127.0.0.1:{port}; sending the study")
        send_files(truth["files"], "SPINEGATE", "127.0.0.1", port, calling_ae_title="SCANNER")
        sent = time.time()
        arrived = receiver.wait_for_sr(timeout_s)
        print(f"[demo] SEG+SR received {arrived - sent:.1f} s after the last instance was sent "
              f"(includes the 2 s quiet period)")
    finally:
        stop_process(proc)
        receiver.shutdown()
        log.close()
    _print_results(work, truth, receiver)
    return 0


def _print_results(work: Path, truth: dict[str, Any], receiver: LocalReceiver) -> None:
    import json

    kinds = {SEG_SOP_CLASS: "SEG", COMPREHENSIVE_3D_SR_SOP_CLASS: "SR"}
    for _, path, sop_class in receiver.received:
        ds = read_header(path)
        print(f"[demo] received {kinds.get(sop_class, sop_class)}: {ds.SeriesDescription} -> {path.name}")
    doc = json.loads((work / "var" / "outputs" / truth["study_instance_uid"] / "measurements.json").read_text())
    print()
    print(f"{'series':<12} {'structure':<28} {'height mm':>9} {'truth':>6} {'volume cm3':>10} {'truth':>6}")
    for s in doc["series"]:
        for m in s["structures"]:
            t = truth["structures"].get(m["level"], {})
            print(f"{s['description'][:12]:<12} {m['label']:<28} {m['height_mm']:>9.1f} "
                  f"{t.get('height_mm', float('nan')):>6.1f} {m['volume_cm3']:>10.2f} {t.get('volume_cm3', float('nan')):>6.2f}")
    _print_muscles(doc, truth)
    if doc.get("biomechanics"):
        from spinegate.service.biomech_stage import loads_table

        print("\n[demo] spinal loads (OpenSim, subject model from the measured spine):")
        print(loads_table(doc["biomechanics"]))
    print(f"\n[demo] outputs and measurements.json: {work / 'var' / 'outputs' / truth['study_instance_uid']}")


def _print_muscles(doc: dict[str, Any], truth: dict[str, Any]) -> None:
    """Axial T2 muscles per level: CSA (level mean) and fat infiltration
    beside the truth over the same slices."""
    series = [s for s in doc["series"] if s["description"] == "AX T2 TSE" and s["muscles"]]
    if not series:
        return
    print(f"\n{'muscle (AX T2)':<26} {'level':<6} {'CSA cm2':>7} {'truth':>6} {'fat infiltr. %':>14} {'truth':>6}")
    z = [t["z_mm"] for t in truth["axial"]]
    for m in series[0]["muscles"]:
        # Match slices by position: the service orders them along the stack normal.
        nearest = [min(range(len(z)), key=lambda k: abs(z[k] - x["centroid_lps_mm"][2])) for x in m["slices"]]
        rows = [truth["axial"][k]["muscles"].get(m["muscle"], {}) for k in nearest]
        csa = sum(r.get("csa_cm2", 0.0) for r in rows) / len(rows)
        area = sum(r.get("csa_cm2", 0.0) for r in rows)
        share = sum(r.get("csa_cm2", 0.0) * r.get("fat_area_share", 0.0) for r in rows) / area if area else 0.0
        fi = m["fat_infiltration"]
        print(f"{m['label']:<26} {m['level']:<6} {m['csa_mean_cm2']:>7.2f} {csa:>6.2f} "
              f"{'-' if fi is None else format(100 * fi, '.1f'):>14} {100 * share:>6.1f}")


if __name__ == "__main__":
    raise SystemExit(run_demo(Path(os.environ["SPINEGATE_DEMO_DIR"]) if "SPINEGATE_DEMO_DIR" in os.environ else None))
