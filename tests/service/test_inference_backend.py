"""The inference backend the service runs on (``inference.backend``) is
reported where a reader or operator looks: the models in measurements.json,
the SR's and SEG's algorithm identification, the model metric (tested in
test_http_api). ``auto`` is the backend here: a GPU one on a CUDA machine,
the CPU one elsewhere."""
from __future__ import annotations

import json

import pydicom
import pytest

from conftest import MODEL_DIR
from spinegate.service.config import OutputsConfig, load_config
from spinegate.service.engines import Engines
from spinegate.service.pipeline import analyze_study


@pytest.fixture(scope="module")
def auto_engines():
    return Engines(MODEL_DIR, backend="auto")


def test_engines_report_the_backend_they_run_on(auto_engines):
    engines = auto_engines
    sagittal, axial = engines.get("sagittal_spine"), engines.get("axial_muscle")
    assert sagittal.info.backend == sagittal.backend.name and axial.info.backend == axial.backend.name
    assert engines.model_info("sagittal_spine").backend == sagittal.backend.name
    if axial.backend.name.endswith("-cuda"):  # the INT8 model is a CPU model: a GPU runs the float one
        assert axial.info.name == "axial_muscle" and engines.device_memory_bytes() is not None
    else:
        assert axial.info.name == "axial_muscle.int8" and engines.device_memory_bytes() is None



def test_measurements_json_the_sr_and_the_seg_name_the_backend(auto_engines, phantom_study, tmp_path):
    t2 = [f for f in phantom_study["files"] if f.name.startswith("003_")]
    result = analyze_study(t2, auto_engines, load_config(environ={}).routing, tmp_path, biomechanics=False,
                           outputs=OutputsConfig(key_images=False, pdf_report=False))
    backend = auto_engines.get("sagittal_spine").backend.name
    doc = json.loads(result.measurements_path.read_text())
    assert doc["model"]["inference_backend"] == backend
    assert {m["inference_backend"] for m in doc["models"]} == {backend}
    sr = pydicom.dcmread(result.sr_path)
    parameters = {item.TextValue for item in _content_items(sr) if item.get("ConceptNameCodeSequence")
                  and item.ConceptNameCodeSequence[0].CodeMeaning == "Algorithm Parameters"}
    assert f"inference_backend={backend}" in parameters
    seg = pydicom.dcmread(result.series[0].seg_path)
    algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert f"inference_backend={backend}" in str(algorithm.AlgorithmParameters)


def _content_items(ds):
    for item in ds.get("ContentSequence", []):
        yield item
        yield from _content_items(item)
