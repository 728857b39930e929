from pathlib import Path


from spinegate.service.config import load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_example_configuration_loads():
    cfg = load_config(REPO / "deploy" / "spinegate.yaml", environ={})
    assert cfg.export.destinations[0].ae_title == "PACS"
    assert [r.name for r in cfg.routing] == ["sag_t1", "sag_t2", "ax_t1_t2", "ax_dixon_water"]


# --- deployment artefacts (deploy/): validated as far as this machine allows;
# docs/operations.md says what was not run (no image build, no cluster, no GPU). ---
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402

from conftest import require_tool  # noqa: E402

DEPLOY = REPO / "deploy"


def _compose_config(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("docker-compose"), "-f", str(DEPLOY / "docker-compose.yml"), "config"],
                          capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin", **env})


def test_compose_stack_validates_with_docker_compose_and_needs_its_secrets(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef-token\n")
    secrets = {"ORTHANC_PASSWORD": "orthanc-pw", "GRAFANA_ADMIN_PASSWORD": "grafana-pw",
               "SPINEGATE_API_TOKEN_FILE": str(token)}
    for missing in secrets:  # no default credentials: each secret left out stops the stack
        proc = _compose_config({k: v for k, v in secrets.items() if k != missing})
        assert proc.returncode != 0 and missing in proc.stderr, proc.stderr
    proc = _compose_config(secrets)
    assert proc.returncode == 0, proc.stderr
    services = yaml.safe_load(proc.stdout)["services"]
    assert set(services) == {"orthanc", "spinegate", "prometheus", "grafana"}
    # Only the DICOM ports are published beyond the host; web and API ports listen on loopback.
    for name, service in services.items():
        for port in service.get("ports", []):
            if isinstance(port, str):
                assert port.startswith("127.0.0.1:"), (name, port)
            else:
                assert port["target"] in (4242, 11112), (name, port)
    assert services["orthanc"]["environment"]["ORTHANC__AUTHENTICATION_ENABLED"] == "true"
    assert services["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert services["spinegate"]["environment"]["SPINEGATE_HTTP__AUTH_TOKEN_FILE"] == \
        "/run/secrets/spinegate-api-token"
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            if source.startswith("/"):  # bind mounts must point at files in the repository
                assert Path(source).exists(), source
    assert "spinegate:8080" in (DEPLOY / "prometheus" / "prometheus-compose.yml").read_text()


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_copy_existing_paths_and_run_spinegate(name):
    text = (DEPLOY / "docker" / name).read_text()
    for src in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        assert (REPO / src).exists(), src
    assert 'ENTRYPOINT ["spinegate"' in text and "USER spinegate" in text
    if name.endswith("gpu"):
        assert "tensorrt" in text.lower()


def test_kubernetes_manifests_have_receivers_gpu_workers_redis_and_a_shared_spool(tmp_path):
    docs = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "spinegate.yaml").read_text()) if d]
    for d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), d
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    receiver = by_name[("Deployment", "spinegate-receiver")]["spec"]["template"]["spec"]
    worker = by_name[("Deployment", "spinegate-worker-gpu")]["spec"]["template"]["spec"]
    assert receiver["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert receiver["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["containers"][0]["args"][-1] == "worker"
    for spec in (receiver, worker):
        claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
        assert claims == ["spinegate-spool"]
    assert by_name[("PersistentVolumeClaim", "spinegate-spool")]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ("Service", "spinegate") in by_name and ("Deployment", "spinegate-redis") in by_name
    # Only DICOM on the LoadBalancer; the HTTP API inside the cluster.
    assert [p["name"] for p in by_name[("Service", "spinegate")]["spec"]["ports"]] == ["dicom"]
    assert by_name[("Service", "spinegate-http")]["spec"]["type"] == "ClusterIP"
    # Redis asks for a password from the Secret; receivers and workers use it and mount the API token.
    redis = by_name[("Deployment", "spinegate-redis")]["spec"]["template"]["spec"]["containers"][0]
    assert "--requirepass" in redis["args"]
    assert redis["env"][0]["valueFrom"]["secretKeyRef"] == {"name": "spinegate-secrets", "key": "redis-password"}
    for spec in (receiver, worker):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "spinegate-secrets"
        assert env["SPINEGATE_QUEUE__REDIS_URL"]["value"].startswith("redis://:$(REDIS_PASSWORD)@")
        assert any(v.get("secret", {}).get("secretName") == "spinegate-secrets" for v in spec["volumes"])
    # The embedded configuration is a valid spinegate configuration on Redis,
    # given its secrets (the token file the Secret mounts, the Redis URL).
    embedded = by_name[("ConfigMap", "spinegate-config")]["data"]["spinegate.yaml"]
    token = tmp_path / "api-token"
    token.write_text("0123456789abcdef-token")
    assert "/etc/spinegate-secrets/api-token" in embedded
    cfg_path = tmp_path / "spinegate.yaml"
    cfg_path.write_text(embedded.replace("/etc/spinegate-secrets/api-token", str(token)))
    cfg = load_config(cfg_path, environ={"SPINEGATE_QUEUE__REDIS_URL": "redis://:pw@spinegate-redis:6379/0"})
    assert cfg.queue.backend == "redis" and not cfg.queue.consume_in_serve
    assert cfg.http.auth_token() is not None


def test_systemd_unit_verifies(tmp_path):
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    unit = (DEPLOY / "systemd" / "spinegate.service").read_text()
    spinegate = Path(shutil.which("spinegate") or REPO / ".venv" / "bin" / "spinegate")
    path = tmp_path / "spinegate.service"
    path.write_text(unit.replace("/opt/spinegate/.venv/bin/spinegate", str(spinegate)))
    proc = subprocess.run([exe, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "KillSignal=SIGINT" in unit
