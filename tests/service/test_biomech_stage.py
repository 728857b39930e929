"""The biomechanics stage: subject from the header, loads into the SR (coded,
UCUM, dciodvfy-clean) and measurements.json, flags for bad anatomy, and the
``spinegate loads`` command on a measurements.json alone."""
from __future__ import annotations

import json
import subprocess
import sys

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from spinegate.biomech.loads import FLEXION_60_5KG
from spinegate.biomech.spine_geometry import CHAIN
from conftest import REPO, dciodvfy_errors
from spinegate.dicom_io import codes as sg_codes
from spinegate.dicom_io.phantom import make_spine_phantom
from spinegate.service.biomech_stage import (
    centroids_from_document,
    load_report,
    run_stage,
    subject_from_document,
    subject_from_header,
)

pytest.importorskip("opensim")


def phantom_centroids(seed: int = 6) -> dict:
    return {e.name: e.centre_lps for e in make_spine_phantom(seed).elements}


def measurements_json(path, centroids: dict, subject: dict | None = None) -> None:
    doc = {"schema": "spinegate.measurements/1",
           "series": [{"structures": [{"level": n, "centroid_lps_mm": [float(v) for v in c]}
                                      for n, c in centroids.items()]}]}
    if subject:
        doc["biomechanics"] = {"subject": subject}
    path.write_text(json.dumps(doc))


def test_subject_comes_from_the_header_and_missing_values_are_flagged():
    ds = Dataset()
    ds.PatientSize, ds.PatientWeight, ds.PatientSex = "1.62", "58", "F"
    s = subject_from_header(ds)
    assert (s.height_m, s.mass_kg, s.sex.value, s.defaults_used) == (1.62, 58.0, "F", ())
    empty = subject_from_header(Dataset())
    assert set(empty.defaults_used) == {"default_height_used", "default_weight_used", "default_sex_used"}
    ds.PatientSize = "162"  # centimetres by mistake: implausible → default, flagged
    assert "default_height_used" in subject_from_header(ds).defaults_used


def test_document_round_trip_keeps_the_subject_and_the_richest_series(tmp_path):
    cents = phantom_centroids()
    doc = {"series": [{"structures": [{"level": "L3", "centroid_lps_mm": [0, 0, 0]}]},
                      {"structures": [{"level": n, "centroid_lps_mm": list(map(float, c))} for n, c in cents.items()]}],
           "biomechanics": {"subject": {"height_m": 1.6, "mass_kg": 60, "sex": "F", "defaults_used": []}}}
    centroids, distrusted = centroids_from_document(doc)
    assert set(centroids) == set(cents) & set(CHAIN) and len(centroids) > 3 and distrusted == {}
    s = subject_from_document(doc)
    assert (s.height_m, s.mass_kg, s.sex.value) == (1.6, 60.0, "F")


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    ds = Dataset()
    cents = phantom_centroids()
    cents.pop("T12")  # top of the field of view cut: T12 is extrapolated and flagged
    return run_stage(cents, subject_from_header(ds), tmp_path_factory.mktemp("bio"))


def test_missing_levels_and_defaults_are_flagged_but_loads_are_computed(stage):
    assert "level_extrapolated_T12" in stage.flags
    assert "muscle_strength_from_literature_defaults" in stage.flags  # no axial series
    assert "default_weight_used" in stage.flags
    assert [t.task.name for t in stage.tasks] == ["upright_standing", FLEXION_60_5KG.name]
    doc = stage.document()
    flexion = doc["tasks"][1]
    assert flexion["joints"]["L5S1"]["compression_n"] > 2000
    assert flexion["pelvis_tilt_deg"] + sum(flexion["joint_flexion_deg"].values()) == pytest.approx(60.0, abs=0.05)
    assert (stage.tasks[0].files["model"]).exists()


def _sr_with_loads(tmp_path, report):
    """A minimal SR: the phantom SEG/SR fixture's series plus the loads."""
    from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
    from spinegate.dicom_io.phantom import render_phantom, sagittal_grid
    from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation, segment_numbers
    from spinegate.dicom_io.sr import SeriesReport, build_measurement_report
    from spinegate.dicom_io.uids import derive_uid
    from spinegate.dicom_io.volume import read_series
    from spinegate.biomech.morphometry import measure_structure
    import pydicom

    algo = AlgorithmInfo("sagittal_spine", "test", "0" * 64)
    grid = sagittal_grid(5, 96, 96, 3.0, 4.0)
    image, labels = render_phantom(make_spine_phantom(6), grid, "T2", subplanes=1)
    paths = write_mr_series(image, grid.affine, StudyInfo("bio"), SeriesSpec(3, "SAG T2", 3500, 100, 4.0), tmp_path)
    datasets = [pydicom.dcmread(p) for p in paths]
    volume = read_series(datasets)
    label_map = np.ascontiguousarray(labels[::-1])
    seg = build_segmentation(volume, datasets, label_map, algo, derive_uid("b", "s"), derive_uid("b", "g"), 9003, "t")
    present = segment_numbers(label_map)[:2]
    ms = [measure_structure(label_map == s.label, volume.affine, s) for s in present]
    sr = build_measurement_report([SeriesReport(volume, datasets, seg, {s.label: i + 1 for i, s in enumerate(present)},
                                                ms, "SAG T2")], algo, derive_uid("b", "r"), derive_uid("b", "q"),
                                  9999, "t", report)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path


