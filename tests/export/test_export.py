"""Export and verification against the real exporter, ONNX Runtime and onnx.checker."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from export.cli import export_run, main
from export.onnx_export import ExportWrapper
from export.repository import RepositoryError, find_versions, sha256_file
from export.rescore import main as rescore_main
from export.verify import main as verify_main
from modelrepo import NAMED
from models import train as training
from models.checkpoint import load_model, save_model
from models.data.knn_centroid import generate
from models.metrics import SIGNAL_RULE
from tests.export.conftest import HEADS, VARIANTS, make_run_dir


def test_every_variant_exports_and_verifies(
    repository: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert [v.name for v in find_versions(repository)] == sorted([*VARIANTS, *HEADS])
    assert verify_main([str(repository)]) == 0
    out = capsys.readouterr().out
    assert "7 of 7 model versions passed" in out
    assert "parity batch 2, tokens 300" in out and "parity padding filled with nan" in out


def test_manifest_describes_the_model(repository: Path) -> None:
    manifest = json.loads((repository / "adapool-ego" / "1" / "manifest.json").read_text())
    assert manifest["pooling"] == {
        "method": "adapool",
        "query": "token",
        "query_index": 0,
        "query_indices": [],
        "residual": True,
        "values": "encoder",
    }
    assert (manifest["input_dim"], manifest["output_dim"], manifest["heads"]) == (16, 16, 4)
    assert manifest["opset"] >= 18
    assert manifest["sha256"]["model.onnx"] == sha256_file(
        repository / "adapool-ego" / "1" / "model.onnx"
    )
    assert set(manifest["sha256"]) == {
        "model.onnx",
        "checkpoint/config.json",
        "checkpoint/model.safetensors",
    }
    assert manifest["training"]["model"]["depth"] == 2
    assert manifest["signal_rule"] == {
        "kind": "share_of_max",
        "value": 0.25,
        "definition": SIGNAL_RULE,
    }
    assert SIGNAL_RULE == "head-mean weight >= max weight / 4"
    assert manifest["format"] == 2 and manifest["task"] == {"kind": "pool"}
    assert manifest["packages"]["torch"].startswith("2.13")
    assert manifest["export"]["parity_ok"] is True
    assert max(p["max_abs_diff_pooled"] for p in manifest["export"]["parity"]) < 1e-4
    avg = json.loads((repository / "avg" / "1" / "manifest.json").read_text())
    assert avg["heads"] == 1 and avg["pooling"]["query"] is None


def test_triton_config(repository: Path) -> None:
    text = (repository / "cls" / "config.pbtxt").read_text()
    assert 'platform: "onnxruntime_onnx"' in text
    assert '{ name: "weights" data_type: TYPE_FP32 dims: [ 4, -1 ] }' in text
    assert '{ name: "attention_mask" data_type: TYPE_BOOL dims: [ -1 ] }' in text


def test_tampered_model_fails_verification(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repository / "avg", copy / "avg")
    model_file = copy / "avg" / "1" / "model.onnx"
    data = bytearray(model_file.read_bytes())
    data[-10] ^= 0xFF
    model_file.write_bytes(bytes(data))
    assert verify_main([str(copy)]) == 1
    out = capsys.readouterr().out
    assert "FAIL avg/1" in out and "FAIL sha256 model.onnx: manifest" in out


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_frozen_sequence_length_fails_verification(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The legacy exporter without dynamic axes freezes batch 3 and tokens 17 into the graph.
    Even with a manifest whose checksum matches, the verifier fails it."""
    copy = tmp_path / "repo"
    shutil.copytree(repository / "adapool-mean", copy / "adapool-mean")
    version = copy / "adapool-mean" / "1"
    model, _ = load_model(version / "checkpoint")
    model.set_fused_attention(False)
    example = (torch.randn(3, 17, 16), torch.ones(3, 17, dtype=torch.bool))
    torch.onnx.export(
        ExportWrapper(model),
        example,
        str(version / "model.onnx"),
        dynamo=False,
        input_names=["embeddings", "attention_mask"],
        output_names=["pooled", "weights"],
    )
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["sha256"]["model.onnx"] = sha256_file(version / "model.onnx")
    (version / "manifest.json").write_text(json.dumps(manifest))
    assert verify_main([str(version)]) == 1
    out = capsys.readouterr().out
    assert "FAIL dynamic batch and token axes: embeddings[0]=3, embeddings[1]=17" in out
    assert "FAIL parity batch 2, tokens 300" in out
    assert "ok   sha256 model.onnx" in out


