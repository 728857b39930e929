"""Sliding-window inference: the network sees tiles the size of its
training patches.

Instance normalisation takes its statistics over whatever the network is
given. Trained on patches near the spine, a network run on a whole large
field of view (mostly air around the trunk) sees other statistics and
fails; tiles of the training patch size, overlapping and blended with a
Gaussian weight (more trust in a tile's centre), keep inference inside the
training distribution.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["sliding_window_softmax", "tile_starts"]


def tile_starts(size: int, tile: int, overlap: float) -> list[int]:
    """Start offsets covering ``size`` with tiles of ``tile`` (the last one
    flush with the end)."""
    if size <= tile:
        return [0]
    step = max(1, int(tile * (1.0 - overlap)))
    starts = list(range(0, size - tile, step))
    return starts + [size - tile]


def _gaussian(tile: tuple[int, int]) -> np.ndarray:
    axes = [np.exp(-0.5 * ((np.arange(n) - (n - 1) / 2) / (n / 8)) ** 2) for n in tile]
    w = np.outer(*axes)
    return np.maximum(w / w.max(), 1e-3).astype(np.float32)


def sliding_window_softmax(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, tile: tuple[int, int],
                           overlap: float = 0.25, batch: int = 8) -> np.ndarray:
    """Softmax class scores of ``x`` (n, channels, rows, cols) from tiles.

    ``run`` maps a (b, channels, tile rows, tile cols) batch to logits. An
    input smaller than a tile is zero-padded (the normalised background).
    """
    n, ch, rows, cols = x.shape
    pr, pc = max(0, tile[0] - rows), max(0, tile[1] - cols)
    if pr or pc:
        x = np.pad(x, ((0, 0), (0, 0), (0, pr), (0, pc)))
    R, C = x.shape[2:]
    weight = _gaussian(tile)
    origins = [(r, c) for r in tile_starts(R, tile[0], overlap) for c in tile_starts(C, tile[1], overlap)]
    jobs = [(k, r, c) for k in range(n) for r, c in origins]
    acc: np.ndarray | None = None
    norm = np.zeros((R, C), np.float32)
    for r, c in origins:
        norm[r : r + tile[0], c : c + tile[1]] += weight
    for i in range(0, len(jobs), batch):
        part = jobs[i : i + batch]
        logits = run(np.stack([x[k, :, r : r + tile[0], c : c + tile[1]] for k, r, c in part]).astype(np.float32))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
        if acc is None:
            acc = np.zeros((n, probs.shape[1], R, C), np.float32)
        for (k, r, c), p in zip(part, probs):
            acc[k, :, r : r + tile[0], c : c + tile[1]] += p * weight
    assert acc is not None
    return (acc / norm)[:, :, :rows, :cols]
