import copy

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from spinegate.dicom_io.classify import Plane, Weighting, classify_series, plane_from_orientation
from spinegate.dicom_io.mr_writer import SeriesSpec, StudyInfo, write_mr_series
from spinegate.dicom_io.phantom import sagittal_grid
from spinegate.dicom_io.volume import SeriesError, read_series


@pytest.fixture
def series(tmp_path):
    grid = sagittal_grid(6, 32, 40, 1.5, 4.0)
    pixels = (np.arange(6 * 32 * 40).reshape(6, 32, 40) % 4000).astype(np.uint16)
    paths = write_mr_series(pixels, grid.affine, StudyInfo("vol-test"), SeriesSpec(5, "SAG T2", 3500, 100, 4.0), tmp_path)
    return grid, pixels, [pydicom.dcmread(p) for p in paths]


def test_read_series_recovers_geometry_in_any_order(series):
    grid, pixels, datasets = series
    vol = read_series(list(reversed(datasets)))
    # Slices run along ImageOrientationPatient's normal (row x column) = -x.
    assert np.array_equal(vol.array, pixels[::-1].astype(np.float32))
    assert vol.index_to_lps([0, 0, 0]) == pytest.approx(grid.affine[:3, :3] @ [5, 0, 0] + grid.affine[:3, 3])
    assert vol.spacing_mm == pytest.approx((4.0, 1.5, 1.5))
    assert [r.sop_instance_uid for r in vol.slice_refs] == [d.SOPInstanceUID for d in reversed(datasets)]


def test_one_slice_is_refused(series):
    with pytest.raises(SeriesError, match="1 slice") as e:
        read_series(series[2][:1])
    assert e.value.reason == "too_few_slices"


def test_mixed_sizes_are_refused(series):
    datasets = series[2]
    odd = copy.deepcopy(datasets[3])
    odd.Rows = 16
    odd.PixelData = odd.PixelData[: 16 * 40 * 2]
    with pytest.raises(SeriesError, match="16x40") as e:
        read_series(datasets[:3] + [odd] + datasets[4:])
    assert e.value.reason == "mixed_size"


def test_mixed_orientation_and_duplicates_are_refused(series):
    datasets = series[2]
    tilted = copy.deepcopy(datasets[1])
    tilted.ImageOrientationPatient = [0, 0.9848, 0.1736, 0, 0, -1]
    with pytest.raises(SeriesError) as e:
        read_series([datasets[0], tilted] + datasets[2:])
    assert e.value.reason == "mixed_orientation"
    dup = copy.deepcopy(datasets[1])
    dup.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    with pytest.raises(SeriesError) as e:
        read_series(datasets + [dup])
    assert e.value.reason == "duplicate_position"


def test_missing_geometry_is_a_clear_error(series):
    datasets = series[2]
    broken = copy.deepcopy(datasets[0])
    del broken.ImagePositionPatient
    with pytest.raises(SeriesError, match="lacks ImagePositionPatient"):
        read_series([broken] + datasets[1:])


def test_corrupt_compressed_pixel_data_is_reported(series):
    datasets = series[2]
    bad = copy.deepcopy(datasets[0])
    bad.file_meta.TransferSyntaxUID = pydicom.uid.JPEGLosslessSV1
    bad.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8 not a jpeg"])
    bad["PixelData"].VR = "OB"
    with pytest.raises(SeriesError) as e:
        read_series([bad] + datasets[1:])
    assert e.value.reason == "undecodable_pixel_data"


@pytest.mark.parametrize(
    "iop, plane",
    [
        ([0, 1, 0, 0, 0, -1], Plane.SAGITTAL),
        ([1, 0, 0, 0, 1, 0], Plane.AXIAL),
        ([1, 0, 0, 0, 0, -1], Plane.CORONAL),
        ([0, 0.7071, 0.7071, 1, 0, 0], Plane.OBLIQUE),
        ([0, 0.9848, 0.1736, 0, 0, -1], Plane.SAGITTAL),  # 10 degrees off
    ],
)
def test_plane_from_orientation(iop, plane):
    assert plane_from_orientation(np.array(iop, float)) is plane


