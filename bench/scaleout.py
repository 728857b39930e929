"""Benchmark: throughput of one vs two `spinegate worker` processes on a
Redis queue (real redis-server), on this machine.

A receive-only `spinegate serve` takes a batch of phantom studies (sagittal
T1 + T2, 15 slices each); the workers process them from Redis; a local
C-STORE receiver stands in for the PACS. Throughput = studies / (time from
the first instance sent to the last SR received). Each worker runs ONNX
Runtime with `inference.threads` threads (1 here, so two workers use the
two cores without oversubscription).

    .venv/bin/python bench/scaleout.py               # 8 studies, 1 and 2 workers
    .venv/bin/python bench/scaleout.py --studies 3   # quicker

Writes a JSON record to bench/results/ and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spinegate.dicom_io.mr_writer import StudyInfo  # noqa: E402
from spinegate.dicom_io.phantom.study import write_phantom_study  # noqa: E402
from spinegate.dicom_io.send import send_files  # noqa: E402
from spinegate.service.demo import LocalReceiver, free_port, stop_process, wait_for_echo  # noqa: E402


def _redis(folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("redis-server did not start")


def batch(n_workers: int, studies: list[dict], work: Path) -> float:
    work.mkdir(parents=True)
    redis, redis_port = _redis(work)
    receiver = LocalReceiver(work / "received")
    (work / "received").mkdir()
    port = free_port()
    cfg = {"network": {"port": port}, "http": {"enabled": False}, "storage": {"root": str(work / "var")},
           "assembly": {"quiet_period_s": 1.0}, "inference": {"threads": 1},
           "queue": {"backend": "redis", "redis_url": f"redis://127.0.0.1:{redis_port}/0", "consume_in_serve": False},
           "export": {"destinations": [{"ae_title": receiver.ae_title, "host": "127.0.0.1", "port": receiver.port}]}}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    cli = [sys.executable, "-m", "spinegate.service.cli", "--log-level", "WARNING", "--config", str(work / "c.yaml")]
    procs = [subprocess.Popen(cli + ["serve"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    procs += [subprocess.Popen(cli + ["worker"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
              for _ in range(n_workers)]
    try:
        wait_for_echo("127.0.0.1", port, "SPINEGATE", 90)
        time.sleep(5.0)  # workers load their model
        t0 = time.time()
        for s in studies:
            send_files(s["files"], "SPINEGATE", "127.0.0.1", port, calling_ae_title="BENCH")
        deadline = time.time() + 900
        while sum(1 for _, _, c in receiver.received if c.endswith("88.34")) < len(studies):
            if time.time() > deadline:
                raise TimeoutError("batch did not finish")
            time.sleep(0.2)
        return time.time() - t0
    finally:
        stop_process(*procs)
        receiver.shutdown()
        redis.terminate()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=8)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinegate-scaleout-"))
    results = {}
    for n in (1, 2):
        studies = [write_phantom_study(work / f"w{n}s{i}", seed=500 + i, rows=256, columns=256,
                                       pixel_spacing_mm=1.2, study=StudyInfo(uid_seed=f"scaleout-{n}-{i}-{time.time()}"))
                   for i in range(args.studies)]
        elapsed = batch(n, studies, work / f"run{n}")
        results[n] = {"seconds": round(elapsed, 1), "studies_per_minute": round(60 * args.studies / elapsed, 2)}
    record = {"studies": args.studies, "study": "sagittal T1 + T2, 15 slices each, 256x256", "workers": results,
              "speed_up": round(results[1]["seconds"] / results[2]["seconds"], 2),
              "machine": f"{platform.machine()}, 2 CPU cores"}
    out = REPO / "bench" / "results" / f"scaleout_{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print("| workers | batch time, s | studies per minute |\n|---|---|---|")
    for n, r in results.items():
        print(f"| {n} | {r['seconds']} | {r['studies_per_minute']} |")
    print(f"speed-up 2 vs 1 worker: {record['speed_up']}×; wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
