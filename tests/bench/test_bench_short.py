"""The benchmark runs in CI in its short mode, so it cannot rot."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.integration


def test_turnaround_benchmark_short_mode():
    proc = subprocess.run([sys.executable, "bench/turnaround.py", "--short"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(proc.stdout[: proc.stdout.rindex("}") + 1])
    assert record["mode"] == "short"
    assert record["turnaround"]["median_s"] > record["turnaround"]["quiet_period_s"]
    assert record["inference_onnxruntime_cpu"]["per_slice_ms"] > 0


def test_biomechanics_benchmark_short_mode():
    proc = subprocess.run([sys.executable, "bench/biomech_solve.py", "--short"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    record = json.loads(open(out).read())
    assert record["kind"] == "short" and record["median_s"] > 0
    assert len(record["compression_n"]["flexion_60deg_5kg_each_hand"]) == 6


def test_ingest_benchmark_short_mode():
    proc = subprocess.run([sys.executable, "bench/ingest.py", "--short"], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    record = json.loads(open(out).read())
    assert set(record["results"]) == {f"{k}/{a}" for k in ("spinegate", "spinegate-2proc", "storescp", "orthanc")
                                      for a in (1, 4)}
    assert all(r["instances_per_s"]["median"] > 0 for r in record["results"].values())


def test_inference_backends_benchmark_short_mode():
    proc = subprocess.run([sys.executable, "bench/inference_backends.py", "--short"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    record = json.loads(open(out).read())
    assert {(r["engine"], r["backend"]) for r in record["results"]} == {
        (e, b) for e in ("sagittal_spine", "axial_muscle") for b in ("onnxruntime-cpu", "torch-cpu")}
    assert all(r["per_slice_ms"] > 0 and r["peak_rss_mb"] > 50 for r in record["results"])


def test_turnaround_scaling_benchmark_short_mode():
    proc = subprocess.run([sys.executable, "bench/turnaround_scaling.py", "--short"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    record = json.loads(open(out).read())
    slices, series = record["by_sagittal_slices"], record["by_series"]
    assert [p["sagittal_slices_per_series"] for p in slices] == [9, 15]
    assert [p["analysed_series"] for p in series] == [2, 3]
    assert all(p["median_s"] > 0 for p in slices + series)
    # A third series (axial, ~45 slices in tiles) is seconds more work, well above the noise.
    assert series[1]["median_s"] > series[0]["median_s"]
    assert (REPO / "bench" / "results" / "turnaround_scaling_short.png").stat().st_size > 5000
