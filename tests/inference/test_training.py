"""The partial-label loss and the training-data masks (needs the train extra)."""
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from spinegate.inference.training.train import partial_label_loss  # noqa: E402
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


def test_widened_network_computes_the_narrower_function_until_trained():
    import torch

    from spinegate.inference.training.network import ResidualUNet2D

    torch.manual_seed(0)
    net = ResidualUNet2D(4, channels=(4, 8), dropout=0.0).eval()
    x = torch.rand(2, 1, 32, 32)
    before = net(x)
    net.widen_input(3)
    neighbours = torch.rand(2, 3, 32, 32)
    neighbours[:, 1] = x[:, 0]
    torch.testing.assert_close(net(neighbours), before)
    # 3 → 5: the slice and its near neighbours keep their weights.
    before = net(neighbours)
    wider = torch.rand(2, 5, 32, 32)
    wider[:, 1:4] = neighbours
    net.widen_input(5)
    torch.testing.assert_close(net(wider), before)
    for narrower_or_even in (5, 3, 6):
        with pytest.raises(ValueError, match="odd number of slices above 5"):
            net.widen_input(narrower_or_even)


def test_network_given_more_feature_maps_computes_the_same_function_until_trained():
    import torch

    from spinegate.inference.training.network import ResidualUNet2D

    torch.manual_seed(2)
    net = ResidualUNet2D(4, channels=(4, 8, 12), in_channels=3, dropout=0.1).eval()
    with torch.no_grad():  # norms off their identity start, so a misplaced map would show
        for m in net.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    x = torch.rand(2, 3, 32, 32)
    wide = net.widen_channels((6, 8, 20))
    assert wide.channels == (6, 8, 20) and not wide.training and net.channels == (4, 8, 12)
    torch.testing.assert_close(wide(x), net(x))
    # the new maps do learn: each has a gradient once trained a step
    wide.train()
    wide(x).square().mean().backward()
    assert wide.head.weight.grad[:, 4:].abs().sum() > 0
    for narrower in ((4, 8), (4, 6, 12)):
        with pytest.raises(ValueError, match="no fewer maps each"):
            net.widen_channels(narrower)


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


def test_a_network_rebuilt_from_its_onnx_export_computes_the_same(tmp_path):
    pytest.importorskip("onnx")
    from spinegate.inference.training.network import ResidualUNet2D, load_from_onnx
    from spinegate.inference.training.train import export_onnx

    torch.manual_seed(0)
    net = ResidualUNet2D(4, channels=(4, 8), dropout=0.0, in_channels=3).eval()
    with torch.no_grad():  # distinct values (the exporter merges identical initializers, as fresh norms are)
        for param in net.parameters():
            param.uniform_(0.5, 1.5)
    export_onnx(net, tmp_path / "net.onnx")
    rebuilt = load_from_onnx(tmp_path / "net.onnx")
    x = torch.rand(2, 3, 32, 32)
    assert rebuilt.in_channels == 3 and not rebuilt.training
    torch.testing.assert_close(rebuilt(x), net(x))
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "other.onnx")
    with pytest.raises(ValueError, match="not a spinegate residual U-Net"):
        load_from_onnx(tmp_path / "other.onnx")


