"""The T2 fit against mono-exponential signal with a known T2."""
from __future__ import annotations

import numpy as np
import pytest

from spinegate.biomech.relaxometry import MAX_T2_MS, fit_t2_ms, summarise_t2

TE = np.array([10.0, 30.0, 50.0, 70.0, 90.0])


def _decay(s0: np.ndarray, t2: np.ndarray) -> np.ndarray:
    return np.stack([s0 * np.exp(-te / t2) for te in TE])


def test_noise_free_decay_gives_the_exact_t2():
    t2 = np.array([[30.0, 65.0, 120.0], [250.0, 80.0, 45.0]])
    s0 = np.array([[800.0, 1200.0, 1000.0], [900.0, 1100.0, 700.0]])
    assert fit_t2_ms(_decay(s0, t2), TE) == pytest.approx(t2.astype(np.float32), rel=1e-5)


def test_voxels_that_cannot_be_fitted_are_zero():
    s0 = np.full(5, 1000.0)
    echoes = _decay(s0, np.full(5, 80.0))
    echoes[:, 1] = 1000.0  # no decay
    echoes[:, 2] = np.linspace(500, 900, 5)  # growing
    echoes[3, 3] = 0.0  # an echo without signal
    echoes[:, 4] = 5.0  # below the signal floor (5 % of the brightest)
    t2 = fit_t2_ms(echoes, TE)
    assert t2[0] == pytest.approx(80.0) and t2[1:].tolist() == [0.0, 0.0, 0.0, 0.0]
    slow = _decay(np.full(1, 1000.0), np.full(1, 5 * MAX_T2_MS))
    assert fit_t2_ms(slow, TE)[0] == 0.0  # beyond MAX_T2_MS: not a tissue T2


def test_bad_echo_tables_are_refused():
    with pytest.raises(ValueError, match="one image per echo time"):
        fit_t2_ms(np.ones((3, 4)), TE)
    with pytest.raises(ValueError, match="at least 2 distinct echo times"):
        fit_t2_ms(np.ones((2, 4)), np.array([20.0, 20.0]))


def test_summary_over_a_structure():
    t2 = np.array([0.0, 60.0, 70.0, 80.0, 0.0])
    s = summarise_t2(t2, np.array([True, True, True, True, False]))
    assert (s.mean_ms, s.median_ms, s.n_voxels, s.n_structure) == (70.0, 70.0, 3, 4)
    assert s.sd_ms == pytest.approx(np.std([60.0, 70.0, 80.0]))
    assert summarise_t2(t2, np.array([True, False, False, False, True])) is None
