"""The review worklist: what needs a person's look is flagged per result
with a coded reason in the SR and measurements.json, listed by the status
API's ``review`` filter and counted by a metric."""
from __future__ import annotations

import json
import time
import urllib.request

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage
from scipy import ndimage

from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.service.app import start_service
from spinegate.service.config import OutputsConfig, load_config
from spinegate.service.demo import free_port
from spinegate.service.pipeline import analyze_study
from spinegate.service.review import study_review

RULES = load_config(environ={}).routing
SIZE, MISSING, BODY_MISSED = (sg_codes.REASON[k].value for k in
                              ("implausible_size", "lumbar_level_missing", "level_naming_body_missed_in_column"))


def _sagittal_t2(out, seed_uid: str, blank: str | None = None):
    """A phantom sagittal T2 series; ``blank`` a body painted out (the
    network then misses it, as it misses a body on a poor real image)."""
    grid = sagittal_grid(15, 256, 256, 1.2, 4.0)
    image, labels = render_phantom(make_spine_phantom(1001), grid, "T2", subplanes=2)
    if blank:
        image = image.copy()
        image[ndimage.binary_dilation(labels == structure_by_name(blank).label, iterations=1)] = 0
    return write_mr_series(image, grid.affine, StudyInfo(seed_uid), SeriesSpec(3, "SAG T2", 3500, 100, 4.0), out)


@pytest.fixture(scope="module")
def l3_missed(tmp_path_factory, engines):
    out = tmp_path_factory.mktemp("review")
    result = analyze_study(_sagittal_t2(out / "in", "review-l3", blank="L3"), engines, RULES, out / "out",
                           biomechanics=False)
    return result, json.loads(result.measurements_path.read_text())


def _sr_reasons(sr_path) -> dict[str, tuple[bool, set[str]]]:
    """Tracking identifier → (needs review, coded reasons) per SR group."""
    sr = hd.sr.srread(sr_path)
    out = {}
    for g in sr.content.get_volumetric_roi_measurement_groups():
        needs = g.get_qualitative_evaluations(name=sg_codes.NEEDS_REVIEW)[0].value == codes.SCT.Yes
        out[g.tracking_identifier] = (needs, {e.value.value for e in
                                              g.get_qualitative_evaluations(name=sg_codes.REVIEW_REASON)})
    return out


def test_each_structure_near_a_missed_body_carries_its_own_coded_reason(l3_missed):
    result, doc = l3_missed
    structures = {m["level"]: m for m in doc["series"][0]["structures"]}
    assert "L3" not in structures
    # The disc that swallowed the blanked body is too large; the structures beside the gap say a level is missing.
    assert any(f.startswith("implausible_size_volume") for f in structures["L2L3"]["flags"])
    assert "lumbar_level_missing_L3" in structures["L2L3"]["flags"]
    assert "lumbar_level_missing_L3" in structures["L4"]["flags"]
    assert not any(f.startswith(("implausible_size", "lumbar_level_missing")) for f in structures["L1"]["flags"])
    reasons = {lv: {r.split()[0] for r in m["review_reasons"]} for lv, m in structures.items()}
    assert {SIZE, MISSING, BODY_MISSED} <= reasons["L2L3"]
    assert MISSING in reasons["L4"] and SIZE not in reasons["L4"]
    assert reasons["L1"] == {BODY_MISSED}  # the series' counting flag applies to every level
    sr = _sr_reasons(result.sr_path)
    l2l3 = next(v for k, v in sr.items() if k.startswith("L2-L3 intervertebral disc"))
    l1 = next(v for k, v in sr.items() if k.startswith("L1 vertebral body"))
    assert l2l3[0] and {SIZE, MISSING, BODY_MISSED} <= l2l3[1]
    assert l1[0] and l1[1] == {BODY_MISSED}


def test_the_study_worklist_entry_lists_each_result_and_counts_reasons(l3_missed):
    result, doc = l3_missed
    review = doc["review"]
    assert review == result.review == study_review(doc)
    assert review["needed"]
    by_result = {i["result"]: i for i in review["items"]}
    assert SIZE in {r.split()[0] for r in by_result["L2-L3 intervertebral disc"]["review_reasons"]}
    assert review["reasons"][f"{SIZE} {sg_codes.REASON['implausible_size'].meaning}"] == 1


