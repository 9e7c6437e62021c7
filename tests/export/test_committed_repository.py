"""The committed model_repository/ passes the verifier, and its models match their manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from export.repository import find_versions
from export.verify import main as verify_main

REPOSITORY = Path(__file__).parents[2] / "model_repository"
DEFAULTS = ["knn-adapool-ego", "knn-adapool-mean", "knn-avg", "knn-cls", "knn-max"]


def test_default_models_are_committed() -> None:
    assert sorted({v.name for v in find_versions(REPOSITORY)}) == DEFAULTS


def test_committed_repository_verifies(capsys: pytest.CaptureFixture[str]) -> None:
    assert verify_main([str(REPOSITORY)]) == 0, capsys.readouterr().out


@pytest.mark.parametrize("name", DEFAULTS)
def test_manifest_records_the_knn_training(name: str) -> None:
    manifest = json.loads((REPOSITORY / name / "1" / "manifest.json").read_text())
    assert manifest["metrics"]["k"] == 8 and manifest["training"]["data"]["k"] == 8
    assert manifest["export"]["parity_ok"] is True
    assert manifest["command"].startswith("python -m export.defaults")
