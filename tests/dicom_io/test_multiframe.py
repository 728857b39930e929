"""Multi-frame (enhanced) MR: geometry from functional groups, SEG on the
source frames, SR polylines referencing frame numbers."""
import numpy as np
import pydicom
import pytest

from conftest import dciodvfy_errors
from spinegate.dicom_io.classify import Weighting, classify_series
from spinegate.dicom_io.mr_writer import MultiFrameClass, SeriesSpec, StudyInfo, write_mr_series, write_multiframe_mr
from spinegate.dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from spinegate.dicom_io.seg import AlgorithmInfo, build_segmentation
from spinegate.dicom_io.uids import derive_uid
from spinegate.dicom_io.volume import read_series


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory):
    out = tmp_path_factory.mktemp("mf")
    grid = sagittal_grid(6, 64, 64, 4.0, 4.0)
    image, labels = render_phantom(make_spine_phantom(8), grid, "T2", subplanes=1)
    paths = write_mr_series(image, grid.affine, StudyInfo("mf"), SeriesSpec(4, "SAG T2", 3500, 100, 4.0), out)
    singles = [pydicom.dcmread(p) for p in paths]
    path = write_multiframe_mr(paths, out / "legacy.dcm", MultiFrameClass.LEGACY_CONVERTED, 40, "mf")
    return pydicom.dcmread(path), image, labels, singles


@pytest.fixture(scope="module")
def single_frames(tmp_path_factory):
    """A T1 series (TR 600, TE 12) whose description names no weighting."""
    out = tmp_path_factory.mktemp("sf")
    grid = sagittal_grid(5, 48, 48, 4.0, 4.0)
    image, _ = render_phantom(make_spine_phantom(8), grid, "T1", subplanes=1)
    return write_mr_series(image, grid.affine, StudyInfo("mf-t1", character_set=None),
                           SeriesSpec(5, "SAG TSE", 600, 12, 4.0), out)


@pytest.mark.parametrize("storage_class", list(MultiFrameClass), ids=lambda c: c.name)
def test_multiframe_weighting_is_read_from_functional_groups(tmp_path, single_frames, storage_class):
    path = write_multiframe_mr(single_frames, tmp_path / "mf.dcm", storage_class, 50, "mf-t1")
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == storage_class.value and "RepetitionTime" not in ds and "EchoTime" not in ds
    assert "SpecificCharacterSet" not in ds  # as the sources
    assert classify_series([ds]).weighting is Weighting.T1


@pytest.mark.integration
@pytest.mark.parametrize("storage_class", list(MultiFrameClass), ids=lambda c: c.name)
def test_multiframe_objects_are_valid_iods(tmp_path, single_frames, storage_class):
    """The multi-frame inputs of the tests and the conformance suite are
    what a scanner would send: dciodvfy finds no error."""
    path = write_multiframe_mr(single_frames, tmp_path / "mf.dcm", storage_class, 50, "mf-t1")
    assert dciodvfy_errors(path) == []


def test_multiframe_volume_matches_single_frame_volume(enhanced):
    mf, image, _, singles = enhanced
    vol_mf = read_series([mf])
    vol_sf = read_series(singles)
    assert np.array_equal(vol_mf.array, vol_sf.array)
    assert np.allclose(vol_mf.affine, vol_sf.affine, atol=1e-4)
    assert all(r.frame_number is not None for r in vol_mf.slice_refs)
    assert {r.sop_instance_uid for r in vol_mf.slice_refs} == {mf.SOPInstanceUID}


def test_seg_of_multiframe_source_follows_frame_order(enhanced):
    mf, _, labels, _ = enhanced
    vol = read_series([mf])
    label_map = np.ascontiguousarray(labels[::-1])
    seg = build_segmentation(vol, [mf], label_map, AlgorithmInfo("t", "1", "0" * 64), derive_uid("s"),
                             derive_uid("si"), 9004, "t")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == mf.SeriesInstanceUID
    assert int(seg.NumberOfFrames) == int(mf.NumberOfFrames) * len(seg.SegmentSequence)
