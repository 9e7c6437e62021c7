"""Train (or reuse) and export the default models: ``make models``.

    python -m export.defaults [--spec configs/default_models.toml] [--runs DIR]

Reads the spec, trains each model's run with the sweep preset's config at the spec's k and
seed (skipped when the run already finished: training is deterministic on CPU), then exports
every model as version ``version`` into the repository. A version already in the repository is
kept when its source checkpoint is byte-identical to the run's, and is an error otherwise.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from export.cli import export_run
from export.repository import CHECKPOINT_DIR, RepositoryError, sha256_file, version_dir
from models.checkpoint import BEST_FILE
from models.config import ConfigError, from_dict, load_toml, require
from models.sweep import METHODS, load_preset, make_run
from models.train import train


@dataclass(frozen=True)
class DefaultModels:
    preset: str = "configs/sweep/cpu.toml"
    k: int = 8
    seed: int = 0
    version: int = 1
    repository: str = "model_repository"
    models: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        require(len(self.models) > 0, "models: name at least one model")
        unknown = sorted(set(self.models.values()) - set(METHODS))
        require(not unknown, f"models: unknown methods {unknown}; known: {list(METHODS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.defaults", description=__doc__)
    parser.add_argument("--spec", type=Path, default=Path("configs/default_models.toml"))
    parser.add_argument("--runs", type=Path, help="run directories (default: the sweep's)")
    args = parser.parse_args(argv)
    try:
        spec = from_dict(DefaultModels, load_toml(args.spec))
        preset = load_preset(spec.preset)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs_root = args.runs or Path("runs") / f"sweep-{preset.sweep.name}"
    command = "python -m export.defaults " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    repository = Path(spec.repository)
    repository.mkdir(parents=True, exist_ok=True)
    for name, method in spec.models.items():
        run = make_run(preset, method, spec.k, spec.seed, runs_root)
        if not (run.out / "metrics.json").exists():
            print(f"training {name} ({run.out})", flush=True)
            train(run.config, run.out, resume=True, progress=False)
        target = version_dir(repository, name, spec.version)
        if target.exists():
            same = sha256_file(target / CHECKPOINT_DIR / BEST_FILE) == sha256_file(
                run.out / BEST_FILE
            )
            if not same:
                print(f"error: {target} holds another checkpoint than {run.out}", file=sys.stderr)
                return 1
            print(f"{name}/{spec.version}: up to date")
            continue
        try:
            export_run(run.out, name, spec.version, repository, command.strip())
        except RepositoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"{name}/{spec.version}: exported from {run.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
