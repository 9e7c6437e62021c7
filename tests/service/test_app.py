"""The app in process (httpx ASGITransport + lifespan): readiness, auth, settings, imports."""

from __future__ import annotations

import asyncio
import gc
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from service.__main__ import parse_args
from service.app import create_app
from service.server import GracefulServer
from service.settings import Settings, settings_table
from tests.service.server import REPOSITORY, STARTUP_SECONDS, free_port

pytestmark = pytest.mark.anyio
BODY = {"embeddings": [[[0.1] * 16] * 4]}
DEFAULT = Settings.model_fields["default_model"].default


@asynccontextmanager
async def client(**settings: object) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(model_repository=REPOSITORY, **settings))  # type: ignore[arg-type]
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        yield c


async def test_required_cuda_on_a_cpu_machine_is_not_ready() -> None:
    """ONNX Runtime falls back to CPU without raising; readiness must say so, not pretend."""
    async with client(device="cuda") as c:
        r = await c.get("/health/ready")
        assert r.status_code == 503
        problem = r.json()["problems"][0]
        assert "requires CUDAExecutionProvider" in problem and "CPUExecutionProvider" in problem
        assert (await c.get("/health/live")).status_code == 200
        info = (await c.get("/info")).json()
        assert info["device"] == "cuda" and all(
            p == ["CPUExecutionProvider"] for p in info["providers_in_use"].values()
        )


async def test_auto_device_is_ready_on_cpu() -> None:
    async with client(device="auto") as c:
        assert (await c.get("/health/ready")).json() == {"status": "ready"}


async def test_the_app_leaves_the_collector_alone() -> None:
    """Freezing the collector is process-wide: the process's server does it, not the app."""
    gc.unfreeze()  # whatever an earlier test froze
    async with client() as c:
        assert (await c.post("/pool", json=BODY)).status_code == 200
        assert gc.get_freeze_count() == 0


async def test_the_process_server_freezes_what_startup_built() -> None:
    """python -m service's server: once the models are loaded, the objects built so far are
    moved out of the collector's view (a real uvicorn server on loopback, in this process)."""
    gc.unfreeze()
    port = free_port()
    app = create_app(Settings(model_repository=REPOSITORY))
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = GracefulServer(config, app.state.runtime, drain=0.0, timeout=2.0)
    serving = asyncio.create_task(server.serve())
    try:
        for _ in range(600):
            if server.started or serving.done():
                break
            await asyncio.sleep(0.05)
        assert server.started and gc.get_freeze_count() > 0
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.post("/pool", json=BODY)).status_code == 200
    finally:
        server.should_exit = True
        await serving
        gc.unfreeze()


