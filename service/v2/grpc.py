"""The KServe v2 protocol over gRPC (``inference.GRPCInferenceService``), on its own port.

The servicer is the one generated from the protocol's proto file, as tritonclient ships it, so
the wire format is the one tritonclient.grpc and perf_analyzer speak. It runs on the server's
own event loop (grpc.aio) and calls the same core as the HTTP routes: ``ModelInfer`` is one
:meth:`Runtime.pool` call. Tensors come typed (``contents.fp32_contents``, ``bool_contents``)
or raw (``raw_input_contents``, one entry per input, which tritonclient sends); an answer is raw
when the request was. Errors become gRPC status codes with the same messages as over HTTP.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc
from typing_extensions import override  # typing.override from 3.12

from service.api.bodies import limits
from service.core.batching import Place
from service.core.calls import PoolResult, Work
from service.core.models import ServedVersion
from service.core.runtime import Runtime
from service.errors import BadRequest, NotReady, ServiceError
from service.v2 import metadata, tensors
from service.v2.outputs import DIAGNOSTIC_NAMES, output_array, output_specs
from service.v2.rest import V2_STATUS, encoded, ready_version, version_of

log = logging.getLogger("adapool.service")
Message = TypeVar("Message")
# our HTTP statuses -> gRPC codes (Triton's: invalid argument, not found, unavailable, ...)
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    429: grpc.StatusCode.UNAVAILABLE,  # clients retry UNAVAILABLE, as they do 429 over HTTP
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
}
TYPED = {"FP32": "fp32_contents", "BOOL": "bool_contents"}  # typed contents we read and write


def status_of(error: ServiceError) -> int:
    return next((v for k, v in V2_STATUS.items() if isinstance(error, k)), error.status)


class GrpcCaller:
    """The gRPC front-end's side of one ModelInfer (:class:`~service.core.calls.Caller`)."""

    def __init__(self, request: Any, runtime: Runtime) -> None:
        self.request = request
        self.runtime = runtime
        self.raw = len(request.raw_input_contents) > 0
        self.outputs: list[str] = []
        self.place: Place | None = None  # admitted by the core

    def on_model(self, served: ServedVersion) -> None:
        pass  # gRPC requests are counted by method (Servicer._call)

    async def is_disconnected(self) -> bool:
        return False  # grpc.aio cancels the call's task when its client leaves

    async def read(self, served: ServedVersion) -> Work:
        request = self.request
        if self.raw and len(request.raw_input_contents) != len(request.inputs):
            raise BadRequest(
                f"raw_input_contents has {len(request.raw_input_contents)} entries for "
                f"{len(request.inputs)} inputs"
            )
        arrays: dict[str, Any] = {}
        for position, tensor in enumerate(request.inputs):
            name = tensor.name
            datatype, shape = tensors.check_declared(name, tensor.datatype, list(tensor.shape))
            if name in arrays:
                raise BadRequest(f"input '{name}' is given twice")
            if self.raw:
                raw = request.raw_input_contents[position]
                arrays[name] = tensors.from_raw(name, datatype, shape, raw)
            elif datatype in TYPED:
                values = list(getattr(tensor.contents, TYPED[datatype]))
                arrays[name] = tensors.from_values(name, datatype, values, shape)
            else:
                raise BadRequest(f"input '{name}': {datatype} must be sent as raw_input_contents")
        batch = tensors.to_batch(arrays, limits(self.runtime.settings))
        assert served.manifest is not None
        known = [o.name for o in output_specs(served.manifest)]
        self.outputs = [o.name for o in request.outputs] or known
        for name in self.outputs:
            if name not in known:
                raise BadRequest(f"unknown output '{name}': this model has {sorted(known)}")
        wants = bool(set(self.outputs) & DIAGNOSTIC_NAMES)
        return Work(batch, diagnostics=wants, records=False)

    def answer(self, result: PoolResult) -> service_pb2.ModelInferResponse:
        assert result.served.manifest is not None
        specs = {o.name: o for o in output_specs(result.served.manifest)}
        response = service_pb2.ModelInferResponse(
            model_name=result.served.name,
            model_version=str(result.served.version),
            id=self.request.id,
        )
        for name in self.outputs:
            array = output_array(result, name)
            datatype = specs[name].datatype
            tensor = response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            if self.raw:
                raw = np.ascontiguousarray(array, dtype=tensors.DTYPES[datatype]).tobytes()
                response.raw_output_contents.append(raw)
            else:
                getattr(tensor.contents, TYPED[datatype]).extend(array.reshape(-1).tolist())
        return response


