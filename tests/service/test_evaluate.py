"""``spinegate evaluate``: label names and tables, the grid manual labels
are compared on (exact fractions), and a phantom study analysed by
spinegate compared with its exact labels given as NIfTI (on a finer grid)
and as a manual DICOM SEG; every bad input gets a precise error."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from pydicom.sr.codedict import codes

from spinegate.dicom_io.levels import structure_by_name
from spinegate.dicom_io.mr_writer import SeriesSpec, write_mr_series
from spinegate.dicom_io.muscles import muscle_by_name
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.phantom.study import StudyInfo
from spinegate.service.cli import EXIT_CONFIG, EXIT_OK, main
from spinegate.service.evaluate import run_evaluation
from spinegate.dicom_io.label_files import (LabelFileError, LabelSet, read_label_table, read_nifti_labels,
                                            resolve_structure)
from spinegate.service.label_sets import EvaluationError, on_reference_grid

SEED = 5


@pytest.mark.parametrize("text, name", [("L4-L5", "L4L5"), ("L4/L5", "L4L5"), ("l4l5", "L4L5"),
                                        ("L4-L5 intervertebral disc", "L4L5"), ("L3 vertebral body", "L3"),
                                        ("L5-S1 disc", "L5S1"), ("T12-L1 intervertebral disc (level unverified)",
                                                                 "T12L1"), ("S1", "S1")])
def test_level_names_as_people_write_them(text, name):
    assert resolve_structure(text) == structure_by_name(name)


def test_muscle_names_and_unknown_names():
    assert resolve_structure("MF_R") == muscle_by_name("MF_R")
    assert resolve_structure("left erector spinae") == muscle_by_name("ES_L")
    with pytest.raises(LabelFileError, match="'spinal cord' names no spine level or muscle"):
        resolve_structure("spinal cord")


def test_label_tables(tmp_path):
    (tmp_path / "t.yaml").write_text("labels:\n  1: L1\n  10: L4-L5\n  Vertebra three: L3\n")
    table = read_label_table(tmp_path / "t.yaml")
    assert table == {1: structure_by_name("L1"), 10: structure_by_name("L4L5"),
                     "Vertebra three": structure_by_name("L3")}
    (tmp_path / "t.json").write_text(json.dumps({"4": "L4"}))
    assert read_label_table(tmp_path / "t.json") == {4: structure_by_name("L4")}
    (tmp_path / "bad.yaml").write_text("1: L1\n2: cord\n3: L9\n")
    with pytest.raises(LabelFileError, match="names unknown structures: 2: cord, 3: L9"):
        read_label_table(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- L1\n- L2\n")
    with pytest.raises(LabelFileError, match="must map label values"):
        read_label_table(tmp_path / "list.yaml")
    with pytest.raises(LabelFileError, match="cannot read the label table"):
        read_label_table(tmp_path / "absent.yaml")


def test_manual_labels_on_a_finer_grid_belong_to_a_voxel_they_cover_half_of():
    """Automatic grid: 4 mm sagittal slabs. Manual grid: 1 mm. A structure
    drawn over 1 mm slices 4..9 fills slab 1 (slices 4-7) and half of slab 2
    (8-9): both are its; one over 12..12 covers a quarter of slab 3: not."""
    auto_affine = np.diag([4.0, 1.0, 1.0, 1.0])
    auto_affine[0, 3] = 1.5  # slab k spans 1 mm slices 4k .. 4k+3 (centres 0..3 -> 1.5)
    auto = LabelSet({"L3": np.zeros((5, 8, 8), bool)}, auto_affine, "auto")
    manual_masks = {"L3": np.zeros((20, 8, 8), bool), "L4": np.zeros((20, 8, 8), bool)}
    manual_masks["L3"][4:10, 2:6, 2:6] = True
    manual_masks["L4"][12:13, 2:6, 2:6] = True
    on_auto, on_manual = on_reference_grid(auto, LabelSet(manual_masks, np.eye(4), "manual"))
    assert on_manual.masks["L3"].shape == (5, 8, 8)
    assert on_manual.masks["L3"][:, 3, 3].tolist() == [False, True, True, False, False]
    assert on_manual.masks["L3"][1].sum() == 16
    assert "L4" not in on_manual.masks  # a quarter of one slab: no voxel is its


def test_the_grid_grows_where_manual_labels_reach_beyond_the_automatic_series():
    auto_mask = np.zeros((3, 6, 6), bool)
    auto_mask[:, 1:5, 1:5] = True
    auto = LabelSet({"L3": auto_mask}, np.eye(4), "auto")
    manual_mask = np.zeros((5, 6, 6), bool)
    manual_mask[:, 1:5, 1:5] = True
    shifted = np.eye(4)
    shifted[0, 3] = -1.0  # one slice before the automatic series' first, one after its last
    on_auto, on_manual = on_reference_grid(auto, LabelSet({"L3": manual_mask}, shifted, "manual"))
    assert on_auto.masks["L3"].shape == (5, 6, 6) and on_auto.affine[0, 3] == -1.0
    assert on_auto.masks["L3"].sum() == 48 and on_manual.masks["L3"].sum() == 80  # two slices missed
    far = np.eye(4)
    far[0, 3] = 500.0
    with pytest.raises(EvaluationError, match="far outside"):
        on_reference_grid(auto, LabelSet({"L3": manual_mask}, far, "manual"))


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    sitk.WriteImage(hd.Volume(array, affine, "PATIENT").to_simpleitk(), str(path))
    return path


def test_nifti_values_must_be_named(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint8)
    labels[1, 2, 3], labels[2, 2, 3] = 4, 7
    path = _write_nifti(tmp_path / "l.nii.gz", labels, np.eye(4))
    with pytest.raises(LabelFileError, match=r"label values \[7\] are not in the label table"):
        read_nifti_labels(path, {4: structure_by_name("L4")})
    # without a table the values are spinegate's own (4 = L1, 7 = L4)
    assert set(read_nifti_labels(path).masks) == {"L1", "L4"}
    floats = _write_nifti(tmp_path / "f.nii.gz", labels.astype(np.float32) / 3, np.eye(4))
    with pytest.raises(LabelFileError, match="integer values"):
        read_nifti_labels(floats)
    (tmp_path / "x.nii.gz").write_bytes(b"not nifti")
    with pytest.raises(LabelFileError, match="x.nii.gz: not a readable NIfTI image"):
        read_nifti_labels(tmp_path / "x.nii.gz")


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    """A phantom T2 series analysed by spinegate, its exact labels on a
    1 mm grid (as NIfTI) and on the series' grid (as a manual SEG)."""
    work = tmp_path_factory.mktemp("evaluate")
    phantom = make_spine_phantom(SEED)
    grid = sagittal_grid(15, 256, 256, 1.2, 4.0)
    image, truth = render_phantom(phantom, grid, "T2")
    files = write_mr_series(image, grid.affine, StudyInfo("evaluate-test"), SeriesSpec(3, "SAG T2 TSE", 3500, 100, 4.0),
                            work / "src")
    assert main(["--log-level", "WARNING", "analyze", str(work / "src"), "--out", str(work / "auto")]) == EXIT_OK
    sources = [pydicom.dcmread(f) for f in files]
    series = str(sources[0].SeriesInstanceUID)
    names = {e.label: e.name for e in phantom.elements}
    (work / "table.yaml").write_text(yaml.safe_dump({int(k): v for k, v in names.items()}))
    fine = sagittal_grid(60, 256, 256, 1.2, 1.0)
    _, fine_truth = render_phantom(phantom, fine, "T2")
    (work / "nifti").mkdir()
    _write_nifti(work / "nifti" / "subject01_labels.nii.gz", fine_truth.astype(np.uint8), fine.affine)
    # A manual SEG as another tool writes it: lumbar bodies only, labelled "Vertebra L1" ...
    lumbar = [v for v, n in names.items() if n in ("L1", "L2", "L3", "L4", "L5")]
    order = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    k_of = [int(round(np.linalg.solve(grid.affine[:3, :3], np.array(ds.ImagePositionPatient) - grid.affine[:3, 3])[0]))
            for ds in sources]
    masks = np.stack([np.stack([truth[k_of[order[ds.SOPInstanceUID]]] == v for v in lumbar], axis=-1)
                      for ds in sources]).astype(np.uint8)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=i + 1, segment_label=f"Vertebra {names[v]}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Bone, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for i, v in enumerate(lumbar)]
    seg = hd.seg.Segmentation(sources, masks, hd.seg.SegmentationTypeValues.BINARY, descriptions,
                              hd.UID(), 100, hd.UID(), 1, "reader", "manual", "1", "0")
    (work / "manual_seg").mkdir()
    seg.save_as(work / "manual_seg" / "reader1.dcm")
    (work / "seg_table.yaml").write_text("".join(f"Vertebra {names[v]}: {names[v]}\n" for v in lumbar))
    return work, series


