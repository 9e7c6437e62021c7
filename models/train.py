"""Train one pooling model on kNN-Centroid and write its checkpoint and test metrics.

    python -m models.train --config configs/knn_centroid_small.toml --k 8 --method adapool

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
import torch.nn.functional as F
from tqdm import tqdm

from models import checkpoint
from models.config import (
    POOLING_METHODS,
    QUERY_MODES,
    ConfigError,
    DataConfig,
    RunConfig,
    load_run_config,
    require,
)
from models.data import knn_centroid, signature
from models.data.knn_centroid import Dataset
from models.metrics import signal_loss, snr_bands, trivial_baselines, weight_quality
from models.model import PoolingModel, build_model

SPLITS = ("train", "val", "test")


def derive_seed(*parts: int) -> int:
    """A well-mixed 32-bit seed from integers (for example (seed, epoch) or (seed, split))."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_data(config: DataConfig) -> dict[str, Dataset]:
    """Generate the train, val and test splits; each split has its own derived seed."""
    require(config.task != "none", f"data.task={config.task!r} has no data to train on")
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


def test_metrics(model: PoolingModel, data: Dataset, config: RunConfig) -> dict[str, Any]:
    """Signal loss, weight quality with chance levels, and the trivial baselines on ``data``."""
    mask = data.mask()
    pooled, weights = predict(model, data.x, config.train.eval_batch_size, mask)
    metrics: dict[str, Any] = {
        "task": config.data.task,
        "method": config.model.pooling.method,
        "query": config.model.pooling.query if config.model.pooling.method == "adapool" else None,
        "k": config.data.k if config.data.task == "knn_centroid" else None,
        "snr": config.data.snr if config.data.task == "knn_centroid" else None,
        "num_test": len(data.x),
        "signal_loss": signal_loss(pooled, data.y),
        "weights": weight_quality(weights, mask, data.signal_mask).as_dict(),
        "trivial": trivial_baselines(data.x, data.y, mask),
    }
    if config.data.task == "signature":
        metrics["bands"] = snr_bands(pooled, weights, data.x, data.y, mask, data.signal_mask)
    return metrics


def _train_epoch(
    model: PoolingModel,
    optimizer: torch.optim.Optimizer,
    data: Dataset,
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
    order = torch.randperm(len(data.x))
    x, y, m = torch.from_numpy(data.x), torch.from_numpy(data.y), torch.from_numpy(data.mask())
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
        xb, yb, mask = x[index].to(device), y[index].to(device), m[index].to(device)
        loss = F.mse_loss(model(xb, mask).pooled, yb)
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
    torch.manual_seed(config.train.seed)
    model = build_model(config.model).to(config.train.device)
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

    data = make_data(config.data)
    val = data["val"]

    def val_loss_of(m: PoolingModel) -> float:
        return signal_loss(predict(m, val.x, config.train.eval_batch_size, val.mask())[0], val.y)

    if state["epoch"] == 0:
        # The untrained model's validation loss: the reference for "training lowered the loss".
        state["initial_val_loss"] = val_loss_of(model)
        print(f"epoch 0  val {state['initial_val_loss']:.5f} (untrained)", flush=True)
    for epoch in range(state["epoch"] + 1, config.train.epochs + 1):
        started = time.perf_counter()
        train_loss = _train_epoch(model, optimizer, data["train"], config, epoch, progress)
        val_loss = val_loss_of(model)
        seconds = time.perf_counter() - started
        best = val_loss < state["best_val"]
        if best:
            state["best_val"], state["best_epoch"] = val_loss, epoch
            checkpoint.save_model(model, out / checkpoint.BEST_FILE)
        state["epoch"] = epoch
        state["history"].append(
            {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "seconds": seconds}
        )
        checkpoint.save_training_state(out, model, optimizer, state)
        checkpoint.write_json(out / "history.json", state["history"])
        print(
            f"epoch {epoch}/{config.train.epochs}  train {train_loss:.5f}  val {val_loss:.5f}"
            f"{'  (best)' if best else ''}  {seconds:.1f}s",
            flush=True,
        )

    best_model, _ = checkpoint.load_model(out)
    best_model.to(config.train.device)
    metrics = test_metrics(best_model, data["test"], config)
    metrics.update(
        initial_val_loss=state["initial_val_loss"],
        best_val_loss=state["best_val"],
        best_epoch=state["best_epoch"],
        epochs=state["epoch"],
        num_parameters=sum(p.numel() for p in best_model.parameters()),
        train_seconds=sum(h["seconds"] for h in state["history"]),
    )
    checkpoint.write_json(out / "metrics.json", metrics)
    return metrics


def rescore_metrics(model: PoolingModel, config: RunConfig, old: dict[str, Any]) -> dict[str, Any]:
    """Test metrics recomputed with the current metrics code (after the signal rule changed, say),
    keeping the old record's training fields (epochs, losses, timings)."""
    metrics = test_metrics(model.to(config.train.device), make_data(config.data)["test"], config)
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


def apply_overrides(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """Apply the command-line overrides to a loaded config (re-validated)."""
    pooling = config.model.pooling
    if args.method is not None:
        pooling = dataclasses.replace(pooling, method=args.method)
    if args.query is not None:
        if pooling.method != "adapool":
            raise ConfigError("--query applies to --method adapool only")
        pooling = dataclasses.replace(pooling, query=args.query)
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
    return f"{method}-k{config.data.k}-seed{config.train.seed}"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--config", required=True, type=Path, help="TOML run config")
    parser.add_argument("--k", type=int, help="signal tokens per sample (overrides data.k)")
    parser.add_argument("--method", choices=POOLING_METHODS, help="overrides pooling.method")
    parser.add_argument("--query", choices=QUERY_MODES, help="AdaPool query (overrides)")
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
        config = apply_overrides(load_run_config(args.config), args)
        out = args.out or Path("runs") / default_run_name(config)
        metrics = train(config, out, resume=args.resume, progress=not args.no_progress)
    except (ConfigError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    w = metrics["weights"]
    print(
        f"test signal loss {metrics['signal_loss']:.5f} (best epoch {metrics['best_epoch']}); "
        f"trivial: mean-of-all {metrics['trivial']['predict_mean_of_all']:.5f}, "
        f"x0 {metrics['trivial']['predict_x0']:.5f}\n"
        f"weights: signal mass {w['signal_mass']:.3f} (chance {w['signal_mass_chance']:.3f}), "
        f"F1 {w['f1']:.3f} (all-tokens {w['f1_chance']:.3f})\n"
        f"wrote {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
