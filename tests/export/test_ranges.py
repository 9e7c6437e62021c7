"""export.ranges on the committed models: where a finite input overflows, and from what size."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.ranges import PATTERNS, Probe
from export.ranges import main as ranges_main

REPOSITORY = Path(__file__).parents[2] / "model_repository"


def test_adapool_overflows_in_its_pooling_logits_near_1e19() -> None:
    """The issue's probe: 1e19 everywhere gives NaN from knn-adapool-ego; 1e18 does not. The
    first non-finite value is a MatMul's inf (the pooling logits), not LayerNorm's."""
    probe = Probe(REPOSITORY / "knn-adapool-ego" / "1" / "model.onnx")
    every = PATTERNS["every value"]
    assert probe.finite(every, 1e18) and not probe.finite(every, 1e19)
    assert 18 <= probe.largest_finite(every) < 19
    found = probe.overflow(every, 1e19)
    assert found is not None and (found.op_type, found.kind) == ("MatMul", "inf")
    assert found.largest_input < 1e20  # finite operands whose product is not


def test_one_huge_token_breaks_the_mean_query_models_only() -> None:
    one_token = PATTERNS["one token"]
    for name in ("signature-adapool", "knn-adapool-mean"):
        assert not Probe(REPOSITORY / name / "1" / "model.onnx").finite(one_token, 3e38), name
    for name in ("knn-adapool-ego", "knn-avg", "knn-cls", "knn-max"):
        assert Probe(REPOSITORY / name / "1" / "model.onnx").finite(one_token, 3e38), name


def test_the_table_names_every_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert ranges_main([str(REPOSITORY / "knn-avg")]) == 0
    out = capsys.readouterr().out
    assert "| knn-avg/1 | 2.3e+38 |" in out and "LayerNormalization" in out
