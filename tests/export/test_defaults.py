"""make models: train the spec's runs (tiny preset here) and export them; rerunning is a no-op."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.defaults import main
from export.repository import find_versions
from modelrepo import read_manifest
from models.checkpoint import BEST_FILE

ROOT = Path(__file__).parents[2]


def write_spec(tmp_path: Path) -> Path:
    spec = tmp_path / "defaults.toml"
    spec.write_text(
        f'preset = "{ROOT / "configs" / "sweep" / "tiny.toml"}"\n'
        f'k = 2\nseed = 0\nversion = 1\nrepository = "{tmp_path / "repo"}"\n'
        '[models]\ntiny-adapool-ego = "adapool-ego"\n'
    )
    return spec


def test_defaults_train_export_and_are_idempotent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = write_spec(tmp_path)
    args = ["--spec", str(spec), "--runs", str(tmp_path / "runs")]
    assert main(args) == 0
    assert "tiny-adapool-ego/1: exported" in capsys.readouterr().out
    versions = find_versions(tmp_path / "repo")
    assert [(v.name, v.version) for v in versions] == [("tiny-adapool-ego", 1)]
    manifest = read_manifest(versions[0].manifest_file)
    assert manifest.metrics is not None and manifest.metrics.k == 2
    assert manifest.provenance.command.startswith("python -m export.defaults")

    assert main(args) == 0
    assert "tiny-adapool-ego/1: up to date" in capsys.readouterr().out

    # A different checkpoint under the same version is an error, not a silent overwrite.
    (tmp_path / "runs" / "adapool-ego-k2-seed0" / BEST_FILE).write_bytes(b"other")
    assert main(args) == 1
    assert "holds another checkpoint" in capsys.readouterr().err


def test_unknown_method_in_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[models]\nx = "attention"\n')
    assert main(["--spec", str(spec)]) == 2
    assert "unknown methods ['attention']" in capsys.readouterr().err
