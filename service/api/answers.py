"""A pool request's answer in the negotiated format: JSON (orjson, with the weights and the
diagnostics asked for), ``.npy`` (pooled) or ``.npz`` (pooled, weights, lengths, mask).

A model with a task head answers its predictions too: ``label`` and ``probabilities``
(classification) or ``prediction`` (regression), and, on request (``contributions=true``, for
models with faithful values), each token's exact signed share of each output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray
from starlette.responses import Response

from service import codecs
from service.api.negotiation import JSON, NPY, NPZ
from service.api.options import Options
from service.core.calls import PoolResult


def encode(result: PoolResult, media: str, options: Options, request_id: str) -> Response:
    served = result.served
    headers = {
        "X-Model": served.name,
        "X-Model-Version": str(served.version),
        "X-Provider": served.provider,
    }
    pooled, weights = result.outputs["pooled"], result.outputs["weights"]
    if media == NPY:
        return Response(codecs.encode_npy(pooled), media_type=NPY, headers=headers)
    if media == NPZ:
        arrays: dict[str, NDArray[Any]] = {
            "pooled": pooled,
            "weights": weights,
            "lengths": result.batch.lengths,
            "attention_mask": result.batch.attention_mask,
        }
        probabilities = result.probabilities
        if probabilities is not None:
            assert served.manifest is not None
            arrays["logits"] = result.outputs["logits"]
            arrays["probabilities"] = probabilities
            arrays["label"] = result.outputs["logits"].argmax(axis=1)
            arrays["classes"] = np.asarray(served.manifest.task.classes)
        if "prediction" in result.outputs:
            arrays["prediction"] = result.outputs["prediction"]
        if options.contributions:
            arrays["contributions"] = result.outputs["contributions"]
        return Response(codecs.encode_npz(arrays), media_type=NPZ, headers=headers)
    answer: dict[str, Any] = {
        "model": served.name,
        "version": served.version,
        "provider": served.provider,
        "pooled": pooled,
    }
    lengths = result.batch.lengths.tolist()
    if options.return_weights == "mean":
        mean = result.mean_weights
        answer["weights"] = [mean[i, :n] for i, n in enumerate(lengths)]
    elif options.return_weights == "heads":
        answer["weights"] = [np.ascontiguousarray(weights[i, :, :n]) for i, n in enumerate(lengths)]
    probabilities = result.probabilities
    if probabilities is not None:
        answer["label"] = result.labels
        answer["probabilities"] = probabilities
    if "prediction" in result.outputs:
        answer["prediction"] = result.outputs["prediction"]
    if options.contributions:
        contributions = result.outputs["contributions"]  # (b, n, C)
        answer["contributions"] = [contributions[i, :n] for i, n in enumerate(lengths)]
    if result.diagnostics is not None:
        answer["diagnostics"] = result.diagnostics
    answer["request_id"] = request_id
    body = orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, media_type=JSON, headers=headers)
