"""The IVD volumes' dilated disc masks: the dilation model, the outlines at
the source's size, and the rim left open (exact answers on boxes)."""
import numpy as np
import pytest

from spinegate.inference.training.ivd_discs import (erode_mm, level_code_overshoot,
                                                    source_size_disc_labels, with_source_size_discs,
                                                    with_uncertain_disc_rim)
from spinegate.inference.training.training_data import BG, DISC, S1, VB, TrainingCase


def test_a_level_coded_k_overshoots_by_k_minus_one_over_2k_native_spacings():
    assert [level_code_overshoot(k) for k in (1, 2, 5)] == [0.0, 0.25, 0.4]
    with pytest.raises(ValueError, match="positive"):
        level_code_overshoot(0)


@pytest.mark.parametrize("radius_mm, kept_shape", [
    ((2.0, 2.0, 2.0), (6, 16, 16)),  # whole voxels
    ((1.0, 0.25, 0.25), (8, 20, 20)),  # in-plane: the edge voxels keep 75 %
    ((1.0, 0.75, 0.75), (8, 18, 18)),  # ... and 25 %
    ((1.4, 0.6, 0.6), (8, 18, 18)),  # 60 % of the second plane stays; 40 % of the edge pixels
])
def test_a_box_erodes_to_the_box_of_the_voxels_keeping_at_least_half(radius_mm, kept_shape):
    mask = np.zeros((14, 30, 30), bool)
    mask[2:12, 5:25, 5:25] = True
    out = erode_mm(mask, (1.0, 1.0, 1.0), radius_mm)
    nz = np.nonzero(out)
    assert tuple(int(a.max() - a.min() + 1) for a in nz) == kept_shape
    assert out.sum() == np.prod(kept_shape) and not (out & ~mask).any()


def test_erosion_needs_a_positive_radius_per_axis():
    mask = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="positive"):
        erode_mm(mask, (1, 1, 1), (1, 0, 1))
    with pytest.raises(ValueError, match="3 values"):
        erode_mm(mask, (1, 1), (1, 1, 1))
    assert not erode_mm(np.zeros((3, 3, 3), bool), (1, 1, 1), (1, 1, 1)).any()


def test_each_disc_shrinks_by_its_level_code_and_l5s1_not_at_all():
    labels = np.zeros((24, 40, 120), np.uint8)  # sagittal planes first, 1 mm
    for value in range(1, 6):  # 1 = L1L2 ... 5 = L5S1 (the data README's table)
        labels[2:22, 5:35, 20 * value : 20 * value + 10] = value
    out = source_size_disc_labels(labels)
    # left-right: (k-1)/(2k) of 4.19 mm; in-plane (0.86 mm pixels) under half a voxel
    planes = {v: int(np.ptp(np.nonzero(out == v)[0]) + 1) for v in range(1, 6)}
    assert planes == {1: 16, 2: 16, 3: 18, 4: 18, 5: 20}  # 1.68, 1.57, 1.40, 1.05, 0 mm a side
    assert ((out == 5) == (labels == 5)).all()  # L5S1 matches the source's table
    # in-plane, 0.35 mm (L1L2) down to 0.22 mm (L4L5) of 1 mm pixels: the edges keep more than half, the
    # corners (1 - 0.345)² = 43 % and (1 - 0.324)² = 46 % (L1L2, L2L3), 51 % and 61 % (L3L4, L4L5)
    outline = {v: int((out == v).any(axis=0).sum()) for v in range(1, 5)}
    assert outline == {1: 300 - 4, 2: 300 - 4, 3: 300, 4: 300}
    assert not ((out > 0) & (labels == 0)).any()


def _ivd_case(n_discs: int = 5) -> TrainingCase:
    allowed = np.full((20, 130, 40), BG | VB | S1, np.uint8)
    for i in range(n_discs):  # rows run superior→inferior: the first is L1L2
        allowed[2:18, 10 + 25 * i : 18 + 25 * i, 5:35] = DISC
    return TrainingCase("IVD_99", np.zeros(allowed.shape, np.float32), allowed, 1.0, np.arange(2, 18))


