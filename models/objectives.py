"""What each task trains on, which validation loss picks the best epoch, and its test metrics.

- centroid tasks: MSE of the pooled vector against the signal centroid (the paper's signal
  loss), the weights' quality under the project's rule, the trivial baselines;
- classification: cross-entropy; accuracy (beside the majority class), macro-F1, AUC for two
  classes (:mod:`models.task_metrics`);
- regression: MSE; MSE beside predicting the training mean, R2.

For the file tasks, when the data set has a ``signal_mask``, the weights are scored too
(:func:`weights_report`): the model's own signal-set rule is chosen on the validation split
(:func:`models.weight_metrics.choose_rule`), then the test split is scored under it (and under
the project's rule, for comparison), overall and per SNR band, with the rule-free instance AUC.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from models.config import RunConfig
from models.metrics import (
    PROJECT_RULE,
    auc,
    signal_loss,
    snr_bands,
    trivial_baselines,
    weight_quality,
)
from models.model import PoolingModel
from models.task_metrics import classification_metrics, regression_metrics, softmax
from models.tasks import ArraySplit, FileSplit, Predictions, Split, predict_split, targets_of
from models.weight_metrics import SNRBands, band_quality, choose_rule, instance_auc, set_snr


class Objective(Protocol):
    """What a task trains on and how its runs are scored."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor: ...

    def val_loss(self, predictions: Predictions, split: Split) -> float: ...

    def test_metrics(
        self, model: PoolingModel, splits: Mapping[str, Split], config: RunConfig
    ) -> dict[str, Any]: ...


def _pooling_fields(config: RunConfig) -> dict[str, Any]:
    pooling = config.model.pooling
    adapool = pooling.method == "adapool"
    return {
        "task": config.data.task,
        "method": pooling.method,
        "query": pooling.query if adapool else None,
        "values": pooling.values if adapool else None,
    }


class CentroidObjective:
    """The centroid tasks: the pooled vector against the signal centroid (MSE)."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def val_loss(self, predictions: Predictions, split: Split) -> float:
        return signal_loss(predictions.output, targets_of(split))

    def test_metrics(
        self, model: PoolingModel, splits: Mapping[str, Split], config: RunConfig
    ) -> dict[str, Any]:
        """Signal loss, weight quality with chance levels, and the trivial baselines."""
        test = splits["test"]
        assert isinstance(test, ArraySplit)
        data, mask = test.data, test.data.mask()
        p = predict_split(model, test, config.train.eval_batch_size)
        fields = _pooling_fields(config)
        metrics: dict[str, Any] = {
            "task": fields["task"],
            "method": fields["method"],
            "query": fields["query"],
            "k": config.data.k if config.data.task == "knn_centroid" else None,
            "snr": config.data.snr if config.data.task == "knn_centroid" else None,
            "num_test": len(data.x),
            "signal_loss": signal_loss(p.output, data.y),
            "weights": weight_quality(p.weights, mask, data.signal_mask).as_dict(),
            "trivial": trivial_baselines(data.x, data.y, mask),
        }
        if config.data.task == "signature":
            metrics["bands"] = snr_bands(
                p.output, p.weights, data.x, data.y, mask, data.signal_mask
            )
        return metrics


def weights_report(val: Predictions, test: Predictions, bands: SNRBands) -> dict[str, Any]:
    """The weights against the signal masks: the rule chosen on ``val``, ``test`` scored.

    Only sets holding at least one signal token are scored (a negative bag has none).
    """
    if val.signal_mask is None or test.signal_mask is None:
        return {"signal_rule": {**PROJECT_RULE.to_dict(), "chosen_on": "default (no signal_mask)"}}
    v = val.signal_mask.any(axis=1)
    t = test.signal_mask.any(axis=1)
    if not v.any() or not t.any():
        note = "default (no set with a signal token in the validation or test split)"
        return {"signal_rule": {**PROJECT_RULE.to_dict(), "chosen_on": note}}
    rule, table = choose_rule(val.weights[v], val.attention_mask[v], val.signal_mask[v], bands)
    chosen = next(row for row in table if row["kind"] == rule.kind and row["value"] == rule.value)
    w, m, s = test.weights[t], test.attention_mask[t], test.signal_mask[t]
    return {
        "signal_rule": {
            **rule.to_dict(),
            "chosen_on": "validation",
            "validation_mean_f1": chosen["mean_f1"],
            "project_rule_validation_mean_f1": table[0]["mean_f1"],
            "candidates": len(table),
        },
        "weights": {**weight_quality(w, m, s, rule).as_dict(), **instance_auc(w, m, s)},
        "weights_project_rule": weight_quality(w, m, s, PROJECT_RULE).as_dict(),
        "bands": band_quality(w, m, s, bands, rule),
    }


def _file_report(
    model: PoolingModel, splits: Mapping[str, Split], config: RunConfig
) -> tuple[Predictions, dict[str, Any]]:
    size = config.train.eval_batch_size
    val = predict_split(model, splits["val"], size)
    test = predict_split(model, splits["test"], size)
    train = splits["train"]
    assert isinstance(train, FileSplit)
    classes = train.sets.classes
    report = {
        **_pooling_fields(config),
        "data": config.data.path,
        "classes": list(classes) if classes is not None else None,
        "num_outputs": model.config.num_outputs,
        **{f"num_{name}": len(split) for name, split in splits.items()},
        **weights_report(val, test, SNRBands(config.data.snr_band_edges)),
    }
    return test, report


def _band_rows(test: Predictions, edges: tuple[float, ...]) -> list[tuple[str, np.ndarray]]:
    """(label, rows of the test split) per SNR band with sets, from the signal masks."""
    assert test.signal_mask is not None
    bands = SNRBands(edges)
    index = bands.assign(set_snr(test.attention_mask, test.signal_mask))
    return [(label, index == i) for i, label in enumerate(bands.labels) if (index == i).any()]


class ClassificationObjective:
    """A linear head to C logits, cross-entropy."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(output, target)

    def val_loss(self, predictions: Predictions, split: Split) -> float:
        labels = targets_of(split)
        p = softmax(predictions.output)[np.arange(len(labels)), labels]
        return float(-np.mean(np.log(np.clip(p, 1e-12, None))))

    def test_metrics(
        self, model: PoolingModel, splits: Mapping[str, Split], config: RunConfig
    ) -> dict[str, Any]:
        test, report = _file_report(model, splits, config)
        labels = targets_of(splits["test"])
        head = classification_metrics(test.output, labels, targets_of(splits["train"]))
        if "bands" in report and test.output.shape[1] == 2:
            # Per band: the band's sets (they hold signal) against the sets without any.
            p1 = softmax(test.output)[:, 1]
            assert test.signal_mask is not None
            none = ~test.signal_mask.any(axis=1)
            by_label = dict(_band_rows(test, config.data.snr_band_edges))
            for band in report["bands"]:
                rows = by_label[band["band"]] | none
                band["auc"] = auc(p1[rows], labels[rows] == 1)
        return {**report, **head}


