"""Training cases: slabs of exact planes, packed cases, seeded sample
streams with workers, a teacher's S1 labels, training from packed cases
(needs the train extra)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from spinegate.inference.training.training_data import BG, DISC, VB  # noqa: E402

pytestmark = pytest.mark.heavy(seconds=45)


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


def test_acquired_examples_are_single_acquired_slices_with_the_next_ones_beside_them():
    # Planes interpolated linearly from slices 4 planes apart (the first at
    # plane 1), each plane one grey value: an example's channels show which
    # planes it took.
    from spinegate.inference.training.training_data import TrainingCase
    from spinegate.inference.training.training_samples import sample_example

    values = np.interp(np.arange(40), np.arange(-3, 44, 4), np.random.default_rng(7).uniform(0.1, 0.9, 12))
    image = np.repeat(values[:, None, None], 200 * 170, axis=1).reshape(40, 200, 170).astype(np.float32)
    allowed = np.full(image.shape, BG | DISC, np.uint8)
    allowed[5:35, 60:120, 50:110] = VB
    case = TrainingCase("VB3_93", image, allowed, 1.0, np.arange(5, 35))
    assert case.acquired_grid == (1, 4)
    rng = np.random.default_rng(0)
    for _ in range(20):
        img, _ = sample_example(case, rng, augment=False, context=1, acquired_share=1.0)
        taken = [values.tolist().index(min(values, key=lambda v: abs(v - float(ch[96, 80])))) for ch in img]
        assert all(np.isclose(float(ch[96, 80]), values[plane], atol=1e-5) for ch, plane in zip(img, taken))
        assert (taken[1] - 1) % 4 == 0 and taken[0] == taken[1] - 4 and taken[2] == taken[1] + 4
    # Without a grid (or with no share asked for) the examples are averages as before.
    assert TrainingCase("VB2_94", np.random.default_rng(1).random((40, 20, 20)).astype(np.float32),
                        np.full((40, 20, 20), BG, np.uint8), 1.0, np.arange(40)).acquired_grid is None


def test_the_intensity_field_is_smooth_shared_by_the_channels_and_unbiased_in_log():
    from spinegate.inference.training.training_samples import intensity_field

    rng = np.random.default_rng(11)
    assert np.all(intensity_field(rng, 3, 0.0) == 1.0)
    with pytest.raises(ValueError, match="'sd' must not be negative"):
        intensity_field(rng, 3, -0.1)
    fields = np.log(np.stack([intensity_field(rng, 3, 0.2) for _ in range(400)]))
    assert fields.shape == (400, 3, 192, 160)
    # Smooth: no more than a few per cent from one pixel to the next.
    assert np.abs(np.diff(fields, axis=2)).max() < 0.03 and np.abs(np.diff(fields, axis=3)).max() < 0.03
    # The neighbours differ from the centre channel by one constant each,
    # spread sd / 2; the field itself spreads sd at a knot (the corner).
    offsets = fields[:, [0, 2]] - fields[:, 1:2]
    np.testing.assert_allclose(offsets, np.broadcast_to(offsets[:, :, :1, :1], offsets.shape), atol=1e-5)
    assert np.std(offsets[:, :, 0, 0]) == pytest.approx(0.1, rel=0.15)
    assert np.std(fields[:, 1, 0, 0]) == pytest.approx(0.2, rel=0.15)
    assert abs(float(fields[:, 1].mean())) < 0.02


def test_an_intensity_field_changes_the_image_of_an_example_not_its_targets():
    from spinegate.inference.training.training_samples import sample_example

    case = _tiny_cases()[0]
    plain_img, plain_alw = sample_example(case, np.random.default_rng(5), augment=True, context=1)
    again_img, _ = sample_example(case, np.random.default_rng(5), augment=True, context=1, intensity_field_sd=0.0)
    field_img, field_alw = sample_example(case, np.random.default_rng(5), augment=True, context=1,
                                          intensity_field_sd=0.3)
    np.testing.assert_array_equal(plain_img, again_img)  # no extra draws unless asked for
    np.testing.assert_array_equal(plain_alw, field_alw)
    assert field_img.shape == plain_img.shape and not np.allclose(field_img, plain_img, atol=0.01)


def test_planes_between_acquired_slices_take_the_nearer_slices_outline():
    from spinegate.inference.training.training_data import TrainingCase, with_nearest_slice_labels

    values = np.interp(np.arange(13), np.arange(0, 16, 4), [0.2, 0.8, 0.3, 0.6])
    image = np.repeat(values[:, None, None], 20 * 20, axis=1).reshape(13, 20, 20).astype(np.float32)
    allowed = np.full(image.shape, BG, np.uint8)
    allowed[4, 5:10, 5:10] = VB  # slice 1 draws a small body, slice 2 a larger one
    allowed[8, 5:15, 5:15] = VB
    allowed[5:8] = np.where((allowed[4] == VB) | (allowed[8] == VB), VB, BG)  # the source's union
    case = TrainingCase("VB3_95", image, allowed, 1.0, np.arange(4, 9))
    assert case.acquired_grid == (0, 4)
    nearest = with_nearest_slice_labels(case).allowed
    assert (nearest[5] == allowed[4]).all() and (nearest[7] == allowed[8]).all()
    assert (nearest[6][5:10, 5:10] == VB).all() and (nearest[6][12, 12] == BG | VB)  # midway: either slice
    assert (nearest[[0, 4, 8, 12]] == allowed[[0, 4, 8, 12]]).all()  # the acquired slices as drawn
    assert with_nearest_slice_labels(TrainingCase("VB2_96", np.random.default_rng(2).random((13, 20, 20)).astype(
        np.float32), allowed, 1.0, np.arange(4, 9))).allowed is allowed  # no acquired grid: unchanged


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


def test_teacher_classes_run_an_exported_model_on_the_planes(tmp_path):
    from spinegate.inference.training.network import ResidualUNet2D
    from spinegate.inference.training.train import apply_s1_teacher
    from spinegate.inference.training.training_steps import export_onnx
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
