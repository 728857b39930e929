"""The README's run command: `spinegate demo` end to end."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=60)]


def test_demo_prints_measurements_beside_truth(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "spinegate.service.cli", "--log-level", "WARNING", "demo", "--work-dir",
                           str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "received SR" in out and out.count("received SEG") == 4  # sagittal T1, T2; axial T1, T2
    rows = [line for line in out.splitlines() if "intervertebral disc" in line]
    assert any("L4-L5" in r for r in rows) and any("L5-S1" in r for r in rows)
    for row in rows:
        if any(level in row for level in ("L1-L2", "L2-L3", "L3-L4", "L4-L5", "L5-S1")):
            height, truth = (float(v) for v in row.split()[-4:-2])
            assert abs(height - truth) <= 3.0, row
    muscles = [line.split() for line in out.splitlines() if line.startswith(("Right ", "Left "))]
    assert len(muscles) >= 35  # 8 muscles x 5 levels, QL absent at L5S1
    for row in muscles:
        csa, truth = float(row[-4]), float(row[-3])
        if truth >= 2.0:  # accuracy itself: tests/service/test_axial_pipeline.py
            assert abs(csa - truth) <= 0.25 * truth, row
    # The spinal loads of the demo subject follow the measurements; its
    # adult-sized muscles carry the flexion pose.
    assert "spinal loads" in out and "60 deg trunk flexion holding 5 kg in each hand" in out
    assert "INFEASIBLE" not in out
    l5s1 = [line.split() for line in out.splitlines() if line.strip().startswith("L5S1")]
    assert len(l5s1) == 2 and 2000 < float(l5s1[1][1]) < 4500  # flexion L5S1 compression, N
