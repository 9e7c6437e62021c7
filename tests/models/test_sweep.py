"""The reproduction sweep machinery on the tiny preset (seconds), not the full run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from models import sweep
from models.config import ConfigError, from_dict
from models.report import summarise, verdicts

ROOT = Path(__file__).parents[2]
PRESETS = sorted((ROOT / "configs" / "sweep").glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.name for p in PRESETS])
def test_committed_presets_load(path: Path) -> None:
    preset = sweep.load_preset(path)
    assert preset.sweep.name == path.stem
    runs = sweep.expand(preset, Path("runs"))
    assert len(runs) == len(preset.sweep.methods) * len(preset.sweep.ks) * len(preset.sweep.seeds)


def test_expand_sets_method_k_and_seeds() -> None:
    preset = sweep.load_preset(ROOT / "configs" / "sweep" / "tiny.toml")
    runs = {r.out.name: r for r in sweep.expand(preset, Path("r"))}
    run = runs["adapool-mean-k32-seed1"]
    assert run.config.model.pooling.query == "mean" and run.config.data.k == 32
    assert run.config.train.seed == 1 and run.config.data.seed == preset.base.data.seed + 1
    assert runs["adapool-ego-k2-seed0"].config.model.pooling.use_residual
    # The same data for every method at one (k, seed): methods differ only in pooling.
    assert runs["avg-k2-seed0"].config.data == runs["cls-k2-seed0"].config.data


def test_unknown_method_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(sweep.Preset, {"sweep": {"methods": ["attention"]}})


def test_tiny_sweep_writes_results_and_skips_finished_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = str(ROOT / "configs" / "sweep" / "tiny.toml")
    args = [
        "--preset",
        preset,
        "--runs",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "res"),
    ]
    assert sweep.main(args) == 0
    res = tmp_path / "res"
    names = {p.name for p in res.iterdir()}
    assert names == {
        "meta.json",
        "runs.csv",
        "curves.csv",
        "summary.csv",
        "summary.md",
        "signal_loss_vs_snr.png",
    }
    with (res / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert list(summary[0])[:8] == [
        "method",
        "k",
        "snr",
        "seeds",
        "signal_loss_mean",
        "signal_loss_std",
        "signal_f1_mean",
        "signal_mass_mean",
    ]
    assert len(summary) == 5 * 2 and all(row["seeds"] == "2" for row in summary)
    with (res / "curves.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 20 * 3  # epochs 0, 1, 2 per run
    meta = json.loads((res / "meta.json").read_text())
    assert meta["command"].startswith("python -m models.sweep --preset")
    assert meta["runs"] == 20
    table = (res / "summary.md").read_text()
    assert "| 2 | 1/16 |" in table and "| 32 | 1 |" in table and "AdaPool (ego) lowest?" in table
    assert (res / "signal_loss_vs_snr.png").read_bytes()[:4] == b"\x89PNG"

    # A second call trains nothing: every run already has its metrics.
    capsys.readouterr()
    assert sweep.main(args) == 0
    assert "20 runs, 20 done" in capsys.readouterr().out


def test_report_only_refuses_unfinished_runs(tmp_path: Path) -> None:
    preset = str(ROOT / "configs" / "sweep" / "tiny.toml")
    assert sweep.main(["--preset", preset, "--runs", str(tmp_path), "--report-only"]) == 1


def test_summary_statistics_and_verdicts() -> None:
    rows = [
        {
            "method": m,
            "k": 4,
            "snr": 0.125,
            "seed": s,
            "signal_loss": loss,
            "signal_f1": 0.1,
            "signal_f1_chance": 0.2,
            "signal_mass": 0.1,
            "signal_mass_chance": 0.125,
        }
        for m, s, loss in [
            ("adapool-ego", 0, 1.0),
            ("adapool-ego", 1, 3.0),
            ("avg", 0, 8.0),
            ("avg", 1, 8.0),
            ("max", 0, 5.0),
            ("max", 1, 7.0),
        ]
    ]
    summary = {s["method"]: s for s in summarise(rows)}
    assert summary["adapool-ego"]["signal_loss_mean"] == 2.0
    assert summary["adapool-ego"]["signal_loss_std"] == pytest.approx(2**0.5)
    assert verdicts(list(summary.values())) == {4: (True, "max", 3.0)}
