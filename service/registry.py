"""The models the service serves, read from a Triton-style repository (manifests only, no torch).

<repository>/<name>/<version>/model.onnx + manifest.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.backend import OnnxBackend
from service.batching import Batcher


@dataclass
class ModelVersion:
    """One loaded model version: its manifest, its session and its batcher."""

    name: str
    version: int
    path: Path
    manifest: dict[str, Any]
    backend: OnnxBackend | None = None
    batcher: Batcher | None = field(default=None, repr=False)
    error: str | None = None

    @property
    def input_dim(self) -> int:
        return int(self.manifest["input_dim"])

    def describe(self) -> dict[str, Any]:
        m = self.manifest  # {} when manifest.json could not be read (then error says why)
        return {
            "name": self.name,
            "version": self.version,
            "pooling": m.get("pooling"),
            "input_dim": m.get("input_dim"),
            "output_dim": m.get("output_dim"),
            "heads": m.get("heads"),
            "opset": m.get("opset"),
            "signal_rule": m.get("signal_rule"),
            "provider": self.backend.provider if self.backend else None,
            "providers": self.backend.providers if self.backend else [],
            "ready": self.backend is not None and self.error is None,
            "error": self.error,
            "metrics": _metrics_summary(m.get("metrics")),
            "sha256": m.get("sha256", {}).get("model.onnx"),
        }


def _metrics_summary(metrics: dict[str, Any] | None) -> dict[str, Any] | None:
    if not metrics:
        return None
    weights = metrics.get("weights", {})
    return {
        "task": "knn_centroid",
        "k": metrics.get("k"),
        "snr": metrics.get("snr"),
        "signal_loss": metrics.get("signal_loss"),
        "signal_f1": weights.get("f1"),
        "signal_f1_chance": weights.get("f1_chance"),
        "signal_mass": weights.get("signal_mass"),
        "signal_mass_chance": weights.get("signal_mass_chance"),
    }


def scan(repository: Path, names: list[str]) -> dict[str, dict[int, ModelVersion]]:
    """Every model version under ``repository`` (only ``names`` when given), by name and version.

    A version folder is one with a manifest.json or a model.onnx. One whose manifest cannot be
    read, or whose model.onnx is missing, is still listed, with ``error`` set: it is reported
    as not ready (readiness, /models, ``adapool_model_ready``) while the others serve.
    """
    found: dict[str, dict[int, ModelVersion]] = {}
    candidates = {f.parent for f in repository.glob("*/*/manifest.json")}
    candidates |= {f.parent for f in repository.glob("*/*/model.onnx")}
    for version_dir in sorted(candidates):
        name = version_dir.parent.name
        if not version_dir.name.isdigit() or (names and name not in names):
            continue
        version = int(version_dir.name)
        mv = ModelVersion(name, version, version_dir, {})
        try:
            mv.manifest = json.loads((version_dir / "manifest.json").read_text())
            if not isinstance(mv.manifest, dict):
                raise ValueError("manifest.json is not a JSON object")
            int(mv.manifest["input_dim"])  # the one field the service needs to serve
        except (OSError, ValueError, KeyError, TypeError) as exc:
            mv.manifest = {}
            mv.error = f"manifest.json: {type(exc).__name__}: {str(exc)[:200]}"
        if mv.error is None and not (version_dir / "model.onnx").is_file():
            mv.error = "model.onnx is missing"
        found.setdefault(name, {})[version] = mv
    missing = sorted(set(names) - set(found))
    if missing:
        raise FileNotFoundError(f"models not found in {repository}: {', '.join(missing)}")
    return found
