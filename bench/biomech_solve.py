"""Benchmark: OpenSim solve time per study on this CPU, and the reference
subject's loads beside the published values (BIOMECH.md).

One study = build the subject model and run static optimisation + joint
reaction for every reported task (upright standing; 60° flexion with 5 kg
in each hand). Reference subject: male, 1.75 m, 79.6 kg, spine of the
analytic phantom seed 6 (sacral slope 35°, lordosis 42°).

    .venv/bin/python bench/biomech_solve.py            # 5 runs
    .venv/bin/python bench/biomech_solve.py --short    # CI: 1 run

Writes a JSON record to bench/results/ and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from spinegate.biomech.anthropometry import Subject  # noqa: E402
from spinegate.biomech.loads import GRAVITY, Task, solve_task  # noqa: E402
from spinegate.biomech.spine_geometry import JOINTS, spine_geometry  # noqa: E402
from spinegate.biomech.study import run_biomechanics  # noqa: E402
from spinegate.dicom_io.phantom import make_spine_phantom  # noqa: E402

REFERENCE = {
    "upright_standing": (817, 634, 578, 565, 573, 599),
    "flexion_60deg_5kg_each_hand": (2828, 2220, 2058, 2014, 1934, 1902),
}
ARJMAND = Task("flexion_65deg_180N_in_hands", 65.0, 180.0 / 2 / GRAVITY, "Arjmand & Shirazi-Adl 2006")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--short", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    runs = 1 if args.short else args.runs
    centroids = {e.name: e.centre_lps for e in make_spine_phantom(6).elements}
    subject = Subject(1.75, 79.6)
    times, result = [], None
    with tempfile.TemporaryDirectory() as d:
        for i in range(runs):
            t0 = time.perf_counter()
            result = run_biomechanics(centroids, subject, Path(d) / str(i))
            times.append(time.perf_counter() - t0)
        arjmand = solve_task(subject, spine_geometry(centroids), ARJMAND, Path(d) / "arjmand")
    assert result is not None
    loads = {t.task.name: [round(t.joints[j].compression_n) for j in JOINTS] for t in result.tasks}
    record = {"kind": "short" if args.short else "full", "runs": runs, "study_solve_s": times,
              "median_s": statistics.median(times), "per_task_s": {t.task.name: t.solve_s for t in result.tasks},
              "compression_n": loads, "arjmand_l5s1_n": round(arjmand.joints["L5S1"].compression_n),
              "machine": platform.machine(), "python": platform.python_version()}
    out = REPO / "bench" / "results" / f"biomech_{record['kind']}_{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"| solve per study (2 tasks), median (min–max) s | {statistics.median(times):.2f} "
          f"({min(times):.2f}–{max(times):.2f}) | runs {runs} |")
    print("\n| task | " + " | ".join(JOINTS) + " |\n|---|" + "---|" * len(JOINTS))
    for name, ref in REFERENCE.items():
        ours = loads[name]
        cells = [f"{o} / {r} ({(o / r - 1) * 100:+.0f} %)" for o, r in zip(ours, ref)]
        print(f"| {name}: ours / reference | " + " | ".join(cells) + " |")
    print(f"\nL5S1 at 65° flexion with 180 N in the hands: {record['arjmand_l5s1_n']} N (Arjmand: 3300–3900 N)")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
