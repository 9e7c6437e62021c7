"""What a front-end hands the core for one pool request, and what it gets back.

A front-end (the /pool API, later the v2 protocol) implements :class:`Caller`: the core calls
``on_model`` once it knows which version serves the request, ``read`` once the request is
admitted (so a refused request's body is never read), and ``is_disconnected`` before the model
runs. ``read`` returns the decoded :class:`Work`; the core answers with a :class:`PoolResult`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    from service.core.batching import Place
    from service.core.diagnostics import ItemDiagnostics, Summary
    from service.core.models import ServedVersion
    from service.metrics import ModelMetrics


@dataclass(frozen=True)
class Batch:
    """A decoded request.

    Attributes:
        embeddings: (B, N, D) float32, padded with zeros.
        attention_mask: (B, N) bool, True = a real token.
        lengths: (B,) each item's token count as submitted (weights are returned over these).
    """

    embeddings: NDArray[np.float32]
    attention_mask: NDArray[np.bool_]
    lengths: NDArray[np.int64]


@dataclass(frozen=True)
class Work:
    """A decoded request and what it wants beyond the model's outputs."""

    batch: Batch
    diagnostics: bool = True  # the diagnostics arrays (computed once per model run)
    records: bool = True  # and, from them, one ItemDiagnostics record per item
    top_k: int = 5  # top tokens per item in the records


class Caller(Protocol):
    """The front-end's side of one pool request.

    ``place``: the request's place in the queue if the front-end admitted it before the core
    saw it (:meth:`Runtime.hold <service.core.runtime.Runtime.hold>`), else None."""

    place: Place | None

    def on_model(self, served: ServedVersion) -> None:
        """The version that serves the request is known (label metrics, negotiate the answer);
        may raise a ServiceError to refuse it."""

    async def read(self, served: ServedVersion) -> Work:
        """Read and decode the request (raises ServiceError for bad input)."""
        ...

    def is_disconnected(self) -> bool | Awaitable[bool]:
        """Whether the client has left (checked before its model run)."""
        ...


@dataclass(frozen=True)
class PoolResult:
    """One request's answer: its rows of every model output, and its diagnostics if asked."""

    served: ServedVersion
    batch: Batch
    outputs: Mapping[str, NDArray[np.float32]]  # pooled (b, D), weights (b, H, n), ...
    summary: Summary | None  # the diagnostics arrays (head-mean weights included), if asked
    diagnostics: list[ItemDiagnostics] | None  # the records, if asked
    metrics: ModelMetrics  # the model's series, for the front-end's own stages (encode)

    @property
    def probabilities(self) -> NDArray[np.float32] | None:
        """(b, C) softmax of a classification model's logits (None for other tasks)."""
        logits = self.outputs.get("logits")
        if logits is None:
            return None
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities: NDArray[np.float32] = shifted / shifted.sum(axis=1, keepdims=True)
        return probabilities

    @property
    def labels(self) -> list[str] | None:
        """Each item's predicted class, by the manifest's class names."""
        logits = self.outputs.get("logits")
        manifest = self.served.manifest
        if logits is None or manifest is None:
            return None
        classes = manifest.task.classes
        return [classes[i] for i in logits.argmax(axis=1).tolist()]

    @property
    def mean_weights(self) -> NDArray[np.float32]:
        """(b, n) head-mean weights over each item's submitted tokens."""
        if self.summary is not None:
            return self.summary.mean[:, : self.outputs["weights"].shape[2]]
        mean: NDArray[np.float32] = self.outputs["weights"].mean(axis=1)
        return mean
