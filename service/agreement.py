"""Agreement between automatic and manual results: pure functions.

Overlap of two masks on one grid (SimpleITK's label-overlap, contour,
distance-map and Hausdorff filters) and agreement of paired measurements
(Pearson r, ICC(2,1), MAE, MAPE, Bland-Altman bias and 95 % limits).
``spinegate evaluate`` and the model card's measurement validation use
them; each is tested against masks and numbers with a known answer.

Definitions
-----------
- Dice 2|A∩M|/(|A|+|M|), Jaccard |A∩M|/|A∪M|, sensitivity |A∩M|/|M|,
  precision |A∩M|/|A| (A automatic, M manual).
- Surface distances: from every surface voxel of one mask (SimpleITK
  ``LabelContour``, face-connected) to the nearest surface of the other
  surface voxels (``SignedMaurerDistanceMap`` in mm, voxel centre to voxel
  centre), both directions. Mean surface
  distance is the mean of the two directed means (average symmetric
  surface distance); HD95 the 95th percentile of both directions pooled;
  the Hausdorff distance their maximum (``HausdorffDistanceImageFilter``).
- ICC(2,1): two-way random effects, absolute agreement, single rater
  (Shrout & Fleiss 1979; McGraw & Wong's ICC(A,1)).
- Bland-Altman: differences automatic − manual; bias their mean, limits
  bias ± 1.96 SD (sample SD).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
from scipy import stats

from spinegate.dicom_io.label_files import label_image

__all__ = ["Overlap", "Agreement", "overlap", "agreement", "icc_2_1"]


@dataclass(frozen=True)
class Overlap:
    """Overlap of one structure's automatic and manual masks.

    Distances are NaN when the automatic mask is empty (the structure was
    missed); Dice, Jaccard and sensitivity are then 0 and precision NaN.
    """

    dice: float
    jaccard: float
    sensitivity: float
    precision: float
    volume_auto_cm3: float
    volume_manual_cm3: float
    mean_surface_distance_mm: float
    hd95_mm: float
    hausdorff_mm: float

    @property
    def volume_difference_cm3(self) -> float:
        return self.volume_auto_cm3 - self.volume_manual_cm3

    @property
    def volume_difference_pct(self) -> float:
        return 100.0 * self.volume_difference_cm3 / self.volume_manual_cm3


@dataclass(frozen=True)
class Agreement:
    """Agreement of ``n`` paired measurements (automatic, manual).

    ``mae``, ``bias`` and the limits are in the measurement's unit; r and
    ICC are NaN for fewer than 3 pairs or no spread, the limits for fewer
    than 2 pairs.
    """

    n: int
    pearson_r: float
    icc_2_1: float
    mae: float
    mape_pct: float
    bias: float
    limits_of_agreement: tuple[float, float]


def _directed_surface_distances(from_image: sitk.Image, to_image: sitk.Image) -> np.ndarray:
    """mm from each surface voxel of ``from_image`` to the surface of ``to_image``."""
    # The distance map of the target's surface voxels: 0 on them, the
    # centre-to-centre distance to the nearest one elsewhere (inside the
    # target too); the signed map is negative within the surface voxels.
    to_surface = sitk.LabelContour(to_image, fullyConnected=False)
    to_distance = sitk.GetArrayFromImage(sitk.SignedMaurerDistanceMap(
        to_surface, insideIsPositive=False, squaredDistance=False, useImageSpacing=True))
    surface = sitk.GetArrayFromImage(sitk.LabelContour(from_image, fullyConnected=False)) > 0
    return np.maximum(to_distance[surface], 0.0)


def overlap(auto: np.ndarray, manual: np.ndarray, affine: np.ndarray) -> Overlap:
    """Overlap and surface distances of two boolean masks on one grid.

    Raises
    ------
    ValueError
        If the shapes differ or the manual mask is empty (nothing to compare
        with).
    """
    auto, manual = np.asarray(auto, bool), np.asarray(manual, bool)
    if auto.shape != manual.shape:
        raise ValueError(f"'auto' {auto.shape} and 'manual' {manual.shape} are not on one grid")
    if not manual.any():
        raise ValueError("'manual' is empty: there is no manual outline to compare with")
    voxel_cm3 = abs(float(np.linalg.det(np.asarray(affine, float)[:3, :3]))) / 1000.0
    volume_auto, volume_manual = auto.sum() * voxel_cm3, manual.sum() * voxel_cm3
    if not auto.any():
        nan = math.nan
        return Overlap(0.0, 0.0, 0.0, nan, 0.0, float(volume_manual), nan, nan, nan)
    a_img, m_img = label_image(auto, affine), label_image(manual, affine)
    measures = sitk.LabelOverlapMeasuresImageFilter()
    measures.Execute(a_img, m_img)  # source = automatic, target = manual
    # ITK's "false positive error" is a rate over the target's complement,
    # not 1 - precision: both ratios come from the intersection instead.
    both = float(np.count_nonzero(auto & manual))
    to_manual = _directed_surface_distances(a_img, m_img)
    to_auto = _directed_surface_distances(m_img, a_img)
    hausdorff = sitk.HausdorffDistanceImageFilter()
    hausdorff.Execute(a_img, m_img)
    return Overlap(
        dice=float(measures.GetDiceCoefficient(1)),
        jaccard=float(measures.GetJaccardCoefficient(1)),
        sensitivity=both / float(manual.sum()),
        precision=both / float(auto.sum()),
        volume_auto_cm3=float(volume_auto),
        volume_manual_cm3=float(volume_manual),
        mean_surface_distance_mm=float((to_manual.mean() + to_auto.mean()) / 2),
        hd95_mm=float(np.percentile(np.concatenate([to_manual, to_auto]), 95)),
        hausdorff_mm=float(hausdorff.GetHausdorffDistance()),
    )


def icc_2_1(ratings: np.ndarray) -> float:
    """ICC(2,1) of an (n subjects, k raters) table; NaN when undefined.

    Raises
    ------
    ValueError
        If ``ratings`` is not 2D with at least two raters.
    """
    y = np.asarray(ratings, float)
    if y.ndim != 2 or y.shape[1] < 2:
        raise ValueError(f"'ratings' must be (subjects, raters) with >= 2 raters, got shape {y.shape}")
    n, k = y.shape
    if n < 2:
        return math.nan
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows, ms_cols = ss_rows / (n - 1), ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator > 0 else math.nan


def agreement(auto: np.ndarray, manual: np.ndarray) -> Agreement:
    """Agreement statistics of paired automatic and manual values.

    Raises
    ------
    ValueError
        If the arrays differ in length or are empty.
    """
    a, m = np.asarray(auto, float).ravel(), np.asarray(manual, float).ravel()
    if a.shape != m.shape or a.size == 0:
        raise ValueError(f"need the same, non-zero number of automatic and manual values, got {a.size} and {m.size}")
    diff = a - m
    n = int(a.size)
    spread = n >= 3 and np.ptp(a) > 0 and np.ptp(m) > 0
    r = float(stats.pearsonr(a, m).statistic) if spread else math.nan
    icc = icc_2_1(np.column_stack([a, m])) if n >= 3 else math.nan
    nonzero = m != 0
    mape = float(100 * np.mean(np.abs(diff[nonzero] / m[nonzero]))) if nonzero.any() else math.nan
    bias = float(diff.mean())
    sd = float(diff.std(ddof=1)) if n >= 2 else math.nan
    return Agreement(n, r, icc, float(np.abs(diff).mean()), mape, bias, (bias - 1.96 * sd, bias + 1.96 * sd))
