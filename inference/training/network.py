"""2D residual U-Net (DOMAIN.md §4): strided-conv downsampling, transposed-conv
upsampling, instance norm, LeakyReLU, residual units, skip connections.

Training-only module: it imports torch, which the runtime install does not
carry (inference runs the exported ONNX graph).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["DEFAULT_CHANNELS", "GlobalContextBias", "ResidualUNet2D", "from_weights", "load_from_onnx"]

# Feature maps per level of the committed sagittal model.
DEFAULT_CHANNELS = (16, 32, 64, 128, 192)


class _ResidualUnit(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.InstanceNorm2d(c_out, affine=True),
            nn.LeakyReLU(0.1, inplace=True),
            nn.Dropout2d(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.InstanceNorm2d(c_out, affine=True),
        )
        self.skip = (
            nn.Identity()
            if (c_in == c_out and stride == 1)
            else nn.Conv2d(c_in, c_out, 1 if stride == 1 else 3, stride=stride, padding=0 if stride == 1 else 1)
        )
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class GlobalContextBias(nn.Module):
    """Per-class logit offsets computed from the whole slice: the bottleneck
    features averaged over the image, through a small MLP, added to every
    pixel's logits.

    Why: the training sources trace vertebral-body contours at different
    distances from the bone edge, and which one an image follows shows in
    the image as a whole (sequence, field strength, resolution), not in a
    local patch. A pixel-local network can only settle between them; this
    offset moves the whole slice's class boundaries together. The output
    layer starts at zero, so adding the module leaves a trained network's
    function unchanged until it is trained.

    Parameters
    ----------
    features : int
        Channels of the bottleneck feature map.
    n_classes : int
        Output classes (logits).
    hidden : int
        Width of the hidden layer.
    """

    def __init__(self, features: int, n_classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, hidden)
        self.act = nn.LeakyReLU(0.1)
        self.out = nn.Linear(hidden, n_classes)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        """(batch, classes, 1, 1) offsets from (batch, features, rows, cols)."""
        return self.out(self.act(self.hidden(bottleneck.mean(dim=(2, 3)))))[:, :, None, None]


class ResidualUNet2D(nn.Module):
    """Residual U-Net for 2D slices (optionally with neighbouring slices as
    extra input channels, "2.5D").

    Parameters
    ----------
    n_classes : int
        Output channels (softmax logits).
    in_channels : int
        Input channels: 1 for a single slice, 3 for a slice with its two
        neighbours.
    channels : tuple of int
        Feature maps per level; each level after the first halves the size,
        so inputs must be divisible by ``2 ** (len(channels) - 1)``.
    dropout : float
        Channel dropout inside residual units (0.05-0.2 reported to work).
    global_context : bool
        Add a `GlobalContextBias` (whole-slice logit offsets).
    """

    def __init__(self, n_classes: int, channels: tuple[int, ...] = DEFAULT_CHANNELS, dropout: float = 0.1,
                 in_channels: int = 1, global_context: bool = False) -> None:
        super().__init__()
        if n_classes < 2:
            raise ValueError(f"'n_classes' must be >= 2, got {n_classes}")
        if in_channels < 1:
            raise ValueError(f"'in_channels' must be >= 1, got {in_channels}")
        self.in_channels = in_channels
        self.stem = _ResidualUnit(in_channels, channels[0], 1, 0.0)
        self.down = nn.ModuleList(
            _ResidualUnit(channels[i], channels[i + 1], 2, dropout) for i in range(len(channels) - 1)
        )
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(channels[i + 1], channels[i], 2, stride=2) for i in reversed(range(len(channels) - 1))
        )
        self.merge = nn.ModuleList(
            _ResidualUnit(2 * channels[i], channels[i], 1, dropout) for i in reversed(range(len(channels) - 1))
        )
        self.head = nn.Conv2d(channels[0], n_classes, 1)
        self.context: GlobalContextBias | None = GlobalContextBias(channels[-1], n_classes) if global_context else None

    def add_global_context(self) -> None:
        """Give the network a `GlobalContextBias` that starts at zero (same
        function until trained).

        Raises
        ------
        ValueError
            If the network has one already.
        """
        if self.context is not None:
            raise ValueError("the network has a global context bias already")
        self.context = GlobalContextBias(self.channels[-1], self.head.out_channels)

    def widen_input(self, in_channels: int) -> None:
        """Give the network more neighbour slices, the new outer ones starting
        at zero weight, so it computes the same function until trained
        (fine-tuning a 2D model into a 2.5D one, or a 2.5D one into a wider
        one). The existing channels keep their place at the centre.

        Raises
        ------
        ValueError
            If ``in_channels`` is not an odd number above the current count.
        """
        if in_channels <= self.in_channels or in_channels % 2 == 0:
            raise ValueError(f"can only widen to an odd number of slices above {self.in_channels}, not {in_channels}")
        first = (in_channels - self.in_channels) // 2
        for conv in (self.stem.body[0], self.stem.skip):
            w = conv.weight.data
            wide = torch.zeros(w.shape[0], in_channels, *w.shape[2:], dtype=w.dtype)
            wide[:, first : first + self.in_channels] = w
            conv.weight = nn.Parameter(wide)
            conv.in_channels = in_channels
        self.in_channels = in_channels

    @property
    def channels(self) -> tuple[int, ...]:
        """Feature maps per level."""
        return (self.stem.body[0].out_channels, *(d.body[0].out_channels for d in self.down))

    def widen_channels(self, channels: tuple[int, ...]) -> "ResidualUNet2D":
        """A network with more feature maps per level that computes the same
        function until trained (the new maps start with random weights and
        feed nothing: every weight from a new map into an existing one is
        zero), so a trained network can be given more capacity and
        fine-tuned instead of trained again from scratch.

        Returns a new network in the same train/eval mode; this one is left
        as it is.

        Raises
        ------
        ValueError
            If ``channels`` has another number of levels or fewer maps on any
            level.
        """
        old = self.channels
        if len(channels) != len(old) or any(c < o for c, o in zip(channels, old)):
            raise ValueError(f"can only widen {old} to as many levels with no fewer maps each, not {tuple(channels)}")
        if self.context is not None:
            raise ValueError("widen the feature maps before adding the global context bias")
        wide = ResidualUNet2D(self.head.out_channels, channels=tuple(channels), in_channels=self.in_channels,
                              dropout=_dropout_of(self))
        level = [torch.arange(o) for o in old]
        merged = [torch.cat([level[i], channels[i] + level[i]]) for i in range(len(old))]
        pairs = [(self.stem, wide.stem, torch.arange(self.in_channels), level[0])]
        pairs += [(a, b, level[i], level[i + 1]) for i, (a, b) in enumerate(zip(self.down, wide.down))]
        ups = list(reversed(range(len(old) - 1)))
        pairs += [(a, b, merged[i], level[i]) for (a, b), i in zip(zip(self.merge, wide.merge), ups)]
        with torch.no_grad():
            for a, b, ins, outs in pairs:
                _copy_conv(a.body[0], b.body[0], ins, outs)
                _copy_conv(a.body[4], b.body[4], outs, outs)
                for norm in (1, 5):
                    b.body[norm].weight[outs] = a.body[norm].weight
                    b.body[norm].bias[outs] = a.body[norm].bias
                if isinstance(a.skip, nn.Conv2d):
                    _copy_conv(a.skip, b.skip, ins, outs)
            for (a, b), i in zip(zip(self.up, wide.up), ups):
                # transposed convolutions hold weights as (in, out, ...)
                b.weight[:, level[i]] = 0.0
                b.weight[level[i + 1][:, None], level[i]] = a.weight
                b.bias[level[i]] = a.bias
            _copy_conv(self.head, wide.head, level[0], torch.arange(self.head.out_channels))
        return wide.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        offsets = self.context(y) if self.context is not None else None
        for up, merge in zip(self.up, self.merge):
            y = merge(torch.cat([up(y), skips.pop()], dim=1))
        logits = self.head(y)
        return logits if offsets is None else logits + offsets


def _dropout_of(model: nn.Module) -> float:
    return next((m.p for m in model.modules() if isinstance(m, nn.Dropout2d)), 0.0)


def _copy_conv(small: nn.Conv2d, large: nn.Conv2d, ins: torch.Tensor, outs: torch.Tensor) -> None:
    """Put ``small``'s weights into ``large`` at the ``outs`` × ``ins``
    positions and zero the weights from every other input into ``outs``."""
    large.weight[outs] = 0.0
    large.weight[outs[:, None], ins] = small.weight
    if small.bias is not None:
        large.bias[outs] = small.bias


def from_weights(weights: dict[str, np.ndarray | torch.Tensor], source: str = "the weights") -> ResidualUNet2D:
    """Rebuild a network of whatever width, depth, input slices and global
    context the named weights (a state dict, or an export's initializers) describe.

    Raises
    ------
    ValueError
        If the weights are not those of a spinegate residual U-Net.
    """
    if "stem.body.0.weight" not in weights or "head.weight" not in weights:
        raise ValueError(f"{source} is not a spinegate residual U-Net (no stem/head weights)")
    stem = weights["stem.body.0.weight"]
    channels = [stem.shape[0]]
    while f"down.{len(channels) - 1}.body.0.weight" in weights:
        channels.append(weights[f"down.{len(channels) - 1}.body.0.weight"].shape[0])
    model = ResidualUNet2D(int(weights["head.weight"].shape[0]), channels=tuple(int(c) for c in channels),
                           in_channels=int(stem.shape[1]), global_context="context.out.weight" in weights)
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"{source} lacks the weights {missing[:3]}…: not a spinegate residual U-Net")
    model.load_state_dict({k: torch.as_tensor(weights[k]) for k in state})
    return model


def load_from_onnx(path: Path) -> ResidualUNet2D:
    """Rebuild a network from an exported ONNX file's weights (the export
    keeps the parameter names as initializer names), in eval mode.

    Raises
    ------
    ValueError
        If the file does not hold a spinegate residual U-Net.
    """
    import onnx
    from onnx import numpy_helper

    # writable copies: torch will not wrap the read-only arrays onnx returns
    weights = {i.name: np.array(numpy_helper.to_array(i)) for i in onnx.load(str(path)).graph.initializer}
    return from_weights(weights, f"{path}").eval()