async def test_api_key() -> None:
    async with client(api_key="s3cret") as c:
        r = await c.post("/pool", json=BODY)
        assert r.status_code == 401 and r.json()["error"]["type"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = await c.post("/pool", json=BODY, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await c.post("/pool", json=BODY, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        assert (await c.get("/health/ready")).status_code == 200  # open by default
        assert (await c.get("/metrics")).status_code == 200
        assert (await c.get("/models")).status_code == 401
        # the key is checked before anything else about the request
        named = await c.post("/models/knn-avg/pool?version=x", json=BODY)
        assert named.status_code == 401
        security = (await c.get("/openapi.json")).json()["paths"]["/pool"]["post"]["security"]
        assert security == [{"bearer": []}]
    async with client(api_key="s3cret", open_health_and_metrics=False) as c:
        assert (await c.get("/metrics")).status_code == 401


async def test_request_id_is_echoed_or_made() -> None:
    async with client() as c:
        r = await c.post("/pool", json=BODY, headers={"X-Request-Id": "abc-123"})
        assert r.headers["x-request-id"] == "abc-123" and r.json()["request_id"] == "abc-123"
        r = await c.post("/pool", json=BODY, headers={"X-Request-Id": "bad id\\nwith junk"})
        assert len(r.headers["x-request-id"]) == 32


async def test_unknown_default_model_fails_startup() -> None:
    app = create_app(Settings(model_repository=REPOSITORY, default_model="missing"))
    with pytest.raises(RuntimeError, match="default model 'missing'"):
        async with LifespanManager(app, startup_timeout=STARTUP_SECONDS):
            pass


def test_settings_from_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPOOL_MAX_BATCH_SIZE", "70")
    monkeypatch.setenv("ADAPOOL_MODELS", '["a", "b"]')
    assert Settings().max_batch_size == 70 and Settings().models == ["a", "b"]
    flags = parse_args(
        [
            "--max-batch-size",
            "9",
            "--max-items-per-request",
            "9",
            "--models",
            "x,y",
            "--device",
            "cpu",
        ]
    )
    s = Settings(**flags)
    assert (s.max_batch_size, s.models, s.device) == (9, ["x", "y"], "cpu")
    with pytest.raises(ValidationError, match="max_items_per_request must be <= max_batch_size"):
        Settings(max_batch_size=4)
    with pytest.raises(ValidationError):
        Settings(device="gpu")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        Settings(max_batchsize=3)  # type: ignore[call-arg]


def test_help_lists_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in text
    assert "within 5% of its best" in text  # a literal % in a description


def test_importing_the_service_does_not_import_torch() -> None:
    code = (
        "import sys, service.app, service.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'models', 'export'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


async def test_full_queue_answers_429_with_retry_after() -> None:
    """A queue of one request and a long batch wait: the second concurrent request is refused."""
    import asyncio

    async with client(max_queue_requests=1, max_wait_ms=300, retry_after_seconds=3) as c:
        first = asyncio.create_task(c.post("/pool", json=BODY))
        await asyncio.sleep(0.1)  # the first request now waits in the queue for its batch
        second = await c.post("/pool", json=BODY)
        assert second.status_code == 429 and second.headers["retry-after"] == "3"
        assert second.json()["error"]["type"] == "overloaded"
        assert (await first).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert (
            f'adapool_rejected_requests_total{{model="{DEFAULT}",reason="queue_full"}} 1.0'
            in metrics
        )


def test_readme_documents_every_setting() -> None:
    """The README's table is settings_table() verbatim: names, defaults and meanings."""
    readme = (REPOSITORY.parent / "README.md").read_text()
    missing = [n for n in Settings.model_fields if f"`ADAPOOL_{n.upper()}`" not in readme]
    assert not missing, missing
    hint = "paste service.settings.settings_table() into the README"
    assert settings_table() in readme, hint


def test_empty_api_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """ADAPOOL_API_KEY= (set but empty, as compose writes it) must not demand an empty token."""
    monkeypatch.setenv("ADAPOOL_API_KEY", "")
    assert Settings().api_key is None


async def test_a_broken_model_is_not_ready_in_metrics_and_refusals_are_counted(
    tmp_path: Path,
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(REPOSITORY / "knn-adapool-ego", repo / "knn-adapool-ego")
    shutil.copytree(REPOSITORY / "knn-avg", repo / "knn-avg")
    (repo / "knn-avg" / "1" / "model.onnx").write_bytes(b"not an onnx file")
    app = create_app(Settings(model_repository=repo, default_model="knn-adapool-ego"))
    async with (
        LifespanManager(app, startup_timeout=STARTUP_SECONDS),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c,
    ):
        assert (await c.get("/health/ready")).status_code == 503
        r = await c.post("/models/knn-avg/pool", json=BODY)
        assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"
        assert (await c.post("/pool", json=BODY)).status_code == 200  # the others serve
        # the ego model's query token (token 0) masked out: 422, counted as invalid
        masked = {"embeddings": [[[0.1] * 16] * 4], "attention_mask": [[0, 1, 1, 1]]}
        assert (await c.post("/pool", json=masked)).status_code == 422
        metrics = (await c.get("/metrics")).text
    assert 'adapool_model_ready{model="knn-avg",version="1"} 0.0' in metrics
    assert 'adapool_model_ready{model="knn-adapool-ego",version="1"} 1.0' in metrics
    assert 'adapool_rejected_requests_total{model="knn-avg",reason="not_ready"} 1.0' in metrics
    assert (
        'adapool_rejected_requests_total{model="knn-adapool-ego",reason="invalid"} 1.0' in metrics
    )
