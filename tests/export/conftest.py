"""Fixtures: untrained run directories for every pooling variant, exported once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from export.cli import export_run
from models import ModelConfig, PoolingConfig, RunConfig, build_model
from models.checkpoint import BEST_FILE, save_config, save_model
from models.config import DataConfig, HeadConfig

VARIANTS = {
    "avg": PoolingConfig(method="avg"),
    "max": PoolingConfig(method="max"),
    "cls": PoolingConfig(method="cls"),
    "adapool-ego": PoolingConfig(method="adapool", query="token"),
    "adapool-mean": PoolingConfig(method="adapool", query="mean"),
}
# Task-head models: a faithful classifier (it exports contributions) and a plain regressor.
HEADS = {
    "classifier": (
        PoolingConfig(method="adapool", query="mean", values="inputs"),
        HeadConfig("classification", 3),
    ),
    "regressor": (PoolingConfig(method="adapool", query="learned"), HeadConfig("regression", 2)),
}


def make_run_dir(
    path: Path, pooling: PoolingConfig, seed: int = 0, head: HeadConfig | None = None
) -> Path:
    """A run directory as models.train writes it, with random (untrained) weights."""
    if head is None:
        data = DataConfig(k=8, num_train=64, num_val=64, num_test=64)
        head = HeadConfig()
    else:  # the data file is not read by export
        data = DataConfig(task=head.task, path="unused.npz")  # type: ignore[arg-type]
    config = RunConfig(
        model=ModelConfig(depth=2, num_heads=4, mlp_dim=32, pooling=pooling, head=head),
        data=data,
    )
    torch.manual_seed(seed)
    path.mkdir(parents=True)
    save_config(path, config)
    save_model(build_model(config.model), path / BEST_FILE)
    return path


@pytest.fixture(scope="session")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding version 1 of every variant (export takes seconds per model)."""
    root = tmp_path_factory.mktemp("export")
    repo = root / "repo"
    repo.mkdir()
    for name, pooling in VARIANTS.items():
        run = make_run_dir(root / "runs" / name, pooling)
        export_run(run, name, 1, repo, command="test fixture")
    for name, (pooling, head) in HEADS.items():
        run = make_run_dir(root / "runs" / name, pooling, head=head)
        export_run(run, name, 1, repo, command="test fixture")
    return repo
