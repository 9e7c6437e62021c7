"""``GET /health/live`` and ``GET /health/ready``: the process is up; every model is ready."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from service.api.deps import OPEN, RuntimeDep
from service.api.schemas import Live, NotReadyBody, Ready, errors

router = APIRouter(tags=["health"], dependencies=OPEN)


@router.get("/health/live", response_model=Live, responses=errors(401), summary="The process is up")
async def live() -> Live:
    return Live(status="alive")


@router.get(
    "/health/ready",
    response_model=Ready,
    responses={
        503: {"model": NotReadyBody, "description": "loading, shutting down or broken"},
        **errors(401),
    },
    summary="Every model loaded, on its required provider, and a forward pass works",
)
async def ready(runtime: RuntimeDep) -> Ready | Response:
    problems = await runtime.readiness()
    if problems:
        body = NotReadyBody(status="not_ready", problems=problems)
        return JSONResponse(body.model_dump(), status_code=503)
    return Ready(status="ready")
