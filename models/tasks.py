"""The data of a run, split three ways, and what each task optimises and reports.

Every task's splits answer the same two calls, ``split.batch(index)`` (padded tokens, mask,
signal mask) and ``split.target(index)``, so one training loop serves them all:

- the centroid tasks (``knn_centroid``, ``signature``): generated in memory (``make_data``);
  the pooled vector is the prediction, the loss its MSE against the signal centroid (the
  paper's signal loss);
- ``classification`` and ``regression``: a data set file (``models.data``), split by its
  ``split`` array or a seeded 80/10/10 split; a linear head on the pooled vector, with
  cross-entropy or MSE (:mod:`models.objectives`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from models.config import (
    FILE_TASKS,
    ConfigError,
    DataConfig,
    DataTask,
    HeadConfig,
    HeadTask,
    ModelConfig,
    PoolingConfig,
    RunConfig,
    TrainConfig,
    require,
)
from models.data import knn_centroid, read_dataset, signature
from models.data.knn_centroid import Dataset
from models.data.sets import SPLIT_NAMES, Batch, TokenSets, seeded_split
from models.model import PoolingModel

SPLITS = SPLIT_NAMES


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (for example (seed, epoch) or (seed, split))."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_data(config: DataConfig) -> dict[str, Dataset]:
    """Generate a centroid task's train, val and test splits; each has its own derived seed."""
    require(config.task != "none", f"data.task={config.task!r} has no data to train on")
    require(config.task not in FILE_TASKS, f"data.task={config.task!r} reads data.path")
    sizes = {"train": config.num_train, "val": config.num_val, "test": config.num_test}
    out = {}
    for index, split in enumerate(SPLITS):
        seed = derive_seed(config.seed, index)
        if config.task == "signature":
            out[split] = signature.generate(
                sizes[split],
                seed,
                num_vectors=config.num_vectors,
                min_vectors=config.min_vectors,
                dim=config.dim,
                signature_dims=config.signature_dims,
                signature_noise=config.signature_noise,
            )
        else:
            out[split] = knn_centroid.generate(
                sizes[split], config.k, seed, num_vectors=config.num_vectors, dim=config.dim
            )
    return out


class Split(Protocol):
    """One split of a run's data, gathered by index."""

    def __len__(self) -> int: ...

    def batch(self, index: NDArray[np.int64]) -> Batch: ...

    def target(self, index: NDArray[np.int64]) -> NDArray[Any]: ...


@dataclass(frozen=True)
class ArraySplit:
    """A generated split held in memory."""

    data: Dataset

    def __len__(self) -> int:
        return len(self.data.x)

    def batch(self, index: NDArray[np.int64]) -> Batch:
        return Batch(self.data.x[index], self.data.mask()[index], self.data.signal_mask[index])

    def target(self, index: NDArray[np.int64]) -> NDArray[Any]:
        return self.data.y[index]


@dataclass(frozen=True)
class FileSplit:
    """The sets ``rows`` of a data set file."""

    sets: TokenSets
    rows: NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, index: NDArray[np.int64]) -> Batch:
        return self.sets.batch(self.rows[index])

    def target(self, index: NDArray[np.int64]) -> NDArray[Any]:
        return self.sets.target(self.rows[index])


def file_splits(sets: TokenSets, seed: int) -> dict[str, FileSplit]:
    """The file's own ``split`` array, or a seeded 80/10/10 split."""
    split = sets.split if sets.split is not None else seeded_split(len(sets), seed)
    return {
        name: FileSplit(sets, np.flatnonzero(split == value).astype(np.int64))
        for value, name in enumerate(SPLITS)
    }


def make_splits(config: DataConfig, sets: TokenSets | None = None) -> dict[str, Split]:
    """A run's train, val and test splits (file tasks: of ``sets``, read by the caller)."""
    if config.task in FILE_TASKS:
        assert sets is not None, "file tasks split a data set read by the caller"
        return dict(file_splits(sets, config.seed))
    return {name: ArraySplit(data) for name, data in make_data(config).items()}