def test_training_continues_from_a_state_dict_or_an_onnx_model_widened_to_the_context(tmp_path):
    pytest.importorskip("onnx")
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.train import export_onnx, initial_model
    from spinegate.inference.training.training_data import CLASS_NAMES

    torch.manual_seed(1)
    net = ResidualUNet2D(len(CLASS_NAMES), in_channels=1).eval()
    with torch.no_grad():  # distinct values (the exporter merges identical initializers)
        for param in net.parameters():
            param.uniform_(0.5, 1.5)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    export_onnx(net, tmp_path / "net.onnx")
    x = torch.rand(1, 1, 32, 32)
    for init in (tmp_path / "net.pt", tmp_path / "net.onnx"):
        model = initial_model(init, 3).eval()
        assert model.in_channels == 3
        torch.testing.assert_close(model(x.repeat(1, 3, 1, 1)), net(x), rtol=1e-4, atol=1e-4)
    assert initial_model(None, 3).in_channels == 3
    wide = initial_model(tmp_path / "net.pt", 3)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    assert initial_model(tmp_path / "wide.pt", 5).in_channels == 5
    with pytest.raises(SystemExit, match="takes 3 input slices"):
        initial_model(tmp_path / "wide.pt", 1)
    wider = initial_model(tmp_path / "net.pt", 1, (24, 48, 96, 192, 288)).eval()
    assert wider.channels == (24, 48, 96, 192, 288)
    torch.testing.assert_close(wider(x), net(x), rtol=1e-4, atol=1e-4)
    torch.save(wider.state_dict(), tmp_path / "wider.pt")
    assert initial_model(tmp_path / "wider.pt", 1).channels == (24, 48, 96, 192, 288)
    with pytest.raises(SystemExit, match="no fewer maps each"):
        initial_model(tmp_path / "wider.pt", 1, (16, 32, 64, 128, 192))
    # a saved checkpoint of any width exports as it is
    from spinegate.inference.training.network import load_from_onnx
    from spinegate.inference.training.train import main

    assert main(["export", str(tmp_path / "wider.pt"), "--out", str(tmp_path)]) == 0
    exported = load_from_onnx(tmp_path / "sagittal_spine.onnx")
    assert exported.channels == (24, 48, 96, 192, 288)
    torch.testing.assert_close(exported(x), net(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("bf16", [False, True])
def test_an_optimisation_step_fits_a_batch_and_keeps_float32_weights(bf16):
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.train import optimisation_step
    from spinegate.inference.training.training_data import CLASS_NAMES

    torch.manual_seed(3)
    model = ResidualUNet2D(len(CLASS_NAMES), in_channels=1)
    model.train()
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0
    allowed = torch.full((2, 32, 32), BG, dtype=torch.int64)
    allowed[:, 8:24, 8:24] = VB
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    losses = [optimisation_step(model, opt, sched, x, allowed, bf16=bf16) for _ in range(25)]
    assert losses[-1] < 0.5 * losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_a_global_context_bias_starts_at_zero_shifts_whole_slices_and_survives_export(tmp_path):
    pytest.importorskip("onnx")
    from spinegate.inference.training.network import ResidualUNet2D, from_weights, load_from_onnx
    from spinegate.inference.training.train import export_onnx

    torch.manual_seed(4)
    net = ResidualUNet2D(4, channels=(4, 8, 12), in_channels=3).eval()
    with torch.no_grad():  # distinct values (the exporter merges identical initializers)
        for param in net.parameters():
            param.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 48)
    before = net(x)
    net.add_global_context()
    torch.testing.assert_close(net(x), before)  # zero offsets until trained
    with pytest.raises(ValueError, match="already"):
        net.add_global_context()
    with pytest.raises(ValueError, match="before adding the global context"):
        net.widen_channels((8, 16, 24))
    with torch.no_grad():
        for param in net.context.parameters():
            param.uniform_(0.5, 1.5)
    shift = net(x) - before
    # one offset per class and slice, the same at every pixel, different between slices
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift), rtol=1e-4, atol=1e-4)
    assert float((shift[0, :, 0, 0] - shift[1, :, 0, 0]).abs().max()) > 1e-4
    export_onnx(net, tmp_path / "net.onnx")
    rebuilt = load_from_onnx(tmp_path / "net.onnx")
    assert rebuilt.context is not None
    torch.testing.assert_close(rebuilt(x), net(x), rtol=1e-4, atol=1e-4)
    assert from_weights(net.state_dict()).context is not None
    assert ResidualUNet2D(4, channels=(4, 8)).context is None


