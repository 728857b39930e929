"""DICOM TLS on both sides, tried with dcmtk as the real peer: echoscu and
storescu ``+tls`` against the SCP (a client with a trusted certificate is
served; one without a certificate, one with an untrusted certificate and a
plain-TCP attempt on the TLS port are refused; a client that never finishes
its handshake holds up nobody), and the export SCU delivering to dcmtk's
``storescp +tls`` (with and without the client certificate it requires,
and to a server whose certificate names another host)."""
from __future__ import annotations

import socket
import subprocess
import time

import pytest

from conformance.pacs import DCMTK_ENV, storescu_statuses
from conftest import require_tool
from peers import free_port, make_certificates
from spinegate.service.config import ConfigError, Destination, load_config
from spinegate.service.export import deliver_round, initial_status
from spinegate.service.metrics import Metrics
from spinegate.service.scp import Receiver, start_scp
from spinegate.service.store import StateStore


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    require_tool("openssl")
    return make_certificates(tmp_path_factory.mktemp("pki"))


def _tls(pki, client="client"):
    return ["+tls", str(pki[f"{client}_key"]), str(pki[f"{client}_crt"]), "+cf", str(pki["ca_crt"])]


@pytest.fixture
def tls_scp(tmp_path, pki):
    cfg = load_config(overrides={"network": {"port": free_port(), "acse_timeout_s": 3, "tls": {
        "certificate": pki["server_crt"], "private_key": pki["server_key"], "ca_certificates": pki["ca_crt"],
        "require_client_certificate": True}}, "storage": {"root": tmp_path / "var"}}, environ={})
    store = StateStore(cfg.storage.state_db)
    server = start_scp(cfg, Receiver(cfg, store, lambda uid: None, Metrics()))
    yield cfg, store
    server.shutdown()
    store.close()


def _echo(port, *options):
    return subprocess.run([require_tool("echoscu"), *options, "-to", "5", "-ta", "5", "-aec", "SPINEGATE",
                           "127.0.0.1", str(port)], env=DCMTK_ENV, capture_output=True, text=True, timeout=30)


def test_the_scp_serves_a_trusted_client_and_refuses_the_others(tls_scp, pki, phantom_study):
    cfg, store = tls_scp
    port = cfg.network.port
    assert _echo(port, *_tls(pki)).returncode == 0
    sent = phantom_study["files"][:2]
    result = storescu_statuses(sent, "127.0.0.1", port, "SPINEGATE", "SCANNER", options=_tls(pki))
    assert result.returncode == 0 and result.statuses == (0, 0), result.output
    assert len(store.instances(str(phantom_study["study_instance_uid"]))) == 2
    refused = {
        "no client certificate": _echo(port, "+tla", "+cf", str(pki["ca_crt"])),
        "untrusted client certificate": _echo(port, *_tls(pki, "rogue_client")),
        "plain TCP on the TLS port": _echo(port),
    }
    assert {why: r.returncode for why, r in refused.items() if r.returncode == 0} == {}
    assert _echo(port, *_tls(pki)).returncode == 0  # still serving


def test_a_client_that_never_finishes_its_handshake_holds_up_nobody(tls_scp, pki):
    cfg, _ = tls_scp
    with socket.create_connection(("127.0.0.1", cfg.network.port)) as silent:
        t0 = time.monotonic()
        assert _echo(cfg.network.port, *_tls(pki)).returncode == 0
        assert time.monotonic() - t0 < 5
        silent.settimeout(15)
        assert silent.recv(1) == b""  # dropped when no association request came (ACSE timeout)


def test_tls_settings_are_checked_at_start_up(tmp_path, pki):
    def load(tls):
        return load_config(overrides={"network": {"tls": tls}}, environ={})

    for tls, message in (
        ({"certificate": pki["server_crt"]}, "private_key"),
        ({"certificate": pki["server_crt"], "private_key": tmp_path / "nope.key"}, "not a readable file"),
        ({"certificate": pki["server_crt"], "private_key": pki["server_key"], "require_client_certificate": True},
         "ca_certificates"),
        ({"certificate": pki["ca_crt"], "private_key": pki["server_key"]}, "cannot load the TLS files"),
        ({"ca_certificates": pki["ca_crt"]}, "'certificate'"),
    ):
        with pytest.raises(ConfigError, match=message) as e:
            load(tls)
        assert "network.tls" in str(e.value)
    assert load({"certificate": pki["server_crt"], "private_key": pki["server_key"]}).network.tls.enabled


@pytest.fixture
def tls_pacs(tmp_path, pki):
    port = free_port()
    proc = subprocess.Popen([require_tool("storescp"), "+tls", str(pki["server_key"]), str(pki["server_crt"]), "+cf",
                             str(pki["ca_crt"]), "-aet", "PACS", "-od", str(tmp_path / "pacs"), str(port)],
                            env=DCMTK_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (tmp_path / "pacs").mkdir()
    deadline = time.monotonic() + 20
    while _echo(port, *_tls(pki)).returncode != 0:
        assert time.monotonic() < deadline and proc.poll() is None, "storescp +tls did not start"
        time.sleep(0.2)
    yield port, tmp_path / "pacs"
    proc.terminate()
    proc.wait(timeout=10)


def test_the_export_scu_delivers_over_tls_with_its_certificate(tls_pacs, pki, phantom_study):
    port, folder = tls_pacs
    tls = {"ca_certificates": pki["ca_crt"], "certificate": pki["client_crt"], "private_key": pki["client_key"]}
    cases = {
        "trusted": ({**tls}, True),
        "no client certificate": ({"ca_certificates": pki["ca_crt"]}, False),
        "server named otherwise": ({**tls, "server_name": "pacs.example.org"}, False),
        "server not trusted": ({"certificate": pki["client_crt"], "private_key": pki["client_key"]}, False),
    }
    outcome = {}
    for name, (dest_tls, _) in cases.items():
        cfg = load_config(overrides={"export": {"destinations": [
            Destination("PACS", "127.0.0.1", port, tls=dest_tls).model_dump()]}}, environ={})
        [status] = deliver_round(phantom_study["files"][:1], cfg.export, initial_status(cfg.export))
        outcome[name] = status.confirmed
    assert outcome == {name: expected for name, (_, expected) in cases.items()}
    assert len(list(folder.iterdir())) >= 1
    assert _echo(port).returncode != 0  # the PACS speaks TLS only: plain TCP is not a way around it

