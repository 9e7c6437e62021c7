"""The KServe v2 / Open Inference Protocol over HTTP: a second front-end on the same core.

``POST /v2/models/{m}[/versions/{v}]/infer`` is one :meth:`Runtime.pool` call, as ``/pool`` is:
the same admission (429 with Retry-After), limits, batcher, API key, request ids and metrics
(under the route's own label). Health, server and model metadata, model readiness and Triton's
``/config`` read the core's state. Errors answer ``{"error": "..."}`` with Triton's statuses
(:func:`error_response`), for every path under ``/v2``.
"""

from __future__ import annotations

import gzip
import re
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter
from fastapi.responses import Response
from starlette.requests import Request

from service.api.admission import Target
from service.api.bodies import OFFLOAD_BYTES, Decoders, limits, read_body
from service.api.deps import KEYED, OPEN, RuntimeDep
from service.api.pool import PoolRoute
from service.api.scope import left_of, place_of
from service.core.batching import LeftFn
from service.core.calls import PoolResult, Work
from service.core.models import ServedVersion
from service.core.runtime import Runtime
from service.errors import (
    BadRequest,
    InvalidInput,
    NotAcceptable,
    NotReady,
    ServiceError,
    UnsupportedMediaType,
    invalid,
)
from service.v2 import metadata, tensors
from service.v2.outputs import DIAGNOSTIC_NAMES, output_array, output_specs
from service.v2.schemas import INFER_LATEST_OPENAPI, INFER_VERSION_OPENAPI, V2_ERRORS, v2_errors

JSON = "application/json"
OCTETS = "application/octet-stream"
HEADER_LENGTH = "inference-header-content-length"
Answer = TypeVar("Answer")
_VERSION = re.compile(r"[0-9]{1,18}", re.ASCII)
# Triton answers invalid arguments with 400 (our /pool API says 422, or 415, 406)
V2_STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    UnsupportedMediaType: 400,
    NotAcceptable: 400,
}


def error_response(error: ServiceError, request_id: str) -> Response:
    """``{"error": "..."}``, the body tritonclient reads (it fails on any other)."""
    status = next((v for k, v in V2_STATUS.items() if isinstance(error, k)), error.status)
    body = orjson.dumps({"error": error.message})
    return Response(body, status_code=status, media_type=JSON, headers=error.headers)


def encoded(result: PoolResult, answer: Callable[[PoolResult], Answer]) -> Answer:
    """``answer(result)``, timed as the encode stage (as /pool's answers are), so that a v2
    answer's cost shows in the stage metrics and the profile's stage table."""
    started = time.perf_counter()
    response = answer(result)
    result.metrics.encode.observe(time.perf_counter() - started)
    return response


def version_of(text: str | None) -> int | None:
    if text is None:
        return None
    if not _VERSION.fullmatch(text):
        raise BadRequest(f"version must be an integer, got {text[:40]!r}")
    return int(text)


def ready_version(runtime: Runtime, name: str, version: str | None) -> ServedVersion:
    served = runtime.resolve(name, version_of(version))
    if served.manifest is None:
        raise NotReady(f"model {served.label} is not ready: {served.problem}")
    return served


class V2Caller:
    """The v2 front-end's side of one infer request (:class:`~service.core.calls.Caller`)."""

    def __init__(self, request: Request, runtime: Runtime) -> None:
        self.request = request
        self.settings = runtime.settings
        # checked before the model run: from the connection layer at once, if it tells
        self.is_disconnected: LeftFn = left_of(request.scope) or request.is_disconnected
        self.place = place_of(request.scope)  # admitted by the connection layer, if it was
        self.parsed: tensors.InferRequest | None = None

    def on_model(self, served: ServedVersion) -> None:
        self.request.state.model = served.name

    async def read(self, served: ServedVersion) -> Work:
        s, headers = self.settings, self.request.headers
        body = await read_body(self.request, s.max_body_bytes)
        body = tensors.decompress(body, headers.get("content-encoding"), s.max_body_bytes)
        args = (body, headers.get(HEADER_LENGTH), limits(s), s.max_json_values)
        if len(body) > OFFLOAD_BYTES:
            decoders: Decoders = self.request.app.state.decoders
            parsed = await decoders.in_thread(tensors.parse_request, *args)
        else:
            parsed = tensors.parse_request(*args)
        assert served.manifest is not None
        known = {o.name for o in output_specs(served.manifest)}
        for output in parsed.outputs or ():
            if output.name not in known:
                raise BadRequest(f"unknown output '{output.name}': this model has {sorted(known)}")
        self.parsed = parsed
        names = known if parsed.outputs is None else {o.name for o in parsed.outputs}
        return Work(parsed.batch, diagnostics=bool(names & DIAGNOSTIC_NAMES), records=False)

    def answer(self, result: PoolResult) -> Response:
        parsed = self.parsed
        assert parsed is not None and result.served.manifest is not None
        specs = {o.name: o for o in output_specs(result.served.manifest)}
        wanted = parsed.outputs or [tensors.Requested(name, parsed.binary_output) for name in specs]
        arrays = [
            (o.name, specs[o.name].datatype, output_array(result, o.name), o.binary) for o in wanted
        ]
        header: dict[str, Any] = {
            "model_name": result.served.name,
            "model_version": str(result.served.version),
        }
        if parsed.id is not None:
            header["id"] = parsed.id
        body, json_length = tensors.response_body(header, arrays)
        response_headers = {}
        if json_length is not None:
            response_headers["Inference-Header-Content-Length"] = str(json_length)
        encoding = _encoding(self.request.headers.get("accept-encoding"))
        if encoding == "gzip":
            body = gzip.compress(body, compresslevel=1)
        elif encoding == "deflate":
            body = zlib.compress(body, 1)
        if encoding:
            response_headers["Content-Encoding"] = encoding
        media = OCTETS if json_length is not None else JSON
        return Response(body, media_type=media, headers=response_headers)


