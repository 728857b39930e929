"""The radiologist's view: spinegate's SEG as an overlay in OHIF, the key
images and PDF report a viewer without SEG support shows, and the T2
Parametric Map of a multi-echo study as a colour overlay.

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

pytestmark = [pytest.mark.integration, pytest.mark.heavy(seconds=140)]

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
            # The browser's Host goes along: Orthanc's DICOMweb plugin writes
            # its absolute BulkDataURIs (the PDF viewport fetches one) from it.
            headers = {k: v for k, v in self.headers.items() if k.lower() in ("accept", "range", "host")}
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


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A phantom study through ``spinegate analyze``: its T2 files and outputs."""
    if not (VIEWER / "package" / "dist" / "index.html").exists() or not (VIEWER / "node_modules").exists():
        pytest.fail(f"{VIEWER} lacks the OHIF viewer or playwright-core: run 'make test' (target {VIEWER}/.ready)")
    if not Path("/usr/bin/chromium").exists() or not Path(DICOMWEB_PLUGIN).exists():
        pytest.fail("chromium or orthanc-dicomweb is missing: run 'make test' (it installs the Debian peers)")
    tmp_path = tmp_path_factory.mktemp("viewer")
    study = write_phantom_study(tmp_path / "study", seed=7, rows=256, columns=256, pixel_spacing_mm=1.2,
                                study=StudyInfo(uid_seed="viewer-overlay"))
    t2 = [p for p in study["files"] if "T2" in str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription)]
    proc = subprocess.run([str(REPO / ".venv" / "bin" / "spinegate"), "--log-level", "WARNING", "analyze",
                           str(tmp_path / "study"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return study, t2, tmp_path / "out"


def _run_viewer(tmp_path, files, study_uid: str, script_name: str) -> tuple[dict, Path]:
    """Upload ``files`` to a DICOMweb Orthanc, serve OHIF against it, run
    the playwright script; its JSON report and the screenshots' folder."""
    node = require_tool("node")
    orthanc = Orthanc.start(tmp_path / "orthanc", free_port(), dicomweb=True)
    server = _viewer_server(VIEWER / "package" / "dist", orthanc.http_port)
    try:
        for f in files:
            orthanc.upload(f)
        script = VIEWER / script_name  # beside node_modules/, where playwright-core resolves
        for name in (script_name, "open_study.mjs"):
            shutil.copy(REPO / "tests" / "integration" / "viewer" / name, VIEWER / name)
        out = tmp_path / "shots"
        out.mkdir()
        run = subprocess.run([node, str(script), f"http://127.0.0.1:{server.server_address[1]}", study_uid, str(out)],
                             capture_output=True, text=True, timeout=300)
        report = json.loads(run.stdout.strip().splitlines()[-1])
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for png in out.glob("*.png"):
            shutil.copy(png, ARTIFACTS / png.name)
        return report, out
    finally:
        server.shutdown()
        orthanc.stop()


def test_seg_overlay_shows_in_ohif(analysed, tmp_path):
    study, t2, out_dir = analysed
    t2_series = str(pydicom.dcmread(t2[0], stop_before_pixels=True).SeriesInstanceUID)
    seg = next(p for p in out_dir.glob("seg_*.dcm")
               if pydicom.dcmread(p, stop_before_pixels=True).ReferencedSeriesSequence[0].SeriesInstanceUID == t2_series)
    report, out = _run_viewer(tmp_path, t2 + [seg], study["study_instance_uid"], "overlay.mjs")
    seg_errors = [e for e in report["errors"] if "seg" in e.lower() or "driver" in e]
    assert seg_errors == [], report
    assert "screenshots" in report["steps"], report
    before, after = _coloured_pixels(out / "before.png"), _coloured_pixels(out / "after.png")
    assert before < 50, before
    assert after > 1000, (after, report)


def test_key_images_and_pdf_report_show_in_ohif(analysed, tmp_path):
    """For a viewer without SEG support: the key image (burned-in outlines,
    in colour) in the viewport, and the PDF report in OHIF's PDF viewport,
    which fetches the document from the PACS."""
    study, t2, out_dir = analysed
    keys = [p for p in out_dir.glob("key_*.dcm")
            if pydicom.dcmread(p, stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID
            in {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in t2}]
    assert keys, "no key image of the T2 series"
    report, out = _run_viewer(tmp_path, t2 + keys + [out_dir / "report_pdf.dcm"], study["study_instance_uid"],
                              "key_images.mjs")
    assert [e for e in report["errors"] if "driver" in e] == [], report
    assert report["steps"] == ["viewport", "key-image", "pdf"], report
    assert _coloured_pixels(out / "key_image.png") > 1000, report  # the outlines, burned in
    pdf = report["pdf"]
    assert pdf["status"] == 200 and pdf["head"] == "%PDF-", pdf
    expected = pydicom.dcmread(out_dir / "report_pdf.dcm").EncapsulatedDocumentLength
    assert abs(pdf["length"] - expected) <= 1, (pdf, expected)  # the document, at most its padding byte more


def test_t2_parametric_map_shows_in_ohif(engines, tmp_path):
    """The T2 map of a multi-echo study loads in OHIF as a colour overlay."""
    from spinegate.dicom_io.phantom.multi_echo import write_multi_echo_phantom_study
    from spinegate.service.config import OutputsConfig, load_config
    from spinegate.service.pipeline import analyze_study

    truth = write_multi_echo_phantom_study(tmp_path / "src", seed=11)
    result = analyze_study(truth["files"], engines, load_config(environ={}).routing, tmp_path / "out",
                           biomechanics=False, outputs=OutputsConfig(key_images=False, pdf_report=False))
    (t2_map,) = [p for p in result.outputs if p.name.startswith("t2map_")]
    echo = [f for f in truth["files"] if float(pydicom.dcmread(f, stop_before_pixels=True).EchoTime) == 80.0]
    report, out = _run_viewer(tmp_path, echo + [t2_map], truth["study_instance_uid"], "pmap.mjs")
    assert [e for e in report["errors"] if "driver" in e or "pmap" in e.lower() or "parametric" in e.lower()] == [], \
        report
    assert "screenshots" in report["steps"], report
    before, after = _coloured_pixels(out / "pmap_before.png"), _coloured_pixels(out / "pmap_after.png")
    assert before < 50 and after > 1000, (before, after, report)
