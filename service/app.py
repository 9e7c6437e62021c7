"""The app factory: ``create_app(settings)`` builds the ASGI app; its lifespan starts and stops
the core.

The core (:class:`~service.core.runtime.Runtime`, on ``app.state.runtime``) loads every model
version, warms it up and starts its batcher when the lifespan starts; two front-ends translate
HTTP requests into core calls: the /pool API (:mod:`service.api`) and the KServe v2 protocol
(:mod:`service.v2`). Nothing is loaded at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import metadata

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from service.api import HOT, ROUTERS, document_auth, include_routes, pool
from service.api.admission import HeadAdmission
from service.api.bodies import Decoders
from service.api.context import RequestContext
from service.api.errors import install_handlers
from service.core.runtime import Runtime
from service.metrics import Metrics
from service.settings import Settings
from service.v2 import rest as v2_rest
from service.v2.grpc import GrpcServer


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing is loaded until the lifespan starts."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    runtime = Runtime(settings, metrics)
    decoders = Decoders(settings)

    grpc = GrpcServer(runtime) if settings.grpc_port is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        if grpc is not None:
            await grpc.start()
        try:
            yield
        finally:
            if grpc is not None:
                await grpc.stop(settings.shutdown_timeout_seconds)
            await runtime.stop()
            await decoders.stop()

    app = FastAPI(
        title="AdaPool Serve",
        version=metadata.version("adapool-serve"),
        summary="Pooled vectors, per-token pooling weights and signal/noise diagnostics.",
        lifespan=lifespan,
        # /pool/ is a 404, not a redirect whose Location is built from the client's Host header.
        redirect_slashes=False,
    )
    app.state.runtime = runtime
    app.state.decoders = decoders
    app.state.grpc = grpc
    app.add_middleware(
        RequestContext, metrics=metrics, max_query_parameters=settings.max_query_parameters
    )
    install_handlers(app, {"/v2": v2_rest.error_response})
    include_routes(app, [*HOT, v2_rest.infer_router], [*ROUTERS, v2_rest.router])
    # Admission at the request head (service.api.admission); None: the app admits.
    targets = {**pool.TARGETS, **v2_rest.TARGETS}
    app.state.head_admission = HeadAdmission(app, targets) if settings.head_admission else None
    document_auth(app, settings)
    return app
