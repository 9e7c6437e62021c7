"""Security: the API key on every route, model names that cannot leave the repository, no
pickle, the service running unprivileged with nothing writable, and known vulnerabilities in
the pinned dependencies (pip-audit).

Bodies bounded before they are read: test_bad_input.py (413 from Content-Length before the
body is sent, chunked bodies cut at the limit). The container's non-root user and read-only
root file system: tests/deploy/test_dockerfiles.py and tests/deploy/test_compose.py.
"""

from __future__ import annotations

import ast
import hmac
import http.client
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from asgi_lifespan import LifespanManager

from bench import process
from service.app import create_app
from service.settings import Settings
from tests.reliability.common import REPOSITORY, assert_error, serves, tool, valid_body
from tests.service.server import STARTUP_SECONDS

pytestmark = pytest.mark.anyio
KEY = "s3cret-Key_0123456789"
HEALTH_AND_METRICS = {
    "/health/live",
    "/health/ready",
    "/metrics",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/knn-avg/ready",
    "/v2/models/knn-avg/versions/1/ready",
}
# FastAPI's documentation routes stay open: they describe the API, they serve no data.
DOCS = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
WRONG: list[dict[str, Any]] = [
    {},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {KEY[:-1]}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"Authorization": f"Bearer  {KEY}"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": KEY},
    {"X-API-Key": KEY},
    {"Authorization": ("Bearer " + "é" * 20).encode()},  # not ASCII (UTF-8 bytes)
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def client(**settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    app = create_app(Settings(model_repository=REPOSITORY, **settings))
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=transport, base_url="http://test") as c,
    ):
        yield c, app


def every_route(app: Any) -> list[tuple[str, str]]:
    """(method, concrete path) of every route the app has, documentation routes included."""
    out = []
    for route in app.routes:
        path = route.path.replace("{name}", "knn-avg").replace("{version}", "1")
        for method in sorted(getattr(route, "methods", None) or {"GET"}):
            if method != "HEAD":
                out.append((method, path))
    return out


async def call(
    c: httpx.AsyncClient, app: Any, method: str, path: str, headers: dict[str, Any]
) -> httpx.Response:
    """One request; a POST carries a valid body for the model its route names."""
    named = path.startswith(("/models/", "/v2/models/"))
    model = "knn-avg" if named else app.state.runtime.settings.default_model
    body: dict[str, Any] | None = valid_body(model) if method == "POST" else None
    if body is not None and path.startswith("/v2/"):  # the same tokens as a v2 tensor
        x = body["embeddings"]
        shape = [len(x), len(x[0]), len(x[0][0])]
        flat = [v for item in x for token in item for v in token]
        body = {
            "inputs": [{"name": "embeddings", "shape": shape, "datatype": "FP32", "data": flat}]
        }
    return await c.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("open_health", [True, False])
async def test_every_route_but_the_open_ones_needs_the_key(open_health: bool) -> None:
    async with client(api_key=KEY, open_health_and_metrics=open_health) as (c, app):
        routes = every_route(app)
        assert {p for _, p in routes} >= {
            "/pool",
            "/models/knn-avg/pool",
            "/models",
            "/info",
        } | HEALTH_AND_METRICS
        open_paths = DOCS | (HEALTH_AND_METRICS if open_health else set())
        for method, path in routes:
            if path in open_paths:
                assert (await call(c, app, method, path, {})).status_code == 200, path
                continue
            for headers in WRONG:
                r = await call(c, app, method, path, headers)
                if path.startswith("/v2"):  # the v2 protocol's own body
                    assert r.status_code == 401 and "API key" in r.json()["error"], r.text
                else:
                    assert_error(r, 401, "unauthorized")
                assert r.headers["www-authenticate"] == "Bearer"
            ok = await call(c, app, method, path, {"Authorization": f"Bearer {KEY}"})
            assert ok.status_code == 200, (path, ok.text)
        # the document says the same: bearer on exactly the protected operations
        schema = app.openapi()
        for path, operations in schema["paths"].items():
            concrete = path.replace("{name}", "knn-avg").replace("{version}", "1")
            for operation in operations.values():
                assert ("security" in operation) == (concrete not in open_paths), path
        metrics = (await c.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})).text
    protected = len([r for r in routes if r[1] not in open_paths])
    line = 'adapool_rejected_requests_total{model="",reason="unauthorized"} '
    assert f"{line}{float(protected * len(WRONG))}" in metrics


