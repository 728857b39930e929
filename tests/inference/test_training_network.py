"""The training network: widening, ONNX export and rebuilding, continuing
training, the context bias, an optimisation step (needs the train extra)."""

import pytest

torch = pytest.importorskip("torch", reason="torch is the training extra: pip install '.[train]'")

from spinegate.inference.training.training_data import BG, VB  # noqa: E402


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


def test_a_network_rebuilt_from_its_onnx_export_computes_the_same(tmp_path):
    pytest.importorskip("onnx")
    from spinegate.inference.training.network import ResidualUNet2D, load_from_onnx
    from spinegate.inference.training.training_steps import export_onnx

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
    from spinegate.inference.training.train import initial_model
    from spinegate.inference.training.training_steps import export_onnx
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
    from spinegate.inference.training.training_steps import optimisation_step
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
    from spinegate.inference.training.training_steps import export_onnx

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
    from spinegate.inference.training.train import initial_model, trainable_parameters
    from spinegate.inference.training.training_steps import optimisation_step
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