def test_spinegate_against_exact_labels_on_a_finer_grid(analysed):
    work, series = analysed
    (work / "pairs.csv").write_text(f"manual,series_instance_uid\nnifti/subject01_labels.nii.gz,{series}\n")
    assert main(["evaluate", str(work / "auto"), str(work / "nifti"), "--labels", str(work / "table.yaml"),
                 "--pairs", str(work / "pairs.csv"), "--out", str(work / "eval")]) == EXIT_OK
    with (work / "eval" / "overlap.csv").open() as f:
        overlaps = {r["level"]: r for r in csv.DictReader(f)}
    for level in ("L1", "L2", "L3", "L4", "L5", "L1-L2", "L4-L5"):
        assert overlaps[level]["found"] == "True"
        assert float(overlaps[level]["dice"]) > (0.9 if "-" not in level else 0.8), overlaps[level]
        assert 0 <= float(overlaps[level]["mean_surface_distance_mm"]) < float(overlaps[level]["hd95_mm"]) + 1e-6
    with (work / "eval" / "measurements.csv").open() as f:
        measured = list(csv.DictReader(f))
    heights = {r["level"]: r for r in measured if r["measurement"] == "height_mm"}
    assert abs(float(heights["L3"]["difference"])) < 2.0 and heights["L3"]["unit"] == "mm"
    summary = json.loads((work / "eval" / "summary.json").read_text())
    body = summary["measurements"]["vertebral body"]["volume_cm3"]["all"]
    assert body["n"] >= 5 and body["icc_2_1"] > 0.8 and abs(body["bias"]) < 2.0
    assert summary["overlap"]["intervertebral disc"]["by_level"]["L4-L5"]["n"] == 1
    for png in ("dice_per_level.png", "bland_altman.png"):
        assert (work / "eval" / png).stat().st_size > 10_000