def test_training_only_the_context_bias_leaves_the_rest_of_the_network_unchanged(tmp_path):
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.train import initial_model, optimisation_step, trainable_parameters
    from spinegate.inference.training.training_data import CLASS_NAMES

    torch.manual_seed(5)
    net = ResidualUNet2D(len(CLASS_NAMES), in_channels=3).eval()
    torch.save(net.state_dict(), tmp_path / "net.pt")
    with pytest.raises(SystemExit, match="--global-context"):
        trainable_parameters(initial_model(tmp_path / "net.pt", 3), context_only=True)
    model = initial_model(tmp_path / "net.pt", 3, global_context=True).eval()
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model(x), net(x))
    params = trainable_parameters(model, context_only=True)
    assert {id(p) for p in params} == {id(p) for p in model.context.parameters()}
    frozen = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("context.")}
    # every pixel is a vertebral body: only a whole-slice offset is needed
    allowed = torch.full((2, 32, 32), VB, dtype=torch.int64)
    opt = torch.optim.AdamW(params, lr=1e-2)
    sched = torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0)
    losses = [optimisation_step(model, opt, sched, x, allowed) for _ in range(30)]
    assert losses[-1] < 0.5 * losses[0]
    for k, v in model.state_dict().items():
        if not k.startswith("context."):
            torch.testing.assert_close(v, frozen[k])
    assert len(trainable_parameters(model, context_only=False)) == len(list(model.parameters()))


def _tiny_cases() -> list:
    from spinegate.inference.training.training_data import TrainingCase

    rng = np.random.default_rng(3)
    cases = []
    for name in ("VB3_90", "VB2_91", "IVD_92"):
        image = rng.random((12, 200, 170)).astype(np.float32)
        allowed = np.full(image.shape, BG | DISC, np.uint8)
        allowed[3:9, 60:120, 50:110] = VB
        cases.append(TrainingCase(name, image, allowed, 1.0, np.arange(3, 9)))
    return cases


def test_exact_planes_slabs_take_the_thickness_own_even_or_odd_number_of_planes():
    from spinegate.inference.training.training_samples import _slab, slab_bounds

    assert slab_bounds(5, 4, 20) == (4, 8)  # one plane further up than down
    assert slab_bounds(5, 3, 20) == (4, 7)
    assert slab_bounds(0, 4, 20) == (0, 3) and slab_bounds(19, 4, 20) == (18, 20)  # clipped
    case = _tiny_cases()[0]
    np.testing.assert_allclose(_slab(case, 5, 4), case.image[4:8].mean(axis=0))
    # Planes 2-5 bright: a 4 mm slab centred on plane 3 averages exactly
    # them (mean 1), the odd-count 5-plane slab also plane 1 (mean 0.8).
    from spinegate.inference.training.training_data import TrainingCase
    from spinegate.inference.training.training_samples import sample_example

    image = np.zeros((12, 200, 170), np.float32)
    image[2:6] = 1.0
    centred = TrainingCase("t", image, case.allowed, 1.0, np.array([3]))
    centre_values = {}
    for exact in (True, False):
        rng = np.random.default_rng(0)  # the same draws: only the slab differs
        img, alw = sample_example(centred, rng, augment=True, thickness_mm_range=(4.0, 4.0), exact_planes=exact)
        assert img.shape == (1, 192, 160) and alw.shape == (192, 160)
        centre_values[exact] = float(img[0, 96, 80])
    assert centre_values[True] - centre_values[False] > 0.05


def test_packed_cases_round_trip_at_six_bits_and_a_wrong_file_is_refused(tmp_path):
    from spinegate.inference.training.training_data import pack_cases, unpack_cases

    cases = _tiny_cases()
    pack_cases(cases, tmp_path / "cases.xz")
    back = unpack_cases(tmp_path / "cases.xz")
    assert [c.name for c in back] == [c.name for c in cases]
    for a, b in zip(cases, back):
        assert np.abs(a.image - b.image).max() <= 0.5 / 63 + 1e-6
        assert (a.allowed == b.allowed).all() and (a.labelled_planes == b.labelled_planes).all()
        assert b.plane_spacing_mm == a.plane_spacing_mm and b.image.dtype == np.float32
    (tmp_path / "bad.xz").write_bytes(b"not a packed file")
    with pytest.raises(ValueError, match="not a packed cases file"):
        unpack_cases(tmp_path / "bad.xz")


