"""``GET /metrics``: the Prometheus text exposition of the service's own registry."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import OPEN, RuntimeDep
from service.api.schemas import errors

router = APIRouter(tags=["service"], dependencies=OPEN)


@router.get(
    "/metrics",
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
async def prometheus_metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
