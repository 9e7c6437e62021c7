"""Worker threads carry their names to the OS, where /proc, top -H and py-spy read them."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from service.threads import named_executor


def comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")
def test_a_named_executors_threads_carry_their_names_to_the_os() -> None:
    with named_executor(2, "decode") as pool:
        tids = {pool.submit(threading.get_native_id).result() for _ in range(4)}
        names = {comm(tid) for tid in tids}
    assert names <= {"decode_0", "decode_1"} and names
    assert comm(threading.get_native_id()) != "decode_0"  # the caller keeps its own name


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc: Linux")
def test_the_batchers_and_decoders_threads_are_named_in_a_real_server() -> None:
    """A real server: its model runs in onnx_N threads and large bodies decode in decode_N."""
    import io

    import httpx
    import numpy as np

    from bench.process import running_server
    from tests.service.server import REPOSITORY

    with running_server(REPOSITORY) as (url, process):
        x = np.zeros((4, 128, 16), dtype=np.float32)  # 32 KiB: decoded on the loop
        big = np.zeros((64, 512, 16), dtype=np.float32)  # 2 MiB: decoded in a thread
        for array in (x, big):
            buffer = io.BytesIO()
            np.save(buffer, array)
            answer = httpx.post(
                f"{url}/pool",
                content=buffer.getvalue(),
                headers={"Content-Type": "application/x-npy"},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text
        names = {
            (task / "comm").read_text().strip()
            for task in Path(f"/proc/{process.pid}/task").iterdir()
        }
    assert {"onnx_0", "decode_0"} <= names, names
