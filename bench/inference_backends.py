"""Inference per slice and per series for each engine and backend, with the
peak memory of the process.

    .venv/bin/python bench/inference_backends.py            # full: 5 runs
    .venv/bin/python bench/inference_backends.py --short    # CI: small inputs, 1 run

Each (engine, backend) runs in a fresh process so its peak resident memory
(ru_maxrss) is its own: model load plus one series. Series: sagittal
15 × 512² at 0.5 mm (a clinical T2) and axial 40 × 256² at 0.8 mm (the
issue 6 standard study); the short mode uses 6 × 192² / 8 × 160². Times
cover pre-processing, the network and resampling back (`engine.scores`).
The axial engine also runs its INT8 model (`inference.training.quantize`, the
service's CPU default) on ONNX Runtime. ``--gpu`` adds ONNX Runtime's CUDA
provider and PyTorch CUDA (FP16, CUDA graphs) where they run, in the same
run as the CPU rows, and names the card; a GPU backend that cannot run here
is listed as skipped with its reason.
Writes bench/results/inference_backends.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ENGINES = ("sagittal_spine", "axial_muscle")
BACKENDS = {"sagittal_spine": ("onnxruntime", "torch"), "axial_muscle": ("onnxruntime-int8", "onnxruntime", "torch")}


def _series(engine: str, short: bool) -> tuple[np.ndarray, np.ndarray]:
    from spinegate.dicom_io.classify import Weighting
    from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid

    if engine == "sagittal_spine":
        n, size, ps = (6, 192, 1.3) if short else (15, 512, 0.5)
        grid = sagittal_grid(n, size, size, ps, 4.0)
        image, _ = render_phantom(make_spine_phantom(3), grid, Weighting.T2, subplanes=1)
        return image.astype(np.float32), grid.affine
    from spinegate.dicom_io.phantom.paraspinal import axial_grid, make_paraspinal_anatomy, muscle_field

    n, size = (8, 160) if short else (40, 256)
    ph = make_spine_phantom(3)
    z_top = ph.element("L1").centre_lps[2]
    field = muscle_field(ph, make_paraspinal_anatomy(3))
    grid = axial_grid(z_top, z_top - 4.0 * (n - 1), 4.0, size, size, 0.8, centre_xy_mm=(0.0, field.view_centre_y_mm()))
    image, _ = render_phantom(ph, grid, Weighting.T2, subplanes=1, muscles=field)
    return image.astype(np.float32), grid.affine


def measure_one(engine: str, backend: str, runs: int, short: bool) -> dict:
    """In this process: load, one warm-up, ``runs`` timed series."""
    from spinegate.dicom_io.volume import SeriesVolume
    from spinegate.service.engines import model_stem

    image, affine = _series(engine, short)
    volume = SeriesVolume.from_array(image, affine, 4.0)
    model_dir = REPO / "inference" / "models"
    t0 = time.perf_counter()
    if engine == "sagittal_spine":
        from spinegate.inference.engine import SagittalSpineEngine

        eng = SagittalSpineEngine(model_dir, threads=2, backend=backend)
    else:
        from spinegate.inference.axial_engine import AxialMuscleEngine

        precision = "int8" if backend == "onnxruntime-int8" else "fp32"
        eng = AxialMuscleEngine(model_dir, threads=2, backend=backend.removesuffix("-int8"),
                                model_name=model_stem(engine, precision))
    load_s = time.perf_counter() - t0
    eng.scores(volume)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        eng.scores(volume)
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    return {"engine": engine, "model": eng.info.name,
            "backend": eng.backend.name + ("-int8" if backend.endswith("-int8") else ""),
            "series_shape": list(image.shape), "load_s": round(load_s, 3), "runs": runs,
            "per_series_s": {"median": round(median, 3), "min": round(min(times), 3), "max": round(max(times), 3)},
            "per_slice_ms": round(1000 * median / image.shape[0], 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _gpu_name() -> str | None:
    """The CUDA card's name (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gpu", action="store_true", help="also the CUDA backends (onnxruntime-cuda, torch-cuda)")
    ap.add_argument("--one", nargs=2, metavar=("ENGINE", "BACKEND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    runs = 1 if args.short else args.runs
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], runs, args.short)))
        return 0
    results, skipped = [], []
    gpu = ("onnxruntime-cuda", "torch-cuda") if args.gpu else ()
    for engine in ENGINES:
        for backend in BACKENDS[engine] + gpu:
            cmd = [sys.executable, __file__, "--one", engine, backend, "--runs", str(runs)]
            proc = subprocess.run(cmd + (["--short"] if args.short else []), capture_output=True, text=True, timeout=1200,
                                  cwd=REPO)
            if proc.returncode != 0 and backend in gpu and "BackendUnavailable" in proc.stderr:
                skipped.append({"engine": engine, "backend": backend, "reason": proc.stderr.strip().splitlines()[-1]})
                continue
            if proc.returncode != 0:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    record = {"mode": "short" if args.short else "full", "machine": f"{platform.machine()} {platform.processor()}",
              "cpus": __import__("os").cpu_count(), "gpu": _gpu_name() if args.gpu else None,
              "date": time.strftime("%Y-%m-%d"), "results": results, "skipped": skipped}
    out = REPO / "bench" / "results" / "inference_backends.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print("| engine | backend | series | per slice, ms | per series, s (min–max) | peak RSS, MB | load, s |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        s = r["per_series_s"]
        print(f"| {r['engine']} | {r['backend']} | {'×'.join(map(str, r['series_shape']))} | {r['per_slice_ms']} | "
              f"{s['median']} ({s['min']}–{s['max']}) | {r['peak_rss_mb']} | {r['load_s']} |")
    for r in skipped:
        print(f"skipped {r['engine']} {r['backend']}: {r['reason']}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
