"""Back-pressure on a really small volume (a 3 MiB tmpfs): below
`storage.min_free_bytes` every C-STORE is answered 0xA700 and nothing is
written; what was stored stays whole; with room again the re-sent
instances are stored."""
from __future__ import annotations

import logging
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid
from spinegate.service.config import load_config
from spinegate.service.demo import free_port
from spinegate.service.metrics import Metrics
from spinegate.service.scp import Receiver, Status, start_scp
from spinegate.service.store import StateStore

VOLUME_BYTES = 3 * 1024 * 1024
MIN_FREE_BYTES = 1024 * 1024


@pytest.fixture
def small_volume(tmp_path):
    mount_point = tmp_path / "volume"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={VOLUME_BYTES}", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_volume_answers_out_of_resources_and_loses_nothing(small_volume, tmp_path, caplog):
    grid = sagittal_grid(24, 256, 256, 1.0, 4.0)
    pixels = np.random.default_rng(0).integers(0, 4000, (24, 256, 256), dtype=np.uint16)  # ~128 KiB each
    paths = write_mr_series(pixels, grid.affine, StudyInfo("backpressure"), SeriesSpec(2, "SAG T2", 3500, 100, 4.0),
                            tmp_path / "in")
    instances = [pydicom.dcmread(p) for p in paths]
    # Leave ~2.5 MiB of the volume to the spool, 1 MiB of it reserved: room for about ten instances.
    ballast = small_volume / "ballast"
    ballast.write_bytes(b"\0" * (VOLUME_BYTES // 6))
    cfg = load_config(overrides={"network": {"port": free_port()},
                                 "storage": {"root": small_volume / "var", "min_free_bytes": MIN_FREE_BYTES}},
                      environ={})
    store, metrics = StateStore(tmp_path / "state.sqlite"), Metrics()
    server = start_scp(cfg, Receiver(cfg, store, lambda uid: None, metrics))
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage, instances[0].file_meta.TransferSyntaxUID)
        with caplog.at_level(logging.WARNING, logger="spinegate.service.scp"):
            assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title="SPINEGATE")
            statuses = [assoc.send_c_store(ds).Status for ds in instances]
            assoc.release()
        stored = [ds for ds, s in zip(instances, statuses) if s == Status.SUCCESS]
        refused = [ds for ds, s in zip(instances, statuses) if s == Status.OUT_OF_RESOURCES]
        assert len(stored) >= 5 and len(refused) >= 5 and len(stored) + len(refused) == len(instances), statuses
        assert statuses == sorted(statuses)  # once full, every later instance is refused
        assert sum("below storage.min_free_bytes" in r.message for r in caplog.records) == 1  # logged once
        assert metrics.registry.get_sample_value(
            "spinegate_instances_received_total",
            {"sop_class": MRImageStorage, "transfer_syntax": str(instances[0].file_meta.TransferSyntaxUID),
             "status": "out_of_resources"}) == len(refused)
        # What was acknowledged is whole; nothing partial, nothing refused, was written.
        spool_files = sorted(cfg.storage.spool.rglob("*"))
        assert not [p for p in spool_files if p.name.endswith(".tmp")]
        on_disk = {pydicom.dcmread(p).SOPInstanceUID for p in spool_files if p.suffix == ".dcm"}
        assert on_disk == {ds.SOPInstanceUID for ds in stored}
        assert not (cfg.storage.quarantine).exists() or not list(cfg.storage.quarantine.iterdir())
        assert shutil.disk_usage(small_volume).free >= MIN_FREE_BYTES  # the reserve was kept
        # Room again: the sender's retries are stored.
        ballast.unlink()
        with caplog.at_level(logging.WARNING, logger="spinegate.service.scp"):
            assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title="SPINEGATE")
            assert [assoc.send_c_store(ds).Status for ds in refused[:3]] == [Status.SUCCESS] * 3
            assoc.release()
        assert any("room again" in r.message for r in caplog.records)
    finally:
        server.shutdown()
        store.close()
