"""Train one pooling model and write its checkpoint and test metrics.

    python -m models.train --config configs/knn_centroid_small.toml --k 8 --method adapool
    python -m models.train --data my_sets.npz --task classification     # your own embeddings

The first form trains on a generated task (kNN-Centroid, Signature); the second on a data set
file (``models.data``: embeddings, masks, labels or targets) with the default model for such data
(``file_run_config``), or with ``--config`` a TOML whose ``[data]`` names ``task`` and ``path``.
The run directory (``--out``) receives ``config.json``, ``model.safetensors`` (best validation
loss), ``last.safetensors`` + ``state.json`` (for ``--resume``), ``history.json`` (one record per
epoch) and ``metrics.json`` (test metrics of the best weights). See :mod:`models.checkpoint`.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models import checkpoint
from models.config import (
    FILE_TASKS,
    POOLING_METHODS,
    QUERY_MODES,
    ConfigError,
    RunConfig,
    load_run_config,
)
from models.data import DataFormatError, read_dataset
from models.model import PoolingModel, build_model
from models.objectives import Objective, objective, summary
from models.tasks import (
    Split,
    derive_seed,
    file_run_config,
    load_data,
    predict_split,
    targets_of,
)


@torch.no_grad()
def predict(
    model: PoolingModel, x: np.ndarray, batch_size: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Run the model in eval mode over x (S, N, D), with an optional (S, N) attention mask.

    Returns pooled (S, D_out) and weights (S, H, N) as float32 arrays.
    """
    model.eval()
    device = next(model.parameters()).device
    if mask is None:
        mask = np.ones(x.shape[:2], dtype=bool)
    pooled, weights = [], []
    for start in range(0, len(x), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size]).to(device)
        mb = torch.from_numpy(mask[start : start + batch_size]).to(device)
        out = model(xb, mb)
        pooled.append(out.pooled.cpu().numpy())
        weights.append(out.weights.cpu().numpy())
    return np.concatenate(pooled), np.concatenate(weights)


def _train_epoch(
    model: PoolingModel,
    optimizer: torch.optim.Optimizer,
    data: Split,
    goal: Objective,
    config: RunConfig,
    epoch: int,
    progress: bool,
) -> float:
    """One pass over the training split; returns the mean training loss."""
    model.train()
    device = next(model.parameters()).device
    # Reseed per epoch: batch order and dropout depend only on (seed, epoch), so --resume
    # reproduces an uninterrupted run exactly.
    torch.manual_seed(derive_seed(config.train.seed, epoch))
    order = torch.randperm(len(data)).numpy()
    batch_size = config.train.batch_size
    steps = math.ceil(len(order) / batch_size)
    total, count = 0.0, 0
    bar = tqdm(
        range(steps),
        desc=f"epoch {epoch}/{config.train.epochs}",
        disable=not progress,
        leave=False,
        file=sys.stderr,
    )
    for step in bar:
        index = order[step * batch_size : (step + 1) * batch_size]
        batch = data.batch(index)
        xb = torch.from_numpy(batch.x).to(device)
        mask = torch.from_numpy(batch.attention_mask).to(device)
        yb = torch.from_numpy(data.target(index)).to(device)
        loss = goal.loss(model(xb, mask).output, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        total += loss.item() * len(index)
        count += len(index)
        bar.set_postfix(loss=f"{total / count:.5f}")
    return total / count


def train(
    config: RunConfig, out_dir: str | Path, resume: bool = False, progress: bool = True
) -> dict[str, Any]:
    """Train, keep the best checkpoint, evaluate it on the test split.

    Args:
        config: the run's configuration.
        out_dir: the run directory.
        resume: continue from ``out_dir``'s last saved epoch (its config must match, except for
            ``train.epochs``).
        progress: show a progress bar on stderr.

    Returns:
        The test metrics (also written to ``out_dir/metrics.json``).
    """
    out = Path(out_dir)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    config, splits = load_data(config)
    goal = objective(config.data.task)
    model = initial_model(config, splits)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    state: dict[str, Any] = {"epoch": 0, "best_val": math.inf, "best_epoch": 0, "history": []}

    if resume and (out / checkpoint.STATE_FILE).exists():
        _check_resumable(checkpoint.load_config(out), config)
        state = checkpoint.load_training_state(out, model, optimizer)
        print(f"resuming {out} after epoch {state['epoch']}", flush=True)
    elif (out / checkpoint.STATE_FILE).exists():
        raise FileExistsError(f"{out} already holds a run: pass --resume or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_config(out, config)

    val = splits["val"]

    def val_loss_of(m: PoolingModel) -> float:
        return goal.val_loss(predict_split(m, val, config.train.eval_batch_size), val)

    if state["epoch"] == 0:
        # The untrained model's validation loss: the reference for "training lowered the loss".
        state["initial_val_loss"] = val_loss_of(model)
        print(f"epoch 0  val {state['initial_val_loss']:.5f} (untrained)", flush=True)
    for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        train_loss = _train_epoch(model, optimizer, splits["train"], goal, config, epoch, progress)
        val_loss = val_loss_of(model)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        best = val_loss < state["best_val"]
        if best:
            state["best_val"], state["best_epoch"] = val_loss, epoch
            checkpoint.save_model(model, out / checkpoint.BEST_FILE)
        state["epoch"] = epoch
        state["history"].append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds}
            | {"cpu_seconds": cpu_seconds}
        )
        checkpoint.save_training_state(out, model, optimizer, state)
        checkpoint.write_json(out / "history.json", state["history"])
        print(
            f"epoch {epoch}/{config.train.epochs}  train {train_loss:.5f}  val {val_loss:.5f}"
            f"{'  (best)' if best else ''}  {seconds:.1f}s",
            flush=True,
        )

    return finish(out, config, splits, goal, state)


