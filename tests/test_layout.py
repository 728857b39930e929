"""The layout the product card fixes: the service never imports the
training code (or torch), and only dicom_io handles DICOM datasets."""
from __future__ import annotations

import ast
import subprocess
import sys

from conftest import REPO

RUNTIME_ENTRY_POINTS = ["spinegate.service.cli", "spinegate.service.app", "spinegate.service.worker",
                        "spinegate.service.pipeline", "spinegate.service.demo", "spinegate.service.receivers"]
DICOM_LIBRARIES = {"pydicom", "highdicom"}


def test_the_service_imports_neither_training_code_nor_torch():
    code = ("import sys\n" + "".join(f"import {m}\n" for m in RUNTIME_ENTRY_POINTS) +
            "print(sorted(m for m in sys.modules if m.startswith(('spinegate.inference.training', 'torch'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def _imported_modules(path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.add(node.module)
    return modules


def test_only_dicom_io_imports_pydicom_and_highdicom():
    offenders = [str(p.relative_to(REPO)) for folder in ("service", "inference", "biomech")
                 for p in sorted((REPO / folder).rglob("*.py"))
                 if {m.split(".")[0] for m in _imported_modules(p)} & DICOM_LIBRARIES]
    assert offenders == []


def test_the_runtime_inference_modules_import_no_training_module():
    offenders = [str(p.relative_to(REPO)) for p in sorted((REPO / "inference").glob("*.py"))
                 if any(m.startswith("spinegate.inference.training") for m in _imported_modules(p))]
    # The PyTorch reference backend (parity tests) loads the network on demand.
    assert offenders == ["inference/backends.py"]