@pytest.mark.parametrize(
    "tr, te, desc, weighting",
    [
        (600, 12, "", Weighting.T1),
        (3500, 100, "", Weighting.T2),
        (None, None, "Sag T2 TSE", Weighting.T2),
        (None, None, "sag t1 fse", Weighting.T1),
        (4000, 60, "SAG STIR", Weighting.OTHER),
        (1200, 40, "", Weighting.OTHER),
    ],
)
def test_weighting(series, tr, te, desc, weighting):
    ds = copy.deepcopy(series[2][0])
    for keyword, value in (("RepetitionTime", tr), ("EchoTime", te)):
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.SeriesDescription = desc
    assert classify_series([ds]).weighting is weighting


def test_localisers_and_derived_images_are_excluded(series):
    ds = copy.deepcopy(series[2][0])
    ds.SeriesDescription = "3-plane localizer"
    assert classify_series([ds]).excluded == "localiser"
    ds = copy.deepcopy(series[2][0])
    ds.ImageType = ["DERIVED", "SECONDARY"]
    assert classify_series([ds]).excluded == "derived_image"


def test_images_derived_only_by_lossy_compression_are_analysed(series):
    """What dcmcjpeg, dcmcjpls and many PACS write after lossy compression:
    DERIVED, Lossy Image Compression 01, derivation DCM 113040."""
    ds = copy.deepcopy(series[2][0])
    ds.ImageType = ["DERIVED", "PRIMARY", "OTHER"]
    ds.LossyImageCompression = "01"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "113040", "DCM", "Lossy Compression"
    ds.DerivationCodeSequence = [code]
    assert classify_series([ds]).excluded == ""
    reformat = Dataset()
    reformat.CodeValue, reformat.CodingSchemeDesignator, reformat.CodeMeaning = "113072", "DCM", "Multiplanar reformatting"
    ds.DerivationCodeSequence = [code, reformat]  # compressed and reformatted: still derived
    assert classify_series([ds]).excluded == "derived_image"


@pytest.mark.parametrize(
    "image_type, desc, weighting",
    [
        (["DERIVED", "PRIMARY", "DIXON", "WATER"], "t1_vibe_dixon", Weighting.WATER),  # Siemens: not excluded
        (["DERIVED", "PRIMARY", "DIXON", "FAT"], "t1_vibe_dixon", Weighting.FAT),
        (["ORIGINAL", "PRIMARY", "W", "W"], "mDIXON", Weighting.WATER),  # Philips
        (["ORIGINAL", "PRIMARY", "OTHER"], "AX DIXON F", Weighting.FAT),
        (["ORIGINAL", "PRIMARY", "OTHER"], "WATER: AX LAVA", Weighting.WATER),  # GE
        (["ORIGINAL", "PRIMARY", "OTHER"], "AX T2 FAT SAT", Weighting.OTHER),  # fat-suppressed: not a fat image
    ],
)
def test_dixon_water_and_fat_images(series, image_type, desc, weighting):
    ds = copy.deepcopy(series[2][0])
    ds.ImageType = image_type
    ds.SeriesDescription = desc
    ds.RepetitionTime, ds.EchoTime = (3500, 100) if weighting is Weighting.OTHER else (6, 2)
    cls = classify_series([ds])
    assert cls.weighting is weighting and cls.excluded == ""


def test_sheared_stack_is_refused_and_gaps_are_kept_when_allowed(series):
    datasets = [copy.deepcopy(d) for d in series[2]]
    for k, ds in enumerate(datasets):
        ipp = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [ipp[0], ipp[1] + 1.5 * k, ipp[2]]
    with pytest.raises(SeriesError) as e:
        read_series(datasets)
    assert e.value.reason == "gantry_tilt"
    gapped = [series[2][k] for k in (0, 1, 4, 5)]
    with pytest.raises(SeriesError) as e:
        read_series(gapped)
    assert e.value.reason == "irregular_spacing"
    volume = read_series(gapped, allow_gaps=True)
    expected = np.array([[float(v) for v in series[2][k].ImagePositionPatient] for k in (0, 1, 4, 5)])
    assert np.allclose(np.sort(volume.positions_lps, axis=0), np.sort(expected, axis=0))
