"""Operations artefacts in deploy/: the alert rules pass `promtool check
rules` and their unit tests; every dashboard query is valid PromQL
(checked by promtool as a recording rule) and names only metrics spinegate
exports."""
from __future__ import annotations

import json
import re
import subprocess

import yaml

from conftest import REPO, require_tool
from spinegate.service.app import start_service
from spinegate.service.config import load_config
from spinegate.service.demo import free_port

PROM = REPO / "deploy" / "prometheus"
DASHBOARD = REPO / "deploy" / "grafana" / "spinegate-dashboard.json"


def _promtool(*args, cwd=PROM):
    return subprocess.run([require_tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def test_alert_rules_are_valid_and_their_unit_tests_pass():
    check = _promtool("check", "rules", "spinegate-alerts.yml")
    assert check.returncode == 0, check.stdout + check.stderr
    test = _promtool("test", "rules", "spinegate-alerts.test.yml")
    assert test.returncode == 0, test.stdout + test.stderr
    names = {r["alert"] for g in yaml.safe_load((PROM / "spinegate-alerts.yml").read_text())["groups"]
             for r in g["rules"]}
    assert names == {"SpinegateQueueBackingUp", "SpinegateExportFailing", "SpinegateNoStudiesDuringWorkingHours",
                     "SpinegateDiskFilling", "SpinegateNotReady"}
    assert _promtool("check", "config", "prometheus.yml").returncode == 0


def _exported_metric_names(tmp_path) -> set[str]:
    cfg = load_config(overrides={"network": {"port": free_port()}, "http": {"enabled": False},
                                 "storage": {"root": tmp_path / "var"}}, environ={})
    svc = start_service(cfg, load_model=False)
    try:
        names = set()
        # Labelled metrics have no samples before their first event: name
        # them from their type (counter → _total, histogram → _bucket …).
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
        for metric in svc.metrics.registry.collect():
            names.update(metric.name + s for s in suffixes.get(metric.type, ("",)))
        return names
    finally:
        svc.shutdown()


def test_dashboard_queries_are_valid_promql_over_exported_metrics(tmp_path):
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("ingest", "turnaround", "queue", "failures", "export", "latency"):
        assert topic in titles
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                         for i, e in enumerate(exprs)]}]}
    (tmp_path / "dash-rules.yml").write_text(yaml.safe_dump(rules))
    check = _promtool("check", "rules", "dash-rules.yml", cwd=tmp_path)
    assert check.returncode == 0, check.stdout + check.stderr
    exported = _exported_metric_names(tmp_path)
    # Histograms and counters appear with their suffixes in queries.
    used = {m for e in exprs for m in re.findall(r"spinegate_[a-z_]+", e)}
    assert used and used <= exported, used - exported
