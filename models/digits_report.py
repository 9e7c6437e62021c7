"""The digits-bags study's results folder: CSVs, a markdown summary and a plot.

Every figure is a median over the seeds (each seed: its own bags, image split and training),
with the range beside it. Files: ``runs.csv`` (one row per run), ``bands.csv`` (one row per run
and SNR band), ``summary.md``, ``digits_bags.png`` and ``meta.json``.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.checkpoint import write_json
from models.report import git_commit
from models.weight_metrics import SNRBands

if TYPE_CHECKING:
    from models.digits_study import Preset
    from models.sweep import Run

# The targets for the committed model, per band [1/64,1/16) ... [1/2,1].
F1_TARGETS = (0.80, 0.75, 0.70, 0.88)
AUC_TARGET, LOW_BAND_AUC_TARGET, INSTANCE_AUC_TARGET, ENCODER_INSTANCE_AUC = 0.98, 0.95, 0.97, 0.95
BASELINES = ("avg", "max", "cls")


def load(runs: Sequence[Run]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One flat row per run, and one per run and band."""
    rows, bands = [], []
    for run in runs:
        track, method, depth = run.method.split("/")
        m = json.loads((run.out / "metrics.json").read_text())
        key = {"track": track, "method": method, "depth": int(depth), "seed": run.seed}
        w = m.get("weights", {})
        row = key | {
            "task": m["task"],
            "bag_auc": m.get("auc"),
            "accuracy": m.get("accuracy"),
            "mse": m.get("mse"),
            "mse_mean_of_tokens": m.get("mse_mean_of_tokens"),
            "r2": m.get("r2"),
            "instance_auc": w.get("instance_auc"),
            "f1": w.get("f1"),
            "f1_chance": w.get("f1_chance"),
            "rule": m["signal_rule"]["definition"],
            "best_epoch": m["best_epoch"],
            "epochs": m["epochs"],
            "cpu_seconds": m.get("train_cpu_seconds", 0.0),
            "seconds": m["train_seconds"],
        }
        rows.append(row)
        for b in m.get("bands", []):
            bands.append(
                key
                | {
                    "band": b["band"],
                    "sets": b["sets"],
                    "bag_auc": b.get("auc"),
                    "mse": b.get("mse"),
                    "mse_mean_of_tokens": b.get("mse_mean_of_tokens"),
                    "instance_auc": b["instance_auc"],
                    "f1": b["weights"]["f1"],
                    "f1_chance": b["weights"]["f1_chance"],
                    "f1_project_rule": None,
                }
            )
    return rows, bands


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def _cell(values: Sequence[float | None], digits: int = 3) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "-"
    mid = statistics.median(vals)
    if len(vals) == 1:
        return f"{mid:.{digits}f}"
    return f"{mid:.{digits}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"


def variant(method: str, depth: int) -> str:
    return f"{method} d{depth}"


