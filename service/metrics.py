"""Every Prometheus metric of the service, declared once, on a registry passed in.

Names carry the ``adapool_`` prefix and base units. Labels are bounded: model names come from
the repository, routes are route templates, statuses are codes the service itself produces.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Fine enough for sub-millisecond stages (decode of a small JSON body, a tiny model run).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
TOKEN_BUCKETS = (1, 16, 64, 256, 1024, 4096, 16384, 65536)
RATIO_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
SNR_BUCKETS = (1 / 128, 1 / 64, 1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
EFFECTIVE_TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ModelMetrics:
    """One model's labelled series, resolved once.

    ``metric.labels(...)`` takes a lock and checks its arguments on every call; a pool request
    records about ten series, so the hot path uses these children instead.
    """

    def __init__(self, metrics: Metrics, name: str) -> None:
        stage = metrics.stage_duration
        self.decode = stage.labels(name, "decode")
        self.queue = stage.labels(name, "queue")
        self.inference = stage.labels(name, "inference")
        self.diagnostics = stage.labels(name, "diagnostics")
        self.encode = stage.labels(name, "encode")
        self.batch_size = metrics.batch_size.labels(name)
        self.batch_tokens = metrics.batch_tokens.labels(name)
        self.padding_ratio = metrics.padding_ratio.labels(name)
        self.queue_depth = metrics.queue_depth.labels(name)
        self.preferred_tokens = metrics.preferred_tokens.labels(name)
        self.entropy = metrics.entropy.labels(name)
        self.effective_tokens = metrics.effective_tokens.labels(name)
        self.estimated_snr = metrics.estimated_snr.labels(name)


class Metrics:
    """The service's metrics, all registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._models: dict[str, ModelMetrics] = {}
        self._rejected: dict[tuple[str, str], Any] = {}
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}  # children, reused
        self.requests = Counter(
            "adapool_requests",
            "HTTP requests by model, route and status code",
            ["model", "route", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "adapool_request_duration_seconds",
            "Time from request start to response start",
            ["model", "route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.stage_duration = Histogram(
            "adapool_stage_duration_seconds",
            "Time per stage of a pool request: decode, queue, inference (per model run, with the "
            "batch's diagnostics arrays when asked for), diagnostics (this request's part), encode",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.batch_size = Histogram(
            "adapool_batch_size",
            "Items per model run",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.batch_tokens = Histogram(
            "adapool_batch_tokens",
            "Padded tokens per model run",
            ["model"],
            buckets=TOKEN_BUCKETS,
            registry=registry,
        )
        self.padding_ratio = Histogram(
            "adapool_batch_padding_ratio",
            "Share of a run's tokens that are padding",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.queue_depth = Gauge(
            "adapool_queue_depth", "Requests waiting for a model run", ["model"], registry=registry
        )
        self.preferred_tokens = Gauge(
            "adapool_batch_preferred_tokens",
            "Padded tokens per model run the batcher aims for (0: up to the caps)",
            ["model"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "adapool_requests_in_flight", "Requests being handled", registry=registry
        )
        self.rejected = Counter(
            "adapool_rejected_requests",
            "Requests refused or dropped: queue_full, client_gone, too_large, invalid, "
            "unauthorized, not_ready",
            ["model", "reason"],
            registry=registry,
        )
        self.connections = Gauge(
            "adapool_connections",
            "Open HTTP connections, as the connection gate counts them (max_connections)",
            registry=registry,
        )
        self.refused_connections = Counter(
            "adapool_refused_connections",
            "Connections refused or closed by a connection limit: headers_too_large, "
            "request_timeout, silent (nothing sent by the head deadline), bad_request (an "
            "Upgrade with a body), too_many_connections, replaced (by a newer one at the cap)",
            ["reason"],
            registry=registry,
        )
        self.model_info = Gauge(
            "adapool_model_info",
            "1 for each loaded model version, labelled with its provider",
            ["model", "version", "provider"],
            registry=registry,
        )
        self.model_ready = Gauge(
            "adapool_model_ready",
            "1 when the model version passed warm-up and its provider is the required one",
            ["model", "version"],
            registry=registry,
        )
        self.entropy = Histogram(
            "adapool_diagnostic_normalized_entropy",
            "Per-item pooling-weight entropy / ln n (0 = one token, 1 = uniform)",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=registry,
        )
        self.effective_tokens = Histogram(
            "adapool_diagnostic_effective_tokens",
            "Per-item exp(entropy) of the pooling weights",
            ["model"],
            buckets=EFFECTIVE_TOKEN_BUCKETS,
            registry=registry,
        )
        self.estimated_snr = Histogram(
            "adapool_diagnostic_estimated_snr",
            "Per-item estimated signal share k/n",
            ["model"],
            buckets=SNR_BUCKETS,
            registry=registry,
        )

    def request(self, model: str, route: str, status: int, seconds: float) -> None:
        """Count one answered HTTP request (``route``: its template) and its duration."""
        key = (model, route, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (
                self.requests.labels(model, route, str(status)),
                self.request_duration.labels(model, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def reject(self, model: str, reason: str) -> None:
        """Count a refused or dropped request (the series appears on first use; ``model`` is
        "" while no model is known yet)."""
        child = self._rejected.get((model, reason))
        if child is None:
            child = self._rejected[model, reason] = self.rejected.labels(model, reason)
        child.inc()

    def model(self, name: str) -> ModelMetrics:
        """``name``'s series (created on first use, then reused)."""
        found = self._models.get(name)
        if found is None:
            found = self._models[name] = ModelMetrics(self, name)
        return found
