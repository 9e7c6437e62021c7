"""The committed model_repository/ passes the verifier, and its models match their manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.repository import find_versions
from export.verify import main as verify_main
from modelrepo import DEFAULT_RULE, FORMAT, SignalRule, read_manifest
from models.metrics import SIGNAL_RULE
from service.settings import Settings

REPOSITORY = Path(__file__).parents[2] / "model_repository"
KNN = ["knn-adapool-ego", "knn-adapool-mean", "knn-avg", "knn-cls", "knn-max"]
SIGNATURE = "signature-adapool"
DIGITS = "digits-bags-adapool"


def test_default_models_are_committed() -> None:
    names = sorted({v.name for v in find_versions(REPOSITORY)})
    assert names == sorted([*KNN, SIGNATURE, DIGITS])
    assert Settings.model_fields["default_model"].default == SIGNATURE


def test_committed_repository_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(REPOSITORY)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("name", KNN)
def test_manifest_records_the_knn_training(name: str) -> None:
    manifest = json.loads((REPOSITORY / name / "1" / "manifest.json").read_text())
    assert manifest["metrics"]["k"] == 8 and manifest["training"]["data"]["k"] == 8
    assert manifest["export"]["parity_ok"] is True
    assert manifest["command"].startswith("python -m export.defaults")


def test_the_default_models_manifest_records_validated_weights() -> None:
    """The service's default model: trained on the Signature task, its weights validated per SNR
    band under the project's signal rule, the figures (and chance levels) in its manifest."""
    manifest = json.loads((REPOSITORY / SIGNATURE / "1" / "manifest.json").read_text())
    assert manifest["signal_rule"] == DEFAULT_RULE.to_dict()
    assert manifest["metrics"]["weights"]["rule"] == SIGNAL_RULE == DEFAULT_RULE.definition
    assert manifest["metrics"]["task"] == "signature"
    assert manifest["pooling"]["method"] == "adapool" and manifest["pooling"]["query"] == "mean"
    bands = {b["log2_snr"]: b["weights"] for b in manifest["metrics"]["bands"]}
    assert sorted(bands) == list(range(-7, 1))
    for band in (-3, -2, -1):  # SNR 1/8 .. 1/2
        assert bands[band]["f1"] >= 0.8
    for band in (-5, -4, -3, -2):  # SNR 1/32 .. 1/4
        assert bands[band]["f1"] >= 2 * bands[band]["f1_chance"]
    assert bands[0]["f1"] >= bands[0]["f1_chance"]


@pytest.mark.parametrize("name", [*KNN, SIGNATURE])
def test_every_manifest_states_its_metrics_under_the_services_rule(name: str) -> None:
    manifest = read_manifest(REPOSITORY / name / "1" / "manifest.json")
    assert manifest.format == FORMAT and manifest.signal_rule == DEFAULT_RULE
    assert manifest.metrics is not None and manifest.metrics.weights is not None
    assert manifest.metrics.weights.rule == SIGNAL_RULE == DEFAULT_RULE.definition


def test_the_digits_model_is_a_validated_classifier() -> None:
    """The default classification model: a faithful AdaPool over a 2-layer encoder, trained on
    digits bags; its manifest states its task, outputs, own rule and test figures."""
    manifest = json.loads((REPOSITORY / DIGITS / "1" / "manifest.json").read_text())
    typed = read_manifest(REPOSITORY / DIGITS / "1" / "manifest.json")  # the service's reading
    assert typed.format == FORMAT and typed.task.output == "logits"
    metrics = manifest["metrics"]
    assert manifest["task"] == {"kind": "classification", "classes": ["no 9", "has a 9"]}
    names = [o["name"] for o in manifest["outputs"]]
    assert names == ["pooled", "weights", "logits", "contributions"]
    assert manifest["pooling"]["values"] == "inputs" and manifest["depth"] == 2
    assert manifest["input_dim"] == 64 and manifest["command"].startswith("python -m export ")
    # Its own rule, chosen on its validation split, and its test figures under that rule.
    assert metrics["signal_rule"]["chosen_on"] == "validation"
    assert typed.signal_rule == SignalRule.from_dict(metrics["signal_rule"]) != DEFAULT_RULE
    assert typed.signal_rule.definition == metrics["weights"]["rule"]
    assert len(typed.contribution_bias) == 2
    assert metrics["auc"] >= 0.98 and metrics["weights"]["instance_auc"] >= 0.97
    low = metrics["bands"][0]
    assert low["band"] == "[1/64, 1/16)" and low["auc"] >= 0.95
    for band in metrics["bands"]:
        assert band["weights"]["f1"] > band["weights"]["f1_chance"]
