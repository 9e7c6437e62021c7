"""The committed model_repository/ passes the verifier, and its models match their manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.repository import find_versions
from export.verify import main as verify_main
from modelrepo import DEFAULT_RULE, FORMAT, read_manifest
from models.metrics import SIGNAL_RULE
from service.settings import Settings

REPOSITORY = Path(__file__).parents[2] / "model_repository"
KNN = ["knn-adapool-ego", "knn-adapool-mean", "knn-avg", "knn-cls", "knn-max"]
SIGNATURE = "signature-adapool"


def test_default_models_are_committed() -> None:
    assert sorted({v.name for v in find_versions(REPOSITORY)}) == sorted([*KNN, SIGNATURE])
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