class Predictions(NamedTuple):
    """A model's outputs over a split, padded to the split's longest set.

    Attributes:
        output: (S, K) the prediction (pooled vector, logits or values).
        weights: (S, H, N) pooling weights, 0 on padding.
        attention_mask: (S, N) bool; signal_mask: (S, N) bool or None.
    """

    output: NDArray[np.float32]
    weights: NDArray[np.float32]
    attention_mask: NDArray[np.bool_]
    signal_mask: NDArray[np.bool_] | None


def _pad(arrays: list[NDArray[Any]], width: int) -> NDArray[Any]:
    return np.concatenate(
        [np.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, width - a.shape[-1])]) for a in arrays]
    )


@torch.no_grad()
def predict_split(model: PoolingModel, split: Split, batch_size: int) -> Predictions:
    """Run the model in eval mode over every set of ``split``, in order."""
    model.eval()
    device = next(model.parameters()).device
    outputs, weights, masks, signals = [], [], [], []
    for start in range(0, len(split), batch_size):
        batch = split.batch(np.arange(start, min(len(split), start + batch_size)))
        out = model(
            torch.from_numpy(batch.x).to(device), torch.from_numpy(batch.attention_mask).to(device)
        )
        outputs.append(out.output.cpu().numpy())
        weights.append(out.weights.cpu().numpy())
        masks.append(batch.attention_mask)
        if batch.signal_mask is not None:
            signals.append(batch.signal_mask)
    width = max(m.shape[1] for m in masks)
    return Predictions(
        np.concatenate(outputs),
        _pad(weights, width),
        _pad(masks, width),
        _pad(signals, width) if signals else None,
    )


def targets_of(split: Split) -> NDArray[Any]:
    """Every target of the split, in order."""
    return split.target(np.arange(len(split)))


def resolve_head(config: RunConfig, sets: TokenSets) -> RunConfig:
    """``config`` with its head set from the data set, after checking the two agree.

    Raises:
        ConfigError: the task, the token dimension or a given head disagree with the file.
    """
    data, model = config.data, config.model
    if sets.task != data.task:
        holds = "labels" if sets.task == "classification" else "targets"
        raise ConfigError(
            f"data.task is {data.task!r}, but {data.path} holds {holds} ({sets.task})"
        )
    if model.input_dim != sets.dim:
        hint = (
            ""
            if model.input_projection or model.dim == sets.dim
            else (" and model.input_projection = true")
        )
        raise ConfigError(
            f"model.input_dim ({model.input_dim}) differs from the tokens' dimension in "
            f"{data.path} (D = {sets.dim}): set model.input_dim = {sets.dim}{hint}"
        )
    task: HeadTask = "classification" if data.task == "classification" else "regression"
    head = HeadConfig(task, sets.num_outputs)
    if model.head.task != "none" and model.head != head:
        raise ConfigError(
            f"model.head ({model.head.task}, {model.head.outputs} outputs) disagrees with "
            f"{data.path}: {data.task} with {head.outputs} outputs"
        )
    return dataclasses.replace(config, model=dataclasses.replace(model, head=head))


def load_data(config: RunConfig) -> tuple[RunConfig, dict[str, Split]]:
    """The run's splits, and its config with the head the data needs (file tasks).

    Raises:
        DataFormatError: the data set file is invalid; ConfigError: it disagrees with config.
    """
    if config.data.task not in FILE_TASKS:
        return config, make_splits(config.data)
    sets = read_dataset(config.data.path)
    return resolve_head(config, sets), make_splits(config.data, sets)


def file_run_config(path: str | Path, task: DataTask, dim: int) -> RunConfig:
    """The default run for a data set file with D = ``dim``: the digits-bags study's committed
    model (README, "Bring your own embeddings"): a 2-layer encoder of width 32 with 4 heads
    over an input projection, AdaPool with the mean query and values from the inputs (its
    weights are exact shares of the input tokens), a linear head."""
    width = 32
    model = ModelConfig(
        input_dim=dim,
        dim=width,
        input_projection=dim != width,
        depth=2,
        num_heads=4,
        mlp_dim=2 * width,
        dropout=0.0,
        query_embedding=False,
        pooling=PoolingConfig(method="adapool", query="mean", values="inputs"),
    )
    data = DataConfig(task=task, path=str(path))
    train = TrainConfig(epochs=30, batch_size=64, lr=1e-3)
    return RunConfig(model=model, data=data, train=train)
