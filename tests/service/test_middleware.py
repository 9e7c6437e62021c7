"""DirectRoutes on a small app of its own: which requests skip the framework's routing."""

from __future__ import annotations

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.middleware import DirectRoutes

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


async def test_missing_routes_are_a_startup_mistake_not_a_silent_fallback() -> None:
    app = FastAPI()
    app.add_middleware(DirectRoutes, paths=("/gone",), handled=Refused, on_error=on_error)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        with pytest.raises(RuntimeError, match="not all found"):
            await c.post("/gone")
