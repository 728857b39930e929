"""``spinegate batch``: studies found in a folder tree and a .zip archive,
analysed once (resumable), a failure recorded without stopping the batch,
and the long and wide CSVs holding exactly what each measurements.json says."""
from __future__ import annotations

import csv
import json
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO
from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.phantom.study import write_phantom_study
from spinegate.service.batch import LONG_COLUMNS, long_rows, run_batch, wide_row
from spinegate.service.config import load_config

# Small studies, no loads, no key images or PDF: the batch mechanics are under test.
CONFIG = {"biomechanics": {"enabled": False}, "outputs": {"key_images": False, "pdf_report": False}}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two phantom studies (one as a folder, one zipped, in a sub-folder),
    a study whose files are a CT-less junk series, and a non-DICOM file."""
    root = tmp_path_factory.mktemp("batch_in")
    studies = [write_phantom_study(root / name, seed=seed, rows=96, columns=96, pixel_spacing_mm=3.2, n_slices=9,
                                   study=StudyInfo(uid_seed=f"batch-{name}")) for name, seed in (("a", 11), ("b", 12))]
    zipped = root / "site2" / "b.zip"
    zipped.parent.mkdir()
    with zipfile.ZipFile(zipped, "w") as z:
        for f in studies[1]["files"]:
            z.write(f, f"b/{f.name}")
    for f in studies[1]["files"]:
        f.unlink()
    # A study that cannot be analysed: a single-slice series (too few slices).
    bad = write_phantom_study(root / "c", seed=13, rows=64, columns=64, pixel_spacing_mm=4.8, n_slices=9,
                              study=StudyInfo(uid_seed="batch-c"))
    for f in bad["files"][1:]:
        f.unlink()
    (root / "notes.txt").write_text("not DICOM")
    return root, studies, bad["study_instance_uid"]


def test_batch_analyses_each_study_once_records_failures_and_writes_the_csvs(archive, tmp_path):
    root, studies, bad_uid = archive
    config = load_config(overrides=CONFIG, environ={})
    out = tmp_path / "out"
    first = run_batch(root, out, config, workers=2, progress=False)
    assert (first.found, first.analysed, first.skipped, first.unreadable) == (3, 2, 0, 1)
    assert list(first.failed) == [bad_uid] and first.failed[bad_uid].startswith("no_analysable_series")
    again = run_batch(root, out, config, workers=1, progress=False)  # resumed: finished studies skipped
    assert (again.analysed, again.skipped, list(again.failed)) == (0, 2, [bad_uid])
    with open(out / "measurements.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == LONG_COLUMNS
    expected = []
    for s in studies:
        doc = json.loads((out / "studies" / s["study_instance_uid"] / "measurements.json").read_text())
        expected += [{k: str(v) for k, v in r.items()} for r in long_rows(doc)]
        l4l5 = [r for r in long_rows(doc) if r["level"] == "L4L5" and r["measurement"] == "height_mm"]
        assert {r["unit"] for r in l4l5} == {"mm"} and len(l4l5) == 2  # T1 and T2 series
        assert wide_row(doc)["L4L5_height_mm"] in {r["value"] for r in l4l5}
    assert sorted(map(str, rows)) == sorted(map(str, expected))
    with open(out / "studies.csv") as f:
        wide = {r["study_instance_uid"]: r for r in csv.DictReader(f)}
    assert {wide[s["study_instance_uid"]]["status"] for s in studies} == {"analysed"}
    assert wide[bad_uid]["status"] == "failed" and wide[bad_uid]["reason"].startswith("no_analysable_series")


def test_batch_command_line(archive, tmp_path):
    root, _, _ = archive
    (tmp_path / "c.yaml").write_text(json.dumps(CONFIG))
    run = subprocess.run([sys.executable, "-m", "spinegate.service.cli", "--config", str(tmp_path / "c.yaml"),
                          "--log-level", "WARNING", "batch", str(root / "site2"), "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "1 studies: 1 analysed, 0 already finished, 0 failed" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "spinegate.service.cli", "batch", str(root), "--out",
                          str(tmp_path / "o2"), "--workers", "0"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert bad.returncode == 2 and "--workers must be >= 1" in bad.stderr


def test_each_value_carries_its_series_flags_and_the_wide_row_says_when_levels_are_unverified():
    """An unverified level naming is a series flag; a researcher filtering the
    CSV by a value's flags must see it on every value of that series."""
    series = {"series_instance_uid": "1.2.3", "description": "SAG T2", "flags": ["level_naming_unanchored_no_s1"],
              "levels_unverified": "no S1 in view, lowest body taken as L5",
              "structures": [{"level": "L5", "kind": "vertebral_body", "height_mm": 27.0, "volume_cm3": 30.1,
                              "flags": ["touches_field_of_view_edge"]}],
              "muscles": [{"level": "L4L5", "muscle": "MF_L", "csa_midplane_cm2": 6.0, "csa_mean_cm2": None,
                           "rcsa": None, "fat_infiltration": None, "fat_fraction": None, "volume_ml": None,
                           "asymmetry": None, "flags": []}]}
    doc = {"study_instance_uid": "1.2", "series": [series], "review": {"needed": True}}
    rows = long_rows(doc)
    assert {r["flags"] for r in rows if r["structure"] == "vertebral_body"} == {
        "touches_field_of_view_edge; level_naming_unanchored_no_s1"}
    assert [r["flags"] for r in rows if r["structure"] == "MF_L"] == ["level_naming_unanchored_no_s1"]
    wide = wide_row(doc)
    assert wide["sagittal_levels_unverified"] == "no S1 in view, lowest body taken as L5" and wide["needs_review"]
    verified = wide_row({**doc, "series": [{**series, "flags": [], "levels_unverified": None}]})
    assert verified["sagittal_levels_unverified"] == ""
