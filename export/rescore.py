"""Rescore the manifests of a repository whose metrics used an older signal-set rule.

    python -m export.rescore model_repository [--dry-run]

A manifest's ``metrics`` (test signal loss, weight quality with chance levels) are computed at
training time under the project's signal-set rule of that day. When the rule changes
(``models.metrics.SIGNAL_RULE``), this recomputes them from the version's own source checkpoint
on the same seeded test split, so that every manifest states figures under the rule the service
applies. The model files are untouched (their sha256 stay valid); the manifest records the rule
it replaced, when, and the command. A model trained on data with signal masks chose its own rule
on its validation split (``metrics.signal_rule``): it keeps it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from export.repository import find_versions
from models.checkpoint import load_model, read_json, write_json
from models.metrics import SIGNAL_RULE
from models.train import rescore_metrics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.rescore", description=__doc__)
    parser.add_argument("repository", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="only list what would change")
    args = parser.parse_args(argv)
    command = "python -m export.rescore " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    for version in find_versions(args.repository):
        manifest = read_json(version.manifest_file)
        previous = manifest.get("signal_rule")
        if isinstance((manifest.get("metrics") or {}).get("signal_rule"), dict):
            print(f"{version.name}/{version.version}: its own rule ({previous}), kept")
            continue
        if previous == SIGNAL_RULE:
            print(f"{version.name}/{version.version}: up to date")
            continue
        print(f"{version.name}/{version.version}: '{previous}' -> '{SIGNAL_RULE}'", flush=True)
        if args.dry_run:
            continue
        model, config = load_model(version.checkpoint_dir)
        manifest["metrics"] = rescore_metrics(model, config, manifest.get("metrics") or {})
        manifest["signal_rule"] = SIGNAL_RULE
        manifest.setdefault("rescored", []).append(
            {
                "previous_signal_rule": previous,
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "command": command,
            }
        )
        write_json(version.manifest_file, manifest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
