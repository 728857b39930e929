"""Every accepted transfer syntax: received by the SCP, stored as received,
and decodable by the pipeline's series reader (lossless ones bit-exact)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEGBaseline8Bit
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from conformance.encode import LOSSY, encode, to_8bit
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.uids import ACCEPTED_TRANSFER_SYNTAXES
from spinegate.dicom_io.volume import read_series
from spinegate.service.config import load_config
from spinegate.service.demo import free_port
from spinegate.service.scp import Receiver, start_scp
from spinegate.service.store import StateStore

pytestmark = pytest.mark.integration  # dcmtk codecs produce the compressed input


@pytest.mark.parametrize("ts", ACCEPTED_TRANSFER_SYNTAXES, ids=lambda u: u.name)
def test_transfer_syntax_round_trip(tmp_path, ts):
    grid = sagittal_grid(4, 64, 64, 4.0, 4.0)
    image, _ = render_phantom(make_spine_phantom(9), grid, "T2", subplanes=1, max_value=4000)
    if ts == JPEGBaseline8Bit:
        image = (image // 16).astype(np.uint16)  # 8-bit data for baseline JPEG (max 250)
    files = write_mr_series(image, grid.affine, StudyInfo(f"ts-{ts}"), SeriesSpec(2, "SAG T2", 3500, 100, 4.0),
                            tmp_path / "src")
    if ts == JPEGBaseline8Bit:
        for f in files:
            to_8bit(f)
    encoded = [pydicom.dcmread(encode(f, ts, tmp_path / f"{f.stem}_{ts}.dcm")) for f in files]
    assert all(e.file_meta.TransferSyntaxUID == ts for e in encoded)

    port = free_port()
    cfg = load_config(overrides={"network": {"port": port}, "storage": {"root": tmp_path / "var"}}, environ={})
    store = StateStore(cfg.storage.state_db)
    server = start_scp(cfg, Receiver(cfg, store, lambda uid: None))
    try:
        ae = AE(ae_title="TSSCU")
        ae.add_requested_context(MRImageStorage, [ts])
        assoc = ae.associate("127.0.0.1", port, ae_title=cfg.network.ae_title)
        assert assoc.is_established and assoc.accepted_contexts[0].transfer_syntax[0] == ts
        for ds in encoded:
            assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
    finally:
        server.shutdown()
    stored = [pydicom.dcmread(r.path) for r in store.instances(encoded[0].StudyInstanceUID)]
    store.close()
    assert {s.file_meta.TransferSyntaxUID for s in stored} == {ts}  # kept as received
    volume = read_series(stored)
    expected = image[::-1].astype(np.float32)
    if ts in LOSSY:
        assert np.abs(volume.array - expected).mean() < 0.05 * expected.mean()
    else:
        assert np.array_equal(volume.array, expected)
