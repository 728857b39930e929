"""The SCP with a real pynetdicom SCU: echo, store, duplicates, bad inputs.

Every refused instance gets a failure status, is quarantined with its reason,
and the SCP keeps serving the next request.
"""
import copy
import json

import numpy as np
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid
from spinegate.service.config import load_config
from spinegate.service.demo import free_port
from spinegate.service.scp import Receiver, Status, start_scp
from spinegate.service.store import StateStore


@pytest.fixture
def scp(tmp_path):
    port = free_port()
    cfg = load_config(overrides={"network": {"port": port}, "storage": {"root": tmp_path / "var"}}, environ={})
    store = StateStore(cfg.storage.state_db)
    stored: list[str] = []
    server = start_scp(cfg, Receiver(cfg, store, stored.append))
    yield cfg, store, stored
    server.shutdown()
    store.close()


@pytest.fixture(scope="module")
def instances(tmp_path_factory):
    grid = sagittal_grid(3, 16, 16, 2.0, 4.0)
    pixels = np.full((3, 16, 16), 100, np.uint16)
    paths = write_mr_series(pixels, grid.affine, StudyInfo("scp"), SeriesSpec(2, "SAG T2", 3500, 100, 4.0),
                            tmp_path_factory.mktemp("scp"))
    return [pydicom.dcmread(p) for p in paths]


def _associate(cfg, contexts=(MRImageStorage, Verification)):
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 5
    for c in contexts:
        ae.add_requested_context(c)
    assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title=cfg.network.ae_title)
    assert assoc.is_established
    return assoc


def test_echo_store_and_duplicate(scp, instances):
    cfg, store, stored = scp
    assoc = _associate(cfg)
    # Peers may send an image in one PDU of up to the configured size.
    assert assoc.acceptor.maximum_length == cfg.network.maximum_pdu_bytes == 1_048_576
    assert assoc.send_c_echo().Status == Status.SUCCESS
    for ds in instances:
        assert assoc.send_c_store(ds).Status == Status.SUCCESS
    assert assoc.send_c_store(instances[0]).Status == Status.SUCCESS  # re-sent: acknowledged
    assoc.release()
    recs = store.instances(instances[0].StudyInstanceUID)
    # Each instance, and the re-send, notifies the worker (which keeps one check per study).
    assert len(recs) == 3 and stored == [str(instances[0].StudyInstanceUID)] * 4
    on_disk = pydicom.dcmread(recs[0].path)
    assert on_disk.SOPInstanceUID in {d.SOPInstanceUID for d in instances}
    assert not list(cfg.storage.spool.rglob("*.tmp"))


def _bad_variants(ds):
    missing_pixels = copy.deepcopy(ds)
    del missing_pixels.PixelData
    wrong_modality = copy.deepcopy(ds)
    wrong_modality.Modality = "CT"
    truncated = copy.deepcopy(ds)
    truncated.PixelData = truncated.PixelData[:100]
    no_study = copy.deepcopy(ds)
    del no_study.StudyInstanceUID
    bad_uid = copy.deepcopy(ds)
    bad_uid.SeriesInstanceUID = "../../etc"
    no_columns = copy.deepcopy(ds)
    no_columns.Columns = 0
    wrong_bits = copy.deepcopy(ds)  # 16-bit data described as 8-bit: twice the data the header describes
    wrong_bits.BitsAllocated, wrong_bits.BitsStored, wrong_bits.HighBit = 8, 8, 7
    two_values = copy.deepcopy(ds)
    two_values.ImageOrientationPatient = [1, 0]
    odd_bits = copy.deepcopy(ds)
    odd_bits.BitsAllocated = 12
    return [
        ("missing_pixel_data", missing_pixels, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("wrong_modality", wrong_modality, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("truncated_pixel_data", truncated, Status.CANNOT_UNDERSTAND),
        ("missing_attribute", no_study, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS),
        ("invalid_uid", bad_uid, Status.CANNOT_UNDERSTAND),
        ("empty_image", no_columns, Status.CANNOT_UNDERSTAND),
        ("pixel_data_size_mismatch", wrong_bits, Status.CANNOT_UNDERSTAND),
        ("malformed_geometry", two_values, Status.CANNOT_UNDERSTAND),
        ("unsupported_bits_allocated", odd_bits, Status.CANNOT_UNDERSTAND),
    ]


def test_bad_instances_are_refused_quarantined_and_service_continues(scp, instances):
    cfg, store, stored = scp
    assoc = _associate(cfg)
    for reason, ds, status in _bad_variants(instances[1]):
        ds.SOPInstanceUID = instances[1].SOPInstanceUID  # same UID: a refusal must not mark it as received
        assert assoc.send_c_store(ds).Status == status, reason
    assert assoc.send_c_store(instances[1]).Status == Status.SUCCESS  # still serving, and not a "duplicate"
    assoc.release()
    reasons = [r for _, r in store.quarantined()]
    assert reasons == [v[0] for v in _bad_variants(instances[1])]
    for path, reason in store.quarantined():
        assert path.exists()
        assert json.loads(path.with_suffix(".json").read_text())["reason"] == reason
    assert len(stored) == 1


def test_ct_sop_class_is_refused_at_negotiation(scp):
    cfg, _, _ = scp
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title=cfg.network.ae_title)
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert CTImageStorage in rejected and CTImageStorage not in accepted


def test_association_to_another_called_ae_title_is_rejected(scp):
    """A sender configured with the wrong called AE title is told so at
    association (A-ASSOCIATE-RJ, rejected-permanent, reason 7)."""
    cfg, _, _ = scp
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title="NOT_SPINEGATE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)
    _associate(cfg).release()  # the right title still gets in (asserted inside)


def test_a_queue_failure_answers_out_of_resources_and_the_resend_queues_the_study(tmp_path, instances):
    """If the worker cannot queue the study's check, the sender hears
    0xA700 and retries; the retry (a duplicate: the instance was kept)
    queues the check, so the study is not left waiting."""
    port = free_port()
    cfg = load_config(overrides={"network": {"port": port}, "storage": {"root": tmp_path / "var"}}, environ={})
    store = StateStore(cfg.storage.state_db)
    queued: list[str] = []

    def on_stored(uid: str) -> None:
        if not queued:
            queued.append("failed")
            raise ConnectionError("queue unreachable")
        queued.append(uid)

    server = start_scp(cfg, Receiver(cfg, store, on_stored))
    try:
        assoc = _associate(cfg)
        assert assoc.send_c_store(instances[0]).Status == Status.OUT_OF_RESOURCES
        assert store.has_instance(instances[0].SOPInstanceUID)  # kept
        assert assoc.send_c_store(instances[0]).Status == Status.SUCCESS
        assoc.release()
        assert queued == ["failed", str(instances[0].StudyInstanceUID)]
    finally:
        server.shutdown()
        store.close()
