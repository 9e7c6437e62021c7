"""DirectRoutes on a small app of its own: which requests skip the framework's routing."""

from __future__ import annotations

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service import app as app_module
from service.middleware import DirectRoutes, direct_routes
from service.settings import Settings
from tests.service.server import REPOSITORY

pytestmark = pytest.mark.anyio


class Refused(Exception):
    pass


class CountInner:
    """Counts the requests that reach the framework's own layers below DirectRoutes."""

    calls = 0

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        CountInner.calls += 1
        await self.app(scope, receive, send)


async def on_error(request: Request, exc: Exception) -> Response:
    return JSONResponse({"refused": str(exc)}, status_code=403)


async def key(request: Request) -> None:
    if request.headers.get("key") != "k":
        raise Refused("no key")


def make_app() -> FastAPI:
    app = FastAPI()

    @app.post("/direct/{name}", dependencies=[Depends(key)])
    async def direct(request: Request) -> Response:
        if request.path_params["name"] == "bad":
            raise Refused("bad name")
        route = request.scope["route"].path
        return JSONResponse({"name": request.path_params["name"], "route": route})

    @app.post("/other")
    async def other() -> Response:
        return JSONResponse({"other": True})

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return await on_error(request, exc)

    app.add_middleware(CountInner)
    app.add_middleware(DirectRoutes, paths=("/direct/{name}",), handled=Refused, on_error=on_error)
    return app


async def test_a_direct_route_skips_the_router_and_keeps_its_dependencies() -> None:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        CountInner.calls = 0
        r = await c.post("/direct/a", headers={"key": "k"})
        assert r.json() == {"name": "a", "route": "/direct/{name}"} and CountInner.calls == 0
        assert (await c.post("/direct/a")).json() == {"refused": "no key"}  # dependency first
        assert (await c.post("/direct/bad", headers={"key": "k"})).status_code == 403
        assert CountInner.calls == 0
        # anything else goes through the app: another route, a wrong method, no route
        assert (await c.post("/other")).json() == {"other": True}
        assert (await c.get("/direct/a")).status_code == 405
        assert (await c.post("/nowhere")).status_code == 404
        assert CountInner.calls == 3


async def test_dependency_overrides_send_every_request_through_fastapi() -> None:
    app = make_app()

    async def no_key() -> None:
        return None

    app.dependency_overrides[key] = no_key
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        CountInner.calls = 0
        assert (await c.post("/direct/a")).status_code == 200  # the override applied
        assert CountInner.calls == 1


def test_what_direct_routes_cannot_call_is_refused_up_front() -> None:
    app = make_app()
    assert [r.path for r in direct_routes(app, ("/direct/{name}",))] == ["/direct/{name}"]
    with pytest.raises(RuntimeError, match="not all found once"):
        direct_routes(app, ("/direct/{name}", "/gone"))

    @app.post("/params/{name}")
    async def params(request: Request, name: str) -> Response:  # FastAPI would fill in name
        return JSONResponse({})

    with pytest.raises(RuntimeError, match="params must be a coroutine function of the request"):
        direct_routes(app, ("/params/{name}",))


async def test_the_service_checks_its_direct_routes_before_serving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(app_module, "POOL_PATHS", ("/pool", "/no/such/route"))
    app = app_module.create_app(Settings(model_repository=REPOSITORY))
    with pytest.raises(RuntimeError, match="not all found once"):
        async with LifespanManager(app):
            pass
