"""The benchmark runs in CI in its short mode, so it cannot rot."""
import json
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=160)]


def _short_run(script: str, timeout_s: int = 600, *extra: str) -> dict:
    """Run ``bench/<script> --short``; the JSON record it says it wrote."""
    proc = subprocess.run([sys.executable, f"bench/{script}", "--short", *extra], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout_s)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout.strip().splitlines()[-1].removeprefix("wrote ")
    return json.loads(open(out).read())


def test_turnaround_benchmark_short_mode():
    record = _short_run("turnaround.py")
    assert record["mode"] == "short"
    assert record["turnaround"]["median_s"] > record["turnaround"]["quiet_period_s"]
    assert record["inference_onnxruntime_cpu"]["per_slice_ms"] > 0


def test_biomechanics_benchmark_short_mode():
    record = _short_run("biomech_solve.py")
    assert record["kind"] == "short" and record["median_s"] > 0
    assert len(record["compression_n"]["flexion_60deg_5kg_each_hand"]) == 6


def test_ingest_benchmark_short_mode():
    record = _short_run("ingest.py", 600, "--floor")
    floors = ("pynetdicom-floor", "pynetdicom-floor-2proc", "pynetdicom-floor+check", "pynetdicom-floor+check+index")
    assert set(record["results"]) == {f"{k}/{a}" for k in ("spinegate", "spinegate-2proc", *floors, "storescp",
                                                           "orthanc") for a in (1, 4)}
    assert all(r["instances_per_s"]["median"] > 0 for r in record["results"].values())


def test_inference_backends_benchmark_short_mode():
    record = _short_run("inference_backends.py", 900)
    assert {(r["engine"], r["backend"]) for r in record["results"]} == {
        (e, b) for e in ("sagittal_spine", "axial_muscle") for b in ("onnxruntime-cpu", "torch-cpu")} | {
        ("axial_muscle", "onnxruntime-cpu-int8")}
    assert all(r["per_slice_ms"] > 0 and r["peak_rss_mb"] > 50 for r in record["results"])


def test_turnaround_scaling_benchmark_short_mode():
    record = _short_run("turnaround_scaling.py", 900)
    slices, series = record["by_sagittal_slices"], record["by_series"]
    assert [p["sagittal_slices_per_series"] for p in slices] == [9, 15]
    assert [p["analysed_series"] for p in series] == [2, 3]
    assert all(p["median_s"] > 0 for p in slices + series)
    # A third series (axial, ~45 slices in tiles) is seconds more work, well above the noise.
    assert series[1]["median_s"] > series[0]["median_s"]
    assert (REPO / "bench" / "results" / "turnaround_scaling_short.png").stat().st_size > 5000
