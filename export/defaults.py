"""Train (or reuse) and export the default models: ``make models``.

    python -m export.defaults [--spec configs/default_models.toml] [--runs DIR]

Reads the spec, trains each model's run with the sweep preset's config at the spec's k and
seed (skipped when the run already finished: training is deterministic on CPU), then exports
every model as version ``version`` into the repository. The spec's ``[signature]`` table adds
the service's default model: one variant of the Signature study (``models.signature_study``),
trained and exported the same way; its ``[digits]`` table the default classification model, one
run of the digits-bags study (``models.digits_study``; its bags are written first if missing).
A version already in the repository is kept when its source checkpoint is byte-identical to the
run's, and is an error otherwise.
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
from models import digits_study
from models.checkpoint import BEST_FILE, read_json
from models.config import ConfigError, from_dict, load_toml, require
from models.metrics import SIGNAL_RULE
from models.signature_study import expand, load_study
from models.sweep import METHODS, Run, load_preset, make_run
from models.train import rescore, train


@dataclass(frozen=True)
class SignatureModel:
    """One variant of the Signature study, exported as ``name``."""

    name: str = "signature-adapool"
    study: str = "configs/signature/cpu.toml"
    variant: str = "adapool-mean"
    seed: int = 0
    version: int = 1


@dataclass(frozen=True)
class DigitsModel:
    """One run of the digits-bags study, exported as ``name``."""

    name: str = "digits-bags-adapool"
    study: str = "configs/digits/cpu.toml"
    track: str = "bags"
    method: str = "adapool-faithful"
    depth: int = 2
    seed: int = 0
    version: int = 1


@dataclass(frozen=True)
class DefaultModels:
    preset: str = "configs/sweep/cpu.toml"
    k: int = 8
    seed: int = 0
    version: int = 1
    repository: str = "model_repository"
    models: dict[str, str] = field(default_factory=dict)
    signature: SignatureModel | None = None
    digits: DigitsModel | None = None

    def __post_init__(self) -> None:
        require(len(self.models) > 0, "models: name at least one model")
        unknown = sorted(set(self.models.values()) - set(METHODS))
        require(not unknown, f"models: unknown methods {unknown}; known: {list(METHODS)}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.defaults", description=__doc__)
    parser.add_argument("--spec", type=Path, default=Path("configs/default_models.toml"))
    parser.add_argument("--runs", type=Path, help="run directories (default: the sweep's)")
    parser.add_argument(
        "--only", action="append", metavar="NAME", help="only this model (repeatable)"
    )
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
    jobs: list[tuple[str, int, Run]] = [
        (name, spec.version, make_run(preset, method, spec.k, spec.seed, runs_root))
        for name, method in spec.models.items()
    ]
    if spec.signature is not None:
        sig = spec.signature
        study = load_study(sig.study)
        runs = expand(study, Path("runs") / study.study.name)
        chosen = [r for r in runs if r.method == sig.variant and r.seed == sig.seed]
        if not chosen:
            print(f"error: {sig.study} has no variant {sig.variant!r}, seed {sig.seed}")
            return 2
        jobs.append((sig.name, sig.version, chosen[0]))
    if spec.digits is not None:
        job = _digits_job(spec.digits)
        if job is None:
            print(f"error: {spec.digits.study} has no run {spec.digits}", file=sys.stderr)
            return 2
        jobs.append(job)
    unknown = set(args.only or ()) - {name for name, _, _ in jobs}
    if unknown:
        print(f"error: --only names no model of the spec: {sorted(unknown)}", file=sys.stderr)
        return 2
    for name, version, run in jobs:
        if args.only and name not in args.only:
            continue
        code = _train_and_export(name, version, run, repository, command.strip())
        if code:
            return code
    return 0


def _digits_job(spec: DigitsModel) -> tuple[str, int, Run] | None:
    """The digits model's run of its study, its bags written if they are missing."""
    preset = digits_study.load_preset(spec.study)
    runs_root = Path("runs") / preset.study.name
    wanted = f"{spec.track}/{spec.method}/{spec.depth}"
    chosen = [
        r
        for r in digits_study.expand(preset, runs_root)
        if r.method == wanted and r.seed == spec.seed
    ]
    if not chosen:
        return None
    if not Path(chosen[0].config.data.path).exists():
        digits_study.write_data(preset, runs_root)
    return spec.name, spec.version, chosen[0]


def _train_and_export(name: str, version: int, run: Run, repository: Path, command: str) -> int:
    if not (run.out / "metrics.json").exists():
        print(f"training {name} ({run.out})", flush=True)
        train(run.config, run.out, resume=True, progress=False)
    target = version_dir(repository, name, version)
    if target.exists():
        same = sha256_file(target / CHECKPOINT_DIR / BEST_FILE) == sha256_file(run.out / BEST_FILE)
        if not same:
            print(f"error: {target} holds another checkpoint than {run.out}", file=sys.stderr)
            return 1
        print(f"{name}/{version}: up to date")
        return 0
    metrics = read_json(run.out / "metrics.json")
    recorded = (metrics.get("weights") or {}).get("rule")
    own_rule = isinstance(metrics.get("signal_rule"), dict)  # chosen on its validation split
    if recorded is not None and recorded != SIGNAL_RULE and not own_rule:
        print(
            f"rescoring {run.out}: its metrics used '{recorded}', the project's rule is now "
            f"'{SIGNAL_RULE}'",
            flush=True,
        )
        rescore(run.out)
    try:
        export_run(run.out, name, version, repository, command)
    except RepositoryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{name}/{version}: exported from {run.out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
