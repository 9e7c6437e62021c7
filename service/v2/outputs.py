"""The v2 outputs of a model: its graph's outputs (``pooled``, ``weights``, a task's ``logits``
or ``prediction``) and the diagnostics, as per-item tensors read from the core's arrays.

``shape`` uses -1 for a variable axis (the batch, the tokens), as model metadata states it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from modelrepo import Manifest
from service.core.calls import PoolResult

V2_TYPES = {"float32": "FP32", "float16": "FP16", "bool": "BOOL", "int64": "INT64"}
# Diagnostics, from the core's arrays: (name, datatype, per item, what it is)
DIAGNOSTICS: tuple[tuple[str, str, bool, str], ...] = (
    ("entropy", "FP32", False, "-sum w ln w over the real tokens (nats)"),
    ("effective_tokens", "FP32", False, "exp(entropy)"),
    ("estimated_snr", "FP32", False, "|signal set| / real tokens"),
    ("noise_mass", "FP32", False, "weight outside the signal set"),
    ("signal_mask", "BOOL", True, "the estimated signal set, by the model's signal_rule"),
)
DIAGNOSTIC_NAMES = frozenset(name for name, *_ in DIAGNOSTICS)


@dataclass(frozen=True)
class OutputSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: variable (batch first)


def output_specs(manifest: Manifest) -> list[OutputSpec]:
    """Every output a v2 client can ask this model for, in the order they are answered."""
    specs = [
        OutputSpec(
            t.name, V2_TYPES[t.dtype], tuple(-1 if isinstance(d, str) else d for d in t.shape)
        )
        for t in manifest.outputs
    ]
    for name, datatype, per_token, _ in DIAGNOSTICS:
        specs.append(OutputSpec(name, datatype, (-1, -1) if per_token else (-1,)))
    return specs


def output_array(result: PoolResult, name: str) -> NDArray[np.generic]:
    """One output of one request, by name (a diagnostic needs ``result.summary``)."""
    if name not in DIAGNOSTIC_NAMES:
        return result.outputs[name]
    summary = result.summary
    assert summary is not None, "the diagnostics were asked for"
    if name == "signal_mask":
        return summary.signal[:, : result.batch.attention_mask.shape[1]]
    if name == "entropy":
        return summary.entropy.astype(np.float32)
    if name == "effective_tokens":
        return np.exp(summary.entropy).astype(np.float32)
    if name == "estimated_snr":
        return summary.snr.astype(np.float32)
    return summary.noise_mass.astype(np.float32)
