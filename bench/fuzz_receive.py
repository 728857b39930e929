"""Soak: malformed and adversarial instances (`conformance.fuzz`) sent over
the network to a real `spinegate serve`.

Every case must get a failure status (and be quarantined with its reason),
or be stored whole; the server must never answer 0xC211 (its handler
failing), never drop the association, keep answering C-ECHO, and keep its
resident memory bounded. Besides the drawn cases, files broken with dcmtk's
tools (`conformance.fuzz.DCMTK_MANGLINGS`). Prints per kind of damage the statuses seen, and
the server's RSS at start and end.

    .venv/bin/python bench/fuzz_receive.py --cases 1500 --dcmtk-rounds 10 --seed 1   # + 200 dcmtk-mangled files
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from conformance.fuzz import DCMTK_MANGLINGS, KINDS, RawSender, dcmtk_mangled, random_mutation, resident_mb  # noqa: E402
from conformance.pacs import echoscu  # noqa: E402
from spinegate.service.demo import free_port, stop_process, wait_for_echo  # noqa: E402

ALLOWED = {0x0000: "stored", 0xA700: "out of resources", 0xA900: "refused 0xA900", 0xC000: "refused 0xC000"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dcmtk-rounds", type=int, default=10, help="rounds of the dcmtk manglings (20 files each)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="spinegate-fuzz-"))
    port = free_port()
    cfg = {"network": {"port": port}, "http": {"enabled": False}, "storage": {"root": str(work / "var")},
           "assembly": {"quiet_period_s": 3600}}
    (work / "spinegate.yaml").write_text(yaml.safe_dump(cfg))
    log = open(work / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config", str(work / "spinegate.yaml"),
                             "serve"], cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    outcomes: dict[str, collections.Counter] = {k: collections.Counter() for k in KINDS}
    outcomes.update({f"dcmtk:{m[0]}": collections.Counter() for m in DCMTK_MANGLINGS})
    bad: list[str] = []
    try:
        wait_for_echo("127.0.0.1", port, "SPINEGATE", 120, proc)
        rss_start = resident_mb(proc.pid)
        sender, rng, t0 = RawSender(port), random.Random(args.seed), time.time()
        cases = [random_mutation(rng, i) for i in range(args.cases)]
        for r in range(args.dcmtk_rounds):  # each round: every dcmtk mangling once, with fresh UIDs
            cases += dcmtk_mangled(work / "mangled" / str(r), index=10**6 * (r + 1))
        for m in cases:
            status = sender.send(m)
            outcomes[m.kind][ALLOWED.get(status, f"UNEXPECTED {status}")] += 1
            if status not in ALLOWED:
                bad.append(f"{m.kind} ({m.detail}): {status}")
        seconds = time.time() - t0
        sender.close()
        alive = proc.poll() is None and echoscu("127.0.0.1", port, "SPINEGATE").returncode == 0
        rss_end = resident_mb(proc.pid)
    finally:
        stop_process(proc)
    print(f"| kind | cases | {' | '.join(ALLOWED.values())} | other |")
    print("|---|---|" + "---|" * (len(ALLOWED) + 1))
    for kind, counts in outcomes.items():
        other = sum(n for k, n in counts.items() if k.startswith("UNEXPECTED"))
        print(f"| {kind} | {sum(counts.values())} | " + " | ".join(str(counts[v]) for v in ALLOWED.values()) +
              f" | {other} |")
    summary = {"cases": len(cases), "seed": args.seed, "seconds": round(seconds, 1), "server_alive_after": alive,
               "rss_mb_start": round(rss_start, 1), "rss_mb_end": round(rss_end, 1), "unexpected": bad[:20]}
    print(json.dumps(summary, indent=1))
    return 0 if alive and not bad else 1


if __name__ == "__main__":
    raise SystemExit(main())
