"""Diagnostics maths on hand-made weights with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelrepo import NAMED, SignalRule
from models.metrics import SIGNAL_RULE as TRAINING_RULE
from models.metrics import estimate_signal_set
from service.core.diagnostics import SIGNAL_RULE, describe, diagnose, summarise


def test_uniform_weights() -> None:
    d = diagnose(np.full(8, 1 / 8), top_k=3)
    assert d["entropy"] == pytest.approx(math.log(8))
    assert d["normalized_entropy"] == pytest.approx(1.0)
    assert d["effective_tokens"] == pytest.approx(8.0)
    # uniform weights: every token counts as signal (SNR 1), nothing is noise
    assert (
        d["signal_tokens"] == list(range(8))
        and d["estimated_snr"] == 1.0
        and d["noise_mass"] == 0.0
    )
    assert [t["token"] for t in d["top_tokens"]] == [0, 1, 2]  # ties: lowest index first


def test_one_token_takes_everything() -> None:
    w = np.zeros(10)
    w[7] = 1.0
    d = diagnose(w, top_k=2)
    assert d["entropy"] == 0.0 and d["normalized_entropy"] == 0.0 and d["effective_tokens"] == 1.0
    assert (d["max_token"], d["max_weight"]) == (7, 1.0)
    assert d["signal_tokens"] == [7] and d["estimated_snr"] == pytest.approx(0.1)
    assert d["noise_mass"] == 0.0


def test_signal_optimal_pool_on_k_of_n() -> None:
    """Weight 1/k on k signal tokens: effective tokens = k, estimated SNR = k/n, no noise mass."""
    n, signal = 16, [2, 5, 11, 12]
    w = np.zeros(n)
    w[signal] = 1 / len(signal)
    d = diagnose(w, top_k=10)
    assert d["effective_tokens"] == pytest.approx(4.0)
    assert d["signal_tokens"] == signal and d["estimated_snr"] == pytest.approx(4 / 16)
    assert d["noise_mass"] == pytest.approx(0.0)
    assert len(d["top_tokens"]) == 10 and {t["token"] for t in d["top_tokens"][:4]} == set(signal)


def test_partial_concentration() -> None:
    w = np.array([0.5, 0.3, 0.16, 0.04])
    d = diagnose(w, top_k=2)
    expected = -sum(v * math.log(v) for v in w)
    assert d["entropy"] == pytest.approx(expected)
    assert d["normalized_entropy"] == pytest.approx(expected / math.log(4))
    assert [(t["token"], t["weight"]) for t in d["top_tokens"]] == [(0, 0.5), (1, 0.3)]
    # the rule: weight >= max / 4 = 0.125, so 0.04 is noise
    assert d["signal_tokens"] == [0, 1, 2] and d["noise_mass"] == pytest.approx(0.04)
    assert d["estimated_snr"] == pytest.approx(3 / 4)


def test_single_token_item() -> None:
    d = diagnose(np.array([1.0]), top_k=5)
    assert (
        d["normalized_entropy"] is None
        and d["effective_tokens"] == 1.0
        and len(d["top_tokens"]) == 1
    )
    assert d["signal_tokens"] == [0] and d["estimated_snr"] == 1.0


def test_same_rule_as_training_metrics() -> None:
    assert SIGNAL_RULE == TRAINING_RULE
    rng = np.random.default_rng(0)
    for n in (1, 3, 17, 128):
        w = rng.dirichlet(np.full(n, 0.3), size=20)
        mask = np.ones((20, n), dtype=bool)
        for name in NAMED:
            training = estimate_signal_set(w, mask, NAMED[name])
            assert np.array_equal(training, summarise(w, mask, NAMED[name]).signal)


def test_the_models_own_rule_decides_the_signal_set() -> None:
    w = np.array([0.5, 0.3, 0.16, 0.04])
    assert diagnose(w, top_k=1)["signal_tokens"] == [0, 1, 2]  # the default: >= max / 4
    assert diagnose(w, top_k=1, rule=SignalRule("share_of_max", 0.5))["signal_tokens"] == [0, 1]
    assert diagnose(w, top_k=1, rule=SignalRule("mass", 0.75))["signal_tokens"] == [0, 1]


def test_batch_matches_items_alone_with_padding_and_mask_holes() -> None:
    """The vectorised batch path gives each item what its real tokens alone give, with token
    indices mapped back to the item's positions."""
    rng = np.random.default_rng(1)
    B, N = 12, 40
    mask = rng.random((B, N)) < 0.7
    mask[:, 0] = True
    mask[3] = False
    mask[3, 5] = True  # one real token
    mask[4, 30:] = False  # padding at the end
    weights = np.where(mask, rng.dirichlet(np.full(N, 0.4), size=B), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    weights = np.where(mask, weights, 0.7)  # junk on masked tokens must change nothing
    batch = describe(summarise(weights, mask), top_k=6)
    for i in range(B):
        real = np.flatnonzero(mask[i])
        alone = diagnose(weights[i, real], top_k=6)
        got = batch[i]
        assert got["entropy"] == pytest.approx(alone["entropy"])
        assert got["normalized_entropy"] == pytest.approx(alone["normalized_entropy"])
        assert got["effective_tokens"] == pytest.approx(alone["effective_tokens"])
        assert got["max_token"] == real[alone["max_token"]]
        assert [t["token"] for t in got["top_tokens"]] == [
            real[t["token"]] for t in alone["top_tokens"]
        ]
        assert got["signal_tokens"] == real[alone["signal_tokens"]].tolist()
        assert got["estimated_snr"] == pytest.approx(alone["estimated_snr"])
        assert got["noise_mass"] == pytest.approx(alone["noise_mass"])
    assert batch[3]["normalized_entropy"] is None and len(batch[3]["top_tokens"]) == 1
