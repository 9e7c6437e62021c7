"""Head metrics, SNR bands, the rule-free instance AUC and each model's own rule, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from modelrepo.signal_rules import RuleError, SignalRule
from models.metrics import NAMED_RULES, PROJECT_RULE, auc
from models.task_metrics import classification_metrics, macro_f1, regression_metrics
from models.weight_metrics import SNRBands, band_quality, choose_rule, instance_auc


def test_auc_counts_pairs_and_ties() -> None:
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == 0.75
    assert auc(np.array([1.0, 1.0, 1.0]), np.array([0, 1, 1], bool)) == 0.5
    assert np.isnan(auc(np.array([1.0, 2.0]), np.array([1, 1], bool)))


def test_classification_metrics() -> None:
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 2.0]])
    labels = np.array([0, 1, 1, 1])
    m = classification_metrics(logits, labels, train_labels=np.array([1, 1, 0]))
    assert m["accuracy"] == 0.75 and m["accuracy_majority_class"] == 0.75
    assert m["confusion"] == [[1, 0], [1, 2]]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["auc"] == pytest.approx(2 / 3)  # P(class 1) of the three 1s against the one 0
    three = classification_metrics(np.eye(3), np.array([0, 1, 2]), np.array([0]))
    assert "auc" not in three and three["accuracy"] == 1.0
    assert macro_f1(np.array([0, 0]), np.array([0, 0]), 3) == 1.0  # absent classes skipped


def test_regression_metrics() -> None:
    y = np.array([[0.0], [2.0]])
    m = regression_metrics(np.array([[0.0], [2.0]]), y, train_mean=np.array([1.0]))
    assert (m["mse"], m["r2"], m["mse_predict_train_mean"]) == (0.0, 1.0, 1.0)
    assert regression_metrics(np.ones((2, 1)), y, np.array([1.0]))["r2"] == 0.0
    # Two targets, one nearly constant: the mean R2 drops, the variance-weighted one barely.
    y2 = np.array([[0.0, 0.0], [2.0, 0.01]])
    m2 = regression_metrics(np.array([[0.0, 0.005], [2.0, 0.005]]), y2, np.array([1.0, 0.0]))
    assert m2["r2"] == pytest.approx(0.5) and m2["r2_variance_weighted"] > 0.99


def test_snr_bands() -> None:
    bands = SNRBands((1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0))
    assert bands.labels == ["[1/64, 1/16)", "[1/16, 1/4)", "[1/4, 1/2)", "[1/2, 1]"]
    snr = np.array([0.0, 1 / 128, 1 / 64, 1 / 16 - 1e-9, 1 / 16, 0.5, 1.0])
    assert bands.assign(snr).tolist() == [-1, -1, 0, 0, 1, 3, 3]
    grid = SNRBands()
    assert grid.labels[0] == "1/128" and grid.labels[-1] == "1"
    assert grid.assign(np.array([0.0, 1 / 128, 0.7, 0.8])).tolist() == [-1, 0, 6, 7]


def test_instance_auc() -> None:
    mask = np.ones((3, 4), bool)
    signal = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], bool)  # row 2: no noise
    right = np.array([[0.7, 0.1, 0.1, 0.1], [0.4, 0.4, 0.1, 0.1], [0.25] * 4])
    assert instance_auc(right, mask, signal) == {
        "instance_auc": 1.0,
        "instance_auc_pooled": 1.0,
        "sets": 2,
    }
    assert instance_auc(1 - right, mask, signal)["instance_auc"] == 0.0
    assert instance_auc(np.full((3, 4), 0.25), mask, signal)["instance_auc"] == 0.5
    # padding never counts: a heavy padded "noise" token changes nothing
    padded = np.c_[right, np.ones(3)]
    wide_mask, wide_signal = np.c_[mask, np.zeros(3, bool)], np.c_[signal, np.zeros(3, bool)]
    assert instance_auc(padded, wide_mask, wide_signal)["instance_auc"] == 1.0


def test_band_quality_reports_each_band_with_chance() -> None:
    bands = SNRBands((1 / 4, 1 / 2, 1.0))
    mask = np.ones((2, 4), bool)
    signal = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], bool)  # SNR 1/4 and 3/4
    w = np.array([[0.7, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.1]])
    rows = band_quality(w, mask, signal, bands, PROJECT_RULE)
    assert [r["band"] for r in rows] == ["[1/4, 1/2)", "[1/2, 1]"]
    assert rows[0]["weights"]["f1"] == 1.0 and rows[0]["weights"]["f1_chance"] == 0.4
    assert rows[1]["instance_auc"] == 1.0 and rows[1]["sets"] == 1


def test_choose_rule_takes_the_best_candidate_and_the_first_on_ties() -> None:
    """Sharp weights on one of two signal tokens: only a low threshold finds both."""
    mask = np.ones((2, 6), bool)
    signal = np.zeros((2, 6), bool)
    signal[:, :2] = True
    w = np.array([[0.8, 0.12, 0.02, 0.02, 0.02, 0.02]] * 2)
    candidates = [PROJECT_RULE, SignalRule("share_of_max", 0.1), SignalRule("share_of_max", 0.12)]
    rule, table = choose_rule(w, mask, signal, SNRBands(), candidates)
    assert rule == SignalRule("share_of_max", 0.1)  # first of the two perfect ones
    assert [t["mean_f1"] for t in table] == pytest.approx([2 / 3, 1.0, 1.0])
    assert table[0]["definition"] == "head-mean weight >= max weight / 4"
    with pytest.raises(ValueError, match="no set holds a signal token"):
        choose_rule(w, mask, np.zeros((2, 6), bool), SNRBands())


def test_rule_definitions_and_validation() -> None:
    assert NAMED_RULES["quarter-max"] is PROJECT_RULE
    assert SignalRule("share_of_max", 0.3).definition == "head-mean weight >= max weight x 0.3"
    assert SignalRule("uniform_share", 2.0).definition == "head-mean weight > 2/n_real"
    with pytest.raises(RuleError, match="needs a value"):
        SignalRule("mass", 1.5)
    with pytest.raises(RuleError, match="largest_gap needs a value > 1"):
        SignalRule("largest_gap", 1.0)


def test_largest_gap_cuts_at_the_biggest_drop() -> None:
    rule = SignalRule("largest_gap", 2.0)
    w = np.array([[0.4, 0.35, 0.15, 0.05, 0.05, 0.9], [0.25] * 4 + [0, 0], [1.0] + [0] * 5])
    mask = np.array([[1] * 5 + [0], [1] * 4 + [0] * 2, [1] + [0] * 5], bool)
    # row 0: the drops are 1.14x, 2.3x, 3x, 1x: the largest (3x) is after the third token;
    # row 1: uniform, no drop of 2x: every real token; row 2: one token. Padding never counts.
    assert rule.select(w, mask).astype(int).tolist() == [
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 0, 0, 0, 0, 0],
    ]
    assert "largest drop" in rule.definition and "at least 2x" in rule.definition
