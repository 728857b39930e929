"""Access control of the SCP: admitted calling AE titles and peer
addresses (`network.allowed_calling_ae_titles`, `network.allowed_hosts`),
tried with dcmtk's echoscu as a real sender; refused callers get an
A-ASSOCIATE-RJ with the DICOM reason and are counted."""
from __future__ import annotations

import ipaddress

import pytest

from conformance.pacs import echoscu
from spinegate.service.access import AccessPolicy, Refusal
from spinegate.service.config import ConfigError, load_config
from spinegate.service.demo import free_port
from spinegate.service.metrics import Metrics
from spinegate.service.scp import Receiver, start_scp
from spinegate.service.store import StateStore


def _policy(titles=(), hosts=()):
    return AccessPolicy.build(titles, [ipaddress.ip_network(h) for h in hosts])


@pytest.mark.parametrize("titles, hosts, calling, address, refusal", [
    ((), (), "ANYONE", "203.0.113.9", None),
    (("SCANNER", "PACS "), (), "SCANNER", "127.0.0.1", None),
    (("SCANNER", "PACS "), (), "PACS", "127.0.0.1", None),
    (("SCANNER",), (), "INTRUDER", "127.0.0.1", Refusal.CALLING_AE_TITLE),
    ((), ("10.1.0.0/16", "127.0.0.1"), "X", "10.1.200.3", None),
    ((), ("10.1.0.0/16", "127.0.0.1"), "X", "::ffff:127.0.0.1", None),
    ((), ("10.1.0.0/16",), "X", "10.2.0.1", Refusal.HOST),
    ((), ("fd00::/8",), "X", "fd00::1", None),
    ((), ("fd00::/8",), "X", "127.0.0.1", Refusal.HOST),
    ((), ("127.0.0.0/8",), "X", "not-an-address", Refusal.HOST),
    (("SCANNER",), ("10.0.0.0/8",), "SCANNER", "192.168.1.1", Refusal.HOST),
])
def test_the_policy_admits_exactly_the_listed_callers(titles, hosts, calling, address, refusal):
    assert _policy(titles, hosts).refusal(calling, address) is refusal


def test_bad_access_lists_are_configuration_errors():
    with pytest.raises(ConfigError, match=r"network.allowed_hosts.0"):
        load_config(environ={"SPINEGATE_NETWORK__ALLOWED_HOSTS": '["10.0.0.300/8"]'})
    with pytest.raises(ConfigError, match=r"network.allowed_calling_ae_titles.0"):
        load_config(environ={"SPINEGATE_NETWORK__ALLOWED_CALLING_AE_TITLES": '["WAYTOOLONGAETITLE17"]'})


@pytest.fixture
def start(tmp_path):
    servers, stores = [], []

    def _start(**network):
        cfg = load_config(overrides={"network": {"port": free_port(), **network},
                                     "storage": {"root": tmp_path / "var"}}, environ={})
        store, metrics = StateStore(cfg.storage.state_db), Metrics()
        servers.append(start_scp(cfg, Receiver(cfg, store, lambda uid: None, metrics)))
        stores.append(store)
        return cfg, metrics

    yield _start
    for s in servers:
        s.shutdown()
    for s in stores:
        s.close()


def _rejections(metrics: Metrics, reason: str) -> float:
    return metrics.registry.get_sample_value("spinegate_associations_total",
                                             {"result": "rejected", "reason": reason}) or 0.0


def test_an_unlisted_calling_ae_title_is_rejected_with_its_reason(start):
    cfg, metrics = start(allowed_calling_ae_titles=["SCANNER"])
    admitted = echoscu("127.0.0.1", cfg.network.port, "SPINEGATE", calling_ae="SCANNER")
    assert admitted.returncode == 0, admitted.stderr
    refused = echoscu("127.0.0.1", cfg.network.port, "SPINEGATE", calling_ae="INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    assert "Rejected Permanent" in refused.stdout + refused.stderr
    assert _rejections(metrics, "calling_ae_title_not_allowed") == 1


def test_a_peer_outside_the_allowed_hosts_is_rejected(start):
    cfg, metrics = start(allowed_hosts=["10.0.0.0/8"])
    refused = echoscu("127.0.0.1", cfg.network.port, "SPINEGATE", calling_ae="SCANNER")
    assert refused.returncode != 0
    assert "Rejected Permanent" in refused.stdout + refused.stderr
    assert _rejections(metrics, "host_not_allowed") == 1
    cfg, metrics = start(allowed_hosts=["127.0.0.0/8"])
    assert echoscu("127.0.0.1", cfg.network.port, "SPINEGATE", calling_ae="SCANNER").returncode == 0
    assert _rejections(metrics, "host_not_allowed") == 0


def test_the_called_ae_title_is_enforced(start):
    cfg, metrics = start()
    refused = echoscu("127.0.0.1", cfg.network.port, "NOTSPINEGATE", calling_ae="SCANNER")
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stdout + refused.stderr
