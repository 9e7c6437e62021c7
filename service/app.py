"""The app factory: ``create_app(settings)`` builds the ASGI app; its lifespan starts and stops
the core.

The core (:class:`~service.core.runtime.Runtime`, on ``app.state.runtime``) loads every model
version, warms it up and starts its batcher when the lifespan starts; the routes
(:mod:`service.api`) translate HTTP requests into core calls. Nothing is loaded at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.api import document_auth, include_routes
from service.api.bodies import Decoders
from service.api.context import RequestContext
from service.api.errors import install_handlers
from service.core.runtime import Runtime
from service.metrics import Metrics
from service.settings import Settings


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing is loaded until the lifespan starts."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    runtime = Runtime(settings, metrics)
    decoders = Decoders(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()
            await decoders.stop()

    app = FastAPI(
        title="AdaPool Serve",
        version=metadata.version("adapool-serve"),
        summary="Pooled vectors, per-token pooling weights and signal/noise diagnostics.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.decoders = decoders
    app.add_middleware(RequestContext, metrics=metrics)
    install_handlers(app)
    include_routes(app)
    document_auth(app, settings)
    return app
