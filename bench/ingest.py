"""Benchmark: DICOM ingest rate of spinegate beside dcmtk storescp and Orthanc.

The same MR instances (512×512×16 bit, uncompressed) are sent by dcmtk
`storescu` over one association and over four in parallel to:
`spinegate serve` (durable: temp file, fsync, rename before the response),
in one process and with ``network.receiver_processes`` above one
(``--receiver-processes``; 1 and 2 by default),
dcmtk `storescp` (+xa, not durable) and Orthanc 1.10 (durable by default),
and with ``--floor`` the floor under any durable pynetdicom receiver
(`bench/pynetdicom_floor.py`: spinegate's AE and transport, a handler that
only writes the bytes durably; in one process and in as many as
spinegate's largest ``--receiver-processes``), then with spinegate's
parsing and checks added (``+check``) and its SQLite index too
(``+check+index``), one process each.
Reported per receiver: instances/s (min/median/max over the passes) and the
receiver's CPU time per instance (from /proc), plus spinegate's ratio to
each peer, all measured in one run (PERFORMANCE.md: the machine is noisy).

TCP_NODELAY=1 is set for the dcmtk tools and Orthanc (Debian's dcmtk 3.6.7
otherwise stalls ~45 ms per instance). storescp and Orthanc cannot bind to
one address, so the script re-runs itself in a private network namespace
holding only loopback (`unshare -n`).

    .venv/bin/python bench/ingest.py                 # 200 instances, 3 passes
    .venv/bin/python bench/ingest.py --short         # CI: 40 instances, 1 pass
    .venv/bin/python bench/ingest.py --receiver-processes 1 2 4
    .venv/bin/python bench/ingest.py --floor       # adds the pynetdicom floor

Writes a JSON record to bench/results/ and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series  # noqa: E402
from spinegate.dicom_io.phantom import sagittal_grid  # noqa: E402
from spinegate.service.demo import free_port, stop_process, wait_for_echo  # noqa: E402

ENV = {**os.environ, "TCP_NODELAY": "1"}
PEERS = ("storescp", "orthanc")


def receiver_kind(processes: int, name: str = "spinegate") -> str:
    """A receiver's name in the results: spinegate-2proc is
    ``network.receiver_processes: 2`` (two processes on the port),
    pynetdicom-floor-4proc the floor in four."""
    return name if processes == 1 else f"{name}-{processes}proc"


def _only_loopback() -> bool:
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return {line.split(":")[0].strip() for line in lines} == {"lo"}


def _cpu_s(pid: int) -> float:
    """CPU seconds of a process and its live descendants (spinegate's extra
    receiver processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    total = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:  # a thread or a child may exit while we look
            children = (task / "children").read_text().split()
        except FileNotFoundError:
            continue
        for child in children:
            try:
                total += _cpu_s(int(child))
            except FileNotFoundError:
                pass
    return total


def _instances(n: int, folder: Path) -> list[Path]:
    rng = np.random.default_rng(0)
    grid = sagittal_grid(n, 512, 512, 0.5, 4.0)
    pixels = rng.integers(0, 4000, (n, 512, 512), dtype=np.uint16)
    return write_mr_series(pixels, grid.affine, StudyInfo(uid_seed=f"ingest-{time.time()}"),
                           SeriesSpec(2, "SAG T2 TSE", 3500, 100, 4.0), folder)


def _send(files: list[Path], port: int, called: str, associations: int) -> float:
    """Seconds to send every file, split over parallel storescu processes."""
    chunks = [files[i::associations] for i in range(associations)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen([shutil.which("storescu") or "storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1",
                               str(port), *map(str, chunk)], env=ENV, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for chunk in chunks]
    for p in procs:
        if p.wait(timeout=600) != 0:
            raise RuntimeError(f"storescu failed sending to {called}")
    return time.perf_counter() - t0


def _start(kind: str, work: Path, processes: int = 1) -> tuple[subprocess.Popen, int, str]:
    port = free_port()
    work.mkdir(parents=True)
    if kind.startswith("pynetdicom-floor"):
        steps = [f"--{step}" for step in ("check", "index") if f"+{step}" in kind]
        proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "pynetdicom_floor.py"), "--port", str(port),
                                 "--folder", str(work / "spool"), "--processes", str(processes), *steps], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, port, "PACS"
    if kind.startswith("spinegate"):
        cfg = {"network": {"port": port, "receiver_processes": processes}, "http": {"enabled": False},
               "storage": {"root": str(work / "var")}, "assembly": {"quiet_period_s": 3600}}
        (work / "c.yaml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--log-level", "WARNING", "--config",
                                 str(work / "c.yaml"), "serve"], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        return proc, port, "SPINEGATE"
    if kind == "storescp":
        proc = subprocess.Popen([shutil.which("storescp") or "storescp", "-aet", "PACS", "+xa", "-od", str(work),
                                 str(port)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return proc, port, "PACS"
    orthanc: dict[str, object] = {"Name": "PACS", "DicomAet": "PACS", "DicomPort": port, "HttpPort": free_port(),
                                  "StorageDirectory": str(work / "db"), "IndexDirectory": str(work / "db"),
                                  "Plugins": [], "RemoteAccessAllowed": False, "AuthenticationEnabled": False}
    (work / "orthanc.json").write_text(json.dumps(orthanc))
    proc = subprocess.Popen([shutil.which("Orthanc") or "/usr/sbin/Orthanc", str(work / "orthanc.json")], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, port, "PACS"


def _listeners(port: int) -> int:
    """Sockets listening on 127.0.0.1:port (each receiver process has one)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def measure(kind: str, files: list[Path], associations: int, passes: int, work: Path,
            processes: int = 1) -> dict[str, object]:
    rates, cpu = [], []
    for i in range(passes):
        proc, port, called = _start(kind, work / f"{kind}-{associations}-{i}", processes)
        try:
            wait_for_echo("127.0.0.1", port, called, 90, proc)
            # Every receiver process listening (and done starting) before the clock runs.
            deadline = time.time() + 60
            while processes > 1 and _listeners(port) < processes and time.time() < deadline:
                time.sleep(0.2)
            time.sleep(1.0)
            c0 = _cpu_s(proc.pid)
            seconds = _send(files, port, called, associations)
            rates.append(len(files) / seconds)
            cpu.append(1000 * (_cpu_s(proc.pid) - c0) / len(files))
        finally:
            stop_process(proc, timeout_s=30)
    return {"instances_per_s": {"min": round(min(rates), 1), "median": round(statistics.median(rates), 1),
                                "max": round(max(rates), 1)},
            "receiver_cpu_ms_per_instance": round(statistics.median(cpu), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="40 instances, one pass (CI)")
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--receiver-processes", type=int, nargs="+", default=[1, 2], metavar="N",
                    help="spinegate's network.receiver_processes settings to measure")
    ap.add_argument("--floor", action="store_true",
                    help="also measure bench/pynetdicom_floor.py (in 1 and in the most receiver processes)")
    args = ap.parse_args(argv)
    if not _only_loopback():
        if shutil.which("unshare") is None:
            raise SystemExit("needs a loopback-only network namespace: run it under 'unshare -n'")
        rerun = " ".join(map(str, [sys.executable, Path(__file__).resolve(), *sys.argv[1:]]))
        cmd = f"ip link set lo up && exec {rerun}"
        return subprocess.run(["unshare", "-n", "sh", "-c", cmd]).returncode
    n, passes = (40, 1) if args.short else (args.instances, args.passes)
    work = Path(tempfile.mkdtemp(prefix="spinegate-ingest-"))
    files = _instances(n, work / "instances")
    results: dict[str, dict[str, object]] = {}
    variants = {receiver_kind(n): n for n in args.receiver_processes}
    floors = {**{receiver_kind(n, "pynetdicom-floor"): n for n in sorted({1, max(args.receiver_processes)})},
              "pynetdicom-floor+check": 1, "pynetdicom-floor+check+index": 1} if args.floor else {}
    for associations in (1, 4):
        for kind, processes in (*variants.items(), *floors.items(), *((peer, 1) for peer in PEERS)):
            results[f"{kind}/{associations}"] = measure(kind, files, associations, passes, work, processes)
    shutil.rmtree(work, ignore_errors=True)
    record = {"kind": "short" if args.short else "full", "instances": n, "passes": passes,
              "instance": "MR 512x512x16 bit, Explicit VR Little Endian", "results": results}
    for associations in (1, 4):
        for variant in (*variants, *floors):
            ours = results[f"{variant}/{associations}"]["instances_per_s"]["median"]  # type: ignore[index]
            for peer in PEERS:
                theirs = results[f"{peer}/{associations}"]["instances_per_s"]["median"]  # type: ignore[index]
                record[f"ratio_{variant}_to_{peer}_{associations}_assoc"] = round(ours / theirs, 2)
    out = REPO / "bench" / "results" / f"ingest_{record['kind']}_{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print("| receiver | durable | associations | instances/s median (min–max) | receiver CPU ms/instance |")
    print("|---|---|---|---|---|")
    for key, r in results.items():
        kind, assoc = key.split("/")
        rate = r["instances_per_s"]
        print(f"| {kind} | {'no' if kind == 'storescp' else 'yes'} | {assoc} | {rate['median']} "  # type: ignore[index]
              f"({rate['min']}–{rate['max']}) | {r['receiver_cpu_ms_per_instance']} |")  # type: ignore[index]
    print("\n" + ", ".join(f"{k}: {v}" for k, v in record.items() if k.startswith("ratio")))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
