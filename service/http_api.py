"""The HTTP endpoint for operations: metrics, health, readiness, study status.

    GET  /metrics                      Prometheus exposition (prometheus-client)
    GET  /healthz                      200 while the process runs
    GET  /readyz                       200 when every check passes, else 503
    GET  /api/studies[?state=S&limit=N] studies, newest first: state, timings, error
    GET  /api/studies/{uid}            one study: routing decisions, flags, outputs, exports
    POST /api/studies/{uid}/reprocess  analyse the study again (202; 409 if it is busy)
    POST /api/studies/{uid}/resend     deliver an undelivered or exported study's outputs
                                       again, without re-analysis (202; 409 otherwise)

State-changing calls (POST) need ``Authorization: Bearer <token>``, the
token of ``http.auth_token_file`` (401 without it, 403 when no token is
configured); the read-only endpoints are open. A WSGI application served by the standard library's threaded WSGI server in
a daemon thread; responses are JSON. Study UIDs appear (they are not PHI);
patient attributes never do — the store holds none.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import shutil
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import SecretStr

from spinegate.service.config import SpinegateConfig
from spinegate.service.metrics import Metrics
from spinegate.service.review import REVIEW_FILTERS
from spinegate.service.store import StateStore, StudyRecord, StudyState

__all__ = ["ReadinessProbe", "StatusApi", "start_http"]

log = logging.getLogger(__name__)

_STUDY = re.compile(r"^/api/studies/([0-9.]{1,64})(?:/(reprocess|resend))?$")


@dataclass
class ReadinessProbe:
    """The checks behind /readyz; each returns (ok, detail)."""

    config: SpinegateConfig
    scp_port: Callable[[], int] | None  # None in a 'spinegate worker' process (no SCP)
    queue_depth: Callable[[], int]
    model_loaded: Callable[[], bool]
    needs_model: bool = True  # false in a receive-only process (workers load the models)
    _cached: tuple[float, dict[str, dict[str, Any]]] | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def ready(self) -> bool:
        return all(c["ok"] for c in self.checks().values())

    def checks(self) -> dict[str, dict[str, Any]]:
        """The checks, evaluated at most once per ``http.readiness_cache_s``
        (a Prometheus scrape or a probe does not write to the spool each time)."""
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] >= self.config.http.readiness_cache_s:
                self._cached = (now, self._evaluate())
            return self._cached[1]

    def free_bytes(self) -> int:
        root = self.config.storage.root
        return shutil.disk_usage(root if root.exists() else Path(".")).free

    def _evaluate(self) -> dict[str, dict[str, Any]]:
        checks = [("queue_reachable", self._queue()), ("model_loaded", self._model()),
                  ("spool_writable", self._spool()), ("disk_space", self._disk())]
        if self.scp_port is not None:
            checks.insert(0, ("scp_listening", self._scp(self.scp_port())))
        return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks}

    def _scp(self, port: int) -> tuple[bool, str]:
        try:
            with socket.create_connection((self.config.network.host, port), timeout=1.0):
                return True, f"port {port}"
        except OSError as e:
            return False, f"port {port}: {e}"

    def _queue(self) -> tuple[bool, str]:
        try:
            return True, f"{self.queue_depth()} pending"
        except Exception as e:  # any backend error means "not reachable"
            return False, f"{type(e).__name__}: {e}"

    def _model(self) -> tuple[bool, str]:
        if not self.needs_model:
            return True, "receive-only: the workers load the models"
        return (True, "loaded") if self.model_loaded() else (False, "not loaded")

    def _spool(self) -> tuple[bool, str]:
        spool = self.config.storage.spool
        try:
            spool.mkdir(parents=True, exist_ok=True)
            probe = spool / f".readyz-{uuid.uuid4().hex}"
            probe.write_bytes(b"ok")
            probe.unlink()
            return True, str(spool)
        except OSError as e:
            return False, f"{spool}: {e}"

    def _disk(self) -> tuple[bool, str]:
        free = self.free_bytes()
        need = self.config.http.min_free_disk_bytes
        return free >= need, f"{free} bytes free, {need} required"


@dataclass
class StatusApi:
    """The WSGI application."""

    store: StateStore
    metrics: Metrics
    readiness: ReadinessProbe
    reprocess: Callable[[str], bool]
    outputs_root: Path
    auth_token: SecretStr | None = None
    resend: Callable[[str], bool] | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        headers = [("Content-Type", "application/json")]
        try:
            refused = self._refusal(method, environ.get("HTTP_AUTHORIZATION", ""))
            if refused is not None:
                status, body, ctype = refused
                headers.append(("WWW-Authenticate", 'Bearer realm="spinegate"'))
            else:
                status, body, ctype = self._route(method, path, environ.get("QUERY_STRING", ""))
        except Exception as e:  # a handler bug must not kill the server thread
            log.exception("http handler failed path=%s", path)
            status, body, ctype = "500 Internal Server Error", _json({"error": type(e).__name__}), "application/json"
        headers[0] = ("Content-Type", ctype)
        start_response(status, headers + [("Content-Length", str(len(body)))])
        return [body]

    def _refusal(self, method: str, authorization: str) -> tuple[str, bytes, str] | None:
        """Why a state-changing call is refused (None: allowed or read-only)."""
        if method in ("GET", "HEAD"):
            return None
        if self.auth_token is None:
            return "403 Forbidden", _json({"error": "state-changing calls are disabled: "
                                                   "no http.auth_token_file is configured"}), "application/json"
        scheme, _, given = authorization.partition(" ")
        expected = self.auth_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            log.warning("http call refused: missing or wrong bearer token method=%s", method)
            return "401 Unauthorized", _json({"error": "a valid bearer token is required"}), "application/json"
        return None

    def _route(self, method: str, path: str, query: str) -> tuple[str, bytes, str]:
        if path == "/metrics" and method == "GET":
            return "200 OK", generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
        if path == "/healthz" and method == "GET":
            return "200 OK", _json({"status": "alive"}), "application/json"
        if path == "/readyz" and method == "GET":
            checks = self.readiness.checks()
            ready = all(c["ok"] for c in checks.values())  # one evaluation for both
            return ("200 OK" if ready else "503 Service Unavailable"), _json({"ready": ready, "checks": checks}), \
                "application/json"
        if path == "/api/studies" and method == "GET":
            try:
                return "200 OK", _json({"studies": self._list(query)}), "application/json"
            except ValueError as e:
                return "400 Bad Request", _json({"error": str(e)}), "application/json"
        m = _STUDY.match(path)
        if m and m.group(2) and method == "POST":
            uid = m.group(1)
            if self.store.study(uid) is None:
                return "404 Not Found", _json({"error": f"unknown study {uid}"}), "application/json"
            action = self.reprocess if m.group(2) == "reprocess" else self.resend
            if action is not None and action(uid):
                return "202 Accepted", _json({"study_uid": uid, "queued": True, "action": m.group(2)}), \
                    "application/json"
            return "409 Conflict", _json({"study_uid": uid, "queued": False, "action": m.group(2),
                                          "state": self.store.study(uid).state.value}), "application/json"
        if m and not m.group(2) and method == "GET":
            rec = self.store.study(m.group(1))
            if rec is None:
                return "404 Not Found", _json({"error": f"unknown study {m.group(1)}"}), "application/json"
            return "200 OK", _json(self._detail(rec)), "application/json"
        return "404 Not Found", _json({"error": f"no route for {method} {path}"}), "application/json"

    def _list(self, query: str) -> list[dict[str, Any]]:
        params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        known = {s.value for s in StudyState}
        wanted = [s for s in params.get("state", "").split(",") if s]
        if set(wanted) - known:
            raise ValueError(f"unknown state(s) {sorted(set(wanted) - known)}; states: {sorted(known)}")
        if not params.get("limit", "100").isdigit():
            raise ValueError(f"'limit' must be a non-negative integer, got {params['limit']!r}")
        review = params.get("review", "")
        if review and review not in REVIEW_FILTERS:
            raise ValueError(f"'review' must be one of {list(REVIEW_FILTERS)}, got {review!r}")
        states = tuple(StudyState(s) for s in wanted)
        limit = int(params.get("limit", "100"))
        studies = sorted(self.store.studies(states), key=lambda r: r.updated, reverse=True)
        if review:
            # Only analysed studies have a review entry: "none" means analysed and nothing to look at.
            studies = [r for r in studies if "review" in r.detail
                       and bool(r.detail["review"].get("needed")) == (review == "needed")]
        studies = studies[:limit]
        return [_summary(r) for r in studies]

    def _detail(self, rec: StudyRecord) -> dict[str, Any]:
        out = _summary(rec)
        out.update(series=rec.detail.get("series", []), outputs=rec.detail.get("outputs", []),
                   exports=rec.detail.get("exports", []), inputs_deleted=bool(rec.detail.get("inputs_deleted")))
        doc_path = self.outputs_root / rec.study_uid / "measurements.json"
        if doc_path.exists():
            doc = json.loads(doc_path.read_text())
            out["series_flags"] = {s["series_instance_uid"]: s["flags"] for s in doc.get("series", [])}
            out["review"] = doc.get("review")
            bio = doc.get("biomechanics") or {}
            out["biomechanics"] = {"flags": bio.get("flags", []), "error": bio.get("error"),
                                   "feasible": [t["feasible"] for t in bio.get("tasks", [])]} if bio else None
        return out


def _summary(rec: StudyRecord) -> dict[str, Any]:
    return {"study_uid": rec.study_uid, "state": rec.state.value, "error": rec.reason or None,
            "instances": rec.n_instances, "first_received": rec.first_received, "last_received": rec.last_received,
            "updated": rec.updated, "timings_s": rec.detail.get("timings_s", {}),
            "series_with_levels_unverified": sum(1 for s in rec.detail.get("series", []) if s.get("level_unverified")),
            "review_needed": (rec.detail["review"].get("needed") if "review" in rec.detail else None),
            "review_reasons": (rec.detail.get("review") or {}).get("reasons", {})}


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=1).encode()


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("http %s", format % args)


def start_http(config: SpinegateConfig, app: StatusApi) -> WSGIServer:
    """Serve ``app`` in a daemon thread; call ``shutdown()`` to stop."""
    server = make_server(config.http.host, config.http.port, app, server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("http listening host=%s port=%d", config.http.host, server.server_port)
    return server
