"""The radiologist's view: spinegate's SEG as an overlay in OHIF.

The prebuilt OHIF viewer (npm @ohif/app 3.13.2, its dist/, fetched by `make
test`) is served with deploy/viewer/app-config.js against the Debian Orthanc's
DICOMweb plugin; headless Debian Chromium, driven by playwright-core, opens
the processed study and loads the SEG. Asserted: no SEG error in the
console, no coloured pixel before the SEG loads, thousands after. The
screenshots are kept as test artifacts (bench/results/viewer/)."""
from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import REPO, require_tool
from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from peers import DICOMWEB_PLUGIN, Orthanc, free_port

pytestmark = pytest.mark.integration

VIEWER = REPO / ".cache" / "viewer"
ARTIFACTS = REPO / "bench" / "results" / "viewer"


def _viewer_server(dist: Path, orthanc_http: int) -> http.server.ThreadingHTTPServer:
    """Serve dist/ (with our app-config.js, SPA fallback) and proxy /dicom-web
    and /wado to Orthanc from the same origin."""
    config = (REPO / "deploy" / "viewer" / "app-config.js").read_bytes()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(dist), **k)

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):  # noqa: N802 - stdlib name
            path = self.path.split("?", 1)[0]
            if path.startswith(("/dicom-web", "/wado")):
                return self._proxy()
            if path == "/app-config.js":
                return self._send(200, config, "application/javascript")
            if not (dist / path.lstrip("/")).is_file():
                self.path = "/index.html"
            return super().do_GET()

        def _proxy(self):
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range")}
            req = urllib.request.Request(f"http://127.0.0.1:{orthanc_http}{self.path}", headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=60) as r:
                    self._send(r.status, r.read(), r.headers.get("Content-Type", "application/octet-stream"))
            except urllib.error.HTTPError as e:
                self._send(e.code, e.read(), e.headers.get("Content-Type", "text/plain"))

        def _send(self, status, body, ctype):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _coloured_pixels(png: Path) -> int:
    from PIL import Image

    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    h, w, _ = rgb.shape
    # The central 80 %: the viewer draws its (blue) tool icons and scroll bar
    # in the corners and edges of the viewport.
    centre = rgb[h // 10 : h - h // 10, w // 10 : w - w // 10]
    spread = centre.max(axis=2) - centre.min(axis=2)
    return int((spread > 60).sum())  # grey MR pixels have r = g = b


def test_seg_overlay_shows_in_ohif(tmp_path):
    node = require_tool("node")
    if not (VIEWER / "package" / "dist" / "index.html").exists() or not (VIEWER / "node_modules").exists():
        pytest.fail(f"{VIEWER} lacks the OHIF viewer or playwright-core: run 'make test' (target {VIEWER}/.ready)")
    if not Path("/usr/bin/chromium").exists() or not Path(DICOMWEB_PLUGIN).exists():
        pytest.fail("chromium or orthanc-dicomweb is missing: run 'make test' (it installs the Debian peers)")
    study = write_phantom_study(tmp_path / "study", seed=7, rows=256, columns=256, pixel_spacing_mm=1.2,
                                study=StudyInfo(uid_seed="viewer-overlay"))
    t2 = [p for p in study["files"] if "T2" in str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription)]
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "spinegate"), "--log-level", "WARNING", "analyze",
                           str(tmp_path / "study"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    t2_series = str(pydicom.dcmread(t2[0], stop_before_pixels=True).SeriesInstanceUID)
    seg = next(p for p in (tmp_path / "out").glob("seg_*.dcm")
               if pydicom.dcmread(p, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID == t2_series)
    orthanc = Orthanc.start(tmp_path / "orthanc", free_port(), dicomweb=True)
    server = _viewer_server(VIEWER / "package" / "dist", orthanc.http_port)
    try:
        for f in t2 + [seg]:
            orthanc.upload(f)
        script = VIEWER / "overlay.mjs"
        shutil.copy(REPO / "tests" / "integration" / "viewer" / "overlay.mjs", script)
        out = tmp_path / "shots"
        out.mkdir()
        run = subprocess.run([node, str(script), f"http://127.0.0.1:{server.server_address[1]}",
                              study["study_instance_uid"], str(out)], capture_output=True, text=True, timeout=300)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, ARTIFACTS / png.name)
        seg_errors = [e for e in report["errors"] if "seg" in e.lower() or "driver" in e]
        assert seg_errors == [], report
        assert "screenshots" in report["steps"], report
        before, after = _coloured_pixels(out / "before.png"), _coloured_pixels(out / "after.png")
        assert before < 50, before
        assert after > 1000, (after, report)
    finally:
        server.shutdown()
        orthanc.stop()
