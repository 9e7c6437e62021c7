"""The reproduction sweep: five pooling methods x k x seeds on kNN-Centroid, resumable.

    python -m models.sweep --preset configs/sweep/cpu.toml
    python -m models.sweep --preset configs/sweep/gpu10.toml --stack 8   # 8 models per pass

A preset TOML holds a ``[sweep]`` table (methods, ks, seeds, workers, stack) and a ``[base]``
run config (``[base.model]``, ``[base.data]``, ``[base.train]``). Every (method, k, seed) becomes
one run directory under ``runs/sweep-<name>/``; a run with ``metrics.json`` is skipped, a run
with a saved state resumes. When all runs are done, :mod:`models.report` writes the results folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models import report
from models.config import (
    ConfigError,
    PoolingConfig,
    RunConfig,
    from_dict,
    load_toml,
    require,
)
from models.stacked import train_stacked
from models.train import train

# The five methods of the paper's comparison, by the names used in results.
METHODS: dict[str, PoolingConfig] = {
    "avg": PoolingConfig(method="avg"),
    "max": PoolingConfig(method="max"),
    "cls": PoolingConfig(method="cls"),
    "adapool-ego": PoolingConfig(method="adapool", query="token", query_index=0),
    "adapool-mean": PoolingConfig(method="adapool", query="mean"),
}
PAPER_KS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass(frozen=True)
class SweepConfig:
    """What to sweep.

    Attributes:
        name: the preset's name; runs go to ``runs/sweep-<name>``, results to ``results/<name>``.
        methods: names from :data:`METHODS`.
        ks: signal counts (SNR = k / num_vectors).
        seeds: each seed s trains with ``train.seed = s`` on data seeded ``data.seed + s``.
        workers: runs trained in parallel (processes).
        threads_per_worker: torch threads in each worker.
        stack: 0 trains each run on its own; S > 0 trains up to S runs of one method at once,
            their weights stacked (:mod:`models.stacked`), one group per worker. Meant for a
            GPU, where one pass replaces S small ones (not yet measured there); on this
            project's 2-core CPU a stack of 8 ran 0.66-0.80x the model-steps/s of one run per
            process (``python -m bench.stacked``), so the CPU presets leave it at 0.
    """

    name: str = "cpu"
    methods: tuple[str, ...] = tuple(METHODS)
    ks: tuple[int, ...] = PAPER_KS
    seeds: tuple[int, ...] = (0,)
    workers: int = 1
    threads_per_worker: int = 0
    stack: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        require(not unknown, f"sweep.methods: unknown {unknown}; known: {list(METHODS)}")
        require(len(self.methods) > 0 and len(self.ks) > 0, "sweep needs methods and ks")
        require(len(self.seeds) > 0 and min(self.seeds) >= 0, "sweep.seeds must be >= 0")
        require(self.workers >= 1, "sweep.workers must be >= 1")
        require(self.threads_per_worker >= 0, "sweep.threads_per_worker must be >= 0")
        require(self.stack >= 0, "sweep.stack must be >= 0")
        require(self.name.replace("-", "").replace("_", "").isalnum(), "sweep.name: letters")


@dataclass(frozen=True)
class Preset:
    """A sweep and the run config every run starts from."""

    sweep: SweepConfig = field(default_factory=SweepConfig)
    base: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class Run:
    method: str
    k: int
    seed: int
    config: RunConfig
    out: Path


def load_preset(path: str | Path) -> Preset:
    return from_dict(Preset, load_toml(path))


def make_run(preset: Preset, method: str, k: int, seed: int, runs_root: Path) -> Run:
    """One run of the preset: its base config with this method, k and seed."""
    base = preset.base
    config = RunConfig(
        model=dataclasses.replace(base.model, pooling=METHODS[method]),
        data=dataclasses.replace(base.data, k=k, seed=base.data.seed + seed),
        train=dataclasses.replace(base.train, seed=seed, threads=preset.sweep.threads_per_worker),
    )
    return Run(method, k, seed, config, runs_root / f"{method}-k{k}-seed{seed}")


def expand(preset: Preset, runs_root: Path) -> list[Run]:
    """Every (method, k, seed) of the preset as a run with its own config and directory."""
    return [
        make_run(preset, method, k, seed, runs_root)
        for seed in preset.sweep.seeds
        for k in preset.sweep.ks
        for method in preset.sweep.methods
    ]


def _run_one(run: Run) -> tuple[str, float]:
    """Train one run (resuming if it was interrupted); returns its name and seconds taken."""
    started = time.perf_counter()
    train(run.config, run.out, resume=True, progress=False)
    return run.out.name, time.perf_counter() - started


def _run_group(runs: Sequence[Run]) -> tuple[str, float]:
    """Train runs of one method as one stack; returns their names and the seconds taken."""
    started = time.perf_counter()
    train_stacked([r.config for r in runs], [r.out for r in runs], progress=False)
    return " ".join(r.out.name for r in runs), time.perf_counter() - started


def stack_groups(runs: Sequence[Run], size: int) -> list[list[Run]]:
    """The runs in groups of at most ``size`` that share a method, in the runs' order."""
    by_method: dict[str, list[Run]] = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    return [
        group[start : start + size]
        for group in by_method.values()
        for start in range(0, len(group), size)
    ]


