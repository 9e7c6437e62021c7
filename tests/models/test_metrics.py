"""Signal loss and weight quality on hand-made weights, with chance levels."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics import NAMED_RULES, estimate_signal_set, signal_loss, weight_quality


def test_signal_loss_is_the_mse() -> None:
    assert signal_loss(np.array([[1.0, 2.0]]), np.array([[0.0, 0.0]])) == pytest.approx(2.5)


def test_perfect_weights() -> None:
    signal = np.array([[False, True, True, False]])
    weights = np.array([[[0.0, 0.5, 0.5, 0.0]]])
    q = weight_quality(weights, np.ones((1, 4), bool), signal)
    assert (q.signal_mass, q.precision, q.recall, q.f1) == (1.0, 1.0, 1.0, 1.0)
    assert q.signal_mass_chance == pytest.approx(0.5)
    assert q.f1_chance == pytest.approx(2 * 0.5 / 1.5)  # all-tokens: precision k/n, recall 1


def test_uniform_weights_sit_at_chance() -> None:
    signal = np.zeros((2, 8), bool)
    signal[:, :2] = True
    uniform = np.full((2, 1, 8), 1 / 8)
    q = weight_quality(uniform, np.ones((2, 8), bool), signal)
    assert q.signal_mass == pytest.approx(q.signal_mass_chance) == pytest.approx(0.25)
    # the project's rule reads uniform weights as "all tokens": exactly the chance F1
    assert q.estimated_size == 8 and q.f1 == pytest.approx(q.f1_chance)
    # the old rule (weight > 1/n) found nothing in them
    old = weight_quality(uniform, np.ones((2, 8), bool), signal, NAMED_RULES["uniform"])
    assert old.estimated_size == 0 and old.f1 == 0 and old.precision == 0


def test_half_right_weights() -> None:
    """Weight on tokens 0 and 1; the truth is tokens 1 and 2: P = R = F1 = 0.5."""
    weights = np.array([[0.48, 0.48, 0.02, 0.02]])
    truth = np.array([[False, True, True, False]])
    q = weight_quality(weights, np.ones((1, 4), bool), truth)
    assert (q.precision, q.recall, q.f1) == pytest.approx((0.5, 0.5, 0.5))
    assert q.signal_mass == pytest.approx(0.5)


def test_heads_are_averaged_and_padding_ignored() -> None:
    mask = np.array([[True, True, True, False]])
    # Head mean = [0.95, 0.025, 0.025, 0]; max / 4 = 0.2375, so only token 0 is signal.
    weights = np.array([[[1.0, 0.0, 0.0, 0.0], [0.9, 0.05, 0.05, 0.0]]])
    assert estimate_signal_set(weights, mask).tolist() == [[True, False, False, False]]
    truth = np.array([[True, False, False, True]])  # a "signal" flag on padding is ignored
    q = weight_quality(weights, mask, truth)
    assert q.true_size == 1 and q.f1 == 1.0
    assert q.signal_mass_chance == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("uniform", [0, 1]),  # > 1/5
        ("half-uniform", [0, 1, 2]),  # > 1/10
        ("half-max", [0, 1]),  # >= 0.25
        ("quarter-max", [0, 1]),  # >= 0.125
        ("tenth-max", [0, 1, 2, 3]),  # >= 0.05
        ("mass-90", [0, 1, 2]),  # 0.5 + 0.3 + 0.12 = 0.92 >= 0.9
        ("mass-95", [0, 1, 2, 3]),  # 0.97 >= 0.95
    ],
)
def test_every_candidate_rule_on_known_weights(rule: str, expected: list[int]) -> None:
    # the padded 6th token carries junk weight that no rule may pick or count
    w = np.array([[0.05, 0.5, 0.3, 0.12, 0.03, 0.9]])[:, [1, 2, 3, 0, 4, 5]]
    mask = np.array([[True] * 5 + [False]])
    assert np.flatnonzero(estimate_signal_set(w, mask, NAMED_RULES[rule])).tolist() == expected