def test_sr_carries_coded_loads_per_level_and_task_with_inputs_and_reasons(stage, tmp_path):
    path = _sr_with_loads(tmp_path, load_report(stage))
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    load_groups = sr.content.get_image_measurement_groups(finding_type=sg_codes.SPINAL_LOAD)
    # inputs + 2 tasks × (6 discs + 5 bodies)
    assert len(load_groups) == 1 + 2 * 11
    inputs = load_groups[0]
    assert inputs.get_measurements(name=sg_codes.BODY_WEIGHT)[0].value == pytest.approx(79.6)
    reasons = {e.value.value for e in inputs.get_qualitative_evaluations(name=sg_codes.REVIEW_REASON)}
    assumed = {e.value.value for e in inputs.get_qualitative_evaluations(name=sg_codes.ASSUMED_INPUT)}
    # An extrapolated level is a result to look at; defaulted inputs are said, not put up for review.
    assert sg_codes.REASON["level_extrapolated"].value in reasons
    assert {sg_codes.REASON["default_weight_used"].value,
            sg_codes.REASON["muscle_strength_from_literature_defaults"].value} <= assumed
    assert not assumed & reasons
    flexion_l5s1 = [g for g in load_groups if "L5-S1" in g.tracking_identifier and "60" in g.tracking_identifier]
    assert len(flexion_l5s1) == 1
    c = flexion_l5s1[0].get_measurements(name=sg_codes.DISC_COMPRESSION)[0]
    assert c.unit.value == "N"
    assert float(c.value) == pytest.approx(stage.tasks[1].joints["L5S1"].compression_n, abs=0.1)


def test_implausible_centroids_give_a_flag_in_the_sr_not_a_crash(tmp_path):
    cents = phantom_centroids()
    for i, name in enumerate(sorted(cents)):  # a zig-zag no left-out centroid can straighten
        if i % 2:
            cents[name] = cents[name] + np.array([0.0, -30.0, 0.0])
    result = run_stage(cents, subject_from_header(Dataset()), tmp_path / "bio")
    assert result.tasks == [] and "implausible_centroids" in result.flags and result.error
    path = _sr_with_loads(tmp_path, load_report(result))
    assert dciodvfy_errors(path) == []
    groups = hd.sr.srread(path).content.get_image_measurement_groups(finding_type=sg_codes.SPINAL_LOAD)
    assert len(groups) == 1
    reasons = {e.value.value for e in groups[0].get_qualitative_evaluations(name=sg_codes.REVIEW_REASON)}
    assert {sg_codes.REASON["biomechanics_not_run"].value, sg_codes.REASON["implausible_centroids"].value} <= reasons


