"""Configs: strict loading, type checks, validation, round trips."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import (
    ConfigError,
    ModelConfig,
    PoolingConfig,
    RunConfig,
    from_dict,
    load_run_config,
    to_dict,
)
from models.tasks import make_data

ROOT = Path(__file__).parents[2]
CONFIGS = sorted([*ROOT.glob("configs/knn_centroid_*.toml"), *ROOT.glob("configs/bench/*.toml")])


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_committed_configs_load(path: Path) -> None:
    config = load_run_config(path)
    assert isinstance(config, RunConfig)
    assert config.model.input_dim == config.data.dim


def test_paper_config_is_the_public_attenuator() -> None:
    config = load_run_config(Path(__file__).parents[2] / "configs" / "knn_centroid_paper.toml")
    m, t = config.model, config.train
    assert (m.depth, m.num_heads, m.dim, m.mlp_dim, m.dropout) == (12, 8, 16, 64, 0.1)
    assert (t.batch_size, t.lr, t.epochs) == (750, 5e-4, 100)
    assert config.data.num_train + config.data.num_val + config.data.num_test == 1_000_000
    assert m.pooling.method == "adapool" and m.pooling.query == "token" and m.pooling.use_residual


def test_misspelled_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[model]\ndepht = 3\n")
    with pytest.raises(
        ConfigError, match=r"unknown config key 'model.depht'; did you mean 'depth'"
    ):
        load_run_config(path)


def test_unknown_table_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'optimizer'"):
        from_dict(RunConfig, {"optimizer": {"lr": 1.0}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"model": {"depth": "2"}}, "'model.depth' must be an integer"),
        ({"model": {"depth": 2.5}}, "'model.depth' must be an integer"),
        ({"model": {"final_norm": 1}}, "'model.final_norm' must be true or false"),
        ({"model": {"pooling": {"method": "attention"}}}, "'model.pooling.method' must be one of"),
        (
            {"model": {"pooling": {"query_indices": [0, "a"]}}},
            r"'model.pooling.query_indices\[1\]'",
        ),
        ({"model": {"pooling": "avg"}}, "model.pooling must be a table"),
        ({"train": {"lr": "fast"}}, "'train.lr' must be a number"),
    ],
)
def test_wrong_types_are_errors(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(RunConfig, data)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dim": 16, "num_heads": 5}, "divisible"),
        ({"input_dim": 8, "dim": 16}, "input_projection"),
        ({"depth": 0, "pooling": PoolingConfig(method="cls")}, "depth >= 1"),
        ({"dropout": 1.0}, "dropout"),
        ({"output_dim": 0}, "output_dim"),
    ],
)
def test_invalid_model_configs_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "max", "residual": True}, "residual is only used"),
        ({"query": "indices"}, "must not be empty"),
        ({"query": "mean", "query_indices": (1,)}, "only used with query = 'indices'"),
        ({"query_index": -1}, "query_index"),
    ],
)
def test_invalid_pooling_configs_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        PoolingConfig(**kwargs)  # type: ignore[arg-type]


def test_run_config_checks_dims_agree() -> None:
    with pytest.raises(ConfigError, match=r"must equal data\.dim"):
        from_dict(
            RunConfig, {"model": {"input_dim": 8, "dim": 8, "num_heads": 4}, "data": {"dim": 16}}
        )


def test_knn_centroid_dims_are_bounded_but_an_untrained_run_is_not() -> None:
    with pytest.raises(ConfigError, match=r"data\.dim must be in \[1, 18\] for knn_centroid"):
        from_dict(RunConfig, {"model": {"input_dim": 384, "dim": 384}, "data": {"dim": 384}})
    config = from_dict(
        RunConfig, {"model": {"input_dim": 384, "dim": 384}, "data": {"task": "none", "dim": 384}}
    )
    with pytest.raises(ConfigError, match="has no data to train on"):
        make_data(config.data)


def test_round_trip_through_a_dict() -> None:
    config = from_dict(
        RunConfig,
        {
            "model": {"depth": 3, "pooling": {"query": "indices", "query_indices": [0, 5]}},
            "train": {"lr": 1},
        },
    )
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.model.pooling.query_indices == (0, 5)
    assert from_dict(RunConfig, to_dict(config)) == config


def test_configs_are_frozen() -> None:
    with pytest.raises(AttributeError):
        ModelConfig().depth = 3  # type: ignore[misc]