async def test_the_key_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module service.app uses
    async with client(api_key=KEY) as (c, _):
        await c.get("/info", headers={"Authorization": "Bearer guess"})
        await c.get("/info", headers={"Authorization": f"Bearer {KEY}"})
    assert seen == [(b"guess", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_model_names_cannot_leave_the_repository(tmp_path: Path) -> None:
    """A real model lies next to the repository; no spelling of a path reaches it."""
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    for root, name in ((repo, "knn-avg"), (outside, "knn-max")):
        (root / name).mkdir(parents=True)
        shutil.copytree(REPOSITORY / name / "1", root / name / "1")
    attempts = [
        "..%2Foutside%2Fknn-max",
        "..%2F..%2Foutside%2Fknn-max",
        "%2e%2e%2foutside%2fknn-max",
        "..%5Coutside%5Cknn-max",
        f"{str(outside / 'knn-max').replace('/', '%2F')}",
        "knn-max",
        "..",
        "%2e%2e",
        ".",
    ]
    flags = ["--default-model", "knn-avg"]
    body = json.dumps(valid_body("knn-avg"))
    with process.running_server(repo, flags) as (url, _):
        parsed = urlparse(url)
        for name in attempts:
            for method, path in (("POST", f"/models/{name}/pool"), ("GET", f"/models/{name}")):
                # http.client sends the path as written (httpx would resolve a literal "..")
                connection = http.client.HTTPConnection(parsed.hostname or "", parsed.port)
                connection.request(method, path, body, {"Content-Type": "application/json"})
                reply = connection.getresponse()
                status, payload = reply.status, json.loads(reply.read())
                connection.close()
                assert status == 404, (path, status, payload)
                assert payload["error"]["type"] == "not_found", payload
        listed = [m["name"] for m in httpx.get(f"{url}/models").json()["models"]]
        serves(url, "knn-avg")
    assert listed == ["knn-avg"]


def test_the_service_code_never_unpickles() -> None:
    """Behaviour: test_bad_input.py sends an object-dtype .npy whose unpickling would create a
    file (it does not). Here: no pickle, np.load or allow_pickle=True anywhere in service/."""
    offenders = []
    for path in sorted((process.ROOT / "service").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            where = f"{path.name}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.alias) and "pickle" in node.name:
                offenders.append(f"{where} imports {node.name}")
            if isinstance(node, ast.Name) and "pickle" in node.id:
                offenders.append(f"{where} uses {node.id}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("load", "loads")
                and isinstance(node.value, ast.Name)
                and node.value.id in ("np", "numpy")
            ):
                offenders.append(f"{where} calls {node.value.id}.{node.attr}")
            if node_is_allow_pickle(node):
                offenders.append(f"{where} passes allow_pickle")
    assert not offenders, offenders


def node_is_allow_pickle(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.keyword)
        and node.arg == "allow_pickle"
        and not (isinstance(node.value, ast.Constant) and node.value.value is False)
    )


def test_the_service_runs_unprivileged_with_nothing_writable() -> None:
    """As the container does (user 10001, read-only root file system): here as user nobody,
    with a read-only model repository and working folder and no HOME or TMPDIR at all."""
    with tempfile.TemporaryDirectory(prefix="adapool-ro-") as folder:
        root = Path(folder)
        repo, cwd = root / "repo", root / "cwd"
        for name in ("knn-adapool-ego", "knn-avg"):
            shutil.copytree(REPOSITORY / name, repo / name)
        cwd.mkdir()
        prefix = ""  # already unprivileged unless root
        if os.geteuid() == 0:
            setpriv = tool("setpriv", "Debian package util-linux")
            prefix = f"{setpriv} --reuid=65534 --regid=65534 --clear-groups "
        wrapper = root / "python-as-nobody"
        wrapper.write_text(f'#!/bin/sh\nexec {prefix}"{sys.executable}" "$@"\n')
        for path in [root, *root.rglob("*")]:  # readable by all, writable by none
            path.chmod(0o555 if path.is_dir() or path == wrapper else 0o444)
        env = {"HOME": "/nonexistent", "TMPDIR": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            flags = ["--default-model", "knn-avg"]
            with process.running_server(repo, flags, python=wrapper, cwd=cwd, env=env) as (
                url,
                server,
            ):
                status = Path(f"/proc/{server.pid}/status").read_text()
                serves(url)
                serves(url, "knn-avg")
        finally:
            for path in [root, *root.rglob("*")]:
                if path.is_dir():
                    path.chmod(0o755)
    uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
    assert int(uid) != 0


def test_pinned_dependencies_have_no_known_vulnerabilities(tmp_path: Path) -> None:
    """pip-audit against every version pinned in constraints.txt (no resolution, no install).

    Known vulnerabilities fail the test. If the vulnerability service cannot be reached (or does
    not answer within 3 minutes), or answers for none of the pinned versions, nothing was
    audited: the test says so and skips, in CI too, so that a CI run never depends on an outside
    service being up."""
    audit = tool("pip-audit", "PyPI pip-audit, in the dev extra: make setup")
    report = tmp_path / "audit.json"
    command = [
        audit,
        "--requirement",
        str(process.ROOT / "constraints.txt"),
        "--no-deps",
        "--disable-pip",
        "--progress-spinner",
        "off",
        "--format",
        "json",
        "--output",
        str(report),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        pytest.skip("nothing audited: pip-audit's vulnerability service did not answer in 180 s")
    if not report.exists():
        pytest.skip(
            f"nothing audited: pip-audit could not reach its service: {result.stderr[-500:]}"
        )
    dependencies = json.loads(report.read_text())["dependencies"]
    vulnerable = [
        f"{d['name']} {d['version']}: {', '.join(v['id'] for v in d['vulns'])}"
        for d in dependencies
        if d.get("vulns")
    ]
    unaudited = [d for d in dependencies if "skip_reason" in d]
    print(
        f"\npip-audit: {len(dependencies)} pinned packages, {len(dependencies) - len(unaudited)} "
        f"audited, {len(unaudited)} not auditable, {len(vulnerable)} vulnerable"
    )
    assert not vulnerable, vulnerable
    if len(unaudited) == len(dependencies):
        pytest.skip(
            f"nothing audited: the vulnerability service (PyPI) knows none of the "
            f"{len(dependencies)} pinned versions, e.g. {unaudited[0]['skip_reason']!r}"
        )
