"""Shared fixtures: every pooling variant, as a small model config."""

from __future__ import annotations

import pytest
import torch

from models import ModelConfig, PoolingConfig

# Each variant the package offers: (id, pooling config).
VARIANTS: dict[str, PoolingConfig] = {
    "avg": PoolingConfig(method="avg"),
    "max": PoolingConfig(method="max"),
    "cls": PoolingConfig(method="cls"),
    "adapool-token": PoolingConfig(method="adapool", query="token", query_index=0),
    "adapool-mean": PoolingConfig(method="adapool", query="mean"),
    "adapool-indices": PoolingConfig(method="adapool", query="indices", query_indices=(0, 2)),
    "adapool-learned": PoolingConfig(method="adapool", query="learned"),
    "adapool-faithful": PoolingConfig(method="adapool", query="mean", values="inputs"),
}


def small_config(pooling: PoolingConfig, **overrides: object) -> ModelConfig:
    """A two-layer width-16 model, fast enough for unit tests; dropout off unless overridden."""
    params: dict[str, object] = dict(
        input_dim=16, dim=16, depth=2, num_heads=4, mlp_dim=32, dropout=0.0, pooling=pooling
    )
    params.update(overrides)
    return ModelConfig(**params)  # type: ignore[arg-type]


@pytest.fixture(params=list(VARIANTS), ids=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    """x (3, 10, 16) and a ragged mask: rows with 10, 7 and 4 real tokens."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 10, 16, generator=g)
    lengths = torch.tensor([10, 7, 4])
    mask = torch.arange(10)[None, :] < lengths[:, None]
    return x, mask
