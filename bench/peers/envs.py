"""Where each peer runs: which Python, and why it is not available when it is not.

LitServe installs beside our pins (the ``bench`` extra), so it runs in our own environment.
PyTriton 0.7 requires numpy < 2, which our pins exclude, so it gets a virtual environment of its
own, ``<work>/pytriton-venv``, made from ``triton-requirements.txt`` (exact versions) the first
time and again whenever that file changes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from importlib import metadata
from pathlib import Path

TRITON_REQUIREMENTS = Path(__file__).with_name("triton-requirements.txt")


class PeerUnavailable(RuntimeError):
    """A peer cannot run here; the message says exactly why (for the results)."""


def litserve_version() -> str:
    """LitServe's version in this environment, or PeerUnavailable."""
    if importlib.util.find_spec("litserve") is None:
        raise PeerUnavailable(
            "litserve is not installed: pip install -c constraints.txt -e '.[serve,bench]'"
        )
    return metadata.version("litserve")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def triton_python(venv: Path, requirements: Path = TRITON_REQUIREMENTS) -> Path:
    """The Python of PyTriton's environment, made (or remade) when needed; PeerUnavailable
    with pip's or Python's own last lines when that fails."""
    python = venv / "bin" / "python"
    stamp = venv / ".requirements.sha256"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    if python.exists() and stamp.exists() and stamp.read_text() == digest:
        return python
    print(f"making {venv} for PyTriton ({requirements.name}) ...", flush=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", "--clear", str(venv)], [*pip, "-r", str(requirements)]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            raise PeerUnavailable(
                f"`{' '.join(step[-4:])}` failed ({done.returncode}):\n"
                + _tail(done.stdout + done.stderr)
            )
    check = subprocess.run(
        [str(python), "-c", "import pytriton.triton, onnxruntime, numpy"],
        capture_output=True,
        text=True,
    )
    if check.returncode != 0:
        raise PeerUnavailable("pytriton does not import:\n" + _tail(check.stderr))
    stamp.write_text(digest)
    return python


def version_in(python: Path, distribution: str) -> str:
    done = subprocess.run(
        [
            str(python),
            "-c",
            f"from importlib import metadata; print(metadata.version({distribution!r}))",
        ],
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"
