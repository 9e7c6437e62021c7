"""The typed manifest: every committed manifest reads, every field the service uses is checked,
and each problem names the file and the field."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from modelrepo import (
    DEFAULT_RULE,
    FORMAT,
    Manifest,
    ManifestError,
    SignalRule,
    TaskSpec,
    read_manifest,
    write_manifest,
)

REPOSITORY = Path(__file__).parents[2] / "model_repository"
GOOD = json.loads((REPOSITORY / "signature-adapool" / "1" / "manifest.json").read_text())


def broken(**changes: Any) -> dict[str, Any]:
    """The default model's manifest with dotted-path changes (value ... deletes the key)."""
    data = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        *parents, key = dotted.split("__")
        target = data
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is ...:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize("path", sorted(REPOSITORY.glob("*/*/manifest.json")), ids=str)
def test_every_committed_manifest_reads_in_the_current_format(path: Path) -> None:
    manifest = read_manifest(path)
    assert manifest.format == FORMAT and manifest.name == path.parents[1].name
    assert manifest.to_dict() == json.loads(path.read_text())  # nothing lost or added


def test_round_trip(tmp_path: Path) -> None:
    manifest = Manifest.from_dict(GOOD)
    write_manifest(tmp_path / "manifest.json", manifest)
    again = read_manifest(tmp_path / "manifest.json")
    assert again == manifest and again.signal_rule == DEFAULT_RULE
    assert again.pooling.required_tokens == ()  # mean query: no token must be real


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"pooling": ...}, "pooling", "is missing"),
        ({"pooling__method": "median"}, "pooling.method", "must be one of"),
        (
            {"pooling__query": "indices", "pooling__query_indices": []},
            "pooling.query_indices",
            "empty",
        ),
        (
            {"pooling__query": "token", "pooling__query_index": None},
            "pooling.query_index",
            "required",
        ),
        ({"pooling__query_indices": [0, -1]}, "pooling.query_indices", "integers >= 0"),
        ({"input_dim": "16"}, "input_dim", "integer"),
        ({"input_dim": True}, "input_dim", "integer"),
        ({"input_dim": 0}, "input_dim", ">= 1"),
        ({"heads": 3}, "outputs", "needs"),  # the weights output says 2 heads
        ({"inputs__1__dtype": "float32"}, "inputs", "must be"),
        ({"outputs__0__shape": ["batch", 0]}, "outputs[0].shape", "sizes > 0"),
        ({"metrics": [1, 2]}, "metrics", "must be an object"),
        ({"metrics__signal_loss": "low"}, "metrics.signal_loss", "number"),
        ({"metrics__weights__f1": None}, "metrics.weights.f1", "number"),
        ({"sha256__model.onnx": "abc"}, "sha256.model.onnx", "64 hex"),
        ({"sha256": {}}, "sha256", "model.onnx"),
        ({"signal_rule": "weight > 0"}, "signal_rule", "kind and value"),
        ({"signal_rule": {"kind": "share_of_max", "value": 4}}, "signal_rule", "(0, 1]"),
        ({"signal_rule": {"kind": "vibes", "value": 0.5}}, "signal_rule", "unknown"),
        ({"task": {"kind": "classification", "classes": ["yes"]}}, "task.classes", "at least 2"),
        ({"task": {"kind": "regression"}}, "task.num_targets", "is missing"),
        ({"format": 3}, "format", "not one of"),
        ({"precision": "int4"}, "precision", "must be one of"),
    ],
)
def test_each_problem_names_its_field(changes: dict[str, Any], field: str, words: str) -> None:
    with pytest.raises(ManifestError) as caught:
        Manifest.from_dict(broken(**changes))
    assert caught.value.field == field and words in caught.value.problem, str(caught.value)


def test_read_manifest_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    path.write_text("{not json")
    with pytest.raises(ManifestError, match=f"{path}: field '\\(file\\)': is not valid JSON"):
        read_manifest(path)
    path.write_text(json.dumps(broken(input_dim=-1)))
    with pytest.raises(ManifestError, match=f"{path}: field 'input_dim'"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(tmp_path / "missing.json")


def test_format_1_reads_with_its_rule_in_words() -> None:
    old = broken(format=1, task=..., signal_rule=DEFAULT_RULE.definition)
    manifest = Manifest.from_dict(old)
    assert manifest.signal_rule == DEFAULT_RULE and manifest.task == TaskSpec("pool")
    assert manifest.to_dict()["format"] == FORMAT
    with pytest.raises(ManifestError, match="unknown signal rule"):
        Manifest.from_dict(broken(format=1, task=..., signal_rule="a rule nobody wrote"))


def test_a_classification_task_needs_its_logits_output() -> None:
    task = {"kind": "classification", "classes": ["other", "nine"]}
    with pytest.raises(ManifestError, match="logits"):
        Manifest.from_dict(broken(task=task))
    outputs = [*GOOD["outputs"], {"name": "logits", "dtype": "float32", "shape": ["batch", 2]}]
    manifest = Manifest.from_dict(broken(task=task, outputs=outputs))
    assert manifest.task.output == "logits" and manifest.task.classes == ("other", "nine")
    assert manifest.output_names == ("pooled", "weights", "logits")


def test_a_rule_is_data_with_one_definition() -> None:
    rule = SignalRule("share_of_max", 0.5)
    assert Manifest.from_dict(broken(signal_rule=rule.to_dict())).signal_rule == rule


def test_contributions_need_their_bias_and_round_trip() -> None:
    """The committed classifier exports contributions: its manifest carries the constant bias;
    without it the manifest is refused, naming the field."""
    path = REPOSITORY / "digits-bags-adapool" / "1" / "manifest.json"
    data = json.loads(path.read_text())
    manifest = Manifest.from_dict(data)
    assert len(manifest.contribution_bias) == 2 and manifest.pooling.values == "inputs"
    assert manifest.signal_rule.kind == "largest_gap"
    del data["contribution_bias"]
    with pytest.raises(ManifestError, match="contribution_bias"):
        Manifest.from_dict(data)