class Servicer(service_pb2_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """The v2 methods on the core; the others answer UNIMPLEMENTED (the generated default)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def _call(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[], Awaitable[Message]],
        keyed: bool = True,
    ) -> Message:
        """Authorize, run, count (``adapool_requests_total`` with route ``grpc <method>``) and
        turn a ServiceError into the gRPC status and message."""
        started, status, model = time.perf_counter(), 200, ""
        try:
            if keyed or not self.runtime.settings.open_health_and_metrics:
                self.runtime.authorize(dict(context.invocation_metadata()).get("authorization"))
            return await work()
        except ServiceError as error:
            status = status_of(error)
            code = CODES.get(status, grpc.StatusCode.INTERNAL)
            if status >= 500:
                log.error("gRPC %s failed: %s %s", method, error.type, error.message)
            await context.abort(code, error.message)
            raise AssertionError("unreachable: abort raises") from None
        finally:
            m = self.runtime.metrics
            m.requests.labels(model, f"grpc {method}", str(status)).inc()
            m.request_duration.labels(model, f"grpc {method}").observe(
                time.perf_counter() - started
            )

    @override
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def live() -> Any:
            return service_pb2.ServerLiveResponse(live=True)

        return await self._call("ServerLive", context, live, keyed=False)

    @override
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> Any:
            return service_pb2.ServerReadyResponse(ready=not await self.runtime.readiness())

        return await self._call("ServerReady", context, ready, keyed=False)

    @override
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def ready() -> Any:
            version = version_of(request.version or None)
            served = self.runtime.resolve(request.name, version)
            return service_pb2.ModelReadyResponse(ready=served.ready)

        return await self._call("ModelReady", context, ready, keyed=False)

    @override
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def server() -> Any:
            return service_pb2.ServerMetadataResponse(**metadata.server_metadata())

        return await self._call("ServerMetadata", context, server)

    @override
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def model() -> Any:
            served = ready_version(self.runtime, request.name, request.version or None)
            data = metadata.model_metadata(self.runtime, served)
            return json_format.ParseDict(data, service_pb2.ModelMetadataResponse())

        return await self._call("ModelMetadata", context, model)

    @override
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def config() -> Any:
            served = ready_version(self.runtime, request.name, request.version or None)
            data = metadata.model_config(self.runtime, served)
            parsed = json_format.ParseDict(data, model_config_pb2.ModelConfig())
            return service_pb2.ModelConfigResponse(config=parsed)

        return await self._call("ModelConfig", context, config)

    @override
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        async def infer() -> Any:
            caller = GrpcCaller(request, self.runtime)
            version = version_of(request.model_version or None)
            result = await self.runtime.pool(request.model_name, version, caller)
            return encoded(result, caller.answer)

        return await self._call("ModelInfer", context, infer)


class GrpcServer:
    """The gRPC server of the app: started and stopped with the app's lifespan."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        s = self.runtime.settings
        assert s.grpc_port is not None
        options = [
            ("grpc.max_receive_message_length", s.max_body_bytes),
            ("grpc.max_send_message_length", -1),
        ]
        self.server = grpc.aio.server(options=options)
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            Servicer(self.runtime), self.server
        )
        self.port = self.server.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if self.port == 0:
            raise NotReady(f"gRPC cannot listen on {s.host}:{s.grpc_port}")
        await self.server.start()
        log.info("gRPC (KServe v2) listening on %s:%d", s.host, self.port)

    async def stop(self, grace: float) -> None:
        if self.server is not None:
            await self.server.stop(grace)
