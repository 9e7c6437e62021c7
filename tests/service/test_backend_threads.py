"""What the thread-spinning setting has to act on: ONNX Runtime starts pool threads only for a
run with more than one thread (BENCHMARKS.md, "Fourth round": with two instances on two cores
each run has one thread, so spinning changes nothing there)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.process import ROOT
from tests.service.server import REPOSITORY

# In a process of its own, so that no other test's threads come or go meanwhile.
COUNT = """
import json, os, sys
from pathlib import Path
from service.core.backend import OnnxBackend
def threads(): return len(os.listdir("/proc/self/task"))
model = Path(sys.argv[1])
kept = [OnnxBackend(model, "cpu", 1)]  # the first session may start the library's own threads
counts = [threads()]
for intra_op_threads in (1, 2):
    kept.append(OnnxBackend(model, "cpu", intra_op_threads))  # a session's threads live with it
    kept[-1].warm_up()
    counts.append(threads())
print(json.dumps(counts))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc: Linux")
def test_a_one_thread_session_starts_no_pool_threads_and_a_two_thread_one_does() -> None:
    model = REPOSITORY / "signature-adapool" / "1" / "model.onnx"
    done = subprocess.run(
        [sys.executable, "-c", COUNT, str(model)],
        capture_output=True,
        check=True,
        cwd=ROOT,
        text=True,
        timeout=60,
    )
    before, after_one, after_two = json.loads(done.stdout)
    assert after_one == before  # a one-thread session: nothing for spinning to keep busy
    assert after_two == after_one + 1  # a two-thread session: its second thread
