"""``network.receiver_processes: 2``: two processes listen on the SCP port
(SO_REUSEPORT); a study sent over four parallel associations is stored
whole, assembled and processed once, the receivers' counters reach the main
process's /metrics, and the receivers go away with the main process."""
from __future__ import annotations

import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from peers import Spinegate, StoreSCP, storescu
from spinegate.service.store import StateStore

pytestmark = pytest.mark.integration


def _listeners(port: int) -> int:
    """Sockets in LISTEN state on 127.0.0.1:port (IPv4)."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1] == local and line.split()[3] == "0A")


def _metric(http_port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def _settled(http_port: int) -> bool:
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10).read().decode()
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return float(values["spinegate_queue_depth"]) == 0 and float(values['spinegate_studies{state="processing"}']) == 0


def test_two_receiver_processes_share_the_port_and_process_a_study_once(tmp_path):
    pacs = StoreSCP.start(tmp_path / "pacs")
    sg = Spinegate.start(tmp_path / "sg", pacs.port, extra={"network": {"receiver_processes": 2}})
    try:
        deadline = time.time() + 60
        while _listeners(sg.port) < 2 and time.time() < deadline:
            time.sleep(0.2)
        assert _listeners(sg.port) == 2
        truth = write_phantom_study(tmp_path / "study", seed=2100, rows=192, columns=192, pixel_spacing_mm=1.6,
                                    study=StudyInfo(uid_seed="receivers-2100"))
        files = truth["files"]
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda k: storescu(files[k::4], sg.port), range(4)))
        objs = pacs.wait_for(truth["study_instance_uid"], n_seg=2)
        assert len(objs["SR"]) == 1 and len(objs["SEG"]) == 2
        store = StateStore(sg.root / "var" / "state.sqlite")
        try:
            assert len(store.instances(truth["study_instance_uid"])) == len(files)
        finally:
            store.close()
        assert _metric(sg.http_port, "spinegate_instances_received_total") == len(files)
        assert _metric(sg.http_port, "spinegate_associations_total") >= 4
        # Settled (no job pending or scheduled, none processing): no second
        # processing of the study can follow.
        deadline = time.time() + 60
        while not _settled(sg.http_port) and time.time() < deadline:
            time.sleep(0.2)
        assert _settled(sg.http_port)
        assert _metric(sg.http_port, "spinegate_studies_finished_total") == 1
        assert len(pacs.objects(truth["study_instance_uid"])["SR"]) == 1
    finally:
        sg.stop()
        pacs.stop()
    assert _listeners(sg.port) == 0