def test_sample_stream_workers_repeat_with_the_seed_and_differ_across_seeds():
    from spinegate.inference.training.training_samples import SampleStream

    cases = _tiny_cases()

    def first_batches(seed: int) -> list:
        stream = SampleStream([(cases[:2], 0.5), (cases[2:], 0.5)], batch=2, seed=seed, context=1)
        loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
        it = iter(loader)
        return [next(it) for _ in range(3)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    assert a[0][0].shape == (2, 3, 192, 160) and a[0][1].dtype == torch.int64
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    assert not torch.equal(a[0][0], a[1][0])  # the two workers draw differently
    with pytest.raises(ValueError, match="sum to 1"):
        SampleStream([(cases, 0.5)], batch=2, seed=1)


def test_training_from_packed_cases_with_workers_and_a_time_budget(tmp_path):
    import json

    from spinegate.inference.training.train import main
    from spinegate.inference.training.training_data import pack_cases

    pack_cases(_tiny_cases(), tmp_path / "cases.xz")
    common = ["fit", "--cases", str(tmp_path / "cases.xz"), "--channels", "4", "8", "--batch", "1", "--phantoms", "1",
              "--context", "1", "--no-onnx", "--exact-planes", "--slab-labels", "majority"]
    assert main(common + ["--out", str(tmp_path / "a"), "--iterations", "4", "--start-iterations", "2"]) == 0
    record = json.loads((tmp_path / "a" / "sagittal_spine.training.json").read_text())
    assert (record["iterations"], record["start_iterations"], record["exact_planes"]) == (4, 2, True)
    assert record["training_volumes"] == ["VB3_90", "VB2_91", "IVD_92"] and len(record["loss_every_50"]) == 1
    assert (tmp_path / "a" / "sagittal_spine.pt").exists() and not (tmp_path / "a" / "sagittal_spine.onnx").exists()
    assert main(common + ["--out", str(tmp_path / "b"), "--workers", "2", "--time-budget-s", "10"]) == 0
    record = json.loads((tmp_path / "b" / "sagittal_spine.training.json").read_text())
    assert record["start_iterations"] == 100 and record["iterations"] > 100 and record["workers"] == 2
    with pytest.raises(SystemExit):
        main(["fit", "--out", str(tmp_path / "c")])  # neither --data nor --cases


def test_the_training_configuration_checks_its_values():
    from spinegate.inference.training.train import SagittalTrainingConfig

    assert SagittalTrainingConfig(data=Path("d")).slab_labels == "union"
    for bad, match in (({}, "not both"), ({"data": Path("d"), "cases": Path("c")}, "not both"),
                       ({"data": Path("d"), "batch": 0}, "positive"),
                       ({"data": Path("d"), "slab_labels": "mode"}, "union, centre or majority"),
                       ({"data": Path("d"), "end_plane_share": 1.5}, "0-1"),
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


def test_teacher_classes_run_an_exported_model_on_the_planes(tmp_path):
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.train import apply_s1_teacher, export_onnx
    from spinegate.inference.training.training_data import teacher_classes

    torch.manual_seed(0)
    net = ResidualUNet2D(4, channels=(4, 8), in_channels=3)
    export_onnx(net, tmp_path / "teacher.onnx")
    case = _tiny_cases()[0]
    from spinegate.inference.backends import make_backend

    classes = teacher_classes(case, make_backend("onnxruntime", tmp_path / "teacher.onnx"))
    assert classes.shape == case.image.shape and classes.dtype == np.uint8
    with torch.no_grad():
        x = torch.from_numpy(np.stack([case.image[[4, 5, 6]]]))
        x = torch.nn.functional.pad(x, (0, 6, 0, 8))  # 200 × 170 → 208 × 176
        expected = net.eval()(x).argmax(dim=1)[0, :200, :170].numpy()
    assert (classes[5] == expected).mean() > 0.999
    # only the named datasets are given the teacher's S1
    cases = _tiny_cases()
    out = apply_s1_teacher(cases, tmp_path / "teacher.onnx", ["IVD"])
    assert out[0] is cases[0] and out[1] is cases[1]


def test_varied_phantom_values_cover_the_range_evenly_in_a_fixed_order_per_stream():
    from spinegate.inference.training.train_axial import stratified_values

    scales = stratified_values(12, (0.75, 1.35), 70_000)
    assert scales == stratified_values(12, (0.75, 1.35), 70_000)
    assert sorted(scales) == pytest.approx([0.775 + 0.05 * k for k in range(12)])
    assert scales != sorted(scales)  # the value does not follow the seed
    assert stratified_values(12, (0.75, 1.35), 71_000) != scales  # nor another drawn value
