"""The CPU image for real: built by ``make image`` (no network inside the build) from the
committed tree, run under the constraints of docker-compose.yml and of a restricted Kubernetes
pod (uid 10001, read-only root file system, /tmp a tmpfs, every capability dropped, no new
privileges, the model folder mounted read-only), on host networking with a loopback port.

Skipped without podman (or a Docker whose daemon answers) or without the base image
(``make base-image``); failed instead under CI. ``-s`` prints the build time, the image size and
the time to ready.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.api.bodies import PROCESS_VALUES
from service.settings import Settings
from tests.deploy import container
from tests.deploy.container import Built, Engine
from tests.service.server import free_port

pytestmark = pytest.mark.slow

MODEL = Settings.model_fields["default_model"].default  # what POST /pool serves
SHUTDOWN_TIMEOUT = 5.0
READY_TIMEOUT = 120.0


def production(found: Engine, models: Path, port: int, *env: str) -> list[str]:
    """``run`` flags: compose's (read-only root, /tmp tmpfs, models read-only) and the pod's of
    deploy/kubernetes/base/deployment.yaml (uid and gid 10001, every capability dropped, no
    privilege escalation, the runtime's default seccomp profile). Host networking, so the
    service listens on loopback only (the image's 0.0.0.0 would be every host interface).
    podman's --read-only also mounts tmpfs on /run and /var/tmp unless told not to; Docker's and
    Kubernetes' do not, so neither does this."""
    flags = [
        "--network=host",
        "--user=10001:10001",
        "--read-only",
        *(["--read-only-tmpfs=false"] if found.name == "podman" else []),
        "--tmpfs=/tmp",
        "--cap-drop=ALL",
        "--security-opt=no-new-privileges",
        f"--volume={models}:/models:ro",
        "--env=ADAPOOL_HOST=127.0.0.1",
        f"--env=ADAPOOL_PORT={port}",
    ]
    return flags + [f"--env={e}" for e in env]


@dataclass(frozen=True)
class Served:
    name: str
    url: str
    ready_seconds: float  # from `run` to the first 200 on /health/ready


def wait_ready(found: Engine, name: str, url: str, started: float) -> float:
    deadline = started + READY_TIMEOUT
    while True:
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        state = found.inspect("container", name)["State"]
        if not state["Running"] or time.monotonic() > deadline:
            pytest.fail(f"container {name} not ready ({state}):\n{found.logs(name)}")
        time.sleep(0.1)


@contextmanager
def serving(image: Built, *env: str) -> Iterator[Served]:
    """A container of the image under production constraints, ready; removed afterwards."""
    found, port = image.engine, free_port()
    started = time.monotonic()
    flags = production(found, image.context / "model_repository", port, *env)
    with container.container(found, image.tag, *flags) as name:
        url = f"http://127.0.0.1:{port}"
        yield Served(name, url, wait_ready(found, name, url, started))


@pytest.fixture(scope="module")
def served(image: Built) -> Iterator[Served]:
    with serving(image) as s:
        print(
            f"\nimage {image.tag}: {image.size_bytes / 1e6:.0f} MB; `make wheelhouse` "
            f"{image.download_seconds:.1f} s, `make image` {image.build_seconds:.1f} s "
            f"({image.log.count('Using cache')} cached steps); ready {s.ready_seconds:.2f} s "
            f"after `{image.engine.name} run`"
        )
        yield s


def test_the_build_had_no_network(image: Built) -> None:
    """make image built with no network and pip told to use the wheelhouse only (a cached
    layer prints nothing of pip's, so the command is what is checked)."""
    (build,) = [line for line in image.log.splitlines() if " build --network none " in line]
    assert "--format docker" in build or image.engine.name == "docker"  # keeps HEALTHCHECK
    assert "--build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse" in image.log
    if "Looking in" in image.log:  # pip ran: it looked at the wheelhouse and nothing else
        assert "Looking in links: /wheelhouse" in image.log
        assert "Looking in indexes" not in image.log


def test_image_config(image: Built) -> None:
    config = image.engine.inspect("image", image.tag)["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["python", "-m", "service"]
    healthcheck = ["CMD", "python", "/opt/adapool/healthcheck.py"]
    assert image.engine.healthcheck(image.tag) == healthcheck
    assert "8000/tcp" in config["ExposedPorts"]
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["ADAPOOL_DEVICE"] == "cpu" and env["ADAPOOL_MODEL_REPOSITORY"] == "/models"


# Run as root in the image, network off: what a scan of the whole file system finds.
CONTENTS_PROBE = r"""
import importlib.util, json, os, re, sys
compiler = re.compile(r"([\w.]+-)?(cc|gcc|c\+\+|g\+\+|clang|clang\+\+|cc1|cc1plus|tcc)(-[\d.]+)?")
found = {"compilers": [], "torch": [], "pip_caches": [], "wheels": []}
for top, dirs, files in os.walk("/"):
    if top == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys", "dev")]
    for d in dirs:
        path = os.path.join(top, d)
        if d == "torch" and top.endswith("-packages"):
            found["torch"].append(path)
        if path.endswith("/.cache/pip") or d == "wheelhouse" or (top == "/tmp" and "pip" in d):
            found["pip_caches"].append(path)
    for f in files:
        path = os.path.join(top, f)
        if compiler.fullmatch(f) and os.access(path, os.X_OK):
            found["compilers"].append(path)
        # Python's own ensurepip wheels (Debian's /usr/share/python-wheels) are no cache.
        if f.endswith(".whl") and not top.endswith(("/python-wheels", "/ensurepip/_bundled")):
            found["wheels"].append(path)
found["torch_spec"] = str(importlib.util.find_spec("torch"))
found["onnxruntime_spec"] = importlib.util.find_spec("onnxruntime").origin
found["python"] = sys.executable
print(json.dumps(found))
"""


def test_image_holds_no_torch_no_compiler_no_pip_cache(image: Built) -> None:
    found = image.engine
    result = found(
        "run", "--rm", *found.run_flags, "--network=none", "--user=0", "--no-healthcheck",
        "--entrypoint=python", image.tag, "-c", CONTENTS_PROBE,
    )  # fmt: skip
    contents = json.loads(result.stdout.strip().splitlines()[-1])
    assert contents["python"] == "/opt/venv/bin/python"
    assert contents["onnxruntime_spec"].startswith("/opt/venv/")  # the probe does see the venv
    assert contents["torch_spec"] == "None" and contents["torch"] == []
    assert contents["compilers"] == []
    assert contents["pip_caches"] == [] and contents["wheels"] == []


# Run inside the serving container: how PID 1 (the server) really runs.
CONSTRAINTS_PROBE = r"""
import json
status = dict(
    line.split(":", 1) for line in open("/proc/1/status").read().splitlines() if ":" in line
)
mounts = {}
for line in open("/proc/1/mountinfo"):
    fields = line.split()
    mounts[fields[4]] = {"options": fields[5].split(","), "type": fields[fields.index("-") + 1]}
kernel = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
writes = {}
for folder in ("/tmp", "/var/tmp", "/opt/adapool", "/models"):
    try:
        with open(folder + "/probe", "w") as f:
            f.write("ok")
        writes[folder] = "written"
    except OSError as exc:
        writes[folder] = exc.strerror
print(json.dumps({
    "cmdline": open("/proc/1/cmdline").read().split("\0"),
    "status": {k: v.split() for k, v in status.items()},
    "mounts": {p: mounts[p] for p in ("/", "/tmp", "/models")},
    "writable": sorted(
        p for p, m in mounts.items() if "rw" in m["options"] and not p.startswith(kernel)
    ),
    "writes": writes,
}))
"""


# The server's child processes (PID 1's), by command line.
CHILDREN_PROBE = r"""
import os
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{pid}/stat").read()
        cmdline = open(f"/proc/{pid}/cmdline").read().replace("\0", " ")
    except OSError:
        continue
    if stat.rsplit(")", 1)[1].split()[1] == "1":
        print(pid, cmdline)
"""


def test_runs_under_the_production_constraints(image: Built, served: Served) -> None:
    result = image.engine("exec", served.name, "python", "-c", CONSTRAINTS_PROBE)
    probe = json.loads(result.stdout)
    assert probe["cmdline"][:3] == ["python", "-m", "service"]
    status = probe["status"]
    assert status["Uid"] == ["10001"] * 4 and status["Gid"] == ["10001"] * 4
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[capabilities][0], 16) == 0, (capabilities, status[capabilities])
    assert status["NoNewPrivs"] == ["1"]  # allowPrivilegeEscalation: false
    assert status["Seccomp"] == ["2"]  # a filter: the engine's default profile (RuntimeDefault)
    mounts = probe["mounts"]
    assert "ro" in mounts["/"]["options"]
    assert "ro" in mounts["/models"]["options"]
    assert mounts["/tmp"]["type"] == "tmpfs" and "rw" in mounts["/tmp"]["options"]
    assert probe["writable"] == ["/tmp"]  # the only writable mount but the kernel's
    assert probe["writes"] == {
        "/tmp": "written",
        "/var/tmp": "Read-only file system",  # world-writable in the image, read-only here
        "/opt/adapool": "Read-only file system",
        "/models": "Read-only file system",
    }


def test_the_images_healthcheck_passes(image: Built, served: Served) -> None:
    found = image.engine
    if found.name == "podman":  # runs the image's HEALTHCHECK command in the container
        result = found("healthcheck", "run", served.name, check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        state = found.inspect("container", served.name)["State"]
        health = state.get("Health") or state.get("Healthcheck")
        assert health["Status"] == "healthy", health
    else:  # Docker has no `healthcheck run`: the command itself, as Docker runs it
        test = found.healthcheck(image.tag)
        assert test[0] == "CMD", test
        result = found("exec", served.name, *test[1:], check=False)
        assert result.returncode == 0, result.stdout + result.stderr


def test_serves_what_onnxruntime_computes_and_scrapes(image: Built, served: Served) -> None:
    """A small JSON body (parsed in the server) and one of 76,800 values (over PROCESS_VALUES:
    parsed in the spawned worker process, which must start under the same constraints)."""
    assert httpx.get(f"{served.url}/health/ready", timeout=10).status_code == 200
    model_file = image.context / "model_repository" / MODEL / "1" / "model.onnx"
    session = ort.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(20)
    small = [rng.standard_normal((n, 16)).astype(np.float32) for n in (9, 1, 4)]
    large = [rng.standard_normal((240, 16)).astype(np.float32) for _ in range(20)]
    assert sum(x.size for x in large) > PROCESS_VALUES
    for xs in (small, large):
        embeddings = [x.tolist() for x in xs]
        r = httpx.post(f"{served.url}/pool", json={"embeddings": embeddings}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == MODEL and body["provider"] == "CPUExecutionProvider"
        for i, x in enumerate(xs):
            mask = np.ones((1, len(x)), dtype=bool)
            pooled, weights = session.run(None, {"embeddings": x[None], "attention_mask": mask})
            np.testing.assert_allclose(body["pooled"][i], pooled[0], atol=1e-5)
            np.testing.assert_allclose(body["weights"][i], weights[0].mean(0), atol=1e-5)
    children = image.engine("exec", served.name, "python", "-c", CHILDREN_PROBE).stdout
    assert "multiprocessing" in children, children  # the JSON worker, a child of the server

    metrics = httpx.get(f"{served.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    samples = [s for f in text_string_to_metric_families(metrics.text) for s in f.samples]
    pooled_ok = [
        s.value
        for s in samples
        if s.name == "adapool_requests_total"
        and s.labels.get("model") == MODEL
        and s.labels.get("status") == "200"
    ]
    assert sum(pooled_ok) >= 1, pooled_ok
    ready = {s.labels["model"]: s.value for s in samples if s.name == "adapool_model_ready"}
    committed = {
        p.parent.parent.name for p in (image.context / "model_repository").glob("*/*/model.onnx")
    }
    assert ready == dict.fromkeys(committed, 1.0)


async def pool(client: httpx.AsyncClient) -> Any:
    body = {"embeddings": [[[0.25] * 16] * 64] * 4}
    try:
        r = await client.post("/models/knn-avg/pool", json=body, params={"diagnostics": "false"})
    except httpx.HTTPError as exc:
        return type(exc).__name__
    return r.status_code


def test_sigterm_answers_queued_requests_and_stops_within_the_timeout(image: Built) -> None:
    """Requests wait 1.5 s for their batch (ADAPOOL_MAX_WAIT_MS); `stop` (SIGTERM, then SIGKILL
    after compose's 15 s stop_grace_period) 0.5 s after they were sent."""
    found = image.engine
    env = ("ADAPOOL_MAX_WAIT_MS=1500", f"ADAPOOL_SHUTDOWN_TIMEOUT_SECONDS={SHUTDOWN_TIMEOUT}")
    with serving(image, *env) as s:

        async def scenario() -> tuple[list[Any], float, float]:
            async with httpx.AsyncClient(base_url=s.url, timeout=30) as client:
                started = time.monotonic()
                queued = [asyncio.create_task(pool(client)) for _ in range(8)]
                await asyncio.sleep(0.5)
                sigterm = time.monotonic()
                stop = asyncio.create_task(asyncio.to_thread(found, "stop", "--time=15", s.name))
                statuses = await asyncio.gather(*queued)
                answered = time.monotonic() - started
                await stop
                return statuses, answered, time.monotonic() - sigterm

        statuses, answered, stopped = asyncio.run(scenario())
        state = found.inspect("container", s.name)["State"]
        logs = found.logs(s.name)
    print(
        f"\nstop with 8 queued requests: statuses {statuses} after {answered:.2f} s; stopped "
        f"{stopped:.2f} s after SIGTERM, exit code {state['ExitCode']}"
    )
    assert statuses == [200] * 8, logs
    assert answered >= 1.4  # they really were queued across the SIGTERM
    assert state["ExitCode"] in (0, 143), (state, logs)  # 137: killed at the grace period
    assert stopped <= SHUTDOWN_TIMEOUT + 1.5, logs
    assert "shutting down" in logs
