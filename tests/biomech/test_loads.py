"""OpenSim static optimisation + joint reaction on the subject model:
validation against BIOMECH.md reference loads, sensitivity, infeasibility.

Reference spine: the analytic phantom of seed 6 (sacral slope 35°, lordosis
42°, size ×1.01 — the middle of the phantom's ranges), exact centroids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spinegate.biomech.anthropometry import Subject
from spinegate.biomech.loads import FLAG_INFEASIBLE, FLEXION_60_5KG, GRAVITY, UPRIGHT, Task, solve_task
from spinegate.biomech.muscles import REFERENCE_ACSA_CM2
from spinegate.biomech.spine_geometry import JOINTS, spine_geometry
from spinegate.dicom_io.phantom import make_spine_phantom

pytest.importorskip("opensim", reason="opensim is a runtime dependency: pip install -e .")

REFERENCE_PHANTOM_SEED = 6
# BIOMECH.md, Bruno-lineage model, 79.6 kg male; L5S1 … T12L1 (N).
REFERENCE_FLEXION_60_5KG_N = (2828, 2220, 2058, 2014, 1934, 1902)
REFERENCE_UPRIGHT_N = (817, 634, 578, 565, 573, 599)
ARJMAND_65DEG_180N_L5S1_RANGE_N = (3300, 3900)
ARJMAND_TASK = Task("flexion_65deg_180N_in_hands", 65.0, 180.0 / 2 / GRAVITY, "Arjmand & Shirazi-Adl 2006")


def geometry_of(seed: int = REFERENCE_PHANTOM_SEED):
    return spine_geometry({e.name: e.centre_lps for e in make_spine_phantom(seed).elements})


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    subject = Subject(1.75, 79.6)
    out = tmp_path_factory.mktemp("reference")
    return {t.name: solve_task(subject, geometry_of(), t, out / t.name)
            for t in (UPRIGHT, FLEXION_60_5KG, ARJMAND_TASK)}


def compressions(result) -> np.ndarray:
    return np.array([result.joints[j].compression_n for j in JOINTS])


def test_flexion_60_with_5kg_in_each_hand_is_within_20_percent_of_the_reference_model(reference):
    ours = compressions(reference[FLEXION_60_5KG.name])
    np.testing.assert_array_less(np.abs(ours / REFERENCE_FLEXION_60_5KG_N - 1), 0.20)
    assert reference[FLEXION_60_5KG.name].feasible


def test_upright_standing_is_within_25_percent_of_the_reference_model(reference):
    ours = compressions(reference[UPRIGHT.name])
    np.testing.assert_array_less(np.abs(ours / REFERENCE_UPRIGHT_N - 1), 0.25)


def test_l5s1_at_65_degrees_with_180n_in_the_hands_is_in_arjmands_range(reference):
    l5s1 = reference[ARJMAND_TASK.name].joints["L5S1"].compression_n
    assert ARJMAND_65DEG_180N_L5S1_RANGE_N[0] <= l5s1 <= ARJMAND_65DEG_180N_L5S1_RANGE_N[1]


def test_flexion_loads_rise_caudally_and_vertebral_bodies_carry_their_lower_disc_load(reference):
    r = reference[FLEXION_60_5KG.name]
    c = compressions(r)
    assert c[0] == max(c)  # L5S1 highest
    for body, joint in (("L5", "L5S1"), ("L3", "L3L4"), ("L1", "L1L2")):
        assert r.vertebral_body_compression_n[body] == pytest.approx(r.joints[joint].compression_n, rel=0.05)


def test_reserves_are_negligible_and_results_are_saved_for_researchers(reference):
    r = reference[FLEXION_60_5KG.name]
    assert all(abs(j.reserve_torque_nm) < 0.5 for j in r.joints.values())
    for path in r.files.values():
        assert path.exists() and path.stat().st_size > 0
    assert r.files["model"].suffix == ".osim"


def test_symmetric_input_gives_symmetric_forces(reference):
    forces = reference[FLEXION_60_5KG.name].muscle_forces_n
    for name, f in forces.items():
        if name.endswith("_r"):
            assert forces[name[:-2] + "_l"] == pytest.approx(f, rel=1e-6, abs=1e-6)


def test_loads_scale_with_body_weight(tmp_path):
    light = solve_task(Subject(1.75, 60.0), geometry_of(), FLEXION_60_5KG, tmp_path / "light")
    heavy = solve_task(Subject(1.75, 100.0), geometry_of(), FLEXION_60_5KG, tmp_path / "heavy")
    ratio = compressions(heavy) / compressions(light)
    # Segment masses scale with body mass; the 2 × 5 kg in the hands do not.
    assert np.all(ratio > 1.3) and np.all(ratio < 100 / 60)


def test_halving_erector_spinae_area_raises_its_activation(tmp_path):
    full = {("erector_spinae", s): REFERENCE_ACSA_CM2["erector_spinae"] for s in "rl"}
    half = {k: v / 2 for k, v in full.items()}
    a_full = solve_task(Subject(), geometry_of(), FLEXION_60_5KG, tmp_path / "full", full).muscle_activations
    a_half = solve_task(Subject(), geometry_of(), FLEXION_60_5KG, tmp_path / "half", half).muscle_activations
    es = [n for n in a_full if n.startswith(("IL_", "LTpT_", "LTpL_"))]
    assert np.mean([a_half[n] for n in es]) > 1.5 * np.mean([a_full[n] for n in es])


def test_changing_lordosis_changes_the_load_pattern(tmp_path):
    # Phantom seeds 1 and 4: lordosis 27° and 39° between the L5S1 and T12L1 discs.
    flat, curved = (solve_task(Subject(), geometry_of(seed), FLEXION_60_5KG, tmp_path / str(seed))
                    for seed in (1, 4))
    assert geometry_of(4).lordosis_deg - geometry_of(1).lordosis_deg > 10
    shear_flat = np.array([flat.joints[j].anterior_shear_n for j in JOINTS])
    shear_curved = np.array([curved.joints[j].anterior_shear_n for j in JOINTS])
    assert np.max(np.abs(shear_curved - shear_flat)) > 50
    assert not np.allclose(compressions(flat), compressions(curved), rtol=0.01)


def test_muscles_too_weak_for_the_pose_are_reported_not_clipped(tmp_path):
    weak = {(g, s): 0.3 for g in REFERENCE_ACSA_CM2 for s in "rl"}
    r = solve_task(Subject(), geometry_of(), FLEXION_60_5KG, tmp_path / "weak", weak)
    assert FLAG_INFEASIBLE in r.flags and not r.feasible
    assert max(abs(j.reserve_torque_nm) for j in r.joints.values()) > 2.0


def test_a_relative_output_folder_is_solved_like_an_absolute_one(tmp_path, monkeypatch, reference):
    """`spinegate analyze study --out res` (a relative folder): OpenSim reads
    a setup file's paths relative to that file, so a relative folder once
    failed every task."""
    monkeypatch.chdir(tmp_path)
    result = solve_task(Subject(1.75, 79.6), geometry_of(), FLEXION_60_5KG, Path("res") / "flexion")
    assert np.allclose(compressions(result), compressions(reference[FLEXION_60_5KG.name]), rtol=1e-6)
    assert (tmp_path / "res" / "flexion" / f"{FLEXION_60_5KG.name}.osim").exists()
