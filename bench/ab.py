"""``python -m bench.ab --before REV``: this checkout's server against an earlier commit's, on one
cell, the servers started in turn, round after round.

A change to the serving path is measured against the commit before it on the same machine in
the same minutes: the machines are shared and their speed drifts, so two benchmark runs apart
say less than rounds that alternate. ``--before`` is checked out once as a git worktree under
``--work`` (it uses this checkout's environment); each round starts a fresh server of each
side on the benchmark repository (``bench.serve``), warms it up, and loads it with hey
(``--items`` x 128 tokens ``.npy``, ``--concurrency``, ``--seconds``). Printed per round and
side: items/s, p50, the server's mean run size and stage times, and where the cores went
(``bench.cores``); then each side's median and the ratio of the medians. ``--out FILE`` writes
them as JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench import serve
from bench.process import ROOT, running_server


def worktree(rev: str, work: Path) -> Path:
    """A checkout of ``rev`` under ``work`` (made once, reused while it is at ``rev``)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", rev], capture_output=True, check=True, cwd=ROOT, text=True
    ).stdout.strip()
    path = work / f"ab-{sha}"
    if not (path / "service").is_dir():
        subprocess.run(["git", "worktree", "prune"], check=True, cwd=ROOT)
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha],
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
    return path


def summary(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Each side's median items/s over its rounds, and the ratio of this checkout's to the
    earlier one's."""
    medians = {}
    for side, cells in rounds.items():
        values = sorted(c["items_per_second"] for c in cells)
        medians[side] = values[len(values) // 2]
    return {
        "median_items_per_second": medians,
        "after_over_before": medians["after"] / medians["before"],
    }


def line(side: str, cell: dict[str, Any]) -> str:
    c = cell.get("cores") or {}
    cores = " ".join(f"{k} {v:.2f}" for k, v in c.items() if k != "wall_seconds")
    stages = " ".join(f"{k} {v:.1f}" for k, v in cell["stage_ms"].items())
    return (
        f"{side}: {cell['items_per_second']:,.0f} items/s, p50 {cell['p50_ms']:.1f} ms, "
        f"runs of {cell['mean_batch_items']:.1f} items; stages ms: {stages}; cores: {cores}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--model", default=serve.WIDE_MODEL)
    parser.add_argument("--items", type=int, default=serve.ITEMS, help="items per request")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--flags", default="", help="server flags for both sides")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    repository = serve.prepare_repository(args.work).resolve()
    sides = {"before": worktree(args.before, args.work), "after": ROOT}
    dim = serve.input_dim(repository, args.model)
    x = np.random.default_rng(0).standard_normal((args.items, serve.TOKENS, dim))
    flags = ["--models", args.model, "--default-model", args.model, *args.flags.split()]
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    with tempfile.TemporaryDirectory() as tmp:
        body = serve.write_body(Path(tmp), "npy", x.astype(np.float32))
        for r in range(args.rounds):
            for side, cwd in sides.items():
                with running_server(repository, flags, cwd=cwd) as (url, process):
                    cell = serve.load(
                        url,
                        args.model,
                        body,
                        args.items,
                        args.concurrency,
                        args.seconds,
                        args.warmup,
                        pid=process.pid,
                    )
                rounds[side].append(cell)
                print(f"round {r + 1}/{args.rounds} {line(side, cell)}", flush=True)
    result = summary(rounds)
    medians = result["median_items_per_second"]
    print(
        f"median items/s: before ({args.before}) {medians['before']:,.0f}, after "
        f"{medians['after']:,.0f}: {result['after_over_before']:.2f}x"
    )
    if args.out:
        given = sys.argv[1:] if argv is None else argv
        machine = serve.machine() | {"command": "python -m bench.ab " + shlex.join(given)}
        record = {"machine": machine, "args": vars(args) | {"work": str(args.work)}}
        record |= {"rounds": rounds, "summary": result}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
