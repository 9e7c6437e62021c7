"""``python -m bench.instances``: what model instances cost in memory.

For ``--model-instances`` 1 and 2, in turn (``--rounds``), a fresh ``python -m service`` with
one model (the wide benchmark model by default) gets one request of ``--items`` x ``--tokens``
(by default the batcher's largest run: 16 x 2,048 = 32,768 padded tokens), then two such
requests at once: with one instance they run one after the other, with two at the same time.
Printed per server: its RSS once started (after the start-up probe), its peak (``VmHWM``) after
the lone request and after the pair, and its RSS after. ``--out FILE`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bench import procstat
from bench.process import ROOT, running_server
from bench.serve import WIDE_MODEL, input_dim, prepare_repository


def mib(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` figure (VmRSS, VmHWM) in MiB."""
    return procstat.parse_status_kib(Path(f"/proc/{pid}/status").read_text(), key) / 1024


def post(url: str, model: str, body: bytes) -> None:
    request = urllib.request.Request(
        f"{url}/models/{model}/pool",
        data=body,
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()


def measure(repository: Path, model: str, instances: int, body: bytes) -> dict[str, Any]:
    """One server: RSS started, peak after one request, peak after two at once, RSS after."""
    flags = ["--models", model, "--default-model", model, "--model-instances", str(instances)]
    with running_server(repository, flags) as (url, process):
        started = mib(process.pid, "VmRSS")
        post(url, model, body)
        one = mib(process.pid, "VmHWM")
        pair = [threading.Thread(target=post, args=(url, model, body)) for _ in range(2)]
        for thread in pair:
            thread.start()
        for thread in pair:
            thread.join()
        return {
            "instances": instances,
            "started_mib": round(started),
            "peak_after_one_mib": round(one),
            "peak_after_two_at_once_mib": round(mib(process.pid, "VmHWM")),
            "after_mib": round(mib(process.pid, "VmRSS")),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instances", description=__doc__)
    parser.add_argument("--model", default=WIDE_MODEL)
    parser.add_argument("--repository", type=Path, help="default: the benchmark repository")
    parser.add_argument("--items", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    repository = args.repository or prepare_repository(ROOT / "runs" / "bench")
    shape = (args.items, args.tokens, input_dim(repository, args.model))
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(size=shape).astype(np.float32))
    rows = []
    for _ in range(args.rounds):
        for instances in (1, 2):
            rows.append(measure(repository, args.model, instances, buffer.getvalue()))
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "shape": shape, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
