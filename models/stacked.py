"""Train several models of one architecture at once: their weights stacked, one pass per step.

    from models.stacked import train_stacked
    train_stacked([config_k1, config_k2, ...], [run_dir_k1, run_dir_k2, ...])

The sweep trains dozens of tiny models (``python -m models.sweep --stacked``); each is too small
to keep a processor, let alone a GPU, busy, so running them one after another pays the
per-operation overhead once per model. Here the M models' parameters are stacked along a new
first axis (``torch.func.stack_module_state``) and one ``torch.func.vmap`` of the model's
forward runs all M on their own batches, (M, B, N, D), in one set of batched operations.

What stays exactly as in :func:`models.train.train`, per model:

- initialisation (``train.seed``; :func:`models.train.initial_model`), data (each model its own
  generated splits) and batch order (reseeded per epoch from ``(train.seed, epoch)``);
- the loss and the optimiser: the M losses are summed, so each model's gradient is its own
  loss's, and Adam works element by element, so one Adam over the stacked tensors is M Adams;
- validation each epoch, the best epoch's weights kept, test metrics of the best weights: every
  run directory gets the same ``config.json``, ``model.safetensors``, ``history.json`` and
  ``metrics.json`` as a run of its own (:mod:`models.checkpoint`), so reports read them alike.

Differences: dropout's random masks are drawn for all models together (``randomness=
"different"``), so with dropout the runs are equal to separate runs in distribution, not draw
for draw (without dropout they agree to float rounding: ``tests/models/test_stacked.py``); and
an interrupted group starts again from epoch 1 (it writes no ``state.json`` to resume from).

The models must share the model config, the task, the token shape and every training setting
but the seed (:func:`check_stackable`); the data may differ (k, the data seed).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.func import functional_call, stack_module_state, vmap

from models import checkpoint
from models.config import ConfigError, RunConfig
from models.model import PoolingModel, build_model
from models.objectives import Objective, objective
from models.tasks import Split, derive_seed, load_data, predict_split
from models.train import finish, initial_model


def check_stackable(configs: Sequence[RunConfig]) -> None:
    """Raise ConfigError unless the runs can train as one stack.

    They must have the same model, task and token shape, and the same training settings but
    ``train.seed``; data seeds, k and sizes of val and test may differ, the training split's
    size may not (every model takes the same steps).
    """
    if not configs:
        raise ConfigError("nothing to stack")
    first = configs[0]
    for config in configs[1:]:
        if config.model != first.model:
            raise ConfigError("stacked runs need the same model config")
        if dataclasses.replace(config.train, seed=first.train.seed) != first.train:
            raise ConfigError("stacked runs need the same training settings but the seed")
        same = ("task", "num_vectors", "dim", "num_train", "path")
        differ = [f for f in same if getattr(config.data, f) != getattr(first.data, f)]
        if differ:
            raise ConfigError(f"stacked runs need the same data.{', data.'.join(differ)}")


class Stack:
    """M models of one architecture as stacked tensors, and a vmapped forward over them."""

    def __init__(self, models: Sequence[PoolingModel]) -> None:
        self.template = build_model(models[0].config).to("meta")
        self.template.check_inputs = False
        self.template.train()
        params, buffers = stack_module_state(list(models))
        self.params: dict[str, Tensor] = params
        self.buffers: dict[str, Tensor] = buffers
        self.size = len(models)

    def _one(
        self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor, mask: Tensor
    ) -> Tensor:
        output: Tensor = functional_call(self.template, (params, buffers), (x, mask)).output
        return output

    def outputs(self, x: Tensor, mask: Tensor) -> Tensor:
        """x (M, B, N, D), mask (M, B, N) -> each model's output on its own batch, (M, B, K)."""
        forward = vmap(self._one, randomness="different")
        out: Tensor = forward(self.params, self.buffers, x, mask)
        return out

    def load_into(self, index: int, model: PoolingModel) -> PoolingModel:
        """Copy model ``index``'s current weights into ``model`` (same architecture)."""
        with torch.no_grad():
            state = {name: value[index] for name, value in self.params.items()}
            state.update({name: value[index] for name, value in self.buffers.items()})
            model.load_state_dict(state, strict=True)
        return model


