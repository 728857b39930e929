"""The ingest benchmark's floor receiver stores what it acknowledges, durably
named by SOP Instance UID, and with ``--index`` records it in spinegate's index."""
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid
from spinegate.dicom_io.send import send_files
from spinegate.service.demo import free_port, stop_process, wait_for_echo

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("steps", [[], ["--check", "--index"]])
def test_the_floor_stores_every_acknowledged_instance(tmp_path, steps):
    grid = sagittal_grid(3, 64, 64, 1.0, 4.0)
    files = write_mr_series(np.full((3, 64, 64), 100, np.uint16), grid.affine, StudyInfo(uid_seed="floor"),
                            SeriesSpec(2, "SAG T2", 3500, 100, 4.0), tmp_path / "in")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "bench" / "pynetdicom_floor.py"), "--port", str(port),
                             "--folder", str(tmp_path / "spool"), *steps], cwd=REPO)
    try:
        wait_for_echo("127.0.0.1", port, "PACS", 60, proc)
        confirmed = send_files(files, "PACS", "127.0.0.1", port)
    finally:
        stop_process(proc, timeout_s=30)
    assert len(confirmed) == 3
    assert {p.stem for p in (tmp_path / "spool").glob("*.dcm")} == set(confirmed)
    indexes = list((tmp_path / "spool").glob("index-*.db"))
    if steps:
        (db,) = indexes
        rows = sqlite3.connect(db).execute("SELECT sop_instance_uid FROM instances").fetchall()
        assert {r[0] for r in rows} == set(confirmed)
    else:
        assert indexes == []
