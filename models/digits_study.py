"""The digits-bags study: pooling methods on real data, the weights checked against the true '9's.

    python -m models.digits_study --preset configs/digits/cpu.toml [--workers 2] [--report-only]

A preset names the bag regimes (``[regimes.<name>]``: bags per split, epochs, batch size), the
tracks (``[tracks.<name>]``: a regime and a target, the bag label (classification) or the
centroid of the '9's (regression)), the pooling methods (``[methods.<name>]``), the encoder
depths, the seeds and a base model and training config. Seed i draws the bags (``seed = i``),
the image split (``image_seed = i``) and the training (``train.seed = i``): seeds and image
splits are paired, one run per seed. Every (track, method, depth, seed) is one run of
``models.train`` on the data set files this module writes (:mod:`models.data.digits_bags`);
runs are resumable and finished ones are skipped. Two combinations are not run: ClsToken at
depth 0 (the class token is read after the encoder) and AdaPool with values from the inputs at
depth 0 (without an encoder it is the same function as AdaPool with the same query:
``tests/models/test_heads.py``). :mod:`models.digits_report` writes the tables and the plot.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from models.config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    PoolingConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_toml,
    require,
)
from models.data.digits_bags import BagsSpec, write
from models.digits_report import write_results
from models.sweep import Run, study_parser, train_all

DATA_FILES = {"classification": "bags.npz", "regression": "centroid.npz"}


@dataclass(frozen=True)
class Regime:
    """How many bags each split holds, and how long a model trains on them."""

    bags: tuple[int, int, int] = (2000, 1000, 2000)
    epochs: int = 15
    batch_size: int = 64

    def __post_init__(self) -> None:
        require(len(self.bags) == 3 and min(self.bags) >= 1, "regime.bags: 3 counts >= 1")


@dataclass(frozen=True)
class Track:
    """One regime's bags with one target, at ``depths`` (empty: the study's depths), for
    ``epochs`` (0: the regime's)."""

    regime: str = "standard"
    task: Literal["classification", "regression"] = "classification"
    depths: tuple[int, ...] = ()
    epochs: int = 0


@dataclass(frozen=True)
class StudySettings:
    """Attributes:
    name: runs go to ``runs/<name>``, results to ``results/<name>``.
    seeds: seed i draws the bags, the image split and the training.
    depths: the encoder depths every method is run at.
    default_variant, default_depth: the candidate for the committed model.
    min_tokens, max_tokens: images per bag.
    """

    name: str = "digits-cpu"
    seeds: tuple[int, ...] = (0, 1, 2)
    depths: tuple[int, ...] = (0, 1, 2)
    workers: int = 2
    threads_per_worker: int = 1
    default_variant: str = "adapool-faithful"
    default_depth: int = 1
    min_tokens: int = 8
    max_tokens: int = 64


@dataclass(frozen=True)
class Preset:
    study: StudySettings = field(default_factory=StudySettings)
    regimes: dict[str, Regime] = field(default_factory=dict)
    tracks: dict[str, Track] = field(default_factory=dict)
    methods: dict[str, PoolingConfig] = field(default_factory=dict)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    snr_band_edges: tuple[float, ...] = (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0)

    def __post_init__(self) -> None:
        require(bool(self.tracks) and bool(self.methods), "the preset needs tracks and methods")
        for name, track in self.tracks.items():
            require(track.regime in self.regimes, f"tracks.{name}.regime: no such regime")
        require(self.study.default_variant in self.methods, "study.default_variant is no method")


def load_preset(path: str | Path) -> Preset:
    return from_dict(Preset, load_toml(path))


def skipped(pooling: PoolingConfig, depth: int) -> str | None:
    """Why a (method, depth) is not run, or None."""
    if pooling.method == "cls" and depth == 0:
        return "ClsToken needs an encoder"
    if pooling.values == "inputs" and depth == 0:
        return "the same function as AdaPool with values from the encoder at depth 0"
    return None


def data_dir(runs_root: Path, regime: str, seed: int) -> Path:
    return runs_root / "data" / f"{regime}-seed{seed}"


def expand(preset: Preset, runs_root: Path) -> list[Run]:
    """Every (track, method, depth, seed) that is run, as a run of ``models.train``."""
    runs = []
    study = preset.study
    for track_name, track in preset.tracks.items():
        regime = preset.regimes[track.regime]
        for seed in study.seeds:
            path = data_dir(runs_root, track.regime, seed) / DATA_FILES[track.task]
            for method, pooling in preset.methods.items():
                for depth in track.depths or study.depths:
                    if skipped(pooling, depth):
                        continue
                    config = RunConfig(
                        model=dataclasses.replace(preset.model, depth=depth, pooling=pooling),
                        data=DataConfig(
                            task=track.task,
                            path=str(path),
                            seed=seed,
                            snr_band_edges=preset.snr_band_edges,
                        ),
                        train=dataclasses.replace(
                            preset.train,
                            seed=seed,
                            epochs=track.epochs or regime.epochs,
                            batch_size=regime.batch_size,
                            threads=study.threads_per_worker,
                        ),
                    )
                    out = runs_root / track_name / f"{method}-d{depth}-seed{seed}"
                    runs.append(Run(f"{track_name}/{method}/{depth}", depth, seed, config, out))
    return runs


def write_data(preset: Preset, runs_root: Path) -> None:
    """The bag files of every (regime, seed) the tracks use (skipped when present)."""
    study = preset.study
    for regime_name in sorted({t.regime for t in preset.tracks.values()}):
        regime = preset.regimes[regime_name]
        for seed in study.seeds:
            folder = data_dir(runs_root, regime_name, seed)
            if all((folder / f).exists() for f in DATA_FILES.values()):
                continue
            spec = BagsSpec(
                bags=regime.bags,
                min_tokens=study.min_tokens,
                max_tokens=study.max_tokens,
                seed=seed,
                image_seed=seed,
            )
            write(spec, folder)
            print(f"wrote {folder}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = study_parser("python -m models.digits_study", __doc__).parse_args(argv)
    try:
        preset = load_preset(args.preset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs or Path("runs") / preset.study.name
    runs = expand(preset, runs_root)
    if not args.report_only:
        write_data(preset, runs_root)
        train_all(runs, args.workers or preset.study.workers, f"study {preset.study.name}")
    missing = [str(r.out) for r in runs if not (r.out / "metrics.json").exists()]
    if missing:
        print(f"error: unfinished runs: {', '.join(missing)}", file=sys.stderr)
        return 1
    command = "python -m models.digits_study " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    results = args.results or Path("results") / preset.study.name
    provenance: dict[str, Any] = {
        "command": command,
        "preset": str(args.preset),
        "torch": torch.__version__,
    }
    write_results(preset, runs, results, provenance)
    print((results / "summary.md").read_text())
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
