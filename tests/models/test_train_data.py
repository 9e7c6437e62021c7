"""Training on a data set file: both tasks, the CLI and TOML forms, resume, seeded splits,
the model's own signal rule, and refusals."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models import checkpoint
from models.data import ragged, write_dataset
from models.train import main

D = 8
PATTERN = np.array([2.0, -2.0, 2.0, -2.0], dtype=np.float32)


def marked_sets(count: int, seed: int) -> dict[str, Any]:
    """Sets of 4-12 tokens; a positive set marks 1-3 of them with a pattern in 4 features.

    Targets (regression) are the mean of a set's marked tokens, or of all for a negative set.
    """
    rng = np.random.default_rng(seed)
    pieces, signals, labels, targets = [], [], [], []
    for _ in range(count):
        n = int(rng.integers(4, 13))
        x = rng.standard_normal((n, D)).astype(np.float32)
        label = int(rng.random() < 0.5)
        signal = np.zeros(n, dtype=bool)
        if label:
            signal[rng.choice(n, size=int(rng.integers(1, 4)), replace=False)] = True
            x[signal, :4] = PATTERN + 0.3 * rng.standard_normal((int(signal.sum()), 4))
        pieces.append(x)
        signals.append(signal)
        labels.append(label)
        targets.append(x[signal].mean(axis=0) if label else x.mean(axis=0))
    tokens, offsets = ragged(pieces)
    return {
        "tokens": tokens,
        "offsets": offsets,
        "labels": np.array(labels),
        "classes": np.array(["plain", "marked"]),
        "signal_mask": np.concatenate(signals),
        "targets": np.stack(targets),
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("data")
    arrays = marked_sets(800, seed=0)
    targets = arrays.pop("targets")
    labels, classes = arrays.pop("labels"), arrays.pop("classes")
    return {
        "classification": write_dataset(
            root / "sets.npz", labels=labels, classes=classes, **arrays
        ),
        "regression": write_dataset(root / "sets-regression", targets=targets, **arrays),
    }


def run(args: list[str]) -> int:
    return main([*args, "--no-progress"])


def test_classification_from_the_cli_alone(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--data and --task are enough: 8 epochs lift accuracy far above the majority class,
    and the weights find the marked tokens (measured: accuracy ~0.99, instance AUC ~0.99)."""
    out = tmp_path / "run"
    args = ["--data", str(data["classification"]), "--task", "classification"]
    assert run([*args, "--epochs", "8", "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "classification" and m["classes"] == ["plain", "marked"]
    assert (m["num_train"], m["num_val"], m["num_test"]) == (640, 80, 80)  # seeded 80/10/10
    assert m["accuracy"] >= 0.9 > m["accuracy_majority_class"] + 0.2
    assert m["auc"] >= 0.95 and 0 <= m["macro_f1"] <= 1
    assert m["values"] == "inputs"  # the default model for your own data
    rule = m["signal_rule"]
    assert rule["chosen_on"] == "validation" and rule["candidates"] >= 7
    assert rule["validation_mean_f1"] >= rule["project_rule_validation_mean_f1"]
    w = m["weights"]
    assert w["rule"] == rule["definition"] and w["instance_auc"] >= 0.9
    assert w["f1"] > w["f1_chance"] and w["sets"] == int(np.sum(m["confusion"][1]))
    assert m["bands"] and all("auc" in b and "f1_chance" in b["weights"] for b in m["bands"])
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "instance AUC" in printed
    config = checkpoint.load_config(out)
    assert config.model.head.task == "classification" and config.model.head.outputs == 2
    assert config.model.input_dim == D and config.model.input_projection


def test_regression_from_a_toml_config(data: dict[str, Path], tmp_path: Path) -> None:
    toml = tmp_path / "r.toml"
    toml.write_text(
        f"[model]\ninput_dim = {D}\ndim = 16\ninput_projection = true\ndepth = 1\n"
        "num_heads = 2\nmlp_dim = 32\ndropout = 0.0\nquery_embedding = false\n"
        '[model.pooling]\nmethod = "adapool"\nquery = "mean"\n'
        f'[data]\ntask = "regression"\npath = "{data["regression"]}"\n'
        "[train]\nepochs = 4\nbatch_size = 32\nlr = 3e-3\n"
    )
    out = tmp_path / "run"
    assert run(["--config", str(toml), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["task"] == "regression" and m["r2"] > 0.2
    assert m["mse"] < m["mse_predict_train_mean"] and "mse_mean_of_tokens" in m
    assert m["bands"] and "mse" in m["bands"][0]
    assert checkpoint.load_config(out).model.head.outputs == D


def test_resume_continues_a_file_run_exactly(data: dict[str, Path], tmp_path: Path) -> None:
    base = ["--data", str(data["classification"]), "--task", "classification"]
    assert run([*base, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    assert run([*base, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert run([*base, "--epochs", "3", "--resume", "--out", str(tmp_path / "split")]) == 0

    def history(name: str) -> list[dict[str, float]]:
        rows = json.loads((tmp_path / name / "history.json").read_text())
        return [{k: v for k, v in h.items() if "seconds" not in k} for h in rows]

    assert history("split") == history("full")
    a, _ = checkpoint.load_model(tmp_path / "full")
    b, _ = checkpoint.load_model(tmp_path / "split")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name


def test_the_files_own_split_is_used(tmp_path: Path) -> None:
    arrays = marked_sets(60, seed=1)
    arrays.pop("targets")
    split = np.r_[np.zeros(40, int), np.ones(5, int), np.full(15, 2)]
    path = write_dataset(tmp_path / "s.npz", split=split, **arrays)
    out = tmp_path / "run"
    assert (
        run(["--data", str(path), "--task", "classification", "--epochs", "1", "--out", str(out)])
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert (m["num_train"], m["num_val"], m["num_test"]) == (40, 5, 15)


def test_without_signal_masks_the_project_rule_is_kept(tmp_path: Path) -> None:
    arrays = marked_sets(60, seed=2)
    del arrays["targets"], arrays["signal_mask"]
    path = write_dataset(tmp_path / "n.npz", **arrays)
    out = tmp_path / "run"
    assert (
        run(["--data", str(path), "--task", "classification", "--epochs", "1", "--out", str(out)])
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["signal_rule"]["definition"] == "head-mean weight >= max weight / 4"
    assert m["signal_rule"]["chosen_on"].startswith("default") and "weights" not in m


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "regression"], "data.task is 'regression', but .* holds labels"),
        (["--task", "classification", "--method", "avg", "--values", "inputs"], "--values applies"),
        ([], "give --config FILE, or --data PATH with --task"),
    ],
)
def test_refusals(
    data: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    path = ["--data", str(data["classification"])] if args else []
    assert run([*path, *args, "--out", str(tmp_path / "x")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "x").exists()


def test_a_bad_file_is_refused_naming_the_array(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arrays = marked_sets(20, seed=3)
    arrays.pop("targets")
    arrays["labels"][3] = 5
    np.savez(tmp_path / "bad.npz", **arrays)
    args = ["--data", str(tmp_path / "bad.npz"), "--task", "classification"]
    assert run([*args, "--out", str(tmp_path / "x")]) == 2
    assert "labels: set 3 has label 5, out of range for 2 classes" in capsys.readouterr().err


def test_the_input_dimension_must_match(
    data: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "d.toml"
    toml.write_text(
        f'[data]\ntask = "classification"\npath = "{data["classification"]}"\n[model]\ndepth = 1\n'
    )
    assert run(["--config", str(toml), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert (
        f"model.input_dim (16) differs from the tokens' dimension in {data['classification']}"
        in err
    )
    assert f"(D = {D}): set model.input_dim = {D} and model.input_projection = true" in err
