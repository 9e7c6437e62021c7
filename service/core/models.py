"""The model versions the service serves, found in a Triton-style repository (no torch).

:func:`scan` turns the repository's folders (:mod:`modelrepo`) into :class:`ServedVersion`
entries. A version whose manifest fails to parse, whose ``model.onnx`` is missing, or whose
folder collides with another is still listed, with ``error`` naming the file and the field: it
is reported as not ready (readiness, /models, ``adapool_model_ready``) while the others serve.
:class:`ModelVersionInfo` is the one description of a version, for /models and OpenAPI alike.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from modelrepo import Manifest, ManifestError, read_manifest, scan_versions
from service.core.batching import Batcher
from service.core.policy import BatchPolicy

if TYPE_CHECKING:
    from service.core.runtime import Backend

log = logging.getLogger("adapool.service")


class MetricsSummary(BaseModel):
    """A version's test metrics from its manifest (the figures that exist for its task)."""

    task: str
    k: int | None = None
    snr: float | None = None
    signal_loss: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None
    auc: float | None = None
    mse: float | None = None
    r2: float | None = None
    signal_f1: float | None = Field(
        None, description="the weights' signal-set F1 on the test split"
    )
    signal_f1_chance: float | None = Field(None, description="F1 of the all-tokens estimate")
    signal_mass: float | None = Field(None, description="weight mass on the true signal tokens")
    signal_mass_chance: float | None = None


class TaskInfo(BaseModel):
    kind: str = Field(description="pool, classification or regression")
    classes: list[str] = Field(default_factory=list, description="classification: the labels")
    num_targets: int | None = Field(None, description="regression: the prediction's size")


class PoolingInfo(BaseModel):
    method: str
    query: str | None
    query_index: int | None
    query_indices: list[int]
    residual: bool | None


class CurvePoint(BaseModel):
    batch: int
    items_per_second: float


class BatchPolicyInfo(BaseModel):
    source: str = Field(description="measured, settings, manifest, or off")
    preferred_tokens: int | None = Field(description="padded tokens per run; null: the caps")
    preferred_items: int | None = Field(description="the same at the probe's token length")
    probe_tokens: int = Field(description="the token length the curve was measured at")
    curve: list[CurvePoint] = Field(description="items/s by batch size, as measured")
    runs_at_once: int = Field(description="the curve's runs in flight together (instances)")
    rounds: int = Field(description="the probe's rounds over every size (0: not measured)")

    @classmethod
    def of(cls, policy: BatchPolicy) -> BatchPolicyInfo:
        return cls(
            source=policy.source,
            preferred_tokens=policy.preferred_tokens,
            preferred_items=policy.preferred_items,
            probe_tokens=policy.probe_tokens,
            curve=[CurvePoint(batch=b, items_per_second=round(v, 1)) for b, v in policy.curve],
            runs_at_once=policy.runs_at_once,
            rounds=policy.rounds,
        )


class ModelVersionInfo(BaseModel):
    name: str
    version: int
    ready: bool
    error: str | None = Field(description="why this version is not served (file and field)")
    task: TaskInfo | None
    pooling: PoolingInfo | None
    input_dim: int | None
    output_dim: int | None
    heads: int | None
    precision: str | None
    opset: int | None
    outputs: list[str] = Field(description="the graph's outputs")
    signal_rule: str | None = Field(description="the rule behind signal_tokens, in words")
    provider: str | None = Field(description="the execution provider in use; null if not loaded")
    providers: list[str]
    metrics: MetricsSummary | None = Field(description="the manifest's test metrics")
    sha256: str | None = Field(description="of model.onnx, from the manifest")
    batch_policy: BatchPolicyInfo | None = Field(
        None, description="the run size the batcher aims for, and the curve it came from"
    )


@dataclass
class ServedVersion:
    """One model version: its manifest, its session and its batcher (once loaded)."""

    name: str
    version: int
    path: Path
    manifest: Manifest | None = None  # None when it could not be read (then error says why)
    backend: Backend | None = None
    batcher: Batcher | None = field(default=None, repr=False)
    policy: BatchPolicy | None = None  # set once loaded
    error: str | None = None

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"

    @property
    def problem(self) -> str | None:
        """Why this version cannot serve (not loaded, broken, wrong provider), or None."""
        if self.error is not None:
            return self.error
        if self.backend is None or self.batcher is None:
            return "not loaded"
        return self.backend.problem

    @property
    def ready(self) -> bool:
        return self.problem is None

    @property
    def provider(self) -> str:
        return self.backend.provider if self.backend else "unknown"

    def describe(self) -> ModelVersionInfo:
        m = self.manifest
        return ModelVersionInfo(
            name=self.name,
            version=self.version,
            ready=self.ready,
            error=self.error or (self.backend.problem if self.backend else None),
            task=TaskInfo(**m.task.to_dict()) if m else None,
            pooling=PoolingInfo(**m.pooling.to_dict()) if m else None,
            input_dim=m.input_dim if m else None,
            output_dim=m.output_dim if m else None,
            heads=m.heads if m else None,
            precision=m.precision if m else None,
            opset=m.opset if m else None,
            outputs=list(m.output_names) if m else [],
            signal_rule=m.signal_rule.definition if m else None,
            provider=self.backend.provider if self.backend else None,
            providers=self.backend.providers if self.backend else [],
            metrics=_metrics_summary(m),
            sha256=m.sha256.get("model.onnx") if m else None,
            batch_policy=BatchPolicyInfo.of(self.policy) if self.policy else None,
        )


def _metrics_summary(manifest: Manifest | None) -> MetricsSummary | None:
    metrics = manifest.metrics if manifest else None
    if metrics is None:
        return None
    figures: dict[str, Any] = dict(metrics.scores)
    if metrics.weights is not None:
        w = metrics.weights
        figures |= {
            "signal_f1": w.f1,
            "signal_f1_chance": w.f1_chance,
            "signal_mass": w.signal_mass,
            "signal_mass_chance": w.signal_mass_chance,
        }
    return MetricsSummary(task=metrics.task, k=metrics.k, snr=metrics.snr, **figures)


def scan(repository: Path, names: Collection[str]) -> dict[str, dict[int, ServedVersion]]:
    """Every model version under ``repository`` (only ``names`` when given), by name and version.

    Raises FileNotFoundError when a model named in ``names`` has no version folder at all (a
    settings error: the server does not start). Everything wrong with a version itself is
    recorded in its ``error`` instead.
    """
    found: dict[str, dict[int, ServedVersion]] = {}
    layout = scan_versions(repository, names)
    for folder, why in layout.ignored:
        log.warning("ignored %s: %s", folder, why)
    for problem in layout.problems:
        broken = ServedVersion(
            problem.name, problem.version, problem.paths[0], error=problem.message
        )
        found.setdefault(problem.name, {})[problem.version] = broken
    for entry in layout.versions:
        served = ServedVersion(entry.name, entry.version, entry.path)
        try:
            served.manifest = read_manifest(entry.manifest_file)
        except ManifestError as exc:
            served.error = str(exc)
        if served.error is None and not entry.model_file.is_file():
            served.error = f"{entry.model_file}: is missing"
        found.setdefault(entry.name, {})[entry.version] = served
    missing = sorted(set(names) - set(found))
    if missing:
        raise FileNotFoundError(f"models not found in {repository}: {', '.join(missing)}")
    return {name: dict(sorted(v.items())) for name, v in sorted(found.items())}