def _encoding(accept: str | None) -> str | None:
    """gzip or deflate if the client accepts one (never br: tritonclient's aio client asks for
    it but cannot read it)."""
    if not accept:
        return None
    offered = []
    for part in accept.split(","):
        name, _, params = part.strip().partition(";")
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            weight = float(q)
        except ValueError:
            weight = 0.0
        if name.strip().lower() in ("gzip", "deflate") and weight > 0:
            offered.append((weight, name.strip().lower()))
    return max(offered, key=lambda o: o[0])[1] if offered else None


infer_router = APIRouter(route_class=PoolRoute, tags=["v2"])
router = APIRouter(tags=["v2"])


def infer_target(request: Request) -> Target:
    """The model version an infer request is for, from its path (no query is taken)."""
    if request.scope.get("query_string"):
        raise invalid("query", "the v2 infer route takes no query parameters")
    name: str = request.path_params["name"]
    return name, version_of(request.path_params.get("version"))


async def infer(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    runtime.authorize(request.headers.get("authorization"))
    name, version = infer_target(request)
    caller = V2Caller(request, runtime)
    result = await runtime.pool(name, version, caller)
    return encoded(result, caller.answer)


@infer_router.post(
    "/v2/models/{name}/infer",
    responses=v2_errors(400, 401, 404, 413, 429, 500, 503),
    openapi_extra=INFER_LATEST_OPENAPI,
    summary="KServe v2 inference (the newest ready version)",
)
async def infer_latest(request: Request) -> Response:
    return await infer(request)


@infer_router.post(
    "/v2/models/{name}/versions/{version}/infer",
    responses=v2_errors(400, 401, 404, 413, 429, 500, 503),
    openapi_extra=INFER_VERSION_OPENAPI,
    summary="KServe v2 inference (one version)",
)
async def infer_version(request: Request) -> Response:
    return await infer(request)


# Each infer route's target, by route template (the early refusal's, service.api.admission).
TARGETS = {
    "/v2/models/{name}/infer": infer_target,
    "/v2/models/{name}/versions/{version}/infer": infer_target,
}


@router.get("/v2/health/live", dependencies=OPEN, responses=v2_errors(401), summary="v2 live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/v2/health/ready", dependencies=OPEN, responses=v2_errors(401, 503), summary="v2 ready"
)
async def ready(runtime: RuntimeDep) -> dict[str, bool]:
    problems = await runtime.readiness()
    if problems:
        raise NotReady("; ".join(problems))
    return {"ready": True}


@router.get("/v2", dependencies=KEYED, responses=v2_errors(401), summary="v2 server metadata")
async def server(runtime: RuntimeDep) -> dict[str, Any]:
    return metadata.server_metadata()


def _model(runtime: Runtime, name: str, version: str | None) -> dict[str, Any]:
    return metadata.model_metadata(runtime, ready_version(runtime, name, version))


def _model_ready(runtime: Runtime, name: str, version: str | None) -> dict[str, Any]:
    served = runtime.resolve(name, version_of(version))
    if not served.ready:
        raise NotReady(f"model {served.label} is not ready: {served.problem}")
    return {"name": served.name, "ready": True}


def _model_config(runtime: Runtime, name: str, version: str | None) -> dict[str, Any]:
    return metadata.model_config(runtime, ready_version(runtime, name, version))


@router.get("/v2/models/{name}", dependencies=KEYED, responses=V2_ERRORS, summary="v2 model")
async def model_latest(runtime: RuntimeDep, name: str) -> dict[str, Any]:
    return _model(runtime, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}",
    dependencies=KEYED,
    responses=V2_ERRORS,
    summary="v2 model version",
)
async def model_version(runtime: RuntimeDep, name: str, version: str) -> dict[str, Any]:
    return _model(runtime, name, version)


@router.get(
    "/v2/models/{name}/ready", dependencies=OPEN, responses=V2_ERRORS, summary="v2 model ready"
)
async def model_ready_latest(runtime: RuntimeDep, name: str) -> dict[str, Any]:
    return _model_ready(runtime, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    dependencies=OPEN,
    responses=V2_ERRORS,
    summary="v2 model version ready",
)
async def model_ready_version(runtime: RuntimeDep, name: str, version: str) -> dict[str, Any]:
    return _model_ready(runtime, name, version)


@router.get(
    "/v2/models/{name}/config", dependencies=KEYED, responses=V2_ERRORS, summary="Triton config"
)
async def model_config_latest(runtime: RuntimeDep, name: str) -> dict[str, Any]:
    return _model_config(runtime, name, None)


@router.get(
    "/v2/models/{name}/versions/{version}/config",
    dependencies=KEYED,
    responses=V2_ERRORS,
    summary="Triton config of one version",
)
async def model_config_version(runtime: RuntimeDep, name: str, version: str) -> dict[str, Any]:
    return _model_config(runtime, name, version)