def study_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """The command line every study shares (``models.signature_study``,
    ``models.digits_study``): a preset, where runs and results go, workers, report only."""
    parser = argparse.ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0])
    parser.add_argument("--preset", required=True, type=Path)
    parser.add_argument("--runs", type=Path, help="run directories (default runs/<name>)")
    parser.add_argument("--results", type=Path, help="results folder (default results/<name>)")
    parser.add_argument("--workers", type=int, help="parallel runs (overrides study.workers)")
    parser.add_argument("--report-only", action="store_true")
    return parser


def train_all(runs: Sequence[Run], workers: int, title: str, stack: int = 0) -> None:
    """Train every run not yet finished (``metrics.json`` missing), ``workers`` at a time;
    with ``stack`` > 0, in stacks of up to that many runs of one method (:func:`stack_groups`).
    A stack interrupted part-way trains again from its first epoch."""
    todo = [r for r in runs if not (r.out / "metrics.json").exists()]
    print(f"{title}: {len(runs)} runs, {len(runs) - len(todo)} done", flush=True)
    started = time.perf_counter()
    jobs: list[Any] = stack_groups(todo, stack) if stack else todo
    train_job: Any = _run_group if stack else _run_one
    if workers == 1:
        results = map(train_job, jobs)
        for i, (name, seconds) in enumerate(results, 1):
            print(f"[{i}/{len(jobs)}] {name} {seconds:.0f}s", flush=True)
    else:
        # Fresh interpreters: no torch thread pools or state shared with the parent.
        with multiprocessing.get_context("spawn").Pool(workers, maxtasksperchild=1) as pool:
            for i, (name, seconds) in enumerate(pool.imap_unordered(train_job, jobs), 1):
                print(f"[{i}/{len(jobs)}] {name} {seconds:.0f}s", flush=True)
    print(f"trained {len(todo)} runs in {time.perf_counter() - started:.0f}s", flush=True)


def run_sweep(
    preset: Preset, runs_root: Path, workers: int | None = None, stack: int | None = None
) -> list[Run]:
    """Train every run not yet finished, ``workers`` at a time (``stack``: see
    :class:`SweepConfig`; None takes the preset's). Returns all runs."""
    runs = expand(preset, runs_root)
    stack = preset.sweep.stack if stack is None else stack
    train_all(runs, workers or preset.sweep.workers, f"sweep {preset.sweep.name}", stack)
    return runs


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.sweep", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--preset", required=True, type=Path, help="sweep preset TOML")
    parser.add_argument("--runs", type=Path, help="run directories (default runs/sweep-<name>)")
    parser.add_argument("--results", type=Path, help="results folder (default results/<name>)")
    parser.add_argument("--workers", type=int, help="parallel runs (overrides sweep.workers)")
    parser.add_argument(
        "--stack",
        type=int,
        help="train up to this many runs of one method at once, weights stacked "
        "(models.stacked; overrides sweep.stack; 0 = one at a time)",
    )
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite the results from finished runs"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        preset = load_preset(args.preset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs or Path("runs") / f"sweep-{preset.sweep.name}"
    results = args.results or Path("results") / preset.sweep.name
    started = time.time()
    if args.report_only:
        runs = expand(preset, runs_root)
    else:
        runs = run_sweep(preset, runs_root, args.workers, args.stack)
    missing = [r.out.name for r in runs if not (r.out / "metrics.json").exists()]
    if missing:
        print(f"error: unfinished runs: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = "python -m models.sweep " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    provenance: dict[str, Any] = {
        "command": command,
        "preset": str(args.preset),
        "started": started,
        "torch": torch.__version__,
    }
    report.write_results(
        [(r.method, r.k, r.seed, r.out) for r in runs], preset.base, results, provenance
    )
    print(f"wrote {results}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
