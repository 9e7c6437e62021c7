"""``GET /models`` and ``GET /models/{name}``: what is served, from the core's descriptions."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import KEYED, RuntimeDep
from service.api.schemas import ModelList, ModelSummary, ModelVersions, errors

router = APIRouter(tags=["models"], dependencies=KEYED)


@router.get(
    "/models", response_model=ModelList, responses=errors(401), summary="Every served model"
)
async def list_models(runtime: RuntimeDep) -> ModelList:
    return ModelList(
        default=runtime.settings.default_model,
        models=[
            ModelSummary(
                name=name,
                versions=sorted(versions),
                latest=runtime.resolve(name, None).describe(),
            )
            for name, versions in runtime.models.items()
        ],
    )


@router.get(
    "/models/{name}",
    response_model=ModelVersions,
    responses=errors(401, 404, 422),
    summary="One model's versions",
)
async def get_model(runtime: RuntimeDep, name: str) -> ModelVersions:
    runtime.resolve(name, None)  # 404 for an unknown name
    return ModelVersions(
        name=name, versions=[served.describe() for served in runtime.models[name].values()]
    )
