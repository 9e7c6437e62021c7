"""Re-export a repository's graphs from their own checkpoints, in place, with a record.

    python -m export.reexport model_repository [--dry-run]

For when the export itself changes and the models do not: same checkpoint, same weights, same
signature and outputs (within the parity tolerance), a better graph. Version 1 of each
committed model was exported with explicit encoder attention, whose memory is quadratic in
tokens; the export now writes one ``com.microsoft.MultiHeadAttention`` node per block
(``export.attention``). The version number stays: a new version would leave the old graph
servable (the service loads every version, so ``?version=1`` would still reach the quadratic
graph) or, deleted, break clients that pin version 1, for a change that is not the model's.
What changed is in the manifest, as ``export.rescore`` does for metrics: the new sha256,
opset, packages and export figures, and a ``reexported`` record with the previous ones, the
largest difference between the previous graph's outputs and the new one's on the parity
cases, when, why and the command.

A version is up to date when its manifest's ``export.attention`` is the export's
(``export.attention.ATTENTION``). The source checkpoint must match its manifest's sha256.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from export.attention import ATTENTION
from export.cli import export_graph, graph_opset, package_versions
from export.parity import make_cases
from export.repository import (
    CHECKPOINT_DIR,
    MODEL_FILE,
    RepositoryError,
    VersionDir,
    find_versions,
    repository_tool,
    sha256_file,
)
from export.verify import cpu_session, leading_real_tokens, min_real_tokens, run_onnx
from modelrepo import read_manifest, write_manifest
from models.checkpoint import load_model
from models.model import PoolingModel

REASON = "encoder attention as com.microsoft.MultiHeadAttention: memory linear in tokens"


def difference(old: Path, new: Path, model: PoolingModel) -> dict[str, float]:
    """Largest |new - old| of every output over the parity cases, graph against graph."""
    before, after = cpu_session(old), cpu_session(new)
    cases = make_cases(
        model.config.input_dim, min_real_tokens(model), leading=leading_real_tokens(model)
    )
    worst: dict[str, float] = {}
    for case in cases:
        a, b = run_onnx(before, case), run_onnx(after, case)
        for name in a:
            diff = float(np.abs(np.nan_to_num(a[name]) - np.nan_to_num(b[name])).max())
            worst[name] = max(worst.get(name, 0.0), diff)
    return worst


def reexport(version: VersionDir, command: str) -> dict[str, Any]:
    """Re-export one version in place; returns the record appended to its manifest."""
    manifest = read_manifest(version.manifest_file)
    for file in sorted(version.checkpoint_dir.iterdir()):
        rel = f"{CHECKPOINT_DIR}/{file.name}"
        if manifest.sha256.get(rel) != sha256_file(file):
            raise RepositoryError(f"{file}: does not match the manifest's sha256")
    model, _ = load_model(version.checkpoint_dir)
    p = manifest.provenance
    with tempfile.TemporaryDirectory(dir=version.path) as tmp:
        new_file = Path(tmp) / MODEL_FILE
        figures = export_graph(model, new_file)
        record = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "reason": REASON,
            "command": command,
            "max_abs_diff_vs_previous": difference(version.model_file, new_file, model),
            "previous": {
                "sha256": manifest.sha256[MODEL_FILE],
                "opset": manifest.opset,
                "packages": dict(p.packages),
                "export": dict(p.export),
            },
        }
        provenance = replace(
            p, packages=package_versions(), export=figures, reexported=(*p.reexported, record)
        )
        updated = replace(
            manifest,
            sha256={**manifest.sha256, MODEL_FILE: sha256_file(new_file)},
            opset=graph_opset(new_file),
            provenance=provenance,
        )
        new_file.replace(version.model_file)
    write_manifest(version.manifest_file, updated)
    return record


def main(argv: Sequence[str] | None = None) -> int:
    args, command = repository_tool("export.reexport", __doc__, argv)
    for version in find_versions(args.repository):
        label = version.label
        current = read_manifest(version.manifest_file).provenance.export.get("attention")
        if current == ATTENTION:
            print(f"{label}: up to date")
            continue
        print(f"{label}: {current or 'explicit attention'} -> {ATTENTION}", flush=True)
        if args.dry_run:
            continue
        try:
            record = reexport(version, command)
        except RepositoryError as exc:
            print(f"error: {label}: {exc}", file=sys.stderr)
            return 1
        diff = ", ".join(f"{k} {v:.1e}" for k, v in record["max_abs_diff_vs_previous"].items())
        print(f"{label}: re-exported, max abs diff vs the previous graph: {diff}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
