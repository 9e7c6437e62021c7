"""The /pool API: a thin HTTP front-end on the core (:mod:`service.core`).

Routes live in one module each (``pool``, ``models``, ``health``, ``info``, ``metrics``); errors
are rendered by :mod:`service.api.errors`; :mod:`service.api.context` gives every request an id
and its request metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.api import health, info, metrics, models, pool
from service.api.deps import require_key, require_key_unless_open
from service.api.pool import PoolRoute
from service.settings import Settings

HOT = (pool.router,)  # the pool routes
ROUTERS = (models.router, health.router, info.router, metrics.router)


def include_routes(
    app: FastAPI, hot: Sequence[APIRouter] = HOT, rest: Sequence[APIRouter] = ROUTERS
) -> None:
    """Every router's routes, on the app's own router, the ``hot`` ones (the pool and infer
    routes) first: routes are tried in order. Added as they are, not through
    ``include_router``, whose nested router a request would walk through on the hot path; the
    routes already carry their router's dependencies and tags."""
    routes = app.router.routes
    routes[0:0] = [route for router in hot for route in router.routes]
    for router in rest:
        routes.extend(router.routes)


def document_auth(app: FastAPI, settings: Settings) -> None:
    """With an API key, the OpenAPI document marks every route that requires it (bearer)."""
    if settings.api_key is None:
        return
    generate = app.openapi
    keyed: set[Any] = {require_key}
    if not settings.open_health_and_metrics:
        keyed.add(require_key_unless_open)
    protected = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, APIRoute)
        and (isinstance(route, PoolRoute) or any(d.dependency in keyed for d in route.dependencies))
        for method in route.methods or ()
    }

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["bearer"] = {"type": "http", "scheme": "bearer"}
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    if (path, method) in protected:
                        operation["security"] = [{"bearer": []}]
        return app.openapi_schema or generate()

    app.openapi = openapi  # type: ignore[method-assign]