class RegressionObjective:
    """A linear head to T values, MSE."""

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(output, target)

    def val_loss(self, predictions: Predictions, split: Split) -> float:
        return float(np.mean((predictions.output - targets_of(split)) ** 2))

    def test_metrics(
        self, model: PoolingModel, splits: Mapping[str, Split], config: RunConfig
    ) -> dict[str, Any]:
        test, report = _file_report(model, splits, config)
        targets = targets_of(splits["test"])
        train_mean = targets_of(splits["train"]).mean(axis=0)
        head = regression_metrics(test.output, targets, train_mean)
        # Targets in the tokens' space (a centroid, say): beside the mean of the set's tokens.
        mean = (
            mean_of_tokens(splits["test"]) if targets.shape[1] == model.config.input_dim else None
        )
        if mean is not None:
            head["mse_mean_of_tokens"] = float(np.mean((mean - targets) ** 2))
        if "bands" in report:
            by_label = dict(_band_rows(test, config.data.snr_band_edges))
            for band in report["bands"]:
                rows = by_label[band["band"]]
                band |= regression_metrics(test.output[rows], targets[rows], train_mean)
                if mean is not None:
                    band["mse_mean_of_tokens"] = float(np.mean((mean[rows] - targets[rows]) ** 2))
        return {**report, **head}


def mean_of_tokens(split: Split, batch_size: int = 1024) -> np.ndarray:
    """(S, D) each set's mean real token: the trivial pool (AvgPool's optimum)."""
    means = []
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(len(split), start + batch_size)))
        m = batch.attention_mask[..., None]
        means.append((batch.x * m).sum(axis=1) / m.sum(axis=1))
    return np.concatenate(means)


def objective(task: str) -> Objective:
    """The objective of a data task (the centroid one for ``knn_centroid`` and ``signature``)."""
    if task == "classification":
        return ClassificationObjective()
    if task == "regression":
        return RegressionObjective()
    return CentroidObjective()


def _weights_lines(metrics: dict[str, Any]) -> list[str]:
    rule = metrics["signal_rule"]
    if "weights" not in metrics:
        return [f"weights: not scored ({rule['chosen_on']}); signal rule {rule['definition']!r}"]
    w = metrics["weights"]
    return [
        f"weights: instance AUC {w['instance_auc']:.3f} (chance 0.5) over {w['sets']} sets "
        f"with signal; rule {rule['definition']!r} (chosen on {rule['chosen_on']}): "
        f"F1 {w['f1']:.3f} (all-tokens {w['f1_chance']:.3f})"
    ]


def summary(metrics: dict[str, Any]) -> str:
    """The test metrics in a few lines, each figure beside its chance level or baseline."""
    best = f"(best epoch {metrics['best_epoch']})"
    if metrics["task"] == "classification":
        auc_text = f", AUC {metrics['auc']:.4f}" if "auc" in metrics else ""
        lines = [
            f"test accuracy {metrics['accuracy']:.4f} (majority class "
            f"{metrics['accuracy_majority_class']:.4f}), macro-F1 {metrics['macro_f1']:.4f}"
            f"{auc_text} {best}",
            *_weights_lines(metrics),
        ]
    elif metrics["task"] == "regression":
        lines = [
            f"test MSE {metrics['mse']:.5f} (predicting the training mean "
            f"{metrics['mse_predict_train_mean']:.5f}), R2 {metrics['r2']:.4f} {best}",
            *_weights_lines(metrics),
        ]
    else:
        w = metrics["weights"]
        lines = [
            f"test signal loss {metrics['signal_loss']:.5f} {best}; "
            f"trivial: mean-of-all {metrics['trivial']['predict_mean_of_all']:.5f}, "
            f"x0 {metrics['trivial']['predict_x0']:.5f}",
            f"weights: signal mass {w['signal_mass']:.3f} (chance {w['signal_mass_chance']:.3f}), "
            f"F1 {w['f1']:.3f} (all-tokens {w['f1_chance']:.3f})",
        ]
    return "\n".join(lines)
