"""Real peers for integration tests: dcmtk storescp as the PACS, and
``spinegate serve`` as a child process. Bounded waits, no fixed sleeps."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from conformance.pacs import DCMTK_ENV
from conformance.pacs import StoreSCP as _StoreSCP
from conftest import REPO, require_tool
from spinegate.service.demo import free_port, stop_process, wait_for_echo

__all__ = ["StoreSCP", "Spinegate", "Prometheus", "RedisServer", "Orthanc", "storescu", "storescu_to",
           "make_certificates",
           "start_worker", "free_port", "stop_process"]

DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"


class StoreSCP(_StoreSCP):
    """The conformance suite's storescp PACS, on a free port by default."""

    @classmethod
    def start(cls, folder: Path, port: int | None = None, ae_title: str = "PACS") -> "StoreSCP":  # type: ignore[override]
        return super().start(folder, port or free_port(), ae_title)


@dataclass
class Spinegate:
    """``spinegate serve`` in a child process with its own storage root."""

    root: Path
    port: int
    proc: subprocess.Popen
    config_path: Path
    http_port: int

    @classmethod
    def start(cls, root: Path, destination_port: int, quiet_period_s: float = 2.0, attempts: int = 3,
              port: int | None = None, extra: dict | None = None) -> "Spinegate":
        root.mkdir(parents=True, exist_ok=True)
        port = port or free_port()
        http_port = free_port()
        cfg = {
            "network": {"ae_title": "SPINEGATE", "host": "127.0.0.1", "port": port},
            "http": {"host": "127.0.0.1", "port": http_port},
            "storage": {"root": str(root / "var")},
            "assembly": {"quiet_period_s": quiet_period_s},
            "export": {"destinations": [{"ae_title": "PACS", "host": "127.0.0.1", "port": destination_port}],
                       "attempts": attempts, "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        }
        for section, values in (extra or {}).items():
            cfg.setdefault(section, {}).update(values)
        config_path = root / "spinegate.yaml"
        config_path.write_text(yaml.safe_dump(cfg))
        log = open(root / "serve.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config", str(config_path), "serve"],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_echo("127.0.0.1", port, "SPINEGATE", 90, proc)
        except (TimeoutError, RuntimeError):
            proc.kill()
            raise
        return cls(root, port, proc, config_path, http_port)

    def log_text(self) -> str:
        return (self.root / "serve.log").read_text()

    def stop(self, sig: int = signal.SIGINT) -> None:
        save_metrics(self.http_port, self.root / "metrics.prom")
        stop_process(self.proc, sig=sig)


def save_metrics(http_port: int, path: Path) -> None:
    """Keep a process's last /metrics exposition beside its log (the PHI
    audit, tests/test_no_phi.py, reads both)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            path.write_bytes(r.read())
    except (urllib.error.URLError, OSError):
        pass  # the process is gone or serves no HTTP


def storescu(files: list[Path], port: int, proposal: list[str] | None = None) -> None:
    """Send to spinegate with dcmtk storescu over one association; raises on failure."""
    storescu_to(files, port, "SPINEGATE", proposal)


def storescu_to(files: list[Path], port: int, called_ae: str, proposal: list[str] | None = None) -> None:
    """Send with dcmtk storescu to ``called_ae`` on 127.0.0.1:``port``."""
    cmd = [require_tool("storescu"), "-aet", "SCANNER", "-aec", called_ae, *(proposal or []), "127.0.0.1",
           str(port), *map(str, files)]
    proc = subprocess.run(cmd, env=DCMTK_ENV, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")


@dataclass
class Prometheus:
    """The Debian prometheus server scraping spinegate every second, with
    spinegate's alert rules loaded."""

    port: int
    proc: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, folder: Path, target_port: int | list[int]) -> "Prometheus":
        import shutil

        ports = target_port if isinstance(target_port, list) else [target_port]

        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "deploy" / "prometheus" / "spinegate-alerts.yml", folder / "spinegate-alerts.yml")
        cfg = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
               "rule_files": ["spinegate-alerts.yml"],
               "scrape_configs": [{"job_name": "spinegate",
                                   "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}]}
        (folder / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        log_path = folder / "prometheus.log"
        proc = subprocess.Popen([require_tool("prometheus"), f"--config.file={folder / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        prom = cls(port, proc, log_path)
        prom.wait_until(lambda: prom.api("/-/ready", raw=True) is not None, 60, "prometheus ready")
        return prom

    def api(self, path: str, raw: bool = False):  # type: ignore[no-untyped-def]
        import json
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                body = r.read().decode()
        except (urllib.error.URLError, OSError):
            return None
        return body if raw else json.loads(body)

    def query(self, promql: str) -> list[dict]:
        import urllib.parse

        result = self.api("/api/v1/query?query=" + urllib.parse.quote(promql))
        return result["data"]["result"] if result and result.get("status") == "success" else []

    def wait_until(self, predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited: {self.log_path.read_text()[-2000:]}")
            value = predicate()
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"{what} not reached within {timeout_s} s")

    def stop(self) -> None:
        stop_process(self.proc, sig=signal.SIGTERM, timeout_s=20)


@dataclass
class RedisServer:
    """The Debian redis-server on a free loopback port, nothing persisted."""

    port: int
    proc: subprocess.Popen

    @classmethod
    def start(cls, folder: Path) -> "RedisServer":
        import socket

        folder.mkdir(parents=True, exist_ok=True)
        port = free_port()
        proc = subprocess.Popen([require_tool("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no", "--dir", str(folder)],
                                stdout=open(folder / "redis.log", "w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return cls(port, proc)
            except OSError:
                time.sleep(0.2)
        proc.kill()
        raise TimeoutError("redis-server did not answer PING")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_worker(config_path: Path, log_path: Path, http_port: int | None = None) -> subprocess.Popen:
    """A ``spinegate worker`` process on the configuration of a receiver,
    its HTTP endpoint on ``http_port`` (a free one when not given)."""
    env = {**os.environ, "SPINEGATE_HTTP__PORT": str(http_port or free_port())}
    return subprocess.Popen([sys.executable, "-m", "spinegate.service.cli", "--config", str(config_path), "worker"],
                            cwd=REPO, env=env, stdout=open(log_path, "a"), stderr=subprocess.STDOUT)


@dataclass
class Orthanc:
    """The Debian Orthanc as the PACS, with spinegate's auto-forward Lua
    script (deploy/orthanc/autoforward.lua) and no system plugins."""

    dicom_port: int
    http_port: int
    proc: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, folder: Path, spinegate_port: int, stable_age_s: int = 2, dicomweb: bool = False) -> "Orthanc":
        import json
        import shutil

        import pytest

        # Orthanc 1.10 has no bind-address option: it listens on every
        # interface. Only start it where loopback is the only one (`make
        # test` runs the suite under `unshare -n`).
        dev = Path("/proc/self/net/dev")  # per network namespace, unlike /sys/class/net
        interfaces = {line.split(":")[0].strip() for line in dev.read_text().splitlines()[2:]} if dev.exists() else set()
        if interfaces - {"lo"}:
            pytest.skip(f"Orthanc would listen on {sorted(interfaces)}: run the suite with 'make test' "
                        "(private network namespace holding only loopback)")

        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / "deploy" / "orthanc" / "autoforward.lua", folder / "autoforward.lua")
        dicom_port, http_port = free_port(), free_port()
        cfg = {"Name": "PACS", "DicomAet": "PACS", "DicomPort": dicom_port, "HttpPort": http_port,
               "StorageDirectory": str(folder / "db"), "IndexDirectory": str(folder / "db"),
               "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "StableAge": stable_age_s,
               "DicomModalities": {"spinegate": ["SPINEGATE", "127.0.0.1", spinegate_port]},
               "LuaScripts": [str(folder / "autoforward.lua")], "Plugins": [], "HttpServerEnabled": True}
        if dicomweb:
            cfg["Plugins"] = [DICOMWEB_PLUGIN]
            cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full",
                               "SeriesMetadata": "Full"}
        (folder / "orthanc.json").write_text(json.dumps(cfg, indent=1))
        log_path = folder / "orthanc.log"
        proc = subprocess.Popen([require_tool("Orthanc"), str(folder / "orthanc.json")],
                                stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
        orthanc = cls(dicom_port, http_port, proc, log_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {log_path.read_text()[-2000:]}")
            if orthanc.rest("/system") is not None:
                return orthanc
            time.sleep(0.3)
        proc.kill()
        raise TimeoutError("Orthanc did not start")

    def upload(self, path: Path) -> str:
        """POST one DICOM file to /instances; returns Orthanc's instance ID."""
        answer = self.rest("/instances", path.read_bytes())
        if not answer or "ID" not in answer:
            raise RuntimeError(f"Orthanc refused {path.name}: {answer}")
        return answer["ID"]

    def rest(self, path: str, data: bytes | None = None):  # type: ignore[no-untyped-def]
        import json
        import urllib.error
        import urllib.request

        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read().decode() or "null")
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def stop(self) -> None:
        stop_process(self.proc, sig=signal.SIGTERM, timeout_s=20)


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test PKI made with the openssl command: a CA; a server certificate
    for localhost/127.0.0.1 and a client certificate, both signed by it; and
    a client certificate signed by another (untrusted) CA. RSA 2048, SHA-256
    (what BCP 195, dcmtk's default TLS profile, accepts)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=60)

    for ca in ("ca", "rogue_ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-sha256", "-nodes", "-days", "2", "-subj", f"/CN=spinegate test {ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.crt")
    for name, ca, san in (("server", "ca", "DNS:localhost,IP:127.0.0.1"), ("client", "ca", "DNS:scanner"),
                          ("rogue_client", "rogue_ca", "DNS:rogue")):
        run("req", "-newkey", "rsa:2048", "-sha256", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr")
        (folder / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    for name in ("ca", "server", "client", "rogue_client"):
        paths[f"{name}_crt"] = folder / f"{name}.crt"
        paths[f"{name}_key"] = folder / f"{name}.key"
    return paths