def test_key_images_and_pdf_report_show_the_results_and_what_needs_review(l3_missed):
    import pypdfium2

    from conftest import dciodvfy_errors

    result, doc = l3_missed
    names = [p.name for p in result.outputs]
    keys = [p for p in result.outputs if p.name.startswith("key_")]
    assert keys and names[-1] == "sr.dcm" and "report_pdf.dcm" in names and doc["outputs"] == names
    for path in keys + [result.sr_path.with_name("report_pdf.dcm")]:
        assert dciodvfy_errors(path) == [], path.name
    sc = pydicom.dcmread(keys[0])
    assert sc.SeriesDescription == "spinegate key images: SAG T2" and sc.BurnedInAnnotation == "YES"
    pdf = pydicom.dcmread(result.sr_path.with_name("report_pdf.dcm"))
    text = "".join(page.get_textpage().get_text_range()
                   for page in pypdfium2.PdfDocument(pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength]))
    text = " ".join(text.split())
    assert "Derived — not for primary diagnosis" in text and "Limits" in text
    assert "L2-L3 intervertebral disc" in text and "Size implausible beside its neighbours" in text
    l4 = next(m for m in doc["series"][0]["structures"] if m["level"] == "L4")
    assert f"{l4['height_mm']:.1f} ± {l4['height_mae_mm']:.1f}" in text  # the table carries the validated MAE
    assert (result.sr_path.parent / "report.pdf").read_bytes() == pdf.EncapsulatedDocument[:pdf.EncapsulatedDocumentLength]


def test_a_clean_study_needs_no_review_and_assumed_inputs_are_not_review(phantom_study, engines, tmp_path):
    result = analyze_study(phantom_study["files"], engines, RULES, tmp_path / "out", biomechanics=False,
                           outputs=OutputsConfig(key_images=False, pdf_report=False))
    assert [p.name for p in result.outputs if not p.name.startswith("seg_")] == ["sr.dcm"]  # as configured
    assert result.review == {"needed": False, "items": [], "reasons": {}}
    # Only thoracic structures cut at the top of the field may be flagged, in their own SR
    # groups (whether the model finds a sliver of T10-T11 there varies between models)...
    flagged = [k for k, (needs, _) in _sr_reasons(result.sr_path).items() if needs]
    assert all(k.startswith(("T10", "T11")) for k in flagged), flagged
    # ...and such a structure does not put the study on the worklist.
    cut = {"series": [{"series_instance_uid": "1.2.3", "description": "SAG T2", "flags": [], "structures": [
        {"level": "T10T11", "label": "T10-T11 intervertebral disc",
         "flags": ["touches_field_of_view_edge", "low_model_confidence_0.60"]},
        {"level": "L3", "label": "L3 vertebral body", "flags": []}]}]}
    assert study_review(cut) == {"needed": False, "items": [], "reasons": {}}
    cut["series"][0]["structures"][1]["flags"] = ["touches_field_of_view_edge"]
    assert study_review(cut)["needed"]
    doc = {"series": [], "biomechanics": {"flags": ["default_height_used"], "tasks": [
        {"description": "60 deg flexion", "flags": [], "feasible": False}]}}
    review = study_review(doc)
    assert [i["result"] for i in review["items"]] == ["Spinal loads, 60 deg flexion"]
    assert review["items"][0]["review_reasons"] == ["SG0046 Pose infeasible, muscles too weak"]


def _get(cfg, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http.port}{path}", timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.integration
def test_status_api_filters_the_worklist_and_a_metric_counts_it(tmp_path, engines):
    cfg = load_config(overrides={"network": {"port": free_port()}, "http": {"port": free_port()},
                                 "storage": {"root": tmp_path / "var"}, "assembly": {"quiet_period_s": 3600},
                                 "biomechanics": {"enabled": False}}, environ={})
    svc = start_service(cfg, load_model=False)
    svc.worker._engines = engines  # the session's loaded engines, not a second load
    try:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(MRImageStorage)
        uids = {}
        for name, blank in (("clean", None), ("missed", "L3")):
            datasets = [pydicom.dcmread(p) for p in _sagittal_t2(tmp_path / name, f"review-api-{name}", blank)]
            assoc = ae.associate("127.0.0.1", cfg.network.port, ae_title=cfg.network.ae_title)
            assert all(assoc.send_c_store(ds).Status == 0 for ds in datasets)
            assoc.release()
            uids[name] = str(datasets[0].StudyInstanceUID)
        svc.worker.huey.immediate = True  # each study analysed now, in this thread
        for uid in uids.values():
            assert svc.worker.request_processing(uid)
        assert {s["state"] for s in _get(cfg, "/api/studies")["studies"]} == {"exported"}
        assert [s["study_uid"] for s in _get(cfg, "/api/studies?review=needed")["studies"]] == [uids["missed"]]
        assert [s["study_uid"] for s in _get(cfg, "/api/studies?review=none")["studies"]] == [uids["clean"]]
        detail = _get(cfg, f"/api/studies/{uids['missed']}")
        assert detail["review_needed"] and any(i["result"].startswith("L2-L3") for i in detail["review"]["items"])
        with pytest.raises(urllib.error.HTTPError):
            _get(cfg, "/api/studies?review=maybe")
        with urllib.request.urlopen(f"http://127.0.0.1:{cfg.http.port}/metrics", timeout=10) as r:
            metrics = r.read().decode()
        assert "spinegate_studies_needing_review_total 1.0" in metrics
        assert f'spinegate_review_reasons_total{{reason="{SIZE}"}} 1.0' in metrics
    finally:
        svc.shutdown()


