"""Restate a repository's manifests under the project's current signal-set rule and format.

    python -m export.rescore model_repository [--dry-run]

A manifest's ``metrics`` (test signal loss, weight quality with chance levels) are computed at
training time under the project's signal-set rule of that day. When the rule changes
(``models.metrics.SIGNAL_RULE``), this recomputes them from the version's own source checkpoint
on the same seeded test split, so that every manifest states figures under the rule the service
applies. A manifest in an older format is rewritten in the current one (``modelrepo.FORMAT``).
The model files are untouched (their sha256 stay valid); the manifest records what it replaced
(rule, format), when, and the command. A model trained on data with signal masks chose its own
rule on its validation split (its metrics' ``signal_rule``): it keeps it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from export.repository import find_versions, repository_tool
from modelrepo import DEFAULT_RULE, FORMAT, Metrics, read_manifest, write_manifest
from models.checkpoint import load_model
from models.train import rescore_metrics


def main(argv: Sequence[str] | None = None) -> int:
    args, command = repository_tool("export.rescore", __doc__, argv)
    for version in find_versions(args.repository):
        manifest = read_manifest(version.manifest_file)
        own_rule = manifest.metrics is not None and isinstance(
            manifest.metrics.data.get("signal_rule"), dict
        )
        stale_rule = not own_rule and manifest.signal_rule != DEFAULT_RULE
        old_format = manifest.format < FORMAT
        if not (stale_rule or old_format):
            print(f"{version.label}: up to date")
            continue
        record: dict[str, object] = {
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command,
        }
        metrics = manifest.metrics
        if stale_rule:
            previous, rule = manifest.signal_rule.definition, DEFAULT_RULE.definition
            print(f"{version.label}: '{previous}' -> '{rule}'", flush=True)
            record["previous_signal_rule"] = previous
            if not args.dry_run:
                model, config = load_model(version.checkpoint_dir)
                data = dict(metrics.data) if metrics else {}
                metrics = Metrics.from_dict(rescore_metrics(model, config, data))
        if old_format:
            print(f"{version.label}: manifest format {manifest.format} -> {FORMAT}", flush=True)
            record["previous_format"] = manifest.format
        if args.dry_run:
            continue
        history = (*manifest.provenance.history, record)
        upgraded = replace(
            manifest,
            signal_rule=manifest.signal_rule if own_rule else DEFAULT_RULE,
            metrics=metrics,
            provenance=replace(manifest.provenance, history=history),
        )
        write_manifest(version.manifest_file, upgraded)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