def test_plain_onnxruntime_matches_pytorch_on_knn_data(tmp_path: Path) -> None:
    """The committed default model, loaded by a client with only onnxruntime and numpy (no
    project code), gives its PyTorch checkpoint's results on held-out kNN-Centroid data."""
    version = Path(__file__).parents[2] / "model_repository" / "knn-adapool-ego" / "1"
    data = generate(200, 8, seed=2024)
    np.save(tmp_path / "x.npy", data.x)
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n"
        "x = np.load(sys.argv[2]); mask = np.ones(x.shape[:2], dtype=bool)\n"
        "pooled, weights = s.run(None, {'embeddings': x, 'attention_mask': mask})\n"
        "np.save(sys.argv[3], pooled); np.save(sys.argv[4], weights)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('models', 'export', 'torch')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(version / "model.onnx"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "p.npy"),
            str(tmp_path / "w.npy"),
        ],
        check=True,
        cwd=tmp_path,
    )
    model, _ = load_model(version / "checkpoint")
    with torch.no_grad():
        ref = model(torch.from_numpy(data.x), torch.ones(200, 128, dtype=torch.bool))
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ref.pooled.numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "w.npy"), ref.weights.numpy(), atol=1e-5)


def test_existing_version_and_bad_names_are_refused(repository: Path, tmp_path: Path) -> None:
    run = make_run_dir(tmp_path / "run", VARIANTS["avg"])
    with pytest.raises(RepositoryError, match="exists"):
        export_run(run, "avg", 1, repository, command="test")
    for name in ("../escape", "UPPER", "", "a/b"):
        with pytest.raises(RepositoryError, match="invalid model name"):
            export_run(run, name, 1, tmp_path / "r", command="test")
    with pytest.raises(RepositoryError, match="invalid version"):
        export_run(run, "ok", 0, tmp_path / "r", command="test")


def test_second_version_with_another_signature_is_refused(repository: Path, tmp_path: Path) -> None:
    """Versions of one name share config.pbtxt: a different head count must get its own name."""
    repo = tmp_path / "repo"
    shutil.copytree(repository / "avg", repo / "avg")
    run = make_run_dir(tmp_path / "run", VARIANTS["adapool-mean"])
    with pytest.raises(RepositoryError, match="different signature"):
        export_run(run, "avg", 2, repo, command="test")
    assert not (repo / "avg" / "2").exists()


def test_cli_exports_a_second_version(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "max", repo / "max")
    run = make_run_dir(tmp_path / "run", VARIANTS["max"], seed=1)
    assert main([str(run), "--name", "max", "--version", "2", "--repository", str(repo)]) == 0
    assert "exported max/2" in capsys.readouterr().out
    assert [v.version for v in find_versions(repo)] == [1, 2]
    assert main([str(run), "--name", "max", "--version", "2", "--repository", str(repo)]) == 2


