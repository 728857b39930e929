"""Soak: phantom studies streamed into a real `spinegate serve` that is
killed with SIGKILL at random moments — aimed in turn at receive, assembly,
segmentation, report writing and delivery (the PACS down then) — and
started again (`conformance.crash`). Prints the report as JSON: studies
acknowledged, kills by phase, sends repeated, studies lost and duplicated
at the PACS, orphaned child processes.

    .venv/bin/python bench/crash_soak.py --studies 100 --kills 40 --seed 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conformance.crash import run_crash_harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=100)
    ap.add_argument("--kills", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-biomechanics", action="store_true", help="skip the loads (faster studies)")
    ap.add_argument("--work-dir", type=Path, help="keep the studies, logs and PACS here (default: a temporary folder)")
    args = ap.parse_args()
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="spinegate-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    report = run_crash_harness(work, args.studies, args.kills, seed=args.seed,
                               biomechanics=not args.no_biomechanics, timeout_s=3600)
    print(json.dumps({**report.as_dict(), "lost_uids": report.lost, "duplicated_uids": report.duplicated}, indent=1))
    return 0 if not report.lost and not report.duplicated and not report.orphans else 1


if __name__ == "__main__":
    raise SystemExit(main())
