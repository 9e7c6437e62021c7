"""FastAPI dependencies of the API's routes: the runtime, and the API key where one is set."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.core.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def require_key(request: Request) -> None:
    """``Authorization: Bearer <api_key>`` when a key is set (the runtime checks it)."""
    get_runtime(request).authorize(request.headers.get("authorization"))


async def require_key_unless_open(request: Request) -> None:
    """As :func:`require_key`, unless health and metrics are left open (the default)."""
    runtime = get_runtime(request)
    if not runtime.settings.open_health_and_metrics:
        runtime.authorize(request.headers.get("authorization"))


KEYED = [Depends(require_key)]
OPEN = [Depends(require_key_unless_open)]