def test_a_manual_seg_is_paired_by_its_series_and_read_through_a_label_table(analysed):
    work, series = analysed
    summary = run_evaluation(work / "auto", work / "manual_seg", work / "eval_seg", work / "seg_table.yaml")
    assert summary["pairs"] == [{"manual": "reader1.dcm", "series_instance_uid": series}]
    assert set(summary["overlap"]) == {"vertebral body"}
    assert summary["overlap"]["vertebral body"]["all"]["n"] == 5
    assert summary["overlap"]["vertebral body"]["all"]["dice"]["mean"] > 0.9
    # without the table, "Vertebra L3" still names L3
    assert run_evaluation(work / "auto", work / "manual_seg", work / "eval_seg2")["overlap"] == summary["overlap"]


def test_unpaired_and_unreadable_inputs_are_reported(analysed, tmp_path, capsys):
    work, _ = analysed
    other = tmp_path / "manual"
    other.mkdir()
    _write_nifti(other / "1.2.3.4.nii.gz", np.ones((3, 3, 3), np.uint8), np.eye(4))
    (other / "notes.txt").write_text("drawn by reader 1")
    assert main(["evaluate", str(work / "auto"), str(other), "--out", str(tmp_path / "e")]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "no manual label file pairs" in err and "1.2.3.4.nii.gz: no spinegate SEG of series 1.2.3.4" in err
    assert main(["evaluate", str(tmp_path / "empty"), str(other), "--out", str(tmp_path / "e")]) == EXIT_CONFIG
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", str(tmp_path / "empty"), str(other), "--out", str(tmp_path / "e")]) == EXIT_CONFIG
    assert "no DICOM SEG under" in capsys.readouterr().err
    (tmp_path / "pairs.csv").write_text("file,series\nx,y\n")
    assert main(["evaluate", str(work / "auto"), str(other), "--pairs", str(tmp_path / "pairs.csv"),
                 "--out", str(tmp_path / "e")]) == EXIT_CONFIG
    assert "needs the columns 'manual' and 'series_instance_uid'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # nothing half-written
