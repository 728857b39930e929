"""Every accepted transfer syntax: received by the SCP, stored as received,
and decodable by the pipeline's series reader (lossless ones bit-exact)."""
from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from conftest import require_tool
from dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from dicom_io.uids import ACCEPTED_TRANSFER_SYNTAXES
from dicom_io.volume import read_series
from service.config import load_config
from service.demo import free_port
from service.scp import Receiver, start_scp
from service.store import StateStore

DCMTK = {
    JPEGBaseline8Bit: ("dcmcjpeg", "+eb"),
    JPEGLosslessSV1: ("dcmcjpeg", "+e1"),
    JPEGLSLossless: ("dcmcjpls", "+el"),
    JPEGLSNearLossless: ("dcmcjpls", "+en"),
}
LOSSY = {JPEGBaseline8Bit, JPEGLSNearLossless, JPEG2000}

pytestmark = pytest.mark.integration  # dcmtk codecs produce the compressed input


def _encode(path, ts, tmp_path):
    out = tmp_path / f"{path.stem}_{ts}.dcm"
    if ts in DCMTK:
        tool, option = DCMTK[ts]
        subprocess.run([require_tool(tool), option, str(path), str(out)], check=True, capture_output=True, timeout=60)
        return pydicom.dcmread(out)
    ds = pydicom.dcmread(path)
    if ts in (RLELossless, JPEG2000Lossless):
        ds.compress(ts)
    elif ts == JPEG2000:
        ds.compress(ts, j2k_cr=[4])
    elif ts == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ts
    elif ts == DeflatedExplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ts
    ds.save_as(out, enforce_file_format=True)
    return pydicom.dcmread(out)


@pytest.mark.parametrize("ts", ACCEPTED_TRANSFER_SYNTAXES, ids=lambda u: u.name)
def test_transfer_syntax_round_trip(tmp_path, ts):
    grid = sagittal_grid(4, 64, 64, 4.0, 4.0)
    image, _ = render_phantom(make_spine_phantom(9), grid, "T2", subplanes=1, max_value=4000)
    if ts == JPEGBaseline8Bit:
        image = (image // 16).astype(np.uint16)  # 8-bit data for baseline JPEG
    files = write_mr_series(image, grid.affine, StudyInfo(f"ts-{ts}"), SeriesSpec(2, "SAG T2", 3500, 100, 4.0),
                            tmp_path / "src")
    if ts == JPEGBaseline8Bit:
        for f in files:
            ds = pydicom.dcmread(f)
            pixels8 = ds.pixel_array.astype(np.uint8)
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
            ds.PixelData = pixels8.tobytes()
            ds.save_as(f)
    encoded = [_encode(f, ts, tmp_path) for f in files]
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
