"""How `service.pipeline.analyse_series` shares the cores: the axial series
segment in a side lane while the sagittal ones are segmented, measured and
finished (SEG, key images, SR groups: ``finish_early``) before the axial
ones are measured; BLAS keeps to one thread while the lanes run side by
side (restored after); a study without side lanes leaves BLAS alone."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from spinegate.dicom_io.mr_writer import StudyInfo
from spinegate.dicom_io.study import read_study_headers
from spinegate.service.config import load_config
from spinegate.service.pipeline import analyse_series, select_series
from spinegate.service.series_stages import SeriesAnalysis, SeriesStage

RULES = load_config(environ={}).routing
events: list[tuple[str, bool]] = []  # (step, uses the study context), in the order they ran


def _blas_threads() -> set[int]:
    """Thread counts of the loaded BLAS libraries that can run threads (the
    OpenBLAS inside the opensim wheel is built single-threaded)."""
    return {int(i["num_threads"]) for i in threadpool_info()
            if i["user_api"] == "blas" and i.get("threading_layer") != "disabled"}


@dataclass
class _Recording:
    """A real stage, noting the BLAS thread counts its steps ran under."""

    stage: SeriesStage
    seen: list[tuple[str, set[int]]] = field(default_factory=list)

    @property
    def info(self) -> Any:
        return self.stage.info

    @property
    def uses_study_context(self) -> bool:
        return self.stage.uses_study_context

    def segment(self, series: Any) -> Any:
        self.seen.append(("segment", _blas_threads()))
        events.append(("segment", self.uses_study_context))
        return self.stage.segment(series)

    def measure(self, series: Any, segmented: Any, context: Any) -> SeriesAnalysis:
        self.seen.append(("measure", _blas_threads()))
        events.append(("measure", self.uses_study_context))
        return self.stage.measure(series, segmented, context)


@pytest.fixture(scope="module")
def small_study(tmp_path_factory):
    from spinegate.dicom_io.phantom.study import write_axial_phantom_study

    out = tmp_path_factory.mktemp("lanes_study")
    return write_axial_phantom_study(out, seed=1001, rows=128, columns=128, pixel_spacing_mm=1.6,
                                     axial_weightings=("T2",), sagittal_size=(192, 1.6),
                                     study=StudyInfo(uid_seed="lanes"))


def _recorded_selection(files, engines):
    selection = select_series(read_study_headers(files), engines, RULES)
    return replace(selection, stages={uid: _Recording(s) for uid, s in selection.stages.items()})


def test_blas_keeps_to_one_thread_while_the_lanes_run_and_is_restored(small_study, engines):
    if not any(n > 1 for n in _blas_threads()):
        pytest.skip("BLAS runs one thread on this machine already: nothing to limit")
    before = _blas_threads()
    selection = _recorded_selection(small_study["files"], engines)
    results = analyse_series(selection)
    assert all(isinstance(a, SeriesAnalysis) for a in results.values()), results
    stages = list(selection.stages.values())
    assert {s.uses_study_context for s in stages} == {True, False}  # an axial lane beside the sagittal series
    for s in stages:
        assert s.seen and all(threads == {1} for _, threads in s.seen), s.seen
    assert _blas_threads() == before


def test_without_side_lanes_blas_is_left_alone(small_study, engines):
    sagittal = [p for p in small_study["files"] if p.name.startswith(("002_", "003_"))]
    with threadpool_limits(limits=2, user_api="blas"):
        selection = _recorded_selection(sagittal, engines)
        analyse_series(selection)
        stages = list(selection.stages.values())
        assert stages and not any(s.uses_study_context for s in stages)
        assert all(threads == {2} for s in stages for _, threads in s.seen), [s.seen for s in stages]


def test_a_batch_worker_keeps_blas_to_its_share_of_the_cores():
    from spinegate.service.batch import _init_worker

    with threadpool_limits(limits=2, user_api="blas"):  # restores what the worker sets
        _init_worker(load_config(environ={}), 1)
        assert _blas_threads() == {1}


def test_series_measured_without_context_are_finished_before_the_side_lanes_are_awaited(small_study, engines):
    events.clear()
    selection = _recorded_selection(small_study["files"], engines)
    finished: list[str] = []

    def finish_early(r, a):
        events.append(("finish", selection.stages[r.series_uid].uses_study_context))
        finished.append(r.series_uid)
        return replace(a, flags=(*a.flags, "finished"))

    results = analyse_series(selection, finish_early)
    sagittal = [uid for uid, s in selection.stages.items() if not s.uses_study_context]
    assert sorted(finished) == sorted(sagittal) and len(sagittal) == 2
    assert all("finished" in results[uid].flags for uid in sagittal)  # the finished analysis is the result
    assert not any("finished" in a.flags for uid, a in results.items() if uid not in sagittal)
    steps = [e for e in events if e[0] != "segment"]  # the axial segmentation runs beside, at any time
    assert steps == [("measure", False), ("measure", False), ("finish", False), ("finish", False), ("measure", True)]
