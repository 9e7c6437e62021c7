"""The encoder's attention in the exported graph, and re-exporting a repository in place."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import onnx
import pytest

from export.attention import ATTENTION, extra_channels
from export.onnx_export import export_onnx
from export.reexport import main as reexport_main
from export.repository import sha256_file
from export.verify import main as verify_main
from export.verify import quadratic_values
from models.checkpoint import load_model


def test_each_encoder_block_is_one_multi_head_attention_node(repository: Path) -> None:
    """Depth 2 -> two contrib nodes; no value of the graph has the token axis twice, while the
    explicit formulation (the version-1 graphs) has its (B, H, N, N) scores and probabilities."""
    for name in ("cls", "adapool-mean", "avg"):
        graph = onnx.load(str(repository / name / "1" / "model.onnx"))
        ops = Counter((n.domain, n.op_type) for n in graph.graph.node)
        assert ops[("com.microsoft", "MultiHeadAttention")] == 2, name
        assert quadratic_values(graph) == ([], [])
        manifest = json.loads((repository / name / "1" / "manifest.json").read_text())
        assert manifest["export"]["attention"] == ATTENTION


def test_explicit_graph_is_found_quadratic(repository: Path, tmp_path: Path) -> None:
    model, _ = load_model(repository / "cls" / "1" / "checkpoint")
    export_onnx(model, tmp_path / "explicit.onnx", attention=None)
    quadratic, unknown = quadratic_values(onnx.load(str(tmp_path / "explicit.onnx")))
    assert unknown == [] and len(quadratic) >= 2 * 3  # per block: scores, scaled, masked, probs
    assert all("tokens + 1, tokens + 1]" in q for q in quadratic)  # the class token is in N


def test_extra_key_channels_round_head_size_to_a_multiple_of_8() -> None:
    assert [extra_channels(d) for d in (4, 7, 8, 16, 32, 33)] == [4, 1, 8, 8, 8, 7]


def explicit_copy(repository: Path, name: str, target: Path) -> Path:
    """A copy of ``name`` whose graph and manifest are as version 1 was exported: explicit
    attention, no ``export.attention``."""
    shutil.copytree(repository / name, target / name)
    version = target / name / "1"
    model, _ = load_model(version / "checkpoint")
    export_onnx(model, version / "model.onnx", attention=None)
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = sha256_file(version / "model.onnx")
    del manifest["export"]["attention"]
    (version / "manifest.json").write_text(json.dumps(manifest))
    return version


def test_reexport_replaces_the_graph_in_place_with_a_record(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = explicit_copy(repository, "adapool-ego", tmp_path / "repo")
    old_sha = sha256_file(version / "model.onnx")
    checkpoint = sha256_file(version / "checkpoint" / "model.safetensors")
    assert verify_main([str(version)]) == 1  # the memory check fails the explicit graph
    assert "FAIL memory linear in tokens" in capsys.readouterr().out

    assert reexport_main([str(tmp_path / "repo")]) == 0
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["export"]["attention"] == ATTENTION
    assert manifest["sha256"]["model.onnx"] == sha256_file(version / "model.onnx") != old_sha
    assert manifest["sha256"]["checkpoint/model.safetensors"] == checkpoint  # same model
    (record,) = manifest["reexported"]
    assert record["previous"]["sha256"] == old_sha
    assert "attention" not in record["previous"]["export"]
    assert max(record["max_abs_diff_vs_previous"].values()) < 1e-4
    assert record["command"] == f"python -m export.reexport {tmp_path / 'repo'}"
    assert verify_main([str(version)]) == 0
    capsys.readouterr()

    assert reexport_main([str(tmp_path / "repo")]) == 0  # idempotent
    assert "adapool-ego/1: up to date" in capsys.readouterr().out
    assert len(json.loads((version / "manifest.json").read_text())["reexported"]) == 1


def test_reexport_refuses_a_checkpoint_that_is_not_the_manifests(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version = explicit_copy(repository, "max", tmp_path / "repo")
    before = (version / "model.onnx").read_bytes()
    config = version / "checkpoint" / "config.json"
    config.write_text(config.read_text() + " ")
    assert reexport_main([str(tmp_path / "repo")]) == 1
    assert "does not match the manifest's sha256" in capsys.readouterr().err
    assert (version / "model.onnx").read_bytes() == before
