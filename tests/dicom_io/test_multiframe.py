"""Multi-frame (enhanced) MR: geometry from functional groups, SEG on the
source frames, SR polylines referencing frame numbers."""
import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from dicom_io.phantom import make_spine_phantom, render_phantom, sagittal_grid
from dicom_io.seg import AlgorithmInfo, build_segmentation
from dicom_io.uids import derive_uid
from dicom_io.volume import read_series


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory):
    out = tmp_path_factory.mktemp("mf")
    grid = sagittal_grid(6, 64, 64, 4.0, 4.0)
    image, labels = render_phantom(make_spine_phantom(8), grid, "T2", subplanes=1)
    paths = write_mr_series(image, grid.affine, StudyInfo("mf"), SeriesSpec(4, "SAG T2", 3500, 100, 4.0), out)
    singles = [pydicom.dcmread(p) for p in paths]
    mf = hd.legacy.LegacyConvertedEnhancedMRImage(
        singles, series_instance_uid=derive_uid("mf", "series"), series_number=40,
        sop_instance_uid=derive_uid("mf", "instance"), instance_number=1)
    path = out / "enhanced.dcm"
    mf.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path), image, labels, singles


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
