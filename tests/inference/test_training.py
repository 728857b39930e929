"""The partial-label loss and the training-data masks (needs the train extra)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from inference.train import partial_label_loss  # noqa: E402
from inference.training_data import BG, DISC, S1, VB, allowed_all  # noqa: E402


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
    from inference.training_data import _vb_allowed

    labels = np.zeros((3, 100, 20), np.uint8)
    labels[1, 20:35, 5:15] = 4  # L4
    labels[1, 40:55, 5:15] = 5  # L5
    allowed = _vb_allowed(labels, top_body_partial=False)
    assert allowed[1, 25, 8] == VB
    assert allowed[1, 37, 8] == BG | DISC  # disc level between L4 and L5
    assert allowed[1, 70, 8] == BG | DISC | S1  # below L5: sacrum, never a lumbar body
    assert allowed[1, 5, 8] == allowed_all  # above the labelled extent: unknown


def test_thick_slab_pixels_where_planes_disagree_allow_the_union():
    from inference.train import _sample
    from inference.training_data import TrainingCase

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
    from inference.train import _sample
    from inference.training_data import TrainingCase

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


def test_widened_network_computes_the_single_slice_function_until_trained():
    import torch

    from inference.network import ResidualUNet2D

    torch.manual_seed(0)
    net = ResidualUNet2D(4, channels=(4, 8), dropout=0.0).eval()
    x = torch.rand(2, 1, 32, 32)
    before = net(x)
    net.widen_input(3)
    neighbours = torch.rand(2, 3, 32, 32)
    neighbours[:, 1] = x[:, 0]
    torch.testing.assert_close(net(neighbours), before)
    with pytest.raises(ValueError, match="1-channel"):
        net.widen_input(5)


def test_majority_slab_targets_follow_at_least_half_of_the_planes():
    from inference.train import slab_targets

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
