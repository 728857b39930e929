"""Shared fixtures: phantom studies, peers, and the shared-data location."""
from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
MODEL_DIR = REPO / "inference" / "models"


class SessionLogRecords(logging.Handler):
    """Every log line spinegate's code writes in this test process, as the
    service would write it (tests/test_no_phi.py reads them at the end)."""

    lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is kept as its template
            self.lines.append(str(record.msg))


def pytest_configure(config: pytest.Config) -> None:
    handler = SessionLogRecords(logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    spinegate_log = logging.getLogger("spinegate")
    spinegate_log.addHandler(handler)
    spinegate_log.setLevel(logging.INFO)


SESSION_LOG_FILE = "session.log"


@pytest.fixture(scope="session", autouse=True)
def _session_log_file(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """At the end of the session, this process's spinegate log lines beside
    its temporary files: with several test processes (``make test`` runs
    pytest-xdist workers) the audit reads them from there afterwards."""
    yield
    (tmp_path_factory.getbasetemp() / SESSION_LOG_FILE).write_text("\n".join(SessionLogRecords.lines) + "\n")


# Files the processes the tests start write (their logs; metrics kept at
# stop): what tests/test_no_phi.py audits after the suite.
AUDITED_FILES = re.compile(rf"^(serve\.log|worker\d*\.log|metrics\.prom|worker\d*\.metrics\.prom|{SESSION_LOG_FILE})$")
_TEST_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed:
        item.stash[_TEST_FAILED] = True
    return report


def prune_to_audited_files(folder: Path) -> None:
    """Remove every file under ``folder`` but those the audit reads."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            if not AUDITED_FILES.match(name):
                (Path(root) / name).unlink(missing_ok=True)
        for name in dirs:
            path = Path(root) / name
            if path.is_symlink():
                path.unlink()
            elif not any(path.iterdir()):
                path.rmdir()


@pytest.fixture(autouse=True)
def _prune_passed_test_files(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """A passed test's temporary files go at its end, but for the logs and
    metrics the audit reads: the suite writes gigabytes (a clean virtual
    environment, peers' stores, studies), and a run that fills a small disk
    fails its last tests for want of space, not for what they check. A
    failed test keeps everything, to be looked at."""
    yield
    tmp_path = request.node.funcargs.get("tmp_path")
    if tmp_path is not None and not request.node.stash.get(_TEST_FAILED, False):
        prune_to_audited_files(tmp_path)


def pytest_report_header(config: pytest.Config) -> str:
    free_gb = shutil.disk_usage(config.rootpath).free / 1e9
    return f"free disk beside the suite: {free_gb:.1f} GB (the suite needs about 2 GB while it runs)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The heavy files first, heaviest first: `make test` runs pytest-xdist
    # with --dist loadfile --no-loadscope-reorder, which hands out whole
    # files in this order, so the two workers end together instead of one
    # finishing a long file alone. The audit of what the whole run logged
    # goes last. (A stable sort: every other file keeps its place.)
    seconds: dict[Path, float] = {}
    for item in items:
        marker = item.get_closest_marker("heavy")
        if marker is not None:
            if "seconds" not in marker.kwargs:
                raise pytest.UsageError(f"{item.path}: pytest.mark.heavy needs seconds=<its share of a CI run>")
            seconds[item.path] = max(seconds.get(item.path, 0.0), float(marker.kwargs["seconds"]))
    items.sort(key=lambda item: (item.get_closest_marker("session_audit") is not None, -seconds.get(item.path, 0.0)))


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"'{name}' is not installed: run the README test command (it installs dcmtk and dicom3tools)")
    return path


def require_shared_data(sub: str = "lumbar_mri") -> Path:
    folder = SHARED_DATA / sub
    if not folder.exists():
        pytest.skip(f"{folder} is absent: shared development data is only present beside the repository in CI/dev")
    return folder


@pytest.fixture(scope="session")
def phantom_study(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Sagittal T1+T2 phantom study (15 slices, 256x256 at 1.2 mm) with truth."""
    from spinegate.dicom_io.phantom.study import write_phantom_study

    out = tmp_path_factory.mktemp("phantom_study")
    return write_phantom_study(out, seed=1001, rows=256, columns=256, pixel_spacing_mm=1.2)


@pytest.fixture(scope="session")
def engine():
    from spinegate.inference.engine import SagittalSpineEngine

    return SagittalSpineEngine(MODEL_DIR)


@pytest.fixture(scope="session")
def engines():
    from spinegate.service.engines import Engines

    return Engines(MODEL_DIR)


def write_seg_and_sr(out: Path, study, seed: int, grid: tuple, loads=None) -> dict:  # type: ignore[no-untyped-def]
    """SEG and SR of a phantom T2 series built from its exact labels, as
    the pipeline builds them; ``grid`` is `sagittal_grid`'s arguments,
    ``study`` a `StudyInfo` (its ``uid_seed`` seeds the output UIDs)."""
    import pydicom

    from spinegate.biomech.morphometry import measure_structure
    from spinegate.dicom_io.mr_writer import SeriesSpec, write_mr_series
    from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
    from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation, segment_numbers
    from spinegate.dicom_io.sr import SeriesReport, build_measurement_report
    from spinegate.dicom_io.uids import derive_uid
    from spinegate.dicom_io.volume import read_series

    algorithm = AlgorithmInfo("sagittal_spine", "test", "0" * 64, "onnxruntime-cpu")
    grid = sagittal_grid(*grid)
    image, labels = render_phantom(make_spine_phantom(seed), grid, "T2", subplanes=2)
    paths = write_mr_series(image, grid.affine, study, SeriesSpec(3, "SAG T2", 3500, 100, 4.0), out / "in")
    datasets = [pydicom.dcmread(p) for p in paths]
    volume = read_series(datasets)
    label_map = np.ascontiguousarray(labels[::-1])  # read_series order is along -x
    seed_uid = study.uid_seed
    seg = build_segmentation(volume, datasets, label_map, algorithm, derive_uid(seed_uid, "segser"),
                             derive_uid(seed_uid, "seg"), 9003, "t")
    seg_path = out / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    present = segment_numbers(label_map)
    numbers = {s.label: i + 1 for i, s in enumerate(present)}
    measurements = [measure_structure(label_map == s.label, volume.affine, s) for s in present]
    sr = build_measurement_report([SeriesReport(volume, datasets, seg, numbers, measurements, "SAG T2")], algorithm,
                                  derive_uid(seed_uid, "srser"), derive_uid(seed_uid, "sr"), 9999, "t", loads=loads)
    sr_path = out / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    return dict(volume=volume, datasets=datasets, label_map=label_map, seg_path=seg_path, sr_path=sr_path,
                present=present, measurements=measurements, algorithm=algorithm)


def dciodvfy_errors(path: Path) -> list[str]:
    """Error lines dciodvfy reports for ``path`` (warnings are not errors)."""
    import subprocess

    exe = require_tool("dciodvfy")
    proc = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=120)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