class Table:
    """Runs grouped by (track, method, depth): overall and per band figures over seeds."""

    def __init__(
        self, rows: list[dict[str, Any]], bands: list[dict[str, Any]], labels: Sequence[str]
    ) -> None:
        self.rows: dict[tuple[str, str, int], list[dict[str, Any]]] = defaultdict(list)
        self.bands: dict[tuple[str, str, int, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            self.rows[(r["track"], r["method"], r["depth"])].append(r)
        for b in bands:
            self.bands[(b["track"], b["method"], b["depth"], b["band"])].append(b)
        present = {b["band"] for b in bands}
        self.band_labels = [label for label in labels if label in present]  # lowest SNR first

    def variants(self, track: str) -> list[tuple[str, int]]:
        return [(m, d) for (t, m, d) in self.rows if t == track]

    def overall(self, track: str, method: str, depth: int, field: str) -> list[Any]:
        return [r[field] for r in self.rows[(track, method, depth)]]

    def band(self, track: str, method: str, depth: int, band: str, field: str) -> list[Any]:
        return [b[field] for b in self.bands[(track, method, depth, band)]]


def _header(columns: Sequence[str]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def classification_section(table: Table, track: str, title: str) -> list[str]:
    labels = table.band_labels
    out = [
        f"## {title}",
        "",
        "Bag AUC overall and per SNR band (positives of the band against "
        "every negative bag), accuracy, and the weights' instance AUC (chance 0.5):",
        "",
    ]
    out += _header(["variant", "bag AUC", *labels, "accuracy", "instance AUC"])
    for method, depth in table.variants(track):
        out.append(
            f"| {variant(method, depth)} | "
            + " | ".join(
                [_cell(table.overall(track, method, depth, "bag_auc"))]
                + [_cell(table.band(track, method, depth, b, "bag_auc")) for b in labels]
                + [_cell(table.overall(track, method, depth, "accuracy"))]
                + [_cell(table.overall(track, method, depth, "instance_auc"))]
            )
            + " |"
        )
    return [*out, ""]


def weights_section(table: Table, track: str) -> list[str]:
    labels = table.band_labels
    first = table.variants(track)[0]
    out = [
        "## The weights against the true '9's, per SNR band (bag-label models)",
        "",
        "Instance AUC (rule-free, chance 0.5) / signal-set F1 under each model's own rule "
        "(chosen on its validation split); the chance row is the all-tokens estimate's F1.",
        "",
        *_header(["variant", *labels, "rule (most seeds)"]),
        "| chance F1 | "
        + " | ".join(_cell(table.band(track, *first, b, "f1_chance")) for b in labels)
        + " | |",
    ]
    for method, depth in table.variants(track):
        rules = Counter(table.overall(track, method, depth, "rule")).most_common(1)[0][0]
        cells = [
            f"{_cell(table.band(track, method, depth, b, 'instance_auc'), 2)} / "
            f"{_cell(table.band(track, method, depth, b, 'f1'), 2)}"
            for b in labels
        ]
        out.append(f"| {variant(method, depth)} | " + " | ".join(cells) + f" | {rules} |")
    return [*out, ""]


def regression_section(table: Table, track: str) -> list[str]:
    labels = table.band_labels
    first = table.variants(track)[0]
    out = [
        "## Signal loss: the centroid of the '9's (positive bags), per SNR band",
        "",
        "Test MSE of the predicted centroid (64 pixels in [0, 1]); the baseline row predicts "
        "the mean of all the bag's images (AvgPool's optimum).",
        "",
        *_header(["variant", "MSE", *labels, "instance AUC"]),
        "| mean of the bag | "
        + " | ".join(
            [_cell(table.overall(track, *first, "mse_mean_of_tokens"), 4)]
            + [_cell(table.band(track, *first, b, "mse_mean_of_tokens"), 4) for b in labels]
        )
        + " | |",
    ]
    for method, depth in table.variants(track):
        out.append(
            f"| {variant(method, depth)} | "
            + " | ".join(
                [_cell(table.overall(track, method, depth, "mse"), 4)]
                + [_cell(table.band(track, method, depth, b, "mse"), 4) for b in labels]
                + [_cell(table.overall(track, method, depth, "instance_auc"))]
            )
            + " |"
        )
    return [*out, ""]


def checks(table: Table, preset: Preset, classification: str, few: str | None) -> list[str]:
    """The issue's targets, each with its figure."""
    study = preset.study
    method, depth = study.default_variant, study.default_depth
    labels = table.band_labels

    def med(values: list[Any]) -> float:
        value = _median(values)
        return float("nan") if value is None else value

    def line(text: str, value: float, target: float) -> str:
        verdict = "met" if value >= target else "**not met**"
        return f"- {text}: {value:.3f} (target >= {target}): {verdict}"

    out = [f"## Targets: `{variant(method, depth)}` (median over seeds)", ""]
    out.append(
        line(
            "bag AUC overall",
            med(table.overall(classification, method, depth, "bag_auc")),
            AUC_TARGET,
        )
    )
    out.append(
        line(
            f"bag AUC in {labels[0]}",
            med(table.band(classification, method, depth, labels[0], "bag_auc")),
            LOW_BAND_AUC_TARGET,
        )
    )
    out.append(
        line(
            "instance AUC",
            med(table.overall(classification, method, depth, "instance_auc")),
            INSTANCE_AUC_TARGET,
        )
    )
    for label, target in zip(labels, F1_TARGETS, strict=False):
        out.append(
            line(
                f"signal-set F1 in {label} (own rule)",
                med(table.band(classification, method, depth, label, "f1")),
                target,
            )
        )
    deep = [
        (m, d, med(table.overall(classification, m, d, "instance_auc")))
        for m, d in table.variants(classification)
        if m.startswith("adapool") and d >= 1
    ]
    best = max(deep, key=lambda t: t[2])
    out.append(
        line(
            f"best AdaPool with an encoder, instance AUC ({variant(best[0], best[1])})",
            best[2],
            ENCODER_INSTANCE_AUC,
        )
    )
    if few is not None:
        out += ["", f"Few bags (`{few}`), bag AUC in {labels[0]}, per depth:", ""]
        for d in study.depths:
            ours = [
                (m, med(table.band(few, m, d, labels[0], "bag_auc")))
                for m, dd in table.variants(few)
                if dd == d and m.startswith("adapool")
            ]
            theirs = [
                (m, med(table.band(few, m, d, labels[0], "bag_auc")))
                for m, dd in table.variants(few)
                if dd == d and m in BASELINES
            ]
            if not ours or not theirs:
                continue
            top = max(ours, key=lambda t: t[1])
            rival = max(theirs, key=lambda t: t[1])
            verdict = "above" if top[1] > rival[1] else "**not above**"
            out.append(
                f"- depth {d}: best AdaPool {top[0]} {top[1]:.3f}, best of AvgPool/MaxPool/"
                f"ClsToken {rival[0]} {rival[1]:.3f}: {verdict}"
            )
    return [*out, ""]


def _csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot(table: Table, preset: Preset, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        (
            name,
            field,
            f"{name}: {'bag AUC' if track.task == 'classification' else 'signal loss (MSE)'}",
        )
        for name, track in preset.tracks.items()
        for field in (("bag_auc",) if track.task == "classification" else ("mse",))
    ]
    classification = next(n for n, t in preset.tracks.items() if t.task == "classification")
    panels.append(
        (classification, "instance_auc", f"{classification}: instance AUC of the weights")
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5))
    methods = list(preset.methods)
    colours = {m: plt.get_cmap("tab10")(i) for i, m in enumerate(methods)}
    styles = {0: ":", 1: "--", 2: "-"}
    x = range(len(table.band_labels))
    for ax, (track, field, title) in zip(axes, panels, strict=True):
        for method, depth in table.variants(track):
            y = [_median(table.band(track, method, depth, b, field)) for b in table.band_labels]
            ax.plot(
                x,
                [float("nan") if v is None else v for v in y],
                marker="o",
                color=colours[method],
                linestyle=styles.get(depth, "-"),
                label=variant(method, depth),
            )
        ax.set_xticks(list(x), table.band_labels, fontsize=8)
        ax.set_xlabel("SNR band (k/n)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if field == "mse":
            ax.set_yscale("log")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle("Digits bags (scikit-learn digits): median over seeds; line style = encoder depth")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    preset: Preset, runs: Sequence[Run], results: Path, provenance: dict[str, Any]
) -> None:
    results.mkdir(parents=True, exist_ok=True)
    rows, bands = load(runs)
    table = Table(rows, bands, SNRBands(preset.snr_band_edges).labels)
    tracks = preset.tracks
    classification = [n for n, t in tracks.items() if t.task == "classification"]
    regression = [n for n, t in tracks.items() if t.task == "regression"]
    main_track = classification[0]
    few = classification[1] if len(classification) > 1 else None
    meta = {
        **provenance,
        "git": git_commit(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, shared with other engineers' work while it ran",
        "runs": len(rows),
        "train_cpu_minutes": sum(r["cpu_seconds"] for r in rows) / 60,
        "train_minutes": sum(r["seconds"] for r in rows) / 60,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    dirty = " (uncommitted changes)" if meta["git"]["dirty"] else ""
    lines = [
        f"# Digits bags: preset `{meta['preset']}`",
        "",
        f"Command: `{meta['command']}`  ",
        f"Git commit: `{meta['git']['commit']}`{dirty}  ",
        f"{meta['runs']} runs, {meta['train_cpu_minutes']:.0f} CPU min of training "
        f"({meta['train_minutes']:.0f} min wall, summed); machine: {meta['machine']}.",
        "",
        *checks(table, preset, main_track, few),
    ]
    for name in classification:
        regime = preset.regimes[tracks[name].regime]
        lines += classification_section(
            table,
            name,
            f"Bag label, `{name}`: {regime.bags[0]:,} training bags, "
            f"{regime.epochs} epochs of batch {regime.batch_size}",
        )
    lines += weights_section(table, main_track)
    for name in regression:
        lines += regression_section(table, name)
    (results / "summary.md").write_text("\n".join(lines) + "\n")
    _csv(results / "runs.csv", rows)
    _csv(results / "bands.csv", bands)
    write_json(results / "meta.json", meta)
    plot(table, preset, results / "digits_bags.png")
