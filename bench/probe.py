"""``python -m bench.probe``: how stable the start-up batch policy's choice is.

A server measures each model at start-up (``service/core/policy.py``) and may close its runs at
a preferred batch. On a near-flat curve and a shared machine, that choice can change from one
start to the next, and with it the server's throughput. This bench probes the default and the
wide benchmark model ``--probes`` times, as a server starting with the default settings would
(a fresh ONNX Runtime session each time, the default instances, probe budget and caps), and
applies to the same rounds both the server's rule (:func:`service.core.policy.decide`: sizes
compared round by round) and the rule it replaced (:func:`envelope_rule`: each size's fastest
run over the rounds). Printed per model and rule: how often each choice came out. ``--out FILE``
writes every probe's rounds and choices as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from bench.process import ROOT
from bench.serve import DEFAULT_MODEL, WIDE_MODEL, input_dim, machine, prepare_repository
from service.core.backend import OnnxBackend
from service.core.policy import Curve, decide, probe
from service.core.runtime import PROBE_TOKENS, threads_per_run
from service.settings import Settings

TOLERANCE = 0.05


def envelope_rule(rounds: list[Curve], tolerance: float = TOLERANCE) -> int | None:
    """The rule the server used before ``decide``: every round's curve must fall at the largest
    batch by more than ``tolerance`` from its own best; then, on the curve of each size's
    fastest run over all rounds, the largest batch within ``tolerance`` of the best. Kept here
    only to measure the change."""

    def falls(curve: Curve) -> int | None:
        best = max(ips for _, ips in curve)
        if curve[-1][1] >= (1 - tolerance) * best:
            return None
        return max(b for b, ips in curve if ips >= (1 - tolerance) * best)

    if len(rounds[0]) < 2 or any(falls(r) is None for r in rounds):
        return None
    envelope = [(b, max(r[i][1] for r in rounds)) for i, (b, _) in enumerate(rounds[0])]
    return falls(envelope)


RULES = {"decide": decide, "envelope": envelope_rule}


def label(choice: int | None) -> str:
    return "caps" if choice is None else str(choice)


def gain(rounds: list[Curve]) -> float:
    """How far the curve rises above its largest batch: per round, the best smaller batch's
    items/s over the largest's; the median of the rounds."""
    return statistics.median(max(ips for _, ips in r[:-1]) / r[-1][1] for r in rounds)


def summary(probes: list[list[Curve]]) -> dict[str, Any]:
    """Per rule: how often each choice came out, and the share of probes that made the most
    frequent one; and the range of the probes' :func:`gain`."""
    gains = [gain(rounds) for rounds in probes if len(rounds[0]) > 1]
    result: dict[str, Any] = {"gain_over_largest": [min(gains), max(gains)] if gains else None}
    for name, rule in RULES.items():
        counts = Counter(label(rule(rounds)) for rounds in probes)
        result[name] = {
            "choices": dict(counts.most_common()),
            "modal_share": round(counts.most_common(1)[0][1] / len(probes), 3),
        }
    return result


def probe_model(repository: Path, model: str, probes: int) -> list[list[Curve]]:
    """``probes`` start-up probes of ``model`` with the server's default settings."""
    s = Settings.model_construct()  # the defaults, whatever ADAPOOL_* says here
    onnx = repository / model / "1" / "model.onnx"
    dim = input_dim(repository, model)
    threads = threads_per_run(s.model_instances, s.intra_op_threads)
    tokens = min(PROBE_TOKENS, s.max_tokens_per_item)
    found = []
    for i in range(probes):
        backend = OnnxBackend(onnx, "cpu", threads)  # as a starting server makes it
        rounds = probe(
            backend.run,
            dim,
            s.max_batch_size,
            s.max_batch_tokens,
            tokens,
            s.batch_probe_seconds,
            instances=s.model_instances,
        )
        found.append(rounds)
        choices = ", ".join(f"{n} {label(rule(rounds))}" for n, rule in RULES.items())
        print(f"{model} probe {i + 1}/{probes}: {len(rounds)} rounds; {choices}", flush=True)
    return found


def table(results: dict[str, Any]) -> str:
    lines = [
        "| model | rule | probes | choices (preferred items: probes) | modal share |",
        "|---|---|---:|---|---:|",
    ]
    for model, data in results["models"].items():
        for rule in RULES:
            s = data["summary"][rule]
            choices = ", ".join(f"{c}: {n}" for c, n in s["choices"].items())
            lines.append(
                f"| {model} | {rule} | {len(data['probes'])} | {choices} | {s['modal_share']:.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--probes", type=int, default=20, help="start-up probes per model")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path, help="write the rounds and choices as JSON")
    args = parser.parse_args(argv)
    repository = prepare_repository(args.work)
    command = f"python -m bench.probe --probes {args.probes}"
    results: dict[str, Any] = {"machine": machine() | {"command": command}, "models": {}}
    for model in (DEFAULT_MODEL, WIDE_MODEL):
        probes = probe_model(repository, model, args.probes)
        results["models"][model] = {"probes": probes, "summary": summary(probes)}
    print(table(results))
    for model, data in results["models"].items():
        low, high = data["summary"]["gain_over_largest"] or (0.0, 0.0)
        print(
            f"{model}: best smaller batch over the largest, median per probe: {low:.2f}-{high:.2f}x"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
