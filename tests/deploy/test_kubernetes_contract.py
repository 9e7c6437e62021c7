"""The service as the manifests run it: the container's command, environment (the rendered
ConfigMap and env, resolved as the kubelet does) and port, on a loopback address; probed on
every path the probes and the ServiceMonitor name, and stopped as the kubelet stops a pod."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as httpclient

from bench.process import running_server
from service.settings import Settings
from tests.deploy import kube, tools

Doc = dict[str, Any]
REPOSITORY = tools.ROOT / "model_repository"  # what the model volume holds
D = 16


def loopback_with_port(port: int) -> str:
    """A loopback address where ``port`` is free: the manifests' port, not another one."""
    for n in range(20, 80):
        host = f"127.0.0.{n}"
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return host
    message = f"port {port} is taken on every loopback address tried"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class Pod:
    url: str
    process: subprocess.Popen[bytes]
    container: Doc
    env: dict[str, str]

    def get(self, path: str, timeout: float = 10.0) -> httpx.Response:
        return httpx.get(f"{self.url}{path}", timeout=timeout)

    def probe(self, name: str) -> tuple[int, float]:
        """The kubelet's HTTP probe: (status, seconds), within the probe's timeout."""
        spec = self.container[name]
        assert spec["httpGet"]["port"] == self.container["ports"][0]["name"]
        started = time.perf_counter()
        response = self.get(spec["httpGet"]["path"], timeout=spec["timeoutSeconds"])
        return response.status_code, time.perf_counter() - started


@contextmanager
def pod(target: str, tmp: Path, extra_env: dict[str, str] | None = None) -> Iterator[Pod]:
    """Start the container's command with its environment; yield once its port answers.

    Two substitutions, both where Kubernetes itself would differ from a test machine:
    ADAPOOL_HOST 0.0.0.0 becomes a loopback address (test traffic stays on loopback), and the
    model repository's mount path becomes the repository's folder (what the volume holds).
    ``python`` is this environment's interpreter (the image's PATH puts its venv first).
    """
    c = kube.container(target)
    env = kube.container_env(c, kube.config_maps(target)) | (extra_env or {})
    (port,) = c["ports"]
    assert env["ADAPOOL_PORT"] == str(port["containerPort"])
    assert env["ADAPOOL_HOST"] == "0.0.0.0"
    assert c["command"] == ["python", "-m", "service"]  # what running_server runs
    env["ADAPOOL_HOST"] = loopback_with_port(port["containerPort"])
    env["ADAPOOL_MODEL_REPOSITORY"] = str(REPOSITORY)
    startup = c["startupProbe"]
    with running_server(
        REPOSITORY,
        ready_timeout=startup["periodSeconds"] * startup["failureThreshold"],
        log_level=env["ADAPOOL_LOG_LEVEL"],
        python=sys.executable,
        host=env["ADAPOOL_HOST"],
        port=port["containerPort"],
        cwd=tmp,
        env=env,
        # The port opens once every model is loaded and warmed up; /health/live answers then.
        wait_for="/health/live",
    ) as (url, process):
        yield Pod(url, process, c, env)


def metrics_path(target: str) -> str:
    """The ServiceMonitor's endpoint, followed to the container: its path, on the pod's port."""
    docs = kube.render(target)
    (endpoint,) = kube.one(docs, "ServiceMonitor")["spec"]["endpoints"]
    (port,) = kube.container(target)["ports"]
    if target == "kserve":  # KServe's Service names its port after the container's
        assert endpoint["port"] == port["name"]
    else:
        (service_port,) = kube.one(docs, "Service")["spec"]["ports"]
        assert endpoint["port"] == service_port["name"]
        assert service_port["targetPort"] == port["name"]
    path: str = endpoint["path"]
    return path


def pool(p: Pod, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"embeddings": [[[0.25] * D] * 3]}
    return httpx.post(f"{p.url}/pool", json=body, headers=headers, timeout=30)


