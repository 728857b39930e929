"""Stacks at several echo times found as scanners send them."""
from __future__ import annotations

import pytest

from spinegate.dicom_io.echoes import find_echo_sets, split_echoes
from spinegate.dicom_io.phantom.multi_echo import write_multi_echo_phantom_study
from spinegate.dicom_io.study import SeriesHeaders, read_study_headers

TES = (20.0, 40.0, 60.0, 80.0, 100.0)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("echoes")
    kw = dict(rows=64, columns=64, pixel_spacing_mm=4.8, n_slices=5)
    return (write_multi_echo_phantom_study(out / "one", **kw),
            write_multi_echo_phantom_study(out / "many", one_series=False, **kw))


def test_a_multi_echo_series_splits_into_whole_stacks(written):
    one, _ = written
    (series,) = read_study_headers(one["files"]).series
    echoes = split_echoes(series)
    assert list(echoes) == list(TES) and all(len(v) == 5 for v in echoes.values())
    (echo_set,) = find_echo_sets([series])
    assert echo_set.echo_times_ms == TES and echo_set.echo_times_ms[echo_set.segmentation_echo()] == 80.0
    # one echo lacking a slice is not a clean multi-echo stack
    assert split_echoes(SeriesHeaders(series.series_uid, series.datasets[1:])) is None


def test_single_echo_series_of_one_stack_and_tr_form_a_set(written, phantom_study):
    _, many = written
    study = read_study_headers(many["files"])
    (echo_set,) = find_echo_sets(study.series)
    assert echo_set.echo_times_ms == TES and len(set(echo_set.series_uids)) == 5
    assert find_echo_sets(study.series[:2]) == []  # two echo times are not enough
    # the routine T1 (TR 600) and T2 (TR 3500) sagittal series of one grid are no echo set
    assert find_echo_sets(read_study_headers(phantom_study["files"]).series) == []
