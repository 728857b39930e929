"""Shared fixtures: phantom studies, peers, and the shared-data location."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_DIR = REPO / "inference" / "models"


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"'{name}' is not installed: run the README test command (it installs dcmtk and dicom3tools)")
    return path


def require_shared_data(sub: str = "lumbar_mri") -> Path:
    folder = SHARED_DATA / sub
    if not folder.exists():
        pytest.skip(f"{folder} is absent: shared development data is only present beside the repository in CI/dev")
    return folder


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sagittal T1+T2 phantom study (15 slices, 256x256 at 1.2 mm) with truth."""
    from dicom_io.phantom_study import write_phantom_study

    out = tmp_path_factory.mktemp("phantom_study")
    return write_phantom_study(out, seed=1001, rows=256, columns=256, pixel_spacing_mm=1.2)


@pytest.fixture(scope="session")
def engine():
    from inference.engine import SagittalSpineEngine

    return SagittalSpineEngine(MODEL_DIR)


@pytest.fixture(scope="session")
def engines():
    from service.engines import Engines

    return Engines(MODEL_DIR)


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines dciodvfy reports for ``path`` (warnings are not errors)."""
    import subprocess

    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
