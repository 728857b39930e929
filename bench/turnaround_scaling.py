"""Benchmark: how a study's processing time grows with slices and series.

Processing = `service.pipeline.analyze_study` on the study's files with the
engines already loaded (what a running service does after the quiet
period): reading, both engines, measurements, biomechanics, SEG and SR
writing. It is the turnaround of `bench/turnaround.py` without the network
transfer and the quiet period (93 % of it on the standard study). Two
sweeps on phantom studies:

- slices: sagittal T1 + T2 with 9, 15 and 21 slices each (512²);
- series: sagittal T2; + sagittal T1; + axial T2 (L1-S1, 4 mm, 256²);
  + axial T1.

    .venv/bin/python bench/turnaround_scaling.py           # full, 2 runs per point
    .venv/bin/python bench/turnaround_scaling.py --short   # CI: 192² / 160², 1 run, 2 points per sweep

Writes a JSON record to bench/results/ and a plot (PNG, matplotlib):
bench/turnaround_scaling.png in full mode (shown in bench/README.md),
bench/results/turnaround_scaling_short.png in short mode.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spinegate.dicom_io.mr_writer import StudyInfo  # noqa: E402
from spinegate.dicom_io.phantom.study import write_axial_phantom_study, write_phantom_study  # noqa: E402
from spinegate.service.config import load_config  # noqa: E402
from spinegate.service.biomech_stage import BiomechSolver  # noqa: E402
from spinegate.service.engines import Engines  # noqa: E402
from spinegate.service.pipeline import analyze_study  # noqa: E402

MODEL_DIR = REPO / "inference" / "models"
# Series numbers written by dicom_io.phantom.study.
SAG_T1, SAG_T2, AX_T1, AX_T2 = 2, 3, 4, 5
SERIES_STEPS = (("sag T2", {SAG_T2}), ("+ sag T1", {SAG_T1, SAG_T2}), ("+ ax T2", {SAG_T1, SAG_T2, AX_T2}),
                ("+ ax T1", {SAG_T1, SAG_T2, AX_T2, AX_T1}))


def _series_number(path: Path) -> int:
    return int(path.name.split("_", 1)[0])


def _time(files: list[Path], engines: Engines, solver: BiomechSolver, runs: int, work: Path) -> dict[str, object]:
    rules = load_config(environ={}).routing
    times, analysed = [], 0
    for run in range(runs):
        out = work / f"out{run}"
        t0 = time.perf_counter()
        result = analyze_study(files, engines, rules, out, biomech_solver=solver)
        times.append(time.perf_counter() - t0)
        analysed = sum(bool(o.timings_s) for o in result.series)
        shutil.rmtree(out)
    return {"instances": len(files), "analysed_series": analysed, "runs_s": [round(t, 2) for t in times],
            "median_s": round(statistics.median(times), 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true", help="small inputs, one run, two points per sweep (CI)")
    args = ap.parse_args()
    size, axial_size, runs = (192, 160, 1) if args.short else (512, 256, 2)
    slice_counts = (9, 15) if args.short else (9, 15, 21)
    series_steps = SERIES_STEPS[1:3] if args.short else SERIES_STEPS
    engines = Engines(MODEL_DIR)
    solver = BiomechSolver()  # as in the service: a process of its own, started before the first study
    solver.start()
    work = Path(tempfile.mkdtemp(prefix="spinegate-scaling-"))
    record: dict[str, object] = {"mode": "short" if args.short else "full",
                                 "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
                                 "what": "analyze_study with loaded engines (no network, no quiet period)"}
    try:
        by_slices = []
        for n in slice_counts:
            study = write_phantom_study(work / f"sag{n}", seed=400 + n, rows=size, columns=size,
                                        pixel_spacing_mm=300.0 / size, n_slices=n,
                                        study=StudyInfo(uid_seed=f"scale-{n}"))
            by_slices.append({"sagittal_slices_per_series": n, **_time(study["files"], engines, solver, runs, work)})
            print(json.dumps(by_slices[-1]), flush=True)
        study = write_axial_phantom_study(work / "series", seed=450, rows=axial_size, columns=axial_size,
                                          pixel_spacing_mm=205.0 / axial_size,
                                          axial_weightings=("T2",) if args.short else ("T1", "T2"),
                                          sagittal_size=(size, 300.0 / size), study=StudyInfo(uid_seed="scale-series"))
        by_series = []
        for label, numbers in series_steps:
            files = [p for p in study["files"] if _series_number(p) in numbers]
            by_series.append({"series": label, **_time(files, engines, solver, runs, work)})
            print(json.dumps(by_series[-1]), flush=True)
    finally:
        solver.close()
        shutil.rmtree(work, ignore_errors=True)
    record.update(by_sagittal_slices=by_slices, by_series=by_series)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = out / f"turnaround_scaling_{record['mode']}_{stamp}.json"
    path.write_text(json.dumps(record, indent=1))
    # The full-mode plot is the one bench/README.md shows (kept in the repository).
    _plot(record, REPO / "bench" / "turnaround_scaling.png" if not args.short else out / "turnaround_scaling_short.png")
    print(f"wrote {path}")
    return 0


def _plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.2), constrained_layout=True)
    xs = [p["instances"] for p in record["by_sagittal_slices"]]
    a.plot(xs, [p["median_s"] for p in record["by_sagittal_slices"]], "o-")
    a.set(xlabel="instances (sagittal T1 + T2)", ylabel="processing time, s", title="more slices", ylim=(0, None))
    xs = [p["instances"] for p in record["by_series"]]
    b.plot(xs, [p["median_s"] for p in record["by_series"]], "o-")
    for p in record["by_series"]:
        b.annotate(p["series"], (p["instances"], p["median_s"]), textcoords="offset points", xytext=(4, -10),
                   fontsize=8)
    b.set(xlabel="instances in the study", title="more series", ylim=(0, None))
    b.margins(x=0.2)
    fig.suptitle(f"spinegate processing time ({record['machine']}, {record['mode']})", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
