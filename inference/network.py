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

__all__ = ["ResidualUNet2D", "load_from_onnx"]


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
    """

    def __init__(self, n_classes: int, channels: tuple[int, ...] = (16, 32, 64, 128, 192), dropout: float = 0.1,
                 in_channels: int = 1) -> None:
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for d in self.down:
            skips.append(d(skips[-1]))
        y = skips.pop()
        for up, merge in zip(self.up, self.merge):
            y = merge(torch.cat([up(y), skips.pop()], dim=1))
        return self.head(y)


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

    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    if "stem.body.0.weight" not in weights or "head.weight" not in weights:
        raise ValueError(f"{path} is not a spinegate residual U-Net export (no stem/head weights)")
    stem = weights["stem.body.0.weight"]
    channels = [stem.shape[0]]
    while f"down.{len(channels) - 1}.body.0.weight" in weights:
        channels.append(weights[f"down.{len(channels) - 1}.body.0.weight"].shape[0])
    model = ResidualUNet2D(int(weights["head.weight"].shape[0]), channels=tuple(channels),
                           in_channels=int(stem.shape[1]))
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"{path} lacks the weights {missing[:3]}…: not a spinegate residual U-Net export")
    model.load_state_dict({k: torch.from_numpy(np.array(weights[k])) for k in state})
    return model.eval()
