"""mypy over the packages configured in pyproject.toml ([tool.mypy] files)."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.heavy(seconds=55)


def test_mypy_finds_no_type_errors():
    proc = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