def test_base_pod_answers_every_probe_and_the_scrape(tmp_path: Path) -> None:
    with pod("base", tmp_path) as p:
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            status, seconds = p.probe(name)
            assert status == 200, name
            path = p.container[name]["httpGet"]["path"]
            print(f"{name} {path}: {status} in {seconds * 1000:.1f} ms")
        # Readiness runs a forward pass on every model: well inside its timeout, measured.
        times = [p.probe("readinessProbe")[1] for _ in range(20)]
        print(
            f"readiness: median {sorted(times)[10] * 1000:.1f} ms, max {max(times) * 1000:.1f} ms"
        )
        assert max(times) < p.container["readinessProbe"]["timeoutSeconds"] / 2
        scrape = p.get(metrics_path("base"))
        assert scrape.status_code == 200
        assert "# TYPE adapool_queue_depth gauge" in scrape.text
        answer = pool(p)
        assert (
            answer.status_code == 200 and answer.json()["model"] == p.env["ADAPOOL_DEFAULT_MODEL"]
        )
        info = p.get("/info").json()
        assert info["device"] == "cpu"
        assert info["batching"]["max_queue_requests"] == int(p.env["ADAPOOL_MAX_QUEUE_REQUESTS"])
        assert info["limits"]["max_body_bytes"] == int(p.env["ADAPOOL_MAX_BODY_BYTES"])


def test_with_the_api_key_secret_probes_stay_open_and_termination_drains(tmp_path: Path) -> None:
    """With the optional Secret set, the probes and the scrape need no key (the kubelet and
    Prometheus send none), /pool does. Then the kubelet's stop, after the preStop sleep (during
    which the process is untouched, so it is not waited out here): SIGTERM; readiness 503 at
    once while liveness stays 200 (the pod is not restarted) and requests are still answered for
    the drain; then the process exits before the grace period's SIGKILL."""
    spec = kube.pod_spec(kube.workload("base"))
    c = kube.container("base")
    grace = spec["terminationGracePeriodSeconds"] - c["lifecycle"]["preStop"]["sleep"]["seconds"]
    key = {"Authorization": "Bearer s3cret"}
    with pod("base", tmp_path, {"ADAPOOL_API_KEY": "s3cret"}) as p:
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert p.probe(name)[0] == 200, name
        assert p.get(metrics_path("base")).status_code == 200
        assert pool(p).status_code == 401
        assert pool(p, key).status_code == 200
        drain = float(p.env["ADAPOOL_SHUTDOWN_DRAIN_SECONDS"])
        p.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.5)
        assert p.probe("readinessProbe")[0] == 503
        served = 0
        while time.monotonic() - signalled < drain - 1.0:
            assert p.probe("livenessProbe")[0] == 200
            assert pool(p, key).status_code == 200
            served += 1
            time.sleep(0.5)
        code = p.process.wait(timeout=grace)
        stopped = time.monotonic() - signalled
    print(f"{served} requests answered during the drain; exit {code} after {stopped:.2f} s")
    assert served >= 10
    assert drain <= stopped < grace
    assert code in (0, -signal.SIGTERM)


def test_kserve_predictor_answers_its_v2_probes_and_tritonclient(tmp_path: Path) -> None:
    """The InferenceService's pod: its three v2 probes, the scrape, and a Triton client's
    binary request to the default model on the pod's one port, as KServe would route it."""
    with pod("kserve", tmp_path) as p:
        assert p.env["PROTOCOL"] == "v2"
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert p.container[name]["httpGet"]["path"].startswith("/v2/")
            assert p.probe(name)[0] == 200, name
        scrape = p.get(metrics_path("kserve"))
        assert scrape.status_code == 200
        assert "# TYPE adapool_queue_depth gauge" in scrape.text
        model = p.env.get("ADAPOOL_DEFAULT_MODEL", Settings.model_fields["default_model"].default)
        client = httpclient.InferenceServerClient(p.url.removeprefix("http://"))
        assert client.is_server_ready() and client.is_model_ready(model)
        x = np.random.default_rng(0).standard_normal((2, 5, D)).astype(np.float32)
        mask = np.ones((2, 5), dtype=bool)
        inputs = [
            httpclient.InferInput("embeddings", list(x.shape), "FP32"),
            httpclient.InferInput("attention_mask", list(mask.shape), "BOOL"),
        ]
        inputs[0].set_data_from_numpy(x, binary_data=True)
        inputs[1].set_data_from_numpy(mask, binary_data=True)
        result = client.infer(model, inputs)
        pooled, weights = result.as_numpy("pooled"), result.as_numpy("weights")
        assert pooled.shape[0] == 2 and np.isfinite(pooled).all()
        np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-5)
