"""The HTTP layer: routes, content negotiation, error mapping. No tensor maths here.

``create_app(settings)`` builds the app; its lifespan loads every model version, warms it up and
starts its batcher. State lives on ``app.state.service`` (a :class:`ServiceState`).
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import metadata
from typing import Annotated, Any

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service import codecs
from service.backend import OnnxBackend
from service.batching import Batcher, BatchLimits, BatchStats, ClientGone
from service.diagnostics import SIGNAL_RULE, Summary, describe, summarise
from service.errors import (
    BadRequest,
    InvalidInput,
    MethodNotAllowed,
    NotAcceptable,
    NotFound,
    NotReady,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    Unauthorized,
    UnsupportedMediaType,
    invalid,
)
from service.metrics import Metrics, ModelMetrics
from service.middleware import DirectRoutes, RequestContext, direct_routes, request_id_of
from service.openapi import (
    POOL_NAMED_OPENAPI,
    POOL_OPENAPI,
    POOL_RESPONSES,
    Info,
    Live,
    ModelList,
    ModelVersions,
    NotReadyBody,
    PoolResponse,
    Ready,
    errors,
)
from service.registry import ModelVersion, scan
from service.settings import Settings

log = logging.getLogger("adapool.service")
JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
RAW = "application/octet-stream"
OFFLOAD_BYTES = 256 * 1024  # bodies larger than this are decoded in a worker thread
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
POOL_PATHS = ("/pool", "/models/{name}/pool")  # served by DirectRoutes


@dataclass
class ServiceState:
    settings: Settings
    metrics: Metrics
    models: dict[str, dict[int, ModelVersion]] = field(default_factory=dict)
    loaded: bool = False
    shutting_down: bool = False
    started: float = field(default_factory=time.time)

    def resolve(self, name: str, version: int | None) -> ModelVersion:
        versions = self.models.get(name)
        if not versions:
            raise NotFound(
                f"model {name!r} is not served", {"model": name, "models": sorted(self.models)}
            )
        if version is None:  # the newest version that loaded, else the newest
            loaded = [v for v, mv in versions.items() if mv.error is None]
            return versions[max(loaded or versions)]
        if version not in versions:
            raise NotFound(
                f"model {name!r} has no version {version}",
                {"model": name, "versions": sorted(versions)},
            )
        return versions[version]

    def problems(self) -> list[str]:
        """Why the service is not ready (empty when it is)."""
        if self.shutting_down:
            return ["shutting down"]
        if not self.loaded:
            return ["models are loading"]
        out = []
        for versions in self.models.values():
            for mv in versions.values():
                if mv.error:
                    out.append(f"{mv.name}/{mv.version}: {mv.error}")
                elif mv.backend and mv.backend.problem:
                    out.append(f"{mv.name}/{mv.version}: {mv.backend.problem}")
        return out


async def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


State = Annotated[ServiceState, Depends(get_state)]


async def require_key(request: Request) -> None:
    """Authorization: Bearer <api_key>, compared in constant time.

    A dependency of every keyed route, added only when a key is set (``_add_routes``): without
    one, FastAPI has nothing to solve for it on each request.
    """
    state: ServiceState = request.app.state.service
    key = state.settings.api_key
    if key is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    expected = key.get_secret_value().encode()
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.encode(), expected):
        state.metrics.rejected.labels("", "unauthorized").inc()
        raise Unauthorized("missing or wrong API key", headers={"WWW-Authenticate": "Bearer"})


async def require_key_unless_open(request: Request, state: State) -> None:
    if not state.settings.open_health_and_metrics:
        await require_key(request)


def orjson_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _load(state: ServiceState) -> None:
    """Open a session per model version and warm it up (runs in a worker thread)."""
    s = state.settings
    for versions in state.models.values():
        for mv in versions.values():
            if mv.error is not None:  # found broken by the repository scan
                log.error("model %s/%s cannot load: %s", mv.name, mv.version, mv.error)
                state.metrics.model_ready.labels(mv.name, str(mv.version)).set(0)
                continue
            try:
                mv.backend = OnnxBackend(
                    mv.path / "model.onnx", s.device, s.intra_op_threads, s.thread_spinning
                )
                mv.backend.warm_up()
            except Exception as exc:  # a broken model is reported by readiness, not fatal
                mv.error = f"{type(exc).__name__}: {str(exc)[:300]}"
                log.error("model %s/%s failed to load: %s", mv.name, mv.version, mv.error)
                state.metrics.model_ready.labels(mv.name, str(mv.version)).set(0)
                continue
            provider = mv.backend.provider
            state.metrics.model_info.labels(mv.name, str(mv.version), provider).set(1)
            ready = mv.backend.problem is None
            state.metrics.model_ready.labels(mv.name, str(mv.version)).set(int(ready))
            log.info("loaded %s/%s on %s", mv.name, mv.version, provider)


def _batch_observer(state: ServiceState, name: str) -> Any:
    m = state.metrics.model(name)

    def on_batch(stats: BatchStats, seconds: float) -> None:
        m.batch_size.observe(stats.items)
        m.batch_tokens.observe(stats.tokens)
        m.padding_ratio.observe(1.0 - stats.real_tokens / stats.tokens)
        m.inference.observe(seconds)
        for wait in stats.queue_seconds:
            m.queue.observe(wait)

    return on_batch, m.reject


def create_app(settings: Settings, registry: CollectorRegistry | None = None) -> FastAPI:
    """The service as an ASGI app. Nothing is loaded until the lifespan starts."""
    metrics = Metrics(registry if registry is not None else CollectorRegistry())
    state = ServiceState(settings=settings, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        direct_routes(app, POOL_PATHS)  # what DirectRoutes will call: checked before serving
        state.models = scan(settings.model_repository, settings.models)
        if settings.default_model not in state.models:
            raise RuntimeError(
                f"default model {settings.default_model!r} not in {settings.model_repository} "
                f"(found: {', '.join(sorted(state.models)) or 'none'})"
            )
        await asyncio.to_thread(_load, state)
        limits = BatchLimits(
            settings.max_batch_size,
            settings.max_batch_tokens,
            settings.max_wait_ms / 1000.0,
            settings.max_queue_requests,
        )
        for versions in state.models.values():
            for mv in versions.values():
                if mv.backend is not None and mv.error is None:
                    on_batch, on_drop = _batch_observer(state, mv.name)
                    # The diagnostics arrays of a whole batch are computed in the model's worker
                    # thread right after the run (one vectorised pass per run, not one per
                    # request on the event loop), for batches where a request asked for them.
                    mv.batcher = Batcher(
                        mv.backend.run,
                        limits,
                        on_batch=on_batch,
                        on_drop=on_drop,
                        extra=summarise,
                    )
                    mv.batcher.start()
        state.loaded = True
        # Everything built so far (the imported libraries, the sessions) lives as long as the
        # process: move it out of the collector's view, so that a full collection under load
        # walks only the objects of requests. The longest pause while 3,000 requests ran went
        # from 50 to 4 ms (gc_max_pause_ms of python -m bench.inproc), and every request in
        # flight waits out a pause. (Not undone at shutdown: freezing is process-wide, and
        # another app or the host may rely on it; the process ends anyway.)
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state.shutting_down = True
            for versions in state.models.values():
                for mv in versions.values():
                    if mv.batcher is not None:
                        await mv.batcher.close()

    app = FastAPI(
        title="AdaPool Serve",
        version=metadata.version("adapool-serve"),
        summary="Pooled vectors, per-token pooling weights and signal/noise diagnostics.",
        lifespan=lifespan,
    )
    app.state.service = state
    # Middleware added last runs first: the request context wraps the direct pool routes.
    app.add_middleware(DirectRoutes, paths=POOL_PATHS, handled=ServiceError, on_error=service_error)
    app.add_middleware(RequestContext, metrics=metrics)
    _install_error_handlers(app, state)
    _add_routes(app, keyed=settings.api_key is not None)
    if settings.api_key is not None:
        _document_auth(app, settings)
    return app


def _document_auth(app: FastAPI, settings: Settings) -> None:
    """With an API key, the OpenAPI document marks every route that requires it (bearer)."""
    generate = app.openapi
    keyed: set[Any] = {require_key}
    if not settings.open_health_and_metrics:
        keyed.add(require_key_unless_open)
    protected = {
        (route.path, method.lower())
        for route in app.routes
        if isinstance(route, APIRoute) and any(d.dependency in keyed for d in route.dependencies)
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


async def service_error(request: Request, exc: Exception) -> Response:
    """The one JSON error body, with the request id."""
    assert isinstance(exc, ServiceError)
    rid = request_id_of(request)
    if exc.status >= 500:
        log.error("request %s failed: %s %s", rid, exc.type, exc.message)
    return orjson_response(exc.body(rid), exc.status, exc.headers)


def _install_error_handlers(app: FastAPI, state: ServiceState) -> None:
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        mapped: ServiceError
        if exc.status_code == 404:
            mapped = NotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            mapped = MethodNotAllowed(
                f"{request.method} is not allowed on {request.url.path}",
                headers=dict(exc.headers or {}),
            )
        else:
            mapped = ServiceError(str(exc.detail))
            mapped.status, mapped.type = exc.status_code, "http_error"
        return await service_error(request, mapped)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "request"
        return await service_error(
            request,
            InvalidInput(
                f"{where}: {errors[0]['msg'] if errors else 'invalid'}", {"errors": errors}
            ),
        )

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"body of {declared} bytes exceeds the limit of {limit}", {"limit": limit}
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes", {"limit": limit})
        chunks.append(chunk)
    return b"".join(chunks)


def decode(
    request: Request, body: bytes, settings: Settings
) -> tuple[codecs.Batch, dict[str, Any]]:
    """Pick the decoder by Content-Type; returns the batch and JSON body options."""
    limits = codecs.Limits(
        settings.max_items_per_request,
        settings.max_tokens_per_item,
        settings.max_tokens_per_request,
    )
    content_type = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    lengths_text = request.headers.get("x-lengths") or request.query_params.get("lengths")
    if content_type == JSON:
        if lengths_text is not None:
            raise invalid(
                "lengths",
                "X-Lengths and ?lengths= are for the binary formats; in JSON, give lengths "
                "(base64) or attention_mask (lists) in the body",
            )
        return codecs.decode_json(body, limits)
    lengths = codecs.parse_lengths(lengths_text)
    if content_type == NPY:
        return codecs.decode_npy(body, lengths, limits), {}
    if content_type == RAW:
        shape = codecs.parse_shape(request.headers.get("x-shape"))
        dtype = request.headers.get("x-dtype", "float32")
        return codecs.decode_raw(body, shape, dtype, lengths, limits), {}
    raise UnsupportedMediaType(
        f"unsupported Content-Type {content_type!r}",
        {"supported": [JSON, NPY, RAW]},
    )


def negotiate(request: Request) -> str:
    accept = request.headers.get("accept", "*/*").lower()
    for media in (NPZ, NPY, JSON):
        if media in accept:
            return media
    if "*/*" in accept or "application/*" in accept or not accept.strip():
        return JSON
    raise NotAcceptable(f"cannot answer with {accept!r}", {"supported": [JSON, NPY, NPZ]})


async def pool(
    request: Request,
    state: ServiceState,
    name: str,
    version: int | None,
    extra_query: tuple[str, ...] = (),
) -> Response:
    """Decode, queue for the batched model run, add diagnostics, encode.

    ``extra_query``: the route's own query parameters (not options).
    """
    s = state.settings
    if not state.loaded:  # the name is not known to be served yet: no model label
        state.metrics.rejected.labels("", "not_ready").inc()
        raise NotReady("models are loading")
    mv = state.resolve(name, version)
    request.state.model = mv.name
    m = state.metrics.model(mv.name)
    if mv.batcher is None or mv.error:
        m.reject("not_ready")
        raise NotReady(f"model {mv.name}/{mv.version} is not loaded: {mv.error}")
    media = negotiate(request)
    if mv.batcher.full:  # refused before its body is read: under overload, reading is the cost
        m.reject("queue_full")
        raise Overloaded(
            f"the queue is full ({s.max_queue_requests} requests); retry later",
            {"queue": s.max_queue_requests},
            headers={"Retry-After": str(s.retry_after_seconds)},
        )
    started = time.perf_counter()
    try:
        body = await read_body(request, s.max_body_bytes)
        if len(body) > OFFLOAD_BYTES:  # parsing a large body would stall every other request
            batch, body_options = await asyncio.to_thread(decode, request, body, s)
        else:
            batch, body_options = decode(request, body, s)
        skip = ("lengths", *extra_query)
        options = codecs.parse_options(
            {k: v for k, v in request.query_params.items() if k not in skip},
            body_options,
            max_top_k=1024,
            default_top_k=s.top_k,
        )
    except PayloadTooLarge:
        m.reject("too_large")
        raise
    except (InvalidInput, BadRequest, UnsupportedMediaType):
        m.reject("invalid")
        raise
    except ClientDisconnect:  # the client left during the upload: nothing to answer
        m.reject("client_gone")
        raise
    if batch.embeddings.shape[2] != mv.input_dim:
        m.reject("invalid")
        raise invalid(
            "embeddings",
            f"token dim {batch.embeddings.shape[2]} does not match the model's input dim "
            f"{mv.input_dim}",
        )
    try:
        _check_query_tokens(mv, batch)
    except InvalidInput:
        m.reject("invalid")
        raise
    m.decode.observe(time.perf_counter() - started)

    m.queue_depth.set(mv.batcher.depth + 1)
    try:
        pooled, weights, summary = await mv.batcher.submit(
            batch.embeddings,
            batch.attention_mask,
            request.is_disconnected,
            wants_extra=media == JSON and options.diagnostics,
        )
    except ClientGone:
        return Response(status_code=499)
    except Overloaded as exc:
        exc.headers["Retry-After"] = str(s.retry_after_seconds)
        raise
    except NotReady:
        m.reject("not_ready")
        raise
    finally:
        m.queue_depth.set(mv.batcher.depth)

    started = time.perf_counter()
    provider = mv.backend.provider if mv.backend else "unknown"
    headers = {"X-Model": mv.name, "X-Model-Version": str(mv.version), "X-Provider": provider}
    if media != JSON:
        response = _binary_response(media, pooled, weights, batch, headers)
        m.encode.observe(time.perf_counter() - started)
        return response
    result: dict[str, Any] = {
        "model": mv.name,
        "version": mv.version,
        "provider": provider,
        "pooled": pooled,
    }
    lengths = batch.lengths.tolist()
    if options.return_weights == "mean":  # the head mean: the summary has it, if it was made
        mean = summary.mean if isinstance(summary, Summary) else weights.mean(axis=1)
        result["weights"] = [mean[i, :n] for i, n in enumerate(lengths)]
    elif options.return_weights == "heads":
        result["weights"] = [np.ascontiguousarray(weights[i, :, :n]) for i, n in enumerate(lengths)]
    diagnostics_seconds = 0.0
    if options.diagnostics:
        assert isinstance(summary, Summary)  # asked for with wants_extra
        t = time.perf_counter()
        result["diagnostics"] = _diagnostics(summary, options.top_k, m)
        diagnostics_seconds = time.perf_counter() - t
        m.diagnostics.observe(diagnostics_seconds)
    result["request_id"] = request_id_of(request)
    response = orjson_response(result, headers=headers)
    encode_seconds = time.perf_counter() - started - diagnostics_seconds
    m.encode.observe(encode_seconds)
    return response


def _version(text: str | None) -> int | None:
    """?version=, an integer (parsed here: the pool routes leave FastAPI no parameters)."""
    if text is None:
        return None
    if not _INTEGER.fullmatch(text):
        raise invalid("version", f"must be an integer, got {text[:40]!r}")
    return int(text)


def _check_query_tokens(mv: ModelVersion, batch: codecs.Batch) -> None:
    """A token or indices query needs its tokens real (the ONNX graph does not check)."""
    pooling = mv.manifest["pooling"]
    if pooling["method"] != "adapool" or pooling["query"] not in ("token", "indices"):
        return
    needed = [pooling["query_index"]] if pooling["query"] == "token" else pooling["query_indices"]
    for i, n in enumerate(batch.lengths.tolist()):
        if max(needed) >= n or not batch.attention_mask[i, needed].all():
            raise invalid(
                "embeddings",
                f"this model's query token(s) {needed} must be real tokens of every item",
                item=i,
            )


def _diagnostics(summary: Summary, top_k: int, m: ModelMetrics) -> list[dict[str, Any]]:
    out = describe(summary, top_k)
    for item in out:
        if item["normalized_entropy"] is not None:
            m.entropy.observe(item["normalized_entropy"])
        m.effective_tokens.observe(item["effective_tokens"])
        m.estimated_snr.observe(item["estimated_snr"])
    return out


def _binary_response(
    media: str,
    pooled: np.ndarray,
    weights: np.ndarray,
    batch: codecs.Batch,
    headers: dict[str, str],
) -> Response:
    if media == NPY:
        return Response(codecs.encode_npy(pooled), media_type=NPY, headers=headers)
    body = codecs.encode_npz(
        {
            "pooled": pooled,
            "weights": weights,
            "lengths": batch.lengths,
            "attention_mask": batch.attention_mask,
        }
    )
    return Response(body, media_type=NPZ, headers=headers)


def _add_routes(app: FastAPI, keyed: bool) -> None:
    auth = [Depends(require_key)] if keyed else []
    open_auth = [Depends(require_key_unless_open)] if keyed else []

    # The pool routes are the hot path. DirectRoutes (service/middleware.py) calls these two
    # endpoints itself, past FastAPI's router; declared here, they are documented in OpenAPI as
    # usual. They take the state from the app and their parameters from the request, so that
    # nothing is left to solve but the API key check (a dependency only when a key is set).
    @app.post(
        "/pool",
        tags=["pool"],
        dependencies=auth,
        response_model=PoolResponse,
        responses=POOL_RESPONSES,
        openapi_extra=POOL_OPENAPI,
        summary="Pool with the default model",
    )
    async def pool_default(request: Request) -> Response:
        state: ServiceState = request.app.state.service
        return await pool(request, state, state.settings.default_model, None)

    @app.post(
        "/models/{name}/pool",
        tags=["pool"],
        dependencies=auth,
        response_model=PoolResponse,
        responses=POOL_RESPONSES,
        openapi_extra=POOL_NAMED_OPENAPI,
        summary="Pool with a named model (latest or ?version=)",
    )
    async def pool_named(request: Request) -> Response:
        state: ServiceState = request.app.state.service
        name: str = request.path_params["name"]
        version = _version(request.query_params.get("version"))
        return await pool(request, state, name, version, extra_query=("version",))

    @app.get(
        "/models",
        tags=["models"],
        dependencies=auth,
        response_model=ModelList,
        responses=errors(401),
        summary="Every served model",
    )
    async def list_models(state: State) -> Response:
        return orjson_response(
            {
                "default": state.settings.default_model,
                "models": [
                    {
                        "name": name,
                        "versions": sorted(v),
                        "latest": state.resolve(name, None).describe(),
                    }
                    for name, v in sorted(state.models.items())
                ],
            }
        )

    @app.get(
        "/models/{name}",
        tags=["models"],
        dependencies=auth,
        response_model=ModelVersions,
        responses=errors(401, 404, 422),
        summary="One model's versions",
    )
    async def get_model(state: State, name: str) -> Response:
        state.resolve(name, None)
        return orjson_response(
            {
                "name": name,
                "versions": [mv.describe() for _, mv in sorted(state.models[name].items())],
            }
        )

    @app.get(
        "/health/live",
        tags=["health"],
        dependencies=open_auth,
        response_model=Live,
        responses=errors(401),
        summary="The process is up",
    )
    async def live() -> Response:
        return orjson_response({"status": "alive"})

    @app.get(
        "/health/ready",
        tags=["health"],
        dependencies=open_auth,
        response_model=Ready,
        responses={
            503: {"model": NotReadyBody, "description": "loading, shutting down or broken"},
            **errors(401),
        },
        summary="Every model loaded, on its required provider, and a forward pass works",
    )
    async def ready(state: State) -> Response:
        problems = state.problems()
        if not problems:
            problems = await asyncio.to_thread(_forward_checks, state)
        if problems:
            return orjson_response({"status": "not_ready", "problems": problems}, 503)
        return orjson_response({"status": "ready"})

    @app.get(
        "/info",
        tags=["service"],
        dependencies=auth,
        response_model=Info,
        responses=errors(401),
        summary="Versions, providers, limits",
    )
    async def info(state: State) -> Response:
        s = state.settings
        return orjson_response(
            {
                "service": {"name": "adapool-serve", "version": metadata.version("adapool-serve")},
                "onnxruntime": {
                    "version": ort.__version__,
                    "available_providers": ort.get_available_providers(),
                },
                "device": s.device,
                "providers_in_use": {
                    f"{mv.name}/{mv.version}": mv.backend.providers if mv.backend else []
                    for versions in state.models.values()
                    for mv in versions.values()
                },
                "default_model": s.default_model,
                "signal_rule": SIGNAL_RULE,
                "limits": {
                    "max_body_bytes": s.max_body_bytes,
                    "max_items_per_request": s.max_items_per_request,
                    "max_tokens_per_item": s.max_tokens_per_item,
                    "max_tokens_per_request": s.max_tokens_per_request,
                },
                "batching": {
                    "max_batch_size": s.max_batch_size,
                    "max_batch_tokens": s.max_batch_tokens,
                    "max_wait_ms": s.max_wait_ms,
                    "max_queue_requests": s.max_queue_requests,
                },
                "auth": s.api_key is not None,
                "uptime_seconds": time.time() - state.started,
            }
        )

    @app.get(
        "/metrics",
        tags=["service"],
        dependencies=open_auth,
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text exposition",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
            **errors(401),
        },
        summary="Prometheus exposition",
    )
    async def prometheus_metrics(state: State) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _forward_checks(state: ServiceState) -> list[str]:
    """Readiness runs a real one-token forward pass on every model version."""
    problems = []
    for versions in state.models.values():
        for mv in versions.values():
            ready = state.metrics.model_ready.labels(mv.name, str(mv.version))
            try:
                assert mv.backend is not None
                mv.backend.warm_up()
            except Exception as exc:  # reported by name, so the failing model is known
                problems.append(f"{mv.name}/{mv.version}: forward pass failed: {exc}")
                ready.set(0)
            else:
                ready.set(int(mv.backend.problem is None))
    return problems
