"""No patient identifier in anything spinegate logs or exports as metrics.

Runs after the suite (marker ``session_audit``): it reads every log line
spinegate's code wrote in the test processes, and the logs and final
``/metrics`` of every `spinegate serve` and `spinegate worker` process the
integration tests started, and fails on any patient name, ID or birth date
the test studies carry. In one pytest process it runs last and reads that
process's lines; ``make test`` runs the suite in pytest-xdist workers and
then this audit alone, over the workers' temporary files
(``SPINEGATE_AUDIT_DIR``: the suite's ``--basetemp``), where each worker
left its lines (``session.log``).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from conformance.cases import NAMES as CONFORMANCE_NAMES
from conftest import AUDITED_FILES, SessionLogRecords, prune_to_audited_files
from spinegate.dicom_io.mr_writer import StudyInfo

_DEFAULT = StudyInfo("audit")
# Every identifier the suite's studies carry: the phantom's defaults, the
# conformance suite's names, and the names and IDs individual tests write
# (tests/service/test_http_api.py, tests/dicom_io/test_charset.py).
_NAMES = (_DEFAULT.patient_name, *(name for _, _, name in CONFORMANCE_NAMES), "Doe^Jane", "Müller^Jürgen",
          "Παπαδόπουλος^Γιώργος", "SMITH^JOHN")
PATIENT_IDENTIFIERS = (*_NAMES, *(n.replace("^", " ") for n in _NAMES), _DEFAULT.patient_id, "PID-4711",
                       _DEFAULT.patient_birth_date)
MIN_LINES = 500  # fewer: the suite did not run (this test alone)


def find_identifiers(lines: list[str]) -> list[str]:
    """The lines holding a patient identifier (digits only as a whole number)."""
    patterns = [re.compile(rf"(?<!\d){re.escape(v)}(?!\d)" if v.isdigit() else re.escape(v))
                for v in PATIENT_IDENTIFIERS]
    return [line for line in lines if any(p.search(line) for p in patterns)]


def test_the_audit_finds_each_kind_of_identifier():
    planted = [f"refused instance peer=X: bad value '{_DEFAULT.patient_name}'", f"id={_DEFAULT.patient_id}",
               f"born {_DEFAULT.patient_birth_date}", "uid=1.2.3.4119610704555 is not a birth date"]
    assert find_identifiers(planted) == planted[:3]


def test_a_passed_tests_files_are_pruned_to_what_the_audit_reads(tmp_path):
    kept = [tmp_path / "sg" / "var" / "serve.log", tmp_path / "w" / "worker2.metrics.prom"]
    dropped = [tmp_path / "sg" / "var" / "state.sqlite", tmp_path / "venv" / "lib" / "x.so", tmp_path / "a.dcm"]
    for path in kept + dropped:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "venv", target_is_directory=True)
    prune_to_audited_files(tmp_path)
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == sorted(kept)
    assert not (tmp_path / "venv").exists() and not (tmp_path / "link").exists()


@pytest.mark.session_audit
def test_no_log_line_or_metric_of_the_run_carries_a_patient_identifier(tmp_path_factory):
    audit_dir = os.environ.get("SPINEGATE_AUDIT_DIR")
    if audit_dir and not Path(audit_dir).is_dir():
        pytest.fail(f"SPINEGATE_AUDIT_DIR={audit_dir} is not a folder: the suite's --basetemp was expected")
    base = Path(audit_dir) if audit_dir else Path(tmp_path_factory.getbasetemp())
    files = sorted(p for p in base.rglob("*") if AUDITED_FILES.match(p.name) and p.is_file())
    lines = [] if audit_dir else list(SessionLogRecords.lines)
    for path in files:
        lines += path.read_text(errors="replace").splitlines()
    if len(lines) < MIN_LINES:
        pytest.skip(f"only {len(lines)} log and metric lines: run the whole suite ('make test') for this audit")
    hits = find_identifiers(lines)
    assert hits == [], f"{len(hits)} of {len(lines)} lines ({len(files)} files) carry identifiers: {hits[:5]}"
