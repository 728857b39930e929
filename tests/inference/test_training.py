"""The partial-label loss and the training-data masks (needs the train extra)."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from spinegate.inference.training.training_steps import partial_label_loss  # noqa: E402
from spinegate.inference.training.training_data import BG, DISC, S1, VB, allowed_all  # noqa: E402


def test_pixels_allowing_every_class_add_nothing():
    logits = torch.randn(1, 4, 8, 8)
    allowed = torch.full((1, 8, 8), allowed_all, dtype=torch.int64)
    assert float(partial_label_loss(logits, allowed)) == pytest.approx(0.0, abs=1e-6)


def test_marginal_loss_accepts_any_allowed_class():
    allowed = torch.full((1, 8, 8), BG | DISC, dtype=torch.int64)
    confident_disc = torch.full((1, 4, 8, 8), -10.0)
    confident_disc[:, 3] = 10.0
    confident_vb = torch.full((1, 4, 8, 8), -10.0)
    confident_vb[:, 1] = 10.0
    assert float(partial_label_loss(confident_disc, allowed)) < 0.01
    assert float(partial_label_loss(confident_vb, allowed)) > 10


def test_loss_decreases_when_prediction_matches_labels():
    allowed = torch.full((1, 16, 16), BG, dtype=torch.int64)
    allowed[:, 4:12, 4:12] = VB
    good = torch.full((1, 4, 16, 16), -5.0)
    good[:, 0] = 5.0
    good[:, 1, 4:12, 4:12] = 10.0
    bad = torch.zeros(1, 4, 16, 16)
    assert float(partial_label_loss(good, allowed)) < float(partial_label_loss(bad, allowed))
    assert {BG, VB, S1, DISC} == {1, 2, 4, 8}


def test_vertebral_masks_forbid_lumbar_bodies_below_l5():
    from spinegate.inference.training.training_data import _vb_allowed

    labels = np.zeros((3, 100, 20), np.uint8)
    labels[1, 20:35, 5:15] = 4  # L4
    labels[1, 40:55, 5:15] = 5  # L5
    allowed = _vb_allowed(labels, top_body_partial=False)
    assert allowed[1, 25, 8] == VB
    assert allowed[1, 37, 8] == BG | DISC  # disc level between L4 and L5
    assert allowed[1, 70, 8] == BG | DISC | S1  # below L5: sacrum, never a lumbar body
    assert allowed[1, 5, 8] == allowed_all  # above the labelled extent: unknown


def test_thick_slab_pixels_where_planes_disagree_allow_the_union():
    from spinegate.inference.training.training_samples import sample_example as _sample
    from spinegate.inference.training.training_data import TrainingCase

    image = np.zeros((5, 192, 160), np.float32)
    allowed = np.full((5, 192, 160), BG | DISC, np.uint8)
    allowed[1:4, 60:120, 50:110] = VB  # a body in the 3 central planes
    allowed[1, 60:120, 50:70] = BG | DISC  # its edge is missing in plane 1
    case = TrainingCase("t", image, allowed, 1.0, np.array([2]))
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(30):
        _, alw = _sample(case, rng, augment=True)
        seen |= set(np.unique(alw).tolist())
    assert VB | BG | DISC in seen  # disagreement → union of the planes' classes
    assert VB in seen and BG | DISC in seen


def test_context_channels_are_the_neighbouring_slabs_in_order_or_mirrored():
    from spinegate.inference.training.training_samples import sample_example as _sample
    from spinegate.inference.training.training_data import TrainingCase

    # Plane i is uniformly i/10, so each channel's mean tells which slab it is.
    image = (np.arange(9, dtype=np.float32)[:, None, None] / 10) * np.ones((9, 192, 160), np.float32)
    allowed = np.full((9, 192, 160), BG | DISC, np.uint8)
    allowed[:, 60:120, 50:110] = VB
    case = TrainingCase("t", image, allowed, 1.0, np.array([4]))
    img, alw = _sample(case, np.random.default_rng(0), augment=False, context=1)
    assert img.shape == (3, 192, 160) and alw.shape == (192, 160)
    centre_pixels = img[:, 96, 80]
    np.testing.assert_allclose(centre_pixels, [0.3, 0.4, 0.5], atol=1e-6)
    rng = np.random.default_rng(3)
    orders = set()
    for _ in range(20):
        img, _ = _sample(case, rng, augment=True, context=1)
        orders.add(bool(img[0].mean() < img[2].mean()))
    assert orders == {True, False}  # both left→right and right→left orders are seen


def test_balanced_draws_weigh_each_dataset_equally_not_each_volume():
    from spinegate.inference.training.training_samples import pick_case
    from spinegate.inference.training.training_data import TrainingCase

    def case(name):
        return TrainingCase(name, np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), np.uint8), 1.0, np.zeros(1, int))

    pool = [case(f"VB3_{i:02d}") for i in range(9)] + [case("VB1_01")]
    rng = np.random.default_rng(0)
    plain = [pick_case(pool, rng).name.startswith("VB1") for _ in range(4000)]
    balanced = [pick_case(pool, rng, by_dataset=True).name.startswith("VB1") for _ in range(4000)]
    assert abs(np.mean(plain) - 0.1) < 0.02
    assert abs(np.mean(balanced) - 0.5) < 0.03


def test_majority_slab_targets_follow_at_least_half_of_the_planes():
    from spinegate.inference.training.training_samples import slab_targets

    # One pixel column per case, 4 planes each.
    planes = np.array([
        [VB, VB, VB, BG | DISC],            # 3 of 4 body → body
        [VB, VB, BG | DISC, BG | DISC],     # 2 of 4 (half) → body
        [VB, BG | DISC, BG | DISC, BG | DISC],  # 1 of 4 → not body
        [VB, DISC, BG, S1],                 # no majority, all single → union kept
    ], np.uint8).T[:, :, None]
    out = slab_targets(planes, 1, "majority")[:, 0]
    assert out.tolist() == [VB, VB, BG | DISC, VB | DISC | BG | S1]
    assert slab_targets(planes, 1, "centre")[:, 0].tolist() == [VB, VB, BG | DISC, DISC]
    assert slab_targets(planes, 1, "union")[:, 0].tolist()[2] == VB | BG | DISC


def test_end_planes_are_the_labelled_planes_under_half_the_largest_area():
    from spinegate.inference.training.training_data import TrainingCase

    allowed = np.full((7, 40, 40), BG | DISC, np.uint8)
    for plane, side in ((1, 4), (2, 8), (3, 10), (4, 9), (5, 6)):  # areas 16, 64, 100, 81, 36
        allowed[plane, :side, :side] = VB
    case = TrainingCase("t", np.zeros(allowed.shape, np.float32), allowed, 1.0, np.arange(1, 6))
    assert case.end_planes.tolist() == [1, 5]  # 16 and 36 < 50; 64, 81, 100 are not


def test_end_plane_share_centres_that_share_of_slabs_on_the_end_planes():
    from spinegate.inference.training.training_samples import sample_example as _sample
    from spinegate.inference.training.training_data import TrainingCase

    # Plane i is uniformly i/10: a 1 mm slab's mean tells its centre plane.
    image = (np.arange(9, dtype=np.float32)[:, None, None] / 10) * np.ones((9, 192, 160), np.float32)
    allowed = np.full((9, 192, 160), BG | DISC, np.uint8)
    allowed[2:7, 60:120, 50:110] = VB  # 3600 pixels of body on planes 2-6
    allowed[[1, 7], 60:70, 50:60] = VB  # 100 on planes 1 and 7, the ends
    case = TrainingCase("t", image, allowed, 1.0, np.arange(1, 8))
    assert case.end_planes.tolist() == [1, 7]

    def end_share(share: float) -> float:
        rng = np.random.default_rng(5)
        hits = 0
        for _ in range(300):
            # Without augmentation the patch keeps the slab's uniform value.
            img, _ = _sample(case, rng, augment=False, end_plane_share=share)
            hits += int(round(10 * float(img[0, 96, 80]))) in (1, 7)
        return hits / 300

    assert end_share(0.0) == pytest.approx(2 / 7, abs=0.07)
    assert end_share(0.8) == pytest.approx(0.8 + 0.2 * 2 / 7, abs=0.07)


def test_the_training_configuration_checks_its_values():
    from spinegate.inference.training.train import SagittalTrainingConfig

    assert SagittalTrainingConfig(data=Path("d")).slab_labels == "union"
    for bad, match in (({}, "not both"), ({"data": Path("d"), "cases": Path("c")}, "not both"),
                       ({"data": Path("d"), "batch": 0}, "positive"),
                       ({"data": Path("d"), "slab_labels": "mode"}, "union, centre or majority"),
                       ({"data": Path("d"), "end_plane_share": 1.5}, "0-1"),
                       ({"data": Path("d"), "acquired_share": -0.1}, "acquired_share -0.1 is not within 0-1"),
                       ({"data": Path("d"), "intensity_field_sd": 1.5}, "intensity_field_sd 1.5 is not within 0-1"),
                       ({"data": Path("d"), "disc_rim": "loose"}, "strict, source-size, uncertain"),
                       ({"data": Path("d"), "open_body_rim": ("VB4",)}, "not in VB1, VB2, VB3, phantom")):
        with pytest.raises(ValueError, match=match):
            SagittalTrainingConfig(**bad)


def test_an_open_body_rim_leaves_a_pixel_around_each_outline_to_the_other_label_sets():
    from spinegate.inference.training.training_data import TrainingCase, with_open_body_rim

    allowed = np.full((8, 60, 40), BG | DISC, np.uint8)
    allowed[:, 45:, :] = BG | DISC | S1
    allowed[2:6, 10:20, 10:30] = VB  # L5 (rows run superior→inferior)
    allowed[2:6, 50:56, 10:30] = S1
    case = TrainingCase("VB1_99", np.zeros(allowed.shape, np.float32), allowed, 1.0, np.arange(2, 6))
    out = with_open_body_rim(case).allowed
    body = out[2:6, 10:20, 10:30]
    assert (body[:, 1:-1, 1:-1] == VB).all()  # the interior stays body
    assert (body[:, 0] == VB | BG | DISC).all() and (body[:, :, -1] == VB | BG | DISC).all()
    assert (out[2:6, 9, 10:30] == BG | DISC | VB).all() and (out[2:6, 20, 9:31] == BG | DISC | VB).all()
    assert (out[[1, 6], 9:21, 9:31] == BG | DISC | VB).all()  # a plane beyond each lateral end
    assert (out[[0, 7]] == allowed[[0, 7]]).all() and (out[2:6, 22:44] == allowed[2:6, 22:44]).all()
    assert (out[2:6, 51:55, 11:29] == S1).all() and (out[2:6, 49, 10:30] == BG | DISC | S1).all()
    assert (out[2:6, 50, 10:30] == S1 | BG | DISC).all() and out.dtype == np.uint8


def test_a_teacher_s1_fills_an_unlabelled_s1_and_rules_it_out_elsewhere():
    from spinegate.inference.training.training_data import TrainingCase, with_teacher_s1

    allowed = np.full((6, 60, 40), BG | DISC, np.uint8)
    allowed[:, 30:, :] = BG | DISC | S1  # below L5: sacrum, disc or background
    allowed[:, :5, :] = allowed_all  # outside the annotated extent
    allowed[1:5, 10:25, 10:30] = VB
    case = TrainingCase("VB3_99", np.zeros(allowed.shape, np.float32), allowed, 1.0, np.arange(1, 5))
    classes = np.zeros(allowed.shape, np.uint8)
    classes[1:5, 35:55, 10:35] = 2  # the teacher's S1: 2000 voxels × 1.5625 mm³
    classes[2, 57:59, 2:5] = 2  # a speck
    classes[2, 12:15, 12:15] = 2  # S1 called inside a labelled body: not open to S1
    out = with_teacher_s1(case, classes)
    assert (out.allowed[1:5, 35:55, 10:35] == S1).all()
    assert out.allowed[2, 58, 3] == BG | DISC and out.allowed[0, 2, 0] == BG | VB | DISC
    assert (out.allowed[1:5, 10:25, 10:30] == VB).all() and (out.image is case.image)
    # too small a teacher S1, or a case with S1 labels, stays as it is
    assert with_teacher_s1(case, classes, min_s1_mm3=5000) is case
    labelled = TrainingCase("VB1_99", case.image, np.where(classes == 2, S1, allowed).astype(np.uint8), 1.0,
                            case.labelled_planes)
    assert with_teacher_s1(labelled, classes) is labelled
    with pytest.raises(ValueError, match="differ"):
        with_teacher_s1(case, classes[:3])


def test_varied_phantom_values_cover_the_range_evenly_in_a_fixed_order_per_stream():
    from spinegate.inference.training.train_axial import stratified_values

    scales = stratified_values(12, (0.75, 1.35), 70_000)
    assert scales == stratified_values(12, (0.75, 1.35), 70_000)
    assert sorted(scales) == pytest.approx([0.775 + 0.05 * k for k in range(12)])
    assert scales != sorted(scales)  # the value does not follow the seed
    assert stratified_values(12, (0.75, 1.35), 71_000) != scales  # nor another drawn value


def test_averaged_weights_are_the_elementwise_mean_of_the_fine_tunings():
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.training_steps import averaged_weights

    torch.manual_seed(0)
    nets = [ResidualUNet2D(3, channels=(4, 8)) for _ in range(3)]
    states = [n.state_dict() for n in nets]
    soup = averaged_weights(states)
    for name, tensor in soup.items():
        stacked = torch.stack([s[name].double() for s in states])
        if tensor.is_floating_point():
            assert torch.allclose(tensor.double(), stacked.mean(dim=0), atol=1e-7), name
        assert tensor.dtype == states[0][name].dtype
    # One state dict averages to itself; the result loads into the network.
    assert all(torch.equal(a, b) for a, b in zip(averaged_weights(states[:1]).values(), states[0].values()))
    ResidualUNet2D(3, channels=(4, 8)).load_state_dict(soup)
    with pytest.raises(ValueError, match="at least one"):
        averaged_weights([])
    with pytest.raises(ValueError, match="state dict 1 does not match"):
        averaged_weights([states[0], ResidualUNet2D(3, channels=(4, 16)).state_dict()])


def test_dixon_images_rebuild_in_phase_and_opposed_phase_from_water_and_fat():
    from spinegate.inference.training.train_axial import dixon_image

    water = np.array([[100.0, 20.0]], np.float32)
    fat = np.array([[10.0, 90.0]], np.float32)
    assert dixon_image(water, fat, "in_phase").tolist() == [[110.0, 110.0]]
    assert dixon_image(water, fat, "opposed_phase").tolist() == [[90.0, 70.0]]
    assert dixon_image(water, fat, "water") is not None and dixon_image(water, fat, "fat").tolist() == [[10.0, 90.0]]
    with pytest.raises(ValueError, match="unknown Dixon image 'out_of_phase'"):
        dixon_image(water, fat, "out_of_phase")
