"""Load: many concurrent associations storing into `spinegate serve` for a
sustained, bounded period on loopback.

``--associations`` senders (pynetdicom SCUs, spread over ``--processes``
processes so the senders are not one interpreter) each open one association
and send MR instances (256×256, 16 bit, each with its own SOP Instance UID)
back to back until ``--seconds`` have passed, then release. spinegate runs
receive-only (``queue.consume_in_serve: false``) so the numbers are those of
receiving. Reported: every C-STORE status (any failure is a failed run),
instances/s, per-C-STORE latency (median, 99th percentile), the server's
resident memory (start, peak, end, sampled every 0.5 s), and that every
acknowledged instance is on disk.

    .venv/bin/python bench/load.py --associations 50 --seconds 120
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conformance.fuzz import base_instance, resident_mb  # noqa: E402
from spinegate.service.demo import free_port, stop_process, wait_for_echo  # noqa: E402


def _sender(port: int, index: int, seconds: float, start_at: float, out: list[dict]) -> None:
    from pynetdicom import AE
    from pynetdicom.sop_class import MRImageStorage  # type: ignore[attr-defined]

    ds = base_instance(0)
    ds.Rows = ds.Columns = 256
    ds.PixelData = np.random.default_rng(index).integers(0, 4000, (256, 256), dtype=np.uint16).tobytes()
    ds.StudyInstanceUID = f"1.2.826.0.1.3680043.10.511.77.{index}"
    ds.SeriesInstanceUID = f"1.2.826.0.1.3680043.10.511.77.{index}.1"
    ae = AE(ae_title=f"LOAD{index:02d}")
    ae.add_requested_context(MRImageStorage, ds.file_meta.TransferSyntaxUID)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    record: dict = {"sender": index, "statuses": {}, "latencies_ms": [], "refused": 0}
    while time.time() < start_at:
        time.sleep(0.01)
    assoc = ae.associate("127.0.0.1", port, ae_title="SPINEGATE")
    if not assoc.is_established:
        record["refused"] = 1
        out.append(record)
        return
    n = 0
    deadline = time.time() + seconds
    while time.time() < deadline:
        n += 1
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.10.511.77.{index}.1.{n}"
        ds.InstanceNumber = n
        t0 = time.perf_counter()
        status = assoc.send_c_store(ds)
        record["latencies_ms"].append(1000 * (time.perf_counter() - t0))
        code = f"0x{getattr(status, 'Status', 0xFFFF):04X}"
        record["statuses"][code] = record["statuses"].get(code, 0) + 1
        if not assoc.is_established:
            break
    if assoc.is_established:
        assoc.release()
    out.append(record)


def _process(port: int, indices: list[int], seconds: float, start_at: float, queue: multiprocessing.Queue) -> None:
    out: list[dict] = []
    threads = [threading.Thread(target=_sender, args=(port, i, seconds, start_at, out)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.put(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--associations", type=int, default=50)
    ap.add_argument("--processes", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=120)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinegate-load-"))
    port = free_port()
    cfg = {"network": {"port": port, "maximum_associations": args.associations + 10}, "http": {"enabled": False},
           "storage": {"root": str(work / "var")}, "queue": {"consume_in_serve": False}}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    server = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--log-level", "WARNING", "--config",
                               str(work / "c.yaml"), "serve"], cwd=REPO, stdout=open(work / "serve.log", "w"),
                              stderr=subprocess.STDOUT)
    rss: list[float] = []
    try:
        wait_for_echo("127.0.0.1", port, "SPINEGATE", 90, server)
        rss.append(resident_mb(server.pid))
        start_at = time.time() + 3
        queue: multiprocessing.Queue = multiprocessing.Queue()
        groups = [list(range(p, args.associations, args.processes)) for p in range(args.processes)]
        procs = [multiprocessing.Process(target=_process, args=(port, g, args.seconds, start_at, queue))
                 for g in groups]
        for p in procs:
            p.start()
        records: list[dict] = []
        while len(records) < args.associations:
            try:
                records += queue.get(timeout=0.5)
            except Exception:
                if server.poll() is not None:
                    raise RuntimeError("spinegate serve exited under load")
            rss.append(resident_mb(server.pid))
        for p in procs:
            p.join()
        rss.append(resident_mb(server.pid))
    finally:
        stop_process(server, timeout_s=60)
    statuses: dict[str, int] = {}
    for r in records:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    latencies = sorted(x for r in records for x in r["latencies_ms"])
    stored = statuses.get("0x0000", 0)
    on_disk = sum(1 for _ in (work / "var" / "spool").rglob("*.dcm"))
    result = {
        "associations": args.associations, "seconds": args.seconds, "sender_processes": args.processes,
        "refused_associations": sum(r["refused"] for r in records), "c_store_statuses": statuses,
        "failed_c_stores": sum(n for code, n in statuses.items() if code != "0x0000"),
        "instances_per_s": round(stored / args.seconds, 1),
        "latency_ms": {"median": round(statistics.median(latencies), 1),
                       "p99": round(latencies[int(0.99 * (len(latencies) - 1))], 1)} if latencies else None,
        "server_rss_mb": {"start": round(rss[0], 1), "peak": round(max(rss), 1), "end": round(rss[-1], 1)},
        "acknowledged_on_disk": on_disk == stored, "on_disk": on_disk,
    }
    print(json.dumps(result, indent=1))
    ok = not result["refused_associations"] and not result["failed_c_stores"] and result["acknowledged_on_disk"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