def test_output_kinds_and_per_destination_objects(l3_missed, tmp_path):
    from pydantic import ValidationError

    from spinegate.service.config import Destination, OutputKind
    from spinegate.service.export import objects_for, output_kind

    result, _ = l3_missed
    kinds = [output_kind(p) for p in result.outputs]
    assert kinds[0] is OutputKind.SEG and kinds[-2:] == [OutputKind.PDF_REPORT, OutputKind.SR]
    assert OutputKind.KEY_IMAGES in kinds
    not_dicom = tmp_path / "measurements.json"
    not_dicom.write_text("{}")
    with pytest.raises(ValueError, match="'measurements.json' is not a readable DICOM file"):
        output_kind(not_dicom)
    viewer_only = Destination("VIEWER", "127.0.0.1", 104, objects=["key_images", "pdf_report"])
    assert [output_kind(p) for p in objects_for(result.outputs, viewer_only)] == [
        k for k in kinds if k in (OutputKind.KEY_IMAGES, OutputKind.PDF_REPORT)]
    # An object of no known kind (here an MR image) goes only where every kind goes.
    source = result.series[0]
    mr = next((result.sr_path.parent.parent / "in").rglob("*.dcm"))
    assert output_kind(mr) is None and source.seg_path is not None
    assert objects_for([mr], viewer_only) == [] and objects_for([mr], Destination("PACS", "127.0.0.1", 104)) == [mr]
    assert Destination("PACS", "127.0.0.1", 104).objects == tuple(OutputKind)  # everything by default
    with pytest.raises(ValidationError, match="objects"):
        Destination("PACS", "127.0.0.1", 104, objects=[])
    with pytest.raises(ValidationError, match="objects"):
        Destination("PACS", "127.0.0.1", 104, objects=["screenshots"])


@pytest.mark.integration
def test_a_viewer_destination_receives_only_the_key_images_and_the_pdf(l3_missed, tmp_path):
    from conformance.pacs import StoreSCP
    from spinegate.service.config import Destination, ExportConfig
    from spinegate.service.export import deliver_round, initial_status

    result, _ = l3_missed
    pacs, viewer = StoreSCP.start(tmp_path / "pacs", free_port()), StoreSCP.start(tmp_path / "viewer", free_port(),
                                                                                   ae_title="VIEWER")
    try:
        config = ExportConfig(destinations=(Destination("PACS", "127.0.0.1", pacs.port),
                                            Destination("VIEWER", "127.0.0.1", viewer.port,
                                                        objects=["key_images", "pdf_report"])))
        statuses = deliver_round(result.outputs, config, initial_status(config))
        assert all(s.confirmed for s in statuses), statuses
        uid = result.study_uid
        at_pacs = pacs.wait_for(uid, n_seg=1, n_key_images=1, n_pdf=1)
        assert sum(len(v) for v in at_pacs.values()) == len(result.outputs)
        deadline = time.monotonic() + 30
        while not viewer.objects(uid)["DOC"] and time.monotonic() < deadline:
            time.sleep(0.2)
        at_viewer = viewer.objects(uid)
        keys = [p for p in result.outputs if p.name.startswith("key_")]
        assert (len(at_viewer["OT"]), len(at_viewer["DOC"]), at_viewer["SEG"], at_viewer["SR"]) == (len(keys), 1, [], [])
    finally:
        pacs.stop()
        viewer.stop()
