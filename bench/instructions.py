"""The app's own cost per request in instructions, which other work on the machine cannot move.

    python -m bench.instructions --baseline DIR [--items 1] [bench.inproc options]

Timings on a shared machine move by tens of percent from one minute to the next (``python -m
bench.inproc --baseline`` measured one checkout at 571 and 1,225 requests/s in two rounds of
one run). Instructions executed do not depend on the load: this runs ``bench.inproc`` under
valgrind's callgrind (``apt-get install valgrind``) twice per checkout, with ``--small`` and
``--large`` requests, and takes the difference: instructions per request with start-up
(imports, loading the models) cancelled out. Every request's share of the model runs is
included, so the model, the batch sizes (``ADAPOOL_BATCH_POLICY`` is set to ``off`` for both
sides: a start-up measurement under valgrind means nothing) and the repository must be the
same on both sides: both read this checkout's ``model_repository``. Under callgrind the
process is about 50x slower; the default counts take about 10 minutes per checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(checkout: Path, requests: int, inner: list[str]) -> tuple[int, dict[str, object]]:
    """Instructions of one ``bench.inproc`` run of ``requests`` against ``checkout``'s service."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "ADAPOOL_BATCH_POLICY": "off"}
    with tempfile.TemporaryDirectory() as tmp:
        command = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={tmp}/out"]
        command += [sys.executable, str(ROOT / "bench" / "inproc.py")]
        command += ["--requests", str(requests), *inner]
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{checkout}: exit {done.returncode}: {done.stderr[-2000:]}")
    refs = REFS.search(done.stderr)
    if refs is None:
        raise RuntimeError(f"{checkout}: no instruction count in valgrind's output")
    result: dict[str, object] = json.loads(done.stdout.splitlines()[0])
    return int(refs.group(1).replace(",", "")), result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--baseline", type=Path, required=True, help="a checkout to compare with")
    p.add_argument("--small", type=int, default=200, help="requests in the shorter run")
    p.add_argument("--large", type=int, default=800, help="requests in the longer run")
    a, inner = p.parse_known_args()
    inner = inner or ["--items", "1", "--warmup", "50"]
    per_request = {}
    for name, checkout in (("baseline", a.baseline.resolve()), ("current", ROOT)):
        small, _ = instructions(checkout, a.small, inner)
        large, result = instructions(checkout, a.large, inner)
        per_request[name] = (large - small) / (a.large - a.small)
        print(
            f"{name} ({checkout}): {small:,} and {large:,} instructions for {a.small} and "
            f"{a.large} requests: {per_request[name] / 1e6:.3f} M per request "
            f"(failed: {result['failed']}, collections: {result['gc_collections']})"
        )
    ratio = per_request["baseline"] / per_request["current"]
    print(f"baseline / current instructions per request: {ratio:.3f}x (above 1: current cheaper)")


if __name__ == "__main__":
    main()
