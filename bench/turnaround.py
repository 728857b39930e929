"""Benchmark: study turnaround and ONNX Runtime inference time on this CPU.

Turnaround = last instance acknowledged by spinegate → SR acknowledged by
the receiving PACS (the SR is sent last, after the SEGs, key images and
PDF report) (a pynetdicom storage SCP), for the issue-6 standard
study (phantom: sagittal T1 + T2, 15 slices each, 512²; axial T2 from L1 to
S1, 4 mm slices, 256²), through a real ``spinegate serve`` with the
embedded SQLite queue. The configured quiet period (the "study complete"
guess) is part of the turnaround and reported separately; per-stage times
come from each study's measurements.json.

    .venv/bin/python bench/turnaround.py            # full: 512² / 256², 5 runs
    .venv/bin/python bench/turnaround.py --short    # CI: 192² / 160², 1 run

Writes a JSON record to bench/results/ and prints a Markdown table row.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spinegate.dicom_io.mr_writer import StudyInfo  # noqa: E402
from spinegate.dicom_io.phantom.study import write_axial_phantom_study  # noqa: E402
from spinegate.dicom_io.send import send_files  # noqa: E402
from inference_backends import measure_one  # noqa: E402  (bench/ is this script's folder)
from spinegate.service.demo import LocalReceiver, free_port, wait_for_echo  # noqa: E402


def _stage_times(doc: dict) -> dict[str, float]:
    """Seconds per stage of one study, summed over its series."""
    stages: dict[str, float] = {}
    for s in doc["series"]:
        for k, v in s["timings_s"].items():
            key = f"{s['engine']}:{k}"
            stages[key] = round(stages.get(key, 0.0) + v, 3)
    stages.update({k: v for k, v in doc["timings_s"].items()})
    return stages


def turnaround(size: int, axial_size: int, runs: int, quiet_s: float, viewer_outputs: bool = True) -> dict[str, object]:
    work = Path(tempfile.mkdtemp(prefix="spinegate-bench-"))
    receiver = LocalReceiver(work / "received")
    (work / "received").mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = {"network": {"port": port}, "http": {"port": free_port()}, "storage": {"root": str(work / "var")},
           "assembly": {"quiet_period_s": quiet_s},
           "outputs": {"key_images": viewer_outputs, "pdf_report": viewer_outputs},
           "export": {"destinations": [{"ae_title": receiver.ae_title, "host": "127.0.0.1", "port": receiver.port}]}}
    (work / "c.yaml").write_text(yaml.safe_dump(cfg))
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config", str(work / "c.yaml"), "serve"], cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT)
    results = []
    stages: list[dict[str, float]] = []
    try:
        wait_for_echo("127.0.0.1", port, "SPINEGATE", 90)
        for run in range(runs):
            study = write_axial_phantom_study(
                work / f"study{run}", seed=300 + run, rows=axial_size, columns=axial_size,
                pixel_spacing_mm=205.0 / axial_size, axial_weightings=("T2",), sagittal_size=(size, 300.0 / size),
                study=StudyInfo(uid_seed=f"bench-{run}-{time.time()}"))
            receiver.received.clear()
            send_files(study["files"], "SPINEGATE", "127.0.0.1", port, calling_ae_title="BENCH")
            last_ack = time.time()
            arrived = receiver.wait_for_sr(300)
            results.append(arrived - last_ack)
            doc = json.loads((work / "var" / "outputs" / study["study_instance_uid"] / "measurements.json").read_text())
            stages.append(_stage_times(doc))
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        receiver.shutdown()
        log.close()
    return {"runs_s": [round(r, 2) for r in results], "median_s": round(statistics.median(results), 2),
            "min_s": round(min(results), 2), "max_s": round(max(results), 2), "quiet_period_s": quiet_s,
            "median_minus_quiet_s": round(statistics.median(results) - quiet_s, 2),
            "stage_median_s": {k: round(statistics.median(st.get(k, 0.0) for st in stages), 3) for k in stages[0]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="small inputs, one run (CI)")
    ap.add_argument("--quiet-period", type=float, default=1.0)
    ap.add_argument("--no-viewer-outputs", action="store_true",
                    help="without the key images and the PDF report (their cost, measured beside the default)")
    args = ap.parse_args()
    size, axial_size, runs = (192, 160, 1) if args.short else (512, 256, 5)
    record = {
        "mode": "short" if args.short else "full",
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "study": f"sagittal T1 + T2, 15 slices each, {size}x{size}; axial T2 L1-S1 (4 mm), {axial_size}x{axial_size}",
        "inference_onnxruntime_cpu": measure_one("sagittal_spine", "onnxruntime", 1 if args.short else 5, args.short),
        "viewer_outputs": not args.no_viewer_outputs,
        "turnaround": turnaround(size, axial_size, runs, args.quiet_period, not args.no_viewer_outputs),
    }
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    path = out / f"turnaround_{record['mode']}_{time.strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=1))
    t, inf = record["turnaround"], record["inference_onnxruntime_cpu"]
    print(json.dumps(record, indent=1))
    print(f"| {record['study']} | {t['median_s']} ({t['min_s']}–{t['max_s']}) | {t['quiet_period_s']} | "
          f"{t['median_minus_quiet_s']} | {inf['per_slice_ms']} | {inf['per_series_s']['median']} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