def test_rescore_restates_metrics_under_the_current_rule(repository: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(repository / "adapool-mean", repo / "adapool-mean")
    manifest_file = repo / "adapool-mean" / "1" / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    # As an export under an older rule would have written it (the fixture's runs have no metrics).
    model, config = load_model(repo / "adapool-mean" / "1" / "checkpoint")
    old = training.rescore_metrics(model, config, {})
    older = NAMED["uniform"]  # the project's rule before "quarter-max"
    old["weights"]["rule"] = older.definition
    old["epochs"] = 7
    manifest.update(signal_rule=older.to_dict(), metrics=old)
    manifest_file.write_text(json.dumps(manifest))
    assert rescore_main([str(repo)]) == 0
    new = json.loads(manifest_file.read_text())
    assert new["signal_rule"]["definition"] == SIGNAL_RULE == new["metrics"]["weights"]["rule"]
    assert new["metrics"]["signal_loss"] == old["signal_loss"]  # same model, same test split
    assert new["metrics"]["epochs"] == 7  # the training record is kept
    assert new["rescored"][0]["previous_signal_rule"] == older.definition
    assert rescore_main([str(repo)]) == 0  # idempotent
    assert len(json.loads(manifest_file.read_text())["rescored"]) == 1


def test_head_models_export_their_outputs(repository: Path) -> None:
    """A classifier exports logits and (its values come from the inputs) exact contributions;
    a regressor exports its prediction; config.pbtxt and the manifest list every output."""
    classifier = json.loads((repository / "classifier" / "1" / "manifest.json").read_text())
    assert [o["name"] for o in classifier["outputs"]] == [
        "pooled",
        "weights",
        "logits",
        "contributions",
    ]
    assert classifier["outputs"][2]["shape"] == ["batch", 3]
    assert classifier["outputs"][3]["shape"] == ["batch", "tokens", 3]
    assert classifier["task"] == {"kind": "classification", "classes": ["0", "1", "2"]}
    assert classifier["pooling"]["values"] == "inputs" and len(classifier["contribution_bias"]) == 3
    assert all(
        p["max_abs_diff_head"]["contributions"] < 1e-4 for p in classifier["export"]["parity"]
    )
    text = (repository / "classifier" / "config.pbtxt").read_text()
    assert '{ name: "logits" data_type: TYPE_FP32 dims: [ 3 ] }' in text
    assert '{ name: "contributions" data_type: TYPE_FP32 dims: [ -1, 3 ] }' in text
    regressor = json.loads((repository / "regressor" / "1" / "manifest.json").read_text())
    assert [o["name"] for o in regressor["outputs"]] == ["pooled", "weights", "prediction"]
    assert regressor["task"] == {"kind": "regression", "num_targets": 2}
    assert "contribution_bias" not in regressor


def test_onnxruntime_contributions_add_up_to_the_logits(repository: Path) -> None:
    """On the graph alone: bias + sum over tokens of contributions == logits, 0 on padding."""
    version = repository / "classifier" / "1"
    manifest = json.loads((version / "manifest.json").read_text())
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 30, 16)).astype(np.float32)
    mask = np.arange(30)[None, :] < np.array([30, 12, 5, 1])[:, None]
    _, _, logits, contributions = session.run(None, {"embeddings": x, "attention_mask": mask})
    bias = np.array(manifest["contribution_bias"], dtype=np.float32)
    np.testing.assert_allclose(contributions.sum(axis=1) + bias, logits, atol=1e-5)
    assert (contributions[~mask] == 0).all() and contributions.shape == (4, 30, 3)


def test_verify_fails_contributions_that_do_not_add_up(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A checkpoint whose head bias moved by 1 no longer matches the graph: the logits differ
    by 1, and the graph's contributions no longer add up to its logits with the model's bias."""
    copy = tmp_path / "repo"
    shutil.copytree(repository / "classifier", copy / "classifier")
    version = copy / "classifier" / "1"
    model, _ = load_model(version / "checkpoint")
    with torch.no_grad():
        model.head.bias.add_(1.0)  # the checkpoint no longer matches the graph
    save_model(model, version / "checkpoint" / "model.safetensors")
    assert verify_main([str(version)]) == 1
    out = capsys.readouterr().out
    assert "FAIL parity batch 2, tokens 300" in out
    assert "logits 1.00e+00" in out and "contributions add up within 1.0e+00" in out