def initial_model(config: RunConfig, splits: dict[str, Split]) -> PoolingModel:
    """The untrained model of a run: initialised from ``train.seed`` (so the stacked trainer,
    :mod:`models.stacked`, starts each of its models exactly as a run of its own would)."""
    torch.manual_seed(config.train.seed)
    model = build_model(config.model).to(config.train.device)
    if config.model.head.task == "regression":
        # Start the head at the training mean, so the loss starts at the targets' variance.
        with torch.no_grad():
            head: torch.nn.Linear = model.head  # type: ignore[assignment]
            head.bias.copy_(torch.from_numpy(targets_of(splits["train"]).mean(axis=0)))
    return model


def finish(
    out: Path, config: RunConfig, splits: dict[str, Split], goal: Objective, state: dict[str, Any]
) -> dict[str, Any]:
    """Score the best checkpoint in ``out`` on the test split; write and return metrics.json.

    ``state`` is the loop's record: ``initial_val_loss``, ``best_val``, ``best_epoch``,
    ``epoch`` and ``history`` (one record per epoch, with ``seconds``)."""
    best_model, _ = checkpoint.load_model(out)
    best_model.to(config.train.device)
    metrics = goal.test_metrics(best_model, splits, config)
    metrics.update(
        initial_val_loss=state["initial_val_loss"],
        best_val_loss=state["best_val"],
        best_epoch=state["best_epoch"],
        epochs=state["epoch"],
        num_parameters=sum(p.numel() for p in best_model.parameters()),
        train_seconds=sum(h["seconds"] for h in state["history"]),
        train_cpu_seconds=sum(h.get("cpu_seconds", 0.0) for h in state["history"]),
    )
    if "stacked" in state:  # trained by models.stacked, in a stack of this many models
        metrics["stacked"] = state["stacked"]
    checkpoint.write_json(out / "metrics.json", metrics)
    return metrics


def rescore_metrics(model: PoolingModel, config: RunConfig, old: dict[str, Any]) -> dict[str, Any]:
    """Test metrics recomputed with the current metrics code (after the signal rule changed, say),
    keeping the old record's training fields (epochs, losses, timings)."""
    config, splits = load_data(config)
    model = model.to(config.train.device)
    metrics = objective(config.data.task).test_metrics(model, splits, config)
    metrics.update({k: v for k, v in old.items() if k not in metrics})
    return metrics