def test_a_training_case_keeps_its_discs_at_the_source_size():
    case = _ivd_case()
    out = with_source_size_discs(case)
    assert (out.allowed[:, 110:118] == case.allowed[:, 110:118]).all()  # L5S1 as drawn
    l1l2 = out.allowed[:, 10:18, 5:35]
    assert (l1l2[:4] == BG | VB | S1).all() and (l1l2[-4:] == BG | VB | S1).all()  # 1.68 mm a side
    assert (l1l2[4:-4] == DISC).all()  # in-plane 0.35 mm on 1.25 mm pixels: under half
    l4l5 = out.allowed[:, 85:93, 5:35]
    assert (l4l5[:3] == BG | VB | S1).all() and (l4l5[3:-3] == DISC).all()  # 1.05 mm a side
    assert out.image is case.image
    vb = TrainingCase("VB2_99", case.image, case.allowed, 1.0, case.labelled_planes)
    assert with_source_size_discs(vb) is vb
    with pytest.raises(ValueError, match="4 separate discs, expected 5"):
        with_source_size_discs(_ivd_case(4))


def test_the_dilated_disc_outlines_are_left_open_on_their_rim_except_l5s1():
    allowed = np.full((16, 60, 40), BG | VB | S1, np.uint8)
    allowed[2:14, 10:16, 5:35] = DISC  # L4L5 (rows run superior→inferior)
    allowed[2:14, 40:46, 5:35] = DISC  # L5S1, the lowest
    case = TrainingCase("IVD_99", np.zeros(allowed.shape, np.float32), allowed, 1.0, np.arange(2, 14))
    out = with_uncertain_disc_rim(case)
    upper = out.allowed[2:14, 10:16, 5:35]
    # two planes on each side and a one-pixel in-plane rim are open; the interior stays disc
    assert (upper[:2] == DISC | VB | BG).all() and (upper[-2:] == DISC | VB | BG).all()
    assert (upper[2:-2, 0] == DISC | VB | BG).all() and (upper[2:-2, :, -1] == DISC | VB | BG).all()
    assert (upper[2:-2, 1:-1, 1:-1] == DISC).all()
    assert (out.allowed[2:14, 40:46, 5:35] == DISC).all()  # L5S1 as drawn
    assert (out.allowed[allowed != DISC] == allowed[allowed != DISC]).all() and out.image is case.image
    vb = TrainingCase("VB2_99", case.image, allowed, 1.0, case.labelled_planes)
    assert with_uncertain_disc_rim(vb) is vb  # only the disc-labelled volumes carry the dilation


def test_end_plate_offsets_measure_the_mask_beyond_the_image_edge():
    from spinegate.inference.training.ivd_discs import end_plate_offsets_mm

    image = np.zeros((6, 20, 50))
    image[1:5, 4:16, 20:30] = 100.0  # a bright disc on planes 1-4, voxels 20-29 inferior→superior
    image[1:5, 4:16, 30] = 50.0  # half a voxel more at the superior end plate: its edge lies at 30.0
    mask = np.zeros(image.shape, bool)
    mask[1:5, 4:16, 19:31] = True  # one voxel beyond the inferior edge (19.5), half a voxel beyond the superior
    assert end_plate_offsets_mm(image, mask) == (pytest.approx(1.0), pytest.approx(0.5))
    assert end_plate_offsets_mm(image, mask, spacing_mm=0.5) == (pytest.approx(0.5), pytest.approx(0.25))
    with pytest.raises(ValueError, match="differ"):
        end_plate_offsets_mm(image[:3], mask)
    with pytest.raises(ValueError, match="no column"):
        end_plate_offsets_mm(image, np.zeros_like(mask))


def test_the_check_command_prints_both_checks_per_volume_and_level(tmp_path, capsys):
    nib = pytest.importorskip("nibabel", reason="nibabel is in the training extra")
    from spinegate.inference.training.ivd_discs import main

    labels = np.zeros((24, 40, 120), np.uint8)
    for value in range(1, 6):
        labels[2:22, 5:35, 105 - 20 * value : 115 - 20 * value] = value  # L1L2 (1) the most superior
    image = np.where(labels > 0, 100.0, 10.0).astype(np.float32)
    nib.save(nib.Nifti1Image(labels, np.eye(4)), str(tmp_path / "IVD_99_label.nii.gz"))
    nib.save(nib.Nifti1Image(image, np.eye(4)), str(tmp_path / "IVD_99_image.nii.gz"))
    assert main(["--data", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    l1l2 = next(line.split() for line in lines if line.startswith("IVD_99  L1L2"))
    # 20 planes of 30 × 10 against 16 planes of 30 × 10 less the 4 corners (see above)
    assert l1l2[2] == f"{6000 / (16 * 296) - 1:+.1%}" and l1l2[3] == "+0.00"  # every mask ends at the edge
    assert sum(line.startswith("mean") for line in lines) == 5
    with pytest.raises(SystemExit, match="no IVD volumes"):
        main(["--data", str(tmp_path / "none")])