def _loads_cli(*args):
    return subprocess.run([sys.executable, "-m", "spinegate.service.cli", "--log-level", "WARNING", "loads", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_loads_command_runs_from_a_measurements_json_alone(tmp_path):
    m = tmp_path / "measurements.json"
    measurements_json(m, phantom_centroids(), {"height_m": 1.75, "mass_kg": 79.6, "sex": "M", "defaults_used": []})
    proc = _loads_cli(str(m), "--weight-kg", "90")
    assert proc.returncode == 0, proc.stderr
    assert "60 deg trunk flexion" in proc.stdout and "L5S1" in proc.stdout
    block = json.loads((tmp_path / "biomech" / "loads.json").read_text())
    assert block["subject"]["mass_kg"] == 90 and block["subject"]["defaults_used"] == []
    assert (tmp_path / "biomech" / FLEXION_60_5KG.name / f"{FLEXION_60_5KG.name}.osim").exists()


def test_loads_command_reports_unusable_anatomy_with_exit_3(tmp_path):
    m = tmp_path / "measurements.json"
    measurements_json(m, {"L3": [0, 0, 0], "L4": [0, 0, -30]})
    proc = _loads_cli(str(m), "--out", str(tmp_path / "o"))
    assert proc.returncode == 3
    assert "too_few_levels" in proc.stdout


def test_loads_command_refuses_an_implausible_override(tmp_path):
    m = tmp_path / "measurements.json"
    measurements_json(m, phantom_centroids())
    proc = _loads_cli(str(m), "--weight-kg", "500", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "implausible" in proc.stderr


def test_solver_process_gives_the_loads_of_an_in_process_solve(stage, tmp_path):
    """The service solves in a child process (beside the SEG and SR
    writing); the answer is the one this process computes."""
    from spinegate.service.biomech_stage import BiomechSolver

    cents = phantom_centroids()
    cents.pop("T12")
    solver = BiomechSolver()
    try:
        solver.start()
        result = solver.solve(cents, subject_from_header(Dataset()), tmp_path / "bio")()
    finally:
        solver.close()
    assert result.flags == stage.flags
    for mine, theirs in zip(result.tasks, stage.tasks):
        assert mine.joints["L5S1"].compression_n == pytest.approx(theirs.joints["L5S1"].compression_n, rel=1e-9)
    assert result.tasks[0].files["model"].exists()


def test_solver_process_that_dies_costs_a_slower_study_not_a_lost_one(tmp_path):
    import os
    import signal

    from spinegate.service.biomech_stage import BiomechSolver

    solver = BiomechSolver()
    try:
        solver.start()
        pids = list(solver._executor()._processes)  # the spawned child
        assert len(pids) == 1
        os.kill(pids[0], signal.SIGKILL)
        result = solver.solve(phantom_centroids(), subject_from_header(Dataset()), tmp_path / "a")()
        assert result.tasks and not result.error  # solved in this process instead
        again = solver.solve(phantom_centroids(), subject_from_header(Dataset()), tmp_path / "b")()
        assert list(solver._executor()._processes) != pids  # a new child for the next study
        assert [t.joints["L5S1"].compression_n for t in again.tasks] == \
            [t.joints["L5S1"].compression_n for t in result.tasks]
    finally:
        solver.close()


def test_solver_process_ends_with_a_killed_parent(tmp_path):
    import os
    import signal
    import time

    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from spinegate.service.biomech_stage import BiomechSolver\n"
        "if __name__ == '__main__':\n"
        "    solver = BiomechSolver()\n"
        "    solver.start()\n"
        "    print(*solver._executor()._processes, flush=True)\n"
        "    time.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait(timeout=10)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.kill(child, signal.SIGKILL)
    pytest.fail(f"solver process {child} outlived its killed parent")


def test_edge_cut_and_small_structures_are_not_joint_centres_and_loads_still_come(tmp_path):
    """The measured chain with the field's failure modes: the lowest disc cut
    by the field of view, one disc a fifth the size of its neighbours, and
    S1 a displaced sliver; the loads are computed, each left-out centroid
    flagged, and the SR names the review reason."""
    cents = phantom_centroids()
    volumes = {n: (12.0 if n in JOINTS_SET else 40.0) for n in cents}
    volumes["L3L4"] = 2.5
    flags = {n: () for n in cents}
    flags["L5S1"] = ("touches_field_of_view_edge",)
    cents["L5S1"] = cents["L5S1"] + np.array([0.0, -25.0, 0.0])
    cents["L3L4"] = cents["L3L4"] + np.array([0.0, 18.0, 0.0])
    cents["S1"] = cents["S1"] + np.array([0.0, -45.0, 0.0])
    doc = {"series": [{"structures": [{"level": n, "centroid_lps_mm": list(map(float, c)), "volume_cm3": volumes[n],
                                       "flags": list(flags[n])} for n, c in cents.items()]}]}
    centroids, distrusted = centroids_from_document(doc)
    assert distrusted == {"L5S1": "field_of_view_edge", "L3L4": "implausibly_small"}
    result = run_stage(centroids, subject_from_header(Dataset()), tmp_path / "bio", distrusted=distrusted)
    assert result.error == "" and len(result.tasks) == 2
    assert {"centroid_not_used_L5S1_field_of_view_edge", "centroid_not_used_L3L4_implausibly_small",
            "centroid_not_used_S1_off_the_chain"} <= set(result.flags)
    path = _sr_with_loads(tmp_path, load_report(result))
    assert dciodvfy_errors(path) == []
    groups = hd.sr.srread(path).content.get_image_measurement_groups(finding_type=sg_codes.SPINAL_LOAD)
    reasons = {e.value.value for g in groups for e in g.get_qualitative_evaluations(name=sg_codes.REVIEW_REASON)}
    assert sg_codes.REASON["centroid_not_used"].value in reasons


JOINTS_SET = {"L5S1", "L4L5", "L3L4", "L2L3", "L1L2", "T12L1", "T11T12"}
