"""Training examples for the sagittal spine network: thick slabs with
partial-label targets, drawn from cached `TrainingCase` volumes.

Clinical sagittal series have 3-5 mm slices; the shared volumes have 1 mm
planes. An example averages a slab of planes (and, for a 2.5D network, its
neighbouring slabs as extra channels), then applies random scale, rotation,
gamma and noise. `SampleStream` draws whole batches in worker processes so a
GPU is not left waiting for them.
"""
from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from spinegate.inference.training.training_data import TrainingCase, dataset_of

__all__ = ["PATCH", "SampleStream", "draw_batch", "intensity_field", "pick_case", "sample_example", "slab_targets"]

PATCH = (192, 160)  # rows × columns at the training spacing (240 × 200 mm)
# Knots of the random intensity field across a patch (rows, columns): about
# 60-70 mm apart, as smooth as a receive coil's shading across 240 × 200 mm.
FIELD_KNOTS = (4, 4)


def intensity_field(rng: np.random.Generator, channels: int, sd: float,
                    shape: tuple[int, int] = PATCH) -> np.ndarray:
    """A smooth random multiplicative intensity field for one example,
    (channels, rows, cols), as receive-coil shading leaves on real MR.

    The log of the field is a bicubic interpolation of ``FIELD_KNOTS``
    normal knots (standard deviation ``sd``), the same across the channels,
    plus one normal offset per neighbouring channel (standard deviation
    ``sd / 2``; the centre channel none): a lateral slice a little darker or
    brighter than its neighbour, as the sensitivity falls off across the
    sagittal planes.
    """
    if sd < 0:
        raise ValueError(f"'sd' must not be negative, got {sd}")
    knots = rng.normal(0.0, sd, FIELD_KNOTS)
    zoom = (shape[0] / (FIELD_KNOTS[0] - 1), shape[1] / (FIELD_KNOTS[1] - 1))
    grid = np.meshgrid(np.arange(shape[0]) / zoom[0], np.arange(shape[1]) / zoom[1], indexing="ij")
    log_field = ndimage.map_coordinates(knots, grid, order=3, mode="nearest")
    per_channel = rng.normal(0.0, sd / 2, channels)
    per_channel[channels // 2] = 0.0
    return np.exp(log_field[None] + per_channel[:, None, None]).astype(np.float32)


def slab_targets(planes: np.ndarray, centre: int, rule: str) -> np.ndarray:
    """Allowed-class mask of a thick slab from its planes' masks.

    ``centre``: the centre plane's mask. ``union``: where the planes
    disagree (partial volume at a structure's lateral edge), every class any
    plane allows. ``majority``: a class known in at least half of the planes
    is the slab's class, one known in fewer is excluded (how a thick slice
    is read, and how the validation labels are made); the rest allows the
    union.
    """
    mask = planes[centre]
    if rule == "centre" or len(planes) == 1:
        return mask
    union = np.bitwise_or.reduce(planes, axis=0)
    out = np.where((planes == mask).all(axis=0), mask, union).astype(np.uint8)
    if rule == "majority":
        minority = np.zeros_like(out)
        for bit in (1, 2, 4, 8):
            count = (planes == bit).sum(axis=0)
            minority |= np.where((count > 0) & (count * 2 < len(planes)), bit, 0).astype(np.uint8)
        # A class known in fewer than half of the planes is not the slab's
        # (unless nothing else would be left).
        narrowed = out & ~minority
        out = np.where(narrowed > 0, narrowed, out).astype(np.uint8)
        for bit in (1, 2, 4, 8):
            out[(planes == bit).sum(axis=0) * 2 >= len(planes)] = bit
    return out


def slab_bounds(centre: int, n_planes: int, planes_in_volume: int) -> tuple[int, int]:
    """First and past-the-end plane of a slab of ``n_planes`` around
    ``centre`` (an even count reaches one plane further up than down),
    clipped to the volume."""
    lo = centre - (n_planes - 1) // 2
    return max(0, lo), min(planes_in_volume, lo + n_planes)


def _slab(case: TrainingCase, centre: int, n_planes: int) -> np.ndarray:
    lo, hi = slab_bounds(centre, n_planes, case.image.shape[0])
    return case.image[lo:hi].mean(axis=0)


def _acquired_planes(case: TrainingCase) -> tuple[np.ndarray, int] | None:
    """The labelled planes that are acquired slices and how many planes
    apart the slices are, or None."""
    if case.acquired_grid is None:
        return None
    first, apart = case.acquired_grid
    planes = case.labelled_planes[(case.labelled_planes - first) % apart == 0]
    return (planes, apart) if planes.size else None


def sample_example(case: TrainingCase, rng: np.random.Generator, augment: bool, slab_labels: str = "union",
                   context: int = 0, thickness_mm_range: tuple[float, float] = (1.0, 5.0),
                   end_plane_share: float = 0.0, exact_planes: bool = False, acquired_share: float = 0.0,
                   intensity_field_sd: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """One augmented example: a slab of 1-5 mm (``thickness_mm_range``)
    averaged across planes (thick clinical slices) and, with ``context`` > 0,
    that many neighbouring slabs on each side as extra channels (slice gap
    0-25 % of the thickness; edge slabs repeat at the end of the volume, as
    at inference); then random scale/rotation, gamma and noise. With
    ``end_plane_share`` > 0 that share of the slabs is centred on the
    lateral ends of the labelled structures (`TrainingCase.end_planes`),
    where partial volume makes thick slabs hardest. A slab holds an odd
    number of planes centred on one (1 plane below 2 mm, 3 below 4 mm, else
    5), or with ``exact_planes`` the thickness's own number of planes, even
    ones included: a 4 mm series of 1 mm planes averages 4, as the
    validation series do. With ``acquired_share`` > 0, that share of the
    examples from a volume interpolated from acquired slices
    (`TrainingCase.acquired_grid`) is those slices as acquired: the centre
    one of them, its neighbours the next acquired slices, nothing averaged
    (what a scanner sends, sharper than any average of the interpolated
    planes). Returns (channels, rows, cols) image and the centre slab's
    allowed-class mask."""
    n_planes = case.image.shape[0]
    # (extra random draws only when asked for: earlier runs reproduce as before)
    acquired = _acquired_planes(case) if acquired_share > 0 else None
    if acquired is not None and rng.random() < acquired_share:
        centre, n_slab, step = int(rng.choice(acquired[0])), 1, acquired[1]
    else:
        if end_plane_share > 0 and rng.random() < end_plane_share and case.end_planes.size:
            centre = int(rng.choice(case.end_planes))
        else:
            centre = int(rng.choice(case.labelled_planes))
        thickness_mm = float(rng.uniform(*thickness_mm_range)) if augment else 1.0
        if exact_planes:
            n_slab = max(1, int(round(thickness_mm / case.plane_spacing_mm)))
        else:
            n_slab = 2 * max(0, int(round(thickness_mm / case.plane_spacing_mm / 2 - 0.5))) + 1
        step = 0
        if context:  # (extra random draws only here: plain 2D runs reproduce as before)
            spacing_mm = thickness_mm * (rng.uniform(1.0, 1.25) if augment else 1.0)
            step = max(1, int(round(spacing_mm / case.plane_spacing_mm)))
    offsets = np.zeros(1, int)
    if context:
        offsets = np.arange(-context, context + 1) * step
        if augment and rng.random() < 0.5:
            offsets = offsets[::-1]  # left/right order carries no meaning
    image = np.stack([_slab(case, int(np.clip(centre + o, 0, n_planes - 1)), n_slab) for o in offsets])
    lo, hi = slab_bounds(centre, n_slab, n_planes)
    allowed = slab_targets(case.allowed[lo:hi], centre - lo, slab_labels)
    pr, pc = PATCH
    if augment:
        angle = np.deg2rad(rng.uniform(-12, 12))
        scale = rng.uniform(0.85, 1.2)
    else:
        angle, scale = 0.0, 1.0
    # Output patch centre maps to a random point near the labelled spine.
    fg = np.argwhere(allowed != allowed.max()) if (allowed != allowed.max()).any() else np.argwhere(allowed > 0)
    anchor = fg[rng.integers(len(fg))] + rng.normal(0, 20, 2)
    c, s = np.cos(angle), np.sin(angle)
    mat = np.array([[c, -s], [s, c]]) / scale
    offset = anchor - mat @ np.array([pr / 2, pc / 2])
    img = np.stack([ndimage.affine_transform(ch, mat, offset, output_shape=PATCH, order=1, mode="constant", cval=0.0)
                    for ch in image])
    alw = ndimage.affine_transform(allowed, mat, offset, output_shape=PATCH, order=0, mode="constant",
                                   cval=int(allowed.max()))
    if augment and intensity_field_sd > 0:  # (extra draws only when asked for, as above)
        img = img * intensity_field(rng, len(img), intensity_field_sd, img.shape[1:])
    if augment:
        img = np.clip(img, 0, 1) ** rng.uniform(0.6, 1.6)
        img = img * rng.uniform(0.8, 1.2) + rng.normal(0, rng.uniform(0, 0.04), img.shape)
    return img.astype(np.float32), alw.astype(np.uint8)


def pick_case(pool: list[TrainingCase], rng: np.random.Generator, by_dataset: bool = False) -> TrainingCase:
    """A training volume drawn uniformly from ``pool``, or with
    ``by_dataset`` a dataset (the name before the first ``_``: VB1, VB2,
    VB3…) drawn uniformly first and then one of its volumes, so a small
    dataset whose labels follow its own contour convention weighs as much
    as a large one."""
    if not by_dataset:
        return pool[rng.integers(len(pool))]
    datasets = sorted({dataset_of(c.name) for c in pool})
    chosen = datasets[rng.integers(len(datasets))]
    members = [c for c in pool if dataset_of(c.name) == chosen]
    return members[rng.integers(len(members))]


class SampleStream(torch.utils.data.IterableDataset):
    """Endless training batches drawn as `train.main` draws them in-process,
    for a `torch.utils.data.DataLoader` with worker processes.

    Worker ``w`` draws from its own generator seeded ``(seed, w)``; the
    loader takes batches from the workers in turn, so a run repeats with
    the same seed and number of workers.

    Parameters
    ----------
    pools : list of (list of TrainingCase, float)
        Case pools and the probability of drawing from each.
    batch : int
        Examples per batch.
    seed : int
        Seed shared by all workers.
    balance_datasets : bool
        Passed to `pick_case`.
    **example_options
        Passed to `sample_example` (``augment`` is always on).
    """

    def __init__(self, pools: list[tuple[list[TrainingCase], float]], batch: int, seed: int,
                 balance_datasets: bool = False, **example_options) -> None:
        super().__init__()
        if batch < 1:
            raise ValueError(f"'batch' must be at least 1, got {batch}")
        if not np.isclose(sum(w for _, w in pools), 1.0):
            raise ValueError(f"pool probabilities must sum to 1, got {[w for _, w in pools]}")
        self.pools, self.batch, self.seed = pools, batch, seed
        self.balance_datasets, self.example_options = balance_datasets, example_options

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = np.random.default_rng((self.seed, info.id if info else 0))
        while True:
            yield draw_batch(self.pools, self.batch, rng, self.balance_datasets, **self.example_options)


def draw_batch(pools: list[tuple[list[TrainingCase], float]], batch: int, rng: np.random.Generator,
               balance_datasets: bool = False, **example_options) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of augmented examples: (images float32, allowed-class masks
    int64), each example from a pool drawn with the pools' probabilities."""
    imgs, alws = [], []
    for _ in range(batch):
        pool = pools[rng.choice(len(pools), p=[w for _, w in pools])][0]
        img, alw = sample_example(pick_case(pool, rng, balance_datasets), rng, augment=True, **example_options)
        imgs.append(img)
        alws.append(alw)
    return torch.from_numpy(np.stack(imgs)), torch.from_numpy(np.stack(alws).astype(np.int64))
