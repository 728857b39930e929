"""Malformed and adversarial instances over the network (hypothesis draws
them from `conformance.fuzz`): each gets a failure status and is
quarantined with its reason, or is stored whole; the SCP never fails inside
its handler (0xC211), never hangs, keeps answering C-ECHO, and its memory
stays bounded. The long run is ``bench/fuzz_receive.py``."""
from __future__ import annotations

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conformance.fuzz import DCMTK_MANGLINGS, KINDS, RawSender, dcmtk_mangled, mutate, resident_mb
from conformance.pacs import echoscu
from spinegate.service.config import load_config
from spinegate.service.demo import free_port
from spinegate.service.scp import Receiver, Status, start_scp
from spinegate.service.store import StateStore

CASES = 300
NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"}
FAILURES = {Status.OUT_OF_RESOURCES, Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, Status.CANNOT_UNDERSTAND}
MAX_RSS_GROWTH_MB = 300


@pytest.fixture(scope="module")
def scp(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    cfg = load_config(overrides={"network": {"port": free_port()}, "storage": {"root": root / "var"}}, environ={})
    store = StateStore(cfg.storage.state_db)
    server = start_scp(cfg, Receiver(cfg, store, lambda uid: None))
    sender = RawSender(cfg.network.port)
    seen: dict[str, list[int]] = {kind: [] for kind in KINDS}
    seen["rss_mb_before"] = [resident_mb()]
    yield cfg, store, sender, seen
    sender.close()
    server.shutdown()
    store.close()


@settings(max_examples=CASES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), a=st.integers(0, 1 << 20), b=st.integers(0, 1 << 20),
       index=st.integers(0, 10**6))
def test_every_malformed_instance_is_refused_or_stored_whole(scp, kind, a, b, index):
    seen = scp[3]
    m = mutate(kind, index, a, b)
    seen[kind].append(_refused_or_stored_whole(scp, m))


@pytest.mark.parametrize("case", DCMTK_MANGLINGS, ids=[c[0] for c in DCMTK_MANGLINGS])
def test_files_mangled_with_dcmtk_tools_are_refused_or_stored_whole(scp, mangled, case):
    m = mangled[f"dcmtk:{case[0]}"]
    status = _refused_or_stored_whole(scp, m)
    # Flipped entropy-coded bytes may still decode (to a damaged image the
    # decoder cannot tell from a real one): stored whole is then right.
    if case[2] == "cut" or case[0] in ("rows_not_matching_pixels", "pixel_data_removed", "sop_uid_empty", "sop_uid_removed",
                              "study_uid_path_like", "series_uid_too_long", "sop_class_not_mr", "rows_huge",
                                              "columns_zero", "bits_allocated_8", "samples_per_pixel_3",
                                              "orientation_two_values"):
        assert status != Status.SUCCESS, f"{m.kind} was stored"


@pytest.fixture(scope="module")
def mangled(tmp_path_factory):
    return {m.kind: m for m in dcmtk_mangled(tmp_path_factory.mktemp("mangled"), index=10**7)}


def _refused_or_stored_whole(scp, m):
    cfg, store, sender, seen = scp
    quarantined_before = len(store.quarantined())
    status = sender.send(m)
    assert status is not None, f"association lost on {m.kind} ({m.detail})"
    if m.kind == "syntax_mismatch" and m.transfer_syntax not in NATIVE:
        assert status == Status.CANNOT_UNDERSTAND, f"native pixel data accepted as {m.detail}"
    if status == Status.SUCCESS:
        # Stored whole: its file parses and is indexed under its UID (a UI
        # value's padding, e.g. a leading space, is not part of the UID).
        uid = m.sop_instance_uid.strip()
        assert store.has_instance(uid), (m.kind, m.detail)
        stored = pydicom.dcmread(next(cfg.storage.spool.rglob(f"{uid}.dcm")), stop_before_pixels=True)
        assert any(r.sop_instance_uid == uid and r.path.exists() for r in store.instances(stored.StudyInstanceUID))
    else:
        assert status in FAILURES, f"{m.kind} ({m.detail}) answered 0x{status:04X}"
        if status != Status.OUT_OF_RESOURCES:
            assert len(store.quarantined()) == quarantined_before + 1, (m.kind, m.detail)
    return status


def test_after_the_fuzzing_the_scp_still_serves_with_bounded_memory(scp):
    cfg, store, sender, seen = scp
    assert sum(len(seen[kind]) for kind in KINDS) >= CASES  # the fuzzing ran first, in this module
    assert all(seen[kind] for kind in KINDS), {k: len(v) for k, v in seen.items()}
    refused = sum(s != Status.SUCCESS for kind in KINDS for s in seen[kind])
    assert refused >= CASES // 2
    assert echoscu("127.0.0.1", cfg.network.port, "SPINEGATE").returncode == 0
    # This process's resident memory now, against before the fuzzing (the
    # SCP runs in it): the cases must not have left anything behind.
    assert resident_mb() < seen["rss_mb_before"][0] + MAX_RSS_GROWTH_MB
    for path, reason in store.quarantined():
        assert path.exists() and path.with_suffix(".json").exists(), reason

