"""podman or Docker for the image tests: the engine, the flags this machine needs, the CPU image
built once per test run with ``make image``, and containers that are always removed.

podman (Debian's 4.3) runs with runc: its default crun fails here ("cgroups in hybrid mode not
supported"). Every container gets explicit ulimits: the engine's defaults (nofile 1048576) are
above the host's hard limit and cannot be set here. Docker's own runtime is runc too. The
engine's state (images, build cache, containers) lives where the engine keeps it
(``/var/lib/containers`` for root's podman), never in the repository.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.deploy import tools

ROOT = tools.ROOT
ULIMITS = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")
# Made by `make base-image` (.ci/run does): Debian 12 + Python 3.11 from Debian's packages.
BASE_IMAGE = "localhost/debian-python:bookworm"


@dataclass(frozen=True)
class Engine:
    name: str  # "podman" or "docker"
    command: tuple[str, ...]  # the engine with its global flags
    run_flags: tuple[str, ...]  # what every `run` gets

    def __call__(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.command, *args], capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join([*self.command, *args])} exited with {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        """``<engine> <kind> inspect`` of one image or container."""
        (found,) = json.loads(self(kind, "inspect", name).stdout)
        return dict(found)

    def healthcheck(self, image: str) -> list[str]:
        """The image's HEALTHCHECK test (podman shows it beside Config, Docker inside)."""
        found = self.inspect("image", image)
        check = found["Config"].get("Healthcheck") or found.get("Healthcheck") or {}
        return list(check.get("Test", []))

    def exists(self, image: str) -> bool:
        return self("image", "inspect", image, check=False).returncode == 0

    def logs(self, name: str) -> str:
        result = self("logs", name, check=False)
        return result.stdout + result.stderr


@functools.cache
def _engine() -> Engine | None:
    podman = shutil.which("podman", path=tools.SEARCH_PATH)
    if podman is not None:
        runc = shutil.which("runc", path=tools.SEARCH_PATH)
        if runc is None:
            return None
        return Engine("podman", (podman, "--runtime", runc), ULIMITS)
    docker = shutil.which("docker", path=tools.SEARCH_PATH)
    if docker is not None:  # the client alone is not enough: its daemon must answer
        info = subprocess.run([docker, "info"], capture_output=True, timeout=60)
        if info.returncode == 0:
            return Engine("docker", (docker,), ("--runtime", "runc", *ULIMITS))
    return None


def engine() -> Engine:
    """podman with runc, else a Docker whose daemon answers; skipped (failed in CI) if neither."""
    found = _engine()
    if found is None:
        tools.missing("podman")
    assert found is not None
    return found


def base_image(found: Engine) -> str:
    """The build's PYTHON_IMAGE: ``ADAPOOL_TEST_BASE_IMAGE`` (python:3.11-slim-bookworm on a
    host that can pull it, say), else the one ``make base-image`` makes."""
    image = os.environ.get("ADAPOOL_TEST_BASE_IMAGE", BASE_IMAGE)
    if not found.exists(image):
        if image != BASE_IMAGE:  # asked for by name: let the build pull it
            return image
        tools.missing("base image")
    return image


def committed_tree(destination: Path) -> None:
    """The files git tracks, as they are in the working tree: what a fresh clone builds from
    (a file the image needs that was never added fails the build; .venv, runs/ and a local
    wheelhouse stay out)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the working tree is skipped
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


@dataclass(frozen=True)
class Built:
    engine: Engine
    tag: str
    context: Path  # the committed tree it was built from
    download_seconds: float  # make wheelhouse
    build_seconds: float  # make image, the wheelhouse already there
    size_bytes: int
    log: str


def build(found: Engine, workdir: Path) -> Built:
    """``make wheelhouse`` then ``make image`` in a copy of the committed tree: the wheels
    downloaded here, the image built with no network inside the build. The tag is unique to
    this test run."""
    base = base_image(found)
    committed_tree(workdir)
    tag = f"localhost/adapool-serve:test-{uuid.uuid4().hex[:10]}"
    args = [f"IMAGE={tag}", f"PYTHON_IMAGE={base}", f"ENGINE={' '.join(found.command)}"]
    if sys.prefix != sys.base_prefix:  # reuse this virtual environment's pip for the download
        args.append(f"VENV={sys.prefix}")
    log, seconds = "", []
    for target in ("wheelhouse", "image"):
        started = time.monotonic()
        result = subprocess.run(
            ["make", "--no-print-directory", "-C", str(workdir), target, *args],
            capture_output=True,
            text=True,
            timeout=1200,
        )
        seconds.append(time.monotonic() - started)
        log += result.stdout + result.stderr
        assert result.returncode == 0, f"make {target} failed:\n{log[-6000:]}"
    size = int(found.inspect("image", tag)["Size"])
    return Built(found, tag, workdir, seconds[0], seconds[1], size, log)


def remove_image(built: Built) -> None:
    built.engine("rmi", "--force", built.tag, check=False)


@contextmanager
def container(
    found: Engine, image: str, *flags: str, prefix: str = "adapool-test"
) -> Iterator[str]:
    """A detached container of ``image`` with ``flags``; yields its name, removes it after."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    found("run", "--detach", "--name", name, *found.run_flags, *flags, image)
    try:
        yield name
    finally:
        found("rm", "--force", name, check=False)


@contextmanager
def docker_api(found: Engine, folder: Path) -> Iterator[dict[str, str]]:
    """The Docker API for Docker Compose, as environment variables: podman's (``podman system
    service`` on a socket of this test run's own, stopped afterwards), or Docker's daemon."""
    if found.name == "docker":
        yield {}
        return
    socket = folder / "podman.sock"
    log_path = folder / "podman-service.log"
    with log_path.open("wb") as log:
        service = subprocess.Popen(
            [*found.command, "system", "service", "--time=0", f"unix://{socket}"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            if service.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"podman system service: {log_path.read_text()}")
            time.sleep(0.1)
        yield {"DOCKER_HOST": f"unix://{socket}"}
    finally:
        tools.stop(service)
