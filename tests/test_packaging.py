"""The wheel a user installs: one import package (spinegate), the runtime
models only, and `spinegate analyze` working from a clean virtual
environment outside the checkout."""
from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from conftest import REPO

# Builds a wheel and a virtual environment (pip, about a minute).
pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=65)]

# `make test` fills it while the network is up (the suite runs without one);
# elsewhere pip uses its index.
WHEELHOUSE = REPO / ".cache" / "wheelhouse"


def _pip_sources() -> list[str]:
    return ["--no-index", "--find-links", str(WHEELHOUSE)] if (WHEELHOUSE / ".ready").exists() else []


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *_pip_sources(), "-w", str(out),
                           str(REPO)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("spinegate-*.whl")
    return path


def test_wheel_holds_one_import_package_and_the_runtime_models(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"spinegate"}
    assert {"spinegate/service/cli.py", "spinegate/inference/engine.py", "spinegate/biomech/loads.py",
            "spinegate/dicom_io/seg.py", "spinegate/__init__.py"} <= set(names)
    models = {n.rsplit("/", 1)[1] for n in names if n.startswith("spinegate/inference/models/") and n.endswith(".onnx")}
    assert models == {"sagittal_spine.onnx", "axial_muscle.onnx", "axial_muscle.int8.onnx"}  # no fold models
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "spinegate = spinegate.service.cli:main" in entry


def test_spinegate_analyze_runs_from_a_clean_environment(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    install = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *_pip_sources(), str(wheel)],
                             capture_output=True, text=True, timeout=1200)
    assert install.returncode == 0, install.stderr[-3000:]
    work = tmp_path / "work"  # outside the checkout: nothing of it is importable from here
    work.mkdir()
    exe = str(venv / "bin" / "spinegate")
    subprocess.run([exe, "phantom", "study", "--seed", "3"], cwd=work, check=True, capture_output=True, timeout=300)
    proc = subprocess.run([exe, "--log-level", "WARNING", "analyze", "study", "--out", "results"], cwd=work,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (work / "results" / "sr.dcm").exists() and len(list((work / "results").glob("seg_*.dcm"))) == 2
    assert "solver_failed" not in proc.stderr and "L5-S1" in proc.stdout
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import spinegate; print(spinegate.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True)
    assert str(venv) in where.stdout
