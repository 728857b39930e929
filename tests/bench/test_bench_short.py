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