def rescore(run_dir: str | Path) -> dict[str, Any]:
    """Rescore a finished run (see :func:`rescore_metrics`); rewrites and returns metrics.json."""
    out = Path(run_dir)
    model, config = checkpoint.load_model(out)
    metrics = rescore_metrics(model, config, checkpoint.read_json(out / "metrics.json"))
    checkpoint.write_json(out / "metrics.json", metrics)
    return metrics


def _check_resumable(saved: RunConfig, requested: RunConfig) -> None:
    same_epochs = dataclasses.replace(
        saved, train=dataclasses.replace(saved.train, epochs=requested.train.epochs)
    )
    if same_epochs != requested:
        raise ConfigError("cannot resume: the saved config differs (only train.epochs may change)")


def base_config(args: argparse.Namespace) -> RunConfig:
    """The run config before overrides: ``--config``'s TOML, or the default for ``--data``."""
    if args.config is not None:
        config = load_run_config(args.config)
        if args.data is None and args.task is None:
            return config
        task = args.task or config.data.task
        path = str(args.data) if args.data is not None else config.data.path
        return dataclasses.replace(
            config, data=dataclasses.replace(config.data, task=task, path=path)
        )
    if args.data is None or args.task is None:
        raise ConfigError(
            "give --config FILE, or --data PATH with --task classification|regression"
        )
    return file_run_config(args.data, args.task, read_dataset(args.data).dim)


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Apply the command-line overrides to a loaded config (re-validated)."""
    pooling = config.model.pooling
    if args.method is not None:
        values = pooling.values if args.method == "adapool" else "encoder"
        pooling = dataclasses.replace(pooling, method=args.method, values=values)
    for flag in ("query", "values"):
        if getattr(args, flag) is not None:
            if pooling.method != "adapool":
                raise ConfigError(f"--{flag} applies to --method adapool only")
            pooling = dataclasses.replace(pooling, **{flag: getattr(args, flag)})
    model = dataclasses.replace(config.model, pooling=pooling)
    data = config.data if args.k is None else dataclasses.replace(config.data, k=args.k)
    train_cfg = config.train
    if args.seed is not None:
        train_cfg = dataclasses.replace(train_cfg, seed=args.seed)
    if args.epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=args.epochs)
    return RunConfig(model=model, data=data, train=train_cfg)


def default_run_name(config: RunConfig) -> str:
    pooling = config.model.pooling
    method = f"adapool-{pooling.query}" if pooling.method == "adapool" else pooling.method
    if config.data.task in FILE_TASKS:
        return f"{Path(config.data.path).stem}-{config.data.task}-{method}-seed{config.train.seed}"
    return f"{method}-k{config.data.k}-seed{config.train.seed}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", type=Path, help="TOML run config")
    parser.add_argument(
        "--data", type=Path, help="a data set file or folder (models.data; overrides data.path)"
    )
    parser.add_argument("--task", choices=FILE_TASKS, help="what --data's sets are labelled for")
    parser.add_argument("--k", type=int, help="signal tokens per sample (overrides data.k)")
    parser.add_argument("--method", choices=POOLING_METHODS, help="overrides pooling.method")
    parser.add_argument("--query", choices=QUERY_MODES, help="AdaPool query (overrides)")
    parser.add_argument(
        "--values", choices=("encoder", "inputs"), help="AdaPool values' source (overrides)"
    )
    parser.add_argument("--seed", type=int, help="training seed (overrides train.seed)")
    parser.add_argument("--epochs", type=int, help="overrides train.epochs")
    parser.add_argument(
        "--out", type=Path, help="run directory (default runs/<method>-k<k>-seed<s>)"
    )
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = apply_overrides(base_config(args), args)
        out = args.out or Path("runs") / default_run_name(config)
        metrics = train(config, out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, DataFormatError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{summary(metrics)}\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
