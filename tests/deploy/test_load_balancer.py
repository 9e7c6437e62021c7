"""deploy/nginx: the load balancer's template passes `nginx -t`, and, run for real in front of
two service replicas on 127.0.0.2 and 127.0.0.3 that a DNS stub names `adapool` (as Docker's DNS
does for `--scale adapool=2`), spreads requests over both, survives one going away and answers
its own errors in the service's JSON error format."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy import tools
from tests.deploy.dns import dns_server
from tests.deploy.launch import serving
from tests.service.server import REPOSITORY, free_port

TEMPLATE = tools.DEPLOY / "nginx" / "templates" / "default.conf.template"
REPLICAS = ["127.0.0.2", "127.0.0.3"]
LIMIT = 200_000  # bytes: a small body limit, so the 413 path is cheap to test


def render(env: dict[str, str]) -> str:
    """What the nginx image's envsubst step makes of the template."""
    text = TEMPLATE.read_text()
    for key, value in env.items():
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, "a template variable without a value"
    return text


def nginx_conf(folder: Path, server: str) -> Path:
    (folder / "logs").mkdir(exist_ok=True)
    (folder / "default.conf").write_text(server)
    conf = folder / "nginx.conf"
    conf.write_text(
        f"pid {folder}/nginx.pid;\nerror_log stderr warn;\nevents {{}}\n"
        f"http {{ access_log off; include {folder}/default.conf; }}\n"
    )
    return conf


def test_template_passes_nginx_t(tmp_path: Path) -> None:
    env = tools.compose_config()["services"]["lb"]["environment"]
    conf = nginx_conf(tmp_path, render(env))
    result = subprocess.run(
        [tools.executable("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def port_free_on(hosts: list[str]) -> int:
    for _ in range(50):
        port = free_port()
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on every replica address")


@dataclass
class Balancer:
    url: str
    replicas: dict[str, str]  # address -> replica URL
    running: dict[str, ExitStack]  # address -> what stops that replica

    def stop(self, address: str) -> None:
        self.running[address].close()


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Balancer]:
    nginx = tools.executable("nginx")
    port = port_free_on(REPLICAS)
    with ExitStack() as stack:
        running = {address: stack.enter_context(ExitStack()) for address in REPLICAS}
        replicas = {
            address: running[address].enter_context(
                serving(
                    sys.executable,
                    address,
                    port,
                    REPOSITORY,
                    tools.ROOT,
                    env={"ADAPOOL_MAX_BODY_BYTES": str(LIMIT)},
                )
            )
            for address in REPLICAS
        }
        dns_port = stack.enter_context(dns_server("adapool", REPLICAS))
        lb_port = free_port()
        server = render({"ADAPOOL_MAX_BODY_BYTES": str(LIMIT)})
        for old, new in (
            (r"resolver 127\.0\.0\.11 valid=10s", f"resolver 127.0.0.1:{dns_port} valid=1s"),
            (r"listen 8080;", f"listen 127.0.0.1:{lb_port};"),
            (r"adapool:8000;", f"adapool:{port};"),
        ):
            server, replaced = re.subn(old, new, server)
            assert replaced == 1, old
        conf = nginx_conf(tmp_path, server)
        process = subprocess.Popen(
            [nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{lb_port}"
        try:
            deadline = time.monotonic() + 10
            while True:
                assert process.poll() is None, process.stdout.read() if process.stdout else ""
                try:
                    if httpx.get(f"{url}/lb/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "nginx did not start"
                    time.sleep(0.1)
            yield Balancer(url, replicas, running)
        finally:
            process.terminate()
            process.wait(timeout=10)


def pool_requests(replica: str) -> float:
    text = httpx.get(f"{replica}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "adapool_requests_total" and sample.labels["route"] == "/pool"
    )


def test_balances_over_replicas_and_answers_json_errors(balancer: Balancer) -> None:
    body = {"embeddings": [[[0.01 * i] * 16 for i in range(8)]]}
    with httpx.Client(base_url=balancer.url, timeout=10) as client:
        for _ in range(30):
            response = client.post("/pool", json=body)
            assert response.status_code == 200, response.text
        counts = [pool_requests(url) for url in balancer.replicas.values()]
        # nginx starts each request at a random one of the resolved addresses: both get work
        # (a replica with under 5 of 30 has odds of about 1 in 20,000).
        assert sum(counts) == 30 and min(counts) >= 5, counts

        too_large = client.post(
            "/pool", content=b"0" * (LIMIT + 1), headers={"Content-Type": "application/json"}
        )
        assert too_large.status_code == 413
        assert too_large.json()["error"]["type"] == "payload_too_large"

        # One replica goes away: nginx passes each request to the other (none was sent yet).
        balancer.stop(REPLICAS[0])
        for _ in range(6):
            assert client.post("/pool", json=body).status_code == 200
        # None left: nginx's own 503, in the service's error format.
        balancer.stop(REPLICAS[1])
        gone = client.post("/pool", json=body)
        assert gone.status_code == 503
        assert gone.json()["error"]["type"] == "not_ready"
        assert re.fullmatch(r"[0-9a-f]{32}", gone.json()["request_id"])
