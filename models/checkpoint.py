"""Checkpoints as safetensors plus JSON: no pickles anywhere.

A run directory holds:

- ``config.json``: the full :class:`RunConfig`;
- ``model.safetensors``: the best weights (lowest validation loss);
- ``last.safetensors`` + ``state.json``: the latest weights and optimiser state, for resuming;
- ``history.json``: one record per epoch; ``metrics.json``: test metrics of the best weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from models.config import RunConfig, from_dict, to_dict
from models.model import PoolingModel, build_model

CONFIG_FILE = "config.json"
BEST_FILE = "model.safetensors"
LAST_FILE = "last.safetensors"
STATE_FILE = "state.json"


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (a crash never leaves half a file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def save_config(run_dir: Path, config: RunConfig) -> None:
    write_json(run_dir / CONFIG_FILE, to_dict(config))


def load_config(run_dir: Path) -> RunConfig:
    return from_dict(RunConfig, read_json(Path(run_dir) / CONFIG_FILE))


def _save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def save_model(model: PoolingModel, path: Path) -> None:
    """Write the model's weights to ``path`` as safetensors."""
    _save_tensors(dict(model.state_dict()), path)


def load_model(run_dir: str | Path, weights: str = BEST_FILE) -> tuple[PoolingModel, RunConfig]:
    """Rebuild a trained model from its run directory, in eval mode.

    Args:
        run_dir: a directory written by ``python -m models.train``.
        weights: ``model.safetensors`` (best, default) or ``last.safetensors``.
    """
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    model = build_model(config.model)
    tensors = load_file(str(run_dir / weights))
    state = {k.removeprefix("model."): v for k, v in tensors.items() if not k.startswith("optim.")}
    model.load_state_dict(state, strict=True)
    return model.eval(), config


def save_training_state(
    run_dir: Path, model: PoolingModel, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Save the latest weights, the optimiser's tensors and the loop state for resuming."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    for index, slots in opt_state["state"].items():
        for name, value in slots.items():
            tensors[f"optim.{index}.{name}"] = torch.as_tensor(value)
    _save_tensors(tensors, run_dir / LAST_FILE)
    write_json(run_dir / STATE_FILE, {**state, "param_groups": opt_state["param_groups"]})


def load_training_state(
    run_dir: Path, model: PoolingModel, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore what :func:`save_training_state` wrote; returns the loop state."""
    state: dict[str, Any] = read_json(run_dir / STATE_FILE)
    tensors = load_file(str(run_dir / LAST_FILE))
    model.load_state_dict(
        {k.removeprefix("model."): v for k, v in tensors.items() if k.startswith("model.")}
    )
    slots: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            slots.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": slots, "param_groups": state.pop("param_groups")})
    return state
