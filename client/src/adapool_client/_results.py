"""Frozen, typed results: what ``pool`` returns, per batch and per item, and the metadata routes.

Arrays in results are read-only (``writeable=False``): a result is a record of what the server
answered. ``np.array(result.pooled)`` gives a copy to change.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

Float32Array = NDArray[np.float32]


def frozen(array: NDArray[Any]) -> NDArray[Any]:
    array.flags.writeable = False
    return array


@dataclass(frozen=True)
class TopToken:
    token: int  # position in the item
    weight: float


@dataclass(frozen=True)
class Diagnostics:
    """One item's signal/noise diagnostics, from its head-mean weights w over its n tokens
    (the service's README, "Diagnostics", defines each field).

    Attributes:
        entropy: -sum w ln w (nats).
        normalized_entropy: entropy / ln n, in [0, 1]; None for an item of one token.
        effective_tokens: exp(entropy): how many tokens the pool really averages.
        max_weight: the largest weight; ``max_token`` its position.
        top_tokens: the ``top_k`` tokens by weight, largest first.
        signal_tokens: the estimated signal set (the server's ``signal_rule``, see ``info()``).
        estimated_snr: len(signal_tokens) / n.
        noise_mass: the weight outside ``signal_tokens``.
    """

    entropy: float
    normalized_entropy: float | None
    effective_tokens: float
    max_weight: float
    max_token: int
    top_tokens: tuple[TopToken, ...]
    signal_tokens: tuple[int, ...]
    estimated_snr: float
    noise_mass: float

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Diagnostics:
        norm = data["normalized_entropy"]
        return cls(
            entropy=float(data["entropy"]),
            normalized_entropy=None if norm is None else float(norm),
            effective_tokens=float(data["effective_tokens"]),
            max_weight=float(data["max_weight"]),
            max_token=int(data["max_token"]),
            top_tokens=tuple(
                TopToken(int(t["token"]), float(t["weight"])) for t in data["top_tokens"]
            ),
            signal_tokens=tuple(int(t) for t in data["signal_tokens"]),
            estimated_snr=float(data["estimated_snr"]),
            noise_mass=float(data["noise_mass"]),
        )


@dataclass(frozen=True)
class PooledItem:
    """One item of a :class:`PoolResult` (what ``pool_many`` yields).

    Attributes:
        pooled: (D_out,) float32.
        weights: (n,) head-mean or (H, n) per-head weights over the item's tokens; None if
            ``weights="none"``.
        diagnostics: None unless asked for.
        length: n, the item's token count (for an ``attention_mask`` with holes: up to its last
            real token).
        label, probabilities, prediction: for classification (label, (C,) probabilities) and
            regression ((T,) prediction) models; None for pooling-only models.
    """

    pooled: Float32Array
    weights: Float32Array | None
    diagnostics: Diagnostics | None
    length: int
    model: str
    version: int
    provider: str
    request_id: str
    label: str | int | None = None
    probabilities: Float32Array | None = None
    prediction: Float32Array | None = None


@dataclass(frozen=True)
class PoolResult:
    """The answer to one ``pool`` call, for a batch of B items.

    Attributes:
        pooled: (B, D_out) float32.
        weights: per item, (n_i,) head-mean or (H, n_i) per-head weights, trimmed to the item's
            own tokens (0 on tokens an ``attention_mask`` hides); None with ``weights="none"``.
        lengths: (B,) n_i, the token count each item's weights cover.
        diagnostics: per item, when asked for (``diagnostics=True``); else None.
        model, version: the model that answered (the latest version unless one was named).
        provider: the ONNX Runtime execution provider that ran it (``CPUExecutionProvider``...).
        request_id: the server's id for the request (``X-Request-Id``).
        label: per item, for classification models; probabilities (B, C) likewise.
        prediction: (B, T) for regression models. These three are None for pooling-only
            models (in a ``.npy`` answer too: it carries the pooled vectors alone).

    ``len(result)``, ``result[i]`` (a :class:`PooledItem`) and iteration go item by item.
    """

    pooled: Float32Array
    weights: tuple[Float32Array, ...] | None
    lengths: NDArray[np.int64]
    diagnostics: tuple[Diagnostics, ...] | None
    model: str
    version: int
    provider: str
    request_id: str
    label: tuple[str | int, ...] | None = None
    probabilities: Float32Array | None = None
    prediction: Float32Array | None = None

    def __len__(self) -> int:
        return len(self.pooled)

    def __getitem__(self, i: int) -> PooledItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} of a result with {len(self)} items")
        return PooledItem(
            pooled=self.pooled[i],
            weights=None if self.weights is None else self.weights[i],
            diagnostics=None if self.diagnostics is None else self.diagnostics[i],
            length=int(self.lengths[i]),
            model=self.model,
            version=self.version,
            provider=self.provider,
            request_id=self.request_id,
            label=None if self.label is None else self.label[i],
            probabilities=None if self.probabilities is None else self.probabilities[i],
            prediction=None if self.prediction is None else self.prediction[i],
        )

    def __iter__(self) -> Iterator[PooledItem]:
        return (self[i] for i in range(len(self)))


# --- metadata ------------------------------------------------------------------------------


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)


@dataclass(frozen=True)
class Task:
    """What a model answers beyond the pooled vector and its weights: ``pool`` (nothing more),
    ``classification`` (a label among ``classes``) or ``regression`` (``num_targets`` numbers)."""

    kind: str
    classes: tuple[str, ...] = ()
    num_targets: int | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Task | None:
        if data is None:
            return None
        return cls(
            str(data["kind"]),
            tuple(str(c) for c in data.get("classes") or ()),
            _optional_int(data.get("num_targets")),
        )


@dataclass(frozen=True)
class ModelVersion:
    """One served model version, as ``GET /models/{name}`` describes it."""

    name: str
    version: int
    input_dim: int | None
    output_dim: int | None
    heads: int | None
    ready: bool
    provider: str | None  # the execution provider in use; None if the version did not load
    providers: tuple[str, ...]
    error: str | None  # why it did not load
    pooling: Mapping[str, Any] | None = None
    opset: int | None = None
    signal_rule: str | None = None
    metrics: Mapping[str, Any] | None = None  # the manifest's test metrics
    sha256: str | None = None  # of model.onnx
    task: Task | None = None  # None from a server that does not say
    precision: str | None = None
    outputs: tuple[str, ...] = ()  # the graph's outputs

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelVersion:
        return cls(
            name=str(data["name"]),
            version=int(data["version"]),
            input_dim=_optional_int(data.get("input_dim")),
            output_dim=_optional_int(data.get("output_dim")),
            heads=_optional_int(data.get("heads")),
            ready=bool(data.get("ready")),
            provider=data.get("provider"),
            providers=tuple(data.get("providers") or ()),
            error=data.get("error"),
            pooling=data.get("pooling"),
            opset=_optional_int(data.get("opset")),
            signal_rule=data.get("signal_rule"),
            metrics=data.get("metrics"),
            sha256=data.get("sha256"),
            task=Task.from_json(data.get("task")),
            precision=data.get("precision"),
            outputs=tuple(data.get("outputs") or ()),
        )


@dataclass(frozen=True)
class ModelSummary:
    name: str
    versions: tuple[int, ...]
    latest: ModelVersion  # the version that ``pool(model=name)`` uses


@dataclass(frozen=True)
class ModelList:
    """``GET /models``: every served model, and the one behind ``pool()`` without a name."""

    default: str
    models: tuple[ModelSummary, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.models)

    def __getitem__(self, name: str) -> ModelSummary:
        for m in self.models:
            if m.name == name:
                return m
        raise KeyError(f"model {name!r} is not served; served: {', '.join(self.names)}")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelList:
        return cls(
            default=str(data["default"]),
            models=tuple(
                ModelSummary(
                    name=str(m["name"]),
                    versions=tuple(int(v) for v in m["versions"]),
                    latest=ModelVersion.from_json(m["latest"]),
                )
                for m in data["models"]
            ),
        )


@dataclass(frozen=True)
class ModelVersions:
    """``GET /models/{name}``: every version of one model, oldest first."""

    name: str
    versions: tuple[ModelVersion, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelVersions:
        return cls(str(data["name"]), tuple(ModelVersion.from_json(v) for v in data["versions"]))


@dataclass(frozen=True)
class Readiness:
    """``GET /health/ready``: true when every model version is loaded and a forward pass works;
    ``problems`` says why not. ``bool(readiness)`` is ``ready``."""

    ready: bool
    problems: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return self.ready


@dataclass(frozen=True)
class Limits:
    """The server's request limits (a request over one is answered 413)."""

    max_body_bytes: int
    max_items_per_request: int
    max_tokens_per_item: int
    max_tokens_per_request: int


@dataclass(frozen=True)
class ServiceInfo:
    """``GET /info``. ``raw`` is the whole answer, for fields not typed here."""

    version: str
    onnxruntime_version: str
    available_providers: tuple[str, ...]
    device: str
    providers_in_use: Mapping[str, tuple[str, ...]]
    default_model: str
    signal_rule: str
    limits: Limits
    batching: Mapping[str, float]
    auth: bool
    uptime_seconds: float
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServiceInfo:
        limits = data["limits"]
        return cls(
            version=str(data["service"]["version"]),
            onnxruntime_version=str(data["onnxruntime"]["version"]),
            available_providers=tuple(data["onnxruntime"]["available_providers"]),
            device=str(data["device"]),
            providers_in_use={k: tuple(v) for k, v in data["providers_in_use"].items()},
            default_model=str(data["default_model"]),
            signal_rule=str(data["signal_rule"]),
            limits=Limits(
                max_body_bytes=int(limits["max_body_bytes"]),
                max_items_per_request=int(limits["max_items_per_request"]),
                max_tokens_per_item=int(limits["max_tokens_per_item"]),
                max_tokens_per_request=int(limits["max_tokens_per_request"]),
            ),
            batching=dict(data["batching"]),
            auth=bool(data["auth"]),
            uptime_seconds=float(data["uptime_seconds"]),
            raw=data,
        )
