"""The Signature study: which pooling finds the signal, and which rule reads it off the weights.

    python -m models.signature_study --preset configs/signature/cpu.toml [--workers 2]
        [--runs DIR] [--results DIR] [--report-only]

A preset holds ``[study]`` (name, seeds, workers, the default variant), ``[base]`` (a run config
on the ``signature`` task) and ``[variants.<name>]`` tables, each a partial run config merged
over the base (for example ``[variants.adapool-mean-d0.model] depth = 0``). Every (variant,
seed) trains once across the whole SNR range (resumable, as the sweep). Then, on held-out data:

1. The signal-set rule is chosen by measurement: every rule of ``models.metrics.NAMED_RULES``
   is scored on the **validation** split of the default variant, per SNR band; the rule that
   meets the most of the requirements below, then has the highest mean F1 over the bands, wins.
   The project's rule (``SIGNAL_RULE_NAME``) must be that rule: the report says if it is not.
2. Every variant is scored on the **test** split per SNR band: signal loss beside AvgPool's and
   the mean-of-all baseline, weight mass on the signal (chance k/n), F1 of the estimated signal
   set under the project's rule (chance: the all-tokens estimate, 2k/(k+n)).
3. The requirements for the default variant, checked on the test split: F1 >= 0.8 for SNR 1/8
   to 1/2; F1 >= 2x chance for SNR 1/32 to 1/4; F1 >= chance at SNR 1; signal loss below
   AvgPool's and MaxPool's in every band.

Writes ``bands.csv``, ``rules.csv``, ``summary.md``, ``signature.png`` and ``meta.json``.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.checkpoint import load_model, write_json
from models.config import ConfigError, RunConfig, from_dict, load_toml, require, to_dict
from models.metrics import (
    NAMED_RULES,
    SIGNAL_RULE_NAME,
    SNR_BANDS,
    signal_loss,
    snr_band_label,
    trivial_baselines,
    weight_quality,
)
from models.report import git_commit
from models.sweep import Run, study_parser, train_all
from models.tasks import make_data
from models.train import predict

F1_BANDS = (-3, -2, -1)  # SNR 1/8 .. 1/2: F1 >= 0.8
TWICE_CHANCE_BANDS = (-5, -4, -3, -2)  # SNR 1/32 .. 1/4: F1 >= 2x the all-tokens F1
AT_LEAST_CHANCE_BANDS = (0,)  # SNR 1: F1 >= the all-tokens F1


@dataclass(frozen=True)
class StudyConfig:
    """Attributes:
    name: runs go to ``runs/<name>``, results to ``results/<name>``.
    seeds: each seed s trains with ``train.seed = s`` (the data stay the same).
    workers, threads_per_worker: parallel training processes and torch threads in each.
    default_variant: the variant the service ships; the signal rule is chosen on it.
    """

    name: str = "signature-cpu"
    seeds: tuple[int, ...] = (0,)
    workers: int = 1
    threads_per_worker: int = 0
    default_variant: str = "adapool-mean"

    def __post_init__(self) -> None:
        require(len(self.seeds) > 0 and min(self.seeds) >= 0, "study.seeds must be >= 0")
        require(self.workers >= 1, "study.workers must be >= 1")


@dataclass(frozen=True)
class Study:
    study: StudyConfig
    base: RunConfig
    variants: dict[str, RunConfig] = field(default_factory=dict)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_study(path: str | Path) -> Study:
    raw = load_toml(path)
    variants = raw.pop("variants", {})
    head = from_dict(Study, raw)
    require(head.base.data.task == "signature", "base.data.task must be 'signature'")
    require(len(variants) > 0, "the study needs [variants.<name>] tables")
    base = to_dict(head.base)
    configs = {
        name: from_dict(RunConfig, _merge(base, override), f"variants.{name}")
        for name, override in variants.items()
    }
    require(
        head.study.default_variant in configs,
        f"study.default_variant {head.study.default_variant!r} is not a variant",
    )
    require(all(c.data == head.base.data for c in configs.values()), "variants share the data")
    return Study(head.study, head.base, configs)


def expand(study: Study, runs_root: Path) -> list[Run]:
    """Every (variant, seed) as a run; one seed keeps plain variant names as run folders."""
    runs = []
    for seed in study.study.seeds:
        for name, config in study.variants.items():
            train = dataclasses.replace(
                config.train, seed=seed, threads=study.study.threads_per_worker
            )
            out = runs_root / (name if len(study.study.seeds) == 1 else f"{name}-seed{seed}")
            runs.append(Run(name, 0, seed, dataclasses.replace(config, train=train), out))
    return runs


# --- scoring ------------------------------------------------------------------------------------


def band_of(signal_mask: np.ndarray, mask: np.ndarray) -> np.ndarray:
    snr = signal_mask.sum(axis=1) / mask.sum(axis=1)
    bands: np.ndarray = np.clip(np.rint(np.log2(snr)), SNR_BANDS[0], SNR_BANDS[-1]).astype(int)
    return bands


def requirements(f1: dict[int, float], chance: dict[int, float]) -> dict[str, bool]:
    return {
        "F1 >= 0.8 at SNR 1/8-1/2": all(f1[b] >= 0.8 for b in F1_BANDS),
        "F1 >= 2x chance at SNR 1/32-1/4": all(f1[b] >= 2 * chance[b] for b in TWICE_CHANCE_BANDS),
        "F1 >= chance at SNR 1": all(f1[b] >= chance[b] for b in AT_LEAST_CHANCE_BANDS),
    }


def score_rules(weights: np.ndarray, mask: np.ndarray, signal: np.ndarray) -> list[dict[str, Any]]:
    """F1 of every rule per band (one row per rule and band)."""
    bands = band_of(signal, mask)
    rows = []
    for rule, definition in NAMED_RULES.items():
        for band in SNR_BANDS:
            sel = bands == band
            q = weight_quality(weights[sel], mask[sel], signal[sel], definition)
            rows.append(
                {
                    "rule": rule,
                    "band": snr_band_label(band),
                    "log2_snr": band,
                    "f1": q.f1,
                    "f1_chance": q.f1_chance,
                    "precision": q.precision,
                    "recall": q.recall,
                }
            )
    return rows


def choose_rule(rows: Sequence[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """The rule meeting the most requirements, then with the highest mean F1 over bands."""
    table = {}
    for rule in NAMED_RULES:
        f1 = {r["log2_snr"]: r["f1"] for r in rows if r["rule"] == rule}
        chance = {r["log2_snr"]: r["f1_chance"] for r in rows if r["rule"] == rule}
        met = requirements(f1, chance)
        table[rule] = {"met": sum(met.values()), "mean_f1": float(np.mean(list(f1.values())))}
    best = max(table, key=lambda r: (table[r]["met"], table[r]["mean_f1"]))
    return best, table


def score_variant(
    name: str,
    pooled: np.ndarray,
    weights: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    mask: np.ndarray,
    signal: np.ndarray,
) -> list[dict[str, Any]]:
    bands = band_of(signal, mask)
    rows = []
    for band in SNR_BANDS:
        sel = bands == band
        q = weight_quality(weights[sel], mask[sel], signal[sel])
        rows.append(
            {
                "variant": name,
                "band": snr_band_label(band),
                "log2_snr": band,
                "samples": int(sel.sum()),
                "signal_loss": signal_loss(pooled[sel], y[sel]),
                "mean_of_all_loss": trivial_baselines(x[sel], y[sel], mask[sel])[
                    "predict_mean_of_all"
                ],
                "signal_mass": q.signal_mass,
                "signal_mass_chance": q.signal_mass_chance,
                "precision": q.precision,
                "recall": q.recall,
                "f1": q.f1,
                "f1_chance": q.f1_chance,
            }
        )
    return rows


# --- report -------------------------------------------------------------------------------------


def _csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _fmt(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 0.01 else f"{v:.3f}"


def markdown(
    study: Study, rows: list[dict[str, Any]], rules: list[dict[str, Any]], meta: dict[str, Any]
) -> str:
    variants = list(study.variants)
    bands = [snr_band_label(b) for b in SNR_BANDS]
    by = {(r["variant"], r["band"]): r for r in rows}
    default = study.study.default_variant
    dirty = " (uncommitted changes)" if meta["git"]["dirty"] else ""
    first = variants[0]
    out = [
        f"# Signature task: preset `{meta['preset']}`",
        "",
        f"Command: `{meta['command']}`  ",
        f"Git commit: `{meta['git']['commit']}`{dirty}  ",
        f"Training: {meta['train_minutes']:.0f} min summed over {len(rows) // len(SNR_BANDS)} "
        f"runs; test split {meta['test_samples']:,} samples.",
        "",
        "## Test signal loss per SNR band (MSE against the signal centroid)",
        "",
        "| variant | " + " | ".join(bands) + " |",
        "|---|" + "---|" * len(bands),
    ]
    for v in variants:
        cells = []
        for b in bands:
            loss = by[(v, b)]["signal_loss"]
            best = loss == min(by[(w, b)]["signal_loss"] for w in variants)
            cells.append(f"**{_fmt(loss)}**" if best else _fmt(loss))
        out.append(f"| {v} | " + " | ".join(cells) + " |")
    out.append(
        "| mean of all tokens | "
        + " | ".join(_fmt(by[(variants[0], b)]["mean_of_all_loss"]) for b in bands)
        + " |"
    )
    out.append(
        "| samples | " + " | ".join(str(by[(variants[0], b)]["samples"]) for b in bands) + " |"
    )
    out += [
        "",
        f"## Weights: F1 of the estimated signal set, rule `{SIGNAL_RULE_NAME}` "
        f"({NAMED_RULES[SIGNAL_RULE_NAME].definition})",
        "",
        "Chance: the all-tokens estimate, F1 = 2k/(k+n). Signal mass in brackets (chance k/n).",
        "",
        "| variant | " + " | ".join(bands) + " |",
        "|---|" + "---|" * len(bands),
        "| chance | "
        + " | ".join(
            f"{by[(first, b)]['f1_chance']:.3f} ({by[(first, b)]['signal_mass_chance']:.3f})"
            for b in bands
        )
        + " |",
    ]
    for v in variants:
        out.append(
            f"| {v} | "
            + " | ".join(f"{by[(v, b)]['f1']:.3f} ({by[(v, b)]['signal_mass']:.3f})" for b in bands)
            + " |"
        )
    out += [
        "",
        f"## Choosing the signal-set rule (validation split, `{default}`)",
        "",
        "| rule | definition | " + " | ".join(bands) + " | mean | requirements met |",
        "|---|---|" + "---|" * (len(bands) + 2),
    ]
    for rule, signal_rule in NAMED_RULES.items():
        definition = signal_rule.definition
        f1 = [r["f1"] for r in rules if r["rule"] == rule]
        choice = meta["rule_choice"][rule]
        name = f"**{rule}**" if rule == meta["chosen_rule"] else rule
        out.append(
            f"| {name} | {definition} | "
            + " | ".join(f"{v:.3f}" for v in f1)
            + f" | {choice['mean_f1']:.3f} | {choice['met']}/3 |"
        )
    out += [
        "",
        f"Chosen: `{meta['chosen_rule']}`; the project's rule (`models.metrics.SIGNAL_RULE_NAME`,"
        f" the service's diagnostics, the manifests): `{SIGNAL_RULE_NAME}`"
        + ("." if meta["chosen_rule"] == SIGNAL_RULE_NAME else " -- **they differ**."),
        "",
        f"## Requirements, `{default}` on the test split",
        "",
    ]
    for text, ok in meta["requirements"].items():
        out.append(f"- {text}: {'met' if ok else '**not met**'}")
    return "\n".join(out) + "\n"


def plot(study: Study, rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    snr = [2.0**b for b in SNR_BANDS]
    for v in study.variants:
        mine = sorted((r for r in rows if r["variant"] == v), key=lambda r: r["log2_snr"])
        left.plot(snr, [r["signal_loss"] for r in mine], marker="o", label=v)
        right.plot(snr, [r["f1"] for r in mine], marker="o", label=v)
    first = sorted(
        (r for r in rows if r["variant"] == next(iter(study.variants))), key=lambda r: r["log2_snr"]
    )
    left.plot(snr, [r["mean_of_all_loss"] for r in first], "k--", label="mean of all")
    right.plot(snr, [r["f1_chance"] for r in first], "k--", label="chance (all tokens)")
    for ax, title in (
        (left, "test signal loss"),
        (right, f"F1 of the signal set ({SIGNAL_RULE_NAME})"),
    ):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("SNR band (k/n)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    left.set_yscale("log")
    right.legend(fontsize=7)
    fig.suptitle("Signature task: one model per variant across all SNR")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(
    study: Study, runs: list[Run], results: Path, provenance: dict[str, Any]
) -> dict[str, Any]:
    results.mkdir(parents=True, exist_ok=True)
    data = make_data(study.base.data)
    val, test = data["val"], data["test"]
    rows: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    train_seconds = 0.0
    for run in runs:
        model, _ = load_model(run.out)
        name = run.method if len(study.study.seeds) == 1 else f"{run.method}-seed{run.seed}"
        pooled, weights = predict(model, test.x, 1024, test.mask())
        rows += score_variant(name, pooled, weights, test.x, test.y, test.mask(), test.signal_mask)
        if run.method == study.study.default_variant and run.seed == study.study.seeds[0]:
            _, val_weights = predict(model, val.x, 1024, val.mask())
            rules = score_rules(val_weights, val.mask(), val.signal_mask)
        history = run.out / "history.json"
        if history.exists():
            train_seconds += sum(h["seconds"] for h in json.loads(history.read_text()))
    chosen, table = choose_rule(rules)
    default = [r for r in rows if r["variant"] == study.study.default_variant]
    f1 = {r["log2_snr"]: r["f1"] for r in default}
    chance = {r["log2_snr"]: r["f1_chance"] for r in default}
    met = requirements(f1, chance)
    for baseline in ("avg", "max"):
        if baseline in study.variants:
            theirs = {r["log2_snr"]: r["signal_loss"] for r in rows if r["variant"] == baseline}
            met[f"signal loss below {baseline} in every band"] = all(
                r["signal_loss"] < theirs[r["log2_snr"]] for r in default
            )
    meta = {
        **provenance,
        "git": git_commit(),
        "train_minutes": train_seconds / 60,
        "test_samples": len(test.x),
        "chosen_rule": chosen,
        "project_rule": SIGNAL_RULE_NAME,
        "rule_choice": table,
        "requirements": met,
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    write_json(results / "meta.json", meta)
    _csv(results / "bands.csv", rows)
    _csv(results / "rules.csv", rules)
    (results / "summary.md").write_text(markdown(study, rows, rules, meta))
    plot(study, rows, results / "signature.png")
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    args = study_parser("python -m models.signature_study", __doc__).parse_args(argv)
    try:
        study = load_study(args.preset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs or Path("runs") / study.study.name
    runs = expand(study, runs_root)
    if not args.report_only:
        train_all(runs, args.workers or study.study.workers, f"study {study.study.name}")
    missing = [r.out.name for r in runs if not (r.out / "metrics.json").exists()]
    if missing:
        print(f"error: unfinished runs: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = "python -m models.signature_study " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    results = args.results or Path("results") / study.study.name
    provenance = {"command": command, "preset": str(args.preset), "torch": torch.__version__}
    meta = write_results(study, runs, results, provenance)
    print((results / "summary.md").read_text())
    print(f"wrote {results}; chosen rule {meta['chosen_rule']}, project rule {SIGNAL_RULE_NAME}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
