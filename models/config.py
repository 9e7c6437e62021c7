"""Frozen, validated configuration dataclasses and a strict TOML/dict loader.

Every option is a typed dataclass field. Unknown or misspelled keys are errors (with a suggestion),
values are type-checked, and each dataclass validates itself on creation, so a config that loads is
a config that builds.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

PoolingMethod = Literal["avg", "max", "cls", "adapool"]
QueryMode = Literal["token", "mean", "indices", "learned"]
ValueSource = Literal["encoder", "inputs"]
HeadTask = Literal["none", "classification", "regression"]
DataTask = Literal["knn_centroid", "signature", "classification", "regression", "none"]
POOLING_METHODS: tuple[str, ...] = get_args(PoolingMethod)
QUERY_MODES: tuple[str, ...] = get_args(QueryMode)
FILE_TASKS = ("classification", "regression")  # data read from a file (models.data)


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the offending key."""


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class PoolingConfig:
    """How the encoder outputs are pooled into one vector.

    Attributes:
        method: ``avg``, ``max``, ``cls`` (a learned class token) or ``adapool`` (single-query
            cross-attention).
        query: AdaPool only. ``token``: the output of token ``query_index`` (the "ego" token);
            ``mean``: the mean of the real tokens' outputs; ``indices``: the mean of the outputs at
            ``query_indices``; ``learned``: a learned query vector.
        query_index: the ego token for ``query = "token"``.
        query_indices: the tokens averaged for ``query = "indices"``.
        residual: add the query vector to the pooled result. ``None`` follows the public code:
            on for ``token``, off for every other query mode.
        values: AdaPool only. ``encoder``: values from the encoder outputs (the paper);
            ``inputs``: values from the un-mixed input tokens (queries and keys still from the
            encoder outputs), so the pooled vector is exactly a weighted sum of per-token
            values and token i's share is w_i (the "faithful" variant; no residual).
    """

    method: PoolingMethod = "adapool"
    query: QueryMode = "token"
    query_index: int = 0
    query_indices: tuple[int, ...] = ()
    residual: bool | None = None
    values: ValueSource = "encoder"

    def __post_init__(self) -> None:
        require(self.method in POOLING_METHODS, f"pooling.method must be one of {POOLING_METHODS}")
        require(self.query in QUERY_MODES, f"pooling.query must be one of {QUERY_MODES}")
        require(self.query_index >= 0, "pooling.query_index must be >= 0")
        if self.query == "indices":
            require(len(self.query_indices) > 0, "pooling.query_indices must not be empty")
            require(min(self.query_indices) >= 0, "pooling.query_indices must be >= 0")
        else:
            require(
                not self.query_indices, "pooling.query_indices is only used with query = 'indices'"
            )
        require(self.values in ("encoder", "inputs"), "pooling.values must be encoder or inputs")
        if self.method != "adapool":
            require(self.residual is None, "pooling.residual is only used with method = 'adapool'")
            require(self.values == "encoder", "pooling.values is only used with method = 'adapool'")
        if self.values == "inputs":
            require(
                not self.use_residual,
                "pooling.values = 'inputs' needs pooling.residual = false (the residual adds "
                "the query, a mixture of tokens, to the pooled vector)",
            )

    @property
    def use_residual(self) -> bool:
        """Whether AdaPool adds its query vector back to the pooled result."""
        return self.query == "token" if self.residual is None else self.residual


@dataclass(frozen=True)
class HeadConfig:
    """What the model predicts from the pooled vector.

    Attributes:
        task: ``none`` (the pooled vector is the prediction, as in the centroid tasks),
            ``classification`` (a linear layer to ``outputs`` logits, cross-entropy) or
            ``regression`` (a linear layer to ``outputs`` values, MSE).
        outputs: classes C or targets T (0 for ``none``).
    """

    task: HeadTask = "none"
    outputs: int = 0

    def __post_init__(self) -> None:
        require(
            self.task in get_args(HeadTask), f"model.head.task must be one of {get_args(HeadTask)}"
        )
        if self.task == "none":
            require(self.outputs == 0, "model.head.outputs is only used with a task head")
        elif self.task == "classification":
            require(self.outputs >= 2, "model.head.outputs must be >= 2 classes")
        else:
            require(self.outputs >= 1, "model.head.outputs must be >= 1 target")


