"""Signal loss and weight quality on hand-made weights, with chance levels."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import estimate_signal_set, signal_loss, weight_quality


def test_signal_loss_is_the_mse() -> None:
    assert signal_loss(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == pytest.approx(2.5)


def test_perfect_weights() -> None:
    signal = np.array([[False, True, True, False]])
    weights = np.array([[[0.0, 0.5, 0.5, 0.0]]])
    q = weight_quality(weights, np.ones((1, 4), bool), signal)
    assert (q.signal_mass, q.precision, q.recall, q.f1) == (1.0, 1.0, 1.0, 1.0)
    assert q.signal_mass_chance == pytest.approx(0.5)
    assert q.f1_chance == pytest.approx(2 * 0.5 / 1.5)  # all-tokens: precision k/n, recall 1


def test_uniform_weights_find_nothing_and_sit_at_chance() -> None:
    signal = np.zeros((2, 8), bool)
    signal[:, :2] = True
    q = weight_quality(np.full((2, 1, 8), 1 / 8), np.ones((2, 8), bool), signal)
    assert q.signal_mass == pytest.approx(q.signal_mass_chance) == pytest.approx(0.25)
    assert q.estimated_size == 0 and q.f1 == 0 and q.precision == 0


def test_half_right_weights() -> None:
    """Weight above 1/4 on tokens 0 and 1; the truth is tokens 1 and 2: P = R = F1 = 0.5."""
    weights = np.array([[0.4, 0.4, 0.1, 0.1]])
    truth = np.array([[False, True, True, False]])
    q = weight_quality(weights, np.ones((1, 4), bool), truth)
    assert (q.precision, q.recall, q.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert q.signal_mass == pytest.approx(0.5)


def test_heads_are_averaged_and_padding_ignored() -> None:
    mask = np.array([[True, True, True, False]])
    # Head mean = [0.6, 0.2, 0.2, 0]; 1/n_real = 1/3, so only token 0 is estimated signal.
    weights = np.array([[[1.0, 0.0, 0.0, 0.0], [0.2, 0.4, 0.4, 0.0]]])
    assert estimate_signal_set(weights, mask).tolist() == [[True, False, False, False]]
    truth = np.array([[True, False, False, True]])  # a "signal" flag on padding is ignored
    q = weight_quality(weights, mask, truth)
    assert q.true_size == 1 and q.f1 == 1.0
    assert q.signal_mass_chance == pytest.approx(1 / 3)
