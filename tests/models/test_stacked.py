"""The stacked trainer (models.stacked): several models in one vmapped pass, each as if alone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from models import sweep
from models.config import ConfigError
from models.stacked import check_stackable, train_stacked
from models.train import train

ROOT = Path(__file__).parents[2]
TINY = ROOT / "configs" / "sweep" / "tiny.toml"


def tiny_preset(dropout: float = 0.0) -> sweep.Preset:
    preset = sweep.load_preset(TINY)
    model = dataclasses.replace(preset.base.model, dropout=dropout)
    return dataclasses.replace(preset, base=dataclasses.replace(preset.base, model=model))


@pytest.mark.parametrize("method", ["adapool-ego", "cls"])
def test_two_stacked_models_match_two_separate_runs(tmp_path: Path, method: str) -> None:
    """Without dropout, a stack of two (different k, seed and data) ends where two runs of
    their own end: the same weights, losses and test metrics, to float rounding."""
    preset = tiny_preset()
    runs = [
        sweep.make_run(preset, method, 2, 0, tmp_path / "alone"),
        sweep.make_run(preset, method, 32, 1, tmp_path / "alone"),
    ]
    alone = [train(r.config, r.out, progress=False) for r in runs]
    stacked_dirs = [tmp_path / "stacked" / r.out.name for r in runs]
    stacked = train_stacked([r.config for r in runs], stacked_dirs, progress=False)
    assert alone[0]["signal_loss"] != pytest.approx(alone[1]["signal_loss"], rel=1e-3)
    for a, s, run, out in zip(alone, stacked, runs, stacked_dirs, strict=True):
        assert s["stacked"] == 2 and "stacked" not in a
        for key in ("initial_val_loss", "best_val_loss", "signal_loss"):
            assert s[key] == pytest.approx(a[key], rel=1e-4), key
        assert s["best_epoch"] == a["best_epoch"] and s["epochs"] == a["epochs"]
        assert s["weights"]["signal_mass"] == pytest.approx(a["weights"]["signal_mass"], 1e-4)
        ours, theirs = (
            load_file(str(out / "model.safetensors")),
            load_file(str(run.out / "model.safetensors")),
        )
        assert ours.keys() == theirs.keys()
        for name in ours:
            np.testing.assert_allclose(ours[name], theirs[name], atol=1e-4, err_msg=name)
        history = json.loads((out / "history.json").read_text())
        assert [h["epoch"] for h in history] == [1, 2]
        assert (out / "config.json").read_text() == (run.out / "config.json").read_text()


def test_dropout_masks_differ_between_stacked_models(tmp_path: Path) -> None:
    """With dropout, each model draws its own masks (vmap randomness 'different'): two copies
    of one run in one stack diverge, while their initial validation losses are equal."""
    preset = tiny_preset(dropout=0.3)
    run = sweep.make_run(preset, "avg", 2, 0, tmp_path)
    metrics = train_stacked([run.config, run.config], [tmp_path / "a", tmp_path / "b"], False)
    assert metrics[0]["initial_val_loss"] == metrics[1]["initial_val_loss"]
    assert metrics[0]["best_val_loss"] != metrics[1]["best_val_loss"]


def test_only_runs_of_one_architecture_stack(tmp_path: Path) -> None:
    preset = tiny_preset()
    ego = sweep.make_run(preset, "adapool-ego", 2, 0, tmp_path).config
    cls = sweep.make_run(preset, "cls", 2, 0, tmp_path).config
    with pytest.raises(ConfigError, match="same model"):
        check_stackable([ego, cls])
    faster = dataclasses.replace(ego, train=dataclasses.replace(ego.train, lr=1.0))
    with pytest.raises(ConfigError, match="training settings"):
        check_stackable([ego, faster])
    longer = dataclasses.replace(ego, data=dataclasses.replace(ego.data, num_vectors=64))
    with pytest.raises(ConfigError, match="num_vectors"):
        check_stackable([ego, longer])
    check_stackable([ego, sweep.make_run(preset, "adapool-ego", 32, 1, tmp_path).config])


def test_stack_groups_share_a_method_and_respect_the_size() -> None:
    runs = sweep.expand(tiny_preset(), Path("r"))
    groups = sweep.stack_groups(runs, 3)
    assert sorted(r.out.name for g in groups for r in g) == sorted(r.out.name for r in runs)
    assert all(len({r.method for r in g}) == 1 and 1 <= len(g) <= 3 for g in groups)
    # tiny: 2 ks x 2 seeds = 4 runs per method -> a group of 3 and one of 1 each
    assert sorted(len(g) for g in groups) == [1] * 5 + [3] * 5


def test_sweep_with_stack_writes_the_same_results(tmp_path: Path) -> None:
    """``--stack`` trains a two-method sweep in stacks and writes the usual results folder."""
    text = TINY.read_text().replace(
        'methods = ["avg", "max", "cls", "adapool-ego", "adapool-mean"]',
        'methods = ["avg", "adapool-ego"]',
    )
    preset = tmp_path / "tiny.toml"
    preset.write_text(text)
    args = ["--preset", str(preset), "--runs", str(tmp_path / "runs")]
    assert sweep.main([*args, "--results", str(tmp_path / "res"), "--stack", "4"]) == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 8
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["stacked"] == 4 and np.isfinite(metrics["signal_loss"])
    assert (tmp_path / "res" / "runs.csv").exists()
