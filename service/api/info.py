"""``GET /info``: versions, providers, limits and batching settings."""

from __future__ import annotations

import time
from importlib import metadata

import onnxruntime as ort
from fastapi import APIRouter

from service.api.deps import KEYED, RuntimeDep
from service.api.schemas import Info, errors
from service.core.diagnostics import SIGNAL_RULE
from service.core.models import BatchPolicyInfo
from service.core.runtime import threads_per_run

router = APIRouter(tags=["service"], dependencies=KEYED)


@router.get(
    "/info", response_model=Info, responses=errors(401), summary="Versions, providers, limits"
)
async def info(runtime: RuntimeDep) -> Info:
    s = runtime.settings
    return Info(
        service={"name": "adapool-serve", "version": metadata.version("adapool-serve")},
        onnxruntime={
            "version": ort.__version__,
            "available_providers": ort.get_available_providers(),
        },
        device=s.device,
        providers_in_use={
            served.label: served.backend.providers if served.backend else []
            for served in runtime.versions()
        },
        default_model=s.default_model,
        signal_rule=SIGNAL_RULE,
        limits={
            "max_body_bytes": s.max_body_bytes,
            "max_items_per_request": s.max_items_per_request,
            "max_tokens_per_item": s.max_tokens_per_item,
            "max_tokens_per_request": s.max_tokens_per_request,
        },
        batching={
            "max_batch_size": s.max_batch_size,
            "max_batch_tokens": s.max_batch_tokens,
            "max_wait_ms": s.max_wait_ms,
            "max_queue_requests": s.max_queue_requests,
            "model_instances": s.model_instances,
            # per run (0: ONNX Runtime's own, every core)
            "intra_op_threads": threads_per_run(s.model_instances, s.intra_op_threads),
        },
        batch_policies={
            served.label: BatchPolicyInfo.of(served.policy)
            for served in runtime.versions()
            if served.policy is not None
        },
        auth=s.api_key is not None,
        uptime_seconds=time.time() - runtime.started,
    )
