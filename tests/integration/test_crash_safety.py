"""Crash safety under load (`conformance.crash`): 20 phantom studies (the
sagittal T2 series alone; the bench sends T1 and T2)
streamed into a real `spinegate serve` that is killed with SIGKILL five
times — once each while receiving, assembling, segmenting, writing reports
and delivering (the PACS down at that moment) — and started again
(`bench/crash_soak.py`: 100 studies, 40 kills). Every
acknowledged study reaches the PACS exactly once: 0 lost, 0 duplicated."""
from __future__ import annotations

import json

import pytest

from conftest import require_tool
from conformance.crash import PHASES, run_crash_harness

pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=95)]

N_STUDIES = 20
N_KILLS = len(PHASES)


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(tmp_path):
    require_tool("storescp")
    report = run_crash_harness(tmp_path, N_STUDIES, N_KILLS, seed=24, kill_interval_s=(1.0, 4.0),
                               send_gap_s=(0.2, 1.2), series_per_study=1, timeout_s=600)
    (tmp_path / "crash_report.json").write_text(json.dumps(report.as_dict(), indent=1))
    assert report.studies == N_STUDIES and report.kills == N_KILLS
    assert report.lost == [] and report.duplicated == [], report.as_dict()
    assert report.orphans == 0
    # the kills were aimed at every step, and the aim was observed
    assert all(report.kill_phases[p] >= 1 for p in PHASES), json.dumps(report.as_dict())