def _batches(
    splits: Sequence[Split], orders: Sequence[np.ndarray], step: int, batch_size: int
) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Step ``step`` of every model's epoch: stacked tokens and masks, each model's targets.

    Sets of different lengths are padded to the longest (the mask keeps padding out)."""
    xs, masks, targets = [], [], []
    for split, order in zip(splits, orders, strict=True):
        index = order[step * batch_size : (step + 1) * batch_size]
        batch = split.batch(index)
        xs.append(batch.x)
        masks.append(batch.attention_mask)
        targets.append(torch.from_numpy(split.target(index)))
    width = max(x.shape[1] for x in xs)
    x = np.stack([np.pad(a, [(0, 0), (0, width - a.shape[1]), (0, 0)]) for a in xs])
    mask = np.stack([np.pad(m, [(0, 0), (0, width - m.shape[1])]) for m in masks])
    return torch.from_numpy(x), torch.from_numpy(mask), targets


def train_stacked(
    configs: Sequence[RunConfig],
    out_dirs: Sequence[str | Path],
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train the runs as one stack; each run directory gets what :func:`models.train.train`
    writes but ``last.safetensors`` and ``state.json``. Returns each run's test metrics.

    Raises:
        ConfigError: the runs cannot share a stack (:func:`check_stackable`).
    """
    check_stackable(configs)
    outs = [Path(o) for o in out_dirs]
    if len(outs) != len(configs):
        raise ValueError("one run directory per config")
    first = configs[0].train
    if first.threads:
        torch.set_num_threads(first.threads)
    device = first.device
    loaded = [load_data(c) for c in configs]
    configs = [c for c, _ in loaded]
    all_splits = [s for _, s in loaded]
    goal: Objective = objective(configs[0].data.task)
    models = [initial_model(c, s) for c, s in zip(configs, all_splits, strict=True)]
    stack = Stack(models)
    optimizer = torch.optim.Adam(list(stack.params.values()), lr=first.lr)
    for out, config in zip(outs, configs, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        checkpoint.save_config(out, config)

    def val_losses() -> list[float]:
        losses = []
        for index, (model, splits) in enumerate(zip(models, all_splits, strict=True)):
            stack.load_into(index, model)
            predictions = predict_split(model, splits["val"], first.eval_batch_size)
            losses.append(goal.val_loss(predictions, splits["val"]))
        return losses

    states: list[dict[str, Any]] = [
        {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "history": [], "stacked": len(models)}
        | {"initial_val_loss": loss}
        for loss in val_losses()
    ]
    train_splits = [s["train"] for s in all_splits]
    steps = math.ceil(len(train_splits[0]) / first.batch_size)
    for epoch in range(1, first.epochs + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        orders = []
        for config, split in zip(configs, train_splits, strict=True):
            torch.manual_seed(derive_seed(config.train.seed, epoch))  # as models.train does
            orders.append(torch.randperm(len(split)).numpy())
        totals = torch.zeros(len(models), dtype=torch.float64)
        count = 0
        for step in range(steps):
            x, mask, targets = _batches(train_splits, orders, step, first.batch_size)
            outputs = stack.outputs(x.to(device), mask.to(device))
            losses = torch.stack(
                [goal.loss(out, y.to(device)) for out, y in zip(outputs, targets, strict=True)]
            )
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            rows = len(targets[0])
            totals += losses.detach().cpu().double() * rows
            count += rows
        val = val_losses()
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        for index, (state, out) in enumerate(zip(states, outs, strict=True)):
            best = val[index] < state["best_val"]
            if best:
                state["best_val"], state["best_epoch"] = val[index], epoch
                checkpoint.save_model(models[index], out / checkpoint.BEST_FILE)
            state["epoch"] = epoch
            # Each model's share of the stack's time: what a report sums as its training time.
            state["history"].append(
                {
                    "epoch": epoch,
                    "train_loss": float(totals[index] / count),
                    "val_loss": val[index],
                    "seconds": seconds / len(models),
                    "cpu_seconds": cpu_seconds / len(models),
                    "stack_seconds": seconds,
                }
            )
            checkpoint.write_json(out / "history.json", state["history"])
        if progress:
            print(
                f"epoch {epoch}/{first.epochs}  {len(models)} models  val "
                + " ".join(f"{v:.5f}" for v in val)
                + f"  {seconds:.1f}s",
                flush=True,
            )
    return [
        finish(out, config, splits, goal, state)
        for out, config, splits, state in zip(outs, configs, all_splits, states, strict=True)
    ]
