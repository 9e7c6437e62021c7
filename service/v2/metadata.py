"""What the v2 metadata routes answer, as plain dicts for REST and gRPC alike: the server's
metadata, a model's metadata, and Triton's model configuration (what perf_analyzer reads)."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from service.core.backend import CPU
from service.core.models import ServedVersion
from service.core.runtime import Runtime
from service.v2.outputs import output_specs
from service.v2.tensors import EMBEDDINGS, MASK

SERVER_NAME = "adapool-serve"
# Only what is built: tensors as raw bytes, and GET .../config. Not "statistics": perf_analyzer
# calls /stats when it is listed.
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
PLATFORM = "onnxruntime_onnx"
TRITON_TYPES = {datatype: f"TYPE_{datatype}" for datatype in ("FP32", "FP16", "BOOL", "INT64")}


def server_metadata() -> dict[str, Any]:
    return {
        "name": SERVER_NAME,
        "version": metadata.version("adapool-serve"),
        "extensions": EXTENSIONS,
    }


def inputs(served: ServedVersion) -> list[dict[str, Any]]:
    assert served.manifest is not None
    dim = served.manifest.input_dim
    return [
        {"name": EMBEDDINGS, "datatype": "FP32", "shape": [-1, -1, dim]},
        {"name": MASK, "datatype": "BOOL", "shape": [-1, -1]},
    ]


def model_metadata(runtime: Runtime, served: ServedVersion) -> dict[str, Any]:
    """``GET /v2/models/{m}[/versions/{v}]``: every version of the model, one's tensors."""
    assert served.manifest is not None
    return {
        "name": served.name,
        "versions": [str(v) for v in runtime.models[served.name]],
        "platform": PLATFORM,
        "inputs": inputs(served),
        "outputs": [
            {"name": o.name, "datatype": o.datatype, "shape": list(o.shape)}
            for o in output_specs(served.manifest)
        ],
    }


def model_config(runtime: Runtime, served: ServedVersion) -> dict[str, Any]:
    """Triton's model configuration: the batch axis is Triton's (``max_batch_size``), so dims
    leave it out; a per-item scalar is dims [1] reshaped to [] (Triton's own convention).
    ``attention_mask`` is ``optional`` (every token real without it), so perf_analyzer sends
    ``embeddings`` alone, the same request a Triton model without a mask input gets."""
    assert served.manifest is not None
    s = runtime.settings

    def tensor(name: str, datatype: str, shape: list[int]) -> dict[str, Any]:
        dims = shape[1:]
        entry: dict[str, Any] = {"name": name, "data_type": TRITON_TYPES[datatype]}
        entry["dims"] = dims or [1]
        if not dims:
            entry["reshape"] = {"shape": []}
        if name == MASK:
            entry["optional"] = True
        return entry

    return {
        "name": served.name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": s.max_items_per_request,
        "input": [tensor(i["name"], i["datatype"], i["shape"]) for i in inputs(served)],
        "output": [
            tensor(o.name, o.datatype, list(o.shape)) for o in output_specs(served.manifest)
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": int(s.max_wait_ms * 1000),
            "default_queue_policy": {"max_queue_size": s.max_queue_requests},
        },
        "instance_group": [
            {
                "name": served.name,
                "kind": "KIND_CPU" if served.provider == CPU else "KIND_GPU",
                "count": s.model_instances,
            }
        ],
        "version_policy": {"all": {}},
    }
