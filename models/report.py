"""Turn finished sweep runs into the results folder: CSVs, a markdown table and a plot.

Files written to the results folder:

- ``runs.csv``: one row per run (method, k, seed) with its test metrics;
- ``curves.csv``: learning curves, one row per run and epoch (epoch 0 = untrained);
- ``summary.csv``: mean and std over seeds per (method, k);
- ``summary.md``: the table per k with the trivial baselines, AdaPool's rank and factor;
- ``signal_loss_vs_snr.png``: the paper's figure, signal loss against SNR on log axes;
- ``meta.json``: the command, preset, git commit, machine and time that produced them.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from models.checkpoint import write_json
from models.config import RunConfig

REFERENCE_METHOD = "adapool-ego"
SUMMARY_COLUMNS = [
    "method",
    "k",
    "snr",
    "seeds",
    "signal_loss_mean",
    "signal_loss_std",
    "signal_f1_mean",
    "signal_mass_mean",
    "signal_f1_chance",
    "signal_mass_chance",
]
RunRef = tuple[str, int, int, Path]  # method, k, seed, run directory


def git_commit() -> dict[str, Any]:
    """The commit the code ran at, and whether the tree had uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(
                ["git", "status", "--porcelain", "--", "models", "configs"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def load_runs(runs: Iterable[RunRef]) -> list[dict[str, Any]]:
    """Flatten each run's metrics.json into one record."""
    rows = []
    for method, k, seed, out in runs:
        m = json.loads((out / "metrics.json").read_text())
        w = m["weights"]
        rows.append(
            {
                "method": method,
                "k": k,
                "snr": m["snr"],
                "seed": seed,
                "signal_loss": m["signal_loss"],
                "signal_f1": w["f1"],
                "signal_f1_chance": w["f1_chance"],
                "signal_mass": w["signal_mass"],
                "signal_mass_chance": w["signal_mass_chance"],
                "precision": w["precision"],
                "recall": w["recall"],
                "initial_val_loss": m["initial_val_loss"],
                "best_epoch": m["best_epoch"],
                "epochs": m["epochs"],
                "train_seconds": m["train_seconds"],
                "trivial_mean_of_all": m["trivial"]["predict_mean_of_all"],
                "trivial_x0": m["trivial"]["predict_x0"],
            }
        )
    return rows


def load_curves(runs: Iterable[RunRef], steps_per_epoch: int) -> list[dict[str, Any]]:
    rows = []
    for method, k, seed, out in runs:
        initial = json.loads((out / "metrics.json").read_text())["initial_val_loss"]
        rows.append(
            {"method": method, "k": k, "seed": seed, "epoch": 0, "step": 0}
            | {"train_loss": "", "val_loss": initial}
        )
        for h in json.loads((out / "history.json").read_text()):
            rows.append(
                {"method": method, "k": k, "seed": seed, "epoch": h["epoch"]}
                | {"step": h["epoch"] * steps_per_epoch}
                | {"train_loss": h["train_loss"], "val_loss": h["val_loss"]}
            )
    return rows


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds per (method, k)."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["k"])].append(row)
    summary = []
    for (method, k), group in groups.items():
        losses = [g["signal_loss"] for g in group]
        summary.append(
            {
                "method": method,
                "k": k,
                "snr": group[0]["snr"],
                "seeds": len(group),
                "signal_loss_mean": statistics.fmean(losses),
                "signal_loss_std": statistics.stdev(losses) if len(losses) > 1 else 0.0,
                "signal_f1_mean": statistics.fmean(g["signal_f1"] for g in group),
                "signal_mass_mean": statistics.fmean(g["signal_mass"] for g in group),
                "signal_f1_chance": statistics.fmean(g["signal_f1_chance"] for g in group),
                "signal_mass_chance": statistics.fmean(g["signal_mass_chance"] for g in group),
            }
        )
    return sorted(summary, key=lambda s: (s["k"], s["method"]))


def trivial_by_k(rows: Sequence[dict[str, Any]]) -> dict[int, tuple[float, float]]:
    """Mean over seeds of the two trivial predictors' test loss, per k."""
    by_k: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: set[tuple[int, int]] = set()
    for row in rows:
        if (row["k"], row["seed"]) not in seen:  # the same test set for every method
            seen.add((row["k"], row["seed"]))
            by_k[row["k"]].append(row)
    return {
        k: (
            statistics.fmean(r["trivial_mean_of_all"] for r in group),
            statistics.fmean(r["trivial_x0"] for r in group),
        )
        for k, group in sorted(by_k.items())
    }


def verdicts(summary: Sequence[dict[str, Any]]) -> dict[int, tuple[bool, str, float]]:
    """Per k: is AdaPool (ego) lowest, the best other method, and its loss / AdaPool's."""
    out = {}
    for k in sorted({s["k"] for s in summary}):
        at_k = {s["method"]: s["signal_loss_mean"] for s in summary if s["k"] == k}
        if REFERENCE_METHOD not in at_k or len(at_k) < 2:
            continue
        ours = at_k.pop(REFERENCE_METHOD)
        best_other = min(at_k, key=lambda m: at_k[m])
        out[k] = (ours < at_k[best_other], best_other, at_k[best_other] / ours)
    return out


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def markdown(
    summary: Sequence[dict[str, Any]],
    trivial: dict[int, tuple[float, float]],
    base: RunConfig,
    meta: dict[str, Any],
) -> str:
    methods = sorted({s["method"] for s in summary}, key=lambda m: (m != REFERENCE_METHOD, m))
    cell = {(s["method"], s["k"]): s for s in summary}
    seeds = max(s["seeds"] for s in summary)
    m, d, t = base.model, base.data, base.train
    lines = [
        f"# kNN-Centroid reproduction: preset `{meta['preset']}`",
        "",
        f"Command: `{meta['command']}`  ",
        f"Git commit: `{meta['git']['commit']}`"
        + (" (with uncommitted changes)" if meta["git"]["dirty"] else "")
        + f"  \nMachine: {meta['machine']}; "
        f"{meta['elapsed_seconds'] / 60:.0f} min of training, summed over runs.",
        "",
        f"Scale: depth {m.depth}, width {m.dim}, {m.num_heads} heads, FF {m.mlp_dim}, "
        f"{d.num_train:,} training / {d.num_val:,} validation / {d.num_test:,} test samples, "
        f"{t.epochs} epochs, batch {t.batch_size}, Adam lr {t.lr:g}, {seeds} seed(s). "
        "The paper: depth 12, width 16, 8 heads, FF 64, 1,000,000 samples, 100 epochs, "
        "batch 750, Adam lr 5e-4, 5 folds.",
        "",
        "## Test signal loss (MSE against the signal centroid), mean ± std over seeds",
        "",
        "| k | SNR | " + " | ".join(methods) + " | mean of all | x_0 | AdaPool (ego) lowest? |",
        "|---" * (len(methods) + 5) + "|",
    ]
    verdict = verdicts(summary)
    for k in sorted({s["k"] for s in summary}):
        cells = []
        best = min(cell[(meth, k)]["signal_loss_mean"] for meth in methods)
        for meth in methods:
            s = cell[(meth, k)]
            text = f"{s['signal_loss_mean']:.4g} ± {s['signal_loss_std']:.2g}"
            cells.append(f"**{text}**" if s["signal_loss_mean"] == best else text)
        if k in verdict:
            lowest, other, factor = verdict[k]
            answer = f"{'yes' if lowest else 'no'}: {other} / AdaPool = {factor:.2f}x"
        else:
            answer = "n/a"
        snr = f"1/{round(1 / (k / d.num_vectors))}" if k < d.num_vectors else "1"
        mean_all, x0 = trivial[k]
        lines.append(
            f"| {k} | {snr} | " + " | ".join(cells) + f" | {mean_all:.4g} | {x0:.4g} | {answer} |"
        )
    lines += [
        "",
        "## Pooling weights against the true signal tokens",
        "",
        "Signal-set rule: a token is signal when its head-mean weight exceeds 1/n. "
        "Chance: uniform weights for the mass (k/n), the all-tokens estimate for F1 (2k/(k+n)).",
        "",
        "| k | chance mass | chance F1 | "
        + " | ".join(f"{meth} mass / F1" for meth in methods)
        + " |",
        "|---" * (len(methods) + 3) + "|",
    ]
    for k in sorted({s["k"] for s in summary}):
        first = cell[(methods[0], k)]
        cells = [
            f"{cell[(meth, k)]['signal_mass_mean']:.3f} / {cell[(meth, k)]['signal_f1_mean']:.3f}"
            for meth in methods
        ]
        lines.append(
            f"| {k} | {first['signal_mass_chance']:.3f} | {first['signal_f1_chance']:.3f} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines) + "\n"


def plot(
    summary: Sequence[dict[str, Any]],
    trivial: dict[int, tuple[float, float]],
    path: Path,
    title: str,
) -> None:
    """Signal loss against SNR on log axes, one line per method with its spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    methods = sorted({s["method"] for s in summary}, key=lambda m: (m != REFERENCE_METHOD, m))
    for method in methods:
        rows = sorted((s for s in summary if s["method"] == method), key=lambda s: s["snr"])
        snr = [r["snr"] for r in rows]
        mean = [r["signal_loss_mean"] for r in rows]
        std = [r["signal_loss_std"] for r in rows]
        lw = 2.5 if method == REFERENCE_METHOD else 1.5
        (line,) = ax.plot(snr, mean, marker="o", lw=lw, label=method)
        lo = [max(m - s, m * 1e-3) for m, s in zip(mean, std, strict=True)]
        hi = [m + s for m, s in zip(mean, std, strict=True)]
        ax.fill_between(snr, lo, hi, color=line.get_color(), alpha=0.2)
    num_vectors = max(s["k"] / s["snr"] for s in summary)
    ks = sorted(trivial)
    snrs = [k / num_vectors for k in ks]
    ax.plot(snrs, [trivial[k][0] for k in ks], "k--", lw=1, label="trivial: mean of all")
    ax.plot(snrs, [trivial[k][1] for k in ks], "k:", lw=1, label="trivial: x_0")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("SNR (k / N)")
    ax.set_ylabel("test signal loss (MSE)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_results(
    runs: Sequence[RunRef], base: RunConfig, results: Path, provenance: dict[str, Any]
) -> None:
    """Write every results file for finished ``runs`` into ``results``."""
    results.mkdir(parents=True, exist_ok=True)
    rows = load_runs(runs)
    summary = summarise(rows)
    trivial = trivial_by_k(rows)
    steps = -(-base.data.num_train // base.train.batch_size)
    meta = {
        **provenance,
        "git": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
        "elapsed_seconds": sum(r["train_seconds"] for r in rows),
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "runs": len(rows),
    }
    write_json(results / "meta.json", meta)
    _write_csv(results / "runs.csv", rows, list(rows[0]))
    _write_csv(
        results / "curves.csv",
        load_curves(runs, steps),
        ["method", "k", "seed", "epoch", "step", "train_loss", "val_loss"],
    )
    _write_csv(results / "summary.csv", summary, SUMMARY_COLUMNS)
    (results / "summary.md").write_text(markdown(summary, trivial, base, meta))
    plot(summary, trivial, results / "signal_loss_vs_snr.png", f"kNN-Centroid, {meta['preset']}")