@dataclass(frozen=True)
class ModelConfig:
    """The "Attenuator" of the public code: a pre-LN transformer encoder followed by a global pool.

    Defaults are the paper's kNN-Centroid model (12 layers, 8 heads, width 16, FF 64, dropout 0.1).

    Attributes:
        input_dim: feature size of the input tokens.
        dim: transformer width. Must equal ``input_dim`` unless ``input_projection`` is on.
        output_dim: size of the returned vector; ``None`` means ``dim`` (then no output projection).
        depth: number of encoder layers (0 pools the inputs directly).
        num_heads: heads of every attention, the pooling attention included.
        mlp_dim: hidden size of the GELU feed-forward.
        dropout: dropout of the feed-forward (the only dropout, as in the public code).
        qkv_bias: biases in the attention projections (off in the public code).
        input_projection: a linear map from ``input_dim`` to ``dim`` before the encoder.
        query_embedding: add a learned 2-entry embedding: entry 0 to token 0, entry 1 to all others,
            so the model can tell the ego token apart.
        final_norm: a LayerNorm on the encoder outputs before pooling.
        pooling: the pooling method and its options.
        head: the task head on the pooled vector (none: the pooled vector is the output).
    """

    input_dim: int = 16
    dim: int = 16
    output_dim: int | None = None
    depth: int = 12
    num_heads: int = 8
    mlp_dim: int = 64
    dropout: float = 0.1
    qkv_bias: bool = False
    input_projection: bool = False
    query_embedding: bool = True
    final_norm: bool = False
    pooling: PoolingConfig = field(default_factory=PoolingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)

    def __post_init__(self) -> None:
        require(self.input_dim > 0, "model.input_dim must be > 0")
        require(self.dim > 0, "model.dim must be > 0")
        require(self.output_dim is None or self.output_dim > 0, "model.output_dim must be > 0")
        require(self.depth >= 0, "model.depth must be >= 0")
        require(self.num_heads > 0, "model.num_heads must be > 0")
        require(
            self.dim % self.num_heads == 0,
            f"model.dim ({self.dim}) must be divisible by model.num_heads ({self.num_heads})",
        )
        require(self.mlp_dim > 0, "model.mlp_dim must be > 0")
        require(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        require(
            self.input_projection or self.input_dim == self.dim,
            f"model.input_dim ({self.input_dim}) differs from model.dim ({self.dim}): "
            "set model.input_projection = true",
        )
        require(
            self.pooling.method != "cls" or self.depth > 0,
            "pooling.method = 'cls' needs model.depth >= 1 "
            "(the class token is read after the encoder)",
        )

    @property
    def out_dim(self) -> int:
        """Size of the pooled vector the model returns."""
        return self.dim if self.output_dim is None else self.output_dim

    @property
    def num_outputs(self) -> int:
        """Size of the model's prediction: the head's outputs, or the pooled vector's size."""
        return self.out_dim if self.head.task == "none" else self.head.outputs

    @property
    def pooling_heads(self) -> int:
        """Rows in the weights output: one for avg and max, ``num_heads`` for cls and adapool."""
        return 1 if self.pooling.method in ("avg", "max") else self.num_heads


@dataclass(frozen=True)
class DataConfig:
    """The training data: a synthetic task and its split sizes, or a data set file.

    Attributes:
        task: ``knn_centroid`` (the paper's benchmark, one k per data set); ``signature``
            (signal tokens carry a learnable pattern, the signal share varies per sample over the
            whole SNR range: ``models.data.signature``); ``classification`` or ``regression``
            (your own token sets from ``path``, in the format of ``models.data.sets``); or
            ``none`` for a run that is only its seeded random initialisation (benchmarks and
            profiling of shapes no task has, such as ``make bench``'s 384-dimensional model);
            ``models.train`` refuses ``none``.
        path: the data set (``.npz`` file or folder of ``.npy`` files) of the file tasks.
        snr_band_edges: file tasks with a signal_mask: the SNR band edges (increasing, last
            1.0) over which the weights' quality is reported; each band is [edge_i, edge_i+1),
            the last closed. Empty: the project's grid, log2(k/n) rounded (1/128 ... 1).
        k: kNN-Centroid's signal tokens per sample (SNR = k / num_vectors; k = num_vectors means
            all others). Unused by ``signature``, where k varies per sample.
        num_vectors: tokens per sample, N (``signature``: the most tokens a sample has).
        min_vectors: ``signature`` only: the fewest real tokens a sample has.
        signature_dims, signature_noise: ``signature`` only: how many features carry the
            pattern, and the noise on it.
        dim: token dimension, D (must equal ``model.input_dim``; file tasks: unused, the file's
            D must equal ``model.input_dim``).
        num_train, num_val, num_test: samples per split; each split has its own generator seed
            derived from ``seed``, so changing one split's size leaves the others unchanged.
            Unused by the file tasks (the file's ``split`` array, or a seeded 80/10/10 split).
        seed: the data seed (file tasks: the seed of the 80/10/10 split when the file has no
            ``split``).
    """

    task: DataTask = "knn_centroid"
    path: str = ""
    snr_band_edges: tuple[float, ...] = ()
    k: int = 8
    num_vectors: int = 128
    min_vectors: int = 32
    signature_dims: int = 4
    signature_noise: float = 0.25
    dim: int = 16
    num_train: int = 50_000
    num_val: int = 5_000
    num_test: int = 10_000
    seed: int = 42

    def __post_init__(self) -> None:
        require(self.num_vectors >= 2, "data.num_vectors must be >= 2")
        require(1 <= self.k <= self.num_vectors, f"data.k must be in [1, {self.num_vectors}]")
        if self.task == "knn_centroid":  # the generator draws 18 columns and keeps `dim`
            require(1 <= self.dim <= 18, "data.dim must be in [1, 18] for knn_centroid")
        if self.task == "signature":
            require(
                1 <= self.min_vectors <= self.num_vectors,
                f"data.min_vectors must be in [1, {self.num_vectors}]",
            )
            require(
                1 <= self.signature_dims <= self.dim,
                f"data.signature_dims must be in [1, {self.dim}]",
            )
            require(self.signature_noise >= 0, "data.signature_noise must be >= 0")
        require(self.dim >= 1, "data.dim must be >= 1")
        if self.task in FILE_TASKS:
            require(bool(self.path), f"data.path: task {self.task!r} reads a data set file")
        else:
            require(not self.path, f"data.path is only used by the tasks {FILE_TASKS}")
        edges = self.snr_band_edges
        if edges:
            require(
                len(edges) >= 2
                and all(a < b for a, b in itertools.pairwise(edges))
                and edges[0] > 0
                and edges[-1] == 1.0,
                "data.snr_band_edges must increase from > 0 to 1.0",
            )
        require(self.num_train > 0, "data.num_train must be > 0")
        require(self.num_val > 0, "data.num_val must be > 0")
        require(self.num_test > 0, "data.num_test must be > 0")

    @property
    def snr(self) -> float:
        return self.k / self.num_vectors


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: Adam at a constant learning rate on the MSE loss.

    Attributes:
        epochs: passes over the training split.
        batch_size: samples per step.
        lr: Adam learning rate.
        seed: seeds initialisation, batch order and dropout (each epoch reseeds from it, so a
            resumed run continues exactly as an uninterrupted one).
        eval_batch_size: samples per step when evaluating.
        threads: torch intra-op threads; 0 keeps torch's default.
        device: ``cpu`` or ``cuda`` (data stays on the CPU and moves per batch).
    """

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    eval_batch_size: int = 1024
    threads: int = 0
    device: Literal["cpu", "cuda"] = "cpu"

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "train.epochs must be >= 1")
        require(self.batch_size >= 1, "train.batch_size must be >= 1")
        require(self.lr > 0, "train.lr must be > 0")
        require(self.seed >= 0, "train.seed must be >= 0")
        require(self.eval_batch_size >= 1, "train.eval_batch_size must be >= 1")
        require(self.threads >= 0, "train.threads must be >= 0")


@dataclass(frozen=True)
class RunConfig:
    """One training run: model, data and optimisation. Loads from a TOML file with three tables."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.data.task in FILE_TASKS:  # the file's D and outputs are checked when it is read
            require(
                self.model.head.task in ("none", self.data.task),
                f"model.head.task ({self.model.head.task!r}) must be data.task "
                f"({self.data.task!r}), or left out: training sets the head from the data",
            )
            return
        require(
            self.model.input_dim == self.data.dim,
            f"model.input_dim ({self.model.input_dim}) must equal data.dim ({self.data.dim})",
        )
        require(
            self.model.head.task == "none",
            f"model.head: the {self.data.task!r} task predicts with the pooled vector",
        )


T = TypeVar("T")


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a plain mapping, strictly.

    Unknown keys raise :class:`ConfigError` with the closest known key; values are checked against
    the field types (nested dataclasses, ``Literal``, ``X | None``, ``tuple[int, ...]``).
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'config'} must be a table, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown config key '{path}'{hint} (known: {', '.join(fields)})")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value, path)
    if origin is types.UnionType or origin is typing.Union:
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"'{path}' must be one of {allowed}, got {value!r}")
        return value
    if origin is dict:
        key_type, value_type = get_args(tp)
        if not isinstance(value, Mapping):
            raise ConfigError(f"'{path}' must be a table, got {type(value).__name__}")
        return {
            _coerce(key_type, k, path): _coerce(value_type, v, f"{path}.{k}")
            for k, v in value.items()
        }
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{path}' must be a list, got {type(value).__name__}")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"'{path}' must be a list of {len(args)}, got {len(value)}")
        types_ = [args[0]] * len(value) if args[-1] is Ellipsis else list(args)
        return tuple(
            _coerce(t, v, f"{path}[{i}]")
            for i, (t, v) in enumerate(zip(types_, value, strict=True))
        )
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{path}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{path}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"'{path}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{path}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at '{path}'")


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON/TOML-ready data (tuples become lists)."""

    def plain(value: Any) -> Any:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dataclasses.asdict(config).items()}


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict (the strict parsing happens in :func:`from_dict`)."""
    with open(path, "rb") as f:
        return tomllib.load(f)


def load_run_config(path: str | Path) -> RunConfig:
    """Load a :class:`RunConfig` from a TOML file with ``[model]``, ``[data]`` and ``[train]``."""
    return from_dict(RunConfig, load_toml(path))
