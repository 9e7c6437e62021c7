"""Worker threads named for the operating system, so that ``top -H``, ``ps -L``, py-spy and
``/proc/PID/task/*/comm`` tell the model's threads from the decoders' (Linux; CPython 3.11
names only its own ``threading`` objects)."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from concurrent.futures import ThreadPoolExecutor

PR_SET_NAME = 15  # prctl(2)
NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL


def name_this_thread() -> None:
    """Give the calling thread's Python name to its OS thread; a no-op where prctl is absent."""
    name = threading.current_thread().name.encode()[:NAME_BYTES]
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no prctl
        ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)


def named_executor(workers: int | None, prefix: str) -> ThreadPoolExecutor:
    """A thread pool whose threads are ``prefix_0``, ``prefix_1``, ... for the OS too."""
    return ThreadPoolExecutor(workers, thread_name_prefix=prefix, initializer=name_this_thread)
